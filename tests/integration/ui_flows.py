"""Workflows the UI tests (HTTP and browser) draw and run: a branch, a join, a step that waits for a
person's approval (an async call nobody calls back), and a step that fails once."""

from __future__ import annotations

from typing import Any


def approval(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": "big orders wait for a person",
        "inputs": {"amount": "number"},
        "steps": {
            "fetch": {"http": {"service": "svc", "path": "/echo", "json": {"a": 1}}},
            "check": {
                "depends_on": "fetch",
                "branch": {
                    "cases": [{"when": "{{ input.amount > 100 }}", "then": ["approve"]}],
                    "otherwise": ["auto"],
                },
            },
            "approve": {"http": {"service": "svc", "path": "/status/202", "async": True}},
            "auto": {"http": {"service": "svc", "path": "/echo"}},
            "finish": {
                "depends_on": ["approve", "auto"],
                "trigger": "one_succeeded",
                "http": {"service": "svc", "path": "/echo"},
            },
        },
    }


def fails_once(name: str) -> dict[str, Any]:
    """`charge` fails its first call (no step retries), so the run fails; a run retry succeeds."""
    return {
        "name": name,
        "steps": {
            "reserve": {"http": {"service": "svc", "path": "/echo"}},
            "charge": {
                "depends_on": "reserve",
                "retry": {"retries": 0},
                "http": {
                    "service": "svc",
                    "path": "/flaky",
                    "query": {"fail": "1", "status": "500"},
                },
            },
            "notify": {"depends_on": "charge", "http": {"service": "svc", "path": "/echo"}},
        },
    }
