// module.cpp — the Python extension module `inna_fused._C`.
//
// Importing it loads the shared library, whose static initialisers register the op with the
// dispatcher (TORCH_LIBRARY in op_schema.cpp, one TORCH_LIBRARY_IMPL per backend). The module itself
// only reports how it was built; the ops are called as torch.ops.inna_fused.fused_inna_ and
// fused_innaprop_, except by the optimizers' planned steps, which call them unboxed through
// fused_inna_direct and fused_innaprop_direct below.
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
// fused_innaprop_direct(params, grads, phases, exp_avg_sqs, steps, lr, scalars, grad_scale,
//                       found_inf) -> bool
//
// The ops torch.ops.inna_fused.fused_inna_ / fused_innaprop_, called unboxed. From Python,
// torch.ops boxes every tensor of the lists into IValues and the dispatcher unboxes them again
// (~0.4 us per list entry, more than the op's own validation and, on small tensors, its kernel);
// here each list becomes a std::vector<at::Tensor> once. Only for plain calls: every entry an exact
// torch.Tensor or nn.Parameter without the Python dispatch key, no torch function or dispatch
// mode active. Otherwise it returns False without doing anything, and the caller uses torch.ops.
// The dispatcher still picks the backend (CPU/CUDA kernel, profiler records); the Autograd and
// ADInplaceOrView keys are skipped, as the boxed call does for these ops (no autograd formula, they
// return nothing, and the optimizers step under no_grad). Errors are the op's (ValueError/
// TypeError), raised before any write.
//   INNA scalars:     (alpha, beta, decay_power, weight_decay, decoupled_weight_decay, paper_init,
//                      maximize, stochastic_rounding, seed)
//   INNAprop scalars: (alpha, beta, sigma, eps, weight_decay, maximize, stochastic_rounding, seed)

using Opt = std::optional<at::Tensor>;
using TL = at::TensorList;
using InnaFloatLr = void(TL, TL, TL, TL, double, double, double, double, double, bool, bool, bool,
                         bool, int64_t, const Opt&, const Opt&);
using InnaTensorLr = void(TL, TL, TL, TL, const at::Tensor&, double, double, double, double, bool,
                          bool, bool, bool, int64_t, const Opt&, const Opt&);
using PropFloatLr = void(TL, TL, TL, TL, TL, double, double, double, double, double, double, bool,
                         bool, int64_t, const Opt&, const Opt&);
using PropTensorLr = void(TL, TL, TL, TL, TL, const at::Tensor&, double, double, double, double,
                          double, bool, bool, int64_t, const Opt&, const Opt&);

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

// The arguments of a direct call with `Lists` tensor lists, then lr, then a scalars tuple of
// `Reals` floats, `Flags` bools and the seed, then grad_scale and found_inf.
template <int Lists, int Reals, int Flags>
struct DirectArgs {
  BorrowedList lists[Lists];  // the caller's lists keep them alive (and are not changed)
  double real[Reals];
  bool flag[Flags];
  int64_t seed = 0;
  Opt lr_tensor, grad_scale, found_inf;
  double lr_value = 0.0;

  // 1: parsed; 0: not a plain call (the caller uses torch.ops); -1: a Python error is set.
  int parse(PyObject* const* args, Py_ssize_t nargs, const char* name) {
    constexpr int kScalars = Reals + Flags + 1;
    if (nargs != Lists + 4 || !PyTuple_CheckExact(args[Lists + 1]) ||
        PyTuple_GET_SIZE(args[Lists + 1]) != kScalars) {
      PyErr_Format(PyExc_TypeError, "%s: bad arguments", name);
      return -1;
    }
    if (at::impl::torch_function_mode_enabled() ||
        c10::impl::TorchDispatchModeTLS::any_modes_set()) {
      return 0;
    }
    for (int i = 0; i < Lists; ++i) {
      if (!unpack_list(args[i], lists[i])) return 0;
    }
    if (!unpack_optional(args[Lists + 2], grad_scale) ||
        !unpack_optional(args[Lists + 3], found_inf)) {
      return 0;
    }
    PyObject* const* s = &PyTuple_GET_ITEM(args[Lists + 1], 0);
    for (int i = 0; i < Reals; ++i) {
      real[i] = PyFloat_AsDouble(s[i]);
      if (real[i] == -1.0 && PyErr_Occurred()) return -1;
    }
    for (int i = 0; i < Flags; ++i) {
      const int v = PyObject_IsTrue(s[Reals + i]);
      if (v < 0) return -1;
      flag[i] = v != 0;
    }
    seed = PyLong_AsLongLong(s[Reals + Flags]);
    if (seed == -1 && PyErr_Occurred()) return -1;
    PyObject* lr = args[Lists];
    if (THPVariable_Check(lr)) {
      if (!unpack_optional(lr, lr_tensor)) return 0;
    } else {
      lr_value = PyFloat_AsDouble(lr);
      if (lr_value == -1.0 && PyErr_Occurred()) return -1;
    }
    return 1;
  }

