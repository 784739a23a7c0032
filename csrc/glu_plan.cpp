#include "glu_plan.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>

namespace glu_fused {
namespace {

using at::Tensor;

// Messages read as the reference's (Python) do: shapes as tuples, dtypes as torch.float32,
// choices as a tuple of quoted names.
std::string python_shape(c10::SymIntArrayRef shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

std::string python_dtype(at::ScalarType type) {
  return "torch." + std::string(c10::getDtypeNames(type).first);
}

template <typename Entries, typename Name>
std::string python_choices(const Entries& entries, Name name) {
  std::string out = "(";
  bool first = true;
  for (const auto& entry : entries) {
    out += (first ? "'" : ", '") + std::string(name(entry)) + "'";
    first = false;
  }
  return out + ")";
}

[[noreturn]] void unknown(const char* what, std::string_view name, const std::string& choices) {
  TORCH_CHECK_VALUE(false, "glu_fused: unknown ", what, " '", name, "'; expected one of ",
                    choices);
}

ScalarKind scalar_kind(const Tensor& t, const char* name) {
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
      TORCH_CHECK_TYPE(false, "glu_fused: ", name,
                       " must be float16, bfloat16, float32 or float64, got ",
                       python_dtype(t.scalar_type()));
  }
}

int64_t split_dim(const Tensor& x, int64_t dim) {
  const int64_t rank = x.dim();
  TORCH_CHECK_VALUE(rank > 0, "glu_fused: cannot split a 0-dimensional tensor");
  TORCH_CHECK_VALUE(dim >= -rank && dim < rank, "glu_fused: dim ", dim,
                    " is out of range for a tensor of ", rank, " dimensions");
  dim = dim < 0 ? dim + rank : dim;
  const c10::SymInt& size = x.sym_size(dim);
  TORCH_CHECK_VALUE(size % 2 == 0, "glu_fused: the size along dim ", dim,
                    " must be even to split it in two, got ", size);
  return dim;
}

void check_same(const Tensor& a, const Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK_VALUE(a.sym_sizes() == b.sym_sizes(), "glu_fused: ", a_name, " and ", b_name,
                    " must have the same shape, got ", python_shape(a.sym_sizes()), " and ",
                    python_shape(b.sym_sizes()));
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), "glu_fused: ", a_name, " and ", b_name,
                    " must have the same dtype, got ", python_dtype(a.scalar_type()), " and ",
                    python_dtype(b.scalar_type()));
  TORCH_CHECK_VALUE(a.device() == b.device(), "glu_fused: ", a_name, " and ", b_name,
                    " must have the same device, got ", a.device(), " and ", b.device());
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

// Where the gate and value of a packed tensor live (see glu_layout.h): in `x` itself, or in a
// contiguous copy where its layout is not one the kernels walk directly.
struct Pairs {
  Tensor base;
  int64_t gate_offset = 0;
  int64_t value_offset = 0;
  PairLayout layout;
};

Pairs packed_pairs(const Tensor& input, int64_t dim, bool interleaved, bool gate_is_second) {
  Tensor x = input;
  const int64_t half = x.size(dim) / 2;
  int64_t outer, outer_stride, inner, inner_stride;
  const bool direct = collapse(x, 0, dim, outer, outer_stride) &&
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
  return {x, gate_is_second ? second : 0, gate_is_second ? 0 : second, layout};
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

// $GLU_FUSED_POISON_OUTPUTS: every result is filled with NaN before its kernel runs, so a test
// sees any element a kernel forgets to write.
const bool kPoisonOutputs = env_flag("GLU_FUSED_POISON_OUTPUTS");

// A large CPU result's whole 2 MiB pages are asked to be transparent huge pages (Linux, where
// THP is "madvise", the common setting; a no-op under "always" and "never"). A fresh buffer
// pays a page fault per 4 KiB on its first touch, which on a VM costs more than the kernel's
// writes: a fresh 32 MiB buffer took 7.0 ms to fill against 2.9 ms in huge pages, and the
// float32 GLU backward of [1024, 8192] 15.8 ms against 6.0 ms advised. torch does this for every
// allocation under THP_MEM_ALLOC_ENABLE=1; ours do it for the results our kernels write
// whole, which fill the pages they are given. The price: where free memory is fragmented,
// the kernel may compact it on such a fault (THP's "defrag" setting); $GLU_FUSED_HUGE_PAGES=0
// leaves the results' memory as the allocator gives it.
const bool kHugePages = [] {
  const char* value = std::getenv("GLU_FUSED_HUGE_PAGES");
  return value == nullptr || std::string_view(value) != "0";
}();

void advise_huge_pages(const Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (!kHugePages || !t.is_cpu() || t.nbytes() < 2 * kHugePage) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

Tensor new_result(at::IntArrayRef shape, const Tensor& like) {
  Tensor out = at::empty(shape, like.options());
  advise_huge_pages(out);
  if (kPoisonOutputs) out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

}  // namespace

bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::string_view(value) != "0";
}

const PackedFunction& packed_function(std::string_view name) {
  for (const auto& f : kPackedFunctions) {
    if (name == f.name) return f;
  }
  unknown("function", name, python_choices(kPackedFunctions, [](auto& f) { return f.name; }));
}

Activation gate_activation(std::string_view name) {
  for (const auto& a : kGateActivations) {
    if (name == a.name) return a.activation;
  }
  unknown("activation", name, python_choices(kGateActivations, [](auto& a) { return a.name; }));
}

bool is_interleaved(std::string_view layout) {
  if (layout == kLayouts[0]) return false;
  if (layout == kLayouts[1]) return true;
  unknown("layout", layout, python_choices(kLayouts, [](const char* l) { return l; }));
}

PackedArgs check_packed(const Tensor& x, int64_t dim, std::string_view function,
                        std::string_view layout, double alpha, double limit) {
  const PackedFunction& f = packed_function(function);
  const ScalarKind kind = scalar_kind(x, "x");
  const bool interleaved = is_interleaved(layout);
  return {split_dim(x, dim), &f, interleaved, {kind, f.activation, alpha, limit}};
}

void check_packed_grad(const Tensor& grad_out, const Tensor& x, int64_t dim) {
  const auto expected = halved_shape(x, dim);
  TORCH_CHECK_VALUE(grad_out.sym_sizes() == c10::SymIntArrayRef(expected),
                    "glu_fused: grad_out has shape ", python_shape(grad_out.sym_sizes()),
                    ", expected ", python_shape(expected));
  TORCH_CHECK_VALUE(
      grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(),
      "glu_fused: grad_out must match the input's dtype and device");
}

ActivationCall check_gated(const Tensor& gate, const Tensor& value, std::string_view activation) {
  const ScalarKind kind = scalar_kind(gate, "gate");
  scalar_kind(value, "value");
  check_same(gate, value, "gate", "value");
  return {kind, gate_activation(activation), 0.0, 0.0};
}

void check_gated_grad(const Tensor& grad_out, const Tensor& gate, bool bias_grad) {
  check_same(grad_out, gate, "grad_out", "gate");
  TORCH_CHECK_VALUE(!bias_grad || gate.dim() > 0,
                    "glu_fused: a bias gradient needs gate and value of at least one dim");
}

std::vector<c10::SymInt> halved_shape(const Tensor& x, int64_t dim) {
  auto shape = x.sym_sizes().vec();
  shape[dim] = shape[dim] / 2;
  return shape;
}

// ---- bias and token counts ----------------------------------------------------------------
namespace {

void check_bias(const Tensor& b, const char* name, const Tensor& x, const char* x_name,
                const c10::SymInt& size) {
  TORCH_CHECK_VALUE(b.dim() == 1 && b.sym_size(0) == size, "glu_fused: ", name,
                    " must have shape (", size, ",), got ", python_shape(b.sym_sizes()));
  TORCH_CHECK_VALUE(b.scalar_type() == x.scalar_type(), "glu_fused: ", name, " must have ",
                    x_name, "'s dtype ", python_dtype(x.scalar_type()), ", got ",
                    python_dtype(b.scalar_type()));
  TORCH_CHECK_VALUE(b.device() == x.device(), "glu_fused: ", name, " must be on ", x_name,
                    "'s device ", x.device(), ", got ", b.device());
}

// Token counts: x is [experts, tokens, features] (split or gated along the last dim), the
// counts int32 [experts] on x's device, each in [0, tokens]. The values are checked where
// they can be read without a synchronization: on the CPU. A GPU kernel takes a count above
// the tokens as all of them and one below 0 as none (csrc/glu_kernels.h, RowOptions).
void check_valid_tokens(const Tensor& v, const Tensor& x, const char* x_name, int64_t dim) {
  TORCH_CHECK_VALUE(x.dim() == 3 && dim == 2, "glu_fused: valid_tokens counts the rows of ",
                    x_name, " shaped [experts, tokens, features], split along the last dim; got ",
                    x.dim(), " dimensions, dim ", dim);
  TORCH_CHECK_VALUE(v.scalar_type() == at::kInt, "glu_fused: valid_tokens must be torch.int32, got ",
                    python_dtype(v.scalar_type()));
  const c10::SymInt experts = x.sym_size(0);
  TORCH_CHECK_VALUE(v.dim() == 1 && v.sym_size(0) == experts, "glu_fused: valid_tokens must have shape (",
                    experts, ",), got ", python_shape(v.sym_sizes()));
  TORCH_CHECK_VALUE(v.device() == x.device(), "glu_fused: valid_tokens must be on ", x_name,
                    "'s device ", x.device(), ", got ", v.device());
  if (!v.is_cpu()) return;
  const Tensor counts = v.contiguous();
  const int* c = counts.const_data_ptr<int>();
  const int64_t tokens = x.size(1);
  for (int64_t e = 0; e < counts.numel(); ++e) {
    TORCH_CHECK_VALUE(c[e] >= 0 && c[e] <= tokens, "glu_fused: valid_tokens must lie in [0, ",
                      tokens, "], got ", c[e], " for expert ", e);
  }
}

}  // namespace

void check_packed_rows(const RowArgs& rows, const Tensor& x, int64_t dim) {
  if (rows.bias) {
    TORCH_CHECK_VALUE(dim == x.dim() - 1, "glu_fused: a bias is added along the last dim; split "
                      "along it, got dim ", dim);
    check_bias(*rows.bias, "bias", x, "x", x.sym_size(dim));
  }
  if (rows.valid_tokens) check_valid_tokens(*rows.valid_tokens, x, "x", dim);
}

void check_gated_rows(const RowArgs& rows, const Tensor& gate) {
  if (rows.gate_bias || rows.value_bias) {
    TORCH_CHECK_VALUE(gate.dim() > 0, "glu_fused: a bias is added along the last dim; a "
                      "0-dimensional tensor has none");
  }
  if (rows.gate_bias) check_bias(*rows.gate_bias, "gate_bias", gate, "gate", gate.sym_size(-1));
  if (rows.value_bias) check_bias(*rows.value_bias, "value_bias", gate, "gate", gate.sym_size(-1));
  if (rows.valid_tokens) check_valid_tokens(*rows.valid_tokens, gate, "gate", gate.dim() - 1);
}

void RowPlan::point(RowOptions& into) const {
  into = options;
  if (gate_bias.defined()) {
    const auto at = [](const Tensor& t, int64_t offset) {
      return static_cast<const char*>(t.const_data_ptr()) + offset * t.element_size();
    };
    into.gate_bias = at(gate_bias, gate_bias_offset);
    into.value_bias = at(value_bias, value_bias_offset);
  }
  if (valid_tokens.defined()) into.valid_rows = valid_tokens.const_data_ptr<int>();
}

namespace {

// The partials summed over their tiles, in tile order: [2, run_len] of their type. On the
// CPU a loop of ours; elsewhere a reduction over dim 0, deterministic for a given shape.
template <typename T>
void sum_tiles_cpu(const Tensor& partials, Tensor& sums) {
  const int64_t tiles = partials.size(0), width = sums.numel();
  const T* p = partials.const_data_ptr<T>();
  T* out = sums.mutable_data_ptr<T>();
  at::parallel_for(0, width, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t t = 0; t < tiles; ++t) {
      const T* row = p + t * width;
      for (int64_t c = begin; c < end; ++c) out[c] += row[c];
    }
  });
}

Tensor sum_tiles(const Tensor& partials) {
  if (!partials.is_cpu()) return partials.sum(0);
  Tensor sums = at::zeros({2, partials.size(2)}, partials.options());
  if (partials.scalar_type() == at::kDouble) {
    sum_tiles_cpu<double>(partials, sums);
  } else {
    sum_tiles_cpu<float>(partials, sums);
  }
  return sums;
}

}  // namespace

