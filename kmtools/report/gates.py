"""``--gate`` conditions over result paths, e.g. ``onepixel.rate<=0.15`` (docs/gates.md).

A gate is one comparison ``EXPR OP EXPR`` with OP in ``<, <=, >, >=, ==, !=``; each side is a
number, a path, ``path[i]`` (an element of a list of numbers, negative indices from the end) or
arithmetic of those with ``+ - * /`` and parentheses (``gauss.accuracy>=softmax.accuracy-0.003``,
``gauss.fgsm.accuracy[-1]>=0.2``). Paths are dotted keys into the command's ``results`` (the
``results.`` prefix may be left out) or into the whole document (``seed``, ``timings.total``).

The expression is parsed with :mod:`ast` and walked by a small interpreter that knows only
those node types: nothing is ever passed to ``eval``, names are looked up in the result
document only, and calls, attributes of objects, subscripts of anything but a path,
comprehensions, lambdas, strings and booleans are rejected. A malformed gate or an unknown
path is a usage error (:class:`~kmtools.errors.GateError`, exit 2) naming the valid paths; a
failing gate is reported with its value (exit 3, by the CLI).
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kmtools.errors import GateError

_OPS: dict[type, tuple[str, Callable[[float, float], bool]]] = {
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
}
_BIN: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
MAX_LENGTH = 500  # characters; a gate is one short comparison
_SHOWN = 40  # valid paths listed in an error message


@dataclass
class GateResult:
    expr: str
    passed: bool
    value: float
    bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float))  # bool is an int: booleans count as 0/1


def flatten(doc: Any, prefix: str = "") -> dict[str, float]:
    """All numeric leaves of ``doc`` as ``{"a.b.c": value}`` (booleans count as 0/1).

    Strings, nulls and lists are left out (lists of numbers are reached with ``path[i]``,
    see :func:`lists`).
    """
    out: dict[str, float] = {}
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif _is_number(doc):
        out[prefix[:-1]] = float(doc)
    return out


def lists(doc: Any, prefix: str = "") -> dict[str, list[float]]:
    """Every list of numbers in ``doc`` (``None`` entries become NaN) as ``{"a.b": [...]}``."""
    out: dict[str, list[float]] = {}
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            out.update(lists(v, f"{prefix}{k}."))
    elif (
        isinstance(doc, (list, tuple))
        and any(v is not None for v in doc)
        and all(v is None or _is_number(v) for v in doc)
    ):
        out[prefix[:-1]] = [math.nan if v is None else float(v) for v in doc]
    return out


class _Values:
    """The numbers of one document, looked up by path (with or without ``results.``)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.scalars = flatten(doc)
        self.lists = lists(doc)

    def _find(self, table: Mapping[str, Any], path: str) -> Any:
        for key in (path, f"results.{path}"):
            if key in table:
                return table[key]
        return None

    def valid_paths(self) -> list[str]:
        """Paths a gate may use, ``results.`` dropped, lists shown as ``path[i]`` (i < n)."""
        res = [k.removeprefix("results.") for k in self.scalars if k.startswith("results.")]
        res += [f"{k.removeprefix('results.')}[i<{len(v)}]" for k, v in self.lists.items() if k.startswith("results.")]
        return sorted(res)

    def unknown(self, path: str, expr: str, what: str = "path") -> GateError:
        shown = _nearest_first(self.valid_paths(), path)
        plain = [p.split("[")[0] for p in shown]
        close = _suggest(path, plain)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        listed = ", ".join(shown[:_SHOWN]) or "(none)"
        more = f" … and {len(shown) - _SHOWN} more (docs/gates.md)" if len(shown) > _SHOWN else ""
        return GateError(f"gate {expr!r}: unknown {what} {path!r}{hint}; valid paths: {listed}{more}")

    def scalar(self, path: str, expr: str) -> float:
        v = self._find(self.scalars, path)
        if v is None:
            if self._find(self.lists, path) is not None:
                raise GateError(f"gate {expr!r}: {path!r} is a list: pick one element, e.g. {path}[0] or {path}[-1]")
            raise self.unknown(path, expr)
        return float(v)

    def element(self, path: str, index: int, expr: str) -> float:
        seq = self._find(self.lists, path)
        if seq is None:
            raise self.unknown(path, expr, "list")
        if not -len(seq) <= index < len(seq):
            raise GateError(f"gate {expr!r}: index {index} is outside {path} (it has {len(seq)} values)")
        return float(seq[index])


