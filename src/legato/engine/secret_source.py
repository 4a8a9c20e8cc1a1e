"""Where `{{ secrets.NAME }}` values come from: the environment variable `LEGATO_SECRET_<NAME>` first
(set by whoever deploys the process), then the store's `secrets` table (set through the API or CLI).

Values are read at send time, so a changed secret applies to the next call; a short cache keeps a busy
service from reading the table on every call (another process's change shows within `ttl` seconds).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from legato.expressions import Template
from legato.model.workflow import HttpCall, MapOver, Workflow
from legato.secret_refs import TAG_KEY, names_in, substitute, wanted
from legato.store.protocol import Store

ENV_PREFIX = "LEGATO_SECRET_"

SecretLookup = Callable[[str], Awaitable[str | None]]


class MissingSecret(Exception):
    """A step names a secret that is set nowhere; the step fails with kind `config`."""


async def fetch_values(
    names: Iterable[str], lookup: SecretLookup | None, used: dict[str, str]
) -> None:
    """Read each name not in `used` yet into it, or raise MissingSecret naming the first unset."""
    for name in sorted(set(names) - used.keys()):
        value = await lookup(name) if lookup is not None else None
        if value is None:
            raise MissingSecret(
                f"secret {name!r} is not set (set it with `legato secret set {name}` "
                f"or the environment variable {ENV_PREFIX}{name})"
            )
        used[name] = value


async def resolve_request(
    request: dict[str, Any],
    templates: Iterable[Template | None],
    lookup: SecretLookup | None,
    used: dict[str, str],
) -> dict[str, Any]:
    """`request` with the references to the secrets that `templates` name put in, where its
    rendering put them (its own tag: see secret_refs)."""
    tag = request.get(TAG_KEY)
    if not tag:  # its rendering made no marker: nothing to put in (the common case)
        return request
    names = wanted(request, names_in(templates), tag)
    if not names:
        return request
    await fetch_values(names, lookup, used)
    result: dict[str, Any] = substitute(request, used, tag)
    return result


def poll_templates(wf: Workflow, step: str) -> list[Template | None]:
    """The poll URL template of this step: the only secrets its poll may send."""
    found = wf.steps.get(step.partition("[")[0])  # a map's item `s[3]` polls as `s` says
    action = found.action if found is not None else None
    if isinstance(action, MapOver):
        action = action.action
    if isinstance(action, HttpCall) and action.poll is not None:
        return [action.poll.url]
    return []


class SecretSource:
    def __init__(
        self, store: Store, environ: Mapping[str, str] | None = None, ttl: float = 2.0
    ) -> None:
        self._store = store
        self._environ = os.environ if environ is None else environ
        self._ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}

    def env_names(self) -> list[str]:
        return sorted(k[len(ENV_PREFIX) :] for k in self._environ if k.startswith(ENV_PREFIX))

    async def get(self, name: str) -> str | None:
        value = self._environ.get(ENV_PREFIX + name)
        if value is not None:
            return value
        now = time.monotonic()
        held = self._cache.get(name)
        if held is not None and held[0] > now:
            return held[1]
        found = await self._store.get_user_secret(name)
        self._cache[name] = (now + self._ttl, found)
        return found

    async def listing(self) -> list[dict[str, Any]]:
        """Names and where each comes from; never a value. A name in both shows the environment's,
        which is the one templates read."""
        env = set(self.env_names())
        out: list[dict[str, Any]] = [{"name": n, "source": "env"} for n in sorted(env)]
        for name, updated in await self._store.list_user_secrets():
            if name not in env:
                out.append({"name": name, "source": "store", "updated_at": updated})
        return sorted(out, key=lambda e: str(e["name"]))

    async def put(self, name: str, value: str) -> None:
        await self._store.put_user_secret(name, value)
        self._cache.pop(name, None)

    async def delete(self, name: str) -> bool:
        self._cache.pop(name, None)
        return await self._store.delete_user_secret(name)
