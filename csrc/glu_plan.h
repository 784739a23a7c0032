// One op call planned before anything runs: its arguments checked (the errors every backend
// raises), its results allocated, and where the kernels read and write described as
// PairLayouts. The CPU and CUDA kernels carry a plan out (glu_ops.cpp); the Triton
// kernels get the same plan through the Python module (glu_python.cpp), so a call is
// checked and laid out by this one file whichever backend runs it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <string_view>
#include <vector>

#include "glu_functions.h"
#include "glu_kernels.h"

namespace glu_fused {

// A switch of the environment, as the extension reads them once, when it loads: set and not "0".
bool env_flag(const char* name);

// Table lookups: a ValueError naming the choices for an unknown name.
const PackedFunction& packed_function(std::string_view name);
Activation gate_activation(std::string_view name);
bool is_interleaved(std::string_view layout);

// The checked arguments of a packed op: dim made non-negative, and its function and layout.
struct PackedArgs {
  int64_t dim;
  const PackedFunction* function;
  bool interleaved;
  ActivationCall op;
};

// Checks in the order the reference (glu_fused/_checks.py) does, with the same messages:
// function, dtype, layout, dim. Shapes are read symbolically, so fake tensors with dynamic
// shapes (torch.compile) are checked by the same code.
PackedArgs check_packed(const at::Tensor& x, int64_t dim, std::string_view function,
                        std::string_view layout, double alpha, double limit);
void check_packed_grad(const at::Tensor& grad_out, const at::Tensor& x, int64_t dim);
ActivationCall check_gated(const at::Tensor& gate, const at::Tensor& value,
                           std::string_view activation);
// grad_out against gate; with bias_grad, also that there is a last dim to sum the bias over.
void check_gated_grad(const at::Tensor& grad_out, const at::Tensor& gate, bool bias_grad = false);

// ---- bias and token counts (docs/contract.md, "Bias and token counts") --------------------

// A call's optional bias and token-count arguments, as the ops take them. Packed ops have one
// bias, in x's layout along the split (last) dim; gated ones a gate_bias and a value_bias.
struct RowArgs {
  std::optional<at::Tensor> bias;  // packed
  std::optional<at::Tensor> gate_bias, value_bias;  // gated
  std::optional<at::Tensor> valid_tokens;
  bool any() const { return bias || gate_bias || value_bias || valid_tokens; }
};

// The checks of RowArgs against a packed call's x (dim checked, non-negative) or a gated
// call's gate, in the reference's order and words (glu_fused/_checks.py, check_rows).
void check_packed_rows(const RowArgs& rows, const at::Tensor& x, int64_t dim);
void check_gated_rows(const RowArgs& rows, const at::Tensor& gate);

// The bias and counts as the kernels take them, with the tensors they point into.
struct RowPlan {
  RowOptions options;
  at::Tensor gate_bias, value_bias, valid_tokens;  // what options point into
  int64_t gate_bias_offset = 0, value_bias_offset = 0;
  // The bias gradient: per-tile partial sums (BackwardCall::bias_grad_partials), and how
  // to lay their sums out as the bias (packed: x's halves or pairs, gate maybe second).
  at::Tensor partials;
  bool packed = false, interleaved = false, gate_is_second = false;
  void point(RowOptions& into) const;
  // The bias gradients from the partials, summed over the tiles in order: the packed bias's
  // (one tensor) or gated's (gate_bias's, value_bias's), in the bias's dtype.
  std::vector<at::Tensor> bias_grads(at::ScalarType dtype) const;
};

// x's shape with `dim` halved: the packed forward's result.
std::vector<c10::SymInt> halved_shape(const at::Tensor& x, int64_t dim);

// A tensor that a kernel reads or writes from `offset` elements past its data pointer.
struct Operand {
  at::Tensor tensor;
  int64_t offset = 0;
  const void* data() const;
  void* mutable_data() const;
};

struct ForwardPlan {
  at::Tensor out;
  ActivationCall op;
  PairLayout in;
  Operand gate, value;
  RowPlan rows;
  bool empty() const { return out.numel() == 0; }
  ForwardCall call() const;
};

struct BackwardPlan {
  at::Tensor grad_first, grad_second;  // packed: grad_x and undefined; gated: grad_gate, grad_value
  ActivationCall op;
  PairLayout in;
  Operand gate, value;
  at::Tensor grad_out;  // contiguous
  PairLayout grad_in;
  Operand grad_gate, grad_value;
  at::Tensor out;  // the in-place form: where act(gate) * value is written (grad_out itself)
  RowPlan rows;
  bool empty() const { return in.numel() == 0; }
  BackwardCall call() const;
};

// `rows`: the bias and token counts; `bias_grad`: the backward also sums the bias gradient's
// partials (rows.partials), which RowPlan::bias_grads turns into the gradients.
ForwardPlan plan_glu_forward(const at::Tensor& x, int64_t dim, std::string_view function,
                             std::string_view layout, double alpha, double limit,
                             const RowArgs& rows = {});
BackwardPlan plan_glu_backward(const at::Tensor& grad_out, const at::Tensor& x, int64_t dim,
                               std::string_view function, std::string_view layout, double alpha,
                               double limit, const RowArgs& rows = {}, bool bias_grad = false);
ForwardPlan plan_gated_forward(const at::Tensor& gate, const at::Tensor& value,
                               std::string_view activation, const RowArgs& rows = {});
BackwardPlan plan_gated_backward(const at::Tensor& grad_out, const at::Tensor& gate,
                                 const at::Tensor& value, std::string_view activation,
                                 const RowArgs& rows = {}, bool bias_grad = false);

// The in-place backward: act(gate) * value written over grad_out, the gradients over gate and
// value. The tensors must be read in place (no copy), distinct and without internal overlap:
// rows of a last dim of stride 1, or gate and value interleaved in one buffer (the halves or
// the even and odd positions of a packed projection). With bias_grad the kernel also sums
// the gradients' partials (rows.partials): the gradients of a bias that gate and value
// already hold (GatedMLP's projections' biases), which RowPlan::bias_grads gives.
BackwardPlan plan_gated_backward_in_place(const at::Tensor& grad_out, const at::Tensor& gate,
                                         const at::Tensor& value, std::string_view activation,
                                         bool bias_grad = false);

// ---- FP8 output (docs/contract.md, "FP8 output") ------------------------------------------

// The FP8 arguments as the ops take them (glu_fused/_fp8.py, Fp8Args, fills the defaults).
struct Fp8Options {
  at::ScalarType out_dtype;
  std::string_view granularity;
  int64_t group_size;
  at::ScalarType scale_dtype;
  std::string_view scale_rounding;
  std::string_view scale_layout;
  std::string_view intermediate;
  double eps;
  std::optional<at::Tensor> scale;
};

// A quantized forward planned: the inputs as the plain forward reads them, q, and the
// kernels' float32 scales, which `result_scales` turns into the scale dtype and layout.
struct Fp8Plan {
  ForwardPlan inputs;  // inputs.out stays undefined
  Fp8Options options;
  Fp8Call settings;    // the call's kind, rule, block and rounding
  at::Tensor q;
  at::Tensor scales;   // float32, dense: [..., n_blocks] or [1]
  bool empty() const { return q.numel() == 0; }
  Fp8Call call() const;
  at::Tensor result_scales() const;
};

Fp8Plan plan_glu_forward_fp8(const at::Tensor& x, int64_t dim, std::string_view function,
                             std::string_view layout, double alpha, double limit,
                             const Fp8Options& options, const RowArgs& rows = {});
Fp8Plan plan_gated_forward_fp8(const at::Tensor& gate, const at::Tensor& value,
                               std::string_view activation, const Fp8Options& options,
                               const RowArgs& rows = {});

// Meta: (q, scales) of the right shapes, strides and dtypes after the same checks.
// gated()'s quantized dim, the last: a 0-dimensional pair has none (an error).
int64_t gated_fp8_dim(const at::Tensor& gate);

std::tuple<at::Tensor, at::Tensor> fp8_results_meta(const at::Tensor& like,
                                                    std::vector<c10::SymInt> out_shape,
                                                    int64_t dim, const Fp8Options& options);

}  // namespace glu_fused
