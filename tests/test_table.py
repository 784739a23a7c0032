"""One table of the functions, held equal wherever it is written: the Python table
(glu_fused._table), the C++ table beside the element math (csrc/glu_functions.h, as the
extension exports it), the Triton kernels' activation codes, the reference's math and the
public API. And the one layout computation (csrc/glu_plan.cpp), which every backend's
kernels walk, on a shared set of shapes and strides."""

from __future__ import annotations

import inspect

import pytest
import torch

import glu_fused
from glu_fused import _derivatives, _table, nn, reference
from glu_fused._extension import _C

needs_extension = pytest.mark.skipif(_C is None, reason="the compiled extension is not built")


@needs_extension
def test_cpp_table_is_the_python_table():
    assert _C.PACKED_FUNCTIONS == {
        f.name: (f.activation.code, f.gate_is_second) for f in _table.PACKED_FUNCTIONS.values()
    }
    assert list(_C.PACKED_FUNCTIONS) == list(_table.PACKED_FUNCTIONS)  # the order of messages
    assert _C.GATE_ACTIVATIONS == {a.name: a.code for a in _table.GATE_ACTIVATIONS.values()}
    assert list(_C.GATE_ACTIVATIONS) == list(_table.GATE_ACTIVATIONS)
    assert _C.LAYOUTS == _table.LAYOUTS


def test_triton_codes_are_the_tables():
    pytest.importorskip("triton", reason="Triton is not installed")
    from glu_fused._triton import math as m

    for name in ("SIGMOID", "SILU", "GELU", "GELU_TANH", "RELU", "CLAMPED_SILU"):
        assert getattr(m, name).value == getattr(_table, name).code, name


def test_activation_codes_are_distinct():
    codes = [a.code for a in _table.ACTIVATIONS.values()]
    assert sorted(codes) == list(range(len(codes)))


def test_reference_has_the_math_of_every_activation():
    assert set(reference.ACTIVATIONS) == set(_table.GATE_ACTIVATIONS)
    g = torch.linspace(-6, 6, 101, dtype=torch.float64)
    for name in _table.ACTIVATIONS:
        a, _, _ = _derivatives.gate_terms(g, name, 1.702, 7.0)
        assert a.shape == g.shape, name


@pytest.mark.parametrize("activation", list(_table.GATE_ACTIVATIONS.values()), ids=lambda a: a.name)
def test_torch_form_is_the_reference(activation):
    """What PyTorch users write computes the reference's activation (benchmarks' peers and
    infer_activation rely on it)."""
    x = torch.linspace(-8, 8, 161, dtype=torch.float64)
    torch.testing.assert_close(
        activation.torch_form(x), reference.activate(x, activation.name), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("f", list(_table.PACKED_FUNCTIONS.values()), ids=lambda f: f.name)
def test_every_packed_function_has_its_public_function(f):
    x = torch.randn(3, 8, dtype=torch.float64)
    for module in (glu_fused, reference):
        public = getattr(module, f.public)
        parameters = inspect.signature(public).parameters
        assert parameters["layout"].default == f.layout, (module.__name__, f.name)
        out = public(x, layout="halves", **dict(f.options))
        want = reference.packed(x, -1, f.name, "halves")
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", list(_table.GATE_ACTIVATIONS))
def test_gated_mlp_has_a_fused_form_of_every_activation(activation):
    x = torch.randn(3, 8, dtype=torch.float64)
    gate, up = x.chunk(2, -1)
    out = nn._fused_activation(activation)(x)
    torch.testing.assert_close(out, reference.gated(gate, up, activation), rtol=1e-12, atol=1e-12)


# ---- the layout: where the kernels find each output's gate and value ---------------------

# (input, dim, layout, function) -> the plan's runs, and the gate's and value's first elements
# as offsets into the input's storage (None: a contiguous copy is walked instead).
BASE = torch.arange(4 * 6 * 10, dtype=torch.float32).reshape(4, 6, 10)
LAYOUT_CASES = [
    ("rows, halves", BASE[0], -1, "halves", "swiglu", (6, 5, 1, 10, 0, False), (0, 5)),
    ("rows, pairs", BASE[0], -1, "interleaved", "swiglu", (6, 5, 1, 10, 0, True), (0, 1)),
    ("glu's gate is second", BASE[0], -1, "halves", "glu", (6, 5, 1, 10, 0, False), (5, 0)),
    ("strided rows", BASE[:, 1], -1, "halves", "swiglu", (4, 5, 1, 60, 0, False), (10, 15)),
    ("sliced, odd start", BASE[0, :, 1:9], -1, "halves", "swiglu", (6, 4, 1, 10, 0, False), (1, 5)),
    ("middle dim", BASE, 1, "halves", "swiglu", (12, 10, 3, 60, 10, False), (0, 30)),
    ("middle dim, pairs", BASE, 1, "interleaved", "swiglu", (12, 10, 3, 60, 20, False), (0, 10)),
    ("first dim", BASE, 0, "halves", "swiglu", (2, 60, 2, 0, 60, False), (0, 120)),
    ("not walkable", BASE.transpose(1, 2), 1, "halves", "swiglu", (20, 6, 5, 60, 6, False), None),
]


@needs_extension
@pytest.mark.parametrize(
    ("x", "dim", "layout", "function", "runs", "starts"),
    [case[1:] for case in LAYOUT_CASES],
    ids=[case[0] for case in LAYOUT_CASES],
)
def test_layout_of_packed_inputs(x, dim, layout, function, runs, starts):
    out, plan = _C.plan_glu_forward(x, dim, function, layout, 1.702, 7.0)
    got = (
        plan["runs"],
        plan["run_len"],
        plan["runs_per_outer"],
        *plan["strides"],
        plan["pairs"],
    )
    assert got == runs
    gate, value, result = plan["pointers"]
    assert result is out
    if starts is None:  # a copy: a storage of its own, walked from its start
        assert gate.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    else:
        assert gate.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        assert (gate.storage_offset(), value.storage_offset()) == starts
    assert plan["gate_first"] == (gate.storage_offset() < value.storage_offset())


@needs_extension
def test_layout_of_gated_inputs_and_of_gradients():
    gate, value = BASE[0, :, :5], BASE[0, :, 5:]
    _, plan = _C.plan_gated_forward(gate, value, "silu")
    assert (plan["runs"], plan["run_len"], *plan["strides"]) == (6, 5, 10, 0)
    grads, plan, _ = _C.plan_glu_backward(
        torch.ones(6, 5), BASE[0], -1, "swiglu", "halves", 1.7, 7.0
    )
    # The gradient's pointers: the gate's half and the value's half of one dense result.
    dgate, dvalue = plan["pointers"][3:]
    assert plan["strides"][2:] == (10, 0)
    assert (dgate.storage_offset(), dvalue.storage_offset()) == (0, 5)
    assert dgate.untyped_storage().data_ptr() == grads.untyped_storage().data_ptr()


@needs_extension
def test_empty_calls_plan_no_launch():
    out, plan = _C.plan_glu_forward(torch.empty(0, 8), -1, "swiglu", "halves", 1.7, 7.0)
    assert plan is None and out.shape == (0, 4)
