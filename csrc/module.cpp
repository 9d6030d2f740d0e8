// module.cpp — the Python extension module `inna_fused._C`.
//
// Importing it loads the shared library, whose static initialisers register the op with the
// dispatcher (TORCH_LIBRARY in inna_op.cpp, one TORCH_LIBRARY_IMPL per backend). The module itself
// only reports how it was built; the op is called as torch.ops.inna_fused.fused_inna_.
#include <Python.h>

#include <string>

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

PyMethodDef methods[] = {
    {"cpu_simd_level", cpu_simd_level, METH_NOARGS, "SIMD level the CPU kernel was compiled for."},
    {"cuda_compiled", cuda_compiled, METH_NOARGS, "Whether the CUDA kernel was compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "inna_fused native ops", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
