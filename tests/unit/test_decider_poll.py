"""Polled results: an accepted job's result is looked for every `every` seconds at a URL or an S3
object, until it is there or the step's timeout passes."""

from __future__ import annotations

import pytest

from legato.engine.ids import result_key
from legato.engine.state import Fetch, Fetched, Resume, Wake
from legato.errors import DefinitionError
from tests.unit.decider_support import Run, build, executed, schedules

URL = "http://svc.test/"


def fetches(run: Run) -> list[Fetch]:
    return [e for e in run.last.effects if isinstance(e, Fetch)]


def polled(poll: dict[str, object], **step: object) -> Run:
    step.setdefault("timeout", 3600)
    run = Run(
        build(
            {
                "job": {"http": {"url": URL, "poll": poll}, **step},
                "next": {"http": {"url": URL}, "depends_on": "job"},
            }
        )
    )
    run.start()
    return run


def test_a_url_from_the_acceptance_is_polled_until_the_result_is_there() -> None:
    run = polled({"every": "2s", "url": "{{ accepted.body.result }}"})
    run.ok("job", {"result": "http://svc.test/results/1"}, status=202)
    job = run.step("job")
    assert (job.status, job.reason, job.next_at) == ("waiting", "poll", 102.0)
    assert job.request["poll"] == {"url": "http://svc.test/results/1"}
    run.send(Wake("job"), at=102.0)
    assert fetches(run) == [Fetch("job", 1, {"url": "http://svc.test/results/1"})]
    d = run.send(Fetched("job", 1, False), at=102.1)
    assert [s.at for s in schedules(d)] == [104.1]
    d = run.send(Fetched("job", 1, True, {"pages": 3}), at=104.2)
    assert run.status("job") == "succeeded" and run.step("job").output == {"pages": 3}
    assert executed(d) == ["next"]


def test_an_s3_result_key_is_unique_per_attempt() -> None:
    run = polled({"every": 1, "s3": {"bucket": "results"}})
    run.ok("job", status=202)
    assert run.step("job").request["poll"] == {
        "bucket": "results",
        "key": result_key("run-1", "job", 1),
    }
    assert result_key("run-1", "job", 2) != result_key("run-1", "job", 1)


def test_the_timeout_bounds_the_polling_and_errors_fail_the_attempt() -> None:
    run = polled({"every": 5, "url": "http://svc.test/r"}, timeout=12)
    run.ok("job", status=202)
    run.send(Fetched("job", 1, False), at=105.0)
    run.send(Fetched("job", 1, False), at=112.0)
    job = run.step("job")
    assert job.status == "failed" and job.error is not None and job.error["kind"] == "timeout"
    assert "no result at http://svc.test/r" in job.error["message"]
    other = polled({"every": 5, "url": "http://svc.test/r"})
    other.ok("job", status=202)
    d = other.send(Fetched("job", 1, False, None, {"kind": "5xx", "message": "GET answered 500"}))
    assert other.status("job") == "waiting"  # a read that may pass: look again, the job goes on
    assert [s.at for s in schedules(d)] == [105.0]
    other.send(Fetched("job", 1, False, None, {"kind": "4xx", "message": "GET answered 403"}))
    assert other.status("job") == "failed"  # one that will not pass fails the attempt


def test_stale_fetches_change_nothing_and_resume_rearms_the_poll() -> None:
    run = polled({"every": 5, "url": "http://svc.test/r"})
    run.ok("job", status=202)
    assert run.send(Fetched("job", 2, True, {})).empty
    d = run.send(Resume())
    assert [s.at for s in schedules(d)] == [105.0]


@pytest.mark.parametrize(
    ("poll", "message"),
    [
        ({"every": 1}, "exactly one of url or s3"),
        ({"every": 0, "url": "x"}, "must be positive"),
        ({"s3": {"name": "b"}}, "must be {bucket"),
    ],
)
def test_bad_polls_are_refused(poll: dict[str, object], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        build({"job": {"http": {"url": URL, "poll": poll}}})


def test_a_polled_step_needs_a_timeout() -> None:
    with pytest.raises(DefinitionError, match="timeout: is required with poll"):
        build({"job": {"http": {"url": URL, "poll": {"url": "http://x/"}}}})


def test_poll_and_async_do_not_mix() -> None:
    with pytest.raises(DefinitionError, match="cannot be combined with async"):
        build({"job": {"http": {"url": URL, "async": True, "poll": {"url": "http://x/"}}}})
