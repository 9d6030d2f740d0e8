// test_testing_target.cpp — the test-only library inna_fused_testing (csrc/testing/: the CUDA
// launch emulation) builds apart from inna_fused and registers its ops when linked: the op
// library itself does not have them.
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <vector>

int main() {
  auto emulated = c10::Dispatcher::singleton().findOp({"inna_fused::_emulated_cuda_launch_", ""});
  auto constants = c10::Dispatcher::singleton().findOp({"inna_fused::_cuda_launch_constants", ""});
  if (!emulated || !emulated->hasKernelForDispatchKey(c10::DispatchKey::CPU) || !constants) {
    std::printf("FAIL testing_ops_registered: the test-only ops are missing\n");
    std::printf("0 passed, 1 failed\n");
    return 1;
  }
  const auto values = constants->typed<std::vector<int64_t>()>().call();
  const bool chunk = !values.empty() && values[0] == (int64_t(1) << 16);
  std::printf("%s testing_ops_registered\n", chunk ? "PASS" : "FAIL");
  std::printf("%d passed, %d failed\n", chunk ? 1 : 0, chunk ? 0 : 1);
  return chunk ? 0 : 1;
}
