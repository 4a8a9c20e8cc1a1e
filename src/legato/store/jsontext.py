"""JSON text for the store, for any value a run can produce.

A run's values come from templates, services and functions, and some are not what orjson writes: an
integer past 64 bits (`{{ 2 ** 64 }}`), a reply nested past 254 levels. A commit that raised on them
would be retried forever and stall every run, so such a value is written the way the standard library
writes it (an integer past 64 bits reads back as a float) or, failing that, as a note saying why.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dump_json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS).decode()
    except TypeError:
        pass
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError) as exc:
        note = {"unstorable": f"{type(value).__name__} that JSON cannot hold: {exc}"}
        return orjson.dumps(note).decode()
