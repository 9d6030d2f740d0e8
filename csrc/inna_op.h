// inna_op.h — the device-independent half of the fused INNA op.
//
// `inna_fused::fused_inna_` is defined once (op_schema.cpp). Each backend (cpu/, cuda/)
// registers an implementation that calls run_fused_inna() with its own kernel. run_fused_inna()
// validates every tensor of the call before anything is written (all-or-nothing), routes tensors
// whose memory cannot be walked linearly through contiguous temporaries, and hands the backend
// lists in which param, grad and phase of each entry share one dense, non-overlapping layout, so
// that a kernel may treat each entry as three flat arrays of numel() elements.
//
// The state is the phase w = (α − 1/β)·θ + ψ/β (inna_math.h says why), not the paper's ψ.
#pragma once

#include "contract.h"
#include "inna_math.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <utility>
#include <vector>

namespace inna_fused {

enum class Algorithm { kInna, kInnaprop };

struct InnaHyper {
  double lr = 0.0;                       // used when lr_tensor is empty
  std::optional<at::Tensor> lr_tensor;   // 1-element tensor (CUDA graphs / torch.compile)
  double alpha = 0.5;
  double beta = 0.1;
  double decay_power = 0.0;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;
  bool paper_init = true;
  bool maximize = false;
  bool stochastic_rounding = true;       // 16-bit stores (θ, a bfloat16 phase) round stochastically
  int64_t seed = 0;                      // seed of the rounding's counter-based random bits
  std::optional<at::Tensor> grad_scale;  // grads are divided by it in-kernel (AMP)
  std::optional<at::Tensor> found_inf;   // non-zero: the call changes nothing (AMP)
  // INNAprop (fused_innaprop_): the same engine with a second-moment state (exp_avg_sqs);
  // decay_power, decoupled_weight_decay and paper_init do not apply (γ = lr, decoupled decay).
  Algorithm algorithm = Algorithm::kInna;
  double sigma = 0.999;
  double eps = 1e-8;
};

// What a backend kernel receives: equal-length lists, all of one device, one param dtype and one
// phase dtype (contract.h: state_dtype_fits); grads of the param dtype. steps[i] is a 1-element
// floating tensor holding k, the number of steps entry i has taken; the kernel must increment it
// unless found_inf is set.
struct InnaLists {
  std::vector<at::Tensor> params, grads, phases, steps;
  std::vector<at::Tensor> exp_avg_sqs;  // INNAprop only (empty for INNA): opmath dtype
};

using InnaKernel = void (*)(const InnaLists&, const InnaHyper&);

// For a backend: the per-call flags of the update (first_step is per tensor: the kernel sets it).
inline InnaFlags call_flags(const InnaHyper& h) {
  InnaFlags f{};
  f.paper_init = h.paper_init;
  f.scale_grad = contract::scales_grad(h.grad_scale.has_value(), h.maximize);
  f.decoupled_wd = contract::decoupled_wd(h.decoupled_weight_decay, h.weight_decay);
  f.coupled_wd = contract::coupled_wd(h.decoupled_weight_decay, h.weight_decay);
  return f;
}

// For a backend: calls f(contract::TypeTag<scalar_t>{}, contract::TypeTag<phase_t>{}) with the
// C++ types of the lists' param and phase dtypes.
template <typename F>
void dispatch_dtypes(const InnaLists& lists, F&& f) {
  contract::dispatch_param_and_state(
      lists.params[0].scalar_type(),
      lists.phases[0].scalar_type() == contract::kLowPrecisionStateDtype, std::forward<F>(f));
}

// Validate, prepare and run. Throws (c10::Error → RuntimeError/ValueError/TypeError in Python)
// before any write when anything is wrong.
void run_fused_inna(at::TensorList params, at::TensorList grads, at::TensorList phases,
                    at::TensorList steps, const InnaHyper& hyper, InnaKernel kernel);

// The same for INNAprop (hyper.algorithm == kInnaprop): one more written state list,
// exp_avg_sqs, validated and laid out like the phases but always in the params' opmath dtype.
void run_fused_innaprop(at::TensorList params, at::TensorList grads, at::TensorList phases,
                        at::TensorList exp_avg_sqs, at::TensorList steps, const InnaHyper& hyper,
                        InnaKernel kernel);

}  // namespace inna_fused

