"""Kser's operations and tasks on Legato: `Operation`, `Task`, `Result` and `OperationRegistry`.

    oregistry = OperationRegistry()

    @oregistry.subscribe
    class DiceRoll(Task):
        def run(self):
            return Result(uuid=self.uuid, stdout=f"You made a {random.randint(1, 6)}")

Each subscribed class becomes a workflow (`oregistry.workflows()`); an operation's tasks are its
steps, run in order, each durable and each possibly in another worker. See docs/coming-from-kser.md.
"""

from legato.compat.kser.registry import OperationRegistry, entrypoint_trigger, workflow_name
from legato.compat.kser.result import Result
from legato.compat.kser.status import kser_status
from legato.compat.kser.steps import TaskFailed
from legato.compat.kser.task import FAILED, PENDING, RUNNING, SUCCESS, Operation, Task

__all__ = [
    "FAILED",
    "PENDING",
    "RUNNING",
    "SUCCESS",
    "Operation",
    "OperationRegistry",
    "Result",
    "Task",
    "TaskFailed",
    "entrypoint_trigger",
    "kser_status",
    "workflow_name",
]
