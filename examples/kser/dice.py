# mypy: allow-untyped-defs
# ruff: noqa: E402, UP032
"""Kser's dice example on Legato: the seed's consumer with only its imports changed.

    .venv/bin/python examples/kser/dice.py               # register both, run DiceLaunch once, print it
    legato serve --dags examples/kser                     # or serve them (as legato_dags.dice.DiceLaunch, ...)
    legato start legato_dags.dice.DiceLaunch --wait --input '{"params": {}}'

Kser's consumer side, reading the messages from Kafka: give the workflows a trigger on the topic
(KSER_TRANSPORT names the server's transport, KSER_TOPIC the topic, "kser" by default):

    KSER_TRANSPORT=kafka legato serve --dags examples/kser --transport kafka=kafka://127.0.0.1:9092

Each JSON message {"uuid": ..., "entrypoint": "legato_dags.dice.DiceRoll", "params": {}} sent to
the topic then starts one run of that entrypoint, once per uuid (see docs/coming-from-kser.md).
"""

import logging
import os

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-8s %(message)s")

import random

from legato.compat.kser import Operation, OperationRegistry, Result, Task

oregistry = OperationRegistry()


@oregistry.subscribe
class DiceRoll(Task):
    def run(self):
        launch = random.randint(1, 6)
        return Result(uuid=self.uuid, stdout="You made a {}".format(launch))


@oregistry.subscribe
class DiceLaunch(Operation):
    def build_tasks(self, **kwargs):
        return [DiceRoll(), DiceRoll(), DiceRoll()]


# Legato: each subscribed class as a module-level Workflow, which `legato serve --dags DIR` registers;
# with KSER_TRANSPORT, each also starts from the Kser messages on a topic of that transport.
if os.environ.get("KSER_TRANSPORT"):
    oregistry.export(
        globals(),
        transport=os.environ["KSER_TRANSPORT"],
        topic=os.environ.get("KSER_TOPIC", "kser"),
    )
else:
    oregistry.export(globals())


if __name__ == "__main__":
    import asyncio
    import sys

    from legato import Engine
    from legato.compat.kser import kser_status

    async def main(db: str) -> None:
        async with Engine.open(db) as engine:
            for workflow in oregistry.workflows():
                await engine.register(workflow)
            run = await engine.run("main.DiceLaunch", {"params": {}}, timeout=30)
            print(kser_status(run.info.status), run.info.output)

    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///kser-dice.db"))
