"""Modules over the fused functions: drop-ins for ``torch.nn.GLU`` and friends, and the
LLaMA-style ``GatedMLP``."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks, _fp8, _gated_mlp, _table, functional, reference


class GLU(nn.Module):
    """A drop-in for ``torch.nn.GLU``: ``x1 * sigmoid(x2)`` along ``dim``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.glu(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SwiGLU(GLU):
    """``silu(x1) * x2`` along ``dim``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.swiglu(x, self.dim)


class ReGLU(GLU):
    """``relu(x1) * x2`` along ``dim``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.reglu(x, self.dim)


class GeGLU(GLU):
    """``gelu(x1, approximate) * x2`` along ``dim``."""

    def __init__(self, dim: int = -1, approximate: str = "none") -> None:
        _checks.geglu_function(approximate)
        super().__init__(dim)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.geglu(x, self.dim, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, approximate={self.approximate!r}"


def _gated_sigmoid(x: torch.Tensor, layout: str, bias: torch.Tensor | None = None) -> torch.Tensor:
    interleaved = _checks.is_interleaved(layout)
    gate, value = reference.split(x, x.dim() - 1, interleaved)
    gate_bias, value_bias = (None, None) if bias is None else reference.split(bias, 0, interleaved)
    return functional.gated(gate, value, "sigmoid", gate_bias=gate_bias, value_bias=value_bias)


def _fused_activation(activation: str, layout: str = "halves") -> Callable[..., torch.Tensor]:
    """The fused ``act(x1) * x2`` of a packed [gate, up] projection output (last dim) for one
    of ``gated``'s activations. Partials of module-level functions, so modules pickle."""
    _checks.check_activation(activation)
    _checks.is_interleaved(layout)
    f = _table.packed_of(activation)
    if f is None:  # sigmoid(gate) * up: no packed function has the gate first
        return functools.partial(_gated_sigmoid, layout=layout)
    return functools.partial(getattr(functional, f.public), **dict(f.options), layout=layout)


# Where infer_activation evaluates a candidate: both signs, the region where the activations
# differ most, and far out, where clipped variants (ReLU6, a GELU clipped at 10) part ways.
_PROBE_RANGE = 12.0
_PROBE_FAR = (-100.0, -30.0, 30.0, 100.0)
# A match leaves room for rounding and for constants written with 10 digits (transformers'
# FastGELU uses 0.7978845608 for sqrt(2/pi)), far below any two activations' difference.
_PROBE_RTOL, _PROBE_ATOL = 1e-9, 1e-12


def infer_activation(act_fn: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """The name, among ``glu_fused.gated``'s activations, of the function ``act_fn`` computes.

    Recognised by its values, so every implementation counts: ``torch.nn.SiLU()``, ``F.silu``,
    transformers' ``ACT2FN["silu"]`` or ``ACT2FN["gelu_pytorch_tanh"]`` (``"gelu_tanh"``).
    ``act_fn`` is evaluated in float64 on points spanning [-100, 100] and must agree with one
    activation's reference to 1e-9 relative; near misses (ReLU6, quick or clipped GELU) are
    told apart. Raises ``ValueError`` for any other function.

    Example:
        >>> glu_fused.nn.infer_activation(torch.nn.GELU(approximate="tanh"))
        'gelu_tanh'
    """
    # On the CPU whatever the ambient device: a model built under torch.device("meta")
    # (from_pretrained, accelerate's init_empty_weights, FSDP's meta init) has activations
    # that still compute, but meta tensors have no values to compare.
    cpu = {"dtype": torch.float64, "device": "cpu"}
    try:
        probe = torch.cat(
            [
                torch.linspace(-_PROBE_RANGE, _PROBE_RANGE, 241, **cpu),
                torch.tensor(_PROBE_FAR, **cpu),
            ]
        )
        with torch.no_grad():
            values = act_fn(probe).to(torch.float64)
    # Whatever act_fn cannot do (a parameter on another device, a fixed shape...), the
    # answer is the same: it is not a function glu_fused knows.
    except Exception as error:
        raise ValueError(
            f"glu_fused: cannot evaluate the activation {act_fn!r}: {error}"
        ) from error
    if values.device.type != "cpu":
        raise ValueError(f"glu_fused: the activation {act_fn!r} gave no values on the CPU")
    for name in _table.GATE_ACTIVATIONS:
        expected = reference.activate(probe, name)
        if values.shape == expected.shape and torch.allclose(
            values, expected, rtol=_PROBE_RTOL, atol=_PROBE_ATOL
        ):
            return name
    raise ValueError(
        f"glu_fused: the activation {act_fn!r} is none of {tuple(_table.GATE_ACTIVATIONS)}; "
        "pass activation= explicitly if it is one of them"
    )


def _pack(gate: torch.Tensor, up: torch.Tensor, layout: str) -> torch.Tensor:
    """Gate and up weights (h, in), or biases (h,), as the rows of gate_up in `layout`."""
    if _checks.is_interleaved(layout):
        return torch.stack((gate, up), dim=1).flatten(0, 1)
    return torch.cat((gate, up))


def _unpack(gate_up: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate rows, up rows) of a gate_up weight or bias in `layout`: views, no copies."""
    return reference.split(gate_up, 0, _checks.is_interleaved(layout))


# What backward may recompute instead of keeping: the gate/up projection.
RECOMPUTE = (None, "projection")

# The unfused module's names (LLaMA's gate_proj, up_proj, down_proj) and where they go here.
_UNFUSED_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class GatedMLP(nn.Module):
    r"""The LLaMA-style feed-forward
    :math:`y = W_d\,(\mathrm{act}(W_g x + b_g) \odot (W_u x + b_u)) + b_d`.

    ``gate_up`` is one ``nn.Linear`` holding :math:`W_g` and :math:`W_u`: its output goes
    straight into the fused activation, which reads each hidden unit's gate and value in
    place. ``down`` is :math:`W_d`.

    Args:
        in_features: the model width.
        hidden_features: the number of hidden units :math:`h` (LLaMA's intermediate size).
        out_features: the output width; ``in_features`` if None.
        activation: ``"silu"`` (SwiGLU, LLaMA), ``"gelu"``, ``"gelu_tanh"`` (Gemma's GeGLU),
            ``"relu"`` or ``"sigmoid"``.
        bias: biases on all three projections (LLaMA's ``mlp_bias``).
        layout: how ``gate_up``'s :math:`2h` output rows hold the two projections.
            ``"halves"`` (default): ``[gate_0 .. gate_{h-1} | up_0 .. up_{h-1}]``.
            ``"interleaved"``: ``[gate_0, up_0, gate_1, up_1, ...]`` (as gpt-oss packs them).
        recompute: what backward computes again instead of keeping it from forward: None
            (default) keeps x and the gate/up projection; ``"projection"`` keeps only x and
            recomputes the projection in backward (one more matmul; a checkpointed MLP's
            memory, without ``torch.utils.checkpoint`` or a second activation pass).
        fp8: None (default), or ``"tensor"`` or ``"token"``: the down projection's input
            quantized to float8_e4m3fn by the fused kernel (per tensor or per token), and its
            GEMM run in FP8 (``torch._scaled_mm``, the weight quantized per tensor or per row
            each call); backward is unchanged, in the input's dtype. FP8 training's forward.
        lean: True (default): forward, activation and backward as one autograd function that
            keeps x + 2h elements per token (x alone with ``recompute``; an eager MLP keeps
            x + 4h), whose backward writes h over the gradient of h and the projection's
            gradient over the projection (``glu_fused/_gated_mlp.py``). It runs when a gradient
            is wanted and the projections are plain ``nn.Linear`` without hooks (a
            tensor-parallel ``parallelize_module`` plan takes the modules' own path). False: the
            modules' calls, ``down(act(gate_up(x)))``, which keep x + 3h. Either way the
            results and gradients are the same, to rounding.

    Initialisation is ``nn.Linear``'s: weights and biases :math:`U(-1/\sqrt{n}, 1/\sqrt{n})`
    with :math:`n` the fan-in. The bound depends on the fan-in only, so the fused
    ``gate_up`` starts out distributed exactly as LLaMA's separate ``gate_proj`` and
    ``up_proj`` layers do when the MLP is built on its own (transformers' ``LlamaMLP`` uses
    plain ``nn.Linear``). Whole transformers models re-initialise every linear layer with
    :math:`\mathcal{N}(0, \text{initializer\_range}^2)` and zero biases:
    ``reset_parameters(std=0.02)`` does that.

    Loading: ``load_state_dict`` also accepts a LLaMA MLP's unfused keys,
    ``gate_proj.weight``, ``up_proj.weight``, ``down_proj.weight`` (and ``.bias``), and packs
    them in this module's layout; ``GatedMLP.from_mlp(mlp)`` builds one from such a module.

    Tensor parallelism (Megatron-style): the :math:`h` hidden units are split over :math:`n`
    ranks; each rank computes its units with a block of ``gate_up``'s rows ("column
    parallel") and the matching columns of ``down`` ("row parallel"), and the ranks' outputs
    are summed by an all-reduce. The activation pairs gate row :math:`i` with up row
    :math:`i`, so a rank must hold both rows of every unit it owns. Column sharding (torch's
    ``ColwiseParallel``, ``Shard(0)``) gives rank :math:`k` the contiguous row block
    :math:`[2hk/n, 2h(k+1)/n)`:

    - ``"interleaved"``: that block is :math:`h/n` whole (gate, up) pairs, so naive sharding
      is correct as is.
    - ``"halves"``: with :math:`n = 2`, rank 0's block is all gate rows and rank 1's all up
      rows, and each rank would multiply gates by gates. Halves need *per-shard halves*:
      rank :math:`k` holds ``[gate rows of its units | up rows of its units]``.

    ``shard(rank, n)`` returns rank :math:`k`'s part in either layout.

    Example:
        >>> mlp = glu_fused.nn.GatedMLP(512, 1376)      # down(silu(gate(x)) * up(x))
        >>> mlp(torch.randn(4, 512)).shape
        torch.Size([4, 512])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        activation: str = "silu",
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layout: str = "halves",
        recompute: str | None = None,
        lean: bool = True,
        fp8: str | None = None,
    ) -> None:
        super().__init__()
        self._options = {}
        self.activation = activation
        self.layout = layout
        self.recompute = recompute
        self.fp8 = fp8
        self.lean = lean
        factory = {"device": device, "dtype": dtype}
        self.gate_up = nn.Linear(in_features, 2 * hidden_features, bias=bias, **factory)
        self.down = nn.Linear(hidden_features, out_features or in_features, bias=bias, **factory)

    # activation, layout and recompute take effect however they are set (in __init__ or
    # after it): each change rebuilds the activation and the lean block from all three.
    def _option(name: str, check=None):  # noqa: N805 - a property factory, not a method
        def get(self):
            return self._options[name]

        def set_(self, value):
            if check is not None:
                check(value)
            self._options[name] = value
            if len(self._options) == 4:
                o = self._options
                self._act = _fused_activation(o["activation"], o["layout"])
                projection = o["recompute"] == "projection"
                self._block = _gated_mlp.Block(o["activation"], o["layout"], projection, o["fp8"])

        return property(get, set_)

    def _check_recompute(value):  # noqa: N805
        if value not in RECOMPUTE:
            raise ValueError(f"glu_fused: unknown recompute {value!r}; expected one of {RECOMPUTE}")

    def _check_fp8(value):  # noqa: N805
        if value is not None:
            _fp8.check_gemm_granularity(value)

    activation = _option("activation")
    layout = _option("layout")
    recompute = _option("recompute", _check_recompute)
    fp8 = _option("fp8", _check_fp8)
    del _option, _check_recompute, _check_fp8

    @property
    def hidden_features(self) -> int:
        return self.down.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _gated_mlp.check_input(x, self.gate_up.weight)
        if self.lean and _gated_mlp.applies((self.gate_up, self.down), x):
            return _gated_mlp.apply_linears(self._block, x, (self.gate_up,), self.down)
        gate_up, bias = self._gate_up(x)
        if self.fp8 is not None:  # the same FP8 forward, outside the lean block (no_grad)
            return self._block.down([gate_up], self.down.weight, self.down.bias, bias)
        return self.down(self._act(gate_up, bias=bias))

    def _gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(gate_up's output, the bias the activation is to add or None). A plain ``gate_up``
        with a bias leaves it to the fused kernel, added in float32 before the activation (and
        its gradient summed by the fused backward): one pass over the [.., 2h] projection
        fewer than the GEMM's bias, forward and backward. A module with hooks or wrapped
        weights (tensor parallelism, LoRA), or autocast, runs its own call."""
        if self.gate_up.bias is None or not _gated_mlp.plain((self.gate_up,), x):
            return self.gate_up(x), None
        return F.linear(x, self.gate_up.weight), self.gate_up.bias

    def projections(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(gate weight, up weight, gate bias, up bias), each (h, in) or (h,): views into
        ``gate_up`` whatever the layout. Biases are None without bias."""
        gate_w, up_w = _unpack(self.gate_up.weight, self.layout)
        if self.gate_up.bias is None:
            return gate_w, up_w, None, None
        gate_b, up_b = _unpack(self.gate_up.bias, self.layout)
        return gate_w, up_w, gate_b, up_b

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        """Re-initialise: ``nn.Linear``'s default if ``std`` is None, else transformers' LLaMA
        init, weights :math:`\\mathcal{N}(0, \\text{std}^2)` and zero biases."""
        for linear in (self.gate_up, self.down):
            if std is None:
                linear.reset_parameters()
                continue
            linear.weight.normal_(0.0, std)
            if linear.bias is not None:
                linear.bias.zero_()

    @classmethod
    def from_mlp(
        cls,
        mlp: nn.Module,
        activation: str | None = None,
        *,
        layout: str = "halves",
        recompute: str | None = None,
        lean: bool = True,
        fp8: str | None = None,
    ) -> GatedMLP:
        """A GatedMLP computing what ``mlp`` computes, from a module with ``nn.Linear``
        attributes ``gate_proj``, ``up_proj`` and ``down_proj`` (transformers' ``LlamaMLP``,
        ``MistralMLP``, ``Qwen2MLP``, ``GemmaMLP``...).

        The weights are copied (``mlp`` is left as it is), on their device and in their dtype.
        ``activation``: if None, inferred from ``mlp.act_fn`` where there is one
        (see ``infer_activation``), else ``"silu"``. ``layout``, ``recompute``, ``lean`` and
        ``fp8`` as the constructor takes them.
        """
        gate, up, down = _unfused_linears(mlp)
        if activation is None:
            act_fn = getattr(mlp, "act_fn", None)
            activation = "silu" if act_fn is None else infer_activation(act_fn)
        fused = cls(
            gate.in_features,
            gate.out_features,
            down.out_features,
            activation,
            bias=gate.bias is not None,
            device=gate.weight.device,
            dtype=gate.weight.dtype,
            layout=layout,
            recompute=recompute,
            lean=lean,
            fp8=fp8,
        )
        state = {
            f"{name}.{kind}": tensor
            for name, linear in zip(_UNFUSED_PROJECTIONS, (gate, up, down))
            for kind, tensor in linear.state_dict().items()
        }
        fused.load_state_dict(state)
        return fused

    def shard(self, rank: int, world_size: int) -> GatedMLP:
        """Rank ``rank``'s part of a tensor-parallel split over ``world_size`` ranks: a new
        GatedMLP of the same layout with hidden units
        ``[rank * h / world_size, (rank + 1) * h / world_size)``, whose outputs summed over
        the ranks are this module's output.

        In the ``"interleaved"`` layout its ``gate_up`` rows are a contiguous block of this
        module's, as ``ColwiseParallel`` would cut them; in ``"halves"`` they are that rank's
        gate rows followed by its up rows (per-shard halves). ``down``'s bias stays on rank 0
        (zeros elsewhere), so that the sum adds it once.
        """
        hidden = self.hidden_features
        if world_size < 1 or not 0 <= rank < world_size or hidden % world_size:
            raise ValueError(
                f"glu_fused: cannot take shard {rank} of {world_size} of {hidden} hidden units"
            )
        units = slice(rank * hidden // world_size, (rank + 1) * hidden // world_size)
        weight = self.gate_up.weight
        local = GatedMLP(
            self.gate_up.in_features,
            hidden // world_size,
            self.down.out_features,
            self.activation,
            bias=self.gate_up.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
            layout=self.layout,
            recompute=self.recompute,
            lean=self.lean,
            fp8=self.fp8,
        )
        gate_w, up_w, gate_b, up_b = self.projections()
        state = {
            "gate_proj.weight": gate_w[units],
            "up_proj.weight": up_w[units],
            "down.weight": self.down.weight[:, units],
        }
        if self.down.bias is not None:
            state["gate_proj.bias"], state["up_proj.bias"] = gate_b[units], up_b[units]
            keep = rank == 0
            state["down.bias"] = self.down.bias if keep else torch.zeros_like(self.down.bias)
        local.load_state_dict(state)
        return local

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        # Before nn.Module matches keys to parameters (and hands the children theirs): a
        # LLaMA MLP's unfused keys become this module's. load_state_dict works on its own
        # copy of the dict, so the caller's is left alone.
        _fuse_unfused_keys(state_dict, prefix, self.layout)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def extra_repr(self) -> str:
        text = f"activation={self.activation!r}, layout={self.layout!r}"
        if self.recompute is not None:
            text += f", recompute={self.recompute!r}"
        return text + ("" if self.lean else ", lean=False")


def _unfused_linears(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """mlp's gate_proj, up_proj and down_proj, checked to make one gated MLP."""
    linears = tuple(getattr(mlp, name, None) for name in _UNFUSED_PROJECTIONS)
    if not all(isinstance(linear, nn.Linear) for linear in linears):
        found = {name: type(linear).__name__ for name, linear in zip(_UNFUSED_PROJECTIONS, linears)}
        raise TypeError(
            "glu_fused: from_mlp needs nn.Linear attributes gate_proj, up_proj and down_proj; "
            f"{type(mlp).__name__} has {found}"
        )
    gate, up, down = linears
    if gate.weight.shape != up.weight.shape or down.in_features != gate.out_features:
        raise ValueError(
            "glu_fused: gate_proj and up_proj must both map in_features to hidden_features and "
            f"down_proj take hidden_features; got {gate}, {up}, {down}"
        )
    if len({linear.bias is None for linear in linears}) > 1:
        raise ValueError(
            "glu_fused: GatedMLP has biases on all three projections or on none; "
            f"{type(mlp).__name__} has them on some"
        )
    return gate, up, down


def _fuse_unfused_keys(state_dict: dict, prefix: str, layout: str) -> None:
    """In place: prefix + gate_proj.X and up_proj.X become gate_up.X packed in `layout`, and
    down_proj.X becomes down.X, for X weight and bias. A lone gate_proj or up_proj key is
    left for load_state_dict to report as unexpected."""
    for kind in ("weight", "bias"):
        gate_key, up_key = f"{prefix}gate_proj.{kind}", f"{prefix}up_proj.{kind}"
        if gate_key in state_dict and up_key in state_dict:
            gate, up = state_dict.pop(gate_key), state_dict.pop(up_key)
            state_dict[f"{prefix}gate_up.{kind}"] = _pack(gate, up, layout)
        down_key = f"{prefix}down_proj.{kind}"
        if down_key in state_dict:
            state_dict[f"{prefix}down.{kind}"] = state_dict.pop(down_key)


class FP8GatedMLP(nn.Module):
    r"""A GatedMLP for FP8 inference: x quantized to float8_e4m3fn, the gate and up projection
    as one FP8 GEMM, the fused activation and quantization, the down projection as an FP8 GEMM,
    the result in x's dtype. Build it with :meth:`from_float`.

    ``granularity``: the activations' scales, ``"token"`` (one per row) or ``"tensor"``;
    ``weight_granularity``: the weights', ``"tensor"`` or ``"row"`` (one per output). The
    GEMMs are ``torch._scaled_mm``, which scales per tensor or per row, on the CPU too.
    Not differentiable (its weights are FP8 buffers).
    """

    def __init__(
        self,
        mlp: GatedMLP,
        granularity: str = "token",
        weight_granularity: str = "tensor",
    ) -> None:
        super().__init__()
        _fp8.check_gemm_granularity(granularity)
        self.activation, self.layout = mlp.activation, mlp.layout
        self.granularity, self.weight_granularity = granularity, weight_granularity
        self.in_features = mlp.gate_up.in_features
        self._block = _gated_mlp.Block(mlp.activation, mlp.layout, fp8=granularity)
        for name, linear in (("gate_up", mlp.gate_up), ("down", mlp.down)):
            q, scale = _fp8.quantize_weight(linear.weight, weight_granularity)
            self.register_buffer(f"{name}_q", q)
            self.register_buffer(f"{name}_scale", scale)
            bias = None if linear.bias is None else linear.bias.detach().clone()
            self.register_buffer(f"{name}_bias", bias)

    @classmethod
    def from_float(
        cls, mlp: nn.Module, granularity: str = "token", weight_granularity: str = "tensor"
    ) -> FP8GatedMLP:
        """From a GatedMLP, or a LLaMA-style MLP (as GatedMLP.from_mlp takes it)."""
        if not isinstance(mlp, GatedMLP):
            mlp = GatedMLP.from_mlp(mlp)
        return cls(mlp, granularity, weight_granularity)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"glu_fused: FP8GatedMLP takes inputs of {self.in_features} features (the "
                f"last dim), got shape {tuple(x.shape)}"
            )
        args = _fp8.resolve(_gated_mlp.FP8_DTYPE, self.granularity, intermediate="float32")
        xq, xs = _fp8.quantize(x, args)
        gate_up = _fp8.scaled_linear(
            xq, xs, self.gate_up_q, self.gate_up_scale, self.gate_up_bias, x.dtype
        )
        return self._block.down_quantized([gate_up], self.down_q, self.down_scale, self.down_bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, activation={self.activation!r}, "
            f"granularity={self.granularity!r}, weight_granularity={self.weight_granularity!r}"
        )
