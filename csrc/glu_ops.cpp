// The torch binding: checks the arguments, describes where gate and value live (PairLayout),
// allocates the result and hands the call to the device's kernels. The schemas of these ops
// are defined once, in glu_fused/_ops.py; this file only implements them per device.
#include <ATen/ATen.h>
#include <Python.h>
#include <torch/library.h>

#ifdef GLU_FUSED_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstdlib>
#include <limits>
#include <string_view>
#include <tuple>

#include "glu_kernels.h"

namespace glu_fused {
namespace {

using at::Tensor;

// The functions of the packed ops: their activation, and whether the gate is the second half
// (glu computes x1 * sigmoid(x2)).
struct PackedFunction {
  Activation activation;
  bool gate_is_second;
};

PackedFunction packed_function(std::string_view name) {
  if (name == "glu") return {Activation::Sigmoid, true};
  if (name == "swiglu") return {Activation::Silu, false};
  if (name == "geglu") return {Activation::Gelu, false};
  if (name == "geglu_tanh") return {Activation::GeluTanh, false};
  if (name == "reglu") return {Activation::Relu, false};
  if (name == "clamped_swiglu") return {Activation::ClampedSilu, false};
  TORCH_CHECK_VALUE(false, "glu_fused: unknown function '", name,
                    "'; expected glu, swiglu, geglu, geglu_tanh, reglu or clamped_swiglu");
}

Activation gate_activation(std::string_view name) {
  if (name == "sigmoid") return Activation::Sigmoid;
  if (name == "silu") return Activation::Silu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "gelu_tanh") return Activation::GeluTanh;
  if (name == "relu") return Activation::Relu;
  TORCH_CHECK_VALUE(false, "glu_fused: unknown activation '", name,
                    "'; expected sigmoid, silu, gelu, gelu_tanh or relu");
}

ScalarKind scalar_kind(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return ScalarKind::Half;
    case at::kBFloat16:
      return ScalarKind::BFloat16;
    case at::kFloat:
      return ScalarKind::Float;
    case at::kDouble:
      return ScalarKind::Double;
    default:
      TORCH_CHECK_TYPE(false,
                       "glu_fused: expected a float16, bfloat16, float32 or float64 "
                       "tensor, got ",
                       t.scalar_type());
  }
}

int64_t checked_dim(const Tensor& x, int64_t dim) {
  const int64_t rank = x.dim();
  TORCH_CHECK_VALUE(rank > 0, "glu_fused: cannot split a 0-dimensional tensor");
  TORCH_CHECK_VALUE(dim >= -rank && dim < rank, "glu_fused: dim ", dim,
                    " is out of range for a tensor of ", rank, " dimensions");
  dim = dim < 0 ? dim + rank : dim;
  TORCH_CHECK_VALUE(x.size(dim) % 2 == 0, "glu_fused: the size along dim ", dim,
                    " must be even to split it in two, got ", x.size(dim));
  return dim;
}

// Dims [begin, end) as one (size, stride), if they are evenly strided; size-1 dims are free.
bool collapse(const Tensor& t, int64_t begin, int64_t end, int64_t& size, int64_t& stride) {
  size = 1;
  stride = 0;
  for (int64_t d = end - 1; d >= begin; --d) {
    if (t.size(d) == 1) continue;
    if (size == 1) {
      stride = t.stride(d);
    } else if (t.stride(d) != stride * size) {
      return false;
    }
    size *= t.size(d);
  }
  return true;
}

// Where gate and value live in `x` (or in a contiguous copy, returned through `x`, where the
// layout is not one the kernels walk directly).
PairLayout split_layout(Tensor& x, int64_t dim, bool interleaved, bool gate_is_second,
                        int64_t& gate_offset, int64_t& value_offset) {
  const int64_t half = x.size(dim) / 2;
  int64_t outer, outer_stride, inner, inner_stride;
  bool direct = collapse(x, 0, dim, outer, outer_stride) &&
                collapse(x, dim + 1, x.dim(), inner, inner_stride) &&
                (inner == 1 ? (half == 0 || x.stride(dim) == 1) : inner_stride == 1);
  if (!direct) {
    x = x.contiguous();
    collapse(x, 0, dim, outer, outer_stride);
    collapse(x, dim + 1, x.dim(), inner, inner_stride);
  }
  const int64_t split_stride = x.stride(dim);
  PairLayout layout;
  int64_t second;
  if (inner == 1) {
    layout.runs = outer;
    layout.run_len = half;
    layout.outer_stride = outer_stride;
    layout.elem_stride = interleaved ? 2 : 1;
    second = interleaved ? 1 : half;
  } else {
    layout.runs = outer * half;
    layout.run_len = inner;
    layout.runs_per_outer = std::max<int64_t>(half, 1);
    layout.outer_stride = outer_stride;
    layout.run_stride = interleaved ? 2 * split_stride : split_stride;
    second = interleaved ? split_stride : half * split_stride;
  }
  gate_offset = gate_is_second ? second : 0;
  value_offset = gate_is_second ? 0 : second;
  return layout;
}

