// Runs Kernel<activation, scalar type>::run(call, extra...) for a call's activation and dtype:
// one switch for every device. `Types` names each device's half and bfloat16 types.
#pragma once

#include "glu_kernels.h"

namespace glu_fused {

template <template <Activation, typename> class Kernel, Activation A, class Types, typename Call,
          typename... Extra>
auto dispatch_dtype(const Call& call, Extra... extra) {
  switch (call.op.dtype) {
    case ScalarKind::Half:
      return Kernel<A, typename Types::Half>::run(call, extra...);
    case ScalarKind::BFloat16:
      return Kernel<A, typename Types::BFloat16>::run(call, extra...);
    case ScalarKind::Float:
      return Kernel<A, float>::run(call, extra...);
    case ScalarKind::Double:
      break;
  }
  return Kernel<A, double>::run(call, extra...);
}

template <template <Activation, typename> class Kernel, class Types, typename Call,
          typename... Extra>
auto dispatch(const Call& call, Extra... extra) {
  switch (call.op.activation) {
    case Activation::Sigmoid:
      return dispatch_dtype<Kernel, Activation::Sigmoid, Types>(call, extra...);
    case Activation::Silu:
      return dispatch_dtype<Kernel, Activation::Silu, Types>(call, extra...);
    case Activation::Gelu:
      return dispatch_dtype<Kernel, Activation::Gelu, Types>(call, extra...);
    case Activation::GeluTanh:
      return dispatch_dtype<Kernel, Activation::GeluTanh, Types>(call, extra...);
    case Activation::Relu:
      return dispatch_dtype<Kernel, Activation::Relu, Types>(call, extra...);
    case Activation::ClampedSilu:
      break;
  }
  return dispatch_dtype<Kernel, Activation::ClampedSilu, Types>(call, extra...);
}

}  // namespace glu_fused
