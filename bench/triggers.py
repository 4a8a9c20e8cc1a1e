"""Broker messages starting runs through a workflow's trigger: how fast, and exactly once per key.

Publishes `--messages` JSON messages `{"n": i}` on a fresh destination of the broker, a share of them
(`--duplicates`) twice, while an embedded engine in this process consumes them through a trigger
whose key is `n`. Timed from the first publish to the moment the last run is stored (the trigger's
counters: every delivery either started a run or was found a duplicate); each run has one Python
step, done at once. Then counts the runs in the store, which must equal the unique messages. cpu is
this process's (publisher, consumer and engine), over the same span.
Kafka: a tansu broker is started as the tests do (tests/integration/kafka.py).

    python bench/triggers.py --transport nats --messages 1000 --duplicates 0.1
    python bench/triggers.py --transport nats --db 'postgresql://postgres@127.0.0.1:5432/test?schema=bench_triggers'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from legato import Engine, aio
from legato.transports import open_transport

ROOT = Path(__file__).resolve().parent.parent
KIND = {"nats": "subject", "rabbitmq": "queue", "kafka": "topic"}
URLS = {
    "nats": os.environ.get("LEGATO_NATS_URL", "nats://127.0.0.1:4222"),
    "rabbitmq": os.environ.get("LEGATO_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
}


def noted(n: int) -> int:
    return n


async def bench(
    transport: str, url: str, messages: int, duplicates: float, db: str
) -> dict[str, Any]:
    destination = f"legato-bench-{uuid.uuid4().hex[:12]}"
    name = f"triggered-{uuid.uuid4().hex[:8]}"
    twice = set(random.Random(13).sample(range(messages), int(messages * duplicates)))
    bodies = [orjson.dumps({"n": i}) for i in range(messages) for _ in range(1 + (i in twice))]
    publisher = open_transport(url)
    await publisher.connect()
    engine = Engine.open(db)
    engine.add_functions({"bench.triggers:noted": noted})
    engine.add_transport("bus", url)
    try:
        async with engine:
            await engine.apply(
                {
                    "name": name,
                    "inputs": [{"name": "n", "type": "integer"}],
                    "triggers": [
                        {
                            "transport": "bus",
                            KIND[transport]: destination,
                            "key": "{{ message.n }}",
                            "input": {"n": "{{ message.n }}"},
                        }
                    ],
                    "steps": {
                        "note": {
                            "python": {
                                "function": "bench.triggers:noted",
                                "args": {"n": "{{ input.n }}"},
                            }
                        }
                    },
                }
            )
            await asyncio.sleep(1)  # the subscription is made
            stats = engine.triggers.stats
            t0, c0 = time.perf_counter(), time.process_time()
            for body in bodies:
                await publisher.publish(destination, body, {})
            published = time.perf_counter() - t0
            deadline = time.monotonic() + 120
            while stats["started"] + stats["duplicate"] + stats["rejected"] < len(bodies):
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out: {stats} after {len(bodies)} messages")
                await asyncio.sleep(0.01)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs = await engine.store.list_runs(name, None, messages * 2 + 10)
    finally:
        await publisher.close()
        await remove(url, destination)
    return {
        "sent": len(bodies),
        "unique": messages,
        "runs": len(runs),
        "duplicate": stats["duplicate"],
        "rejected": stats["rejected"],
        "publish_s": published,
        "seconds": elapsed,
        "cpu": cpu,
    }


async def remove(url: str, destination: str) -> None:
    """Delete the stream or queue made for this run (the tests' helper); Kafka's broker is ours."""
    if url.startswith("kafka"):
        return
    from tests.integration.brokers import remove as remove_all

    await remove_all(url, [destination])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--transport", choices=list(KIND), default="nats")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--duplicates", type=float, default=0.1, help="share sent twice")
    parser.add_argument(
        "--db",
        help="A database URL instead of a fresh SQLite file, e.g. "
        "postgresql://postgres@127.0.0.1:5432/test?schema=bench_triggers",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # tests.integration: the brokers' helpers
    from tests.integration import kafka

    try:
        url = kafka.kafka_url() if args.transport == "kafka" else URLS[args.transport]
        with tempfile.TemporaryDirectory() as tmp:
            db = args.db or f"sqlite:///{Path(tmp) / 'triggers.db'}"
            r = aio.run(bench(args.transport, url, args.messages, args.duplicates, db))
    finally:
        kafka.stop()
    print(
        f"{args.transport} db={args.db or 'sqlite'} cpus={os.cpu_count()}: sent {r['sent']} "
        f"({r['unique']} unique), runs stored {r['runs']}, duplicates {r['duplicate']}, "
        f"rejected {r['rejected']}; publishing {r['publish_s']:.2f} s, first publish to last run "
        f"stored {r['seconds']:.2f} s = {r['runs'] / r['seconds']:.0f} runs/s, "
        f"{r['sent'] / r['seconds']:.0f} messages/s, cpu {r['cpu']:.2f} s"
    )
    if r["runs"] != r["unique"]:
        print(f"MISMATCH: {r['runs']} runs for {r['unique']} unique messages")


if __name__ == "__main__":
    main()
