// The autograd kernels of both op families, in C++ (the Autograd dispatch key), so that a
// call that needs a gradient costs what an ATen op's does.
//
// Forward ops save their tensor inputs and nothing else; their backward calls the family's
// fused backward op. A backward op records a graph only when a gradient of it is wanted
// (create_graph=True): its backward is the shared double-backward op, a differentiable
// composition of the reference. Calls that need no gradient go straight to the kernels.
//
// Two routes stay in Python (glu_fused/_ops.py), because C++ autograd functions support
// neither: forward-mode AD and torch.func transforms. These kernels refuse a tensor that
// carries a tangent rather than drop it; glu_fused's functions send such calls to Python.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <numeric>

#include "glu_ops.h"
#include "glu_plan.h"

namespace glu_fused {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Handle, typename... Args>
auto below_autograd(const Handle& op, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(args...);
}

void refuse_tangent(const Tensor& t) {
  TORCH_CHECK(!t._fw_grad(/*level=*/0).defined(),
              "glu_fused: forward-mode AD reaches the fused ops through glu_fused's functions "
              "(glu_fused.swiglu(...)), not through torch.ops.glu_fused directly");
}

// A packed op's non-tensor arguments, kept by autograd for the backward call. The names are
// kept as the table's own strings: the caller's may be gone by then.
struct PackedCallArgs {
  int64_t dim;
  std::string_view function;
  std::string_view layout;
  double alpha;
  double limit;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["function"] = static_cast<int64_t>(&packed_function(function) - kPackedFunctions);
    ctx->saved_data["interleaved"] = is_interleaved(layout);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["limit"] = limit;
  }

  static PackedCallArgs load(AutogradContext* ctx) {
    return {ctx->saved_data["dim"].toInt(),
            kPackedFunctions[ctx->saved_data["function"].toInt()].name,
            kLayouts[ctx->saved_data["interleaved"].toBool() ? 1 : 0],
            ctx->saved_data["alpha"].toDouble(), ctx->saved_data["limit"].toDouble()};
  }
};

void save_activation(AutogradContext* ctx, std::string_view activation) {
  const Activation code = gate_activation(activation);
  for (int64_t i = 0; i < static_cast<int64_t>(table_size(kGateActivations)); ++i) {
    if (kGateActivations[i].activation == code) ctx->saved_data["activation"] = i;
  }
}

std::string_view load_activation(AutogradContext* ctx) {
  return kGateActivations[ctx->saved_data["activation"].toInt()].name;
}

// The bias and token counts travel as tensors, undefined where the call has none.
OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
Tensor defined_or_not(const OptTensor& t) { return t.value_or(Tensor()); }

// A bias's gradient from its input's, summed over every row (the bias lies along the last
// dim): for the double backward, where it is plain PyTorch like the rest of it.
Tensor sum_rows(const Tensor& grad, const Tensor& bias) {
  if (!bias.defined()) return Tensor();
  std::vector<int64_t> rows(grad.dim() - 1);
  std::iota(rows.begin(), rows.end(), 0);
  return rows.empty() ? grad : grad.sum(rows);
}

// The input gradients' cotangent with a bias's added to every row (the bias gradient is the
// sum of the input gradient's rows, so its cotangent reaches each of them).
Tensor with_bias_cotangent(const Tensor& grad, const Tensor& bias_grad) {
  return bias_grad.defined() ? grad + bias_grad : grad;
}

// glu_backward and glu_backward_bias as functions of their inputs, for double backward:
// both save the same inputs, and differentiate as glu_double_backward gives, for the
// cotangent of grad_x (glu_backward_bias's with its bias's folded in).
void save_packed_backward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& x,
                          const OptTensor& bias, const OptTensor& valid, const PackedCallArgs& a) {
  ctx->save_for_backward({grad_out, x, defined_or_not(bias), defined_or_not(valid)});
  a.save(ctx);
}

template <Family F>
variable_list packed_double_backward(AutogradContext* ctx, const Tensor& cotangent) {
  const auto s = ctx->get_saved_variables();
  const auto a = PackedCallArgs::load(ctx);
  auto [grad_grad_out, grad_x] = ops(F).glu_double_backward.call(
      cotangent, s[0], s[1], a.dim, a.function, a.layout, a.alpha, a.limit, opt(s[2]),
      opt(s[3]));
  return {grad_grad_out, grad_x, sum_rows(grad_x, s[2]), Tensor(), Tensor()};
}

