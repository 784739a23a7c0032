"""The suites' covering designs (tests/covering.py) cover what they promise: every pair of
values of any two parameters, each `full` group's every combination, the same rows on every
run; and `each` reports every failing combination, not the first."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DTYPES, FUNCTION_IDS, LAYOUTS
from covering import _design, design, each, product, select

# The designs the suites use, and two with groups that overlap.
DESIGNS = {
    "numerics": (
        {"function": FUNCTION_IDS, "layout": LAYOUTS, "dtype": DTYPES, "case": list(range(22))},
        [("layout", "dtype", "case")],
    ),
    "opcheck": (
        {"function": list(range(6)), "layout": LAYOUTS, "dtype": DTYPES[:2], "shape": ["a", "b"]},
        [("layout", "dtype", "shape")],
    ),
    "pairs only": ({"a": [1, 2, 3], "b": "xyz", "c": [True, False], "d": [0, 1, 2, 3]}, []),
    "overlapping groups": (
        {"a": [1, 2, 3], "b": "xy", "c": "pqr", "d": [0, 1]},
        [("a", "b"), ("b", "c", "d")],
    ),
}


def _design_now(params, full):
    """The design as computed, not as GLU_FUSED_TEST_FULL may have widened it."""
    key = (tuple((n, tuple(v)) for n, v in params.items()), tuple(tuple(g) for g in full))
    return _design.__wrapped__(key)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_designs_cover_every_pair_and_every_full_group(name):
    params, full = DESIGNS[name]
    rows = _design_now(params, full)
    seen = {tuple(r[n] for n in params) for r in rows}
    names = list(params)
    for a, b in itertools.combinations(names, 2):
        got = {(r[a], r[b]) for r in rows}
        assert got == set(itertools.product(params[a], params[b])), f"{a} x {b} not covered"
    for group in full:
        got = {tuple(r[n] for n in group) for r in rows}
        assert got == set(itertools.product(*(params[n] for n in group))), f"{group} not full"
    assert len(seen) == len(rows), "a row repeated"
    assert len(rows) < len(product(params)), "no saving over the full product"
    assert _design_now(params, full) == rows, "not the same rows on every run"


def test_the_numerics_design_is_no_larger_than_its_full_group():
    """176 rows: layout x dtype x case, each once, with the functions spread over them."""
    params, full = DESIGNS["numerics"]
    assert len(_design_now(params, full)) == 2 * 4 * 22


def test_select_takes_the_rows_of_one_value():
    rows = design({"a": [1, 2], "b": "xy"})
    assert select(rows, a=1) == [{"b": "x"}, {"b": "y"}]


def test_each_reports_every_failing_combination():
    def check(a, b):
        assert a != 2, f"a is {a}"

    with pytest.raises(pytest.fail.Exception) as failed:
        each(product({"a": [1, 2, 3], "b": [torch.float16, torch.float32]}), check)
    text = str(failed.value)
    assert "2 of 6 combinations failed" in text
    assert "a=2 b=float16: AssertionError: a is 2" in text
    assert "a=2 b=float32" in text


def test_each_refuses_to_check_nothing():
    with pytest.raises(AssertionError, match="no combinations"):
        each([], lambda: None)
