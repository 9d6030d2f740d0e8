// contract.h — the rules of the fused INNA step, written once for C++: which dtypes a param and its
// state may have, which hyper-parameters are valid, and the per-tensor scalars every backend
// derives from them (the step size γ_k and the gradient factor). The op's validation
// (inna_op.cpp), the CPU kernel (cpu/inna_cpu.cpp), the CUDA launch and per-thread work (cuda/) and
// the libtorch optimizer (api/optim.cpp) all read them from here; the Python side has its own
// contract module.
//
// Light on purpose (c10 only): nvcc parses it in the device passes of cuda/inna_cuda.cu.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <string>
#include <type_traits>

namespace inna_fused {
namespace contract {

// ---- Dtypes ------------------------------------------------------------------------------------

// The param dtypes, as (C++ type, ScalarType, Python name): X(float, Float, "float32") ... Every
// backend instantiates its kernel for each of them (with each state dtype below), the op and the
// optimizer accept exactly these, and their error messages list them.
#define INNA_FOR_EACH_PARAM_TYPE(X) \
  X(float, Float, "float32")        \
  X(double, Double, "float64")      \
  X(c10::Half, Half, "float16")     \
  X(c10::BFloat16, BFloat16, "bfloat16")

// "float32, float64, float16 and bfloat16" (for error messages).
inline std::string param_dtype_names() {
  const char* names[] = {
#define INNA_PARAM_DTYPE_NAME(ctype, name, python_name) python_name,
      INNA_FOR_EACH_PARAM_TYPE(INNA_PARAM_DTYPE_NAME)
#undef INNA_PARAM_DTYPE_NAME
  };
  const size_t n = sizeof(names) / sizeof(names[0]);
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += i == 0 ? "" : i + 1 == n ? " and " : ", ";
    out += names[i];
  }
  return out;
}

C10_HOST_DEVICE constexpr bool is_param_dtype(at::ScalarType t) {
#define INNA_IS_PARAM_DTYPE(ctype, name, python_name) t == at::ScalarType::name ||
  return INNA_FOR_EACH_PARAM_TYPE(INNA_IS_PARAM_DTYPE) false;
#undef INNA_IS_PARAM_DTYPE
}

// The arithmetic ("opmath") type of a param type, which is also its default state type:
// float for 16/32-bit floats, double for float64.
template <typename scalar_t>
struct OpMath {
  using type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
};
template <typename scalar_t>
using opmath_t = typename OpMath<scalar_t>::type;

// The state (phase) dtype a param gets by default, and the one other state dtype every param
// dtype accepts.
constexpr at::ScalarType default_state_dtype(at::ScalarType param_dtype) {
  return param_dtype == at::kDouble ? at::kDouble : at::kFloat;
}
constexpr at::ScalarType kLowPrecisionStateDtype = at::kBFloat16;
using LowPrecisionState = c10::BFloat16;  // its C++ type

// Whether a (param dtype, state dtype) pair is allowed.
constexpr bool state_dtype_fits(at::ScalarType param_dtype, at::ScalarType state_dtype) {
  return state_dtype == default_state_dtype(param_dtype) ||
         state_dtype == kLowPrecisionStateDtype;
}

// Whether some param dtype takes this state dtype (the optimizer's state_dtype option).
constexpr bool is_state_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == kLowPrecisionStateDtype;
}
constexpr const char* kStateDtypeNames = "float32, float64 or bfloat16";

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<scalar_t>{}, TypeTag<phase_t>{}) with scalar_t the C++ type of `param_dtype` and
// phase_t that of the state: the opmath type, or bfloat16 when `low_precision_state`. Host code;
// the caller has validated both dtypes.
template <typename F>
void dispatch_param_and_state(at::ScalarType param_dtype, bool low_precision_state, F&& f) {
  switch (param_dtype) {
#define INNA_DISPATCH_CASE(ctype, name, python_name)              \
  case at::ScalarType::name:                                     \
    if (low_precision_state) {                                   \
      f(TypeTag<ctype>{}, TypeTag<LowPrecisionState>{});         \
    } else {                                                     \
      f(TypeTag<ctype>{}, TypeTag<opmath_t<ctype>>{});           \
    }                                                            \
    return;
    INNA_FOR_EACH_PARAM_TYPE(INNA_DISPATCH_CASE)
#undef INNA_DISPATCH_CASE
    default:
      TORCH_CHECK(false, "inna_fused: unsupported param dtype ", param_dtype);
  }
}

// ---- Hyper-parameters --------------------------------------------------------------------------

// The rules, each once: lr ≥ 0, α > 0, β > 0, decay_power ≥ 0, weight_decay ≥ 0, all finite.
inline bool valid_lr(double lr) { return std::isfinite(lr) && lr >= 0; }

