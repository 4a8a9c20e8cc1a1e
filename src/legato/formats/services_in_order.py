"""The "call these services in order" form: each service is POSTed the data so far, its reply merged in.

`{"name", "services": [...], "inputs": [...], "outputs": [...]}` becomes a chain of HTTP steps whose
arguments are templates, so it runs, retries and shows like any other workflow. `retries` (a number,
or a step's `retry` mapping) sets every call's retries; without it, the services' or the default.
"""

from __future__ import annotations

import re
from typing import Any

from legato.errors import Problem
from legato.model.reader import Reader, join
from legato.model.retries import read_setting
from legato.model.service import Service, read_service

_NOT_STEP_CHAR = re.compile(r"[^A-Za-z0-9_]")


def is_services_in_order(data: Any) -> bool:
    return isinstance(data, dict) and "services" in data and "steps" not in data


def to_native(
    data: dict[str, Any], problems: list[Problem]
) -> tuple[dict[str, Any], list[Service]]:
    """Return the native spec and the services the document declares inline (with an address)."""
    r = Reader(data, "", problems)
    name = r.raw("name")
    raw_services = r.get("services", list, [])
    if not raw_services:
        r.problem("services", "must list at least one service")
    services: list[Service] = []
    step_names: list[tuple[str, str]] = []
    used: set[str] = set()
    for i, item in enumerate(raw_services):
        where = join("services", i)
        if isinstance(item, str):
            service_name = item
        elif isinstance(item, dict):
            service = read_service(item, where, problems)
            if service is None:
                continue
            services.append(service)
            service_name = service.name
        else:
            problems.append(
                Problem(where, "must be a service name or {name, address, inputs, outputs}")
            )
            continue
        step = _step_name(service_name, used)
        step_names.append((step, service_name))
    outputs = r.raw("outputs")
    retries = r.raw(
        "retries"
    )  # every call's `retry`: a number of retries, or {retries, delay, ...}
    if retries is not None:
        before = len(problems)
        read_setting(retries, "retries", problems)
        if len(problems) > before:
            retries = None  # reported here, under `retries`, not again under each step
    spec: dict[str, Any] = {"name": name}
    for key in ("description", "inputs", "outputs", "timeout", "defaults"):
        if r.has(key):
            spec[key] = r.raw(key)
    r.done()

    steps: dict[str, Any] = {}
    replies: list[str] = []
    for step, service_name in step_names:
        data_so_far = "merge(input" + "".join(f", {x}" for x in replies) + ")"
        steps[step] = {
            "http": {
                "service": service_name,
                "method": "POST",
                "json": "{{ " + data_so_far + " }}",
            },
        }
        if retries is not None:
            steps[step]["retry"] = retries
        if replies:
            steps[step]["depends_on"] = [step_names[len(replies) - 1][0]]
        replies.append(f"steps.{step}.output.body")
    final = "merge(input" + "".join(f", {x}" for x in replies) + ")"
    names = _output_names(outputs)
    if names:
        final += " | pick(" + ", ".join(repr(n) for n in names) + ")"
    spec["steps"] = steps
    spec["output"] = "{{ " + final + " }}"
    return spec, services


def _step_name(service: str, used: set[str]) -> str:
    base = _NOT_STEP_CHAR.sub("_", service)
    if not base or base[0].isdigit():
        base = "s_" + base
    name, n = base, 2
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


def _output_names(outputs: Any) -> list[str]:
    if isinstance(outputs, dict):
        return [str(k) for k in outputs]
    if isinstance(outputs, list):
        return [
            o["name"] for o in outputs if isinstance(o, dict) and isinstance(o.get("name"), str)
        ]
    return []
