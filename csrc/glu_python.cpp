// glu_fused._C, the Python module. Importing it registers the ops (glu_ops.cpp,
// glu_autograd.cpp). It also holds:
//
//  * the front door's fast calls, `packed_forward` and `gated_forward`: a public function
//    (glu_fused/functional.py) hands its arguments straight to one of them, which calls the
//    op of the route chosen for the tensor's device (`set_route`) through the dispatcher, as
//    an ATen function's binding does. Whatever they do not handle plainly they answer
//    NotImplemented, and the Python route runs instead: a backend with no op (the
//    reference), a device not yet routed, a tensor with __torch_function__ or a mode,
//    forward-mode AD tangents, torch.func transforms, arguments of unexpected types. Under
//    torch.compile, Dynamo sees the Python route in their place (glu_fused/_ops.py);
//  * the plans of op calls (glu_plan.h) for the Triton kernels, so that they are checked and
//    laid out by the same C++ as the CPU and CUDA kernels;
//  * the table of functions (glu_functions.h) and how the extension was built.
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <string>

#include "glu_ops.h"
#include "glu_plan.h"

namespace glu_fused {
namespace {

namespace py = pybind11;

// ---- routes: which op family runs a device type's tensors (-1: the Python route) ----------

constexpr int kPythonRoute = -1;
std::array<int, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)> routes = [] {
  std::array<int, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)> all{};
  all.fill(kPythonRoute);
  return all;
}();

void set_route(const std::string& device_type, std::optional<std::string> family) {
  int route = kPythonRoute;
  if (family) {
    for (int f = 0; f < static_cast<int>(std::size(kFamilyNames)); ++f) {
      if (*family == kFamilyNames[f]) route = f;
    }
    TORCH_CHECK_VALUE(route != kPythonRoute, "glu_fused: no op family '", *family, "'");
  }
  routes[static_cast<size_t>(c10::Device(device_type).type())] = route;
}

void clear_routes() { routes.fill(kPythonRoute); }

// ---- the fast calls ------------------------------------------------------------------------

