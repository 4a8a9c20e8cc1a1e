"""The "call these services in order" form: each service is POSTed the data so far, its reply merged in.

`{"name", "services": [...], "inputs": [...], "outputs": [...]}` becomes a chain of HTTP steps whose
arguments are templates, so it runs, retries and shows like any other workflow. `retries` (a number,
or a step's `retry` mapping) sets every call's retries; without it, the services' or the default.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from legato.errors import Problem
from legato.model.fields import Field
from legato.model.reader import Reader, join
from legato.model.retries import read_setting
from legato.model.service import Service, read_service

_NOT_STEP_CHAR = re.compile(r"[^A-Za-z0-9_]")


def is_services_in_order(data: Any) -> bool:
    return isinstance(data, dict) and "services" in data and "steps" not in data


def to_native(
    data: dict[str, Any], problems: list[Problem], known: Collection[str] | None = None
) -> tuple[dict[str, Any], list[Service]]:
    """Return the native spec and the services the document declares inline (with an address).

    `known` (the directory's names, when given) refuses a service named nowhere, at its place in
    the list (`services[2]`), rather than at the step the chain makes of it.
    """
    r = Reader(data, "", problems)
    name = r.raw("name")
    raw_services = r.get("services", list, [])
    if not raw_services and data.get("services") in (None, [], {}, ""):  # else: not a list
        r.problem("services", "must list at least one service")
    services: list[Service] = []
    step_names: list[tuple[str, str]] = []
    used: dict[str, int] = {}
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
    if known is not None:
        declared = {*known, *(s.name for s in services)}
        for i, item in enumerate(raw_services):
            if isinstance(item, str) and item not in declared:
                problems.append(Problem(join("services", i), f"unknown service {item!r}"))
    _read_operations(r)
    outputs = r.raw("outputs")
    # Every call's `retry`: a number of retries, or {retries, delay, ...}.
    retries = r.raw("retries")
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

    # Each step gets the data the previous one got (its stored request) with its reply merged
    # in: one short template per step, so building and running stay linear in the chain.
    steps: dict[str, Any] = {}
    data_so_far = "input"
    prev: str | None = None
    for step, service_name in step_names:
        steps[step] = {
            "http": {
                "service": service_name,
                "method": "POST",
                "json": "{{ " + data_so_far + " }}",
            },
        }
        if retries is not None:
            steps[step]["retry"] = retries
        if prev is not None:
            steps[step]["depends_on"] = [prev]
        data_so_far = f"merge(steps.{step}.request.json, steps.{step}.output.body)"
        prev = step
    final = data_so_far
    names = _output_names(outputs)
    if names:
        final = f"({final}) | pick(" + ", ".join(repr(n) for n in names) + ")"
    spec["steps"] = steps
    spec["output"] = "{{ " + final + " }}"
    return spec, services


def chain_of(data: Any) -> tuple[str, ...]:
    """The services a services-in-order document calls, by name, in order."""
    items = data.get("services") if isinstance(data, dict) else None
    names = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            names.append(item["name"])
    return tuple(names)


def _read_operations(r: Reader) -> None:
    """machinery's documents carry `"operations": []`, a field it planned but never defined."""
    operations = r.raw("operations")
    if operations is None or operations == []:
        return
    r.problem(
        "operations",
        "must be empty ([]): operations have no meaning in Legato yet; each service's reply is "
        "merged into the data the next one gets (write `steps` for anything else)",
    )


def unproduced_outputs(
    inputs: Sequence[Field],
    outputs: Sequence[Field],
    chain: Sequence[str],
    directory: Mapping[str, Service],
) -> tuple[list[Problem], list[str]]:
    """Problems for each required workflow output that no service of the chain declares and no
    declared input carries through; warnings instead when that cannot be known (a service that
    declares no outputs may answer anything, as may an input nobody declared)."""
    passed = {f.name for f in inputs}
    produced = {f.name for name in chain if name in directory for f in directory[name].outputs}
    missing = [f.name for f in outputs if f.required and f.name not in produced | passed]
    mistyped = _mistyped(outputs, chain, directory)
    if not missing:
        return mistyped, []
    silent = [n for n in dict.fromkeys(chain) if n not in directory or not directory[n].outputs]
    if silent or not inputs:
        why = (
            f"{', '.join(silent)} declare{'s' if len(silent) == 1 else ''} no outputs"
            if silent
            else "the workflow declares no inputs"
        )
        warnings = [
            f"outputs.{name}: no service declares producing it and {why}: "
            "it is checked when a run ends"
            for name in missing
        ]
        return mistyped, warnings
    said = "; ".join(
        f"{n} declares {', '.join(f.name for f in directory[n].outputs)}"
        for n in dict.fromkeys(chain)
    )
    problems = [
        Problem(
            f"outputs.{name}",
            f"no service declares producing {name!r} and it is not an input ({said})",
        )
        for name in missing
    ]
    return problems + mistyped, []


def _compatible(wanted: str, given: str) -> bool:
    return "any" in (wanted, given) or wanted == given or (wanted, given) == ("number", "integer")


def _mistyped(
    outputs: Sequence[Field], chain: Sequence[str], directory: Mapping[str, Service]
) -> list[Problem]:
    """An output whose type differs from the one the service that last produces it declares (a
    later service that declares no outputs may answer anything: then it cannot be known)."""
    problems = []
    for wanted in outputs:
        for name in reversed(chain):
            service = directory.get(name)
            if service is None or not service.outputs:
                break
            given = next((f for f in service.outputs if f.name == wanted.name), None)
            if given is None:
                continue
            if not _compatible(wanted.type, given.type):
                problems.append(
                    Problem(
                        f"outputs.{wanted.name}",
                        f"is declared {wanted.type}, but {name}, which produces it, declares it "
                        f"{given.type}",
                    )
                )
            break
    return problems


def _step_name(service: str, used: dict[str, int]) -> str:
    """`upper`, then `upper_2`, `upper_3`...; `used` maps each name taken to the next number to
    try after it, so a service named many times costs one look per name, not one per earlier use."""
    base = _NOT_STEP_CHAR.sub("_", service)
    if not base or base[0].isdigit():
        base = "s_" + base
    if base not in used:
        used[base] = 2
        return base
    n = used[base]
    while f"{base}_{n}" in used:
        n += 1
    name = f"{base}_{n}"
    used[base] = n + 1
    used[name] = 2
    return name


def _output_names(outputs: Any) -> list[str]:
    if isinstance(outputs, dict):
        return [str(k) for k in outputs]
    if isinstance(outputs, list):
        return [
            o["name"] for o in outputs if isinstance(o, dict) and isinstance(o.get("name"), str)
        ]
    return []