std::vector<Tensor> RowPlan::bias_grads(at::ScalarType dtype) const {
  const Tensor sums = sum_tiles(partials);
  const Tensor gate = sums[0], value = sums[1];
  // Copies: the op's results must not share the sums' storage.
  if (!packed) return {gate.to(dtype, false, true), value.to(dtype, false, true)};
  const Tensor first = gate_is_second ? value : gate;
  const Tensor second = gate_is_second ? gate : value;
  const Tensor bias = interleaved ? at::stack({first, second}, 1).flatten() : at::cat({first, second});
  return {bias.to(dtype)};
}

const void* Operand::data() const {
  return static_cast<const char*>(tensor.const_data_ptr()) + offset * tensor.element_size();
}

void* Operand::mutable_data() const {
  return static_cast<char*>(tensor.mutable_data_ptr()) + offset * tensor.element_size();
}

ForwardCall ForwardPlan::call() const {
  ForwardCall call{op, in, gate.data(), value.data(), out.mutable_data_ptr()};
  rows.point(call.rows);
  return call;
}

BackwardCall BackwardPlan::call() const {
  BackwardCall call{op,
                    in,
                    gate.data(),
                    value.data(),
                    grad_out.const_data_ptr(),
                    grad_in,
                    grad_gate.mutable_data(),
                    grad_value.mutable_data(),
                    out.defined() ? out.mutable_data_ptr() : nullptr};
  rows.point(call.rows);
  if (rows.partials.defined()) call.bias_grad_partials = rows.partials.mutable_data_ptr();
  return call;
}

