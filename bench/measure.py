"""One case measured: inputs made, every contender checked (and its peak memory taken), then
each direction timed with the contenders interleaved."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from cases import Case
from checks import mismatch, peak_memory_bytes, tolerance
from contenders import Contender
from timing import Clock, Step, TimingPlan, input_sets_needed, median, time_interleaved


@dataclass
class DirectionResult:
    """One direction of a case: per contender, ms per call (median) and its samples."""

    direction: str
    bytes_moved: int
    input_sets: int
    median_ms: dict[str, float] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    calls_per_sample: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # out of memory while timing


@dataclass
class CaseResult:
    function: str
    dtype: str
    tokens: int
    hidden: int
    input_bytes: int
    status: dict[str, str] = field(default_factory=dict)  # "ok" or why it was left out
    peak_memory_bytes: dict[str, int | None] = field(default_factory=dict)
    directions: list[DirectionResult] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def random_inputs(case: Case, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Standard normal, drawn in float32 and rounded to the case's dtype."""
    return torch.randn(case.input_shape, generator=generator, device=device).to(case.torch_dtype)


def random_grad(case: Case, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(case.output_shape, generator=generator, device=device).to(case.torch_dtype)


@contextlib.contextmanager
def _failure_reason(reasons: dict[str, str], name: str) -> Iterator[None]:
    """Records why a contender's block failed (out of memory, an exception) under `name`."""
    try:
        yield
    except torch.OutOfMemoryError:
        reasons[name] = "out of memory"
    except Exception as error:  # a peer that cannot run this case is left out, not fatal
        reasons[name] = f"error: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
    if name in reasons and torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_contender(
    case: Case, contender: Contender, x: torch.Tensor, grad_out: torch.Tensor
) -> tuple[str, int | None]:
    """("ok" or why not, peak bytes of forward plus backward)."""
    reasons: dict[str, str] = {}
    peak = None
    with _failure_reason(reasons, "check"), contender.context():
        x_grad = x.detach().requires_grad_()
        warm = contender.fn(x_grad)  # compiles the compiled peer outside the measured step
        torch.autograd.grad(warm, x_grad, grad_out)
        del warm
        results: list[torch.Tensor] = []

        def step() -> None:
            out = contender.fn(x_grad)
            results.extend((out.detach(), *torch.autograd.grad(out, x_grad, grad_out)))

        peak = peak_memory_bytes(step, x.device)
        why = mismatch(
            case, x, grad_out, *results, tolerance(case.torch_dtype, ours=contender.is_ours)
        )
        if why is not None:
            return f"wrong: {why}", peak
    return reasons.get("check", "ok"), peak


def _steps(
    direction: str,
    contender: Contender,
    xs: list[torch.Tensor],
    grads: list[torch.Tensor],
) -> Step:
    """The call to time on input set i."""
    fn = contender.fn
    if direction == "forward":
        return lambda i: fn(xs[i])
    leaves = [x.detach().requires_grad_() for x in xs]
    if direction == "forward+backward":
        return lambda i: torch.autograd.grad(fn(leaves[i]), leaves[i], grads[i])
    with contender.context():
        outs = [fn(leaf) for leaf in leaves]
    return lambda i: torch.autograd.grad(outs[i], leaves[i], grads[i], retain_graph=True)


def measure_direction(
    case: Case,
    direction: str,
    contenders: list[Contender],
    xs: list[torch.Tensor],
    grads: list[torch.Tensor],
    clock: Clock,
    plan: TimingPlan,
) -> DirectionResult:
    result = DirectionResult(direction, case.bytes_moved(direction), len(xs))
    steps: dict[str, Step] = {}
    for contender in contenders:
        with _failure_reason(result.failed, contender.name):
            steps[contender.name] = _steps(direction, contender, xs, grads)
    contexts: dict[str, Callable[[], contextlib.AbstractContextManager[object]]] = {
        c.name: c.context for c in contenders
    }
    with _failure_reason(result.failed, "timing"):
        result.samples_ms, result.calls_per_sample = time_interleaved(
            steps, contexts, len(xs), clock, plan
        )
        result.median_ms = {name: median(s) for name, s in result.samples_ms.items()}
    return result


def measure_case(
    case: Case,
    contenders: list[Contender],
    device: torch.device,
    directions: tuple[str, ...],
    cache: int,
    plan: TimingPlan,
    generator: torch.Generator,
) -> CaseResult:
    """Checks every contender on fresh random inputs, then times the ones that passed."""
    result = CaseResult(case.function.name, case.dtype, case.tokens, case.hidden, case.input_bytes)
    x, grad_out = random_inputs(case, device, generator), random_grad(case, device, generator)
    passed = []
    for contender in contenders:
        status, peak = check_contender(case, contender, x, grad_out)
        result.status[contender.name] = status
        result.peak_memory_bytes[contender.name] = peak
        if status == "ok":
            passed.append(contender)
    clock = Clock(device)
    for direction in directions:
        n_sets = input_sets_needed(case.bytes_moved(direction), cache)
        xs = [x] + [random_inputs(case, device, generator) for _ in range(n_sets - 1)]
        grads = [grad_out] + [random_grad(case, device, generator) for _ in range(n_sets - 1)]
        result.directions.append(measure_direction(case, direction, passed, xs, grads, clock, plan))
        del xs, grads
    return result
