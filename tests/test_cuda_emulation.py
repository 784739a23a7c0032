"""The CUDA kernels' emulation on the host ($GLU_FUSED_EMULATE_CUDA), beyond what the shared
suites run through it: the errors a launch returns, which accesses the kernels make, and the
row options (a bias, token counts, the bias gradient's partial sums) on every path."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from glu_fused import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import build_config  # noqa: E402

pytestmark = pytest.mark.skipif(
    not _C.WITH_CUDA, reason="the extension was built without the CUDA kernels: nothing to emulate"
)


def run_linked_probe(source: str, tmp_dir) -> str:
    """Compiles `source`, C++ that calls the kernels' entry points (csrc/glu_kernels.h) from
    `extern "C" void probe(char* out, int size)`, into a library resolved against the
    extension this process loaded, runs it there and returns what it wrote: the built
    kernels' own code, in a second rather than a compile of the kernels."""
    path = os.path.join(tmp_dir, "probe.cpp")
    lib = os.path.join(tmp_dir, "probe.so")
    with open(path, "w") as f:
        f.write(source)
    build = subprocess.run(
        ["g++", "-std=c++17", "-shared", "-fPIC", "-O1", "-DGLU_FUSED_WITH_CUDA",
         f"-I{build_config.CSRC}", path, "-o", lib],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert build.returncode == 0, f"g++ failed on the probe:\n{build.stderr[-4000:]}"
    # The extension's symbols, made global so that the probe's references resolve to them.
    ctypes.CDLL(_C.__file__, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
    out = ctypes.create_string_buffer(4096)
    ctypes.CDLL(lib).probe(out, len(out))
    return out.value.decode()


# A launch the GPU would refuse: 2^45 runs need more than 2^31 - 1 blocks. The emulated entry
# points, which return nothing, must throw what the launch returns; nothing is read, as the
# plan fails before any thread runs.
ERROR_PROBE = r"""
#include <cstdio>
#include <stdexcept>
#include <string>

#include "glu_kernels.h"

using namespace glu_fused;

template <typename Call, typename Run>
std::string attempt(const char* what, const Call& call, Run run) {
  try {
    run(call);
    return std::string(what) + ": returned\n";
  } catch (const std::runtime_error& e) {
    return std::string(what) + ": threw " + e.what() + "\n";
  }
}

extern "C" void probe(char* out, int size) {
  PairLayout huge;
  huge.runs = int64_t{1} << 45;
  huge.run_len = 1;
  huge.outer_stride = 2;
  const ActivationCall op{ScalarKind::Float, Activation::Silu, 0.0, 0.0};
  ForwardCall forward{op, huge, nullptr, nullptr, nullptr};
  BackwardCall backward{op, huge, nullptr, nullptr, nullptr, huge, nullptr, nullptr};
  std::string text = attempt("forward", forward, gated_forward_cuda_emulated);
  text += attempt("backward", backward, gated_backward_cuda_emulated);
  // A launch that fits returns: an empty set of runs has nothing to read either.
  forward.in.runs = 0;
  text += attempt("empty forward", forward, gated_forward_cuda_emulated);
  std::snprintf(out, size, "%s", text.c_str());
}
"""


def test_emulated_launch_errors_throw(tmp_path):
    out = run_linked_probe(ERROR_PROBE, str(tmp_path))
    for direction in ("forward", "backward"):
        m = re.search(rf"^{direction}: threw (.*)$", out, re.M)
        assert m, f"the emulated {direction} launch did not throw:\n{out}"
        assert "invalid configuration" in m[1], m[1]
    assert "empty forward: returned" in out, out


# RowOptions by hand (csrc/glu_kernels.h): reglu, whose float32 and float64 arithmetic the
# probe repeats exactly, over 150 rows in groups of 50 with token counts 50, 50 and 20, so
# that the bias gradient's tiles of kBiasTileRows (64) rows are full (rows 0-63), partly valid
# (64-119 of 64-127) and empty (128-149, a tile cut short). Rows have a stride of 2 * 37 + 3
# elements: their phases differ, on the phased and the scalar paths alike. Outputs start
# NaN: the refused rows' forward outputs must stay so, their gradients be zeros, and every
# partial is the valid rows' sum in increasing row order (in the compute type), bit for bit.
# FP8 too (token, group and tensor scales), whose outputs the plan does not poison.
ROWS_PROBE = r"""
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "glu_kernels.h"

using namespace glu_fused;

constexpr int64_t kRuns = 150, kLen = 37, kStride = 2 * kLen + 3, kPerGroup = 50;
const int kCounts[3] = {50, 50, 20};

template <typename T>
T value_at(int64_t i, int salt) {  // exact small multiples of 1/16, both signs
  return static_cast<T>(((i * 37 + salt * 11) % 97) - 48) / T(16);
}

template <typename T>
bool same(T a, T b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// One configuration: bias on or off, counts on or off, halves or interleaved (the latter
// with runs_per_outer 2, a run split into rows).
template <typename T>
std::string check(const char* name, ScalarKind kind, bool with_bias, bool with_counts,
                  bool interleaved) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> x(kRuns * kStride + 1), bias(2 * kLen), dy(kRuns * kLen);
  for (size_t i = 0; i < x.size(); ++i) x[i] = value_at<T>(int64_t(i), 1);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = value_at<T>(int64_t(i), 2);
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = value_at<T>(int64_t(i), 3);
  std::vector<T> out(kRuns * kLen, nan), dx(kRuns * 2 * kLen, nan);
  const int64_t tiles = (kRuns + kBiasTileRows - 1) / kBiasTileRows;
  std::vector<T> partials(tiles * 2 * kLen, nan);  // of the compute type
  const int64_t es = interleaved ? 2 : 1;
  const int64_t vo = interleaved ? 1 : kLen;  // the value's offset from the gate
  PairLayout in;
  in.runs = kRuns;
  in.run_len = kLen;
  in.elem_stride = es;
  in.outer_stride = kStride;
  if (interleaved) {
    in.runs_per_outer = 2;
    in.outer_stride = 2 * kStride;
    in.run_stride = kStride;
  }
  PairLayout grad_in = in;
  grad_in.outer_stride = interleaved ? 4 * kLen : 2 * kLen;
  grad_in.run_stride = 2 * kLen;
  RowOptions rows;
  if (with_bias) {
    rows.gate_bias = bias.data();
    rows.value_bias = bias.data() + vo;
  }
  if (with_counts) {
    rows.valid_rows = kCounts;
    rows.rows_per_group = kPerGroup;
  }
  const ActivationCall op{kind, Activation::Relu, 0.0, 0.0};
  ForwardCall forward{op, in, x.data(), x.data() + vo, out.data()};
  forward.rows = rows;
  BackwardCall backward{op, in, x.data(), x.data() + vo, dy.data(), grad_in, dx.data(),
                        dx.data() + vo};
  backward.rows = rows;
  backward.bias_grad_partials = with_bias ? partials.data() : nullptr;
  gated_forward_cuda_emulated(forward);
  gated_backward_cuda_emulated(backward);
  std::vector<T> want(partials.size(), T(0));
  for (int64_t r = 0; r < kRuns; ++r) {
    const bool valid = !with_counts || r % kPerGroup < kCounts[r / kPerGroup];
    for (int64_t e = 0; e < kLen; ++e) {
      const int64_t at = r * kStride + e * es;
      const int64_t grad_at = r * 2 * kLen + e * es;
      T g = x[at], v = x[at + vo];
      if (with_bias) {
        g = g + bias[e * es];
        v = v + bias[e * es + vo];
      }
      const T d = dy[r * kLen + e];
      const T relu = g < T(0) ? T(0) : g;
      const T want_y = valid ? relu * v : nan;
      const T want_dg = valid ? (g > T(0) ? d * v : T(0)) : T(0);
      const T want_dv = valid ? d * relu : T(0);
      const std::string where = std::string(name) + (with_bias ? " bias" : "") +
                                (with_counts ? " counts" : "") +
                                (interleaved ? " interleaved" : " halves") + " row " +
                                std::to_string(r) + " col " + std::to_string(e);
      if (!same(out[r * kLen + e], want_y)) return where + ": forward differs\n";
      if (!same(dx[grad_at], want_dg)) return where + ": gate gradient differs\n";
      if (!same(dx[grad_at + vo], want_dv)) return where + ": value gradient differs\n";
      if (valid) {
        T* w = &want[(r / kBiasTileRows) * 2 * kLen + e];
        w[0] += want_dg;
        w[kLen] += want_dv;
      }
    }
  }
  if (with_bias) {
    for (size_t i = 0; i < want.size(); ++i) {
      if (!same(partials[i], want[i])) {
        return std::string(name) + " partial " + std::to_string(i) + " differs\n";
      }
    }
  }
  return std::string(name) + " ok\n";
}

// FP8 (float32 reglu, rows of 64 at every phase, a bias and the counts): token rows (block
// 64), groups of 32, and a dynamic per-tensor scale (block 0). q starts 0xab and the scales
// NaN: the refused rows' must stay so; the valid rows' are the rule, bit for bit, and the
// tensor's amax is the valid rows' alone.
std::string check_fp8(int64_t block) {
  constexpr int64_t kLen8 = 64, kStride8 = 2 * kLen8 + 3;
  std::vector<float> x(kRuns * kStride8), bias(2 * kLen8);
  for (size_t i = 0; i < x.size(); ++i) x[i] = value_at<float>(int64_t(i), 1);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = value_at<float>(int64_t(i), 2);
  const int64_t blocks = block == 0 ? 1 : kRuns * kLen8 / block;
  std::vector<unsigned char> q(kRuns * kLen8, 0xab);
  std::vector<float> scales(blocks, std::numeric_limits<float>::quiet_NaN());
  unsigned amax_bits = 0;
  PairLayout in;
  in.runs = kRuns;
  in.run_len = kLen8;
  in.outer_stride = kStride8;
  Fp8Call call{};
  call.op = {ScalarKind::Float, Activation::Relu, 0.0, 0.0};
  call.in = in;
  call.gate = x.data();
  call.value = x.data() + kLen8;
  call.kind = Fp8Kind::E4M3;
  call.rule = {448.0f, 8, 1e-6f, ScaleRule::Float};
  call.block = block;
  call.round_to_input = true;
  call.q = q.data();
  call.scales = scales.data();
  call.tensor_amax = &amax_bits;
  call.rows.gate_bias = bias.data();
  call.rows.value_bias = bias.data() + kLen8;
  call.rows.valid_rows = kCounts;
  call.rows.rows_per_group = kPerGroup;
  gated_forward_fp8_cuda_emulated(call);
  std::vector<float> y(kRuns * kLen8);
  std::vector<bool> valid(kRuns);
  float tensor_amax = 0.0f;
  for (int64_t r = 0; r < kRuns; ++r) {
    valid[r] = r % kPerGroup < kCounts[r / kPerGroup];
    for (int64_t e = 0; e < kLen8; ++e) {
      const float g = x[r * kStride8 + e] + bias[e];
      const float v = x[r * kStride8 + kLen8 + e] + bias[kLen8 + e];
      y[r * kLen8 + e] = (g < 0.0f ? 0.0f : g) * v;
      if (valid[r]) tensor_amax = Fp8Rule::nan_max(tensor_amax, y[r * kLen8 + e]);
    }
  }
  const Fp8Encoding encoding = encoding_of(Fp8Kind::E4M3);
  const std::string name = "fp8 block " + std::to_string(block);
  const int64_t span = block == 0 ? kRuns * kLen8 : block;
  for (int64_t b = 0; b < kRuns * kLen8 / span; ++b) {
    float amax = block == 0 ? tensor_amax : 0.0f;
    for (int64_t i = b * span; i < (b + 1) * span && block != 0; ++i) {
      amax = Fp8Rule::nan_max(amax, y[i]);
    }
    const float scale = call.rule.scale(amax);
    if (block != 0) {
      const bool written = valid[b * span / kLen8];
      if (written ? !same(scales[b], scale) : !std::isnan(scales[b])) {
        return name + " scale " + std::to_string(b) + " differs\n";
      }
    } else if (!same(scales[0], scale)) {
      return name + ": the tensor's scale differs\n";
    }
    const float rcp = 1.0f / scale;
    for (int64_t i = b * span; i < (b + 1) * span; ++i) {
      const unsigned char want =
          valid[i / kLen8] ? encoding.encode(call.rule.saturate(y[i] * rcp)) : 0xab;
      if (q[i] != want) return name + " q " + std::to_string(i) + " differs\n";
    }
  }
  return name + " ok\n";
}

extern "C" void probe(char* out, int size) {
  std::string text;
  for (int config = 0; config < 6; ++config) {
    const bool bias = config % 3 != 2, counts = config % 3 != 1, interleaved = config >= 3;
    text += check<float>("float32", ScalarKind::Float, bias, counts, interleaved);
    text += check<double>("float64", ScalarKind::Double, bias, counts, interleaved);
  }
  for (int64_t block : {64, 32, 0}) text += check_fp8(block);
  std::snprintf(out, size, "%s", text.c_str());
}
"""


def test_row_options_by_hand_bitwise(tmp_path):
    out = run_linked_probe(ROWS_PROBE, str(tmp_path))
    assert out.count(" ok\n") == 12 + 3, out


# Row options through the ops (the plan fills RowOptions from bias= and valid_tokens=): x
# [3, 70, 2H] with counts 0, 34 and 70 (210 rows: the bias gradient's tiles of 64 rows, the
# last one short), every function, dtype and layout, with a bias and without; gated() with
# both biases; FP8 in token, group and tensor modes. Outputs start NaN (poisoned): the rows
# past the counts must stay so, their gradients be zeros; the rest must match the float64
# reference (the bias gradient, summed in float32 or float64, to the bound of such a sum), FP8
# bit for bit the rule applied to the plain result's valid rows.
ROWS_SCRIPT = r"""
import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
from conftest import FUNCTION_IDS, FUNCTIONS, fused, random_input, ref  # noqa: E402

import glu_fused  # noqa: E402
from glu_fused import _fp8, reference  # noqa: E402
from glu_fused.testing import TOLERANCES, assert_matches  # noqa: E402

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
EXPERTS, TOKENS = 3, 70
COUNTS = torch.tensor([0, 34, TOKENS], dtype=torch.int32)
MASK = reference.row_mask(torch.empty(EXPERTS, TOKENS, 1), COUNTS)  # [E, T, 1]


def mark(**what):
    sys.stderr.write("### " + json.dumps(what) + "\n")
    sys.stderr.flush()


def check_bias_grad(got, want, input_grad, dtype, what):
    # Summed in float32 (float64 for float64): the dtype's bound, plus float32's relative
    # error of the sum of the terms' magnitudes (a float32 sum's, whatever the cancellation).
    rtol, atol = TOLERANCES[dtype]
    magnitude = input_grad.abs().reshape(-1, got.shape[0]).sum(0)
    bound = atol + rtol * want.abs() + TOLERANCES[torch.float32][0] * magnitude
    assert bool(((got.double() - want).abs() <= bound).all()), what


def check_rows(out, grads, want, wants, dtype, counted, what):
    # out, want: [E, T, H]; grads: the inputs' (3-D), then as many biases' (1-D) or none.
    if counted:
        assert out[~MASK.expand_as(out)].isnan().all(), f"{what}: rows past the counts written"
        out = torch.where(MASK, out, 0)
    assert_matches(out, want, dtype, what)
    inputs = [i for i, g in enumerate(grads) if g.dim() == 3]
    for i in inputs:
        g = grads[i]
        if counted:
            assert (g[~MASK.expand_as(g)] == 0).all(), f"{what}: gradient rows not zero"
        assert_matches(g, wants[i], dtype, f"{what} grad {i}")
    for i in range(len(inputs), len(grads)):  # the i-th bias goes with the i-th input
        check_bias_grad(grads[i], wants[i], wants[i - len(inputs)], dtype, f"{what} bias {i}")


checked = 0
for dtype in DTYPES:
    for layout in ("halves", "interleaved"):
        for (fn, kwargs), fid in zip(FUNCTIONS, FUNCTION_IDS):
            # Both options for every function; each alone for two of them.
            options = ((True, True), (True, False), (False, True))
            if fn not in ("swiglu", "clamped_swiglu") or kwargs:
                options = options[:1]
            for biased, counted in options:
                hidden = 37 if biased else 40  # odd: rows at every phase
                x = random_input((EXPERTS, TOKENS, 2 * hidden), dtype).requires_grad_()
                b = random_input((2 * hidden,), dtype, scale=1.0).requires_grad_()
                rows = dict(bias=b if biased else None, valid_tokens=COUNTS if counted else None)
                meta = dict(case="packed", layout=layout, function=fid, dtype=str(dtype),
                            biased=biased, counted=counted)
                mark(direction="forward", **meta)
                out = fused(fn)(x, layout=layout, **rows, **kwargs)
                upstream = random_input(out.shape, dtype, scale=1.0)
                mark(direction="backward", **meta)
                grads = torch.autograd.grad(out, [x, b] if biased else [x], upstream)
                mark(direction="done")
                x64 = x.detach().double().requires_grad_()
                b64 = b.detach().double().requires_grad_()
                rows64 = dict(rows, bias=b64 if biased else None)
                want = ref(fn)(x64, layout=layout, **rows64, **kwargs)
                wants = torch.autograd.grad(want, [x64, b64] if biased else [x64],
                                            upstream.double())
                check_rows(out.detach(), grads, want, wants, dtype, counted,
                           f"{fid} {dtype} {layout} bias={biased} counts={counted}")
                checked += 1
    # gated, both biases, H a multiple of 8 (aligned rows).
    for activation in ("silu", "gelu"):
        g, v = (random_input((EXPERTS, TOKENS, 64), dtype).requires_grad_() for _ in "gv")
        gb, vb = (random_input((64,), dtype, scale=1.0).requires_grad_() for _ in "gv")
        meta = dict(case="gated", layout="gated", function=activation, dtype=str(dtype),
                    biased=True, counted=True)
        mark(direction="forward", **meta)
        out = glu_fused.gated(g, v, activation, gate_bias=gb, value_bias=vb,
                              valid_tokens=COUNTS)
        upstream = random_input(out.shape, dtype, scale=1.0)
        mark(direction="backward", **meta)
        grads = torch.autograd.grad(out, [g, v, gb, vb], upstream)
        mark(direction="done")
        inputs64 = [t.detach().double().requires_grad_() for t in (g, v, gb, vb)]
        want = reference.gated(*inputs64[:2], activation, *inputs64[2:], valid_tokens=COUNTS)
        wants = torch.autograd.grad(want, inputs64, upstream.double())
        check_rows(out.detach(), grads, want, wants, dtype, True, f"gated {activation} {dtype}")
        checked += 1

# FP8 with a bias and counts: the valid rows' (q, scales) bit for bit the rule applied to the
# plain (emulated) result's valid rows (the plan does not poison FP8 outputs: ROWS_PROBE
# checks that the other rows' are not written).
MODES = {"token": {}, "group128": {"granularity": "group"}, "tensor": {"granularity": "tensor"}}
E4M3 = torch.float8_e4m3fn
valid = MASK.reshape(-1)
for dtype in DTYPES:
    for layout in ("halves", "interleaved"):
        x = random_input((EXPERTS, TOKENS, 2 * 128), dtype)
        b = random_input((2 * 128,), dtype, scale=1.0)
        rows = dict(bias=b, valid_tokens=COUNTS)
        for mode, options in MODES.items():
            meta = dict(case="fp8", layout=layout, function=mode, dtype=str(dtype),
                        biased=True, counted=True)
            mark(direction="forward", **meta)
            y = glu_fused.swiglu(x, layout=layout, **rows).reshape(-1, 128)
            mark(direction="fp8", **meta)
            q, s = glu_fused.swiglu(x, layout=layout, out_dtype=E4M3, **rows, **options)
            mark(direction="done")
            q = q.reshape(-1, 128).view(torch.uint8)
            want_q, want_s = _fp8.quantize(y[valid], _fp8.resolve(E4M3, **options))
            what = f"fp8 {mode} {dtype} {layout}"
            assert torch.equal(q[valid], want_q.view(torch.uint8)), what
            if mode == "tensor":
                assert torch.equal(s.float().reshape(-1), want_s.float().reshape(-1)), what
            else:
                s = s.float().reshape(valid.numel(), -1)
                assert torch.equal(s[valid], want_s.float().reshape(int(valid.sum()), -1)), what
            checked += 1

print(json.dumps({"checked": checked}))
"""


@pytest.fixture(scope="module")
def rows_run():
    return run_traced(ROWS_SCRIPT)


def test_row_options_through_the_ops(rows_run):
    summary, launches = rows_run
    # 4 dtypes x (2 layouts x (7 functions + 2 x 2 more options) + 2 gated), 4 x 2 x 3 FP8.
    assert summary["checked"] == 4 * (2 * (7 + 2 * 2) + 2) + 4 * 2 * 3
    # The backward with row options takes the rows kernel, on the path of its layout.
    for launch in launches:
        meta = launch.meta
        if meta["direction"] != "backward":
            continue
        want = "rows-pairs-phased" if meta["layout"] == "interleaved" else "rows-halves-phased"
        if meta["dtype"] == "torch.float64":
            want = "rows-scalar"
        assert launch.path == want, (launch.path, meta)
        assert launch.path == "rows-scalar" or launch.counts["vector_loads"] > 0, meta


# Misaligned layouts on the phased paths: every case is run twice in a subprocess with
# $GLU_FUSED_EMULATE_CUDA, as it is, and with the same values at aligned places in padded
# tensors (which take the aligned 16-byte path). The results must agree bit for bit and match
# the reference; each emulated launch reports its accesses ($GLU_FUSED_EMULATE_CUDA_TRACE),
# after a marker line that says what it computes.
SCRIPT = r"""
import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
from conftest import FUNCTION_IDS, FUNCTIONS, fused, random_input, ref  # noqa: E402

import glu_fused  # noqa: E402
from glu_fused.testing import assert_matches  # noqa: E402

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ROWS = 5


def mark(**what):
    sys.stderr.write("### " + json.dumps(what) + "\n")
    sys.stderr.flush()


def run(fn, kwargs, x, grad, dim, layout, role, meta):
    x = x.detach().requires_grad_()
    mark(direction="forward", role=role, **meta)
    out = fused(fn)(x, dim, layout=layout, **kwargs)
    mark(direction="backward", role=role, **meta)
    (dx,) = torch.autograd.grad(out, x, grad)
    mark(direction="done")
    return out.detach(), dx


def last_dim_case(dtype, layout, hidden, make):
    # (x, grad, aligned x, aligned grad, [(x's part, aligned x's part)], the output's part).
    x = make(hidden)
    padded = -(-hidden // 8) * 8 + 8
    x_al = random_input((ROWS, 2 * padded), dtype)
    if layout == "halves":
        x_al[:, :hidden] = x[:, :hidden]
        x_al[:, padded : padded + hidden] = x[:, hidden:]
        parts = [(slice(0, hidden), slice(0, hidden)),
                 (slice(hidden, 2 * hidden), slice(padded, padded + hidden))]
    else:
        x_al[:, : 2 * hidden] = x
        parts = [(slice(0, 2 * hidden), slice(0, 2 * hidden))]
    return x, x_al, parts, -1, ROWS, hidden


def cases(dtype):
    wide = lambda extra: (lambda h: random_input((ROWS, 2 * h + extra), dtype))  # noqa: E731
    for layout in ("halves", "interleaved"):
        yield f"odd hidden size, {layout}", layout, last_dim_case(
            dtype, layout, 301, lambda h: random_input((ROWS, 2 * h), dtype))
        yield f"sliced at 3, {layout}", layout, last_dim_case(
            dtype, layout, 96, lambda h: wide(7)(h)[:, 3 : 3 + 2 * h])
        yield f"sliced at 1, {layout}", layout, last_dim_case(
            dtype, layout, 96, lambda h: wide(7)(h)[:, 1 : 1 + 2 * h])
        yield f"row stride 2h+5, {layout}", layout, last_dim_case(
            dtype, layout, 96, lambda h: wide(5)(h)[:, : 2 * h])
        # dim 0, runs along a contiguous inner block of odd length: runs_per_outer > 1.
        x = random_input((6, 37), dtype)
        x_al = random_input((6, 48), dtype)
        x_al[:, :37] = x
        yield f"dim 0, inner 37, {layout}", layout, (
            x, x_al, [(slice(0, 37), slice(0, 37))], 0, 3, 37)


checked = 0
for dtype in DTYPES:
    width = 128 // torch.finfo(dtype).bits
    for name, layout, (x, x_al, parts, dim, runs, run_len) in cases(dtype):
        for (fn, kwargs), fid in zip(FUNCTIONS, FUNCTION_IDS):
            meta = dict(case=name, function=fid, dtype=str(dtype), width=width, runs=runs,
                        run_len=run_len)
            out_shape = list(x.shape)
            out_shape[dim] //= 2
            grad = random_input(out_shape, dtype, scale=1.0)
            grad_al_shape = list(x_al.shape)
            grad_al_shape[dim] //= 2
            grad_al = random_input(grad_al_shape, dtype, scale=1.0)
            if dim == 0:
                grad_al[:, : x.shape[1]] = grad
                out_part = (slice(None), slice(0, x.shape[1]))
            else:
                grad_al[:, : grad.shape[1]] = grad
                out_part = (slice(None), slice(0, grad.shape[1]))
            out, dx = run(fn, kwargs, x, grad, dim, layout, "misaligned", meta)
            out_al, dx_al = run(fn, kwargs, x_al, grad_al, dim, layout, "aligned", meta)
            what = f"{fid} {dtype} {name}"
            assert torch.equal(out, out_al[out_part]), f"{what}: forward differs"
            for part, part_al in parts:
                assert torch.equal(dx[:, part], dx_al[:, part_al]), f"{what}: backward differs"
            x64 = x.detach().double().requires_grad_()
            want = ref(fn)(x64, dim, layout=layout, **kwargs)
            (want_dx,) = torch.autograd.grad(want, x64, grad.double())
            assert_matches(out, want, dtype, what)
            assert_matches(dx, want_dx, dtype, what)
            checked += 1

# gated(gate, value) on rows sliced one element in.
for dtype in DTYPES:
    width = 128 // torch.finfo(dtype).bits
    g = random_input((ROWS, 131), dtype)[:, 1:]
    v = random_input((ROWS, 131), dtype)[:, 1:]
    grad = random_input((ROWS, 130), dtype, scale=1.0)
    meta = dict(case="gated, sliced at 1", function="gated-silu", dtype=str(dtype),
                width=width, runs=ROWS, run_len=130)
    results = {}
    for role, (gg, vv) in (("misaligned", (g, v)),
                           ("aligned", (g.contiguous(), v.contiguous()))):
        gg = gg.detach().requires_grad_()
        vv = vv.detach().requires_grad_()
        mark(direction="forward", role=role, **meta)
        out = glu_fused.gated(gg, vv, "silu")
        mark(direction="backward", role=role, **meta)
        results[role] = (out.detach(), *torch.autograd.grad(out, (gg, vv), grad))
        mark(direction="done")
    for a, b in zip(results["misaligned"], results["aligned"]):
        assert torch.equal(a, b), f"gated {dtype}: the two paths differ"
    checked += 1

# Elements not aligned to their size (a buffer read from an odd byte offset): the scalar path,
# bit for bit as the aligned one.
for dtype in DTYPES:
    size = torch.finfo(dtype).bits // 8
    raw = bytearray(size * ROWS * 128 + 1)
    x = torch.frombuffer(raw, dtype=dtype, offset=1, count=ROWS * 128).view(ROWS, 128)
    x.copy_(random_input((ROWS, 128), dtype))
    grad = random_input((ROWS, 64), dtype, scale=1.0)
    meta = dict(case="elements misaligned by a byte", function="swiglu", dtype=str(dtype),
                width=128 // torch.finfo(dtype).bits, runs=ROWS, run_len=64)
    out, dx = run("swiglu", {}, x, grad, -1, "halves", "scalar", meta)
    out_al, dx_al = run("swiglu", {}, x.clone(), grad, -1, "halves", "aligned", meta)
    assert torch.equal(out, out_al) and torch.equal(dx, dx_al), f"{dtype}: the paths differ"
    checked += 1

print(json.dumps({"checked": checked}))
"""


@dataclass
class Launch:
    meta: dict
    path: str
    counts: dict[str, int]


def parse_trace(stderr: str) -> list[Launch]:
    """The emulated launches, each with the marker that preceded it."""
    launches = []
    meta = None
    for line in stderr.splitlines():
        if line.startswith("### "):
            meta = json.loads(line[4:])
        elif m := re.match(r"glu_fused emulated (\w+): path=(\S+) (.*)$", line):
            assert meta and meta["direction"] == m[1], f"a launch without its marker: {line}"
            counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[3])}
            launches.append(Launch(meta, m[2], counts))
    return launches


