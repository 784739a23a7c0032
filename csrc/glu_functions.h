// The functions of glu_fused, by the names the ops take: the one C++ table that the
// argument checks, the autograd kernels and the Python module derive from. Python keeps
// the same facts in glu_fused/_table.py (with what only Python needs: public names,
// defaults, PyTorch equivalents); tests/test_table.py holds the two, and the Triton
// kernels' activation codes, equal.
//
// Plain data, no torch types: nvcc may compile it alone.
#pragma once

#include <cstddef>

#include "glu_math.h"

namespace glu_fused {

// A packed function: the gate's activation applied to one half of the input, times the
// other half. The gate is the first half (or the even positions), except for glu, whose
// result x1 * sigmoid(x2) takes the second as its gate.
struct PackedFunction {
  const char* name;
  Activation activation;
  bool gate_is_second;
};

inline constexpr PackedFunction kPackedFunctions[] = {
    {"glu", Activation::Sigmoid, true},
    {"swiglu", Activation::Silu, false},
    {"geglu", Activation::Gelu, false},
    {"geglu_tanh", Activation::GeluTanh, false},
    {"reglu", Activation::Relu, false},
    {"clamped_swiglu", Activation::ClampedSilu, false},
};

// An activation of gated(gate, value, activation): act(gate) * value.
struct GateActivation {
  const char* name;
  Activation activation;
};

inline constexpr GateActivation kGateActivations[] = {
    {"sigmoid", Activation::Sigmoid}, {"silu", Activation::Silu},
    {"gelu", Activation::Gelu},       {"gelu_tanh", Activation::GeluTanh},
    {"relu", Activation::Relu},
};

// Where the two halves of a packed input lie along its dim: the first and second half, or
// the even and odd positions (gpt-oss).
inline constexpr const char* kLayouts[] = {"halves", "interleaved"};

template <typename T, std::size_t N>
constexpr std::size_t table_size(const T (&)[N]) {
  return N;
}

}  // namespace glu_fused
