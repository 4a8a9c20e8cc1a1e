"""`Dagger`: the service object of a Dagger app, running on a Legato engine.

Templates are class-wide, as in Dagger (`@Dagger.register_template`, `Dagger.create_topic`), so
they exist as soon as their module is imported: `legato serve --dags DIR` finds each one as the
workflow the decorator returns. An instance (`Dagger(broker=..., store=...)`) runs them: it opens
an engine on the store, names the broker as the transport `dagger`, registers every template, and
subscribes to each listener topic. A message on such a topic becomes an event of that type, keyed
by what the listener class's `get_correlatable_key` reads from it, acknowledged once the event is
committed; the listen steps waiting for that key take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import orjson

from legato.compat.dagger.compile import TRANSPORT
from legato.compat.dagger.definition import TemplateDAG, TemplateDAGInstance
from legato.compat.dagger.templates import ProcessTemplate, Topic, check_topic
from legato.dags import DagFolder, on_engine_started
from legato.engine.runtime import Engine
from legato.errors import Conflict, LegatoError
from legato.masking import mask_url
from legato.model.fields import check_object
from legato.model.workflow import Workflow
from legato.transports import Message

log = logging.getLogger("legato.compat.dagger")


class _App:
    """What Dagger's builders are given (`Dagger.app`); Legato's builders need nothing from it."""

    def __repr__(self) -> str:
        return "<Dagger.app>"


def _broker_url(broker: str) -> str:
    return broker if "://" in broker else f"kafka://{broker}"


def _store_url(store: str | None, datadir: str | None) -> str:
    if store and store.split(":", 1)[0] in ("sqlite", "postgresql", "postgres"):
        return store
    folder = Path(datadir or ".")
    if store:
        log.warning("store %r is not a Legato store; using SQLite in %s", store, folder)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'dagger.db'}"


async def correlatable_keys(cls: type, payload: str) -> list[Any]:
    """The keys a listener class reads from a message (Dagger's three ways of saying it)."""
    task = cls(name=cls.__name__)
    if "get_correlatable_keys_from_payload" in dir(task):
        found = task.get_correlatable_keys_from_payload(payload)
        pairs = await found if inspect.isawaitable(found) else found
        return [p[1] if isinstance(p, tuple) else p for p in pairs]
    if "get_correlatable_key_from_payload" in dir(task):
        found = task.get_correlatable_key_from_payload(payload)
        pair = await found if inspect.isawaitable(found) else found
    else:
        pair = task.get_correlatable_key(payload)
    return [pair[1] if isinstance(pair, tuple) else pair]


class _Topics(dict[str, Topic]):
    """`workflow_engine.topics[name]`: a topic made by create_topic, or one made on first use."""

    def __missing__(self, name: str) -> Topic:
        topic = self[name] = Topic(name)
        return topic


class Dagger:
    app: ClassVar[_App] = _App()
    templates: ClassVar[dict[str, TemplateDAG]] = {}
    process_templates: ClassVar[dict[str, ProcessTemplate]] = {}
    topics: ClassVar[dict[str, Topic]] = _Topics()
    _running: ClassVar[Dagger | None] = None

    def __init__(
        self,
        broker: str = "kafka://localhost:9092",
        store: str | None = None,
        datadir: str | None = None,
        **options: Any,
    ) -> None:
        """`broker`: kafka://, nats:// or amqp:// (a bare host:port is Kafka); `store`: a Legato
        database URL (sqlite:///..., postgresql://...); any other store (aerospike://, rocksdb://)
        means SQLite in `datadir`. Dagger's other options (web_port, serializer...) are ignored."""
        self.broker = _broker_url(broker)
        self.store = store
        self.datadir = datadir
        self.engine: Engine | None = None
        self._own_engine = False
        self.ignored = options

    # -- the class-wide registry, as in Dagger ----------------------------------------------------

    @classmethod
    def register_template(cls, name: str) -> Callable[[Callable[[str], TemplateDAG]], Workflow]:
        """Build the template now; the decorated name becomes its Legato workflow."""

        def register(fn: Callable[[str], TemplateDAG]) -> Workflow:
            try:
                template = fn(name)
            except LegatoError:
                raise  # already names the Dagger call that was wrong
            except Exception as exc:  # the user's own code: say where, without a traceback
                raise LegatoError(
                    f"register_template({name!r}): {getattr(fn, '__name__', 'the function')} "
                    f"raised {type(exc).__name__}: {exc}"
                ) from None
            if not isinstance(template, TemplateDAG):
                raise LegatoError(
                    f"register_template({name!r}): {fn.__name__} must return the template "
                    "(template_builder.build())"
                )
            cls.templates[name] = template
            return template.workflow

        return register

    @classmethod
    def register_process_template(
        cls, name: str
    ) -> Callable[[Callable[[str], ProcessTemplate]], Callable[[str], ProcessTemplate]]:
        """A process built once, for templates to reuse (`workflow_engine.process_templates`)."""

        def register(fn: Callable[[str], ProcessTemplate]) -> Callable[[str], ProcessTemplate]:
            process = fn(name)
            if not isinstance(process, ProcessTemplate):
                raise LegatoError(
                    f"register_process_template({name!r}): {fn.__name__} must return the process "
                    "(process_builder.build())"
                )
            cls.process_templates[name] = process
            return fn

        return register

    @classmethod
    def create_topic(cls, name: str, key_type: Any = bytes, value_type: Any = bytes) -> Topic:
        topic = Topic(check_topic(name, "create_topic"), key_type, value_type)
        cls.topics[name] = topic
        return topic

    @classmethod
    def get_template(cls, name: str) -> TemplateDAG:
        try:
            return cls.templates[name]
        except KeyError:
            raise LegatoError(f"no template named {name!r} was registered") from None

    @classmethod
    def running(cls) -> Dagger:
        if cls._running is None or cls._running.engine is None:
            raise LegatoError("no Dagger service is running: `async with workflow_engine:` first")
        return cls._running

    # -- running ----------------------------------------------------------------------------------

    async def start(self, engine: Engine | None = None) -> None:
        """Run the templates on `engine` (not yet started), or on one opened on the store."""
        if engine is None:
            engine = Engine.open(_store_url(self.store, self.datadir))
            self._own_engine = True
        engine.add_transport(TRANSPORT, self.broker)
        self.engine = engine
        try:
            await engine.start()
            for template in self.templates.values():
                await engine.register(template.workflow)
            await attach(engine)
        except BaseException:
            await self.stop()
            raise
        Dagger._running = self

    async def stop(self) -> None:
        if Dagger._running is self:
            Dagger._running = None
        engine, self.engine = self.engine, None
        if engine is not None and self._own_engine:
            try:
                await engine.close()
            except Exception:  # half started (a broker that never answered): nothing to keep
                log.exception("closing the engine failed")

    async def __aenter__(self) -> Dagger:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def submit(self, instance: TemplateDAGInstance, **_: Any) -> str:
        """Start the instance as a run whose id comes from the instance's id; submitting the same
        instance again finds that run rather than starting another. Another instance with that
        id (other runtime parameters, or another template) is refused, as an Idempotency-Key
        reused with another request is: silently answering the first run would lose its data."""
        engine = self.engine or Dagger.running().engine
        assert engine is not None
        from legato.engine.starts import Once

        try:
            return await engine.start_run(
                instance.template.name,
                instance.runtime_parameters,
                run_id=instance.run_id,
                once=Once(run_id=instance.run_id),
            )
        except Conflict:
            await _same_instance(engine, instance)
            return instance.run_id

    async def get_instance(self, id: Any) -> Any:
        from legato.compat.dagger.definition import run_id_of

        engine = self.engine or Dagger.running().engine
        assert engine is not None
        return await engine.get_run(run_id_of(id))

    def main(self) -> None:
        """Run the worker until SIGINT or SIGTERM, when called from the program's main module
        (`python order_workflow.py`). Imported (by `legato serve --dags DIR`, a test), it returns
        at once: the server runs the templates then."""
        caller = inspect.stack()[1].frame.f_globals.get("__name__")
        if caller != "__main__":
            log.info("Dagger.main() called on import of %s: not starting a worker", caller)
            return
        try:
            asyncio.run(self._main())
        except LegatoError as exc:  # a broker or database it cannot reach: say which, no traceback
            raise SystemExit(f"dagger: {exc}") from None

    async def _main(self) -> None:
        """Until a signal; one that comes while the worker starts (a broker that does not answer)
        stops the start."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        starting = asyncio.create_task(self.start())

        def on_signal() -> None:
            if starting.done():
                stop.set()
            else:
                starting.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, on_signal)
        try:
            await starting
        except asyncio.CancelledError:
            raise SystemExit("dagger: stopped while starting") from None
        try:
            log.info("Dagger templates %s running on %s", sorted(self.templates), self.broker)
            await stop.wait()
        finally:
            await self.stop()


async def attach(engine: Engine, templates: list[TemplateDAG] | None = None) -> list[str]:
    """Subscribe to the listener topics of `templates` (None: every registered template) on
    `engine`'s transport `dagger`, the engine being started: what a worker does, for a program (or
    a server that imported Dagger files) that started its engine itself. Returns the topics."""
    transport = engine.transports.get(TRANSPORT)
    if transport is None:
        raise LegatoError(
            f"the engine has no transport named {TRANSPORT!r}: add it (--transport {TRANSPORT}=URL)"
        )
    listeners: dict[str, list[type]] = {}
    for template in Dagger.templates.values() if templates is None else templates:
        for topic, classes in template.listeners.items():
            listeners.setdefault(topic, [])
            listeners[topic] += [c for c in classes if c not in listeners[topic]]
    for topic, classes in listeners.items():
        await transport.subscribe(topic, _handler(engine, topic, classes))
    return sorted(listeners)


@on_engine_started
async def _serve_dag_templates(engine: Engine, folder: DagFolder) -> None:
    """`legato serve|worker --dags DIR`: the templates DIR's files registered read their listener
    topics on the transport `dagger`, as the Dagger worker would (a folder without one: nothing)."""
    mine = {id(wf) for wf in folder.workflows}
    templates = [t for t in Dagger.templates.values() if id(t.workflow) in mine]
    if not templates:
        return
    if TRANSPORT not in engine.transports:
        names = ", ".join(sorted(t.name for t in templates))
        raise LegatoError(
            f"the DAG files define Dagger templates ({names}), whose listener topics are read on "
            f"the transport {TRANSPORT!r}: add --transport {TRANSPORT}=URL"
        )
    try:
        topics = await attach(engine, templates)
    except LegatoError:
        raise
    except Exception as exc:  # the broker's refusal
        url = mask_url(engine.transports[TRANSPORT].url)
        raise LegatoError(
            f"cannot read the Dagger listener topics on transport {TRANSPORT!r} ({url}): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if topics:
        print(f"  dagger    reads {', '.join(topics)} on transport {TRANSPORT!r}", file=sys.stderr)


async def _same_instance(engine: Engine, instance: TemplateDAGInstance) -> None:
    """Refuse a submit whose id names a run of another instance (see `Dagger.submit`)."""
    run = await engine.get_run(instance.run_id)
    name = instance.template.name
    same = run.info.workflow == name
    if same:
        wf, _ = await engine.workflow_version(name, run.info.version)
        data, _ = check_object(wf.inputs, instance.runtime_parameters, "input")
        same = data == run.info.input
    if not same:
        raise Conflict(
            f"submit: instance id {instance.id!s} was submitted before with other runtime "
            f"parameters or another template (run {instance.run_id}, template "
            f"{run.info.workflow!r}); give a new instance a new id"
        )


def _handler(engine: Engine, topic: str, classes: list[type]) -> Any:
    """A message on a listener topic as an event of that type, once per key the listener classes
    read from it; it is acknowledged after the events are committed."""

    async def deliver(message: Message) -> None:
        text = message.data.decode("utf-8", "replace")
        try:
            data: Any = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            data = text
        keys: list[Any] = []
        for cls in classes:
            try:
                keys += [k for k in await correlatable_keys(cls, text) if k not in keys]
            except Exception as exc:  # a message without the key reaches no task
                log.warning(
                    "%s: %s.get_correlatable_key found no key (%s: %s); message dropped",
                    topic,
                    cls.__name__,
                    type(exc).__name__,
                    exc,
                )
        for key in keys:
            await engine.publish(topic, key, data)

    return deliver