  const std::vector<at::Tensor>& list(int i) const { return lists[i].tensors; }
};

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).template typed<Sig>();
}

// Parse a direct call and run `call(args)` on the parsed arguments without the GIL and below the
// autograd keys; False when the call is not a plain one.
template <int Lists, int Reals, int Flags, typename Call>
PyObject* run_direct(PyObject* const* args, Py_ssize_t nargs, const char* name, Call call) {
  HANDLE_TH_ERRORS
  DirectArgs<Lists, Reals, Flags> a;
  const int parsed = a.parse(args, nargs, name);
  if (parsed < 0) return nullptr;
  if (parsed == 0) Py_RETURN_FALSE;
  {
    ReleasedGil no_gil;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    call(a);
  }
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

PyObject* fused_inna_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return run_direct<4, 4, 4>(args, nargs, "fused_inna_direct", [](const auto& a) {
    const auto& r = a.real;
    const auto& f = a.flag;
    if (a.lr_tensor) {
      static const auto op = find_op<InnaTensorLr>("inna_fused::fused_inna_", "tensor_lr");
      op.call(a.list(0), a.list(1), a.list(2), a.list(3), *a.lr_tensor, r[0], r[1], r[2], r[3],
              f[0], f[1], f[2], f[3], a.seed, a.grad_scale, a.found_inf);
    } else {
      static const auto op = find_op<InnaFloatLr>("inna_fused::fused_inna_", "");
      op.call(a.list(0), a.list(1), a.list(2), a.list(3), a.lr_value, r[0], r[1], r[2], r[3],
              f[0], f[1], f[2], f[3], a.seed, a.grad_scale, a.found_inf);
    }
  });
}

PyObject* fused_innaprop_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return run_direct<5, 5, 2>(args, nargs, "fused_innaprop_direct", [](const auto& a) {
    const auto& r = a.real;
    const auto& f = a.flag;
    if (a.lr_tensor) {
      static const auto op = find_op<PropTensorLr>("inna_fused::fused_innaprop_", "tensor_lr");
      op.call(a.list(0), a.list(1), a.list(2), a.list(3), a.list(4), *a.lr_tensor, r[0], r[1],
              r[2], r[3], r[4], f[0], f[1], a.seed, a.grad_scale, a.found_inf);
    } else {
      static const auto op = find_op<PropFloatLr>("inna_fused::fused_innaprop_", "");
      op.call(a.list(0), a.list(1), a.list(2), a.list(3), a.list(4), a.lr_value, r[0], r[1],
              r[2], r[3], r[4], f[0], f[1], a.seed, a.grad_scale, a.found_inf);
    }
  });
}

PyMethodDef methods[] = {
    {"fused_inna_direct", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                              fused_inna_direct)),
     METH_FASTCALL, "The fused op called unboxed on plain tensor lists (INNA's planned steps)."},
    {"fused_innaprop_direct", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                  fused_innaprop_direct)),
     METH_FASTCALL, "fused_innaprop_ called unboxed on plain tensor lists (INNAprop's planned "
     "steps)."},
    {"cpu_simd_level", cpu_simd_level, METH_NOARGS, "SIMD level the CPU kernel was compiled for."},
    {"cuda_compiled", cuda_compiled, METH_NOARGS, "Whether the CUDA kernel was compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "inna_fused native ops", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