// Rows of a tensor whose last dim is contiguous: gated()'s layout.
bool rows_layout(const Tensor& t, PairLayout& layout) {
  if (t.is_contiguous()) {
    layout.runs = 1;
    layout.run_len = t.numel();
    return true;
  }
  int64_t rows, row_stride;
  if (t.stride(-1) != 1 || !collapse(t, 0, t.dim() - 1, rows, row_stride)) return false;
  layout.runs = rows;
  layout.run_len = t.size(-1);
  layout.outer_stride = row_stride;
  return true;
}

[[noreturn]] void no_kernels_for(const Tensor& like) {
  TORCH_CHECK(false, "glu_fused: no kernels for device ", like.device());
}

// Switches read once, when the extension loads: set and not "0".
bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::string_view(value) != "0";
}

// $GLU_FUSED_POISON_OUTPUTS: every result is filled with NaN before its kernel runs, so a test
// sees any element a kernel forgets to write.
const bool kPoisonOutputs = env_flag("GLU_FUSED_POISON_OUTPUTS");

#ifdef GLU_FUSED_WITH_CUDA
// $GLU_FUSED_EMULATE_CUDA: CPU tensors run the CUDA kernels' thread code on the host, block by
// block, instead of the CPU kernels: how the CUDA kernels' paths are tested without a GPU.
const bool kEmulateCuda = env_flag("GLU_FUSED_EMULATE_CUDA");

// The device's guard is held while the kernel is queued on its current stream.
template <typename Call>
void launch_cuda(const Tensor& like, const Call& call, int (*kernel)(const Call&, void*)) {
  const c10::cuda::CUDAGuard guard(like.device());
  const auto error =
      static_cast<cudaError_t>(kernel(call, c10::cuda::getCurrentCUDAStream().stream()));
  TORCH_CHECK(error == cudaSuccess, "glu_fused: CUDA kernel launch failed: ",
              cudaGetErrorString(error));
}
#else
constexpr bool kEmulateCuda = false;
#endif

void launch(const Tensor& like, const ForwardCall& call) {
#ifdef GLU_FUSED_WITH_CUDA
  if (like.is_cuda()) return launch_cuda(like, call, gated_forward_cuda);
  if (like.is_cpu() && kEmulateCuda) return gated_forward_cuda_emulated(call);
#endif
  if (like.is_cpu()) return gated_forward_cpu(call);
  no_kernels_for(like);
}

void launch(const Tensor& like, const BackwardCall& call) {
#ifdef GLU_FUSED_WITH_CUDA
  if (like.is_cuda()) return launch_cuda(like, call, gated_backward_cuda);
  if (like.is_cpu() && kEmulateCuda) return gated_backward_cuda_emulated(call);
#endif
  if (like.is_cpu()) return gated_backward_cpu(call);
  no_kernels_for(like);
}

Tensor new_result(at::IntArrayRef shape, const Tensor& like) {
  Tensor out = at::empty(shape, like.options());
  if (kPoisonOutputs) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

ActivationCall activation_call(const Tensor& x, Activation activation, double alpha, double limit) {
  return {scalar_kind(x), activation, alpha, limit};
}

std::vector<int64_t> halved_shape(const Tensor& x, int64_t dim) {
  auto shape = x.sizes().vec();
  shape[dim] /= 2;
  return shape;
}

void check_same(const Tensor& a, const Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), "glu_fused: ", a_name, " and ", b_name,
                    " must have the same shape, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), "glu_fused: ", a_name, " and ", b_name,
                    " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), "glu_fused: ", a_name, " and ", b_name,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

Tensor glu_forward(const Tensor& input, int64_t dim, std::string_view function, bool interleaved,
                   double alpha, double limit) {
  const auto fn = packed_function(function);
  const auto op = activation_call(input, fn.activation, alpha, limit);
  dim = checked_dim(input, dim);
  Tensor x = input;
  Tensor out = new_result(halved_shape(x, dim), x);
  if (out.numel() == 0) return out;
  int64_t g, v;
  const PairLayout layout = split_layout(x, dim, interleaved, fn.gate_is_second, g, v);
  const auto* base = static_cast<const char*>(x.const_data_ptr());
  const ForwardCall call{op, layout, base + g * x.element_size(), base + v * x.element_size(),
                         out.mutable_data_ptr()};
  launch(x, call);
  return out;
}

Tensor glu_backward(const Tensor& grad_out, const Tensor& input, int64_t dim,
                    std::string_view function, bool interleaved, double alpha, double limit) {
  const auto fn = packed_function(function);
  const auto op = activation_call(input, fn.activation, alpha, limit);
  dim = checked_dim(input, dim);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(halved_shape(input, dim)),
                    "glu_fused: grad_out has shape ", grad_out.sizes(), ", expected ",
                    halved_shape(input, dim));
  TORCH_CHECK_VALUE(
      grad_out.scalar_type() == input.scalar_type() && grad_out.device() == input.device(),
      "glu_fused: grad_out must match the input's dtype and device");
  Tensor x = input;
  Tensor grad_in = new_result(x.sizes(), x);
  if (grad_in.numel() == 0) return grad_in;
  const Tensor dy = grad_out.contiguous();
  int64_t g, v, dg, dv;
  const PairLayout layout = split_layout(x, dim, interleaved, fn.gate_is_second, g, v);
  Tensor dense = grad_in;
  const PairLayout grad_layout = split_layout(dense, dim, interleaved, fn.gate_is_second, dg, dv);
  const auto* base = static_cast<const char*>(x.const_data_ptr());
  auto* grad_base = static_cast<char*>(grad_in.mutable_data_ptr());
  const int64_t size = x.element_size();
  const BackwardCall call{op,
                          layout,
                          base + g * size,
                          base + v * size,
                          dy.const_data_ptr(),
                          grad_layout,
                          grad_base + dg * size,
                          grad_base + dv * size};
  launch(x, call);
  return grad_in;
}

