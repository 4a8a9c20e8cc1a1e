"""Legato: a durable workflow orchestrator for HTTP microservices."""

__version__ = "0.1.0"
