"""``--gate`` conditions over result paths, e.g. ``onepixel.rate<=0.15``.

A gate is one comparison: ``PATH OP EXPR`` with OP in ``<, <=, >, >=, ==, !=`` and EXPR a
number, a path, or arithmetic of those (``gauss.accuracy>=softmax.accuracy-0.003``). Paths
are dotted keys into the command's ``results`` (or the whole document). A malformed gate
or an unknown path is a usage error (exit 2) naming the valid paths; a failing gate is
reported with its value (exit 3, by the CLI).
"""

from __future__ import annotations

import ast
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


@dataclass
class GateResult:
    expr: str
    passed: bool
    value: float
    bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flatten(doc: Any, prefix: str = "") -> dict[str, float]:
    """All numeric leaves of ``doc`` as ``{"a.b.c": value}`` (booleans count as 0/1)."""
    out: dict[str, float] = {}
    if isinstance(doc, Mapping):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(doc, bool):
        out[prefix[:-1]] = float(doc)
    elif isinstance(doc, (int, float)):
        out[prefix[:-1]] = float(doc)
    return out


def _path_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _path_of(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _lookup(path: str, values: Mapping[str, float], expr: str) -> float:
    for key in (path, f"results.{path}"):
        if key in values:
            return values[key]
    shown = sorted(k.removeprefix("results.") for k in values if k.startswith("results."))
    raise GateError(
        f"gate {expr!r}: unknown path {path!r}; valid paths: {', '.join(shown[:40]) or '(none)'}"
    )


def _eval(node: ast.AST, values: Mapping[str, float], expr: str) -> float:
    path = _path_of(node)
    if path is not None:
        return _lookup(path, values, expr)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, values, expr)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return _BIN[type(node.op)](_eval(node.left, values, expr), _eval(node.right, values, expr))
    raise GateError(f"gate {expr!r}: only numbers, result paths and + - * / are allowed")


def parse(expr: str) -> ast.Compare:
    """Parse a gate; raises :class:`GateError` for anything but one comparison."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as exc:
        raise GateError(f"gate {expr!r} is not a comparison like 'accuracy>=0.9'") from exc
    if not isinstance(tree, ast.Compare) or len(tree.ops) != 1 or type(tree.ops[0]) not in _OPS:
        raise GateError(f"gate {expr!r} must be one comparison with <, <=, >, >=, == or !=")
    return tree


def evaluate(expr: str, doc: Mapping[str, Any]) -> GateResult:
    tree = parse(expr)
    values = flatten(doc)
    left = _eval(tree.left, values, expr)
    right = _eval(tree.comparators[0], values, expr)
    _, fn = _OPS[type(tree.ops[0])]
    return GateResult(expr=expr.strip(), passed=bool(fn(left, right)), value=left, bound=right)


def check(exprs: Iterable[str], doc: Mapping[str, Any]) -> list[GateResult]:
    """Evaluate every gate (all are parsed first, so a typo fails before any result)."""
    exprs = [e for e in exprs if e.strip()]
    for e in exprs:
        parse(e)
    return [evaluate(e, doc) for e in exprs]
