"""Templated step arguments, rendered to native JSON values in a sandbox.

A string that is exactly one `{{ expression }}` yields the expression's value (a list stays a list, a number a
number); any other string with `{{` or `{%` renders to text. Templates are compiled once, when a definition is
validated, so a run only evaluates them; references to `steps.<name>` are collected so validation can refuse
a step that reads a result it cannot have yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import orjson
from jinja2 import nodes

from legato.sandbox import (
    LIMITS,
    BoundedEnvironment,
    TemplateLimit,
    deep_size,
    end_budget,
    start_budget,
)

Context = Mapping[str, Any]
EAGER_OVER = 2048  # characters


class TemplateError(Exception):
    """A template failed to compile or to render; the message says which and why. `kind` is the
    failure kind a step reports: "template", or "limit" when a bound on templates refused it."""

    def __init__(self, message: str, kind: str = "template") -> None:
        super().__init__(message)
        self.kind = kind


def _merge(*parts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        if isinstance(part, Mapping):
            out.update(part)
    return out


def _pick(value: Any, *keys: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {}
    return {k: value[k] for k in keys if k in value}


class _Environment(BoundedEnvironment):
    """Data first: `input.items` is the input's `items` field, not the dict method of that name."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_JSON_TYPES = (str, int, float, bool, list, dict, tuple, type(None))


def _make_env() -> BoundedEnvironment:
    env = _Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    env.globals["merge"] = _merge
    env.add_filter("merge", _merge)
    env.add_filter("pick", _pick)
    return env


ENV = _make_env()


class Template:
    """A compiled JSON-like value: dicts and lists of constants and templated strings."""

    __slots__ = ("_render", "references", "source")

    def __init__(self, source: Any, render: Callable[[Context], Any], references: frozenset[str]):
        self.source = source
        self._render = render
        self.references = references

    def render(self, context: Context) -> Any:
        """The value; TemplateError (kind "limit") when it is over the size limit, so an oversized
        value is never stored or sent."""
        try:
            return _check_rendered(self._render(context))
        except TemplateError:
            raise
        except TemplateLimit as exc:
            raise TemplateError(str(exc), "limit") from None
        except RecursionError:
            raise TemplateError("the template recurses too deeply", "limit") from None
        except MemoryError:
            raise TemplateError("the template needs more memory than there is", "limit") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"undefined value: {exc}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(str(exc)) from None
        except Exception as exc:  # an expression may divide by zero, index out of range, ...
            raise TemplateError(f"{type(exc).__name__}: {exc}") from None

    @property
    def is_constant(self) -> bool:
        return not _has_template(self.source)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _check_rendered(value: Any) -> Any:
    """Hold a rendered value to the size limit, counted as the JSON it is stored and sent as."""
    if isinstance(value, str):
        size = len(value) if len(value) * 4 <= LIMITS.max_size else len(value.encode())
    elif isinstance(value, dict | list | tuple) and value:
        # Walked before it is written out: `{"a": "{{ input.big }}", "b": "{{ input.big }}", ...}`
        # is one value many times. Small enough, even escaped, it needs no writing out at all.
        estimate = deep_size(value, LIMITS.max_size)
        if estimate > LIMITS.max_size:
            raise TemplateError(
                f"the rendered value is more than {LIMITS.max_size} bytes; the limit is "
                f"{LIMITS.max_size} (legato serve --max-rendered)",
                "limit",
            )
        if estimate * 6 <= LIMITS.max_size:  # JSON escapes a character in at most 6
            return value
        try:
            size = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
        except TypeError:  # not JSON: refused where it is used, with a better message
            return value
    else:
        return value
    if size > LIMITS.max_size:
        raise TemplateError(
            f"the rendered value is {size} bytes; the limit is {LIMITS.max_size} "
            "(legato serve --max-rendered)",
            "limit",
        )
    return value


def compile_template(source: Any) -> Template:
    """Compile a JSON-like value; raise TemplateError on a syntax error in any of its strings."""
    refs: set[str] = set()
    render = _compile(source, refs)
    return Template(source, render, frozenset(refs))


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def _compile(value: Any, refs: set[str]) -> Callable[[Context], Any]:
    if not _has_template(value):
        return lambda _ctx: value
    if isinstance(value, str):
        return _compile_string(value, refs)
    if isinstance(value, dict):
        parts = [(k, _compile(v, refs)) for k, v in value.items()]
        return lambda ctx: {k: fn(ctx) for k, fn in parts}
    items = [_compile(v, refs) for v in value]
    return lambda ctx: [fn(ctx) for fn in items]


def _compile_string(text: str, refs: set[str]) -> Callable[[Context], Any]:
    stripped = text.strip()
    try:
        tree = ENV.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        single = stripped.startswith("{{") and stripped.endswith("}}")
        kind = "expression" if single else "template"
        raise TemplateError(f"bad {kind} {text!r}: {exc.message}") from None
    _refuse_loading(tree, text)
    refs.update(_step_refs(tree))
    # One expression and nothing else (the parse tells `{{ {'a': {'b': 1}} }}` from `{{ a }}{{ b }}`).
    node = _single_output(ENV.parse(stripped)) if stripped.startswith("{{") else None
    if node is not None and not isinstance(node, nodes.TemplateData) and stripped.endswith("}}"):
        expr = stripped[2:-2].strip()
        path = _as_path(node)
        if path:  # a path compiles without fail: compile it the first time the fast path cannot do
            return _fast_path(path, _lazy(lambda: _expression(text, expr)))
        compiled = _expression(text, expr)  # refuses an unknown filter, found when compiling
        return compiled if len(text) > EAGER_OVER else _lazy(lambda: _expression(text, expr))
    parts = _text_parts(tree)
    if parts:
        return _fast_text(
            parts, _text(text) if len(text) > EAGER_OVER else _lazy(lambda: _text(text))
        )
    compiled = _text(text)
    return compiled if len(text) > EAGER_OVER else _lazy(lambda: _text(text))


