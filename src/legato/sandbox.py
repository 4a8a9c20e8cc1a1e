"""Bounds on what a template may compute, so no definition can stall the event loop with it.

Templates render inside the decider, on the server's event loop, so a template that computes for
seconds stalls every request. Jinja's sandbox keeps templates away from Python internals but not away
from work: `10 ** 10000000`, `'a' * 100000000`, nested loops over ranges or a macro that calls
itself twice. Here every operation that can make a value much larger than its operands is checked
*before* it runs (powers, repeats, concatenations, padding and formatting widths, joins, replaces),
every produced string or list is held to `LIMITS.max_size` (what is written out as text, with
what it holds), and each render has a budget of operations (loop iterations, calls, attribute
reads, filters) so its time is bounded too. The checks are
deterministic, so a run replayed anywhere fails the same way.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context as JinjaContext
from jinja2.runtime import Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

MAX_RANGE = 100_000
DEFAULT_MAX_RENDERED = 1024 * 1024
MACRO_COST = 10  # a macro call costs about ten loop iterations
# Filters that do not write their input out as text (the others may: `[s] * 1000 | tojson`).
STRUCTURAL = frozenset(
    [
        "abs",
        "attr",
        "batch",
        "count",
        "d",
        "default",
        "dictsort",
        "first",
        "float",
        "groupby",
        "int",
        "items",
        "join",
        "last",
        "length",
        "list",
        "map",
        "max",
        "merge",
        "min",
        "pick",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "round",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    ]
)
FILTER_BYTES_PER_OP = 64  # a filter costs one operation per this many characters or items it reads


@dataclass
class RenderLimits:
    """Process-wide; `legato serve --max-rendered` sets `max_size`."""

    # Characters of a string, items of a list, bytes of a rendered value as JSON.
    max_size: int = DEFAULT_MAX_RENDERED
    max_int_bits: int = 16_384  # an integer computed by a template (JSON holds 64 bits)
    max_ops: int = 50_000  # loop iterations, calls, filters and checked operators per render


LIMITS = RenderLimits()


class TemplateLimit(Exception):
    """A template asked for more than the limits allow; the message names the limit."""


_budget: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "legato_render_budget", default=None
)


def start_budget() -> contextvars.Token[list[int] | None]:
    """Give the render about to run its operation budget; reset it with `end_budget`."""
    return _budget.set([LIMITS.max_ops])


def end_budget(token: contextvars.Token[list[int] | None]) -> None:
    _budget.reset(token)


def _tick(cost: int = 1) -> None:
    budget = _budget.get()
    if budget is None:  # rendering outside Template.render (not done by Legato): no budget
        return
    budget[0] -= cost
    if budget[0] < 0:
        raise TemplateLimit(
            f"the template takes more than {LIMITS.max_ops} operations (loop iterations, calls, "
            "filters); simplify it or compute the value in a step"
        )


def _size_of(value: Any) -> int:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        return len(value)
    return 0


def check_size(value: Any, what: str = "a value") -> Any:
    size = _size_of(value)
    if size > LIMITS.max_size:
        raise TemplateLimit(
            f"{what} of {size} characters or items is over the limit of {LIMITS.max_size}"
        )
    if size > 4096:  # big values cost in proportion, so a loop of them runs out of budget sooner
        _tick(size // 4096)
    return value


def deep_size(value: Any, cap: int) -> int:
    """About the size of `value` as text or JSON, walking into containers, stopping once past
    `cap`. Lengths alone do not do: `[s] * 1000` is 1,000 items, yet 1,000 copies of `s` once
    written out, and writing it out would be the bomb. (Tight: it runs on every rendered value.)"""
    total = 0
    stack = [value]
    pop = stack.pop
    extend = stack.extend
    while stack:
        v = pop()
        kind = type(v)
        if kind is str:
            total += len(v) + 2
        elif kind is dict:
            total += 2 + 2 * len(v)
            try:
                total += sum(map(len, v))
            except TypeError:  # keys that are not strings (numbers)
                total += 8 * len(v)
            extend(v.values())
        elif kind is list or kind is tuple:
            total += 2 + len(v)
            extend(v)
        elif isinstance(v, str | bytes | bytearray):
            total += len(v) + 2
        elif isinstance(v, dict):
            total += 2 + 10 * len(v)
            extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + len(v)
            extend(v)
        else:
            total += 8
        if total > cap:
            return total
    return total


def _refuse_deep(value: Any, what: str, already: int = 0) -> int:
    """Refuse writing out `value` when that would pass the size limit; its size otherwise."""
    if isinstance(value, str):
        size = len(value)
    else:
        size = deep_size(value, LIMITS.max_size - already)
        _tick(size // 4096)
    _refuse_size(already + size, what)
    return size


def _refuse_size(size: int, what: str) -> None:
    if size > LIMITS.max_size:
        raise TemplateLimit(
            f"{what} would make {size} characters or items; the limit is {LIMITS.max_size}"
        )


_SEQUENCES = (str, bytes, bytearray, list, tuple)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(op: str, left: Any, right: Any) -> None:
    if op == "**" and _int(left) and _int(right) and right > 0 and abs(left) > 1:
        bits = abs(left).bit_length() * right
        if bits > LIMITS.max_int_bits:
            raise TemplateLimit(
                f"{left} ** {right} has about {bits} bits; the limit is {LIMITS.max_int_bits}"
            )
    elif op == "*":
        if _int(left) and _int(right):
            bits = abs(left).bit_length() + abs(right).bit_length()
            if bits > LIMITS.max_int_bits:
                raise TemplateLimit(f"a product of {bits} bits; the limit is {LIMITS.max_int_bits}")
        elif _int(right) and isinstance(left, _SEQUENCES):
            _refuse_size(len(left) * right, "repeating a value")
        elif _int(left) and isinstance(right, _SEQUENCES):
            _refuse_size(len(right) * left, "repeating a value")
    elif op == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        _refuse_size(len(left) + len(right), "joining two values")
    elif op == "%" and isinstance(left, str):
        _check_percent(left, right)


# %-formatting: a literal width or precision, or one taken from the arguments (`*`).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
# str.format: the spec after ':' in a replacement field, possibly with nested fields.
_FORMAT_SPEC = re.compile(r"\{[^{}:]*:((?:[^{}]|\{[^{}]*\})*)\}")
_DIGITS = re.compile(r"\d+")


def _check_widths(widths: Iterable[str], dynamic: bool, args: Iterable[Any]) -> None:
    for width in widths:
        if width.isdigit():
            _refuse_size(int(width), "a format width")
    if dynamic:
        for arg in args:
            if _int(arg) and arg > LIMITS.max_size:
                _refuse_size(arg, "a format width")


def _flat_args(args: Any) -> list[Any]:
    if isinstance(args, tuple | list):
        return list(args)
    if isinstance(args, dict):
        return list(args.values())
    return [args]


def _check_percent(fmt: str, args: Any) -> None:
    widths: list[str] = []
    dynamic = False
    fields = 0
    for m in _PERCENT_SPEC.finditer(fmt):
        fields += 1
        for group in m.groups():
            if group == "*":
                dynamic = True
            elif group:
                widths.append(group)
    values = _flat_args(args)
    _check_widths(widths, dynamic, values)
    _check_fields(fmt, fields, values)


def _check_format(fmt: str, args: Iterable[Any]) -> None:
    widths: list[str] = []
    dynamic = False
    for m in _FORMAT_SPEC.finditer(fmt):
        spec = m.group(1)
        dynamic = dynamic or "{" in spec
        widths.extend(_DIGITS.findall(spec))
    values = list(args)
    _check_widths(widths, dynamic, values)
    _check_fields(fmt, fmt.count("{"), values)


def _check_fields(fmt: str, fields: int, args: list[Any]) -> None:
    """Each field of a format may write out any argument (`'{0}{0}{0}'.format(s)`)."""
    if fields and args:
        largest = max(_refuse_deep(a, "a formatted value") for a in args)
        _refuse_size(len(fmt) + fields * largest, "formatting")


def _check_str_method(name: str, text: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Before calling a method of a string: the methods whose result can outgrow their inputs."""
    values = [*args, *kwargs.values()]
    if name in ("center", "ljust", "rjust", "zfill") and values and _int(values[0]):
        _refuse_size(values[0], f"str.{name}")
    elif name == "expandtabs":
        size = values[0] if values and _int(values[0]) else 8
        _refuse_size(len(text) + text.count("\t") * max(size, 0), "str.expandtabs")
    elif name == "replace" and len(values) >= 2:
        _check_replace(text, values[0], values[1], values[2] if len(values) > 2 else None)
    elif name == "join" and values:
        _check_join(text, values[0])
    elif name in ("format", "format_map"):
        _check_format(text, _flat_args(values[0]) if name == "format_map" and values else values)


