"""Capture of a Python step's prints and log records (engine/step_logs.py), through the executor."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import time
from typing import Any

import pytest

from legato.engine import step_logs
from legato.engine.python_executor import PythonExecutor

step_log = logging.getLogger("tests.steps")
engine_log = logging.getLogger("legato.engine")


def chatty(name: str, n: int = 3, pause: float = 0.01) -> str:
    for i in range(n):
        print(f"{name} print {i}")
        step_log.info("%s log %d", name, i)
        time.sleep(pause)
    return name


async def achatty(name: str, n: int = 3) -> str:
    for i in range(n):
        print(f"{name} print {i}")
        step_log.warning("%s log %d", name, i)
        await asyncio.sleep(0.01)
    return name


def fails() -> None:
    print("about to fail")
    raise ValueError("bad value ~~secret.TOKEN.0123456789abcdef~~")


def floods(n: int) -> None:
    for i in range(n):
        print("x" * 100, i)


def quiet() -> int:
    engine_log.warning("the engine's own line")
    return 1


def partial() -> None:
    sys.stdout.write("no newline")
    sys.stderr.write("err 1\nerr")


def hijacks() -> None:
    """Replaces sys.stdout and never puts it back."""
    sys.stdout = io.StringIO()
    print("into the step's own object")


FUNCTIONS: dict[str, Any] = {
    f"t:{f.__name__}": f for f in (chatty, achatty, fails, floods, quiet, partial, hijacks)
}


def _messages(logs: tuple[Any, ...]) -> list[str]:
    return [line[3] for line in logs]


async def test_concurrent_steps_in_threads_and_coroutines_do_not_mix() -> None:
    ex = PythonExecutor(FUNCTIONS)
    names = [f"s{i}" for i in range(6)]
    calls = [
        ex.execute({"function": "t:chatty" if i % 2 else "t:achatty", "args": {"name": n}})
        for i, n in enumerate(names)
    ]
    outcomes = await asyncio.gather(*calls)
    for name, outcome in zip(names, outcomes, strict=True):
        assert outcome.ok and outcome.output == name
        messages = _messages(outcome.logs)
        assert len(messages) == 6
        assert all(m.startswith(f"{name} ") for m in messages), messages
        assert [m for m in messages if "print" in m] == [f"{name} print {i}" for i in range(3)]
        sources = {line[2] for line in outcome.logs}
        assert sources == {"stdout", "tests.steps"}
        levels = {line[1] for line in outcome.logs}
        assert levels <= {"INFO", "WARNING"}
    ex.close()


async def test_engine_logs_and_other_code_are_not_captured() -> None:
    ex = PythonExecutor(FUNCTIONS)
    outside: list[str] = []

    def noise() -> None:
        for _ in range(20):
            print("outside the step")
            step_log.warning("outside the step")
            time.sleep(0.002)
        outside.append("done")

    thread = threading.Thread(target=noise)
    thread.start()
    outcome = await ex.execute({"function": "t:quiet"})
    engine_log.warning("engine line after the step")
    thread.join()
    assert outcome.ok and outcome.logs == ()
    assert outside == ["done"]
    ex.close()


async def test_a_failure_keeps_its_traceback_masked() -> None:
    ex = PythonExecutor(FUNCTIONS)
    outcome = await ex.execute({"function": "t:fails"})
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["kind"] == "exception"
    first, tb = outcome.logs
    assert first[3] == "about to fail"
    assert tb[1:3] == ("ERROR", "traceback")
    assert tb[3].startswith("Traceback (most recent call last):")
    assert 'in fails\n    raise ValueError("bad value' in tb[3]
    assert "python_executor.py" not in tb[3]  # the executor's own frames are left out
    assert "~~secret." not in tb[3] and "bad value ***" in tb[3]
    ex.close()


async def test_bounded_with_a_truncation_mark() -> None:
    ex = PythonExecutor(FUNCTIONS)
    outcome = await ex.execute({"function": "t:floods", "args": {"n": 5000}})
    messages = _messages(outcome.logs)
    assert len(messages) <= step_logs.MAX_LINES + 1
    assert sum(len(m) for m in messages[:-1]) <= step_logs.MAX_BYTES
    assert messages[-1].startswith("[truncated ") and "bytes" in messages[-1]
    ex.close()


async def test_partial_lines_and_stderr() -> None:
    ex = PythonExecutor(FUNCTIONS)
    outcome = await ex.execute({"function": "t:partial"})
    got = sorted((line[2], line[1], line[3]) for line in outcome.logs)
    assert got == [
        ("stderr", "WARNING", "err"),
        ("stderr", "WARNING", "err 1"),
        ("stdout", "INFO", "no newline"),
    ]
    ex.close()


async def test_a_timeout_keeps_what_was_logged() -> None:
    ex = PythonExecutor(FUNCTIONS)
    request = {"function": "t:achatty", "args": {"name": "slow", "n": 100}}
    outcome = await ex.execute(request, timeout=0.1)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["kind"] == "timeout"
    assert "slow print 0" in _messages(outcome.logs)
    ex.close()


async def test_a_blocking_function_that_overruns_times_out_with_its_lines() -> None:
    ex = PythonExecutor(FUNCTIONS)
    request = {"function": "t:chatty", "args": {"name": "blocked", "n": 3, "pause": 0.2}}
    outcome = await ex.execute(request, timeout=0.1)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["kind"] == "timeout"
    assert _messages(outcome.logs)[:2] == ["blocked print 0", "blocked log 0"]
    ex.close()


async def test_a_timeout_the_function_raises_itself_is_its_own_failure() -> None:
    ex = PythonExecutor({"t:raises": _raises_timeout})
    outcome = await ex.execute({"function": "t:raises"}, timeout=5)
    assert outcome.error is not None and outcome.error["kind"] == "exception"
    assert outcome.logs[-1][2] == "traceback"
    ex.close()


def _raises_timeout() -> None:
    raise TimeoutError("the socket timed out")


def test_a_long_line_is_cut() -> None:
    buffer = step_logs.StepBuffer()
    buffer.add("INFO", "x", "y" * (step_logs.MAX_LINE + 10))
    (line,) = buffer.finish()
    assert line[3].endswith("[truncated 10 bytes]")


@pytest.mark.parametrize("level", ["DEBUG"])
async def test_debug_is_not_captured_by_default(level: str) -> None:
    buffer = step_logs.StepBuffer()
    step_logs.install()
    token = step_logs.current.set(buffer)
    try:
        step_log.log(logging.getLevelName(level), "hidden")
        step_log.info("shown")
    finally:
        step_logs.current.reset(token)
    assert _messages(buffer.finish()) == ["shown"]


def test_a_handler_there_before_keeps_the_records_its_loggers_asked_for() -> None:
    """Lowering the root for captures must not hide from an earlier handler a record that its own
    logger's level let through (pytest's caplog, an app that set `legato.kser` to INFO)."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    flt = step_logs._AtLeast(logging.WARNING)
    handler = Keep()
    handler.addFilter(flt)
    named = logging.getLogger("tests.steps.explicit")
    named.setLevel(logging.INFO)
    try:
        for logger, text in ((named, "kept"), (step_log, "dropped")):
            record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, text, (), None)
            handler.handle(record)
    finally:
        named.setLevel(logging.NOTSET)
    assert seen == ["kept"]


