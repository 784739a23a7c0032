// The entry points of the device kernels, in plain types: the torch binding (glu_ops.cpp)
// fills these calls, and each device's kernels (csrc/cpu/, csrc/cuda/) carry them out.
#pragma once

#include "glu_layout.h"
#include "glu_math.h"

namespace glu_fused {

enum class ScalarKind : int { Half = 0, BFloat16 = 1, Float = 2, Double = 3 };

struct ActivationCall {
  ScalarKind dtype;
  Activation activation;
  double alpha;  // ClampedSilu only
  double limit;  // ClampedSilu only
};

// The bias and token-count modes (docs/contract.md, "Bias and token counts"). The plan sets
// them only where every run is one row of the result (the split along the last dim:
// runs_per_outer counts rows of a run split into rows, never a split dim's halves), so that
// an element's column is its e and its row is its run r.
struct RowOptions {
  // Added to gate(r, e) and value(r, e) in the compute type (float32; float64 for float64),
  // unrounded, before the activation: gate_bias[e * elem_stride], value_bias[e * elem_stride],
  // of the inputs' dtype (PairLayout::elem_stride: 2 where x's bias interleaves too).
  // nullptr: no bias (then both are).
  const void* gate_bias = nullptr;
  const void* value_bias = nullptr;
  // MoE token counts: run r is row r % rows_per_group of group r / rows_per_group, and only
  // the rows below valid_rows[group] are read or written (the plan has checked every count
  // is in [0, rows_per_group] where it could without a synchronization: see the contract).
  // nullptr: every run.
  const int* valid_rows = nullptr;
  int64_t rows_per_group = 0;

  GLU_HD bool has_bias() const { return gate_bias != nullptr; }
  GLU_HD bool row_valid(int64_t r) const {
    return valid_rows == nullptr || r % rows_per_group < valid_rows[r / rows_per_group];
  }
};

// out[r * run_len + e] = act(gate(r, e) [+ gate_bias(e)]) * (value(r, e) [+ value_bias(e)]);
// rows that rows.row_valid() refuses are neither read nor written.
struct ForwardCall {
  ActivationCall op;
  PairLayout in;
  const void* gate;
  const void* value;
  void* out;
  RowOptions rows = {};
};

// Rows summed into one partial of the bias gradient (BackwardCall::bias_grad_partials).
inline constexpr int64_t kBiasTileRows = 64;

// The gradients of both inputs from the dense upstream gradient, recomputing the activation.
// The in-place form (GatedMLP's backward) also writes act(gate) * value over the upstream
// gradient (`out` == grad_out) and the gradients over the inputs: every element's reads come
// before its writes, and no two elements share a location, so no order of them can race.
struct BackwardCall {
  ActivationCall op;
  PairLayout in;
  const void* gate;
  const void* value;
  const void* grad_out;
  PairLayout grad_in;  // same runs as `in`, in the gradients' own strides
  void* grad_gate;
  void* grad_value;
  void* out = nullptr;  // where act(gate) * value goes too, dense like grad_out; or nowhere
  // The bias and token counts, as ForwardCall's. Rows refused by rows.row_valid() are not
  // read; their gradients are written as zeros.
  RowOptions rows = {};
  // The bias gradient's partial sums, when not nullptr (with a bias, or in the in-place form,
  // whose gate and value already hold their bias): of the compute type (float; double for
  // double inputs), dense [ceil(runs / kBiasTileRows), 2, run_len];
  // partials[t][0][e] is the sum, over the valid rows r of tile t (kBiasTileRows * t <= r <
  // kBiasTileRows * (t + 1)), of the gate gradient at (r, e) in the compute type before its
  // rounding to the input's dtype; partials[t][1][e] the value gradient's. Each a fixed
  // order of summation (no atomics), every element written (0 for a tile without valid
  // rows); the op sums the tiles in order.
  void* bias_grad_partials = nullptr;
};

enum class Fp8Kind : int { E4M3 = 0, E5M2 = 1, E4M3Fnuz = 2, E5M2Fnuz = 3 };

inline Fp8Encoding encoding_of(Fp8Kind kind) {
  switch (kind) {
    case Fp8Kind::E4M3:
      return {3, 7, false};
    case Fp8Kind::E5M2:
      return {2, 15, false};
    case Fp8Kind::E4M3Fnuz:
      return {3, 8, true};
    case Fp8Kind::E5M2Fnuz:
      break;
  }
  return {2, 16, true};
}

// The forward quantized to FP8 (docs/contract.md, "FP8 output"): y = act(gate) * value,
// rounded to the input's dtype unless `round_to_input` is false, then per block of `block`
// consecutive dense output elements (a block never crosses a run: run_len % block == 0)
// scales[b] = rule.scale(amax of the block) and q = fp8(rule.saturate(y * (1 / scales[b]))).
// block 0: one block, the whole tensor (its amax first, in a pass of its own), or the scale
// read from `static_scale` when that is set.
struct Fp8Call {
  ActivationCall op;
  PairLayout in;
  const void* gate;
  const void* value;
  Fp8Kind kind;
  Fp8Rule rule;
  int64_t block;
  bool round_to_input;
  const float* static_scale;
  void* q;        // dense like ForwardCall::out, one byte per element
  float* scales;  // dense, numel / block of them (1 for block 0)
  // The CUDA kernels' per-tensor amax between their two launches (block 0 without a static
  // scale): one zeroed word, the float's bits. The CPU kernel keeps its own.
  unsigned* tensor_amax = nullptr;
  // The bias and token counts, as ForwardCall's: the rows refused are not read, and neither
  // their q nor their scales are written (a tensor's amax is over the valid rows). The plan
  // sets block to a divisor of run_len (token: run_len), so no block spans rows.
  RowOptions rows = {};
};

// The CPU kernels (csrc/cpu/), of the SIMD level chosen at load (csrc/cpu/glu_cpu_levels.cpp).
void gated_forward_cpu(const ForwardCall& call);
void gated_forward_fp8_cpu(const Fp8Call& call);
void gated_backward_cpu(const BackwardCall& call);
// The level in use ("default", "avx2", "avx512") and the levels built, lowest first.
const char* cpu_level();
const char* cpu_levels_built();

// The CUDA kernels (csrc/cuda/), built when setup.py finds nvcc and a CUDA torch. `stream`
// is a cudaStream_t; the result is the cudaError_t of the launch (0: cudaSuccess).
// The *_emulated entry points run the same kernels' thread code serially on the host, over
// CPU memory: the CUDA kernels' interpreter, for tests on machines without a GPU.
#ifdef GLU_FUSED_WITH_CUDA
int gated_forward_cuda(const ForwardCall& call, void* stream);
int gated_backward_cuda(const BackwardCall& call, void* stream);
void gated_forward_cuda_emulated(const ForwardCall& call);
void gated_backward_cuda_emulated(const BackwardCall& call);
int gated_forward_fp8_cuda(const Fp8Call& call, void* stream);
void gated_forward_fp8_cuda_emulated(const Fp8Call& call);
#endif

}  // namespace glu_fused
