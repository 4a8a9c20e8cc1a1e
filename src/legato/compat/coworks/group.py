"""CoWorks' `TechMicroServiceAsyncGroup`: call a TechMicroService asynchronously, wait for its
result in S3, read it.

In Legato the call and the wait are one HTTP step (`<group>.call`, the step `<group>__call`): it
sends the request with the bucket and key the result must be written to, then looks for that
object every `poke_interval` seconds within `timeout`; `<group>.wait` names the same step. The
read is a Python step (`<group>.read`, the step `<group>__read`) that unwraps the API Gateway
answer the service stored (`statusCode`, `body`, `isBase64Encoded`), failing on a status of 300 or
more unless `raise_errors=False`; its result is what `ti.xcom_pull(task_ids='<group>.read')` gives.
A `transformer` runs first, its result sent as the call's `json` (or `query_params` for GET).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection, Mapping
from typing import Any

from legato.compat.coworks.nodes import Native, Node, checked_task_id, current_dag, refuse
from legato.compat.coworks.operators import TechMicroServiceOperator
from legato.compat.coworks.taskflow import python_step, runner
from legato.dsl import StepNode


class TechMicroServiceError(Exception):
    """The TechMicroService answered its asynchronous call with an error status."""


def _unwrap(payload: Any = None, raise_errors: bool = True) -> Any:
    """The body of the answer a TechMicroService left in S3 (text when base64 decodes to it)."""
    if not isinstance(payload, Mapping) or "statusCode" not in payload:
        return payload  # not an API Gateway answer: the object itself is the result
    status = payload.get("statusCode")
    body = payload.get("body")
    if raise_errors and (not isinstance(status, int) or status >= 300):
        raise TechMicroServiceError(
            f"the TechMicroService did not complete successfully: status {status}: {body!r:.300}"
        )
    if payload.get("isBase64Encoded") and isinstance(body, str):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return body
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return body  # binary: kept as the base64 text it came as
    return body


# The read step's function, importable by this name (a worker that did not import the DAG file).
read_result = runner(_unwrap)
read_result.__name__ = read_result.__qualname__ = "read_result"


class TechMicroServiceAsyncGroup(Node):
    """The group `group_id` (see the module's docstring); `>>` joins its first and last steps."""

    def __init__(
        self,
        group_id: str,
        transformer: Callable[..., Any] | None = None,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        method: str = "get",
        raise_errors: bool = True,
        timeout: float = 900,
        xcom_push: bool = True,
        **tech_kwargs: Any,
    ) -> None:
        dag = current_dag("TechMicroServiceAsyncGroup")
        checked_task_id(group_id, "TechMicroServiceAsyncGroup")
        self.task_id = group_id
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise refuse("timeout", "must be a positive number of seconds", group_id)
        if "execution_timeout" in tech_kwargs:
            raise refuse("execution_timeout", "is the group's `timeout` (seconds)", group_id)
        for reserved in ("task_id", "asynchronous"):
            if reserved in tech_kwargs:
                raise refuse(reserved, "is set by the group itself", group_id)
        self.transformer: StepNode | None = None
        if transformer is not None:
            if not callable(transformer):
                raise refuse("transformer", "must be a function", group_id)
            self.transformer = python_step(
                dag,
                f"{group_id}.{transformer.__name__}",
                transformer,
                list(op_args or ()),
                dict(op_kwargs or {}),
            )
            field = "query_params" if str(method).lower() == "get" else "json"
            tech_kwargs[field] = Native(f"{{{{ steps.{self.transformer.name}.output }}}}")
        self.call = TechMicroServiceOperator(
            task_id=f"{group_id}.call",
            asynchronous=True,
            method=method,
            execution_timeout=timeout,
            **tech_kwargs,
        )
        if self.transformer is not None:
            self.call.node.after(self.transformer)
        dag.tasks[f"{group_id}.wait"] = self.call
        self.read: StepNode | None = None
        if xcom_push:
            self.read = python_step(
                dag,
                f"{group_id}.read",
                read_result,
                prewrapped=True,
                kwargs={
                    "payload": f"{{{{ steps.{self.call.node.name}.output }}}}",
                    "raise_errors": bool(raise_errors),
                },
                retry_on=["timeout"],
            ).after(self.call.node)
            dag.tasks[f"{group_id}.read"] = self
        self.register(dag)

    def heads(self) -> list[StepNode]:
        return [self.transformer or self.call.node]

    def tails(self) -> list[StepNode]:
        return [self.read or self.call.node]