namespace {

// A token's scale, a bias's column and a count's row all need runs that are rows: where a
// run holds several rows (gated's contiguous inputs are one run), it is split into them.
void split_into_rows(PairLayout& in, int64_t row_len) {
  if (in.run_len == row_len) return;
  TORCH_INTERNAL_ASSERT(in.runs_per_outer == 1 && in.run_len % row_len == 0);
  const int64_t rows_per_run = in.run_len / row_len;
  in.runs_per_outer = rows_per_run;
  in.run_stride = row_len * in.elem_stride;
  in.runs *= rows_per_run;
  in.run_len = row_len;
}

// The bias and counts of a call whose layout `in` has one run per row of the result (made so
// here), `like` its (first) input. Packed: the bias is read as x's pairs are.
RowPlan plan_rows(const RowArgs& a, const Tensor& like, PairLayout& in, bool packed,
                  bool interleaved, bool gate_is_second) {
  RowPlan rows;
  rows.packed = packed;
  rows.interleaved = interleaved;
  rows.gate_is_second = gate_is_second;
  if (!a.any() || in.numel() == 0) return rows;
  const int64_t row_len = like.size(-1) / (packed ? 2 : 1);
  split_into_rows(in, row_len);
  if (a.bias) {
    const Pairs pairs = packed_pairs(a.bias->contiguous().view({1, 2 * row_len}), 1,
                                     interleaved, gate_is_second);
    rows.gate_bias = rows.value_bias = pairs.base;
    rows.gate_bias_offset = pairs.gate_offset;
    rows.value_bias_offset = pairs.value_offset;
  } else if (a.gate_bias || a.value_bias) {
    const auto or_zeros = [&](const std::optional<Tensor>& b) {
      return b ? b->contiguous() : at::zeros({row_len}, like.options());
    };
    rows.gate_bias = or_zeros(a.gate_bias);
    rows.value_bias = or_zeros(a.value_bias);
  }
  if (a.valid_tokens) {
    rows.valid_tokens = a.valid_tokens->contiguous();
    rows.options.rows_per_group = like.size(1);
  }
  return rows;
}

// The backward's bias partials (BackwardCall::bias_grad_partials): [tiles, 2, row_len].
void plan_bias_partials(RowPlan& rows, const Tensor& like, const PairLayout& in, int64_t row_len) {
  const int64_t tiles = (in.runs + kBiasTileRows - 1) / kBiasTileRows;
  const auto compute = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  rows.partials = at::empty({tiles, 2, row_len}, like.options().dtype(compute));
  if (kPoisonOutputs) rows.partials.fill_(std::numeric_limits<double>::quiet_NaN());
}

// A backward's rows (its layouts planned, unless the call is empty): the bias and counts,
// the gradients' layout split into rows like the inputs', and with bias_grad the partials,
// for rows of row_len (none for an empty call, whose bias gradient is then zeros).
void plan_backward_rows(BackwardPlan& plan, const RowArgs& rows, const Tensor& like,
                        int64_t row_len, bool packed, bool interleaved, bool gate_is_second,
                        bool bias_grad) {
  plan.rows = plan_rows(rows, like, plan.in, packed, interleaved, gate_is_second);
  if (rows.any() && like.numel() != 0) split_into_rows(plan.grad_in, plan.in.run_len);
  if (bias_grad) plan_bias_partials(plan.rows, like, plan.in, row_len);
}

}  // namespace

