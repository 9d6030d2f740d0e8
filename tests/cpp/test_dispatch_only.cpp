// test_dispatch_only.cpp — a program that links inna_fused::inna_fused but references none of its
// symbols (it calls the op only through the dispatcher, and links torch first, whose link flags
// switch --as-needed on). The op must still be registered: inna_fused_keep_registration() keeps
// the library loaded. Also checks the op's first step with psi_init="paper": one SGD step.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>

int main() {
  auto handle = c10::Dispatcher::singleton().findOp({"inna_fused::fused_inna_", ""});
  if (!handle || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
    std::printf("FAIL registration_kept: inna_fused::fused_inna_ has no CPU kernel\n");
    std::printf("0 passed, 1 failed\n");
    return 1;
  }
  using Signature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double,
                         double, double, double, double, bool, bool, bool, bool, int64_t,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
  auto op = handle->typed<Signature>();
  const double lr = 0.25;
  auto theta = at::linspace(-1.0, 1.0, 11, at::kDouble);
  auto grad = at::linspace(2.0, -3.0, 11, at::kDouble);
  const auto expected = theta - lr * grad;
  auto phase = at::zeros_like(theta);
  auto step = at::zeros({}, at::kFloat);
  op.call({theta}, {grad}, {phase}, {step}, lr, 0.5, 0.1, 0.0, 0.0, false, /*paper_init=*/true,
          false, /*stochastic_rounding=*/true, /*seed=*/0, std::nullopt, std::nullopt);
  const bool sgd_step = at::allclose(theta, expected, 1e-12, 1e-12) && step.item<double>() == 1.0;
  std::printf("PASS registration_kept\n%s first_step_is_sgd\n", sgd_step ? "PASS" : "FAIL");
  std::printf("%d passed, %d failed\n", sgd_step ? 2 : 1, sgd_step ? 0 : 1);
  return sgd_step ? 0 : 1;
}
