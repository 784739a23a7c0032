"""How the suites cover their parameters without running every combination, and how one test
runs many combinations and reports every failing one.

A covering design (`design`) lists rows (one value per parameter) such that
  * every pair of values of any two parameters is in some row (pairwise coverage: a fault that
    needs two parameters at given values to show is reached), and
  * every combination of the parameters of each group in `full` is in some row: the
    interactions that are real (a kernel's path is chosen by dtype, layout and alignment
    together), crossed in full.
Rows are built greedily (each new row takes, parameter by parameter, the value that covers
the most combinations still missing), in a fixed order: the same design on every run.

`GLU_FUSED_TEST_FULL=1` (make test-full) turns every design into the full product.

`each` runs one check per row inside a single pytest item, fresh inputs each time, and fails
at the end with every failing row and its message: a thousand pytest items would cost more
than their checks, and stopping at the first failure would hide the pattern of the others.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest

FULL = os.environ.get("GLU_FUSED_TEST_FULL", "0") not in ("", "0")


def product(params: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values, as rows."""
    names = list(params)
    return [dict(zip(names, values)) for values in itertools.product(*params.values())]


def design(
    params: Mapping[str, Sequence[Any]], full: Iterable[Sequence[str]] = ()
) -> list[dict[str, Any]]:
    """Rows covering every pair of values, and the full product of each group in `full`
    (the whole product under GLU_FUSED_TEST_FULL)."""
    if FULL:
        return product(params)
    key = (tuple((n, tuple(v)) for n, v in params.items()), tuple(tuple(g) for g in full))
    return [dict(row) for row in _design(key)]


@functools.cache
def _design(key) -> list[dict[str, Any]]:
    params = {n: list(values) for n, values in key[0]}
    names = list(params)
    groups = list(key[1])
    for g in groups:
        unknown = set(g) - set(names)
        assert not unknown, f"covering: {sorted(unknown)} are not parameters"
    # What must be covered: each full group's combinations, and each pair of parameters that
    # no group already crosses. An entry is a tuple of (name, value index) items.
    wanted: set[tuple[tuple[str, int], ...]] = set()
    for g in groups:
        for idx in itertools.product(*(range(len(params[n])) for n in g)):
            wanted.add(tuple(zip(g, idx)))
    for a, b in itertools.combinations(names, 2):
        if any(a in g and b in g for g in groups):
            continue
        for i in range(len(params[a])):
            for j in range(len(params[b])):
                wanted.add(((a, i), (b, j)))

    def covered_by(row: dict[str, int]) -> set:
        return {w for w in wanted if all(row.get(n) == i for n, i in w)}

    rows: list[dict[str, int]] = []
    while wanted:
        # Seed the row with the first missing combination of the largest kind, in a fixed order.
        seed = min(wanted, key=lambda w: (-len(w), [names.index(n) for n, _ in w], w))
        row = dict(seed)
        for name in names:
            if name in row:
                continue
            best, best_count = 0, -1
            for i in range(len(params[name])):
                count = len(covered_by({**row, name: i}))
                if count > best_count:
                    best, best_count = i, count
            row[name] = best
        wanted -= covered_by(row)
        rows.append(row)
    return [{n: params[n][row[n]] for n in names} for row in rows]


def select(rows: Iterable[Mapping[str, Any]], **fixed: Any) -> list[dict[str, Any]]:
    """The rows whose values are `fixed`'s, without those parameters."""
    return [
        {k: v for k, v in r.items() if k not in fixed}
        for r in rows
        if all(r[k] == v for k, v in fixed.items())
    ]


def label(row: Mapping[str, Any]) -> str:
    """A row as text: name=value pairs, dtypes without their module."""
    return " ".join(f"{k}={str(v).replace('torch.', '')}" for k, v in row.items())


def each(rows: Iterable[Mapping[str, Any]], check: Callable[..., None]) -> int:
    """Runs check(**row) for every row; fails with every row whose check failed. Returns the
    number of rows run (a test may hold it to what it expects)."""
    failures = []
    n = 0
    for row in rows:
        n += 1
        try:
            check(**row)
        except (AssertionError, RuntimeError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            failures.append(f"{label(row)}: {type(e).__name__}: {first}")
    assert n > 0, "no combinations to run: a selection that matches nothing checks nothing"
    if failures:
        shown = "\n  ".join(failures[:40])
        more = f"\n  ... and {len(failures) - 40} more" if len(failures) > 40 else ""
        pytest.fail(f"{len(failures)} of {n} combinations failed:\n  {shown}{more}", False)
    return n
