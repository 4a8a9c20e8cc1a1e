"""Reading retry settings: a step's `retry`, a workflow's `defaults` (`retries`, `retry_delay`, ...)
and a service's `retry`. Each is read as the fields it gives, so the most specific setting can be
laid over the one below it (step > workflow defaults > service > the built-in default)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from legato.errors import Problem
from legato.model.reader import Reader
from legato.model.workflow import FAILURE_KINDS, NEVER_RETRIED, RetryPolicy

# Policy field -> the key a step's or a service's `retry` mapping uses for it.
STEP_KEYS = {f: f for f in ("retries", "delay", "backoff", "max_delay", "jitter", "on")}
# Policy field -> the key of a workflow's `defaults`.
DEFAULTS_KEYS = {
    "retries": "retries",
    "delay": "retry_delay",
    "backoff": "retry_backoff",
    "max_delay": "retry_max_delay",
    "jitter": "retry_jitter",
    "on": "retry_on",
}


def read_overrides(r: Reader, keys: dict[str, str]) -> dict[str, Any]:
    """The policy fields `r` gives (and no others), each checked; a bad one is reported and left out."""
    base = RetryPolicy()
    out: dict[str, Any] = {}
    for name, key in keys.items():
        if r.data.get(key) is None:
            r.seen.add(key)
            continue
        before = len(r.problems)
        value = _READERS[name](r, key, getattr(base, name))
        if len(r.problems) == before:
            out[name] = value
    return out


def read_retry(data: Any, path: str, base: RetryPolicy, problems: list[Problem]) -> RetryPolicy:
    """A `retry` setting (a number of retries, or a mapping) laid over `base`; absent, `base`."""
    overrides = read_setting(data, path, problems)
    if overrides is None:
        return base
    policy = replace(base, **overrides, fallback=False, given=base.given | set(overrides))
    check_pace(policy, path, STEP_KEYS, problems)
    return policy


# Bounds against a hot loop: a failing service hammered with back-to-back attempts for ever.
MAX_RETRIES = 1000
FAST_RETRIES = 10  # up to this many retries may come without a pause (delay 0, for tests)
MIN_DELAY = 0.1


def check_pace(
    policy: RetryPolicy, path: str, keys: dict[str, str], problems: list[Problem]
) -> None:
    """More than FAST_RETRIES retries need a pause between them: `delay` and `max_delay` of at
    least MIN_DELAY seconds (the field named is the one too short, under the level's own name)."""
    if policy.retries <= FAST_RETRIES:
        return
    for name in ("delay", "max_delay"):
        if getattr(policy, name) < MIN_DELAY:
            problems.append(
                Problem(
                    f"{path}.{keys[name]}",
                    f"must be at least {MIN_DELAY:g}s with more than {FAST_RETRIES} retries "
                    "(a retry loop without a pause hammers the service)",
                )
            )
            return


def read_setting(data: Any, path: str, problems: list[Problem]) -> dict[str, Any] | None:
    """The fields a `retry` setting gives; None when there is no setting."""
    if data is None:
        return None
    if isinstance(data, int) and not isinstance(data, bool):
        data = {"retries": data}
    elif not isinstance(data, dict):
        problems.append(
            Problem(path, "must be a number of retries or a mapping {retries, delay, ...}")
        )
        return None
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    overrides = read_overrides(r, STEP_KEYS)
    r.done()
    return overrides


def policy_to_dict(policy: RetryPolicy) -> dict[str, Any]:
    """A policy as the `retry` mapping that was written (the API's and `to_dict`'s view): only its
    given fields, so that it reads back the same, and the fields left out still come from the
    levels around it (a stored service must not turn every field into an explicit one)."""
    full = {
        "retries": policy.retries,
        "delay": policy.delay,
        "backoff": policy.backoff,
        "max_delay": policy.max_delay,
        "jitter": policy.jitter,
        "on": sorted(policy.on),
    }
    return {k: v for k, v in full.items() if k in policy.given}


def _retries(r: Reader, key: str, default: int) -> int:
    value: int = r.get(key, int, default)
    if value < 0:
        r.problem(key, "must not be negative")
        return default
    if value > MAX_RETRIES:
        r.problem(key, f"must be at most {MAX_RETRIES}")
        return default
    return value


def _duration(r: Reader, key: str, default: float) -> float:
    return r.duration(key, default) or 0.0


def _backoff(r: Reader, key: str, default: float) -> float:
    value: float = r.get(key, (int, float), default)
    if not 1 <= value <= 100:  # also refuses NaN
        r.problem(key, "must be from 1 to 100")
        return default
    return float(value)


def _jitter(r: Reader, key: str, default: bool) -> bool:
    value: bool = r.get(key, bool, default)
    return value


def _retry_on(r: Reader, key: str, default: frozenset[str]) -> frozenset[str]:
    kinds = r.names(key)
    unknown = [k for k in kinds if k not in FAILURE_KINDS]
    if unknown:
        known = ", ".join(k for k in FAILURE_KINDS if k not in NEVER_RETRIED)
        r.problem(key, f"unknown failure kind {unknown[0]!r}; known: {known}")
    elif refused := [k for k in kinds if k in NEVER_RETRIED]:
        r.problem(key, f"{refused[0]!r} failures are never retried: the answer would not change")
    return frozenset(kinds)


_READERS: dict[str, Any] = {
    "retries": _retries,
    "delay": _duration,
    "backoff": _backoff,
    "max_delay": _duration,
    "jitter": _jitter,
    "on": _retry_on,
}