def run_traced(script: str) -> tuple[dict, list[Launch]]:
    """Runs `script` in a subprocess through the CUDA kernels' emulation, traced and with
    poisoned outputs: the JSON summary it prints last, and its launches."""
    env = {
        **os.environ,
        "GLU_FUSED_EMULATE_CUDA": "1",
        "GLU_FUSED_EMULATE_CUDA_TRACE": "1",
        "GLU_FUSED_POISON_OUTPUTS": "1",
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-c", script, os.path.join(ROOT, "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return json.loads(run.stdout.splitlines()[-1]), parse_trace(run.stderr)


@pytest.fixture(scope="module")
def misaligned_run():
    return run_traced(SCRIPT)


def test_misaligned_layouts_match_the_aligned_path_bitwise(misaligned_run):
    summary, launches = misaligned_run
    # 4 dtypes x 10 cases x 7 functions, and gated() and element-misaligned rows in 4 dtypes.
    assert summary["checked"] == 4 * 10 * 7 + 4 + 4
    # Each checked case: forward and backward, misaligned and aligned.
    assert len(launches) == 4 * summary["checked"]


def test_aligned_copies_take_the_aligned_path(misaligned_run):
    _, launches = misaligned_run
    for launch in launches:
        if launch.meta["role"] == "aligned":
            assert launch.path in ("halves", "pairs"), launch.meta


def test_elements_misaligned_to_their_size_take_the_scalar_path(misaligned_run):
    _, launches = misaligned_run
    scalar = [launch for launch in launches if launch.meta["role"] == "scalar"]
    assert len(scalar) == 2 * 4
    for launch in scalar:
        assert launch.path == "scalar", launch.meta
        assert launch.counts["vector_loads"] == launch.counts["vector_stores"] == 0


def test_misaligned_layouts_take_16_byte_accesses_for_their_bulk(misaligned_run):
    """Outside each run's head and ragged end (fewer than `width` outputs each), every item
    of every misaligned layout loads its inputs and stores its outputs 16 bytes at a time.

    Each output of a run's head or end reads its inputs one element at a time (2 forward, 3
    backward), so the scalar loads count those outputs; the others make up whole items of
    `width` outputs. Each item loads each input by one or two 16-byte loads (two where the
    input is out of phase with the items); forward stores each item's outputs by one 16-byte
    store; backward stores the gate gradients (or the interleaved pairs) of each item by
    16-byte stores, and the value gradients of separate halves by one 16-byte store or
    `width` scalar ones, as their phase allows."""
    _, launches = misaligned_run
    rows = []
    for launch in launches:
        meta = launch.meta
        if meta["role"] != "misaligned":
            continue
        assert launch.path.endswith("-phased"), (launch.path, meta)
        n = launch.counts
        width = meta["width"]
        outputs = meta["runs"] * meta["run_len"]
        inputs = 2 if meta["direction"] == "forward" else 3
        assert n["scalar_loads"] % inputs == 0, meta
        edge = n["scalar_loads"] // inputs
        assert edge <= meta["runs"] * 2 * (width - 1), (n, meta)
        assert (outputs - edge) % width == 0, (n, meta)
        items = (outputs - edge) // width
        assert inputs * items <= n["vector_loads"] <= 2 * inputs * items, (n, meta)
        if meta["direction"] == "forward":
            assert n["vector_stores"] == items, (n, meta)
            assert n["scalar_stores"] == edge, (n, meta)
        else:
            stored = n["vector_stores"] * width + n["scalar_stores"]
            assert stored == 2 * outputs, (n, meta)
            assert n["vector_stores"] >= items, (n, meta)
        if meta["function"] == "swiglu":
            rows.append((meta, launch.path, n, edge))
    # Without a GPU, the figures of a run of the suite are the report of this change.
    print("\nmisaligned layouts, swiglu: 16-byte and element accesses of each emulated launch")
    print(
        f"{'case':<28} {'dtype':<15} {'direction':<9} {'path':<14} {'outputs':>7} "
        f"{'ld16':>6} {'st16':>6} {'ld1':>6} {'st1':>6}"
    )
    for meta, path, n, _ in rows:
        print(
            f"{meta['case']:<28} {meta['dtype']:<15} {meta['direction']:<9} {path:<14} "
            f"{meta['runs'] * meta['run_len']:>7} {n['vector_loads']:>6} {n['vector_stores']:>6} "
            f"{n['scalar_loads']:>6} {n['scalar_stores']:>6}"
        )


# FP8 output (csrc/cuda/glu_fp8.cu) in a subprocess with $GLU_FUSED_EMULATE_CUDA: every case's
# (q, scale) bit for bit the rule applied to the emulated plain result, and each launch's path
# and accesses from the trace. Cases: the blocks of each granularity on aligned, sliced (the
# phased path), interleaved and byte-misaligned rows (the scalar path); rows longer than a
# thread keeps (computed again for q); runs with more lanes than outputs; gated rows merged
# into one run (split by the plan); a per-tensor amax over many blocks of threads.
FP8_SCRIPT = r"""
import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
from conftest import random_input  # noqa: E402

import glu_fused  # noqa: E402
from glu_fused import _fp8  # noqa: E402

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
KEEP_ITEMS = 2 * 256  # items of 16 bytes of inputs a block of threads keeps, per row
MODES = {
    "token": {},
    "group128": {"granularity": "group"},
    "group64-e8m0": {"granularity": "group", "group_size": 64,
                     "scale_dtype": torch.float8_e8m0fnu},
    "mx": {"granularity": "mx"},
    "tensor": {"granularity": "tensor"},
    "tensor-static": {"granularity": "tensor", "scale": torch.tensor([0.01])},
}


def mark(**what):
    sys.stderr.write("### " + json.dumps(what) + "\n")
    sys.stderr.flush()


def misaligned_by_a_byte(shape, dtype):
    size = torch.finfo(dtype).bits // 8
    n = shape[0] * shape[1]
    raw = bytearray(size * n + 1)
    x = torch.frombuffer(raw, dtype=dtype, offset=1, count=n).view(*shape)
    x.copy_(random_input(shape, dtype))
    return x


def wide(rows, last, dtype, offset):
    return random_input((rows, last + 8), dtype)[:, offset : offset + last]


def cases(dtype):
    width = 128 // torch.finfo(dtype).bits
    yield "aligned", "halves", random_input((6, 2 * 384), dtype)
    yield "sliced at 3", "halves", wide(5, 2 * 256, dtype, 3)
    yield "interleaved", "interleaved", random_input((5, 2 * 256), dtype)
    yield "interleaved, sliced at 1", "interleaved", wide(4, 2 * 128, dtype, 1)
    yield "misaligned by a byte", "halves", misaligned_by_a_byte((3, 2 * 128), dtype)
    # Token rows past what a block of threads keeps, with a ragged end; and a row of 3 blocks
    # of 128 (more lanes than items).
    yield "long rows", "halves", random_input((3, 2 * (KEEP_ITEMS * width + 384 + 37)), dtype)
    yield "many rows", "halves", random_input((700, 2 * 128), dtype)


checked = 0
for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    width = 128 // torch.finfo(dtype).bits
    for case, layout, x in cases(dtype):
        for mode, options in MODES.items():
            last = x.shape[-1] // 2
            if case == "long rows" and mode != "token":
                continue
            out_dtype = E5M2 if mode.startswith("group64") else E4M3
            meta = dict(case=case, mode=mode, dtype=str(dtype), width=width, rows=x.shape[0],
                        last=last, direction="fp8")
            mark(**{**meta, "direction": "forward"})
            y = glu_fused.swiglu(x, layout=layout)
            mark(**meta)
            q, s = glu_fused.swiglu(x, layout=layout, out_dtype=out_dtype, **options)
            mark(direction="done")
            want_q, want_s = _fp8.quantize(y, _fp8.resolve(out_dtype, **options),
                                           options.get("scale"))
            what = f"{case} {mode} {dtype}"
            assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), what
            assert torch.equal(s.float(), want_s.float()), what
            checked += 1

# gated rows of 37 and 300, contiguous (one run for the plan, split into rows for tokens).
for dtype in (torch.bfloat16, torch.float32):
    for n in (37, 300):
        g, v = random_input((5, n), dtype), random_input((5, n), dtype)
        meta = dict(case=f"gated rows of {n}", mode="token", dtype=str(dtype),
                    width=128 // torch.finfo(dtype).bits, rows=5, last=n, direction="fp8")
        mark(**{**meta, "direction": "forward"})
        y = glu_fused.gated(g, v, "gelu")
        mark(**meta)
        q, s = glu_fused.gated(g, v, "gelu", out_dtype=E4M3)
        mark(direction="done")
        want_q, want_s = _fp8.quantize(y, _fp8.resolve(E4M3))
        assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), meta
        assert torch.equal(s, want_s), meta
        checked += 1

print(json.dumps({"checked": checked}))
"""


@pytest.fixture(scope="module")
def fp8_run():
    summary, launches = run_traced(FP8_SCRIPT)
    return summary, [launch for launch in launches if launch.meta["direction"] == "fp8"]


def test_fp8_results_are_the_rule_on_every_path(fp8_run):
    summary, launches = fp8_run
    # 4 dtypes x (6 cases x 6 modes + long rows x token), and 2 x 2 gated.
    assert summary["checked"] == 4 * (6 * 6 + 1) + 4
    # A dynamic per-tensor scale takes two launches (its amax first), the rest one.
    tensor = [launch for launch in launches if launch.meta["mode"] == "tensor"]
    assert len(launches) == summary["checked"] + len(tensor) // 2


def test_fp8_launches_take_the_path_of_their_layout(fp8_run):
    _, launches = fp8_run
    for launch in launches:
        meta = launch.meta
        if meta["case"] == "misaligned by a byte" or meta["dtype"] == "torch.float64":
            want = "scalar"
        else:
            want = "pairs-phased" if meta["case"].startswith("interleaved") else "halves-phased"
        assert launch.path == want, (launch.path, meta)


def test_fp8_vector_launches_read_16_bytes_at_a_time_and_rows_past_the_kept_twice(fp8_run):
    """Every output of a vector launch reads its inputs in 16-byte loads, but for the ragged
    end of a row (fewer than `width` outputs): one pass of loads for the rows a block of
    threads keeps, and more for the longer ones, whose outputs past the kept ones are
    computed again once the row's amax is known. q goes out in words of `width` bytes where
    the row allows."""
    _, launches = fp8_run
    for launch in launches:
        meta, n = launch.meta, launch.counts
        if launch.path == "scalar":
            assert n["vector_loads"] == 0, meta
            continue
        width, rows, last = meta["width"], meta["rows"], meta["last"]
        ragged = last % width
        twice = 2 if meta["case"] == "long rows" else 1  # the ragged end is past the kept
        assert n["scalar_loads"] == 2 * rows * ragged * twice, (n, meta)
        items = rows * (last // width)
        if meta["case"] == "long rows":
            assert n["vector_loads"] > 2 * items, (n, meta)  # 16-byte loads: 2 inputs an item
        elif "phased" not in launch.path or meta["case"] in ("aligned", "many rows"):
            assert n["vector_loads"] == 2 * items, (n, meta)
        else:  # out of phase: an item's input may take two 16-byte blocks
            assert 2 * items <= n["vector_loads"] <= 4 * items, (n, meta)
        if ragged == 0 and meta["mode"] != "tensor":
            assert n["vector_stores"] == items and n["scalar_stores"] == 0, (n, meta)
