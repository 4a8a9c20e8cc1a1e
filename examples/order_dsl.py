"""The take-order process written with the Python DSL, run against the sample services.

    .venv/bin/python examples/order_dsl.py

Starts the sample services on loopback, registers them, runs one order on a SQLite file and prints it.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import orjson

from legato import Engine, aio, branch, fail, http, task, workflow
from legato.samples import services as samples


@workflow(
    inputs={"order_id": "string", "amount": "number", "email": "string"},
    defaults={"retries": 3, "retry_delay": timedelta(milliseconds=200), "timeout": "10s"},
    output={"order": "{{ input.order_id }}", "receipt": "{{ steps.receipt.output }}"},
)
def take_order_py() -> None:
    """Reserve, charge, then either confirm (with a receipt computed in Python) or give up."""
    reserve = http(
        "reserve",
        service="stock",
        path="/reserve",
        json={"order": "{{ input.order_id }}", "items": []},
    )
    charge = http(
        "charge",
        service="billing",
        path="/charge",
        success=["2xx", 402],
        json={"order": "{{ input.order_id }}", "amount": "{{ input.amount }}"},
    )
    paid = branch(
        "paid",
        cases=[("{{ steps.charge.output.status == 200 }}", ["receipt"])],
        otherwise=["declined"],
    )

    @task(
        args={"amount": "{{ steps.charge.output.body.charged }}", "order": "{{ input.order_id }}"}
    )
    def receipt(amount: float, order: str) -> dict[str, Any]:
        return {"order": order, "total": round(amount * 1.2, 2), "vat": round(amount * 0.2, 2)}

    fail("declined", message="payment for {{ input.order_id }} was declined")
    mail = http(
        "mail",
        service="mail",
        path="/send",
        json={"to": "{{ input.email }}", "total": "{{ steps.receipt.output.total }}"},
    )

    reserve >> charge >> paid
    receipt >> mail


async def main(db_url: str) -> int:
    runner, base = await samples.start()
    try:
        async with Engine.open(db_url) as engine:
            for service in samples.directory(base):
                await engine.put_service(service)
            await engine.register(take_order_py)
            run = await engine.run(
                "take_order_py",
                {"order_id": "PY-1", "amount": 100.0, "email": "ada@example.com"},
                timeout=30,
            )
            print(
                orjson.dumps(
                    {"status": run.info.status, "output": run.info.output},
                    option=orjson.OPT_INDENT_2,
                ).decode()
            )
            return 0 if run.info.status == "succeeded" else 1
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(aio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///legato-example.db")))
