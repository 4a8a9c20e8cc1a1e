"""Kser's statuses of an operation or task, read from Legato's run and step statuses."""

from __future__ import annotations

from legato.compat.kser.task import FAILED, PENDING, RUNNING, SUCCESS

_BY_LEGATO = {
    "pending": PENDING,
    "running": RUNNING,
    "waiting": RUNNING,  # a step between two attempts: still under way
    "succeeded": SUCCESS,
    "failed": FAILED,
    "cancelled": FAILED,
    "skipped": PENDING,  # a task after a failed one never ran
}


def kser_status(status: str) -> str:
    """PENDING, RUNNING, SUCCESS or FAILED for a run's or a step's Legato status."""
    return _BY_LEGATO.get(status, PENDING)
