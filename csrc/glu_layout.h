// Where the gate and the value of each output element live: the one description of memory
// layout that every kernel (CPU and CUDA) walks. Plain data, no torch types, so nvcc can
// compile it alone.
//
// The output is dense, [runs, run_len], and each run is a stretch of consecutive output
// elements whose inputs also advance by a fixed step:
//   gate(r, e)  = gate  + run_offset(r) + e * elem_stride
//   value(r, e) = value + run_offset(r) + e * elem_stride
// where `gate` and `value` point at the first gate and value element.
//   run_offset(r) = (r / runs_per_outer) * outer_stride + (r % runs_per_outer) * run_stride
//
// Three shapes of problem map onto it, all without copying the input:
//   * split along a contiguous last dim (rows with any row stride): one run per row,
//     elem_stride 1 for halves, 2 for interleaved pairs;
//   * split along any other dim whose inner block is contiguous: one run per (outer, k),
//     the run walking the contiguous inner block with elem_stride 1;
//   * gated(gate, value): rows of two separate tensors that share strides.
// Offsets are 64-bit everywhere: tensors may hold more than 2^31 elements.
#pragma once

#include <cstdint>

namespace glu_fused {

struct PairLayout {
  int64_t runs = 0;
  int64_t run_len = 0;
  int64_t runs_per_outer = 1;
  int64_t outer_stride = 0;
  int64_t run_stride = 0;
  int64_t elem_stride = 1;  // 1, or 2 when gate and value alternate element by element

#if defined(__CUDACC__) || defined(__HIPCC__)
  __host__ __device__
#endif
      int64_t run_offset(int64_t r) const {
    // A split along the last dim, the common case, needs no 64-bit division.
    if (runs_per_outer == 1) return r * outer_stride;
    return (r / runs_per_outer) * outer_stride + (r % runs_per_outer) * run_stride;
  }

  int64_t numel() const { return runs * run_len; }
};

}  // namespace glu_fused
