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

// out[r * run_len + e] = act(gate(r, e)) * value(r, e)
struct ForwardCall {
  ActivationCall op;
  PairLayout in;
  const void* gate;
  const void* value;
  void* out;
};

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
};

void gated_forward_cpu(const ForwardCall& call);
void gated_backward_cpu(const BackwardCall& call);

// The CUDA kernels (csrc/cuda/), built when setup.py finds nvcc and a CUDA torch. `stream`
// is a cudaStream_t; the result is the cudaError_t of the launch (0: cudaSuccess).
// The *_emulated entry points run the same kernels' thread code serially on the host, over
// CPU memory: the CUDA kernels' interpreter, for tests on machines without a GPU.
#ifdef GLU_FUSED_WITH_CUDA
int gated_forward_cuda(const ForwardCall& call, void* stream);
int gated_backward_cuda(const BackwardCall& call, void* stream);
void gated_forward_cuda_emulated(const ForwardCall& call);
void gated_backward_cuda_emulated(const BackwardCall& call);
#endif

}  // namespace glu_fused
