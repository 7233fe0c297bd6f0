"""``--gate`` conditions: parsing, evaluation, errors that name the valid paths."""

from __future__ import annotations

from typing import Any

import pytest

from kmtools.errors import GateError, KmtoolsError
from kmtools.report import gates
from kmtools.report.schema import envelope

DOC = envelope(
    "evaluate",
    {
        "accuracy": 0.93,
        "head_kind": "gauss",
        "softmax": {"accuracy": 0.935, "mean_confidence": 0.97},
        "gauss": {"accuracy": 0.933, "onepixel": {"rate": 0.06, "fooled": 2}},
        "ood": {"auroc": 0.99},
        "converged": True,
        "eps": [0.1, 0.2],
    },
    seed=3,
)


@pytest.mark.parametrize(
    ("expr", "passed", "value", "bound"),
    [
        ("accuracy>=0.9", True, 0.93, 0.9),
        ("accuracy > 0.95", False, 0.93, 0.95),
        ("accuracy<0.93", False, 0.93, 0.93),
        ("accuracy<=0.93", True, 0.93, 0.93),
        ("gauss.onepixel.fooled==2", True, 2.0, 2.0),
        ("gauss.onepixel.fooled!=2", False, 2.0, 2.0),
        ("results.ood.auroc>0.98", True, 0.99, 0.98),  # the full path works too
        ("seed==3", True, 3.0, 3.0),  # envelope fields outside results
        ("converged==1", True, 1.0, 1.0),  # booleans count as 0/1
        ("gauss.accuracy>=softmax.accuracy-0.003", True, 0.933, 0.932),  # arithmetic RHS
        ("gauss.accuracy>=softmax.accuracy-0.001", False, 0.933, 0.934),
        ("gauss.onepixel.rate<=softmax.mean_confidence/10", True, 0.06, 0.097),
        ("gauss.onepixel.rate*2 < 0.2", True, 0.12, 0.2),  # arithmetic LHS
        ("-accuracy < -0.5", True, -0.93, -0.5),
        ("accuracy >= 9e-1", True, 0.93, 0.9),
    ],
)
def test_evaluate(expr: str, passed: bool, value: float, bound: float) -> None:
    r = gates.evaluate(expr, DOC)
    assert r.passed is passed
    assert r.value == pytest.approx(value)
    assert r.bound == pytest.approx(bound)
    assert r.expr == expr.strip()
    assert r.to_dict() == {"expr": r.expr, "passed": passed, "value": r.value, "bound": r.bound}


def test_unknown_path_names_the_valid_ones() -> None:
    with pytest.raises(GateError) as err:
        gates.evaluate("gauss.acc>=0.9", DOC)
    msg = str(err.value)
    assert "unknown path 'gauss.acc'" in msg
    for path in ("accuracy", "gauss.accuracy", "gauss.onepixel.rate", "softmax.mean_confidence"):
        assert path in msg
    assert "did you mean gauss.accuracy" in msg
    assert "head_kind" not in msg.split("valid paths:")[1]  # strings are no gate values
    assert "eps[i<2]" in msg  # lists are offered element-wise
    with pytest.raises(GateError, match=r"'eps' is a list: pick one element, e\.g\. eps\[0\]"):
        gates.evaluate("eps>0", DOC)