template <Family F>
struct GluBackwardFunction : torch::autograd::Function<GluBackwardFunction<F>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& x,
                        const OptTensor& bias, const OptTensor& valid, const PackedCallArgs& a) {
    save_packed_backward(ctx, grad_out, x, bias, valid, a);
    return below_autograd(ops(F).glu_backward, grad_out, x, a.dim, a.function, a.layout, a.alpha,
                          a.limit, bias, valid);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return packed_double_backward<F>(ctx, grads[0]);
  }
};

// The backward that also gives the bias gradient (fused: per-tile partial sums).
template <Family F>
struct GluBackwardBiasFunction : torch::autograd::Function<GluBackwardBiasFunction<F>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& x,
                               const OptTensor& bias, const OptTensor& valid, const PackedCallArgs& a) {
    save_packed_backward(ctx, grad_out, x, bias, valid, a);
    auto [grad_x, grad_bias] =
        below_autograd(ops(F).glu_backward_bias, grad_out, x, a.dim, a.function, a.layout,
                       a.alpha, a.limit, bias, valid);
    return {grad_x, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return packed_double_backward<F>(ctx, with_bias_cotangent(grads[0], grads[1]));
  }
};

template <Family F>
struct GluForwardFunction : torch::autograd::Function<GluForwardFunction<F>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const OptTensor& bias,
                        const OptTensor& valid, const PackedCallArgs& a) {
    ctx->save_for_backward({x, defined_or_not(bias), defined_or_not(valid)});
    ctx->saved_data["bias_grad"] = bias.has_value() && bias->requires_grad();
    a.save(ctx);
    return below_autograd(ops(F).glu_forward, x, a.dim, a.function, a.layout, a.alpha, a.limit,
                          bias, valid);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto a = PackedCallArgs::load(ctx);
    const auto s = ctx->get_saved_variables();
    const Tensor &x = s[0], &bias = s[1], &valid = s[2];
    if (ctx->saved_data["bias_grad"].toBool()) {
      auto [grad_x, grad_bias] =
          ops(F).glu_backward_bias.call(grads[0], x, a.dim, a.function, a.layout, a.alpha,
                                        a.limit, opt(bias), opt(valid));
      return {grad_x, grad_bias, Tensor(), Tensor()};
    }
    return {ops(F).glu_backward.call(grads[0], x, a.dim, a.function, a.layout, a.alpha, a.limit,
                                     opt(bias), opt(valid)),
            Tensor(), Tensor(), Tensor()};
  }
};

// gated_backward and gated_backward_bias likewise: the same inputs saved (gated's tensors
// after grad_out: gate, value, gate_bias, value_bias, valid_tokens), differentiated as
// gated_double_backward gives for the cotangents of grad_gate and grad_value.
void save_gated_backward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& gate,
                         const Tensor& value, const OptTensor& gate_bias,
                         const OptTensor& value_bias, const OptTensor& valid,
                         std::string_view activation) {
  ctx->save_for_backward({grad_out, gate, value, defined_or_not(gate_bias),
                          defined_or_not(value_bias), defined_or_not(valid)});
  save_activation(ctx, activation);
}

template <Family F>
variable_list gated_double_backward(AutogradContext* ctx, const variable_list& s,
                                    const Tensor& cotangent_gate, const Tensor& cotangent_value) {
  auto [grad_grad_out, grad_gate, grad_value] = ops(F).gated_double_backward.call(
      cotangent_gate, cotangent_value, s[0], s[1], s[2], load_activation(ctx), opt(s[3]),
      opt(s[4]), opt(s[5]));
  return {grad_grad_out, grad_gate, grad_value, sum_rows(grad_gate, s[3]),
          sum_rows(grad_value, s[4]), Tensor(), Tensor()};
}

template <Family F>
struct GatedBackwardFunction : torch::autograd::Function<GatedBackwardFunction<F>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& gate,
                               const Tensor& value, const OptTensor& gate_bias,
                               const OptTensor& value_bias, const OptTensor& valid,
                               std::string_view activation) {
    save_gated_backward(ctx, grad_out, gate, value, gate_bias, value_bias, valid, activation);
    auto [grad_gate, grad_value] =
        below_autograd(ops(F).gated_backward, grad_out, gate, value, activation, gate_bias,
                       value_bias, valid);
    return {grad_gate, grad_value};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return gated_double_backward<F>(ctx, ctx->get_saved_variables(), grads[0], grads[1]);
  }
};