ForwardPlan plan_glu_forward(const Tensor& x, int64_t dim, std::string_view function,
                             std::string_view layout, double alpha, double limit,
                             const RowArgs& rows) {
  const PackedArgs args = check_packed(x, dim, function, layout, alpha, limit);
  check_packed_rows(rows, x, args.dim);
  ForwardPlan plan;
  plan.op = args.op;
  plan.out = new_result(c10::asIntArrayRefUnchecked(halved_shape(x, args.dim)), x);
  if (plan.empty()) return plan;
  const bool second = args.function->gate_is_second;
  const Pairs pairs = packed_pairs(x, args.dim, args.interleaved, second);
  plan.in = pairs.layout;
  plan.gate = {pairs.base, pairs.gate_offset};
  plan.value = {pairs.base, pairs.value_offset};
  plan.rows = plan_rows(rows, x, plan.in, true, args.interleaved, second);
  return plan;
}

BackwardPlan plan_glu_backward(const Tensor& grad_out, const Tensor& x, int64_t dim,
                               std::string_view function, std::string_view layout, double alpha,
                               double limit, const RowArgs& rows, bool bias_grad) {
  const PackedArgs args = check_packed(x, dim, function, layout, alpha, limit);
  check_packed_grad(grad_out, x, args.dim);
  check_packed_rows(rows, x, args.dim);
  TORCH_INTERNAL_ASSERT(!bias_grad || rows.bias);
  BackwardPlan plan;
  plan.op = args.op;
  plan.grad_first = new_result(x.sizes(), x);
  const bool second = args.function->gate_is_second;
  if (x.numel() != 0) {
    const Pairs in = packed_pairs(x, args.dim, args.interleaved, second);
    const Pairs grad = packed_pairs(plan.grad_first, args.dim, args.interleaved, second);
    plan.in = in.layout;
    plan.gate = {in.base, in.gate_offset};
    plan.value = {in.base, in.value_offset};
    plan.grad_out = grad_out.contiguous();
    plan.grad_in = grad.layout;
    plan.grad_gate = {plan.grad_first, grad.gate_offset};
    plan.grad_value = {plan.grad_first, grad.value_offset};
  }
  plan_backward_rows(plan, rows, x, x.size(-1) / 2, true, args.interleaved, second, bias_grad);
  return plan;
}

