// train_tiny.cpp — train a small MLP with inna_fused::INNA on synthetic regression data.
//
//   y = sin(3·x₀) + 0.5·x₁² − x₂ + noise,  x ~ N(0, 1)³;  model 3 → 32 → 1 (tanh)
//
// Prints the loss every 50 steps; exits with status 1 unless the final loss is below a tenth of
// the first (CTest runs it as a check that training works through the installed package).
#include <inna_fused/optim.h>
#include <torch/torch.h>

#include <cstdio>

struct TinyMLP : torch::nn::Module {
  TinyMLP() : hidden(register_module("hidden", torch::nn::Linear(3, 32))),
              out(register_module("out", torch::nn::Linear(32, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) { return out(torch::tanh(hidden(x))); }
  torch::nn::Linear hidden, out;
};

int main() {
  torch::manual_seed(0);
  const auto x = torch::randn({512, 3});
  const auto y = (torch::sin(3 * x.select(1, 0)) + 0.5 * x.select(1, 1).pow(2) - x.select(1, 2) +
                  0.05 * torch::randn({512})).unsqueeze(1);

  auto model = std::make_shared<TinyMLP>();
  // The authors' defaults (α, β) = (0.5, 0.1), a constant step, the paper's ψ initialisation.
  // The state per parameter is the phase (float32 here); .state_dtype(torch::kBFloat16) stores it
  // in 2 bytes per element, and bfloat16 params train with the default stochastic rounding.
  inna_fused::INNA optimizer(model->parameters(),
                             inna_fused::INNAOptions(0.1).alpha(0.5).beta(0.1).psi_init("paper"));
  std::printf("inna_fused CPU kernel: %s\n", inna_fused::cpu_simd_level().c_str());

  double first_loss = 0.0, loss_value = 0.0;
  for (int step = 0; step <= 400; ++step) {
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    optimizer.step();
    loss_value = loss.item<double>();
    if (step == 0) first_loss = loss_value;
    if (step % 50 == 0) std::printf("step %3d  loss %.5f\n", step, loss_value);
  }
  const bool learned = loss_value < 0.1 * first_loss;
  std::printf("loss %.5f -> %.5f: %s\n", first_loss, loss_value,
              learned ? "decreased more than tenfold" : "did NOT decrease enough");
  return learned ? 0 : 1;
}