template <Family F>
struct GatedBackwardBiasFunction : torch::autograd::Function<GatedBackwardBiasFunction<F>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& gate,
                               const Tensor& value, const OptTensor& gate_bias,
                               const OptTensor& value_bias, const OptTensor& valid,
                               std::string_view activation) {
    save_gated_backward(ctx, grad_out, gate, value, gate_bias, value_bias, valid, activation);
    auto [grad_gate, grad_value, grad_gate_bias, grad_value_bias] =
        below_autograd(ops(F).gated_backward_bias, grad_out, gate, value, activation,
                       gate_bias, value_bias, valid);
    return {grad_gate, grad_value, grad_gate_bias, grad_value_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    return gated_double_backward<F>(
        ctx, s, with_bias_cotangent(grads[0], s[3].defined() ? grads[2] : Tensor()),
        with_bias_cotangent(grads[1], s[4].defined() ? grads[3] : Tensor()));
  }
};

template <Family F>
struct GatedForwardFunction : torch::autograd::Function<GatedForwardFunction<F>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& gate, const Tensor& value,
                        const OptTensor& gate_bias, const OptTensor& value_bias,
                        const OptTensor& valid,
                        std::string_view activation) {
    ctx->save_for_backward({gate, value, defined_or_not(gate_bias), defined_or_not(value_bias),
                            defined_or_not(valid)});
    ctx->saved_data["bias_grad"] = (gate_bias.has_value() && gate_bias->requires_grad()) ||
                                   (value_bias.has_value() && value_bias->requires_grad());
    save_activation(ctx, activation);
    return below_autograd(ops(F).gated_forward, gate, value, activation, gate_bias, value_bias,
                          valid);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const std::string_view activation = load_activation(ctx);
    if (ctx->saved_data["bias_grad"].toBool()) {
      auto [grad_gate, grad_value, grad_gate_bias, grad_value_bias] =
          ops(F).gated_backward_bias.call(grads[0], s[0], s[1], activation, opt(s[2]),
                                          opt(s[3]), opt(s[4]));
      return {grad_gate,
              grad_value,
              s[2].defined() ? grad_gate_bias : Tensor(),
              s[3].defined() ? grad_value_bias : Tensor(),
              Tensor(),
              Tensor()};
    }
    auto [grad_gate, grad_value] = ops(F).gated_backward.call(
        grads[0], s[0], s[1], activation, opt(s[2]), opt(s[3]), opt(s[4]));
    return {grad_gate, grad_value, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

void refuse_tangents(std::initializer_list<OptTensor> tensors) {
  for (const OptTensor& t : tensors) {
    if (t) refuse_tangent(*t);
  }
}

template <Family F>
Tensor glu_forward(const Tensor& x, int64_t dim, std::string_view function,
                   std::string_view layout, double alpha, double limit, const OptTensor& bias,
                   const OptTensor& valid) {
  refuse_tangents({x, bias});
  const Tensor b = defined_or_not(bias);
  if (!torch::autograd::compute_requires_grad(x, b)) {
    return below_autograd(ops(F).glu_forward, x, dim, function, layout, alpha, limit, bias,
                          valid);
  }
  return GluForwardFunction<F>::apply(x, bias, valid,
                                      PackedCallArgs{dim, function, layout, alpha, limit});
}

template <Family F>
Tensor glu_backward(const Tensor& grad_out, const Tensor& x, int64_t dim,
                    std::string_view function, std::string_view layout, double alpha,
                    double limit, const OptTensor& bias, const OptTensor& valid) {
  refuse_tangents({grad_out, x, bias});
  const Tensor b = defined_or_not(bias);
  if (!torch::autograd::compute_requires_grad(grad_out, x, b)) {
    return below_autograd(ops(F).glu_backward, grad_out, x, dim, function, layout, alpha, limit,
                          bias, valid);
  }
  return GluBackwardFunction<F>::apply(grad_out, x, bias, valid,
                                       PackedCallArgs{dim, function, layout, alpha, limit});
}

template <Family F>
std::tuple<Tensor, Tensor> glu_backward_bias(const Tensor& grad_out, const Tensor& x,
                                             int64_t dim, std::string_view function,
                                             std::string_view layout, double alpha,
                                             double limit, const OptTensor& bias,
                                             const OptTensor& valid) {
  refuse_tangents({grad_out, x, bias});
  const Tensor b = defined_or_not(bias);
  if (!torch::autograd::compute_requires_grad(grad_out, x, b)) {
    return below_autograd(ops(F).glu_backward_bias, grad_out, x, dim, function, layout, alpha,
                          limit, bias, valid);
  }
  const auto grads = GluBackwardBiasFunction<F>::apply(
      grad_out, x, bias, valid, PackedCallArgs{dim, function, layout, alpha, limit});
  return {grads[0], grads[1]};
}

template <Family F>
Tensor gated_forward(const Tensor& gate, const Tensor& value, std::string_view activation,
                     const OptTensor& gate_bias, const OptTensor& value_bias,
                     const OptTensor& valid) {
  refuse_tangents({gate, value, gate_bias, value_bias});
  const Tensor gb = defined_or_not(gate_bias), vb = defined_or_not(value_bias);
  if (!torch::autograd::compute_requires_grad(gate, value, gb, vb)) {
    return below_autograd(ops(F).gated_forward, gate, value, activation, gate_bias, value_bias,
                          valid);
  }
  return GatedForwardFunction<F>::apply(gate, value, gate_bias, value_bias, valid, activation);
}

template <Family F>
std::tuple<Tensor, Tensor> gated_backward(const Tensor& grad_out, const Tensor& gate,
                                          const Tensor& value, std::string_view activation,
                                          const OptTensor& gate_bias, const OptTensor& value_bias,
                                          const OptTensor& valid) {
  refuse_tangents({grad_out, gate, value, gate_bias, value_bias});
  const Tensor gb = defined_or_not(gate_bias), vb = defined_or_not(value_bias);
  if (!torch::autograd::compute_requires_grad(grad_out, gate, value, gb, vb)) {
    return below_autograd(ops(F).gated_backward, grad_out, gate, value, activation, gate_bias,
                          value_bias, valid);
  }
  const auto grads = GatedBackwardFunction<F>::apply(grad_out, gate, value, gate_bias,
                                                     value_bias, valid, activation);
  return {grads[0], grads[1]};
}

template <Family F>
std::tuple<Tensor, Tensor, Tensor, Tensor> gated_backward_bias(
    const Tensor& grad_out, const Tensor& gate, const Tensor& value, std::string_view activation,
    const OptTensor& gate_bias, const OptTensor& value_bias, const OptTensor& valid) {
  refuse_tangents({grad_out, gate, value, gate_bias, value_bias});
  const Tensor gb = defined_or_not(gate_bias), vb = defined_or_not(value_bias);
  if (!torch::autograd::compute_requires_grad(grad_out, gate, value, gb, vb)) {
    return below_autograd(ops(F).gated_backward_bias, grad_out, gate, value, activation,
                          gate_bias, value_bias, valid);
  }
  const auto g = GatedBackwardBiasFunction<F>::apply(grad_out, gate, value, gate_bias,
                                                         value_bias, valid, activation);
  return {g[0], g[1], g[2], g[3]};
}

// The in-place op serves backward passes (GatedMLP's): it is not differentiable, and it bumps
// the version of what it overwrites, so that autograd refuses a graph that saved it.
void refuse_gradients(bool requires_grad) {
  TORCH_CHECK(!requires_grad,
              "glu_fused: the in-place backward op is not differentiable; use gated_backward "
              "where a gradient of the gradient is wanted");
}

template <Family F>
void gated_backward_in_place(const Tensor& grad_out, const Tensor& gate, const Tensor& value,
                             std::string_view activation) {
  refuse_gradients(torch::autograd::compute_requires_grad(grad_out, gate, value));
  below_autograd(ops(F).gated_backward_in_place, grad_out, gate, value, activation);
  for (const Tensor& t : {grad_out, gate, value}) torch::autograd::impl::bump_version(t);
}

template <Family F>
std::tuple<Tensor, Tensor> gated_backward_in_place_bias(const Tensor& grad_out, const Tensor& gate,
                                                        const Tensor& value,
                                                        std::string_view activation) {
  refuse_gradients(torch::autograd::compute_requires_grad(grad_out, gate, value));
  auto grads =
      below_autograd(ops(F).gated_backward_in_place_bias, grad_out, gate, value, activation);
  for (const Tensor& t : {grad_out, gate, value}) torch::autograd::impl::bump_version(t);
  return grads;
}

template <Family F>
void impl_autograd(torch::Library& m) {
  const std::string prefix = kFamilyPrefixes[static_cast<int>(F)];
  m.impl((prefix + "glu_forward").c_str(), &glu_forward<F>);
  m.impl((prefix + "glu_backward").c_str(), &glu_backward<F>);
  m.impl((prefix + "gated_forward").c_str(), &gated_forward<F>);
  m.impl((prefix + "gated_backward").c_str(), &gated_backward<F>);
  m.impl((prefix + "glu_backward_bias").c_str(), &glu_backward_bias<F>);
  m.impl((prefix + "gated_backward_bias").c_str(), &gated_backward_bias<F>);
  m.impl((prefix + "gated_backward_in_place").c_str(), &gated_backward_in_place<F>);
  m.impl((prefix + "gated_backward_in_place_bias").c_str(), &gated_backward_in_place_bias<F>);
}

}  // namespace

TORCH_LIBRARY_IMPL(glu_fused, Autograd, m) {
  impl_autograd<Family::Native>(m);
  impl_autograd<Family::Triton>(m);
}

}  // namespace glu_fused
