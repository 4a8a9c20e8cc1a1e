"""Persistence: one Store protocol, implemented once per backend."""

from legato.store.protocol import Store, WorkflowRecord, open_store

__all__ = ["Store", "WorkflowRecord", "open_store"]
