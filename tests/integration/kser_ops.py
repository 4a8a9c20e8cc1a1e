"""Kser tasks and operations for test_kser.py, importable by the worker processes it starts."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

from legato.compat.kser import Operation, OperationRegistry, Result, Task

oregistry = OperationRegistry()
RAN: list[str] = []  # what ran in this process, in order


# The seed's consumer, as written.
@oregistry.subscribe
class DiceRoll(Task):
    def run(self):  # type: ignore[no-untyped-def]
        launch = random.randint(1, 6)
        return Result(uuid=self.uuid, stdout="You made a {}".format(launch))  # noqa: UP032


@oregistry.subscribe
class DiceLaunch(Operation):
    def build_tasks(self, **kwargs):  # type: ignore[no-untyped-def]
        return [DiceRoll(), DiceRoll(), DiceRoll()]


class Step(Task):
    """Records that it ran and returns a value named by its params."""

    def run(self) -> Result:
        RAN.append(self.params["name"])
        return Result(
            uuid=self.uuid,
            stdout=f"{self.params['name']} done",
            retval={self.params["name"]: self.result.retcode, "last": self.params["name"]},
        )


class Refuse(Task):
    def run(self) -> Result:
        RAN.append("refuse")
        return Result(uuid=self.uuid, retcode=1, stdout="tried", stderr="no such dice")


@oregistry.subscribe
class Refused(Operation):
    def build_tasks(self, **kwargs: object) -> list[Task]:
        return [Step(params={"name": "before"}), Refuse(), Step(params={"name": "after"})]


@oregistry.subscribe
class Chain(Operation):
    """Params reach the tasks through build_tasks."""

    REQUIRED_FIELDS = ("who",)

    def build_tasks(self, **kwargs: object) -> list[Task]:
        who = kwargs.get("who", "nobody")
        return [Step(params={"name": f"{who}-1"}), Step(params={"name": f"{who}-2"})]


class Mark(Task):
    """Appends `name pid` to the file in params and returns the pid in retval."""

    def run(self) -> Result:
        with Path(self.params["log"]).open("a") as f:
            f.write(f"{self.params['name']} {os.getpid()}\n")
        return Result(uuid=self.uuid, retval={self.params["name"]: os.getpid()})


class Stall(Mark):
    """In a process with KSER_STALL=1, dies (SIGKILL) in the middle of its step."""

    def run(self) -> Result:
        out = super().run()
        if os.environ.get("KSER_STALL") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return out


@oregistry.subscribe
class Relay(Operation):
    def build_tasks(self, **kwargs: object) -> list[Task]:
        log = str(kwargs.get("log", ""))
        return [
            Mark(params={"name": "first", "log": log}),
            Stall(params={"name": "stall", "log": log}),
            Mark(params={"name": "last", "log": log}),
        ]
