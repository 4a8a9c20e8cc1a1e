"""Run the seed's two CoWorks DAG files (dags/my_first_biz.py, dags/first.py) end to end, locally:
moto's S3 server, the sample TechMicroServices of coworks_services.py, and an Engine on a SQLite file.

    PYTHONPATH=src python examples/coworks/run_coworks.py

Needs the `s3` extra and moto (`pip install -e '.[dev]'`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from legato import Engine, Service
from legato.engine.results import S3Results

HERE = Path(__file__).resolve().parent


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


async def main() -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    host, port = s3_server.get_host_and_port()
    s3 = f"http://{host}:{port}"
    services = load(HERE / "coworks_services.py")
    samples = services.Samples(s3)
    await samples.start()
    await services.create_bucket(s3)
    # Where the DAGs' api_id/stage calls go, and how often an async result is looked for.
    os.environ["LEGATO_COWORKS_API_URL"] = samples.api_url
    os.environ["LEGATO_COWORKS_POLL_EVERY"] = "0.2"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            engine = Engine.open(f"sqlite:///{tmp}/coworks.db")
            engine.results = S3Results(s3)
            async with engine:
                for name, url in samples.services().items():
                    await engine.put_service(Service(name=name, base_url=url))
                biz = load(HERE / "dags" / "my_first_biz.py").my_first_biz
                first = load(HERE / "dags" / "first.py").first
                await engine.register(biz)
                await engine.register(first)
                for data in ({"amount": 12, "customer": "ada@example.com"}, {"amount": 0}):
                    run = await engine.run("my_first_biz", {"data": data}, timeout=30)
                    chosen = [n for n, s in run.steps.items() if s.status == "succeeded"]
                    print(f"my_first_biz {data}: {run.info.status}, ran {chosen}")
                print("mails sent:", samples.sent)
                run = await engine.run("first", {}, timeout=30)
                print(f"first: {run.info.status}, read {run.steps['simple__read'].output}")
    finally:
        await samples.stop()
        s3_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
