// The ops of glu_fused, as the dispatcher knows them (schemas in glu_ops.cpp).
//
// Two families of the same four ops: the compiled extension's kernels ("native": CPU and
// CUDA, glu_fused::glu_forward...) and the Triton kernels ("triton", glu_fused::triton_...,
// implemented in Python by glu_fused/_triton/ops.py). Both share these schemas, their fake
// (Meta) kernels and their autograd kernels (glu_autograd.cpp). The double-backward ops,
// one for both families, are differentiable compositions of the reference
// (glu_fused/_ops.py registers them).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string_view>
#include <tuple>

namespace glu_fused {

enum class Family : int { Native = 0, Triton = 1 };
inline constexpr const char* kFamilyNames[] = {"native", "triton"};
inline constexpr const char* kFamilyPrefixes[] = {"", "triton_"};

using at::Tensor;
using OptTensor = std::optional<Tensor>;
// Every op ends with the bias and token-count arguments (None: none; docs/contract.md, "Bias
// and token counts"): packed ops `bias, valid_tokens`, gated ones `gate_bias, value_bias,
// valid_tokens`. The *_backward_bias ops also return the bias gradients.
using GluForward = Tensor(const Tensor&, int64_t, std::string_view, std::string_view, double,
                          double, const OptTensor&, const OptTensor&);
using GluBackward = Tensor(const Tensor&, const Tensor&, int64_t, std::string_view,
                           std::string_view, double, double, const OptTensor&, const OptTensor&);
using GluBackwardBias = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t,
                                                   std::string_view, std::string_view, double,
                                                   double, const OptTensor&, const OptTensor&);
using GatedForward = Tensor(const Tensor&, const Tensor&, std::string_view, const OptTensor&,
                            const OptTensor&, const OptTensor&);
using GatedBackward = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                 std::string_view, const OptTensor&,
                                                 const OptTensor&, const OptTensor&);
using GatedBackwardBias = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, std::string_view, const OptTensor&,
    const OptTensor&, const OptTensor&);
using GluDoubleBackward = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                     int64_t, std::string_view, std::string_view,
                                                     double, double, const OptTensor&,
                                                     const OptTensor&);
using GatedDoubleBackward = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, std::string_view,
    const OptTensor&, const OptTensor&, const OptTensor&);
// The in-place backward op writes its results over its arguments (see glu_plan.h).
using GatedBackwardInPlace = void(const Tensor&, const Tensor&, const Tensor&, std::string_view);
using GatedBackwardInPlaceBias = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&,
                                                            const Tensor&, std::string_view);

// A family's ops, found in the dispatcher once.
struct Ops {
  c10::TypedOperatorHandle<GluForward> glu_forward;
  c10::TypedOperatorHandle<GluBackward> glu_backward;
  c10::TypedOperatorHandle<GluBackwardBias> glu_backward_bias;
  c10::TypedOperatorHandle<GatedForward> gated_forward;
  c10::TypedOperatorHandle<GatedBackward> gated_backward;
  c10::TypedOperatorHandle<GatedBackwardBias> gated_backward_bias;
  c10::TypedOperatorHandle<GluDoubleBackward> glu_double_backward;
  c10::TypedOperatorHandle<GatedDoubleBackward> gated_double_backward;
  c10::TypedOperatorHandle<GatedBackwardInPlace> gated_backward_in_place;
  c10::TypedOperatorHandle<GatedBackwardInPlaceBias> gated_backward_in_place_bias;
};

const Ops& ops(Family family);

// Whether CPU tensors run the CUDA kernels' thread code on the host ($GLU_FUSED_EMULATE_CUDA,
// read when the extension loads; only where the CUDA kernels were built).
bool emulates_cuda();

}  // namespace glu_fused
