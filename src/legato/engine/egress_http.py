"""The egress policy enforced inside aiohttp, where connections are made.

Names are checked in the resolver, on the addresses the name resolves to, and only the allowed
addresses are handed to the connector, so the address checked is the address connected to (a name
that resolves to a denied address, or rebinds to one between two calls, is refused). An address
written in the URL skips the resolver, so the connector checks it itself. Both run for every
connection, hence for every redirect hop.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_reqrep import ClientRequest
from aiohttp.resolver import DefaultResolver
from aiohttp.tracing import Trace

from legato.engine.egress import EgressPolicy, EgressRefused


class EgressResolver(AbstractResolver):
    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        refused = self.policy.refuse_name(host, port)
        if refused is not None:
            raise refused
        kept: list[ResolveResult] = []
        for result in await self._inner.resolve(host, port, family):
            verdict = self.policy.check(host, result["host"], port)
            if verdict.allowed:
                kept.append(result)
            elif refused is None:
                refused = EgressRefused(host, result["host"], port, verdict.reason)
        if refused is not None and not kept:
            raise refused
        return kept  # only the allowed addresses: the connector tries no other

    async def close(self) -> None:
        await self._inner.close()


class EgressConnector(aiohttp.TCPConnector):
    """A TCPConnector that refuses, with EgressRefused, what `policy` does not allow."""

    def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
        super().__init__(resolver=EgressResolver(policy), **kwargs)
        self.policy = policy
        # Hosts and ports allowed already (a verdict never changes for a policy; names are judged
        # in the resolver): every request asks, a pooled connection's too, and parsing the
        # address each time showed in profiles.
        self._allowed: set[tuple[str, int]] = set()

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        host, port = req.url.raw_host, req.port
        if host is not None and port is not None and (host, port) not in self._allowed:
            refused = self.policy.refusal(host, host, port) if _is_address(host) else None
            if refused is not None:
                raise refused
            if len(self._allowed) >= 4096:
                self._allowed.clear()
            self._allowed.add((host, port))
        return await super().connect(req, traces, timeout)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