namespace {

// gate and value as two tensors that share one layout (copies where they do not).
PairLayout gated_layout(Tensor& gate, Tensor& value) {
  PairLayout layout;
  if (gate.strides() == value.strides() && rows_layout(gate, layout)) return layout;
  gate = gate.contiguous();
  value = value.contiguous();
  rows_layout(gate, layout);
  return layout;
}

}  // namespace

ForwardPlan plan_gated_forward(const Tensor& gate_in, const Tensor& value_in,
                               std::string_view activation, const RowArgs& rows) {
  ForwardPlan plan;
  plan.op = check_gated(gate_in, value_in, activation);
  check_gated_rows(rows, gate_in);
  plan.out = new_result(gate_in.sizes(), gate_in);
  if (plan.empty()) return plan;
  Tensor gate = gate_in, value = value_in;
  plan.in = gated_layout(gate, value);
  plan.gate = {gate};
  plan.value = {value};
  plan.rows = plan_rows(rows, gate, plan.in, false, false, false);
  return plan;
}

BackwardPlan plan_gated_backward(const Tensor& grad_out, const Tensor& gate_in,
                                 const Tensor& value_in, std::string_view activation,
                                 const RowArgs& rows, bool bias_grad) {
  BackwardPlan plan;
  plan.op = check_gated(gate_in, value_in, activation);
  check_gated_grad(grad_out, gate_in);
  check_gated_rows(rows, gate_in);
  TORCH_INTERNAL_ASSERT(!bias_grad || rows.gate_bias || rows.value_bias);
  plan.grad_first = new_result(gate_in.sizes(), gate_in);
  plan.grad_second = new_result(gate_in.sizes(), gate_in);
  if (gate_in.numel() != 0) {
    Tensor gate = gate_in, value = value_in;
    plan.in = gated_layout(gate, value);
    plan.gate = {gate};
    plan.value = {value};
    plan.grad_out = grad_out.contiguous();
    // The gradients are dense: the same rows, one after another.
    plan.grad_in = plan.in;
    plan.grad_in.outer_stride = plan.in.run_len;
    plan.grad_gate = {plan.grad_first};
    plan.grad_value = {plan.grad_second};
  }
  const int64_t row_len = gate_in.dim() ? gate_in.size(-1) : 0;
  plan_backward_rows(plan, rows, gate_in, row_len, false, false, false, bias_grad);
  return plan;
}

namespace {

// The in-place form writes into grad_out and the inputs: each must be one tensor's own,
// non-overlapping memory, and grad_out dense like the result it receives.
void check_in_place(const Tensor& grad_out, std::initializer_list<Tensor> inputs) {
  TORCH_CHECK_VALUE(grad_out.is_contiguous(),
                    "glu_fused: the in-place backward writes the result over grad_out, which "
                    "must be contiguous");
  at::assert_no_internal_overlap(grad_out);
  for (const Tensor& t : inputs) {
    at::assert_no_internal_overlap(t);
    at::assert_no_overlap(grad_out, t);
  }
}

// Gate and value alternating in one buffer (the even and odd positions of a packed
// projection, as views): one run per row of pairs, elem_stride 2.
bool pairs_layout(const Tensor& gate, const Tensor& value, PairLayout& layout) {
  const int64_t apart = static_cast<const char*>(value.const_data_ptr()) -
                        static_cast<const char*>(gate.const_data_ptr());
  int64_t rows, row_stride;
  if (gate.stride(-1) != 2 || std::abs(apart) != gate.element_size() ||
      !collapse(gate, 0, gate.dim() - 1, rows, row_stride)) {
    return false;
  }
  layout.runs = rows;
  layout.run_len = gate.size(-1);
  layout.outer_stride = row_stride;
  layout.elem_stride = 2;
  return true;
}

const char* kNotInPlace =
    "glu_fused: the in-place backward writes the gradients over the inputs, which must be "
    "read where they are: split along a last dim of stride 1 (rows of any stride), or along "
    "any dim of a contiguous tensor; gate and value of one shape and strides";

}  // namespace