async def test_a_step_that_replaces_stdout_does_not_take_over_the_process() -> None:
    ex = PythonExecutor(FUNCTIONS)
    step_logs.install()
    proxy = sys.stdout
    assert (await ex.execute({"function": "t:hijacks", "args": {}})).ok
    assert sys.stdout is proxy  # the proxy is back; the step's StringIO is dropped
    outcome = await ex.execute({"function": "t:chatty", "args": {"name": "after", "pause": 0}})
    assert [m for m in _messages(outcome.logs) if "print" in m] == [
        f"after print {i}" for i in range(3)
    ]
    assert isinstance(sys.stdout, step_logs._StreamProxy)
    assert not isinstance(sys.stdout._target, io.StringIO)


def test_a_full_buffer_only_counts_what_comes_after() -> None:
    buffer = step_logs.StepBuffer(max_lines=2)
    for i in range(5):
        buffer.write("stdout", f"line {i}\n")
    start = time.perf_counter()
    for _ in range(200_000):
        buffer.write("stdout", "12345\n")
    assert time.perf_counter() - start < 1.5  # counted only: no lock-split-encode per line
    lines = buffer.finish()
    assert [line[3] for line in lines[:2]] == ["line 0", "line 1"]
    assert lines[-1][3] == f"[truncated {3 * 6 + 200_000 * 5} bytes, {3 + 200_000} lines]"


def test_the_cli_shows_control_characters_as_escapes() -> None:
    from legato.cli.common import printable
    from legato.cli.logs import format_line

    hostile = "\x1b]0;pwned\x07\x1b[2J\u202eevil\x00nul\x7f\x9b"
    assert printable(hostile) == "\\x1b]0;pwned\\x07\\x1b[2J\\u202eevil\\x00nul\\x7f\\x9b"
    assert printable("tab\tand\nnewline é ✓") == "tab\tand\nnewline é ✓"
    line = {"ts": "t", "level": "INFO", "step": "s\x1b", "attempt": 1, "message": "\x1b[31mRED"}
    shown = format_line(line)
    assert "\x1b[31m" not in shown and "\\x1b[31mRED" in shown and "s\\x1b[1]" in shown


def test_logs_text_output_indents_later_lines_and_escapes_every_field() -> None:
    """Review 5, 9: a message with newlines cannot fake another step's line, and a custom level
    name (`logging.addLevelName(25, "\\x1b[31m...")`) reaches the terminal escaped."""
    import click

    from legato.cli.logs import format_line

    line = {
        "ts": "2026-12-01T10:00:00.000Z\n",
        "level": "\x1b[31mLOUD\nx",
        "step": "a\nb",
        "attempt": 1,
        "message": "ok\n2026-12-01T10:00:00.000Z ERROR   other[1] forged\r\u2028end",
    }
    out = click.unstyle(format_line(line))  # click's own colour codes (dropped off a terminal)
    assert out.split("\n") == [
        "2026-12-01T10:00:00.000Z\\n \\x1b[31mLOUD\\nx a\\nb[1] ok",
        "  | 2026-12-01T10:00:00.000Z ERROR   other[1] forged\\x0d\\u2028end",
    ]
    assert "\x1b" not in out
