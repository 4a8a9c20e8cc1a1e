"""The seed's OrderWorkflow served as a DAG folder: `legato serve|worker --dags examples/dagger
--transport dagger=URL`, real processes started by the CLI, a test consumer on a real NATS playing
the payment and shipping services (it reads each command and answers on the listener topic with
the order's key)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from legato.client import AsyncClient
from tests.integration.brokers import broker_url
from tests.integration.serverprocess import start_server
from tests.integration.test_dagger import EXAMPLE, Peer

FOLDER = EXAMPLE.parent
DAGS = ("--dags", str(FOLDER))


async def answering_peer(url: str) -> Peer:
    peer = Peer(url)
    await peer.__aenter__()
    for name in ("PAYMENT", "SHIPPING"):
        await peer.read(
            f"{name}_COMMAND",
            lambda body, n=name: (f"{n}_LISTENER", {"order_number": body["order_number"]}),
        )
    peer.made += ["PAYMENT_LISTENER", "SHIPPING_LISTENER"]
    return peer


async def test_serve_dags_reads_the_listener_topics_of_a_dagger_file(tmp_path: Path) -> None:
    url = broker_url("nats")
    order = f"ORDER-{uuid.uuid4().hex[:8]}"
    peer = await answering_peer(url)
    server = start_server(tmp_path, "--dags", str(FOLDER), "--transport", f"dagger={url}")
    try:
        async with AsyncClient(server.url) as api:
            run = await api.start(
                "OrderWorkflow", {"customer_name": "C", "order_number": order}, wait=30
            )
            assert run["status"] == "succeeded", run
    finally:
        server.stop()
        await peer.__aexit__()
    log = server.output()
    assert "OrderWorkflow v1 (new version) from order_workflow.py" in log
    assert "dagger    reads PAYMENT_LISTENER, SHIPPING_LISTENER on transport 'dagger'" in log
    paid = [m for m in peer.got["PAYMENT_COMMAND"] if order.encode() in m.data]
    assert len(paid) == 1


async def test_a_worker_reads_them_and_an_api_only_server_does_not(
    tmp_path: Path, shared_db: str
) -> None:
    """An API-only server runs no engine work, so it subscribes to no listener topic: the
    workers serving the folder do."""
    url = broker_url("nats")
    order = f"ORDER-{uuid.uuid4().hex[:8]}"
    transport = ("--transport", f"dagger={url}")
    peer = await answering_peer(url)
    api_server = start_server(
        tmp_path, "--api-only", "--migrate", "--dags", str(FOLDER), *transport, db=shared_db
    )
    worker = start_server(
        tmp_path, "--dags", str(FOLDER), *transport, db=shared_db, name="w", command="worker"
    )
    try:
        async with AsyncClient(api_server.url) as api:
            run = await api.start(
                "OrderWorkflow", {"customer_name": "C", "order_number": order}, wait=30
            )
            assert run["status"] == "succeeded", run
    finally:
        worker.stop()
        api_server.stop()
        await peer.__aexit__()
    assert "dagger    reads PAYMENT_LISTENER, SHIPPING_LISTENER" in worker.output()
    assert "dagger    reads" not in api_server.output()


def test_a_worker_with_a_dagger_file_and_no_dagger_transport_says_so(shared_db: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LEGATO_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "legato.cli", "worker", "--port", "0", "--db", shared_db, *DAGS],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "Dagger templates (OrderWorkflow)" in done.stderr, done.stderr
    assert "--transport dagger=URL" in done.stderr
