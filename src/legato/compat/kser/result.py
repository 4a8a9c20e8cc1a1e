"""A task's result, shaped like Kser's (cdumay_result): a return code, two texts and a dict of values.

Results travel between steps as plain JSON (`to_dict` / `from_dict`), since each task of an operation is
its own durable step and may run in another process; `+` is how the chain merges them.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from legato.errors import LegatoError

FIELDS = ("uuid", "retcode", "stdout", "stderr", "retval")


class Result:
    """`retcode` 0 is a success; anything else fails the task that returned it."""

    def __init__(
        self,
        retcode: int = 0,
        stdout: str = "",
        stderr: str = "",
        retval: dict[str, Any] | None = None,
        uuid: str | None = None,
    ) -> None:
        self.retcode = retcode
        self.stdout = "" if stdout is None else stdout
        self.stderr = "" if stderr is None else stderr
        self.retval: dict[str, Any] = retval if retval is not None else {}
        self.uuid = str(uuid) if uuid is not None else str(uuidlib.uuid4())
        self.check()
        self.retval = dict(self.retval)

    def check(self, where: str = "") -> Result:
        """Itself, if its fields have Kser's types; else an error naming the field (`retcode`,
        `retval`...), raised here rather than later as a TypeError from the merge or JSON."""
        prefix = f"{where}." if where else ""
        if not isinstance(self.retcode, int) or isinstance(self.retcode, bool):
            raise LegatoError(f"{prefix}retcode: must be an integer, got {self.retcode!r:.60}")
        for key in ("stdout", "stderr"):
            value = getattr(self, key)
            if not isinstance(value, str):
                raise LegatoError(f"{prefix}{key}: must be a string, got {type(value).__name__}")
        if not isinstance(self.retval, dict):
            raise LegatoError(
                f"{prefix}retval: must be an object (a dict), got {type(self.retval).__name__}"
            )
        return self

    def print(self, data: Any) -> None:
        """Append a line to stdout."""
        self.stdout = _joined(self.stdout, str(data))

    def print_err(self, data: Any) -> None:
        """Append a line to stderr."""
        self.stderr = _joined(self.stderr, str(data))

    def __add__(self, other: Result) -> Result:
        """The chain's merge: the worst return code, both texts in order, the values of both
        (the later wins on a shared key). The left side's uuid stays: it names the chain."""
        if not isinstance(other, Result):
            return NotImplemented
        return Result(
            retcode=max(self.retcode, other.retcode),
            stdout=_joined(self.stdout, other.stdout),
            stderr=_joined(self.stderr, other.stderr),
            retval={**self.retval, **other.retval},
            uuid=self.uuid,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the lists it holds

    def __str__(self) -> str:
        """What the log line shows: stdout on success, stderr (or stdout if empty) on failure."""
        if self.retcode == 0:
            return self.stdout
        return self.stderr or self.stdout

    def __repr__(self) -> str:
        return f"Result<uuid={self.uuid!r}, retcode={self.retcode}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "retcode": self.retcode,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "retval": dict(self.retval),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "result") -> Result:
        """Read a result from JSON; a wrong shape is an error naming the field (e.g. `result.retcode`)."""
        if data is None:
            return cls()
        if isinstance(data, Result):
            return data
        if not isinstance(data, dict):
            raise LegatoError(f"{where}: must be an object {{retcode, stdout, stderr, retval}}")
        retcode = data.get("retcode", 0)
        if not isinstance(retcode, int) or isinstance(retcode, bool):
            raise LegatoError(f"{where}.retcode: must be an integer, got {retcode!r}")
        texts = {}
        for key in ("stdout", "stderr"):
            value = data.get(key) or ""
            if not isinstance(value, str):
                raise LegatoError(f"{where}.{key}: must be a string")
            texts[key] = value
        retval = data.get("retval") or {}
        if not isinstance(retval, dict):
            raise LegatoError(f"{where}.retval: must be an object")
        found = data.get("uuid")
        return cls(retcode, texts["stdout"], texts["stderr"], retval, found)

    @classmethod
    def from_exception(cls, exc: BaseException, uuid: str | None = None) -> Result:
        """A failed result for an exception a task raised (retcode 1, the exception in stderr)."""
        return cls(retcode=1, stderr=f"{type(exc).__name__}: {exc}", uuid=uuid)


def _joined(first: str, second: str) -> str:
    return "\n".join(t for t in (first, second) if t)