BackwardPlan plan_gated_backward_in_place(const Tensor& grad_out, const Tensor& gate,
                                         const Tensor& value, std::string_view activation,
                                         bool bias_grad) {
  BackwardPlan plan;
  plan.op = check_gated(gate, value, activation);
  check_gated_grad(grad_out, gate, bias_grad);
  check_in_place(grad_out, {gate, value});
  at::assert_no_overlap(gate, value);
  if (gate.numel() != 0) {
    TORCH_CHECK_VALUE(gate.strides() == value.strides() &&
                          (rows_layout(gate, plan.in) || pairs_layout(gate, value, plan.in)),
                      kNotInPlace);
    plan.gate = plan.grad_gate = {gate};
    plan.value = plan.grad_value = {value};
    plan.grad_out = plan.out = grad_out;
    // The bias gradient's partials are a tile of rows each: one run per row.
    if (bias_grad) split_into_rows(plan.in, gate.size(-1));
    plan.grad_in = plan.in;
  }
  // An empty call's partials are [0, 2, row_len]: its bias gradients are zeros.
  if (bias_grad) plan_bias_partials(plan.rows, gate, plan.in, gate.size(-1));
  return plan;
}

}  // namespace glu_fused

// ---- FP8 output ------------------------------------------------------------------------
namespace glu_fused {
namespace {

struct Fp8Format {
  at::ScalarType dtype;
  Fp8Kind kind;
  float max;
  int emax;
};

// glu_fused/_fp8.py's FP8_FORMATS, in its order (its error messages list them so).
constexpr Fp8Format kFp8Formats[] = {
    {at::kFloat8_e4m3fn, Fp8Kind::E4M3, 448.0f, 8},
    {at::kFloat8_e5m2, Fp8Kind::E5M2, 57344.0f, 15},
    {at::kFloat8_e4m3fnuz, Fp8Kind::E4M3Fnuz, 240.0f, 7},
    {at::kFloat8_e5m2fnuz, Fp8Kind::E5M2Fnuz, 57344.0f, 15},
};
constexpr const char* kGranularities[] = {"tensor", "token", "group", "mx"};
constexpr const char* kScaleRoundings[] = {"ceil", "floor"};
constexpr const char* kScaleLayouts[] = {"row", "column"};
constexpr const char* kIntermediates[] = {"input", "float32"};
constexpr int64_t kMxBlock = 32;
constexpr int64_t kTokenPad = 4;

template <typename Names>
void check_choice(const char* what, std::string_view name, const Names& names) {
  for (const char* n : names) {
    if (name == n) return;
  }
  unknown(what, name, python_choices(names, [](const char* n) { return n; }));
}

std::string format_g(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

const Fp8Format& fp8_format(at::ScalarType dtype) {
  for (const auto& f : kFp8Formats) {
    if (f.dtype == dtype) return f;
  }
  std::string names;
  for (const auto& f : kFp8Formats) names += (names.empty() ? "" : ", ") + python_dtype(f.dtype);
  TORCH_CHECK_TYPE(false, "glu_fused: out_dtype must be the input's dtype or an FP8 type (",
                   names, "), got ", python_dtype(dtype));
}

// The checks of glu_fused/_fp8.py's check(), in its order and words; the call's settings.
Fp8Call check_fp8(const Fp8Options& o, c10::SymIntArrayRef out_shape, int64_t dim,
                  const at::Device& device) {
  TORCH_CHECK_VALUE(dim == static_cast<int64_t>(out_shape.size()) - 1,
                    "glu_fused: FP8 output is quantized along the last dim; split along it, "
                    "got dim ", dim);
  const c10::SymInt& last = out_shape.back();
  const Fp8Format& format = fp8_format(o.out_dtype);
  check_choice("granularity", o.granularity, kGranularities);
  check_choice("scale_rounding", o.scale_rounding, kScaleRoundings);
  check_choice("scale_layout", o.scale_layout, kScaleLayouts);
  check_choice("intermediate", o.intermediate, kIntermediates);
  const bool per_tensor = o.granularity == "tensor";
  const bool per_token = o.granularity == "token";
  const bool mx = o.granularity == "mx";
  const int64_t block = o.group_size;
  TORCH_CHECK_VALUE(o.granularity != "group" || block == 64 || block == 128,
                    "glu_fused: group_size must be 64 or 128, got ", block);
  TORCH_CHECK_VALUE(!mx || block == kMxBlock,
                    "glu_fused: granularity 'mx' takes blocks of 32, got ", block);
  TORCH_CHECK_VALUE(!(per_tensor || per_token) || block == 0, "glu_fused: granularity '",
                    o.granularity, "' takes no group_size");
  const at::ScalarType sd = o.scale_dtype;
  TORCH_CHECK_TYPE(sd == at::kFloat || sd == at::kFloat8_e8m0fnu || sd == at::kInt,
                   "glu_fused: scale_dtype must be torch.float32, torch.float8_e8m0fnu or "
                   "torch.int32, got ", python_dtype(sd));
  TORCH_CHECK_VALUE(!mx || sd != at::kFloat,
                    "glu_fused: granularity 'mx' has E8M0 scales, not torch.float32");
  TORCH_CHECK_VALUE(sd != at::kInt || !(per_tensor || per_token),
                    "glu_fused: int32 scales pack four blocks' scales; granularity '",
                    o.granularity, "' has one per row or tensor");
  TORCH_CHECK_VALUE(!per_tensor || o.scale_layout == "row",
                    "glu_fused: granularity 'tensor' has one scale: no scale_layout");
  const double least = static_cast<double>(format.max) * std::ldexp(1.0, -126);
  TORCH_CHECK_VALUE(o.eps >= least && o.eps != std::numeric_limits<double>::infinity(),
                    "glu_fused: eps must be finite and at least ", format_g(least),
                    " (so that eps / ", format_g(format.max), " is a normal float32), got ",
                    format_g(o.eps));
  TORCH_CHECK_VALUE(block == 0 || last % block == 0, "glu_fused: granularity '",
                    o.granularity, "' needs the quantized size to be a multiple of ", block,
                    ", got ", last);
  if (o.scale.has_value()) {
    const at::Tensor& s = *o.scale;
    TORCH_CHECK_VALUE(per_tensor,
                      "glu_fused: a static scale is one per tensor (granularity 'tensor'), got "
                      "granularity '", o.granularity, "'");
    TORCH_CHECK_VALUE(sd == at::kFloat,
                      "glu_fused: a static scale is float32: scale_dtype must be float32");
    TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat && s.sym_numel() == 1 && s.device() == device,
                      "glu_fused: scale must be a one-element float32 tensor on the input's "
                      "device, got ", python_dtype(s.scalar_type()), " of shape ",
                      python_shape(s.sym_sizes()), " on ", s.device());
  }
  Fp8Call call{};
  call.kind = format.kind;
  const ScaleRule rule = sd == at::kFloat             ? ScaleRule::Float
                         : o.scale_rounding == "ceil" ? ScaleRule::Pow2Ceil
                                                      : ScaleRule::Pow2Floor;
  call.rule = {format.max, format.emax, static_cast<float>(o.eps), rule};
  call.block = block;  // token and tensor: set by the plan, which knows the sizes
  call.round_to_input = o.intermediate == "input";
  return call;
}

std::vector<c10::SymInt> scale_shape(c10::SymIntArrayRef out_shape, const Fp8Options& o) {
  if (o.granularity == "tensor") return {c10::SymInt(1)};
  std::vector<c10::SymInt> shape = out_shape.vec();
  c10::SymInt blocks = o.granularity == "token" ? c10::SymInt(1) : shape.back() / o.group_size;
  if (o.scale_dtype == at::kInt) blocks = (blocks + 3) / 4;
  shape.back() = blocks;
  return shape;
}

// The "column" layout's strides for a logical [..., n]: stride 1 along the tokens, one row
// of the token count padded to a multiple of 4 (`padded`) per block.
std::vector<c10::SymInt> column_strides(c10::SymIntArrayRef shape, c10::SymInt& padded) {
  const size_t rank = shape.size();
  std::vector<c10::SymInt> strides(rank, c10::SymInt(1));
  c10::SymInt tokens(1);
  for (size_t i = rank - 1; i-- > 0;) {
    strides[i] = tokens;
    tokens = tokens * shape[i];
  }
  padded = (tokens + kTokenPad - 1) / kTokenPad * kTokenPad;
  strides[rank - 1] = padded;
  return strides;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fp8_results_meta(const Tensor& like,
                                                    std::vector<c10::SymInt> out_shape,
                                                    int64_t dim, const Fp8Options& options) {
  check_fp8(options, out_shape, dim, like.device());
  Tensor q = at::empty_symint(out_shape, like.options().dtype(options.out_dtype));
  const auto shape = scale_shape(out_shape, options);
  const auto scale_options = like.options().dtype(options.scale_dtype);
  if (options.scale_layout == "column") {
    c10::SymInt padded;
    const auto strides = column_strides(shape, padded);
    return {q, at::empty_strided_symint(shape, strides, scale_options)};
  }
  return {q, at::empty_symint(shape, scale_options)};
}

Fp8Call Fp8Plan::call() const {
  Fp8Call out = settings;
  out.op = inputs.op;
  out.in = inputs.in;
  out.gate = inputs.gate.data();
  out.value = inputs.value.data();
  out.static_scale = options.scale.has_value() ? options.scale->const_data_ptr<float>() : nullptr;
  inputs.rows.point(out.rows);
  out.q = q.mutable_data_ptr();
  out.scales = scales.mutable_data_ptr<float>();
  return out;
}

Tensor Fp8Plan::result_scales() const {
  Tensor s = scales;
  if (options.scale_dtype != at::kFloat) {
    s = s.to(at::kFloat8_e8m0fnu);
    if (options.scale_dtype == at::kInt) {
      Tensor raw = s.view(at::kByte);
      const int64_t pad = (4 - raw.size(-1) % 4) % 4;
      if (pad) {
        auto shape = raw.sizes().vec();
        shape.back() = pad;
        raw = at::cat({raw, at::zeros(shape, raw.options())}, -1);
      }
      s = raw.contiguous().view(at::kInt);
    }
  }
  if (options.scale_layout != "column") return s;
  c10::SymInt padded;
  const auto strides = column_strides(s.sym_sizes(), padded);
  const int64_t n = s.size(-1);
  const int64_t tokens = s.numel() / std::max<int64_t>(n, 1);
  Tensor store = at::zeros({n, padded.expect_int()}, s.options());
  store.narrow(1, 0, tokens).copy_(s.reshape({tokens, n}).t());
  return store.as_strided(s.sizes(), c10::asIntArrayRefUnchecked(strides));
}

namespace {

// The plan's results and settings once its inputs are laid out; an empty q needs no kernel,
// but its scales still follow the rule (a block of no elements has amax 0).
void finish_fp8_plan(Fp8Plan& plan, const Tensor& like, c10::IntArrayRef out_shape) {
  const Fp8Options& o = plan.options;
  plan.q = at::empty(out_shape, like.options().dtype(o.out_dtype));
  advise_huge_pages(plan.q);
  const int64_t last = out_shape.back();
  if (o.granularity == "tensor") {
    plan.settings.block = 0;
  } else if (o.granularity == "token") {
    plan.settings.block = last;
  }
  std::vector<int64_t> shape = {1};
  if (o.granularity != "tensor") {
    shape = out_shape.vec();
    shape.back() = o.granularity == "token" ? 1 : last / o.group_size;
  }
  plan.scales = at::empty(shape, like.options().dtype(at::kFloat));
  if (!plan.empty()) return;
  if (o.scale.has_value()) {
    plan.scales.copy_(o.scale->reshape({1}));
  } else {
    plan.scales.fill_(plan.settings.rule.scale(0.0f));
  }
}

}  // namespace

Fp8Plan plan_glu_forward_fp8(const Tensor& x, int64_t dim, std::string_view function,
                             std::string_view layout, double alpha, double limit,
                             const Fp8Options& options, const RowArgs& rows) {
  const PackedArgs args = check_packed(x, dim, function, layout, alpha, limit);
  const auto out_shape = halved_shape(x, args.dim);
  Fp8Plan plan;
  plan.options = options;
  plan.settings = check_fp8(options, out_shape, args.dim, x.device());
  check_packed_rows(rows, x, args.dim);
  plan.inputs.op = args.op;
  finish_fp8_plan(plan, x, c10::asIntArrayRefUnchecked(out_shape));
  if (plan.empty()) return plan;
  const bool second = args.function->gate_is_second;
  const Pairs pairs = packed_pairs(x, args.dim, args.interleaved, second);
  plan.inputs.in = pairs.layout;
  plan.inputs.gate = {pairs.base, pairs.gate_offset};
  plan.inputs.value = {pairs.base, pairs.value_offset};
  plan.inputs.rows = plan_rows(rows, x, plan.inputs.in, true, args.interleaved, second);
  TORCH_INTERNAL_ASSERT(plan.settings.block == 0 || plan.inputs.in.run_len % plan.settings.block == 0);
  return plan;
}

int64_t gated_fp8_dim(const Tensor& gate) {
  TORCH_CHECK_VALUE(gate.dim() > 0, "glu_fused: FP8 output is quantized along the last "
                    "dim; a 0-dimensional tensor has none");
  return gate.dim() - 1;
}

Fp8Plan plan_gated_forward_fp8(const Tensor& gate_in, const Tensor& value_in,
                               std::string_view activation, const Fp8Options& options,
                               const RowArgs& rows) {
  Fp8Plan plan;
  plan.inputs.op = check_gated(gate_in, value_in, activation);
  plan.options = options;
  plan.settings =
      check_fp8(options, gate_in.sym_sizes(), gated_fp8_dim(gate_in), gate_in.device());
  check_gated_rows(rows, gate_in);
  finish_fp8_plan(plan, gate_in, gate_in.sizes());
  if (plan.empty()) return plan;
  Tensor gate = gate_in, value = value_in;
  plan.inputs.in = gated_layout(gate, value);
  if (options.granularity == "token") split_into_rows(plan.inputs.in, gate.size(-1));
  plan.inputs.gate = {gate};
  plan.inputs.value = {value};
  plan.inputs.rows = plan_rows(rows, gate, plan.inputs.in, false, false, false);
  TORCH_INTERNAL_ASSERT(plan.settings.block == 0 || plan.inputs.in.run_len % plan.settings.block == 0);
  return plan;
}

}  // namespace glu_fused
