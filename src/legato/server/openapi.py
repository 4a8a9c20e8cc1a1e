"""The OpenAPI 3.0 document of the REST API, kept beside the routes it describes.

Written out rather than generated: the routes read raw bodies (JSON or YAML, sized as they stream), and
the document is also what the property-based tests generate requests from.
"""

from __future__ import annotations

from typing import Any

from legato import __version__
from legato.engine.state import STATUSES

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_ref("Error"))}


ERRORS = {
    "400": _error("Malformed request: bad JSON or YAML, or a bad query parameter."),
    "401": _error("A token is configured and the request did not carry it."),
    "404": _error("No such workflow, version, run or service."),
    "413": _error("The body is over the server's size limit."),
    "415": _error("The Content-Type is not one this route reads."),
    "422": _error("The document or input is not valid; `problems` names each field."),
    "503": {
        **_error(
            "The database is unavailable (down, full, or slower than the store timeout): "
            "try again after Retry-After seconds. A start answered 503 was not started. A "
            "cancel or bulk action answered 503 `unfinished` outlived LEGATO_BULK_TIMEOUT and "
            "goes on."
        ),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    tag: str,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = ("400", "401", "404"),
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": dict(responses)}
    for code in (*errors, "503"):  # every operation may meet a store that is down
        op["responses"][code] = ERRORS[code]
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": _content(schema)}


def _path_param(
    name: str, description: str, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


WAIT = _query(
    "wait",
    "Answer when the run ends or after this many seconds, with the whole run.",
    {"type": "number", "minimum": 0, "maximum": 3600},
)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key and request (within 24 h by default) answer the run the first "
    "made; another request with it is a 422. Per workflow; 1-255 printable ASCII characters.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
NAME = _path_param("name", "A workflow's name.")
RUN_ID = _path_param("run_id", "A run's id (32 hex digits).")
SERVICE = _path_param("name", "A service's name.")
SECRET = _path_param("name", "A secret's name: letters, digits and '_'.")
ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "A stable kind, e.g. invalid_input."},
            "message": {"type": "string"},
            "problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "Field": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "type": {
                "type": "string",
                "enum": ["string", "integer", "number", "boolean", "object", "array", "any"],
            },
            "required": {"type": "boolean"},
            "default": {},
            "description": {"type": "string"},
        },
    },
    "Service": {
        "type": "object",
        "description": "A directory entry. `address` is accepted in place of `base_url`.",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"},
            "base_url": {"type": "string", "format": "uri"},
            "address": {"type": "string", "format": "uri"},
            "description": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "token": {"type": "string", "description": "Sent as a bearer token; shown as ***."},
            "timeout": {"oneOf": [{"type": "number"}, {"type": "string"}]},
            "concurrency": {"type": "integer", "minimum": 1},
            "follow_redirects": {
                "type": "boolean",
                "description": "Follow 3xx answers (each hop passes the egress policy).",
            },
            "retry": {
                "oneOf": [{"type": "integer", "minimum": 0, "maximum": 1000}, ANY_OBJECT],
                "description": "How its steps retry transient failures, field by field where "
                "neither the step nor its workflow sets that field: retries, or {retries, delay, "
                "backoff, max_delay, jitter, on}. Answered as written (the fields given).",
            },
            "inputs": {"type": "array", "items": _ref("Field")},
            "outputs": {"type": "array", "items": _ref("Field")},
        },
    },
    "Workflow": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "description": {"type": "string"},
            "steps": {"type": "integer", "description": "How many steps it has."},
            "created": {"type": "boolean", "description": "False when the definition was known."},
            "definition": ANY_OBJECT,
            "versions": {"type": "array", "items": ANY_OBJECT},
            "triggers": {
                "type": "array",
                "items": ANY_OBJECT,
                "description": "The broker destinations whose messages start its runs.",
            },
        },
    },
    "Definition": {
        "type": "object",
        "description": "A workflow in the native form (`steps`) or services-in-order form "
        "(`services`); see docs/reference.md.",
        "additionalProperties": True,
    },
    "Graph": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "nodes": {"type": "array", "items": ANY_OBJECT},
            "edges": {"type": "array", "items": ANY_OBJECT},
            "roots": {"type": "array", "items": {"type": "string"}},
        },
    },
    "StartRun": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "input": ANY_OBJECT,
            "version": {"type": "integer", "minimum": 1, "description": "Pin a version."},
            "id": {
                "type": "string",
                "pattern": "^[0-9a-f]{32}$",
                "description": "The run's id, chosen by the caller; a second start with it is a "
                "409 (live or ended).",
            },
        },
    },
    "Trigger": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "conf": {
                **ANY_OBJECT,
                "description": "The run's input; templates read it as `input`.",
            },
        },
    },
    "Notification": {
        "type": "object",
        "properties": {
            "event": {"type": "string", "enum": ["failure", "retry", "success"]},
            "channel": {"type": "string", "enum": ["email", "webhook"]},
            "target": {"type": "string", "description": "The addresses, or the webhook's URL."},
            "ok": {"type": "boolean"},
            "tries": {"type": "integer"},
            "error": {"type": "string", "nullable": True, "description": "The last try's."},
            "created_at": {"type": "string", "format": "date-time"},
            "delivery_id": {
                "type": "string",
                "nullable": True,
                "description": "Sent as `Legato-Delivery` on every try: receivers dedupe on it.",
            },
        },
    },
    "Schedule": {
        "type": "object",
        "properties": {
            "workflow": {"type": "string"},
            "schedule": {"description": "As the definition gives it: cron, preset or interval."},
            "paused": {"type": "boolean"},
            "catchup": {"type": "boolean"},
            "max_active_runs": {"type": "integer", "nullable": True},
            "tags": {"type": "array", "items": {"type": "string"}},
            "next_start": {
                **NULLABLE_TIME,
                "description": "The start of the next interval to run (null: the schedule ended).",
            },
            "next_fire": {
                **NULLABLE_TIME,
                "description": "When that run starts: the end of its interval (null: paused or ended).",
            },
        },
    },
    "Started": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "Event": {
        "type": "object",
        "additionalProperties": False,
        "required": ["data"],
        "properties": {"data": ANY_OBJECT},
    },
    "PublishedEvent": {
        "type": "object",
        "additionalProperties": False,
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "minLength": 1},
            "key": {
                "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
                "nullable": True,
            },
            "data": {},
            "keep_for": {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]},
        },
    },
    "CallbackReport": {
        "type": "object",
        "additionalProperties": False,
        "description": "Exactly one of output, error (an object or a message) or heartbeat: true; "
        "with it, optionally, log lines for the attempt.",
        "properties": {
            "output": {},
            "error": {"oneOf": [ANY_OBJECT, {"type": "string"}]},
            "heartbeat": {"type": "boolean", "enum": [True]},
            "logs": {
                "type": "array",
                "maxItems": 1000,
                "description": "Lines for the attempt's logs (at most 64 KiB in all, 8 KiB each; "
                "an attempt keeps the lines of at most 100 callbacks).",
                "items": {
                    "oneOf": [
                        {"type": "string", "maxLength": 8192},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["message"],
                            "properties": {
                                "message": {"type": "string", "maxLength": 8192},
                                "level": {
                                    "type": "string",
                                    "enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                                    "default": "INFO",
                                },
                                "ts": {"type": "number", "description": "Unix time (seconds)."},
                            },
                        },
                    ]
                },
            },
        },
    },
    "LogLine": {
        "type": "object",
        "properties": {
            "ts": {"type": "string", "format": "date-time"},
            "step": {"type": "string"},
            "attempt": {"type": "integer"},
            "level": {"type": "string"},
            "source": {
                "type": "string",
                "description": "stdout, stderr, the logger's name, traceback, service or legato "
                "(a truncation mark).",
            },
            "message": {
                "type": "string",
                "description": "Masked: no secret reference or credential.",
            },
        },
    },
    "RunFilter": {
        "type": "object",
        "additionalProperties": False,
        "description": "Which runs a bulk action takes: every field given must match. An empty "
        'filter is refused unless `"all": true`.',
        "properties": {
            "workflow": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "running", "waiting", "succeeded", "failed", "cancelled"],
            },
            "tag": {"type": "string", "description": "Runs of the workflows with this tag."},
            "created_after": {
                "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
                "description": "Created at or after: epoch seconds or ISO 8601 (UTC by default).",
            },
            "created_before": {
                "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
                "description": "Created before: epoch seconds or ISO 8601 (UTC by default).",
            },
            "all": {
                "type": "boolean",
                "description": "Match every run when nothing else is given.",
            },
        },
    },
    "BulkResult": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "description": "How many runs the action touched."},
            "ids": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The first 100 of them.",
            },
        },
    },
    "Completion": {
        "type": "object",
        "additionalProperties": False,
        "description": "Exactly one of output or error (an object or a message).",
        "properties": {
            "output": {},
            "error": {"oneOf": [ANY_OBJECT, {"type": "string"}]},
        },
    },
    "EventAck": {
        "type": "object",
        "properties": {
            "event_id": {"type": "string", "description": "The id of the run it started."},
            "ack_date": {"type": "string", "format": "date-time"},
            "status": {"type": "string"},
        },
    },
    "RunSummary": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "workflow": {"type": "string"},
            "version": {"type": "integer"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
            "error": {"type": "object", "nullable": True},
        },
    },
    "Step": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "attempt": {"type": "integer"},
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
            "next_attempt_at": NULLABLE_TIME,
            "request": {"nullable": True},
            "output": {"nullable": True},
            "error": {"type": "object", "nullable": True},
            "reason": {"type": "string", "nullable": True},
            "attempts": {"type": "array", "items": ANY_OBJECT},
        },
    },
    "Run": {
        "allOf": [
            _ref("RunSummary"),
            {
                "type": "object",
                "properties": {
                    "input": ANY_OBJECT,
                    "output": {"nullable": True},
                    "deadline": NULLABLE_TIME,
                    "steps": {"type": "array", "items": _ref("Step")},
                },
            },
        ]
    },
}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": _content(schema)}