def _check_replace(text: Any, old: Any, new: Any, count: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        found = text.count(old) if old else len(text) + 1
        if _int(count) and count >= 0:
            found = min(found, count)
        _refuse_size(len(text) + found * max(len(new) - len(old), 0), "replace")


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(items, list | tuple | str | dict) and isinstance(separator, str):
        size = len(separator) * max(len(items) - 1, 0)
        _refuse_size(size, "join")
        for item in items:
            size += _refuse_deep(item, "join", size)


def _guarded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that ticks the budget, refuses arguments that would blow its result up, and
    holds its result to the size limit. Keeps the filter's pass_context/environment marker."""

    first = 0 if _PassArg.from_obj(fn) is None else 1  # the context or environment it is given

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        value, rest = (args[first], args[first + 1 :]) if first < len(args) else (None, ())
        _tick(1 + _size_of(value) // FILTER_BYTES_PER_OP)
        extra = [*rest, *kwargs.values()]
        if name not in STRUCTURAL and not isinstance(value, str | int | float | type(None)):
            _refuse_deep(value, f"filter {name!r} writing out its input")  # e.g. tojson, upper
        if name == "wordwrap" and isinstance(value, str):  # textwrap is slow Python, per chunk
            width = extra[0] if extra and _int(extra[0]) else 79
            _tick(len(value) // 8 + len(value) // max(width, 1))
        elif name in ("urlize", "title") and isinstance(value, str):  # a regex match per word
            _tick(len(value) // 16)
        elif name == "center":
            width = extra[0] if extra else 80
            if _int(width):
                _refuse_size(width, "center")
        elif name == "indent" and isinstance(value, str):
            width = extra[0] if extra else 4
            per_line = len(width) if isinstance(width, str) else width if _int(width) else 0
            _refuse_size(len(value) + per_line * (value.count("\n") + 1), "indent")
        elif name == "format" and isinstance(value, str):
            _check_percent(value, extra)
        elif name == "replace" and len(extra) >= 2:
            _check_replace(value, extra[0], extra[1], extra[2] if len(extra) > 2 else None)
        elif name == "join":
            items = list(value) if isinstance(value, Iterable) else value
            check_size(items, "join's input")
            _check_join(extra[0] if extra else "", items)
            args = (*args[:first], items, *args[first + 1 :])
        elif name in ("batch", "slice") and extra and _int(extra[0]):
            _refuse_size(extra[0], name)
        return args

    def guarded(*args: Any, **kwargs: Any) -> Any:
        args = check(args, kwargs)
        return check_size(fn(*args, **kwargs), f"the result of filter {name!r}")

    if hasattr(fn, "jinja_pass_arg"):
        guarded.jinja_pass_arg = fn.jinja_pass_arg  # type: ignore[attr-defined]
    guarded.__name__ = getattr(fn, "__name__", name)
    guarded.__doc__ = fn.__doc__
    return guarded


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise TemplateLimit(f"range() of {len(rng)} numbers; the limit is {MAX_RANGE}")
    return rng


def _finalize(value: Any) -> Any:
    """What `{{ ... }}` in text writes out, checked before it is (`{{ [s] * 1000 }}`)."""
    if not isinstance(value, str | int | float | type(None)):
        _refuse_deep(value, "the template's output")
    return value


def _guarded_join(parts: Iterable[Any]) -> str:
    """Jinja's `concat`: how a template's (or a macro's, or a block's) output is joined."""
    out: list[str] = []
    size = 0
    for part in parts:
        if not isinstance(part, str):
            _refuse_deep(part, "the template's output", size)
        text = str(part)
        size += len(text)
        _refuse_size(size, "the template's output")
        out.append(text)
    return "".join(out)


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        """`a ~ b`, checked like the join of the parts it is."""
        self.write("environment.concat_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the bounds above."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_guarded_join)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("finalize", _finalize)
        super().__init__(*args, **kwargs)
        self.globals["range"] = _safe_range
        self.globals.pop("lipsum", None)  # lorem ipsum of any length: no use in a workflow
        self.filters = {k: _guarded_filter(k, f) for k, f in self.filters.items()}

    def add_filter(self, name: str, fn: Callable[..., Any]) -> None:
        self.filters[name] = _guarded_filter(name, fn)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()  # also what sort, groupby, map... read each item's attribute with
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: JinjaContext, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return check_size(self.binop_table[operator](left, right), f"the result of {operator!r}")

    def call(__self, __context: JinjaContext, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick(MACRO_COST if isinstance(__obj, Macro) else 1)
        method = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(getattr(method, "__name__", ""), owner, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return check_size(result, "a call's result")

    @staticmethod
    def concat_parts(parts: tuple[Any, ...]) -> str:
        _tick()
        return _guarded_join(parts)

    @staticmethod
    def guard_iter(iterable: Any) -> Iterator[Any]:
        """What a `{% for %}` loop walks: each item costs one operation of the budget."""
        for item in iterable:
            _tick()
            yield item

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        for loop in source.find_all(nodes.For):
            guard = nodes.EnvironmentAttribute("guard_iter", lineno=loop.lineno)
            loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.lineno)
        return super()._generate(source, name, filename, defer_init)