_LOADING = (nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)


def _refuse_loading(tree: nodes.Template, text: str) -> None:
    """A template has no other templates to load: refused here rather than parsed, registered,
    and failed in every run ("no loader for this environment specified")."""
    node = next(iter(tree.find_all(_LOADING)), None)
    if node is not None:
        tag = {"Include": "include", "Extends": "extends"}.get(type(node).__name__, "import")
        raise TemplateError(
            f"bad template {text!r}: {{% {tag} %}} is not supported (no templates to load)"
        )


def _lazy(make: Callable[[], Callable[[Context], Any]]) -> Callable[[Context], Any]:
    """Compile on first use. Compiled Jinja is costly: ~0.5 ms, and objects that every full garbage
    collection then walks (a definition of 10,000 compiled templates made each one stall the
    process for ~0.5 s). Validation compiles once and drops the result, which is collected young,
    and paths, which the fast path renders, are only compiled if it ever falls back. A template
    longer than EAGER_OVER keeps what validation compiled: compiling it again would take the
    event loop (where runs are decided) too long."""
    compiled: list[Callable[[Context], Any]] = []

    def render(ctx: Context) -> Any:
        if not compiled:
            compiled.append(make())
        return compiled[0](ctx)

    return render


def _expression(text: str, expr: str) -> Callable[[Context], Any]:
    try:
        compiled = ENV.compile_expression(expr, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"bad expression {text!r}: {exc.message}") from None

    def render_expr(ctx: Context) -> Any:
        budget = start_budget()
        try:
            result = compiled(**ctx)
        finally:
            end_budget(budget)
        if isinstance(result, jinja2.Undefined):
            # StrictUndefined raises on use; a bare undefined result is reported the same way.
            str(result)
        if not isinstance(result, _JSON_TYPES):
            raise TemplateError(f"{text!r} yields a {type(result).__name__}, not a JSON value")
        return result

    return render_expr


def _text(text: str) -> Callable[[Context], str]:
    try:
        template = ENV.from_string(text)
    except jinja2.TemplateSyntaxError as exc:  # e.g. an unknown filter, found when compiling
        raise TemplateError(f"bad template {text!r}: {exc.message}") from None

    def render_text(ctx: Context) -> str:
        budget = start_budget()
        try:
            return template.render(ctx)
        finally:
            end_budget(budget)

    return render_text


# Fast paths. Most templates are plain paths (`{{ steps.a.output.body.id }}`) or text around them;
# those are looked up directly, which is ~10x cheaper than a Jinja render. Anything the fast path is
# not sure of (a missing key, an attribute, a global) is handed to Jinja, so the semantics and the
# error messages are Jinja's.

_Path = tuple[str, tuple[str | int, ...]]


def _single_output(tree: nodes.Template) -> nodes.Node | None:
    if (
        len(tree.body) == 1
        and isinstance(tree.body[0], nodes.Output)
        and len(tree.body[0].nodes) == 1
    ):
        return tree.body[0].nodes[0]
    return None


def _as_path(node: nodes.Node | None) -> _Path | None:
    keys: list[str | int] = []
    while node is not None:
        if isinstance(node, nodes.Getattr):
            keys.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str | int)
            and not isinstance(node.arg.value, bool)
        ):
            keys.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return node.name, tuple(reversed(keys))
        else:
            return None
    return None


class _Fallback(Exception):
    pass


def _lookup(path: _Path, ctx: Context) -> Any:
    root, keys = path
    if root not in ctx:
        raise _Fallback
    value = ctx[root]
    for key in keys:
        if isinstance(value, dict):
            if key not in value:
                raise _Fallback
            value = value[key]
            continue
        if not isinstance(value, list) or not isinstance(key, int):
            raise _Fallback
        if not -len(value) <= key < len(value):
            raise _Fallback
        value = value[key]
    return value


def _fast_path(path: _Path, slow: Callable[[Context], Any]) -> Callable[[Context], Any]:
    def render(ctx: Context) -> Any:
        try:
            value = _lookup(path, ctx)
        except _Fallback:
            return slow(ctx)
        if isinstance(value, _JSON_TYPES):
            return value
        return slow(ctx)

    return render


def _text_parts(tree: nodes.Template) -> list[str | _Path] | None:
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts: list[str | _Path] = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
        elif (path := _as_path(node)) is not None:
            parts.append(path)
        else:
            return None
    return parts


def _fast_text(
    parts: list[str | _Path], slow: Callable[[Context], str]
) -> Callable[[Context], str]:
    def render(ctx: Context) -> str:
        out: list[str] = []
        try:
            for part in parts:
                if isinstance(part, str):
                    out.append(part)
                else:
                    value = _lookup(part, ctx)
                    if not isinstance(value, str | int | float | bool | type(None)):
                        raise _Fallback
                    out.append(str(value))
        except _Fallback:
            return slow(ctx)
        return "".join(out)

    return render


def _step_refs(tree: nodes.Node) -> set[str]:
    """Names of steps read as `steps.<name>` or `steps['<name>']`."""
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "steps":
                found.add(node.attr)
        elif isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name):
            arg = node.arg
            if (
                node.node.name == "steps"
                and isinstance(arg, nodes.Const)
                and isinstance(arg.value, str)
            ):
                found.add(arg.value)
    return found


def evaluate_truth(template: Template, context: Context) -> bool:
    """Branch conditions: a rendered string counts by its content, so `"false"` and `"0"` are false."""
    value = template.render(context)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)
