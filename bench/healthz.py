"""/healthz latency of a `legato serve` while heavy definitions and template bombs arrive.

A probe process GETs /healthz one request after the other (every 10 ms) for the whole benchmark,
and the latencies are split by phase:

- idle: nothing else going on (the baseline);
- 10k steps, refused: a 10,000-step definition POSTed again and again to a server with the default
  limits (it is refused with a 422 naming --max-steps);
- 2000 steps, accepted: the largest definition the default limits take, POSTed again and again;
- 10k steps, accepted: the same definition POSTed to a server started with limits raised to take it
  (validated in a thread; seconds of CPU per post). Each step has a template Jinja compiles, the
  costly kind (--paths-only: path templates only, which need no compiling);
- power bomb: runs of `{{ (10 ** input.n) % 7 }}` with n = 10,000,000 started again and again;
- repeat bomb: runs of `{{ 'a' * 100000000 }}` in a step's `json`;
- loop bomb: runs of two nested loops of 100,000 iterations each (it uses its whole operation budget).

Prints p50, p99 and max per phase. Target (issue 12): p99 under 100 ms in every phase.

    python bench/healthz.py --seconds 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from legato.model.limits import DEFAULT_MAX_STEPS
from throughput import start_server  # the same `legato serve` launcher

PROBE_EVERY = 0.01


def chain(n: int, compiled: bool = True) -> bytes:
    """n HTTP steps in a line, each with a template in its URL: by default one Jinja compiles
    (`{{ input.i + k }}`), validation's main cost; a path (`{{ input.i }}`) otherwise."""
    steps: dict[str, Any] = {}
    for i in range(n):
        url = f"http://h/{{{{ input.i + {i} }}}}" if compiled else "http://h/{{ input.i }}"
        steps[f"s{i}"] = {"http": {"url": url}}
        if i:
            steps[f"s{i}"]["depends_on"] = [f"s{i - 1}"]
    return orjson.dumps({"name": "big", "steps": steps})


BOMBS = {
    "power": "{{ (10 ** input.n) % 7 }}",
    "repeat": "{{ 'a' * 100000000 }}",
    "loop": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
}


def _probe(url: str, stop: Any, out: Any) -> None:
    """In its own process (the load generator's GIL must not delay it): GET /healthz one after
    the other until `stop`, and send back (start, latency, ok) of each."""
    seen: list[tuple[float, float, bool]] = []
    with httpx.Client(base_url=url, timeout=120) as http:
        while not stop.is_set():
            began = time.monotonic()
            try:
                ok = http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            seen.append((began, time.monotonic() - began, ok))
            time.sleep(PROBE_EVERY)
    out.send(seen)


class Probe:
    def __init__(self, url: str) -> None:
        self.stop = multiprocessing.Event()
        self.receive, send = multiprocessing.Pipe(duplex=False)
        self.process = multiprocessing.Process(target=_probe, args=(url, self.stop, send))
        self.process.start()
        self.phases: list[tuple[str, float, float]] = []

    def during(self, phase: str, seconds: float, work: Callable[[], Any]) -> list[Any]:
        """Do `work` again and again for `seconds` (at least once); the probes meanwhile count
        for `phase`."""
        began = time.monotonic()
        results = []
        while True:
            results.append(work())
            if time.monotonic() >= began + seconds:
                break
        self.phases.append((phase, began, time.monotonic()))
        time.sleep(0.2)
        return results

    def idle(self, phase: str, seconds: float) -> None:
        self.during(phase, seconds, lambda: time.sleep(seconds))

    def finish(self) -> dict[str, tuple[list[float], int]]:
        self.stop.set()
        seen: list[tuple[float, float, bool]] = self.receive.recv()
        self.process.join()
        out: dict[str, tuple[list[float], int]] = {}
        for phase, began, ended in self.phases:
            mine = [(took, ok) for at, took, ok in seen if began <= at < ended]
            out[phase] = ([took for took, _ in mine], sum(1 for _, ok in mine if not ok))
        return out