def _audit_op() -> dict[str, Any]:
    entry = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "token": {"type": "string", "nullable": True, "description": "The token's name."},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "target": {"type": "string", "nullable": True, "description": "Run id or name."},
            "status": {"type": "integer"},
            "client": {"type": "string", "nullable": True},
        },
    }
    page = {
        "type": "object",
        "properties": {
            "entries": {"type": "array", "items": entry},
            "next_cursor": {"type": "string", "nullable": True},
        },
    }
    return _op(
        "Changes made through the API and the UI, newest first, with the token that made each "
        "(never a body). Needs an admin token.",
        {"200": _ok("A page.", page), "403": _error("The token's role is not admin.")},
        tag="audit",
        params=[
            _query("since", "An ISO 8601 time, or a duration ago (1h).", {"type": "string"}),
            _query("token", "Only this token's changes (its name).", {"type": "string"}),
            _query("limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": 1000}),
            _query("cursor", "The next_cursor of the previous page.", {"type": "string"}),
        ],
        errors=("400", "401"),
    )


def build() -> dict[str, Any]:
    services = {
        "type": "object",
        "properties": {"services": {"type": "array", "items": _ref("Service")}},
    }
    runs_page = {
        "type": "object",
        "properties": {
            "runs": {"type": "array", "items": _ref("RunSummary")},
            "next_cursor": {"type": "string", "nullable": True},
        },
    }
    definition_body = {
        "required": True,
        "content": {
            JSON: {"schema": _ref("Definition")},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
    secret_entry = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "source": {"type": "string", "enum": ["env", "store"]},
            "updated_at": NULLABLE_TIME,
        },
    }
    secret_list = {
        "type": "object",
        "properties": {"secrets": {"type": "array", "items": secret_entry}},
    }
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while serving, 503 while draining. Needs no token.",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": _ok("Serving.", ANY_OBJECT),
                    "503": _ok("Draining before exit.", ANY_OBJECT),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 while this process can read and commit to its database "
                "(and a worker renews its leases); 503 with the reasons otherwise, or while "
                "draining. Answered from a probe made every second. Needs no token.",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": _ok("Ready.", ANY_OBJECT),
                    "503": {
                        **_ok("Not ready: `reasons` says why.", ANY_OBJECT),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                },
            }
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics: runs and steps by status, step latency, queue depth.",
                {
                    "200": {
                        "description": "Text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tag="operations",
                errors=("401",),
            )
        },
        "/api/services": {
            "get": _op(
                "List the service directory.",
                {"200": _ok("The directory.", services)},
                tag="services",
                errors=("401",),
            ),
            "post": _op(
                "Add a service.",
                {
                    "201": _ok("Added.", _ref("Service")),
                    "409": _error("A service of that name exists."),
                },
                tag="services",
                body=_json_body(_ref("Service")),
                errors=("400", "401", "413", "415", "422"),
            ),
        },
        "/api/services/{name}": {
            "get": _op(
                "Show a service.",
                {"200": _ok("The service.", _ref("Service"))},
                tag="services",
                params=[SERVICE],
            ),
            "put": _op(
                "Add or replace a service.",
                {"200": _ok("Replaced.", _ref("Service")), "201": _ok("Added.", _ref("Service"))},
                tag="services",
                params=[SERVICE],
                body=_json_body(_ref("Service")),
                errors=("400", "401", "413", "415", "422"),
            ),
            "delete": _op(
                "Remove a service.",
                {"204": {"description": "Removed."}},
                tag="services",
                params=[SERVICE],
            ),
        },
        "/api/secrets": {
            "get": _op(
                "List the secrets templates read as `{{ secrets.NAME }}`: names, never values.",
                {"200": _ok("Names and where each comes from (env or store).", secret_list)},
                tag="secrets",
                errors=("401",),
            )
        },
        "/api/secrets/{name}": {
            "put": _op(
                "Set a secret (write-only: no route answers its value).",
                {"200": _ok("Replaced.", secret_entry), "201": _ok("Added.", secret_entry)},
                tag="secrets",
                params=[SECRET],
                body={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["value"],
                                "properties": {"value": {"type": "string", "minLength": 1}},
                            }
                        },
                        "text/plain": {"schema": {"type": "string", "minLength": 1}},
                    },
                },
                errors=("400", "401", "413", "415", "422"),
            ),
            "delete": _op(
                "Delete a stored secret.",
                {"204": {"description": "Deleted."}},
                tag="secrets",
                params=[SECRET],
                errors=("401", "404", "422"),
            ),
        },
        "/api/workflows": {
            "get": _op(
                "List workflows (latest version of each).",
                {
                    "200": _ok(
                        "Workflows.",
                        {
                            "type": "object",
                            "properties": {
                                "workflows": {"type": "array", "items": _ref("Workflow")}
                            },
                        },
                    )
                },
                tag="workflows",
                errors=("401",),
            ),
            "post": _op(
                "Register a definition (JSON or YAML). The same definition keeps its version; a changed one gets the next.",
                {
                    "201": _ok("A new version.", _ref("Workflow")),
                    "200": _ok("Already registered.", _ref("Workflow")),
                },
                tag="workflows",
                body=definition_body,
                errors=("400", "401", "413", "415", "422"),
            ),
        },
        "/api/workflows/{name}": {
            "get": _op(
                "A workflow's latest definition and its versions.",
                {"200": _ok("The workflow.", _ref("Workflow"))},
                tag="workflows",
                params=[NAME],
            ),
        },
        "/api/workflows/{name}/versions/{version}": {
            "get": _op(
                "One version's definition.",
                {"200": _ok("The version.", _ref("Workflow"))},
                tag="workflows",
                params=[
                    NAME,
                    _path_param("version", "A version number.", {"type": "integer", "minimum": 1}),
                ],
            ),
        },
        "/api/workflows/{name}/graph": {
            "get": _op(
                "Steps as nodes and dependencies as edges.",
                {"200": _ok("The graph.", _ref("Graph"))},
                tag="workflows",
                params=[
                    NAME,
                    _query(
                        "version",
                        "A version (the latest by default).",
                        {"type": "integer", "minimum": 1},
                    ),
                ],
            ),
        },
        "/api/workflows/{name}/runs": {
            "post": _op(
                "Start a run. It is durable when this answers.",
                {
                    "202": _ok("Started (or still running after `wait`).", _ref("Started")),
                    "200": _ok("Ended within `wait`.", _ref("Run")),
                    "409": _error("The stored version cannot be built, or a run has this `id`."),
                },
                tag="runs",
                params=[NAME, WAIT, IDEMPOTENCY_KEY],
                body=_json_body(_ref("StartRun"), required=False),
                errors=("400", "401", "404", "413", "415", "422"),
            ),
        },
        "/api/workflows/{name}/trigger": {
            "post": _op(
                "Trigger a run by hand with a configuration object, its input (a scheduled "
                "workflow's run also gets `input.schedule`).",
                {
                    "202": _ok("Started.", _ref("Started")),
                    "409": _error("The stored version cannot be built."),
                },
                tag="runs",
                params=[NAME, IDEMPOTENCY_KEY],
                body=_json_body(_ref("Trigger"), required=False),
                errors=("400", "401", "404", "413", "415", "422"),
            ),
        },
        "/api/schedules": {
            "get": _op(
                "Scheduled workflows with their state and next fire time.",
                {
                    "200": _ok(
                        "The schedules.",
                        {
                            "type": "object",
                            "properties": {
                                "schedules": {"type": "array", "items": _ref("Schedule")}
                            },
                        },
                    )
                },
                tag="schedules",
                errors=("401",),
            ),
        },
        "/api/triggers": {
            "get": _op(
                "The broker triggers this server subscribed, its counts of messages (started, "
                "duplicate, rejected, filtered; in all and per subscription) and the last rejected "
                "messages with the reason (this process's last 100, in memory).",
                {
                    "200": _ok(
                        "The triggers.",
                        {
                            "type": "object",
                            "properties": {
                                "subscribed": {"type": "array", "items": ANY_OBJECT},
                                "messages": {
                                    "type": "object",
                                    "additionalProperties": {"type": "integer"},
                                },
                                "rejected": {"type": "array", "items": ANY_OBJECT},
                            },
                        },
                    )
                },
                tag="workflows",
                errors=("401",),
            ),
        },
        "/api/tags": {
            "get": _op(
                "Tags with the workflows whose latest version carries each.",
                {
                    "200": _ok(
                        "The tags.",
                        {
                            "type": "object",
                            "properties": {
                                "tags": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "tag": {"type": "string"},
                                            "workflows": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                        },
                                    },
                                }
                            },
                        },
                    )
                },
                tag="workflows",
                errors=("401",),
            ),
        },
        "/api/schedules/{name}/pause": {
            "post": _op(
                "Pause a workflow's schedule: no interval runs until it is unpaused.",
                {"200": _ok("Paused.", _ref("Schedule"))},
                tag="schedules",
                params=[NAME],
            ),
        },
        "/api/schedules/{name}/unpause": {
            "post": _op(
                "Unpause a schedule; with catchup, the intervals missed meanwhile run.",
                {"200": _ok("Unpaused.", _ref("Schedule"))},
                tag="schedules",
                params=[NAME],
            ),
        },
        "/e/{workflow}": {
            "post": _op(
                "Event form: start the workflow with the event's data as input.",
                {
                    "202": _ok("Accepted; event_id is the run's id.", _ref("EventAck")),
                    "200": _ok(
                        "Ended within `wait`: the run, with event_id and ack_date.", _ref("Run")
                    ),
                },
                tag="runs",
                params=[
                    _path_param("workflow", "A workflow's name."),
                    _query(
                        "wait",
                        "Answer with the run (its output) if it ends within this many seconds "
                        "(at most 60); if not, 202 as without it.",
                        {"type": "number", "minimum": 0, "maximum": 60},
                    ),
                    IDEMPOTENCY_KEY,
                ],
                body=_json_body(_ref("Event")),
                errors=("400", "401", "404", "413", "415", "422"),
            ),
        },
        "/api/callbacks/{token}": {
            "post": {
                **_op(
                    "Report on an async call: its output, its error, or a heartbeat. The signed task "
                    "token (sent to the service as Legato-Task-Token) is the credential.",
                    {
                        "200": _ok(
                            "Taken: `status` (accepted, or extended for a heartbeat), and `logs` "
                            "when this callback's lines were not kept (the attempt has 100 "
                            "callbacks' lines already).",
                            ANY_OBJECT,
                        ),
                        "409": _error(
                            "That attempt is no longer waiting (completed, timed out, retried)."
                        ),
                    },
                    tag="runs",
                    params=[_path_param("token", "The task token.")],
                    body=_json_body(_ref("CallbackReport")),
                    errors=("400", "404", "413", "415", "422"),
                ),
                "security": [],
            },
        },
        "/api/events": {
            "post": _op(
                "Publish an event: every step listening for its type and key takes it; if none is, "
                "it is kept (keep_for, or the server's retention) for the first that starts.",
                {"202": _ok("Delivered or kept.", ANY_OBJECT)},
                tag="runs",
                body=_json_body(_ref("PublishedEvent")),
                errors=("400", "401", "413", "415", "422"),
            ),
        },
        "/api/runs": {
            "get": _op(
                "Runs, newest first, one page at a time.",
                {"200": _ok("A page.", runs_page)},
                tag="runs",
                params=[
                    _query("workflow", "Only this workflow's runs.", {"type": "string"}),
                    _query(
                        "tag",
                        "Only runs of workflows whose latest version carries this tag.",
                        {"type": "string"},
                    ),
                    _query(
                        "status",
                        "Only runs in this status.",
                        {"type": "string", "enum": list(STATUSES)},
                    ),
                    _query(
                        "limit",
                        "Page size.",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    ),
                    _query("cursor", "The next_cursor of the previous page.", {"type": "string"}),
                ],
                errors=("400", "401"),
            ),
        },
        "/api/runs/{run_id}": {
            "get": _op(
                "A run with every step and attempt.",
                {"200": _ok("The run.", _ref("Run"))},
                tag="runs",
                params=[RUN_ID, WAIT],
            ),
        },
        "/api/runs/{run_id}/logs": {
            "get": _op(
                "What a run's steps logged, per attempt, in the order written: a Python step's "
                "prints and log records (and a failed one's traceback), and the lines services sent "
                "with their callbacks.",
                {
                    "200": _ok(
                        "A page of lines.",
                        {
                            "type": "object",
                            "properties": {
                                "run_id": {"type": "string"},
                                "logs": {"type": "array", "items": _ref("LogLine")},
                                "next_cursor": {
                                    "type": "integer",
                                    "nullable": True,
                                    "description": "Pass as `after` for the next page.",
                                },
                            },
                        },
                    )
                },
                tag="runs",
                params=[
                    RUN_ID,
                    _query("step", "Only this step's lines.", {"type": "string"}),
                    _query(
                        "attempt",
                        "Only this attempt of the step (needs step).",
                        {"type": "integer", "minimum": 1},
                    ),
                    _query("after", "The next_cursor of the previous page.", {"type": "integer"}),
                ],
            ),
        },
        "/api/runs/{run_id}/notifications": {
            "get": _op(
                "What became of each notification (email, webhook) about a run, failures included.",
                {
                    "200": _ok(
                        "The notifications, oldest first.",
                        {
                            "type": "object",
                            "properties": {
                                "notifications": {"type": "array", "items": _ref("Notification")}
                            },
                        },
                    )
                },
                tag="runs",
                params=[RUN_ID],
            ),
        },
        "/api/runs:cancel": {
            "post": _op(
                "Cancel every run the filter matches that has not ended, with all their "
                "sub-workflow runs.",
                {"200": _ok("Cancelled (count: every run cancelled).", _ref("BulkResult"))},
                tag="runs",
                body=_json_body(_ref("RunFilter")),
                errors=("400", "401", "413", "415", "422"),
            ),
        },
        "/api/runs:retry": {
            "post": _op(
                "Retry every failed or cancelled run the filter matches.",
                {"200": _ok("Queued for a retry.", _ref("BulkResult"))},
                tag="runs",
                body=_json_body(_ref("RunFilter")),
                errors=("400", "401", "413", "415", "422"),
            ),
        },
        "/api/runs/{run_id}/cancel": {
            "post": _op(
                "Cancel a run.",
                {"200": _ok("Cancelled.", _ref("RunSummary")), "409": _error("The run has ended.")},
                tag="runs",
                params=[RUN_ID],
            ),
        },
        "/api/runs/{run_id}/retry": {
            "post": _op(
                "Run a failed or cancelled run again from the steps that did not succeed.",
                {
                    "202": _ok("Running again.", _ref("RunSummary")),
                    "409": _error("The run has not failed."),
                },
                tag="runs",
                params=[RUN_ID],
            ),
        },
        "/api/runs/{run_id}/steps/{step}/complete": {
            "post": _op(
                "Complete by hand a step that waits for its callback (a person's approval): as the "
                "service's callback would, for the step's current attempt.",
                {
                    "200": _ok("Taken.", ANY_OBJECT),
                    "409": _error("The step is not waiting for a callback."),
                },
                tag="runs",
                params=[RUN_ID, _path_param("step", "The step's name.")],
                body=_json_body(_ref("Completion")),
                errors=("400", "401", "404", "413", "415", "422"),
            ),
        },
        "/api/audit": {"get": _audit_op()},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Legato",
            "version": __version__,
            "description": "Durable workflows across HTTP microservices. Errors are JSON: "
            "`{error, message, problems: [{path, message}]}`.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
