// inna_fused/optim.h — INNA and INNAprop for libtorch (C++) programs, in the style of
// torch::optim. (INNAprop: see its section below.)
//
//   #include <inna_fused/optim.h>
//   inna_fused::INNA optimizer(model->parameters(),
//                              inna_fused::INNAOptions(0.1).alpha(0.5).beta(0.1));
//   optimizer.zero_grad(); loss.backward(); optimizer.step();
//
// INNA is eq. (12) of Castera, Bolte, Févotte, Pauwels (JMLR 2021), with γ_k = lr / (k+1)^decaypower
// and k the steps θ has taken. The state kept per parameter is not the paper's ψ but the phase
//     w = (α − 1/β)·θ + ψ/β
// (the "φ" of eq. (12): the direction θ moves in, less β times the gradient). In w, eq. (12) reads,
// for a parameter θ with gradient v,
//     θ_{k+1} = θ_k − γ_k (w_k + β v_k)
//     w_{k+1} = (1 − α γ_k) w_k + (1 − αβ) γ_k v_k
// exactly (both from the OLD θ_k, w_k). Unlike ψ, w is gradient-sized and computed without the
// cancellation of two ~θ/β terms, so it can be stored in bfloat16 (state_dtype) and θ's own
// rounding never leaks into it. w is initialised on the first step: psi_init "paper":
// w₀ = (1 − β)v₀ (ψ₀ = (1 − αβ)θ₀ − (β² − β)v₀: the first step is one SGD step); "zero": w₀ = 0
// (ψ₀ = (1 − αβ)θ₀, the authors' code). Weight decay is coupled (θ's step gets + wd·θ and w's
// gradient term becomes v + wd·θ/β) unless decoupled_weight_decay (θ ← θ(1 − γ_k·wd) before the
// update, and w ← w + (1 − αβ)γ_k·wd·θ/β after the first step). csrc/inna_math.h is the reference.
//
// 16-bit stores (θ of float16/bfloat16 params, a bfloat16 phase) round stochastically by default
// (stochastic_rounding), with random bits that are a hash of (seed, k, numel, element index): the
// same on every run, thread count and device; stochastic_rounding(false) rounds to nearest.
//
// State per parameter (INNAParamState): `phase` (w; dtype: state_dtype, by default float32 for
// 16/32-bit params and float64 for float64 params; complex params are updated as real views, their
// phase is complex of that dtype, or with state_dtype bfloat16 a real bfloat16 tensor of shape
// (..., 2)) and `step` (a float32 0-d tensor on the param's device). step() calls the registered
// op inna_fused::fused_inna_ once per (device, param dtype, phase dtype) of each param group.
//
// Archives: options and state go through torch::save / torch::load. Archives written before the
// phase form (state `psi`, options without state_dtype / stochastic_rounding / seed) still load:
// missing options take their defaults and ψ is converted at load to w = (α − 1/β)θ + ψ/β in
// float64 from the params' current values, so load the model's params before the optimizer.
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>
#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