namespace inna_fused {

// The op's scalar arguments, in the schema's order, as an InnaHyper (a designated initialiser
// names every field; C++ code with fewer arguments writes InnaHyper{.lr = ..., .beta = ...}).
inline InnaHyper op_hyper(double lr, const std::optional<at::Tensor>& lr_tensor, double alpha,
                          double beta, double decay_power, double weight_decay,
                          bool decoupled_weight_decay, bool paper_init, bool maximize,
                          bool stochastic_rounding, int64_t seed,
                          const std::optional<at::Tensor>& grad_scale,
                          const std::optional<at::Tensor>& found_inf) {
  return InnaHyper{.lr = lr, .lr_tensor = lr_tensor, .alpha = alpha, .beta = beta,
                   .decay_power = decay_power, .weight_decay = weight_decay,
                   .decoupled_weight_decay = decoupled_weight_decay, .paper_init = paper_init,
                   .maximize = maximize, .stochastic_rounding = stochastic_rounding,
                   .seed = seed, .grad_scale = grad_scale, .found_inf = found_inf};
}

// The two overloads of the op, parameterised by the backend kernel; a backend registers them with
//   m.impl("fused_inna_", &fused_inna<my_kernel>);
//   m.impl("fused_inna_.tensor_lr", &fused_inna_tensor_lr<my_kernel>);
template <InnaKernel Kernel>
void fused_inna(at::TensorList params, at::TensorList grads, at::TensorList phases,
                at::TensorList steps, double lr, double alpha, double beta, double decay_power,
                double weight_decay, bool decoupled_weight_decay, bool paper_init, bool maximize,
                bool stochastic_rounding, int64_t seed,
                const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf) {
  run_fused_inna(params, grads, phases, steps,
                 op_hyper(lr, std::nullopt, alpha, beta, decay_power, weight_decay,
                          decoupled_weight_decay, paper_init, maximize, stochastic_rounding, seed,
                          grad_scale, found_inf),
                 Kernel);
}

template <InnaKernel Kernel>
void fused_inna_tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList phases,
                          at::TensorList steps, const at::Tensor& lr, double alpha, double beta,
                          double decay_power, double weight_decay, bool decoupled_weight_decay,
                          bool paper_init, bool maximize, bool stochastic_rounding, int64_t seed,
                          const std::optional<at::Tensor>& grad_scale,
                          const std::optional<at::Tensor>& found_inf) {
  run_fused_inna(params, grads, phases, steps,
                 op_hyper(0.0, lr, alpha, beta, decay_power, weight_decay, decoupled_weight_decay,
                          paper_init, maximize, stochastic_rounding, seed, grad_scale, found_inf),
                 Kernel);
}

}  // namespace inna_fused

namespace inna_fused {

inline InnaHyper innaprop_op_hyper(double lr, const std::optional<at::Tensor>& lr_tensor,
                                   double alpha, double beta, double sigma, double eps,
                                   double weight_decay, bool maximize, bool stochastic_rounding,
                                   int64_t seed, const std::optional<at::Tensor>& grad_scale,
                                   const std::optional<at::Tensor>& found_inf) {
  InnaHyper h{.lr = lr, .lr_tensor = lr_tensor, .alpha = alpha, .beta = beta,
              .decay_power = 0.0, .weight_decay = weight_decay,
              .decoupled_weight_decay = true, .paper_init = false, .maximize = maximize,
              .stochastic_rounding = stochastic_rounding, .seed = seed, .grad_scale = grad_scale,
              .found_inf = found_inf, .algorithm = Algorithm::kInnaprop, .sigma = sigma,
              .eps = eps};
  return h;
}

// The two overloads of fused_innaprop_, parameterised by the backend kernel.
template <InnaKernel Kernel>
void fused_innaprop(at::TensorList params, at::TensorList grads, at::TensorList phases,
                    at::TensorList exp_avg_sqs, at::TensorList steps, double lr, double alpha,
                    double beta, double sigma, double eps, double weight_decay, bool maximize,
                    bool stochastic_rounding, int64_t seed,
                    const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf) {
  run_fused_innaprop(params, grads, phases, exp_avg_sqs, steps,
                     innaprop_op_hyper(lr, std::nullopt, alpha, beta, sigma, eps, weight_decay,
                                       maximize, stochastic_rounding, seed, grad_scale,
                                       found_inf),
                     Kernel);
}

template <InnaKernel Kernel>
void fused_innaprop_tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList phases,
                              at::TensorList exp_avg_sqs, at::TensorList steps,
                              const at::Tensor& lr, double alpha, double beta, double sigma,
                              double eps, double weight_decay, bool maximize,
                              bool stochastic_rounding, int64_t seed,
                              const std::optional<at::Tensor>& grad_scale,
                              const std::optional<at::Tensor>& found_inf) {
  run_fused_innaprop(params, grads, phases, exp_avg_sqs, steps,
                     innaprop_op_hyper(0.0, lr, alpha, beta, sigma, eps, weight_decay, maximize,
                                       stochastic_rounding, seed, grad_scale, found_inf),
                     Kernel);
}

}  // namespace inna_fused