def _suggest(path: str, valid: list[str]) -> list[str]:
    """Likely meant paths: siblings whose last key starts with, or resembles, the typed one."""
    parent, _, last = path.rpartition(".")
    siblings = {p.rpartition(".")[2]: p for p in valid if p.rpartition(".")[0] == parent}
    started = [siblings[k] for k in sorted(siblings) if k.startswith(last)]
    if started:
        return started[:2]
    similar = difflib.get_close_matches(last, list(siblings), n=2, cutoff=0.6)
    if similar:
        return [siblings[k] for k in similar]
    return difflib.get_close_matches(path, valid, n=2, cutoff=0.75)


def _nearest_first(paths: list[str], path: str) -> list[str]:
    """``paths`` sharing the longest dotted prefix with ``path`` first, shallow before deep."""
    parts = path.split(".")

    def key(p: str) -> tuple[int, int, str]:
        q = p.split("[")[0].split(".")
        shared = next((i for i, (a, b) in enumerate(zip(parts, q, strict=False)) if a != b), min(len(parts), len(q)))
        return (-shared, len(q), p)

    return sorted(paths, key=key)


def _path_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _path_of(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _index_of(node: ast.AST) -> int | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _index_of(node.operand)
        return -inner if inner is not None else None
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return int(node.value)
    return None


_ALLOWED = "only numbers, result paths, path[i] and + - * / are allowed"


def _eval(node: ast.AST, values: _Values, expr: str) -> float:
    path = _path_of(node)
    if path is not None:
        return values.scalar(path, expr)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and type(node.value) is not bool:
        try:
            return float(node.value)
        except OverflowError:
            raise GateError(f"gate {expr!r}: the number {str(node.value)[:20]}... is too large") from None
    if isinstance(node, ast.Subscript):
        base = _path_of(node.value)
        index = _index_of(node.slice)
        if base is None or index is None:
            raise GateError(f"gate {expr!r}: {_ALLOWED} (an index is a whole number after a path)")
        return values.element(base, index, expr)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, values, expr)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        left, right = _eval(node.left, values, expr), _eval(node.right, values, expr)
        try:
            return _BIN[type(node.op)](left, right)
        except ZeroDivisionError:
            return math.nan  # a gate on an undefined ratio fails (NaN compares false)
    raise GateError(f"gate {expr!r}: {_ALLOWED}")


def parse(expr: str) -> ast.Compare:
    """Parse a gate; raises :class:`GateError` for anything but one comparison.

    Only the shape is checked here (so commands can reject a typo before any work); the
    operands are checked against the document by :func:`evaluate`.
    """
    text = expr.strip()
    if len(text) > MAX_LENGTH:
        raise GateError(f"gate {text[:40]!r}… is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError) as exc:
        raise GateError(f"gate {expr!r} is not a comparison like 'accuracy>=0.9'") from exc
    if not isinstance(tree, ast.Compare) or len(tree.ops) != 1 or type(tree.ops[0]) not in _OPS:
        raise GateError(f"gate {expr!r} must be one comparison with <, <=, >, >=, == or !=")
    return tree


def evaluate(expr: str, doc: Mapping[str, Any]) -> GateResult:
    """Evaluate one gate on ``doc``; NaN on either side fails the gate."""
    tree = parse(expr)
    values = _Values(doc)
    left = _eval(tree.left, values, expr)
    right = _eval(tree.comparators[0], values, expr)
    _, fn = _OPS[type(tree.ops[0])]
    return GateResult(expr=expr.strip(), passed=bool(fn(left, right)), value=left, bound=right)


def check(exprs: Iterable[str], doc: Mapping[str, Any]) -> list[GateResult]:
    """Evaluate every gate (all are parsed first, so a typo fails before any result).

    A malformed gate's error lists the document's valid paths as well.
    """
    exprs = [e for e in exprs if e.strip()]
    for e in exprs:
        try:
            parse(e)
        except GateError as exc:
            shown = sorted(_Values(doc).valid_paths(), key=lambda p: (p.count("."), p))
            listed = ", ".join(shown[:_SHOWN]) + (" …" if len(shown) > _SHOWN else "")
            raise GateError(f"{exc}; valid paths: {listed or '(none)'}") from exc
    return [evaluate(e, doc) for e in exprs]


def valid_paths(doc: Mapping[str, Any]) -> list[str]:
    """The paths gates can use on ``doc`` (lists as ``path[i<n]``), for docs and error messages."""
    return _Values(doc).valid_paths()
