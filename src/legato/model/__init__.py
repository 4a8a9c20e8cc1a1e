"""Definitions: services, workflows, steps; pure data and validation, no I/O."""

from legato.model.build import build_workflow
from legato.model.durations import format_duration, parse_duration
from legato.model.fields import Field, check_object
from legato.model.service import Service
from legato.model.workflow import (
    Action,
    Branch,
    Fail,
    HttpCall,
    MapOver,
    PythonCall,
    RetryPolicy,
    Step,
    Workflow,
)

__all__ = [
    "Action",
    "Branch",
    "Fail",
    "Field",
    "HttpCall",
    "MapOver",
    "PythonCall",
    "RetryPolicy",
    "Service",
    "Step",
    "Workflow",
    "build_workflow",
    "check_object",
    "format_duration",
    "parse_duration",
]