@pytest.mark.parametrize(
    ("expr", "value"),
    [("eps[0]==0.1", 0.1), ("eps[-1]==0.2", 0.2), ("results.eps[1]>=eps[0]*2", 0.2), ("eps[- 2]<1", 0.1)],
)
def test_list_elements(expr: str, value: float) -> None:
    r = gates.evaluate(expr, DOC)
    assert r.passed and r.value == pytest.approx(value)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("eps[2]>0", r"index 2 is outside eps \(it has 2 values\)"),
        ("eps[-3]>0", "index -3 is outside eps"),
        ("accuracy[0]>0", "unknown list 'accuracy'"),
        ("eps[0.5]>0", "an index is a whole number after a path"),
        ("eps[True]>0", "an index is a whole number"),
        ("eps[accuracy]>0", "an index is a whole number"),
        ("eps[0:1]>0", "an index is a whole number"),
    ],
)
def test_bad_list_access(expr: str, message: str) -> None:
    with pytest.raises(GateError, match=message):
        gates.evaluate(expr, DOC)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('x')",
        "__import__('os').system('touch pwned') == 0",
        "accuracy >= __import__('os').system('touch pwned')",
        "accuracy >= (lambda: 1)()",
        "accuracy >= [x for x in ().__class__.__base__.__subclasses__()][0]",
        "accuracy >= open('/etc/passwd').read()",
        "accuracy.__class__ >= 0",
    ],
)
def test_malicious_expressions_are_rejected_without_running(expr: str, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GateError):
        gates.check([expr], DOC)
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_nan_and_zero_division_fail_the_gate() -> None:
    doc = envelope("evaluate", {"gamma": float("nan"), "zero": 0, "one": 1})
    assert not gates.evaluate("gamma>=0", doc).passed
    assert not gates.evaluate("gamma<0", doc).passed
    r = gates.evaluate("one/zero>=0", doc)
    assert not r.passed and r.value != r.value  # NaN
    assert gates.evaluate("one/zero!=0", doc).passed  # NaN != 0, as IEEE says


def test_long_expressions_are_refused() -> None:
    with pytest.raises(GateError, match="longer than 500"):
        gates.parse("accuracy>=" + "+".join(["0"] * 400))


def test_unknown_path_on_the_right_hand_side() -> None:
    with pytest.raises(GateError, match=r"unknown path 'softmax\.acc'"):
        gates.evaluate("accuracy>=softmax.acc", DOC)


@pytest.mark.parametrize(
    "expr",
    [
        "accuracy=>0.9",  # not Python syntax
        "accuracy>>0.9",
        "accuracy",  # no comparison
        "accuracy = 0.9",  # assignment
        "0.8 < accuracy < 0.99",  # chained
        "accuracy >= 0.9 and seed == 3",
        "accuracy in [0.9]",  # not a numeric comparison
        "accuracy is 0.9",
        "",
    ],
)
def test_bad_operator_or_syntax(expr: str) -> None:
    with pytest.raises(GateError, match="comparison"):
        gates.parse(expr)


@pytest.mark.parametrize(
    "expr",
    [
        "accuracy >= __import__('os').getpid()",
        "accuracy >= 'x'",
        "accuracy >= 2**3",
        "accuracy >= True",
        "accuracy >= [1][0]",
    ],
)
def test_only_numbers_paths_and_arithmetic(expr: str) -> None:
    with pytest.raises(GateError, match=r"only numbers, result paths, path\[i\] and \+ - \* /"):
        gates.evaluate(expr, DOC)


def test_gate_error_is_a_usage_error() -> None:
    assert issubclass(GateError, KmtoolsError)
    assert GateError.exit_code == 2


def test_check_parses_all_before_evaluating() -> None:
    assert [r.passed for r in gates.check(["accuracy>0.9", " ", "accuracy>0.99"], DOC)] == [True, False]
    with pytest.raises(GateError, match="'nonsense'"):
        # the bad second gate is reported even though the first one would evaluate
        gates.check(["accuracy>0.9", "nonsense"], DOC)
    assert gates.check([], DOC) == []


def test_flatten_and_lists() -> None:
    doc = {"a": {"b": 1, "c": True, "d": "x", "e": [1, 2], "g": [None, 3]}, "f": 2.5, "h": ["x"], "i": [None]}
    assert gates.flatten(doc) == {"a.b": 1.0, "a.c": 1.0, "f": 2.5}
    lists = gates.lists(doc)
    assert lists["a.e"] == [1.0, 2.0] and set(lists) == {"a.e", "a.g"}
    assert lists["a.g"][0] != lists["a.g"][0] and lists["a.g"][1] == 3.0  # None -> NaN


def test_syntax_error_lists_the_valid_paths() -> None:
    with pytest.raises(GateError) as err:
        gates.check(["accuracy=>0.9"], DOC)
    assert "not a comparison" in str(err.value) and "valid paths: " in str(err.value)
    assert "gauss.onepixel.rate" in str(err.value)
    assert gates.valid_paths(DOC)[:2] == ["accuracy", "converged"]