// The Python route handles this call instead (see the top of this file): anything but a
// plain tensor or Parameter (a subclass may define __torch_function__), a torch function
// mode, a torch.func transform (functorch keeps its front key in the thread's included set).
bool needs_python(PyObject* tensor) {
  return !THPVariable_CheckExact(tensor) || at::impl::PythonTorchFunctionTLS::stack_len() > 0 ||
         c10::impl::tls_is_dispatch_key_included(
             c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

bool has_tangent(const Tensor& t) { return t._fw_grad(/*level=*/0).defined(); }

int route_of(const Tensor& t) { return routes[static_cast<size_t>(t.device().type())]; }

bool read_string(PyObject* o, std::string_view& out) {
  if (!PyUnicode_Check(o)) return false;
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(o, &size);
  if (data == nullptr) {
    PyErr_Clear();
    return false;
  }
  out = std::string_view(data, static_cast<size_t>(size));
  return true;
}

bool read_int(PyObject* o, int64_t& out) {
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(o, &overflow);
  return overflow == 0;
}

bool read_float(PyObject* o, double& out) {
  if (!PyFloat_CheckExact(o) && !PyLong_CheckExact(o)) return false;
  out = PyFloat_AsDouble(o);
  if (out == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

PyObject* wrap(Tensor t) { return THPVariable_Wrap(std::move(t)); }

// packed_forward(x, dim, function, layout, alpha, limit)
PyObject* packed_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  int64_t dim;
  std::string_view function, layout;
  double alpha, limit;
  if (nargs != 6 || needs_python(args[0]) || !read_int(args[1], dim) ||
      !read_string(args[2], function) || !read_string(args[3], layout) ||
      !read_float(args[4], alpha) || !read_float(args[5], limit)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const Tensor& x = THPVariable_Unpack(args[0]);
  const int route = route_of(x);
  if (route == kPythonRoute || has_tangent(x)) Py_RETURN_NOTIMPLEMENTED;
  Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = ops(static_cast<Family>(route))
              .glu_forward.call(x, dim, function, layout, alpha, limit, std::nullopt, std::nullopt);
  }
  return wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

// gated_forward(gate, value, activation)
PyObject* gated_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  std::string_view activation;
  if (nargs != 3 || needs_python(args[0]) || needs_python(args[1]) ||
      !read_string(args[2], activation)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const Tensor& gate = THPVariable_Unpack(args[0]);
  const Tensor& value = THPVariable_Unpack(args[1]);
  const int route = route_of(gate);
  if (route == kPythonRoute || has_tangent(gate) || has_tangent(value)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = ops(static_cast<Family>(route))
              .gated_forward.call(gate, value, activation, std::nullopt, std::nullopt, std::nullopt);
  }
  return wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef kFastCalls[] = {
    {"packed_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(packed_forward)),
     METH_FASTCALL,
     "packed_forward(x, dim, function, layout, alpha, limit): the packed forward op of x's "
     "route, or NotImplemented where the Python route must run."},
    {"gated_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gated_forward)),
     METH_FASTCALL,
     "gated_forward(gate, value, activation): the gated forward op of gate's route, or "
     "NotImplemented where the Python route must run."},
    {nullptr, nullptr, 0, nullptr}};

// ---- plans for the Triton kernels ----------------------------------------------------------

// A one-element view of an operand's storage at its first element: the pointer a kernel gets
// (Triton's interpreter, too, reads through the whole storage).
Tensor pointer(const Operand& o) {
  return o.tensor.as_strided({1}, {1}, o.tensor.storage_offset() + o.offset);
}

// The bias and counts (None where the call has none; see RowOptions in glu_kernels.h).
void add_rows(py::dict& launch, const RowPlan& rows) {
  launch["bias"] = py::none();
  if (rows.gate_bias.defined()) {
    launch["bias"] = py::make_tuple(pointer({rows.gate_bias, rows.gate_bias_offset}),
                                    pointer({rows.value_bias, rows.value_bias_offset}));
  }
  launch["valid_rows"] = rows.valid_tokens.defined() ? py::cast(rows.valid_tokens) : py::none();
  launch["rows_per_group"] = rows.options.rows_per_group;
}

py::dict launch_of(const ActivationCall& op, const PairLayout& in, const Operand& gate,
                   const Operand& value) {
  py::dict launch;
  launch["activation"] = static_cast<int>(op.activation);
  launch["alpha"] = op.alpha;
  launch["limit"] = op.limit;
  launch["runs"] = in.runs;
  launch["run_len"] = in.run_len;
  launch["runs_per_outer"] = in.runs_per_outer;
  launch["pairs"] = in.elem_stride == 2;
  // Where they alternate, gate and value are views of one storage (or one tensor's halves).
  launch["gate_first"] =
      gate.tensor.storage_offset() + gate.offset < value.tensor.storage_offset() + value.offset;
  return launch;
}

// The launch of a kernel that reads gate and value and writes one dense tensor: the forward's
// result, or the in-place backward's grad_out, which its gradients are read from first.
py::object dense_launch(bool empty, const ActivationCall& op, const PairLayout& in,
                        const Operand& gate, const Operand& value, const Tensor& dense) {
  if (empty) return py::none();
  py::dict launch = launch_of(op, in, gate, value);
  launch["pointers"] = py::make_tuple(pointer(gate), pointer(value), dense);
  launch["strides"] = py::make_tuple(in.outer_stride, in.run_stride);
  return std::move(launch);
}

py::object forward_launch(const ForwardPlan& plan) {
  py::object launch =
      dense_launch(plan.empty(), plan.op, plan.in, plan.gate, plan.value, plan.out);
  if (!launch.is_none()) {
    py::dict d = launch;
    add_rows(d, plan.rows);
  }
  return launch;
}

py::object backward_launch(const BackwardPlan& plan) {
  if (plan.empty()) return py::none();
  py::dict launch = launch_of(plan.op, plan.in, plan.gate, plan.value);
  launch["pointers"] = py::make_tuple(pointer(plan.gate), pointer(plan.value), plan.grad_out,
                                      pointer(plan.grad_gate), pointer(plan.grad_value));
  launch["strides"] = py::make_tuple(plan.in.outer_stride, plan.in.run_stride,
                                     plan.grad_in.outer_stride, plan.grad_in.run_stride);
  add_rows(launch, plan.rows);
  launch["bias_grad_partials"] =
      plan.rows.partials.defined() ? py::cast(plan.rows.partials) : py::none();
  launch["bias_tile_rows"] = kBiasTileRows;
  return std::move(launch);
}

// A backward plan's bias gradients, once its kernel has written the partials.
py::object bias_grads_of(const BackwardPlan& plan, at::ScalarType dtype) {
  const auto grads = plan.rows.bias_grads(dtype);
  if (grads.size() == 1) return py::cast(grads[0]);
  return py::make_tuple(grads[0], grads[1]);
}

using OptTensor = std::optional<Tensor>;

py::object backward_in_place_launch(const BackwardPlan& plan) {
  return dense_launch(plan.empty(), plan.op, plan.in, plan.gate, plan.value, plan.grad_out);
}

void define_plans(py::module_& m) {
  using py::arg;
  m.def(
      "plan_glu_forward",
      [](const Tensor& x, int64_t dim, std::string_view function, std::string_view layout,
         double alpha, double limit, const OptTensor& bias, const OptTensor& valid_tokens) {
        const ForwardPlan plan = plan_glu_forward(x, dim, function, layout, alpha, limit,
                                                  {bias, std::nullopt, std::nullopt, valid_tokens});
        return py::make_tuple(plan.out, forward_launch(plan));
      },
      arg("x"), arg("dim"), arg("function"), arg("layout"), arg("alpha"), arg("limit"),
      arg("bias") = py::none(), arg("valid_tokens") = py::none(),
      "(result, launch or None) of glu_forward's arguments, checked.");
  m.def(
      "plan_glu_backward",
      [](const Tensor& grad_out, const Tensor& x, int64_t dim, std::string_view function,
         std::string_view layout, double alpha, double limit, const OptTensor& bias,
         const OptTensor& valid_tokens, bool bias_grad) {
        auto plan = std::make_shared<BackwardPlan>(
            plan_glu_backward(grad_out, x, dim, function, layout, alpha, limit,
                              {bias, std::nullopt, std::nullopt, valid_tokens}, bias_grad));
        py::object finish = py::none();
        if (bias_grad) {
          const auto dtype = x.scalar_type();
          finish = py::cpp_function([plan, dtype] { return bias_grads_of(*plan, dtype); });
        }
        return py::make_tuple(plan->grad_first, backward_launch(*plan), finish);
      },
      arg("grad_out"), arg("x"), arg("dim"), arg("function"), arg("layout"), arg("alpha"),
      arg("limit"), arg("bias") = py::none(), arg("valid_tokens") = py::none(),
      arg("bias_grad") = false,
      "(grad_x, launch or None, finish or None) of glu_backward's arguments, checked; with "
      "bias_grad, finish() gives the bias gradient once the kernel has run.");
  m.def(
      "plan_gated_forward",
      [](const Tensor& gate, const Tensor& value, std::string_view activation,
         const OptTensor& gate_bias, const OptTensor& value_bias, const OptTensor& valid_tokens) {
        const ForwardPlan plan = plan_gated_forward(
            gate, value, activation, {std::nullopt, gate_bias, value_bias, valid_tokens});
        return py::make_tuple(plan.out, forward_launch(plan));
      },
      arg("gate"), arg("value"), arg("activation"), arg("gate_bias") = py::none(),
      arg("value_bias") = py::none(), arg("valid_tokens") = py::none(),
      "(result, launch or None) of gated_forward's arguments, checked.");
  m.def(
      "plan_gated_backward",
      [](const Tensor& grad_out, const Tensor& gate, const Tensor& value,
         std::string_view activation, const OptTensor& gate_bias, const OptTensor& value_bias,
         const OptTensor& valid_tokens, bool bias_grad) {
        auto plan = std::make_shared<BackwardPlan>(
            plan_gated_backward(grad_out, gate, value, activation,
                                {std::nullopt, gate_bias, value_bias, valid_tokens}, bias_grad));
        py::object finish = py::none();
        if (bias_grad) {
          const auto dtype = gate.scalar_type();
          finish = py::cpp_function([plan, dtype] { return bias_grads_of(*plan, dtype); });
        }
        return py::make_tuple(py::make_tuple(plan->grad_first, plan->grad_second),
                              backward_launch(*plan), finish);
      },
      arg("grad_out"), arg("gate"), arg("value"), arg("activation"),
      arg("gate_bias") = py::none(), arg("value_bias") = py::none(),
      arg("valid_tokens") = py::none(), arg("bias_grad") = false,
      "((grad_gate, grad_value), launch or None, finish or None) of gated_backward's "
      "arguments, checked; with bias_grad, finish() gives (grad_gate_bias, grad_value_bias).");
  m.def(
      "plan_gated_backward_in_place",
      [](const Tensor& grad_out, const Tensor& gate, const Tensor& value,
         std::string_view activation) {
        return backward_in_place_launch(
            plan_gated_backward_in_place(grad_out, gate, value, activation));
      },
      arg("grad_out"), arg("gate"), arg("value"), arg("activation"),
      "The launch (or None) of gated_backward_in_place's arguments, checked: pointers to "
      "gate, value and grad_out, each written over.");
  m.def(
      "plan_gated_backward_in_place_bias",
      [](const Tensor& grad_out, const Tensor& gate, const Tensor& value,
         std::string_view activation) {
        auto plan = std::make_shared<BackwardPlan>(
            plan_gated_backward_in_place(grad_out, gate, value, activation, true));
        py::object launch = backward_launch(*plan);
        if (!launch.is_none()) {
          py::dict d = launch;
          d["in_place"] = true;
        }
        const auto dtype = gate.scalar_type();
        py::object finish =
            py::cpp_function([plan, dtype] { return bias_grads_of(*plan, dtype); });
        return py::make_tuple(launch, finish);
      },
      arg("grad_out"), arg("gate"), arg("value"), arg("activation"),
      "(launch or None, finish) of gated_backward_in_place_bias's arguments, checked: a "
      "backward's launch whose gradients are gate and value (\"in_place\": act(gate) * value "
      "over grad_out) and which sums the bias gradient's partials; finish() gives "
      "(grad_gate_bias, grad_value_bias) once the kernel has run.");
}

// ---- the table and the build ---------------------------------------------------------------

void define_table(py::module_& m) {
  py::dict packed, gated;
  for (const auto& f : kPackedFunctions) {
    packed[f.name] = py::make_tuple(static_cast<int>(f.activation), f.gate_is_second);
  }
  for (const auto& a : kGateActivations) gated[a.name] = static_cast<int>(a.activation);
  m.attr("PACKED_FUNCTIONS") = packed;
  m.attr("GATE_ACTIVATIONS") = gated;
  m.attr("LAYOUTS") = py::make_tuple(kLayouts[0], kLayouts[1]);
  m.attr("FAMILIES") = py::make_tuple(kFamilyNames[0], kFamilyNames[1]);
}

#ifndef GLU_FUSED_TORCH_VERSION
#define GLU_FUSED_TORCH_VERSION "unknown"
#endif

void define_build(py::module_& m) {
#ifdef GLU_FUSED_WITH_CUDA
  m.attr("WITH_CUDA") = 1;
#else
  m.attr("WITH_CUDA") = 0;
#endif
  m.attr("EMULATE_CUDA") = emulates_cuda() ? 1 : 0;
  // The CPU kernels' level in use, chosen at load, and the levels built.
  m.attr("CPU_CAPABILITY") = cpu_level();
  m.attr("CPU_LEVELS") = cpu_levels_built();
  m.attr("TORCH_VERSION") = GLU_FUSED_TORCH_VERSION;  // the torch it was built against
}

}  // namespace
}  // namespace glu_fused

PYBIND11_MODULE(_C, m) {
  using namespace glu_fused;
  m.doc() = "glu_fused's compiled kernels, their ops and the front door's fast calls";
  if (PyModule_AddFunctions(m.ptr(), kFastCalls) < 0) throw pybind11::error_already_set();
  m.def("set_route", &set_route, pybind11::arg("device_type"), pybind11::arg("family"),
        "Routes the fast calls for tensors of device_type to an op family (None: Python).");
  m.def("clear_routes", &clear_routes, "Every device type back to the Python route.");
  define_plans(m);
  define_table(m);
  define_build(m);
}
