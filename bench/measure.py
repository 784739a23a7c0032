"""One case measured: inputs made, every contender checked in every mode it is timed in (and
its peak memory taken), then each direction timed with the contenders interleaved: per eager
call everywhere, and on a GPU also as kernel time (CUDA graphs)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from cases import DIRECTIONS, Case
from checks import Error, errors, peak_memory_bytes, tolerance
from contenders import Contender
from timing import (
    Clock,
    Step,
    TimingPlan,
    graph_calls,
    input_sets_needed,
    median,
    time_in_graphs,
    time_interleaved,
)

# What each direction's timing runs, hence which checks it needs to pass: the forward's
# outputs (without autograd, and with it) and the input gradient.
NEEDS = {
    "forward": ("forward",),
    "backward": ("gradient",),
    "forward+backward": ("forward", "gradient"),
}
# Check inputs are drawn with this spread so that gpt-oss's clamps (at +-7) are reached.
CHECK_SCALE = 4.0


@dataclass
class DirectionResult:
    """One direction of a case: per contender, ms per eager call (median) and its samples;
    on a GPU, kernel ms per call (median of CUDA graph replays) and its samples."""

    direction: str
    bytes_moved: int
    input_sets: int
    median_ms: dict[str, float] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    calls_per_sample: dict[str, int] = field(default_factory=dict)
    kernel_ms: dict[str, float] = field(default_factory=dict)
    kernel_samples_ms: dict[str, list[float]] = field(default_factory=dict)
    calls_per_graph: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # out of memory, not captured...


@dataclass
class CaseResult:
    function: str
    dtype: str
    tokens: int
    hidden: int
    input_bytes: int
    # Per contender and direction: "ok", or why it is not timed there.
    status: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per contender: its error against float64, "forward" (outputs) and "gradient".
    errors: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)
    peak_memory_bytes: dict[str, int | None] = field(default_factory=dict)
    directions: list[DirectionResult] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def random_inputs(
    case: Case, device: torch.device, generator: torch.Generator, scale: float = 1.0
) -> torch.Tensor:
    """Normal with spread `scale`, drawn in float32 and rounded to the case's dtype."""
    x = torch.randn(case.input_shape, generator=generator, device=device)
    return (x * scale).to(case.torch_dtype)


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


@dataclass
class Check:
    """A contender's check: its errors, peak memory, and whether it ran at all."""

    errors: dict[str, Error] = field(default_factory=dict)
    peak: int | None = None
    failure: str | None = None

    def status(self, direction: str) -> str:
        """ "ok", or why `direction` is not timed."""
        if self.failure is not None:
            return self.failure
        for need in NEEDS[direction]:
            if self.errors[need].wrong is not None:
                return f"wrong: {self.errors[need].wrong}"
        return "ok"


def check_contender(
    case: Case, contender: Contender, x: torch.Tensor, grad_out: torch.Tensor
) -> Check:
    """Runs the contender as each direction's timing does (the forward without autograd, and
    the forward and backward with it) and measures the errors of what they return."""
    reasons: dict[str, str] = {}
    check = Check()
    with _failure_reason(reasons, "check"), contender.context():
        plain = contender.fn(x.detach())  # the inference mode the forward is timed in
        x_grad = x.detach().requires_grad_()
        warm = contender.fn(x_grad)  # compiles the compiled peer outside the measured step
        torch.autograd.grad(warm, x_grad, grad_out)
        del warm
        results: list[torch.Tensor] = []

        def step() -> None:
            out = contender.fn(x_grad)
            results.extend((out.detach(), *torch.autograd.grad(out, x_grad, grad_out)))

        check.peak = peak_memory_bytes(step, x.device)
        held_to = tolerance(case.torch_dtype, ours=contender.is_ours)
        check.errors = errors(case, x, grad_out, [plain, results[0]], results[1], held_to)
    check.failure = reasons.get("check")
    return check


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
    if clock.cuda and steps:
        result.calls_per_graph = graph_calls(result.bytes_moved)
        with _failure_reason(result.failed, "kernel timing"):
            result.kernel_samples_ms, not_captured = time_in_graphs(
                steps, contexts, len(xs), result.calls_per_graph, plan
            )
            result.failed.update(not_captured)
            result.kernel_ms = {n: median(s) for n, s in result.kernel_samples_ms.items()}
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
    """Checks every contender on fresh random inputs, then times each direction with the
    contenders whose results that direction uses passed."""
    result = CaseResult(case.function.name, case.dtype, case.tokens, case.hidden, case.input_bytes)
    x = random_inputs(case, device, generator, CHECK_SCALE)
    grad_out = random_grad(case, device, generator)
    for contender in contenders:
        check = check_contender(case, contender, x, grad_out)
        result.status[contender.name] = {d: check.status(d) for d in DIRECTIONS}
        result.errors[contender.name] = {k: e.to_json() for k, e in check.errors.items()}
        result.peak_memory_bytes[contender.name] = check.peak
    del x, grad_out
    clock = Clock(device)
    for direction in directions:
        timed = [c for c in contenders if result.status[c.name][direction] == "ok"]
        n_sets = input_sets_needed(case.bytes_moved(direction), cache)
        xs = [random_inputs(case, device, generator) for _ in range(n_sets)]
        grads = [random_grad(case, device, generator) for _ in range(n_sets)]
        result.directions.append(measure_direction(case, direction, timed, xs, grads, clock, plan))
        del xs, grads
    return result