namespace inna_fused {

// How the state is initialised on a parameter's first step (named after the paper's ψ).
enum class PsiInit {
  Paper,  // ψ₀ = (1 − αβ)θ₀ − (β² − β)v₀, i.e. w₀ = (1 − β)v₀ (the paper's Sec. 5.2.1): the first
          // step is one SGD step, then that velocity −∇J(θ₀) decays at rate αγ per step and
          // carries θ about (1 − β)/α·|∇J(θ₀)| whatever the lr
  Zero,   // ψ₀ = (1 − αβ)θ₀, i.e. w₀ = 0: the authors' PyTorch code (the default)
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
  // Zero by default, as the Python class (Paper: see PsiInit).
  TORCH_ARG(PsiInit, psi_init) = PsiInit::Zero;
  TORCH_ARG(bool, decoupled_weight_decay) = false;
  TORCH_ARG(bool, maximize) = false;
  // dtype of the phase state; std::nullopt (the default): float32 for float16/bfloat16/float32
  // params, float64 for float64 params. bfloat16 is accepted for every param dtype, float32 for
  // 16/32-bit params, float64 for float64 params only; validate() rejects every other dtype and
  // the optimizer rejects a (param dtype, state_dtype) pair outside these rules.
  TORCH_ARG(std::optional<at::ScalarType>, state_dtype) = std::nullopt;
  // 16-bit stores (θ of float16/bfloat16 params, a bfloat16 phase) round stochastically; false:
  // round to nearest.
  TORCH_ARG(bool, stochastic_rounding) = true;
  // Seed of the rounding's counter-based random bits.
  TORCH_ARG(int64_t, seed) = 0;

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

// The state dtype a parameter of dtype `param_dtype` gets under `state_dtype` (for complex params:
// of their real dtype); throws c10::ValueError for a pair the rules above do not allow.
at::ScalarType resolve_state_dtype(std::optional<at::ScalarType> state_dtype,
                                   at::ScalarType param_dtype);

struct INNAParamState : public torch::optim::OptimizerCloneableParamState<INNAParamState> {
  TORCH_ARG(torch::Tensor, phase);  // w = (α − 1/β)θ + ψ/β, of the param's shape (see above)
  TORCH_ARG(torch::Tensor, step);   // float32 0-d tensor: k, the steps this parameter has taken
  // ψ read from an archive of the previous format; INNA::load() converts it into `phase` and
  // clears it. Never serialized.
  TORCH_ARG(torch::Tensor, legacy_psi);

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

// The registered op, typed: one in-place step on equal-length lists of one device, one param dtype
// and one phase dtype (phases float32 — float64 for float64 params — or bfloat16; steps 1-element
// float tensors). The op validates everything before writing. This is what INNA::step() calls per
// (device, param dtype, phase dtype) of a group; options.state_dtype() is not consulted here (the
// phases' dtype is).
void fused_inna_(at::TensorList params, at::TensorList grads, at::TensorList phases,
                 at::TensorList steps, const INNAOptions& options);

// ---- INNAprop ----------------------------------------------------------------------------------
//
// INNAprop (Bolte, Boustany, Pauwels, Purica 2024): INNA with an RMSprop-scaled gradient, as the
// Python class inna_fused.INNAprop (same defaults, rules, state and op). With γ = lr, λ =
// weight_decay and t = k + 1 (k the steps the param has taken), for a parameter θ with gradient g:
//     v ← σv + (1 − σ)g²;  d = √v/√(1 − σ^t) + ε;  u = g/d
//     w ← w + (1 − αβ)γλθ/β,  θ ← (1 − γλ)θ          (decoupled weight decay, when λ ≠ 0)
//     θ ← θ − γ(w + βu);  w ← (1 − αγ)w + (1 − αβ)γu
// which is the authors' step in their ψ = (1 − αβ)θ + βw exactly (w₀ = 0: ψ₀ = (1 − αβ)θ₀). The
// authors require γ < β (their θ update divides by β − γ). csrc/innaprop_math.h is the reference.
//
// State per parameter (INNApropParamState): `phase` (w) and `exp_avg_sq` (v), both in state_dtype
// (by default float32, float64 for float64 params; bfloat16: 4 bytes of state per param), and
// `step` (a float32 0-d tensor on the param's device). Complex params are refused (as in Python:
// pass torch::view_as_real views). step() calls the registered op inna_fused::fused_innaprop_ once
// per (device, param dtype, phase dtype) of each param group.
//
// Archives: options and state go through torch::save / torch::load. A param state that holds the
// authors' `psi` instead of `phase` also loads: ψ is converted at load to w = (ψ − (1 − αβ)θ)/β in
// float64 from the params' current values (load the model's params first); a `step` of another
// dtype (e.g. int64) becomes float32. Python state_dicts (torch.save of a dict) are not read.
struct INNApropOptions : public torch::optim::OptimizerCloneableOptions<INNApropOptions> {
  INNApropOptions(double lr = 1e-3);  // NOLINT: implicit like torch::optim::AdamOptions
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, alpha) = 0.1;
  TORCH_ARG(double, beta) = 0.9;
  TORCH_ARG(double, sigma) = 0.999;
  TORCH_ARG(double, eps) = 1e-8;
  // Decoupled (θ ← (1 − γλ)θ before the update), as the authors'.
  TORCH_ARG(double, weight_decay) = 0.01;
  TORCH_ARG(bool, maximize) = false;
  // dtype of the phase and of exp_avg_sq; the rules of INNAOptions::state_dtype. A bfloat16
  // exp_avg_sq rounds stochastically like the phase (with stochastic_rounding).
  TORCH_ARG(std::optional<at::ScalarType>, state_dtype) = std::nullopt;
  TORCH_ARG(bool, stochastic_rounding) = true;
  TORCH_ARG(int64_t, seed) = 0;

 public:
  // Throws c10::ValueError naming the first invalid hyper-parameter: 0 ≤ lr < beta, alpha > 0,
  // beta > 0, 0 ≤ sigma < 1, eps ≥ 0, weight_decay ≥ 0, all finite (the Python class's rules).
  void validate() const;

  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend bool operator==(const INNApropOptions& lhs, const INNApropOptions& rhs);
  double get_lr() const override;
  void set_lr(const double lr) override;
};

struct INNApropParamState
    : public torch::optim::OptimizerCloneableParamState<INNApropParamState> {
  TORCH_ARG(torch::Tensor, phase);       // w, with ψ = (1 − αβ)θ + βw; the param's shape
  TORCH_ARG(torch::Tensor, exp_avg_sq);  // v, in the phase's dtype
  TORCH_ARG(torch::Tensor, step);        // float32 0-d tensor: k, the steps this param has taken
  // ψ read from an archive in the authors' form; INNAprop::load() converts it into `phase` and
  // clears it. Never serialized.
  TORCH_ARG(torch::Tensor, legacy_psi);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend bool operator==(const INNApropParamState& lhs, const INNApropParamState& rhs);
};

class INNAprop : public torch::optim::Optimizer {
 public:
  // Every group's options are validated here; a group without options takes `defaults`.
  explicit INNAprop(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                    INNApropOptions defaults = {});
  explicit INNAprop(std::vector<torch::Tensor> params, INNApropOptions defaults = {});

  // As INNA::add_param_group (call it on the INNAprop, not through an Optimizer&).
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

  // One step on every parameter that has a gradient; `closure`, if given, is evaluated first with
  // grad mode on and its loss returned. All groups' options and all (param, grad) pairs are
  // checked before anything is written.
  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  template <typename Self, typename Archive>
  static void serialize(Self& self, Archive& archive) {
    torch::optim::serialize<INNApropParamState, INNApropOptions>(archive, self);
  }
};

// The registered op inna_fused::fused_innaprop_, typed: one in-place step on equal-length lists of
// one device, one param dtype and one phase dtype (exp_avg_sqs in the phase dtype; steps
// 1-element float tensors). What INNAprop::step() calls per bucket.
void fused_innaprop_(at::TensorList params, at::TensorList grads, at::TensorList phases,
                     at::TensorList exp_avg_sqs, at::TensorList steps,
                     const INNApropOptions& options);

// SIMD level the CPU kernel was compiled for, e.g. "AVX2+FMA+F16C".
std::string cpu_simd_level();

}  // namespace inna_fused
