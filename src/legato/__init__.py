"""Legato: a durable workflow orchestrator for HTTP microservices."""

__version__ = "0.1.0"

from legato.client import ApiError, AsyncClient, Client
from legato.dsl import branch, fail, http, map_over, task, workflow
from legato.engine.runtime import Engine
from legato.errors import (
    Conflict,
    DefinitionError,
    InputError,
    LegatoError,
    NotFound,
    ValidationError,
)
from legato.formats.loader import load_definition
from legato.model.service import Service
from legato.model.workflow import Workflow

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "DefinitionError",
    "Engine",
    "InputError",
    "LegatoError",
    "NotFound",
    "Service",
    "ValidationError",
    "Workflow",
    "__version__",
    "branch",
    "fail",
    "http",
    "load_definition",
    "map_over",
    "task",
    "workflow",
]
