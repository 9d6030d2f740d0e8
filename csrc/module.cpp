// module.cpp — the Python extension module `inna_fused._C`.
//
// Importing it loads the shared library, whose static initialisers register the op with the
// dispatcher (TORCH_LIBRARY in op_schema.cpp, one TORCH_LIBRARY_IMPL per backend). The module itself
// only reports how it was built; the op is called as torch.ops.inna_fused.fused_inna_, except
// by INNA.step's planned steps, which call it through fused_inna_direct below.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <string>
#include <vector>

namespace inna_fused {
std::string cpu_simd_level();
}

namespace {

PyObject* cpu_simd_level(PyObject*, PyObject*) {
  return PyUnicode_FromString(inna_fused::cpu_simd_level().c_str());
}

PyObject* cuda_compiled(PyObject*, PyObject*) {
#ifdef INNA_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// ---------------------------------------------------------------------------------------------
// fused_inna_direct(params, grads, phases, steps, lr, scalars, grad_scale, found_inf) -> bool
//
// The same op as torch.ops.inna_fused.fused_inna_, called unboxed. From Python, torch.ops boxes
// every tensor of the four lists into IValues and the dispatcher unboxes them again (~0.4 us per
// list entry, more than the op's own validation and, on small tensors, its kernel); here each
// list becomes a std::vector<at::Tensor> once. Only for plain calls: every entry an exact
// torch.Tensor or nn.Parameter without the Python dispatch key, no torch function or dispatch
// mode active. Otherwise it returns False without doing anything, and the caller uses torch.ops.
// The dispatcher still picks the backend (CPU/CUDA kernel, profiler records); the Autograd and
// ADInplaceOrView keys are skipped, as the boxed call does for this op (it has no autograd
// formula, returns nothing, and INNA steps run under no_grad). scalars = (alpha, beta,
// decay_power, weight_decay, decoupled_weight_decay, paper_init, maximize, stochastic_rounding,
// seed). Errors are the op's (ValueError/TypeError), raised before any write.

using Opt = std::optional<at::Tensor>;
using FloatLrSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double,
                        double, double, double, double, bool, bool, bool, bool, int64_t,
                        const Opt&, const Opt&);
using TensorLrSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                         const at::Tensor&, double, double, double, double, bool, bool, bool,
                         bool, int64_t, const Opt&, const Opt&);

bool plain_tensor(PyObject* obj) {
  return THPVariable_CheckExact(obj) &&
         !THPVariable_Unpack(obj).key_set().has(c10::DispatchKey::Python);
}

// Tensors borrowed from Python objects that outlive the call (the caller's lists hold them):
// no reference count is taken or dropped per entry. Taking one is not free on tensors owned by
// Python objects (an atomic increment, and dropping it may call back into the interpreter).
struct BorrowedList {
  std::vector<at::Tensor> tensors;
  ~BorrowedList() {
    for (auto& t : tensors) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
  }
};

// The list as tensors, or false when an entry is not a plain tensor (or obj is not a list).
bool unpack_list(PyObject* obj, BorrowedList& out) {
  if (!PyList_CheckExact(obj)) return false;
  const Py_ssize_t n = PyList_GET_SIZE(obj);
  out.tensors.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(obj, i);
    if (!plain_tensor(item)) return false;
    out.tensors.push_back(
        c10::MaybeOwnedTraits<at::Tensor>::createBorrow(THPVariable_Unpack(item)));
  }
  return true;
}

bool unpack_optional(PyObject* obj, Opt& out) {
  if (obj == Py_None) return true;
  if (!plain_tensor(obj)) return false;
  out = THPVariable_Unpack(obj);
  return true;
}

struct ReleasedGil {
  PyThreadState* state = PyEval_SaveThread();
  ~ReleasedGil() { PyEval_RestoreThread(state); }
};

PyObject* fused_inna_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8 || !PyTuple_CheckExact(args[5]) || PyTuple_GET_SIZE(args[5]) != 9) {
    PyErr_SetString(PyExc_TypeError, "fused_inna_direct: bad arguments");
    return nullptr;
  }
  if (at::impl::torch_function_mode_enabled() || c10::impl::TorchDispatchModeTLS::any_modes_set()) {
    Py_RETURN_FALSE;
  }
  BorrowedList lists[4];  // the caller's lists keep them alive (and are not changed)
  for (int i = 0; i < 4; ++i) {
    if (!unpack_list(args[i], lists[i])) Py_RETURN_FALSE;
  }
  Opt grad_scale, found_inf;
  if (!unpack_optional(args[6], grad_scale) || !unpack_optional(args[7], found_inf)) {
    Py_RETURN_FALSE;
  }
  PyObject* const* s = &PyTuple_GET_ITEM(args[5], 0);
  double real[4];
  for (int i = 0; i < 4; ++i) {
    real[i] = PyFloat_AsDouble(s[i]);
    if (real[i] == -1.0 && PyErr_Occurred()) return nullptr;
  }
  bool flag[4];
  for (int i = 0; i < 4; ++i) {
    const int v = PyObject_IsTrue(s[4 + i]);
    if (v < 0) return nullptr;
    flag[i] = v != 0;
  }
  const long long seed = PyLong_AsLongLong(s[8]);
  if (seed == -1 && PyErr_Occurred()) return nullptr;

  PyObject* lr = args[4];
  const bool lr_is_tensor = THPVariable_Check(lr);
  Opt lr_tensor;
  double lr_value = 0.0;
  if (lr_is_tensor) {
    if (!unpack_optional(lr, lr_tensor)) Py_RETURN_FALSE;
  } else {
    lr_value = PyFloat_AsDouble(lr);
    if (lr_value == -1.0 && PyErr_Occurred()) return nullptr;
  }
  {
    ReleasedGil no_gil;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (lr_is_tensor) {
      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("inna_fused::fused_inna_", "tensor_lr")
                                 .typed<TensorLrSig>();
      op.call(lists[0].tensors, lists[1].tensors, lists[2].tensors, lists[3].tensors, *lr_tensor, real[0], real[1], real[2],
              real[3], flag[0], flag[1], flag[2], flag[3], seed, grad_scale, found_inf);
    } else {
      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("inna_fused::fused_inna_", "")
                                 .typed<FloatLrSig>();
      op.call(lists[0].tensors, lists[1].tensors, lists[2].tensors, lists[3].tensors, lr_value, real[0], real[1], real[2],
              real[3], flag[0], flag[1], flag[2], flag[3], seed, grad_scale, found_inf);
    }
  }
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"fused_inna_direct", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                              fused_inna_direct)),
     METH_FASTCALL, "The fused op called unboxed on plain tensor lists (INNA's planned steps)."},
    {"cpu_simd_level", cpu_simd_level, METH_NOARGS, "SIMD level the CPU kernel was compiled for."},
    {"cuda_compiled", cuda_compiled, METH_NOARGS, "Whether the CUDA kernel was compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "inna_fused native ops", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
