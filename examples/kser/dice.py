# mypy: allow-untyped-defs
# ruff: noqa: E402, UP032
"""Kser's dice example on Legato: the seed's consumer with only its imports changed.

    .venv/bin/python examples/kser/dice.py               # register both, run DiceLaunch once, print it
    legato serve --dags examples/kser                     # or serve them (as legato_dags.dice.DiceLaunch, ...)
    legato start legato_dags.dice.DiceLaunch --wait --input '{"params": {}}'

Where Kser's consumer read the messages from Kafka, a Legato server started with
`--transport kafka=...` starts a run for each message once the workflows carry triggers:
`oregistry.export(globals(), transport="kafka", topic="kser")` (see docs/coming-from-kser.md).
"""

import logging

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


# Legato: each subscribed class as a module-level Workflow, which `legato serve --dags DIR` registers.
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
