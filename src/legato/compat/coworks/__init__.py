"""CoWorks' BizMicroService API on Legato: a DAG file written for `coworks.biz` runs with its
imports changed to `from legato.compat.coworks import ...`.

`biz` declares a workflow (Airflow's `dag`), `TechMicroServiceOperator` calls a TechMicroService,
`BranchTechMicroServiceOperator` branches on its answer, `TechMicroServiceAsyncGroup` calls one
asynchronously and reads its result from S3; `task` and `get_current_context` are Airflow's
TaskFlow, `chain` and `cross_downstream` Airflow's helpers. `configure` points api_id/stage calls and the results bucket elsewhere (see settings).
See docs/coming-from-coworks.md.
"""

from legato.compat.coworks.biz import biz
from legato.compat.coworks.group import TechMicroServiceAsyncGroup, read_result
from legato.compat.coworks.nodes import chain, cross_downstream
from legato.compat.coworks.operators import (
    BranchTechMicroServiceOperator,
    TechMicroServiceOperator,
)
from legato.compat.coworks.settings import configure
from legato.compat.coworks.taskflow import get_current_context, task

__all__ = [
    "BranchTechMicroServiceOperator",
    "TechMicroServiceAsyncGroup",
    "TechMicroServiceOperator",
    "biz",
    "chain",
    "configure",
    "cross_downstream",
    "get_current_context",
    "read_result",
    "task",
]
