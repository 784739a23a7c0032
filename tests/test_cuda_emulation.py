"""The CUDA kernels' emulation on the host ($GLU_FUSED_EMULATE_CUDA), beyond what the shared
suites run through it: the errors a launch returns, and which accesses the kernels make."""

from __future__ import annotations

import re

from test_cuda_codegen import (
    pytestmark,  # noqa: F401  (skips this module where nvcc is absent)
    run_host_probe,
)

# A launch the GPU would refuse: 2^45 runs need more than 2^31 - 1 blocks. The emulated entry
# points, which return nothing, must throw what the launch returns; nothing is read, as the
# plan fails before any thread runs.
ERROR_PROBE = r"""
#include <cstdio>
#include <stdexcept>

#include "cuda/glu_backward.cu"
#include "cuda/glu_forward.cu"

using namespace glu_fused;

template <typename Call, typename Run>
void attempt(const char* what, const Call& call, Run run) {
  try {
    run(call);
    std::printf("%s: returned\n", what);
  } catch (const std::runtime_error& e) {
    std::printf("%s: threw %s\n", what, e.what());
  }
}

int main() {
  PairLayout huge;
  huge.runs = int64_t{1} << 45;
  huge.run_len = 1;
  huge.outer_stride = 2;
  const ActivationCall op{ScalarKind::Float, Activation::Silu, 0.0, 0.0};
  ForwardCall forward{op, huge, nullptr, nullptr, nullptr};
  BackwardCall backward{op, huge, nullptr, nullptr, nullptr, huge, nullptr, nullptr};
  attempt("forward", forward, gated_forward_cuda_emulated);
  attempt("backward", backward, gated_backward_cuda_emulated);
  // A launch that fits returns: an empty set of runs has nothing to read either.
  forward.in.runs = 0;
  attempt("empty forward", forward, gated_forward_cuda_emulated);
}
"""


def test_emulated_launch_errors_throw(tmp_path):
    out = run_host_probe(ERROR_PROBE, str(tmp_path))
    for direction in ("forward", "backward"):
        m = re.search(rf"^{direction}: threw (.*)$", out, re.M)
        assert m, f"the emulated {direction} launch did not throw:\n{out}"
        assert "invalid configuration" in m[1], m[1]
    assert "empty forward: returned" in out, out
