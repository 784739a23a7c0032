// The ops' schemas, and their kernels for the compiled devices: CPU and CUDA for the native
// family, Meta (shapes and checks only, for fake tensors and torch.compile) for both
// families. Each kernel plans the call (glu_plan.h) and hands it to the device's kernels.
#include "glu_ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef GLU_FUSED_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <string>

#include "glu_plan.h"

namespace glu_fused {
namespace {

[[noreturn]] void no_kernels_for(const Tensor& like) {
  TORCH_CHECK(false, "glu_fused: no kernels for device ", like.device());
}

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

template <typename Plan>
Plan run(Plan plan, const Tensor& like) {
  if (!plan.empty()) launch(like, plan.call());
  return plan;
}

RowArgs packed_rows(const OptTensor& bias, const OptTensor& valid_tokens) {
  return {bias, std::nullopt, std::nullopt, valid_tokens};
}

RowArgs gated_rows(const OptTensor& gate_bias, const OptTensor& value_bias,
                   const OptTensor& valid_tokens) {
  return {std::nullopt, gate_bias, value_bias, valid_tokens};
}

Tensor glu_forward(const Tensor& x, int64_t dim, std::string_view function,
                   std::string_view layout, double alpha, double limit, const OptTensor& bias,
                   const OptTensor& valid_tokens) {
  return run(plan_glu_forward(x, dim, function, layout, alpha, limit,
                              packed_rows(bias, valid_tokens)),
             x)
      .out;
}

Tensor glu_backward(const Tensor& grad_out, const Tensor& x, int64_t dim,
                    std::string_view function, std::string_view layout, double alpha,
                    double limit, const OptTensor& bias, const OptTensor& valid_tokens) {
  return run(plan_glu_backward(grad_out, x, dim, function, layout, alpha, limit,
                               packed_rows(bias, valid_tokens)),
             x)
      .grad_first;
}

std::tuple<Tensor, Tensor> glu_backward_bias(const Tensor& grad_out, const Tensor& x,
                                             int64_t dim, std::string_view function,
                                             std::string_view layout, double alpha,
                                             double limit, const OptTensor& bias,
                                             const OptTensor& valid_tokens) {
  TORCH_CHECK_VALUE(bias.has_value(), "glu_fused: glu_backward_bias needs a bias");
  const BackwardPlan plan = run(plan_glu_backward(grad_out, x, dim, function, layout, alpha,
                                                  limit, packed_rows(bias, valid_tokens), true),
                                x);
  return {plan.grad_first, plan.rows.bias_grads(x.scalar_type())[0]};
}

Tensor gated_forward(const Tensor& gate, const Tensor& value, std::string_view activation,
                     const OptTensor& gate_bias, const OptTensor& value_bias,
                     const OptTensor& valid_tokens) {
  return run(plan_gated_forward(gate, value, activation,
                                gated_rows(gate_bias, value_bias, valid_tokens)),
             gate)
      .out;
}

std::tuple<Tensor, Tensor> gated_backward(const Tensor& grad_out, const Tensor& gate,
                                          const Tensor& value, std::string_view activation,
                                          const OptTensor& gate_bias, const OptTensor& value_bias,
                                          const OptTensor& valid_tokens) {
  const BackwardPlan plan =
      run(plan_gated_backward(grad_out, gate, value, activation,
                              gated_rows(gate_bias, value_bias, valid_tokens)),
          gate);
  return {plan.grad_first, plan.grad_second};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gated_backward_bias(
    const Tensor& grad_out, const Tensor& gate, const Tensor& value, std::string_view activation,
    const OptTensor& gate_bias, const OptTensor& value_bias, const OptTensor& valid_tokens) {
  TORCH_CHECK_VALUE(gate_bias.has_value() || value_bias.has_value(),
                    "glu_fused: gated_backward_bias needs a gate_bias or a value_bias");
  const BackwardPlan plan =
      run(plan_gated_backward(grad_out, gate, value, activation,
                              gated_rows(gate_bias, value_bias, valid_tokens), true),
          gate);
  const auto grads = plan.rows.bias_grads(gate.scalar_type());
  return {plan.grad_first, plan.grad_second, grads[0], grads[1]};
}

void gated_backward_in_place(const Tensor& grad_out, const Tensor& gate, const Tensor& value,
                             std::string_view activation) {
  run(plan_gated_backward_in_place(grad_out, gate, value, activation), gate);
}

std::tuple<Tensor, Tensor> gated_backward_in_place_bias(const Tensor& grad_out, const Tensor& gate,
                                                        const Tensor& value,
                                                        std::string_view activation) {
  const BackwardPlan plan =
      run(plan_gated_backward_in_place(grad_out, gate, value, activation, true), gate);
  const auto grads = plan.rows.bias_grads(gate.scalar_type());
  return {grads[0], grads[1]};
}

// FP8 output. The CUDA kernels take the per-tensor amax between two launches in a zeroed
// word of the device's (stream-ordered: freed after the launches are queued).
void launch(const Tensor& like, const Fp8Call& call) {
#ifdef GLU_FUSED_WITH_CUDA
  if (like.is_cuda() || (like.is_cpu() && kEmulateCuda)) {
    Fp8Call c = call;
    Tensor amax;
    if (c.block == 0 && c.static_scale == nullptr) {
      amax = at::zeros({1}, like.options().dtype(at::kInt));
      c.tensor_amax = reinterpret_cast<unsigned*>(amax.mutable_data_ptr<int>());
    }
    if (like.is_cuda()) return launch_cuda(like, c, gated_forward_fp8_cuda);
    return gated_forward_fp8_cuda_emulated(c);
  }
#endif
  if (like.is_cpu()) return gated_forward_fp8_cpu(call);
  no_kernels_for(like);
}

std::tuple<Tensor, Tensor> run_fp8(const Fp8Plan& plan, const Tensor& like) {
  if (!plan.empty()) launch(like, plan.call());
  return {plan.q, plan.result_scales()};
}

Fp8Options fp8_options(at::ScalarType out_dtype, std::string_view granularity,
                       int64_t group_size, at::ScalarType scale_dtype,
                       std::string_view scale_rounding, std::string_view scale_layout,
                       std::string_view intermediate, double eps,
                       const std::optional<Tensor>& scale) {
  return {out_dtype,    granularity,  group_size, scale_dtype, scale_rounding,
          scale_layout, intermediate, eps,        scale};
}

// The FP8 ops' trailing arguments, as every kernel of theirs takes them.
#define GLU_FP8_PARAMS                                                                   \
  at::ScalarType out_dtype, std::string_view granularity, int64_t group_size,            \
      at::ScalarType scale_dtype, std::string_view scale_rounding,                       \
      std::string_view scale_layout, std::string_view intermediate, double eps,          \
      const std::optional<Tensor>&scale
#define GLU_FP8_ARGS                                                                     \
  fp8_options(out_dtype, granularity, group_size, scale_dtype, scale_rounding, scale_layout, \
              intermediate, eps, scale)

std::tuple<Tensor, Tensor> glu_forward_fp8(const Tensor& x, int64_t dim, std::string_view function,
                                           std::string_view layout, double alpha, double limit,
                                           GLU_FP8_PARAMS, const OptTensor& bias,
                                           const OptTensor& valid_tokens) {
  return run_fp8(plan_glu_forward_fp8(x, dim, function, layout, alpha, limit, GLU_FP8_ARGS,
                                      packed_rows(bias, valid_tokens)),
                 x);
}

std::tuple<Tensor, Tensor> gated_forward_fp8(const Tensor& gate, const Tensor& value,
                                             std::string_view activation, GLU_FP8_PARAMS,
                                             const OptTensor& gate_bias,
                                             const OptTensor& value_bias,
                                             const OptTensor& valid_tokens) {
  return run_fp8(plan_gated_forward_fp8(gate, value, activation, GLU_FP8_ARGS,
                                        gated_rows(gate_bias, value_bias, valid_tokens)),
                 gate);
}

std::tuple<Tensor, Tensor> glu_forward_fp8_meta(const Tensor& x, int64_t dim,
                                                std::string_view function,
                                                std::string_view layout, double alpha,
                                                double limit, GLU_FP8_PARAMS, const OptTensor& bias,
                                                const OptTensor& valid_tokens) {
  const PackedArgs args = check_packed(x, dim, function, layout, alpha, limit);
  auto results = fp8_results_meta(x, halved_shape(x, args.dim), args.dim, GLU_FP8_ARGS);
  check_packed_rows(packed_rows(bias, valid_tokens), x, args.dim);
  return results;
}

std::tuple<Tensor, Tensor> gated_forward_fp8_meta(const Tensor& gate, const Tensor& value,
                                                  std::string_view activation, GLU_FP8_PARAMS,
                                                  const OptTensor& gate_bias,
                                                  const OptTensor& value_bias,
                                                  const OptTensor& valid_tokens) {
  check_gated(gate, value, activation);
  auto results = fp8_results_meta(gate, gate.sym_sizes().vec(), gated_fp8_dim(gate), GLU_FP8_ARGS);
  check_gated_rows(gated_rows(gate_bias, value_bias, valid_tokens), gate);
  return results;
}

#undef GLU_FP8_PARAMS
#undef GLU_FP8_ARGS

// Meta: the same checks, results of the right (possibly symbolic) shape, nothing run.
Tensor glu_forward_meta(const Tensor& x, int64_t dim, std::string_view function,
                        std::string_view layout, double alpha, double limit, const OptTensor& bias,
                        const OptTensor& valid_tokens) {
  const PackedArgs args = check_packed(x, dim, function, layout, alpha, limit);
  check_packed_rows(packed_rows(bias, valid_tokens), x, args.dim);
  return at::empty_symint(halved_shape(x, args.dim), x.options());
}

Tensor glu_backward_meta(const Tensor& grad_out, const Tensor& x, int64_t dim,
                         std::string_view function, std::string_view layout, double alpha,
                         double limit, const OptTensor& bias, const OptTensor& valid_tokens) {
  const PackedArgs args = check_packed(x, dim, function, layout, alpha, limit);
  check_packed_grad(grad_out, x, args.dim);
  check_packed_rows(packed_rows(bias, valid_tokens), x, args.dim);
  return at::empty_symint(x.sym_sizes(), x.options());
}

std::tuple<Tensor, Tensor> glu_backward_bias_meta(const Tensor& grad_out, const Tensor& x,
                                                  int64_t dim, std::string_view function,
                                                  std::string_view layout, double alpha,
                                                  double limit, const OptTensor& bias,
                                                  const OptTensor& valid_tokens) {
  TORCH_CHECK_VALUE(bias.has_value(), "glu_fused: glu_backward_bias needs a bias");
  Tensor grad_x =
      glu_backward_meta(grad_out, x, dim, function, layout, alpha, limit, bias, valid_tokens);
  return {grad_x, at::empty_symint(bias->sym_sizes(), x.options())};
}

Tensor gated_forward_meta(const Tensor& gate, const Tensor& value, std::string_view activation,
                          const OptTensor& gate_bias, const OptTensor& value_bias,
                          const OptTensor& valid_tokens) {
  check_gated(gate, value, activation);
  check_gated_rows(gated_rows(gate_bias, value_bias, valid_tokens), gate);
  return at::empty_symint(gate.sym_sizes(), gate.options());
}

std::tuple<Tensor, Tensor> gated_backward_meta(const Tensor& grad_out, const Tensor& gate,
                                               const Tensor& value, std::string_view activation,
                                               const OptTensor& gate_bias,
                                               const OptTensor& value_bias,
                                               const OptTensor& valid_tokens) {
  check_gated(gate, value, activation);
  check_gated_grad(grad_out, gate);
  check_gated_rows(gated_rows(gate_bias, value_bias, valid_tokens), gate);
  return {at::empty_symint(gate.sym_sizes(), gate.options()),
          at::empty_symint(gate.sym_sizes(), gate.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gated_backward_bias_meta(
    const Tensor& grad_out, const Tensor& gate, const Tensor& value, std::string_view activation,
    const OptTensor& gate_bias, const OptTensor& value_bias, const OptTensor& valid_tokens) {
  TORCH_CHECK_VALUE(gate_bias.has_value() || value_bias.has_value(),
                    "glu_fused: gated_backward_bias needs a gate_bias or a value_bias");
  auto [grad_gate, grad_value] = gated_backward_meta(grad_out, gate, value, activation, gate_bias,
                                                     value_bias, valid_tokens);
  const auto bias_shape = std::vector<c10::SymInt>{gate.sym_size(-1)};
  return {grad_gate, grad_value, at::empty_symint(bias_shape, gate.options()),
          at::empty_symint(bias_shape, gate.options())};
}

// The in-place op's checks that need no memory: the memory ones (overlap, layout) run with
// the kernels.
void gated_backward_in_place_meta(const Tensor& grad_out, const Tensor& gate, const Tensor& value,
                                  std::string_view activation) {
  check_gated(gate, value, activation);
  check_gated_grad(grad_out, gate);
}

std::tuple<Tensor, Tensor> gated_backward_in_place_bias_meta(const Tensor& grad_out,
                                                             const Tensor& gate,
                                                             const Tensor& value,
                                                             std::string_view activation) {
  check_gated(gate, value, activation);
  check_gated_grad(grad_out, gate, /*bias_grad=*/true);
  const auto bias_shape = std::vector<c10::SymInt>{gate.sym_size(-1)};
  return {at::empty_symint(bias_shape, gate.options()),
          at::empty_symint(bias_shape, gate.options())};
}

std::string op_name(Family family, const char* op) {
  return std::string(kFamilyPrefixes[static_cast<int>(family)]) + op;
}

void define_family(torch::Library& m, Family family) {
  const auto def = [&](const char* op, const char* signature) {
    m.def((op_name(family, op) + signature).c_str());
  };
  def("glu_forward",
      "(Tensor x, int dim, str function, str layout, float alpha, float limit, "
      "Tensor? bias=None, Tensor? valid_tokens=None) -> Tensor");
  def("glu_backward",
      "(Tensor grad_out, Tensor x, int dim, str function, str layout, float alpha, "
      "float limit, Tensor? bias=None, Tensor? valid_tokens=None) -> Tensor");
  def("glu_backward_bias",
      "(Tensor grad_out, Tensor x, int dim, str function, str layout, float alpha, "
      "float limit, Tensor? bias, Tensor? valid_tokens=None) -> (Tensor, Tensor)");
  def("gated_forward",
      "(Tensor gate, Tensor value, str activation, Tensor? gate_bias=None, "
      "Tensor? value_bias=None, Tensor? valid_tokens=None) -> Tensor");
  def("gated_backward",
      "(Tensor grad_out, Tensor gate, Tensor value, str activation, Tensor? gate_bias=None, "
      "Tensor? value_bias=None, Tensor? valid_tokens=None) -> (Tensor, Tensor)");
  def("gated_backward_bias",
      "(Tensor grad_out, Tensor gate, Tensor value, str activation, Tensor? gate_bias, "
      "Tensor? value_bias, Tensor? valid_tokens=None) -> (Tensor, Tensor, Tensor, Tensor)");
  def("gated_backward_in_place",
      "(Tensor(a!) grad_out, Tensor(b!) gate, Tensor(c!) value, str activation) -> ()");
  // The same, and the gradients of the biases that gate and value hold (summed over rows).
  def("gated_backward_in_place_bias",
      "(Tensor(a!) grad_out, Tensor(b!) gate, Tensor(c!) value, str activation) "
      "-> (Tensor, Tensor)");
}

void impl_meta(torch::Library& m, Family family) {
  m.impl(op_name(family, "glu_forward").c_str(), &glu_forward_meta);
  m.impl(op_name(family, "glu_backward").c_str(), &glu_backward_meta);
  m.impl(op_name(family, "gated_forward").c_str(), &gated_forward_meta);
  m.impl(op_name(family, "gated_backward").c_str(), &gated_backward_meta);
  m.impl(op_name(family, "glu_backward_bias").c_str(), &glu_backward_bias_meta);
  m.impl(op_name(family, "gated_backward_bias").c_str(), &gated_backward_bias_meta);
  m.impl(op_name(family, "gated_backward_in_place").c_str(), &gated_backward_in_place_meta);
  m.impl(op_name(family, "gated_backward_in_place_bias").c_str(),
         &gated_backward_in_place_bias_meta);
}

void impl_native(torch::Library& m) {
  m.impl("glu_forward", &glu_forward);
  m.impl("glu_backward", &glu_backward);
  m.impl("gated_forward", &gated_forward);
  m.impl("gated_backward", &gated_backward);
  m.impl("glu_backward_bias", &glu_backward_bias);
  m.impl("gated_backward_bias", &gated_backward_bias);
  m.impl("gated_backward_in_place", &gated_backward_in_place);
  m.impl("gated_backward_in_place_bias", &gated_backward_in_place_bias);
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> find(const std::string& op) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(("glu_fused::" + op).c_str(), "")
      .template typed<Signature>();
}

Ops find_ops(Family family) {
  const auto name = [&](const char* op) { return op_name(family, op); };
  return {find<GluForward>(name("glu_forward")),
          find<GluBackward>(name("glu_backward")),
          find<GluBackwardBias>(name("glu_backward_bias")),
          find<GatedForward>(name("gated_forward")),
          find<GatedBackward>(name("gated_backward")),
          find<GatedBackwardBias>(name("gated_backward_bias")),
          find<GluDoubleBackward>("glu_double_backward"),
          find<GatedDoubleBackward>("gated_double_backward"),
          find<GatedBackwardInPlace>(name("gated_backward_in_place")),
          find<GatedBackwardInPlaceBias>(name("gated_backward_in_place_bias"))};
}

}  // namespace

const Ops& ops(Family family) {
  static const Ops native = find_ops(Family::Native);
  static const Ops triton = find_ops(Family::Triton);
  return family == Family::Native ? native : triton;
}

TORCH_LIBRARY(glu_fused, m) {
  define_family(m, Family::Native);
  define_family(m, Family::Triton);
  // Second order, for both families: (d grad_out, d x) of <grad_grad_x, grad_x(grad_out, x)>.
  m.def(
      "glu_double_backward(Tensor grad_grad_x, Tensor grad_out, Tensor x, int dim, "
      "str function, str layout, float alpha, float limit, Tensor? bias=None, "
      "Tensor? valid_tokens=None) -> (Tensor, Tensor)");
  m.def(
      "gated_double_backward(Tensor grad_grad_gate, Tensor grad_grad_value, Tensor grad_out, "
      "Tensor gate, Tensor value, str activation, Tensor? gate_bias=None, "
      "Tensor? value_bias=None, Tensor? valid_tokens=None) -> (Tensor, Tensor, Tensor)");
  // FP8 output (the native family; docs/contract.md, "FP8 output"): (q, scale).
  constexpr const char* kFp8Args =
      "ScalarType out_dtype, str granularity, int group_size, ScalarType scale_dtype, "
      "str scale_rounding, str scale_layout, str intermediate, float eps, Tensor? scale, ";
  m.def(("glu_forward_fp8(Tensor x, int dim, str function, str layout, float alpha, "
         "float limit, " + std::string(kFp8Args) +
         "Tensor? bias=None, Tensor? valid_tokens=None) -> (Tensor, Tensor)").c_str());
  m.def(("gated_forward_fp8(Tensor gate, Tensor value, str activation, " +
         std::string(kFp8Args) +
         "Tensor? gate_bias=None, Tensor? value_bias=None, Tensor? valid_tokens=None) "
         "-> (Tensor, Tensor)").c_str());
}

TORCH_LIBRARY_IMPL(glu_fused, Meta, m) {
  impl_meta(m, Family::Native);
  m.impl("glu_forward_fp8", &glu_forward_fp8_meta);
  m.impl("gated_forward_fp8", &gated_forward_fp8_meta);
  impl_meta(m, Family::Triton);
}

TORCH_LIBRARY_IMPL(glu_fused, CPU, m) {
  impl_native(m);
  m.impl("glu_forward_fp8", &glu_forward_fp8);
  m.impl("gated_forward_fp8", &gated_forward_fp8);
}

#ifdef GLU_FUSED_WITH_CUDA
TORCH_LIBRARY_IMPL(glu_fused, CUDA, m) {
  impl_native(m);
  m.impl("glu_forward_fp8", &glu_forward_fp8);
  m.impl("gated_forward_fp8", &gated_forward_fp8);
}
#endif

bool emulates_cuda() {
#ifdef GLU_FUSED_WITH_CUDA
  return kEmulateCuda;
#else
  return false;
#endif
}

}  // namespace glu_fused