// gate and value as two tensors that share one layout (copies where they do not).
PairLayout gated_layout(Tensor& gate, Tensor& value) {
  PairLayout layout;
  if (gate.strides() == value.strides() && rows_layout(gate, layout)) return layout;
  gate = gate.contiguous();
  value = value.contiguous();
  rows_layout(gate, layout);
  return layout;
}

Tensor gated_forward(const Tensor& gate_in, const Tensor& value_in, std::string_view activation) {
  const Activation act = gate_activation(activation);
  check_same(gate_in, value_in, "gate", "value");
  const auto op = activation_call(gate_in, act, 0.0, 0.0);
  Tensor out = new_result(gate_in.sizes(), gate_in);
  if (out.numel() == 0) return out;
  Tensor gate = gate_in, value = value_in;
  const PairLayout layout = gated_layout(gate, value);
  const ForwardCall call{op, layout, gate.const_data_ptr(), value.const_data_ptr(),
                         out.mutable_data_ptr()};
  launch(gate, call);
  return out;
}

std::tuple<Tensor, Tensor> gated_backward(const Tensor& grad_out, const Tensor& gate_in,
                                          const Tensor& value_in, std::string_view activation) {
  const Activation act = gate_activation(activation);
  check_same(gate_in, value_in, "gate", "value");
  check_same(grad_out, gate_in, "grad_out", "gate");
  const auto op = activation_call(gate_in, act, 0.0, 0.0);
  Tensor grad_gate = new_result(gate_in.sizes(), gate_in);
  Tensor grad_value = new_result(gate_in.sizes(), gate_in);
  if (grad_gate.numel() == 0) return {grad_gate, grad_value};
  Tensor gate = gate_in, value = value_in;
  const PairLayout layout = gated_layout(gate, value);
  // The gradients are dense: the same rows, one after another.
  PairLayout grad_layout = layout;
  grad_layout.outer_stride = layout.run_len;
  const Tensor dy = grad_out.contiguous();
  const BackwardCall call{op,
                          layout,
                          gate.const_data_ptr(),
                          value.const_data_ptr(),
                          dy.const_data_ptr(),
                          grad_layout,
                          grad_gate.mutable_data_ptr(),
                          grad_value.mutable_data_ptr()};
  launch(gate, call);
  return {grad_gate, grad_value};
}

}  // namespace

TORCH_LIBRARY_IMPL(glu_fused, CPU, m) {
  m.impl("glu_forward", &glu_forward);
  m.impl("glu_backward", &glu_backward);
  m.impl("gated_forward", &gated_forward);
  m.impl("gated_backward", &gated_backward);
}

#ifdef GLU_FUSED_WITH_CUDA
TORCH_LIBRARY_IMPL(glu_fused, CUDA, m) {
  m.impl("glu_forward", &glu_forward);
  m.impl("glu_backward", &glu_backward);
  m.impl("gated_forward", &gated_forward);
  m.impl("gated_backward", &gated_backward);
}
#endif

}  // namespace glu_fused

#ifndef GLU_FUSED_CPU_CAPABILITY
#define GLU_FUSED_CPU_CAPABILITY "default"
#endif

// A plain Python module: importing it loads the kernels above into the dispatcher; its
// attributes say how it was built.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "glu_fused's compiled kernels", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef GLU_FUSED_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) < 0 ||
      PyModule_AddIntConstant(module, "EMULATE_CUDA", glu_fused::kEmulateCuda ? 1 : 0) < 0 ||
      PyModule_AddStringConstant(module, "CPU_CAPABILITY", GLU_FUSED_CPU_CAPABILITY) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