// The checks below throw c10::ValueError naming the first invalid hyper-parameter. `who`
// prefixes the message ("inna_fused::fused_inna_: ", "INNA: "); check_lr = false skips lr (the
// op's lr given as a tensor is checked where it is read). The rules INNA and INNAprop share:
inline void check_lr_alpha_beta(const char* who, bool check_lr, double lr, double alpha,
                               double beta) {
  if (check_lr) {
    TORCH_CHECK_VALUE(valid_lr(lr), who, "invalid lr: ", lr, " (need finite lr >= 0)");
  }
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha > 0, who, "invalid alpha: ", alpha,
                    " (need finite alpha > 0)");
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta > 0, who, "invalid beta: ", beta,
                    " (need finite beta > 0)");
}

inline void check_weight_decay(const char* who, double weight_decay) {
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0, who,
                    "invalid weight_decay: ", weight_decay, " (need finite weight_decay >= 0)");
}

// INNA's rules; `decay_power_name` is the caller's spelling of it.
inline void check_hyper(const char* who, bool check_lr, double lr, double alpha, double beta,
                        double decay_power, const char* decay_power_name, double weight_decay) {
  check_lr_alpha_beta(who, check_lr, lr, alpha, beta);
  TORCH_CHECK_VALUE(std::isfinite(decay_power) && decay_power >= 0, who, "invalid ",
                    decay_power_name, ": ", decay_power, " (need finite ", decay_power_name,
                    " >= 0)");
  check_weight_decay(who, weight_decay);
}

// INNAprop's rules: lr ≥ 0, α > 0, β > 0, σ ∈ [0, 1), ε ≥ 0, weight_decay ≥ 0, all finite, and
// lr < β (the authors' requirement γ < β). check_lr = false skips the two lr rules (an lr tensor
// is checked where it is read: innaprop_lr_ok).
inline bool innaprop_lr_ok(double lr, double beta) { return valid_lr(lr) && lr < beta; }

inline void check_innaprop_hyper(const char* who, bool check_lr, double lr, double alpha,
                                 double beta, double sigma, double eps, double weight_decay) {
  check_lr_alpha_beta(who, check_lr, lr, alpha, beta);
  if (check_lr) {
    TORCH_CHECK_VALUE(lr < beta, who, "invalid lr: ", lr, " (need lr < beta = ", beta,
                      ", the authors' requirement gamma < beta)");
  }
  TORCH_CHECK_VALUE(std::isfinite(sigma) && sigma >= 0 && sigma < 1, who, "invalid sigma: ",
                    sigma, " (need 0 <= sigma < 1)");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, who, "invalid eps: ", eps,
                    " (need finite eps >= 0)");
  check_weight_decay(who, weight_decay);
}

// INNAprop's second moment (exp_avg_sq) has its phase's dtype: the opmath dtype (float32, float64
// for float64 params) or, with a bfloat16 phase, bfloat16 (rounded like the phase).

// ---- Per-tensor scalars (host and device) ------------------------------------------------------

// γ_k = lr / (k + 1)^q for a tensor that has taken k steps (eq. 12), in double.
C10_HOST_DEVICE inline double step_size(double lr, double k, double decay_power) {
#if defined(__CUDA_ARCH__)
  return decay_power == 0.0 ? lr : lr / ::pow(k + 1.0, decay_power);
#else
  return decay_power == 0.0 ? lr : lr / std::pow(k + 1.0, decay_power);
#endif
}

// sqrt(1 − σ^t) for a tensor that has taken k steps (t = k + 1), INNAprop's bias correction.
C10_HOST_DEVICE inline double innaprop_bias_sqrt(double sigma, double k) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(1.0 - ::pow(sigma, k + 1.0));
#else
  return std::sqrt(1.0 - std::pow(sigma, k + 1.0));
#endif
}

// The factor the raw gradient is multiplied by: 1/grad_scale rounded to float32 (as
// torch.amp.GradScaler.unscale_ does), negated when maximizing; 1 without either.
C10_HOST_DEVICE inline double grad_factor(bool has_grad_scale, double grad_scale, bool maximize) {
  const double factor = has_grad_scale ? static_cast<double>(static_cast<float>(1.0 / grad_scale))
                                       : 1.0;
  return maximize ? -factor : factor;
}

// Whether the gradient is multiplied at all (grad_factor() is not 1).
C10_HOST_DEVICE inline bool scales_grad(bool has_grad_scale, bool maximize) {
  return has_grad_scale || maximize;
}

// Which weight decay applies: none when wd is 0, else decoupled or coupled.
C10_HOST_DEVICE inline bool decoupled_wd(bool decoupled, double weight_decay) {
  return decoupled && weight_decay != 0.0;
}
C10_HOST_DEVICE inline bool coupled_wd(bool decoupled, double weight_decay) {
  return !decoupled && weight_decay != 0.0;
}

// A 16-bit store rounds stochastically when asked.
template <typename dst_t>
C10_HOST_DEVICE constexpr bool rounds_stochastically(bool stochastic_rounding) {
  return stochastic_rounding && sizeof(dst_t) == 2;
}

}  // namespace contract
}  // namespace inna_fused
