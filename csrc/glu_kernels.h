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
struct BackwardCall {
  ActivationCall op;
  PairLayout in;
  const void* gate;
  const void* value;
  const void* grad_out;
  PairLayout grad_in;  // same runs as `in`, in the gradients' own strides
  void* grad_gate;
  void* grad_value;
};

void gated_forward_cpu(const ForwardCall& call);
void gated_backward_cpu(const BackwardCall& call);

// CUDA kernels join here (csrc/cuda/): built only when setup.py finds nvcc and a CUDA torch.
#ifdef GLU_FUSED_WITH_CUDA
void gated_forward_cuda(const ForwardCall& call, void* stream);
void gated_backward_cuda(const BackwardCall& call, void* stream);
#endif

}  // namespace glu_fused
