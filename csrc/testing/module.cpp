// testing/module.cpp — the Python module `inna_fused._C_testing`: test-only ops (emulate.cpp),
// built only with INNA_FUSED_BUILD_TESTING=1 (tools/env.sh sets it, so CI builds and runs them).
// Importing it registers the ops with the dispatcher; the module itself has no functions.
#include <Python.h>

namespace {
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_testing", "inna_fused test-only native ops",
                          -1, nullptr};
}  // namespace

PyMODINIT_FUNC PyInit__C_testing() { return PyModule_Create(&module_def); }
