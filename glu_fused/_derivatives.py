r"""The reference's derivatives, written out in plain differentiable PyTorch: the math of
the double-backward ops (glu_double_backward, gated_double_backward: second order) and of the
in-place backward's reference (GatedMLP's backward, first order).

Every function here is :math:`f(g, v) = A(g)\,B(v)` per element: :math:`A` the gate's
activation (gpt-oss's: :math:`s(\min(g, L))`, :math:`s(u) = u\,\sigma(\alpha u)`) and
:math:`B(v) = v` (gpt-oss's: :math:`\mathrm{clamp}(v, -L, L) + 1`). The fused backward
computes, for an upstream gradient :math:`\delta`, :math:`(\delta f_g, \delta f_v)`. Its
vector-Jacobian product for the cotangents :math:`(\gamma_g, \gamma_v)` of those outputs is

.. math::
    \partial\delta = \gamma_g f_g + \gamma_v f_v, \quad
    \partial g = \delta\,(\gamma_g f_{gg} + \gamma_v f_{gv}), \quad
    \partial v = \delta\,\gamma_g f_{gv}

(:math:`f_{vv} = 0`). The derivatives of :math:`A` are written out rather than taken by
autograd inside the op, so that the op composes with every transform (vmap, jvp,
torch.compile) as plain PyTorch does; tests/test_autograd.py holds them to autograd of the
reference, and gradgradcheck holds the whole to finite differences. Written from
sigmoid(-x) rather than 1 - sigmoid(x), like the reference, so that tails keep their
relative accuracy.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._table import PACKED_FUNCTIONS

Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _sigmoid(g: torch.Tensor) -> Terms:
    s, s_bar = reference.sigmoid(g), reference.sigmoid(-g)
    d1 = s * s_bar
    return s, d1, d1 * (s_bar - s)


def _silu(g: torch.Tensor) -> Terms:
    s, s_bar = reference.sigmoid(g), reference.sigmoid(-g)
    return g * s, s * (1 + g * s_bar), s * s_bar * (2 + g * (s_bar - s))


def _gelu(g: torch.Tensor) -> Terms:
    cdf = 0.5 * torch.special.erfc(-g / math.sqrt(2))
    pdf = torch.exp(-0.5 * g * g) / math.sqrt(2 * math.pi)
    return g * cdf, cdf + g * pdf, pdf * (2 - g * g)


def _gelu_tanh(g: torch.Tensor) -> Terms:
    # g * S(t), t = 2u, u = c (g + k g^3) (the cube of g clamped, as in reference.gelu_tanh).
    c, k = math.sqrt(2 / math.pi), 0.044715
    gc = g.clamp(-1e4, 1e4)
    t = 2 * c * (g + k * gc * gc * gc)
    s, s_bar = reference.sigmoid(t), reference.sigmoid(-t)
    p = s * s_bar
    du, ddu = c * (1 + 3 * k * gc * gc), 6 * c * k * gc
    d2 = 4 * du * p + 2 * g * ddu * p + 4 * g * du * du * p * (s_bar - s)
    return g * s, s + 2 * g * du * p, d2


def _relu(g: torch.Tensor) -> Terms:
    return reference.relu(g), (g > 0).to(g.dtype), torch.zeros_like(g)


def _clamped_silu(g: torch.Tensor, alpha: float, limit: float) -> Terms:
    inside = g < limit
    gc = reference.clamp(g, None, limit)
    s, s_bar = reference.sigmoid(alpha * gc), reference.sigmoid(-alpha * gc)
    d1 = s * (1 + alpha * gc * s_bar)
    d2 = alpha * s * s_bar * (2 + alpha * gc * (s_bar - s))
    return gc * s, torch.where(inside, d1, 0), torch.where(inside, d2, 0)


_GATE_TERMS = {
    "sigmoid": _sigmoid,
    "silu": _silu,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "relu": _relu,
}


def gate_terms(g: torch.Tensor, activation: str, alpha: float, limit: float) -> Terms:
    """(A, A', A'') of an activation (a name of glu_fused._table.ACTIVATIONS) at g."""
    if activation == "clamped_silu":
        return _clamped_silu(g, alpha, limit)
    return _GATE_TERMS[activation](g)


def _value_terms(v: torch.Tensor, clamped: bool, limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B') at v."""
    if not clamped:
        return v, torch.ones_like(v)
    inside = (v > -limit) & (v < limit)
    return reference.clamp(v, -limit, limit) + 1, inside.to(v.dtype)


def _pair_double_backward(gg_g, gg_v, dy, g, v, activation, alpha, limit):
    """(d dy, d g, d v) in the compute dtype; see the module's docstring."""
    a, a1, a2 = gate_terms(g, activation, alpha, limit)
    b, b1 = _value_terms(v, activation == "clamped_silu", limit)
    f_g, f_v, f_gg, f_gv = a1 * b, a * b1, a2 * b, a1 * b1
    return gg_g * f_g + gg_v * f_v, dy * (gg_g * f_gg + gg_v * f_gv), dy * (gg_g * f_gv)


def _rows(t, bias, mask):
    """t in the compute type, its bias added; rows past the counts as zeros. Those rows'
    gradients are zeros whatever the inputs, so every derivative there is zero too."""
    return reference.with_rows(reference.opmath(t), bias, mask)


def gated_double_backward(
    grad_grad_gate,
    grad_grad_value,
    grad_out,
    gate,
    value,
    activation,
    gate_bias=None,
    value_bias=None,
    valid_tokens=None,
):
    """The gated_double_backward op: (d grad_out, d gate, d value) of
    <(grad_grad_gate, grad_grad_value), gated_backward(grad_out, gate, value)>, the inputs
    biased and the rows past the counts left out as the backward has them."""
    mask = reference.row_mask(gate, valid_tokens)
    out = _pair_double_backward(
        _rows(grad_grad_gate, None, mask),
        _rows(grad_grad_value, None, mask),
        _rows(grad_out, None, mask),
        _rows(gate, gate_bias, mask),
        _rows(value, value_bias, mask),
        activation,
        0,
        0,
    )
    return tuple(t.to(gate.dtype) for t in out)


def packed_double_backward(
    grad_grad_x,
    grad_out,
    x,
    dim,
    function,
    layout,
    alpha,
    limit,
    bias=None,
    valid_tokens=None,
):
    """The glu_double_backward op: (d grad_out, d x) of <grad_grad_x, glu_backward(grad_out,
    x)>, for a packed function's arguments as the ops take them (the bias added to x, the
    rows past the counts left out, as the backward has them)."""
    f = PACKED_FUNCTIONS[function]
    dim = dim % x.dim()
    interleaved = layout == "interleaved"
    mask = reference.row_mask(x, valid_tokens)
    x1, x2 = reference.split(_rows(x, bias, mask), dim, interleaved)
    gg1, gg2 = reference.split(_rows(grad_grad_x, None, mask), dim, interleaved)
    if f.gate_is_second:
        (g, v), (gg_g, gg_v) = (x2, x1), (gg2, gg1)
    else:
        (g, v), (gg_g, gg_v) = (x1, x2), (gg1, gg2)
    d_dy, d_g, d_v = _pair_double_backward(
        gg_g, gg_v, _rows(grad_out, None, mask), g, v, f.activation.name, alpha, limit
    )
    halves = (d_v, d_g) if f.gate_is_second else (d_g, d_v)
    d_x = reference.join(*halves, dim, interleaved)
    return d_dy.to(x.dtype), d_x.to(x.dtype)


def gated_backward_in_place(
    grad_out: torch.Tensor,
    gate: torch.Tensor,
    value: torch.Tensor,
    activation: str,
    bias_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The gated_backward_in_place op's reference: gated(gate, value) over grad_out, and the
    gradients of gate and value for the upstream gradient grad_out over them. Plain tensor
    arithmetic, no autograd: it runs inside backward passes, below autograd. With bias_grad
    (gated_backward_in_place_bias), also the gradients of the biases gate and value hold:
    the gradients in the compute type, before their rounding, summed over every dim but the
    last, in the inputs' dtype."""
    if bias_grad and gate.dim() == 0:
        raise ValueError("glu_fused: a bias gradient needs gate and value of at least one dim")
    m = reference.opmath
    a, a1, _ = gate_terms(m(gate), activation, 0, 0)
    v, dy = m(value), m(grad_out)
    out, d_gate, d_value = a * v, dy * v * a1, dy * a
    grad_out.copy_(out)
    gate.copy_(d_gate)
    value.copy_(d_value)
    if not bias_grad:
        return None
    rows = tuple(range(gate.dim() - 1))
    return d_gate.sum(rows).to(gate.dtype), d_value.sum(rows).to(gate.dtype)