def _post_definition(url: str, body: bytes) -> int:
    response = httpx.post(
        url + "/api/workflows",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=300,
    )
    return response.status_code


def _start_bomb(http: httpx.Client, name: str) -> str:
    response = http.post(f"/api/workflows/{name}/runs?wait=30", json={"input": {"n": 10_000_000}})
    run = response.json()
    steps = run.get("steps") or [{}]
    return str((steps[0].get("error") or {}).get("kind", run.get("status")))


def _starter(http: httpx.Client, workflow: str) -> Callable[[], str]:
    return lambda: _start_bomb(http, workflow)


def _figures(latencies: list[float]) -> tuple[float, float, float, int]:
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return statistics.median(ms), p99, ms[-1], len(latencies)


def _summary(values: list[Any]) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in counts.items())


def _bombs(probe: Probe, url: str, seconds: float, answers: dict[str, str]) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, template in BOMBS.items():
            workflow = f"bomb-{name}"
            definition = {
                "name": workflow,
                "inputs": [{"name": "n", "type": "integer"}],
                "steps": {"a": {"http": {"url": "http://127.0.0.1:9/", "json": template}}},
            }
            assert http.post("/api/workflows", json=definition).status_code in (200, 201)
            phase = f"{name} bomb"
            answers[phase] = _summary(probe.during(phase, seconds, _starter(http, workflow)))


def bench(seconds: float, steps: int, compiled: bool) -> None:
    body = chain(steps, compiled)
    answers: dict[str, str] = {}
    results: dict[str, tuple[list[float], int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(f"sqlite:///{Path(tmp) / 'default.db'}")
        try:
            probe = Probe(url)
            probe.idle("idle", seconds)
            phase = f"{steps} steps ({len(body) // 1024} KiB), refused"
            answers[phase] = _summary(
                probe.during(phase, seconds, lambda: _post_definition(url, body))
            )
            allowed = chain(DEFAULT_MAX_STEPS, compiled)
            phase = f"{DEFAULT_MAX_STEPS} steps ({len(allowed) // 1024} KiB), accepted"
            answers[phase] = _summary(
                probe.during(phase, seconds, lambda: _post_definition(url, allowed))
            )
            _bombs(probe, url, seconds, answers)
            results.update(probe.finish())
        finally:
            server.terminate()
            server.wait()
        big = str(8 * len(body))
        raised = ("--max-steps", str(steps), "--max-body", big, "--max-definition", big)
        server, url = start_server(f"sqlite:///{Path(tmp) / 'raised.db'}", *raised)
        try:
            probe = Probe(url)
            probe.idle("idle, raised limits", seconds)
            phase = f"{steps} steps ({len(body) // 1024} KiB), accepted with raised limits"
            answers[phase] = _summary(
                probe.during(phase, seconds, lambda: _post_definition(url, body))
            )
            results.update(probe.finish())
        finally:
            server.terminate()
            server.wait()
    print(
        f"/healthz every {PROBE_EVERY * 1000:.0f} ms from another process; phases of {seconds:g} s"
    )
    print("| phase | answers | probes | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for phase, (latencies, failed) in results.items():
        p50, p99, top, n = _figures(latencies)
        failures = f" ({failed} failed)" if failed else ""
        answer = answers.get(phase, "-")
        print(f"| {phase} | {answer} | {n}{failures} | {p50:.1f} | {p99:.1f} | {top:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each phase.")
    parser.add_argument("--steps", type=int, default=10_000, help="Steps of the big definition.")
    parser.add_argument(
        "--paths-only",
        action="store_true",
        help="Give the big definition's steps only path templates (never compiled by Jinja).",
    )
    args = parser.parse_args()
    bench(args.seconds, args.steps, not args.paths_only)


if __name__ == "__main__":
    main()
