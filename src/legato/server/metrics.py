"""Prometheus metrics, fed by the engine's committed decisions (so they count only what is durable).

Each server has its own registry: several servers in one process (tests, the demo) never share counts.
Map children (`resize[12]`) are counted under their map step so label values stay bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from legato.engine.runtime import Engine
from legato.engine.state import RUNNING, SUCCEEDED, Decision

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST

disable_created_metrics()  # type: ignore[no-untyped-call] # `_created` series double the output and nobody reads them


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.runs_started = Counter(
            "legato_runs_started", "Runs started.", ["workflow"], registry=r
        )
        self.runs_ended = Counter(
            "legato_runs_ended",
            "Runs that reached an end status (a retried run can end again).",
            ["workflow", "status"],
            registry=r,
        )
        self.steps_ended = Counter(
            "legato_steps_ended",
            "Steps that reached an end status.",
            ["workflow", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "legato_step_attempts", "Step attempts started.", ["workflow"], registry=r
        )
        self.duration = Histogram(
            "legato_step_duration_seconds",
            "Time from a step attempt's start to its end.",
            ["workflow", "step", "status"],
            buckets=BUCKETS,
            registry=r,
        )
        gauges = (
            ("legato_runs_active", "Runs not yet ended, held by this process.", engine.active_runs),
            ("legato_steps_in_flight", "Step calls under way.", engine.steps_in_flight),
            (
                "legato_commit_queue_depth",
                "Decisions waiting for the next commit.",
                engine.commit_queue,
            ),
        )
        for name, doc, fn in gauges:
            Gauge(name, doc, registry=r).set_function(fn)
        self.commits = Gauge("legato_commits", "Store commits since start.", registry=r)
        self.commits.set_function(lambda: engine.stats["commits"])
        r.register(_TriggerMessages(engine))
        engine.subscribe(self.observe)

    def observe(self, d: Decision) -> None:
        wf = d.workflow
        if d.new_run:
            self.runs_started.labels(wf).inc()
        if d.run is not None and d.run.done:
            self.runs_ended.labels(wf, d.run.status).inc()
        for s in d.steps.values():
            if s.status == RUNNING and s.finished_at is None:
                self.attempts.labels(wf).inc()
            elif s.done:
                self.steps_ended.labels(wf, s.status).inc()
                # A succeeded attempt is only the step's row; other attempts come as records below.
                if s.status == SUCCEEDED and s.started_at is not None and s.finished_at is not None:
                    step = s.name.split("[", 1)[0]
                    self.duration.labels(wf, step, s.status).observe(s.finished_at - s.started_at)
        for a in d.attempts:
            if a.started_at is not None and a.finished_at is not None:
                step = a.step.split("[", 1)[0]
                self.duration.labels(wf, step, a.status).observe(a.finished_at - a.started_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TriggerMessages(Collector):
    """The engine's counts of broker messages handled by triggers, read at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "legato_trigger_messages",
            "Broker messages handled by workflow triggers, by outcome: started (a new run), "
            "duplicate (its key had started a run), rejected (it can never start one), filtered "
            "(the filter said no).",
            labels=["outcome"],
        )
        for outcome, count in self.engine.triggers.stats.items():
            family.add_metric([outcome], count)
        yield family
        per = CounterMetricFamily(
            "legato_trigger_workflow_messages",
            "The same, per workflow (a key that swallows runs shows as its duplicate count).",
            labels=["workflow", "outcome"],
        )
        totals: dict[tuple[str, str], int] = {}
        for (workflow, _, _), counts in list(self.engine.triggers.counts.items()):
            for outcome, count in counts.items():
                totals[workflow, outcome] = totals.get((workflow, outcome), 0) + count
        for (workflow, outcome), count in sorted(totals.items()):
            per.add_metric([workflow, outcome], count)
        yield per
