// inna_fused/optim.h — INNA for libtorch (C++) programs, in the style of torch::optim.
//
//   #include <inna_fused/optim.h>
//   inna_fused::INNA optimizer(model->parameters(),
//                              inna_fused::INNAOptions(0.1).alpha(0.5).beta(0.1));
//   optimizer.zero_grad(); loss.backward(); optimizer.step();
//
// For each parameter θ with gradient v and buffer ψ, one step is eq. (12) of Castera, Bolte,
// Févotte, Pauwels (JMLR 2021), with γ_k = lr / (k+1)^decaypower and k the steps θ has taken:
//   φ_k     = (α − 1/β) θ_k + ψ_k / β
//   ψ_{k+1} = ψ_k − γ_k φ_k
//   θ_{k+1} = θ_k − γ_k (φ_k + β v_k)
// ψ is initialised on the first step: psi_init "paper": ψ₀ = (1 − αβ)θ₀ − (β² − β)v₀; "zero":
// ψ₀ = (1 − αβ)θ₀ (the authors' code). Weight decay is coupled (θ's step gets + wd·θ) unless
// decoupled_weight_decay (θ ← θ(1 − γ_k·wd) before the update).
//
// Semantics and state match the Python class inna_fused.INNA: per parameter `psi` (float32 for
// 16-bit params, the param's dtype otherwise; complex params are updated as real views) and
// `step` (a float32 0-d tensor on the param's device). step() calls the registered op
// inna_fused::fused_inna_ once per (device, dtype) of each param group.
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>
#include <torch/types.h>

#include <string>
#include <vector>

namespace inna_fused {

// How ψ is initialised on a parameter's first step.
enum class PsiInit {
  Paper,  // ψ₀ = (1 − αβ)θ₀ − (β² − β)v₀: the first step is one SGD step
  Zero,   // ψ₀ = (1 − αβ)θ₀: the authors' PyTorch code
};

// "paper" / "zero" (the Python spelling); throws c10::ValueError for any other name.
PsiInit psi_init_from_string(const std::string& name);
std::string to_string(PsiInit psi_init);

struct INNAOptions : public torch::optim::OptimizerCloneableOptions<INNAOptions> {
  INNAOptions(double lr = 0.1);  // NOLINT: implicit like torch::optim::AdamOptions
  TORCH_ARG(double, lr) = 0.1;
  TORCH_ARG(double, alpha) = 0.5;
  TORCH_ARG(double, beta) = 0.1;
  TORCH_ARG(double, decaypower) = 0.0;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(PsiInit, psi_init) = PsiInit::Paper;
  TORCH_ARG(bool, decoupled_weight_decay) = false;
  TORCH_ARG(bool, maximize) = false;

 public:
  INNAOptions& psi_init(const std::string& name) { return psi_init(psi_init_from_string(name)); }
  INNAOptions& psi_init(const char* name) { return psi_init(psi_init_from_string(name)); }

  // Throws c10::ValueError naming the first invalid hyper-parameter (the Python class's rules).
  void validate() const;

  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend bool operator==(const INNAOptions& lhs, const INNAOptions& rhs);
  double get_lr() const override;
  void set_lr(const double lr) override;
};

struct INNAParamState : public torch::optim::OptimizerCloneableParamState<INNAParamState> {
  TORCH_ARG(torch::Tensor, psi);
  TORCH_ARG(torch::Tensor, step);  // float32 0-d tensor: k, the steps this parameter has taken

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend bool operator==(const INNAParamState& lhs, const INNAParamState& rhs);
};

class INNA : public torch::optim::Optimizer {
 public:
  // Every group's options are validated here; a group without options takes `defaults`.
  explicit INNA(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                INNAOptions defaults = {});
  explicit INNA(std::vector<torch::Tensor> params, INNAOptions defaults = {});

  // Adds a group; its own options (validated here) are kept, a group without options takes the
  // defaults. (Call it on the INNA, not through an Optimizer&: the base version is not virtual and
  // replaces the options of a non-torch optimizer's group with the defaults.)
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

  // One step on every parameter that has a gradient. `closure`, if given, is evaluated first with
  // grad mode on, and its loss is returned. All groups' options and all (param, grad) pairs are
  // checked before anything is written.
  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  template <typename Self, typename Archive>
  static void serialize(Self& self, Archive& archive) {
    torch::optim::serialize<INNAParamState, INNAOptions>(archive, self);
  }
};

// The registered op, typed: one in-place step on equal-length lists of one device and one param
// dtype (psis in psi dtype, steps 1-element float tensors). The op validates everything before
// writing. This is what INNA::step() calls per (device, dtype) group.
void fused_inna_(at::TensorList params, at::TensorList psis, at::TensorList grads,
                 at::TensorList steps, const INNAOptions& options);

// SIMD level the CPU kernel was compiled for, e.g. "AVX2+FMA+F16C".
std::string cpu_simd_level();

}  // namespace inna_fused
