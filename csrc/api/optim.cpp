// optim.cpp — inna_fused::INNA and inna_fused::INNAprop, the torch::optim-style optimizers over
// the registered ops.
//
// Layering as in the Python package: step() gathers (param, grad, phase[, exp_avg_sq], step) from
// the param groups and their state, checks every pair of every group, then calls the op
// inna_fused::fused_inna_ (fused_innaprop_) once per (device, param dtype, phase dtype), through
// the dispatcher (so the CPU or CUDA kernel is chosen by device).
#include "inna_fused/optim.h"

#include "contract.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <optional>
#include <utility>

namespace inna_fused {

PsiInit psi_init_from_string(const std::string& name) {
  if (name == "paper") return PsiInit::Paper;
  TORCH_CHECK_VALUE(name == "zero", "INNA: invalid psi_init: '", name,
                    "' (choose 'paper' or 'zero')");
  return PsiInit::Zero;
}

std::string to_string(PsiInit psi_init) {
  return psi_init == PsiInit::Paper ? "paper" : "zero";
}

namespace {

// The archive spelling of state_dtype: "default" or the dtype's Python name.
std::string state_dtype_name(std::optional<at::ScalarType> t) {
  if (!t) return "default";
  switch (*t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(*t);
  }
}

std::optional<at::ScalarType> state_dtype_from_name(const std::string& name,
                                                    const char* who = "INNA: ") {
  if (name == "default") return std::nullopt;
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  TORCH_CHECK_VALUE(name == "bfloat16", who, "invalid state_dtype in archive: '", name, "'");
  return at::kBFloat16;
}

// resolve_state_dtype with the optimizer's name (`who`: "INNA: " or "INNAprop: ") in messages.
at::ScalarType resolve_state_dtype_for(const char* who, std::optional<at::ScalarType> state_dtype,
                                       at::ScalarType param_dtype) {
  const at::ScalarType natural = contract::default_state_dtype(param_dtype);
  if (!state_dtype) return natural;
  TORCH_CHECK_VALUE(contract::is_state_dtype(*state_dtype), who, "invalid state_dtype: ",
                    *state_dtype, " (choose ", contract::kStateDtypeNames, ")");
  TORCH_CHECK_VALUE(contract::state_dtype_fits(param_dtype, *state_dtype), who, "state_dtype ",
                    *state_dtype, " does not fit a ", param_dtype, " param (it takes ", natural,
                    " or ", contract::kLowPrecisionStateDtype, ")");
  return *state_dtype;
}

}  // namespace

at::ScalarType resolve_state_dtype(std::optional<at::ScalarType> state_dtype,
                                   at::ScalarType param_dtype) {
  return resolve_state_dtype_for("INNA: ", state_dtype, param_dtype);
}

// ---- Options -----------------------------------------------------------------------------------

INNAOptions::INNAOptions(double lr) : lr_(lr) {}

void INNAOptions::validate() const {
  contract::check_hyper("INNA: ", /*check_lr=*/true, lr(), alpha(), beta(), decaypower(),
                        "decaypower", weight_decay());
  TORCH_CHECK_VALUE(psi_init() == PsiInit::Paper || psi_init() == PsiInit::Zero,
                    "INNA: invalid psi_init value ", static_cast<int>(psi_init()));
  TORCH_CHECK_VALUE(!state_dtype() || contract::is_state_dtype(*state_dtype()),
                    "INNA: invalid state_dtype: ", *state_dtype(), " (choose ",
                    contract::kStateDtypeNames, ")");
}

bool operator==(const INNAOptions& lhs, const INNAOptions& rhs) {
  return lhs.lr() == rhs.lr() && lhs.alpha() == rhs.alpha() && lhs.beta() == rhs.beta() &&
         lhs.decaypower() == rhs.decaypower() && lhs.weight_decay() == rhs.weight_decay() &&
         lhs.psi_init() == rhs.psi_init() &&
         lhs.decoupled_weight_decay() == rhs.decoupled_weight_decay() &&
         lhs.maximize() == rhs.maximize() && lhs.state_dtype() == rhs.state_dtype() &&
         lhs.stochastic_rounding() == rhs.stochastic_rounding() && lhs.seed() == rhs.seed();
}

void INNAOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(alpha);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(beta);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(decaypower);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(decoupled_weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(maximize);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(stochastic_rounding);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(seed);
  archive.write("psi_init", c10::IValue(to_string(psi_init())));  // the Python spelling
  archive.write("state_dtype", c10::IValue(state_dtype_name(state_dtype())));
}

void INNAOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, alpha);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, beta);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, decaypower);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, decoupled_weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, maximize);
  c10::IValue name;
  archive.read("psi_init", name);
  psi_init(psi_init_from_string(name.toStringRef()));
  // Absent from archives written before the phase form: keep the defaults.
  c10::IValue value;
  state_dtype(archive.try_read("state_dtype", value)
                  ? state_dtype_from_name(value.toStringRef())
                  : std::nullopt);
  stochastic_rounding(archive.try_read("stochastic_rounding", value) ? value.toBool() : true);
  seed(archive.try_read("seed", value) ? value.toInt() : 0);
}

double INNAOptions::get_lr() const { return lr(); }

void INNAOptions::set_lr(const double lr) { this->lr(lr); }

// ---- Per-parameter state -----------------------------------------------------------------------

bool operator==(const INNAParamState& lhs, const INNAParamState& rhs) {
  auto same = [](const torch::Tensor& a, const torch::Tensor& b) {
    return a.defined() == b.defined() && (!a.defined() || torch::equal(a, b));
  };
  return same(lhs.phase(), rhs.phase()) && same(lhs.step(), rhs.step());
}

void INNAParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(phase);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
}

void INNAParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, phase);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, step);
  // The previous format kept ψ; INNA::load() turns it into the phase (it needs θ, α and β).
  torch::Tensor psi;
  if (!phase().defined() && archive.try_read("psi", psi)) legacy_psi(psi);
}

// ---- The op ------------------------------------------------------------------------------------

namespace {

using FusedInnaSignature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                                double, double, double, double, double, bool, bool, bool, bool,
                                int64_t, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&);

const c10::OperatorHandle& fused_inna_op() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("inna_fused::fused_inna_", "");
  return op;
}

// The dispatch key of a device's kernel, to say clearly which kernel this build lacks.
void check_kernel_for(const c10::OperatorHandle& op, const at::Device& device,
                      const char* who = "INNA: ") {
  const auto key = c10::computeDispatchKey(std::nullopt, std::nullopt, device);
  TORCH_CHECK(op.hasKernelForDispatchKey(key),
              who, "this build of inna_fused has no kernel for ", device.type(),
              " tensors (build it with ",
              device.is_cuda() ? "-DINNA_FUSED_WITH_CUDA=ON)" : "the matching backend)");
}

// The real view the kernel updates (complex tensors as (..., 2) real tensors).
torch::Tensor real_view(const torch::Tensor& t) {
  return t.is_complex() ? torch::view_as_real(t) : t;
}

// What the op would reject in a (param, grad) pair; checked for all groups before the first call,
// so that a bad pair in a later group leaves earlier groups untouched (the op itself is
// all-or-nothing per call only).
// `who`: "INNA" or "INNAprop"; `complex_ok`: whether complex params are updated as real views
// (INNA) or refused (INNAprop, as its Python class).
void check_param_and_grad(const torch::Tensor& p, const torch::Tensor& g, size_t group,
                          size_t index, const std::string& who = "INNA", bool complex_ok = true) {
  const auto where = [&] {
    return "param_groups[" + std::to_string(group) + "].params[" + std::to_string(index) + "]";
  };
  const auto prefix = who + ": ";
  TORCH_CHECK_TYPE(p.layout() == at::kStrided, prefix, where(), " has layout ", p.layout(),
                   "; only strided params are supported");
  TORCH_CHECK_TYPE(complex_ok || !p.is_complex(), prefix, where(), " is complex (",
                   p.scalar_type(), "); ", who,
                   " takes real params (pass torch::view_as_real views)");
  const auto real_dtype = p.is_complex() ? c10::toRealValueType(p.scalar_type()) : p.scalar_type();
  TORCH_CHECK_TYPE(contract::is_param_dtype(real_dtype), prefix, where(), " has dtype ",
                   p.scalar_type(), "; supported are ", contract::param_dtype_names(),
                   complex_ok ? " (and complex64/complex128)" : "");
  TORCH_CHECK_TYPE(g.layout() == at::kStrided, prefix, "the grad of ", where(), " is sparse; ",
                   who, " does not support sparse gradients");
  TORCH_CHECK_TYPE(g.scalar_type() == p.scalar_type(), prefix, "the grad of ", where(),
                   " has dtype ", g.scalar_type(), " but the param has ", p.scalar_type());
  TORCH_CHECK_VALUE(g.device() == p.device(), prefix, "the grad of ", where(), " is on ",
                    g.device(), " but the param is on ", p.device());
  TORCH_CHECK_VALUE(g.sizes() == p.sizes(), prefix, "the grad of ", where(), " has shape ",
                    g.sizes(), " but the param has shape ", p.sizes());
}

// The dtype and shape of the phase of param p (complex params: see optim.h).
std::pair<at::ScalarType, std::vector<int64_t>> phase_layout(const torch::Tensor& p,
                                                             const INNAOptions& options) {
  const auto real = p.is_complex() ? c10::toRealValueType(p.scalar_type()) : p.scalar_type();
  const auto dtype = resolve_state_dtype(options.state_dtype(), real);
  std::vector<int64_t> shape(p.sizes().begin(), p.sizes().end());
  if (!p.is_complex()) return {dtype, shape};
  if (dtype == at::kBFloat16) {
    shape.push_back(2);
    return {dtype, shape};
  }
  return {c10::toComplexType(dtype), shape};
}

// The lists of one (device, param dtype, phase dtype) of one param group.
struct Bucket {
  at::Device device;
  at::ScalarType dtype, phase_dtype;
  std::vector<at::Tensor> params, grads, phases, steps;
};

}  // namespace

void fused_inna_(at::TensorList params, at::TensorList grads, at::TensorList phases,
                 at::TensorList steps, const INNAOptions& options) {
  static const auto op = fused_inna_op().typed<FusedInnaSignature>();
  op.call(params, grads, phases, steps, options.lr(), options.alpha(), options.beta(),
          options.decaypower(), options.weight_decay(), options.decoupled_weight_decay(),
          options.psi_init() == PsiInit::Paper, options.maximize(), options.stochastic_rounding(),
          options.seed(), std::nullopt, std::nullopt);
}

// ---- The optimizer -----------------------------------------------------------------------------

namespace {

// The INNAOptions of a group as given by the user; throws for options of another optimizer.
const INNAOptions& inna_options_of(const torch::optim::OptimizerParamGroup& group) {
  const auto* options = dynamic_cast<const INNAOptions*>(&group.options());
  TORCH_CHECK_TYPE(options != nullptr, "INNA: a param group has options of another optimizer");
  return *options;
}

// state_dtype against every param of a group whose dtype INNA supports (the others are refused
// by step() with a TypeError); throws c10::ValueError.
void check_state_dtype(const std::vector<torch::Tensor>& params, const INNAOptions& options) {
  for (const auto& p : params) {
    const auto real = p.is_complex() ? c10::toRealValueType(p.scalar_type()) : p.scalar_type();
    if (contract::is_param_dtype(real)) resolve_state_dtype(options.state_dtype(), real);
  }
}

// A fresh phase for p (the first step fills it; its contents are never read before).
torch::Tensor new_phase(const torch::Tensor& p, const INNAOptions& options) {
  const auto [dtype, shape] = phase_layout(p, options);
  if (p.is_complex() && !c10::isComplexType(dtype)) {
    return torch::empty_like(torch::view_as_real(p), p.options().dtype(dtype),
                             at::MemoryFormat::Preserve);
  }
  return torch::empty_like(p, p.options().dtype(dtype), at::MemoryFormat::Preserve);
}

// `phase` (any of the layouts p's phase may have) in the layout options give p, on p's device.
torch::Tensor to_phase_layout(const torch::Tensor& phase, const torch::Tensor& p,
                              const INNAOptions& options) {
  const auto [dtype, shape] = phase_layout(p, options);
  auto out = phase;
  if (out.device() != p.device()) out = out.to(p.device());
  if (out.scalar_type() == dtype) return out;
  const auto real_dtype = c10::isComplexType(dtype) ? c10::toRealValueType(dtype) : dtype;
  out = real_view(out).to(real_dtype);
  if (c10::isComplexType(dtype)) out = torch::view_as_complex(out.contiguous());
  return out;
}

}  // namespace

// torch::optim::Optimizer::add_param_group (not virtual) merges a group's own options only for
// torch's own optimizers and gives any other optimizer's groups the defaults (torch 2.14 does);
// INNA puts each group's own options back.
INNA::INNA(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
           INNAOptions defaults)
    : Optimizer(param_groups, std::make_unique<INNAOptions>(defaults)) {
  defaults.validate();
  for (size_t i = 0; i < param_groups.size(); ++i) {
    if (param_groups[i].has_options()) {
      const auto& options = inna_options_of(param_groups[i]);
      options.validate();
      this->param_groups()[i].set_options(std::make_unique<INNAOptions>(options));
    }
  }
  for (const auto& group : this->param_groups()) {
    check_state_dtype(group.params(), inna_options_of(group));
  }
}

void INNA::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  std::optional<INNAOptions> options;
  if (param_group.has_options()) {
    options = inna_options_of(param_group);
    options->validate();
  }
  check_state_dtype(param_group.params(),
                    options ? *options : static_cast<const INNAOptions&>(defaults()));
  Optimizer::add_param_group(param_group);
  if (options) param_groups().back().set_options(std::make_unique<INNAOptions>(*options));
}

INNA::INNA(std::vector<torch::Tensor> params, INNAOptions defaults)
    : INNA({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

torch::Tensor INNA::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }

  // Check everything first: options of every group (groups added later by add_param_group or
  // changed through param_groups() were not seen by the constructor), then every (param, grad)
  // and the state dtype each param gets.
  std::vector<const INNAOptions*> group_options;
  for (size_t gi = 0; gi < param_groups().size(); ++gi) {
    const auto& group = param_groups()[gi];
    const auto& options = inna_options_of(group);
    options.validate();
    group_options.push_back(&options);
    for (size_t i = 0; i < group.params().size(); ++i) {
      const auto& p = group.params()[i];
      if (!p.grad().defined()) continue;
      check_param_and_grad(p, p.grad(), gi, i);
      check_kernel_for(fused_inna_op(), p.device());
      phase_layout(p, options);
    }
  }

  for (size_t gi = 0; gi < param_groups().size(); ++gi) {
    const auto& options = *group_options[gi];
    std::vector<Bucket> buckets;  // few (device, dtypes) triples: a linear search is enough
    for (const auto& p : param_groups()[gi].params()) {
      if (!p.grad().defined()) continue;
      auto& slot = state()[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto new_state = std::make_unique<INNAParamState>();
        new_state->phase(new_phase(p, options));
        new_state->step(torch::zeros({}, p.options().dtype(torch::kFloat32)));
        slot = std::move(new_state);
      }
      auto& st = static_cast<INNAParamState&>(*slot);
      // State loaded from an archive may sit on another device than its param, and a changed
      // state_dtype converts the phase here.
      if (st.step().device() != p.device()) st.step(st.step().to(p.device()));
      st.phase(to_phase_layout(st.phase(), p, options));

      const auto param = real_view(p);
      const auto phase = real_view(st.phase());
      auto it = std::find_if(buckets.begin(), buckets.end(), [&](const Bucket& b) {
        return b.device == param.device() && b.dtype == param.scalar_type() &&
               b.phase_dtype == phase.scalar_type();
      });
      if (it == buckets.end()) {
        buckets.push_back(
            Bucket{param.device(), param.scalar_type(), phase.scalar_type(), {}, {}, {}, {}});
        it = std::prev(buckets.end());
      }
      it->params.push_back(param);
      it->phases.push_back(phase);
      it->grads.push_back(real_view(p.grad()));
      it->steps.push_back(st.step());
    }
    for (const auto& bucket : buckets) {
      fused_inna_(bucket.params, bucket.grads, bucket.phases, bucket.steps, options);
    }
  }
  return loss;
}

void INNA::save(torch::serialize::OutputArchive& archive) const { serialize(*this, archive); }

void INNA::load(torch::serialize::InputArchive& archive) {
  serialize(*this, archive);
  for (const auto& group : param_groups()) {
    static_cast<const INNAOptions&>(group.options()).validate();
  }
  // An archive of the previous format holds ψ: w = (α − 1/β)θ + ψ/β, in float64, from the params'
  // current values (the model must be loaded first), stored in the group's state dtype.
  torch::NoGradGuard no_grad;
  for (const auto& group : param_groups()) {
    const auto& options = static_cast<const INNAOptions&>(group.options());
    for (const auto& p : group.params()) {
      auto it = state().find(p.unsafeGetTensorImpl());
      if (it == state().end()) continue;
      auto& st = static_cast<INNAParamState&>(*it->second);
      TORCH_CHECK(st.phase().defined() || st.legacy_psi().defined(),
                  "INNA: the archive holds a parameter state with neither phase nor psi");
      if (!st.legacy_psi().defined()) continue;
      const auto wide = p.is_complex() ? torch::kComplexDouble : torch::kDouble;
      const auto theta = p.detach().to(p.device(), wide);
      const auto psi = st.legacy_psi().to(p.device(), wide);
      const double a = options.alpha(), b = options.beta();
      st.phase(to_phase_layout(theta * (a - 1.0 / b) + psi / b, p, options));
      st.legacy_psi(torch::Tensor());
    }
  }
}

// ==== INNAprop ==================================================================================

// ---- Options -----------------------------------------------------------------------------------

INNApropOptions::INNApropOptions(double lr) : lr_(lr) {}

void INNApropOptions::validate() const {
  contract::check_innaprop_hyper("INNAprop: ", /*check_lr=*/true, lr(), alpha(), beta(), sigma(),
                                 eps(), weight_decay());
  TORCH_CHECK_VALUE(!state_dtype() || contract::is_state_dtype(*state_dtype()),
                    "INNAprop: invalid state_dtype: ", *state_dtype(), " (choose ",
                    contract::kStateDtypeNames, ")");
}

bool operator==(const INNApropOptions& lhs, const INNApropOptions& rhs) {
  return lhs.lr() == rhs.lr() && lhs.alpha() == rhs.alpha() && lhs.beta() == rhs.beta() &&
         lhs.sigma() == rhs.sigma() && lhs.eps() == rhs.eps() &&
         lhs.weight_decay() == rhs.weight_decay() && lhs.maximize() == rhs.maximize() &&
         lhs.state_dtype() == rhs.state_dtype() &&
         lhs.stochastic_rounding() == rhs.stochastic_rounding() && lhs.seed() == rhs.seed();
}

void INNApropOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(alpha);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(beta);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(sigma);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(eps);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(maximize);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(stochastic_rounding);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(seed);
  archive.write("state_dtype", c10::IValue(state_dtype_name(state_dtype())));
}

void INNApropOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, alpha);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, beta);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, sigma);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, eps);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  // Optional in an archive (the authors' options lack them): absent ones keep their defaults.
  c10::IValue value;
  maximize(archive.try_read("maximize", value) ? value.toBool() : false);
  state_dtype(archive.try_read("state_dtype", value)
                  ? state_dtype_from_name(value.toStringRef(), "INNAprop: ")
                  : std::nullopt);
  stochastic_rounding(archive.try_read("stochastic_rounding", value) ? value.toBool() : true);
  seed(archive.try_read("seed", value) ? value.toInt() : 0);
}

double INNApropOptions::get_lr() const { return lr(); }

void INNApropOptions::set_lr(const double lr) { this->lr(lr); }

// ---- Per-parameter state -----------------------------------------------------------------------

bool operator==(const INNApropParamState& lhs, const INNApropParamState& rhs) {
  auto same = [](const torch::Tensor& a, const torch::Tensor& b) {
    return a.defined() == b.defined() && (!a.defined() || torch::equal(a, b));
  };
  return same(lhs.phase(), rhs.phase()) && same(lhs.exp_avg_sq(), rhs.exp_avg_sq()) &&
         same(lhs.step(), rhs.step());
}

void INNApropParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(phase);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg_sq);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
}

void INNApropParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, phase);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, exp_avg_sq);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, step);
  // The authors' form keeps ψ; INNAprop::load() turns it into the phase (it needs θ, α and β).
  torch::Tensor psi;
  if (!phase().defined() && archive.try_read("psi", psi)) legacy_psi(psi);
}

// ---- The op ------------------------------------------------------------------------------------

namespace {

using FusedInnapropSignature = void(at::TensorList, at::TensorList, at::TensorList,
                                    at::TensorList, at::TensorList, double, double, double,
                                    double, double, double, bool, bool, int64_t,
                                    const std::optional<at::Tensor>&,
                                    const std::optional<at::Tensor>&);

const c10::OperatorHandle& fused_innaprop_op() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("inna_fused::fused_innaprop_", "");
  return op;
}

constexpr const char* kInnaprop = "INNAprop: ";

// The lists of one (device, param dtype, phase dtype) of one param group.
struct PropBucket {
  at::Device device;
  at::ScalarType dtype, phase_dtype;
  std::vector<at::Tensor> params, grads, phases, exp_avg_sqs, steps;
};

}  // namespace

void fused_innaprop_(at::TensorList params, at::TensorList grads, at::TensorList phases,
                     at::TensorList exp_avg_sqs, at::TensorList steps,
                     const INNApropOptions& options) {
  static const auto op = fused_innaprop_op().typed<FusedInnapropSignature>();
  op.call(params, grads, phases, exp_avg_sqs, steps, options.lr(), options.alpha(),
          options.beta(), options.sigma(), options.eps(), options.weight_decay(),
          options.maximize(), options.stochastic_rounding(), options.seed(), std::nullopt,
          std::nullopt);
}

// ---- The optimizer -----------------------------------------------------------------------------

namespace {

const INNApropOptions& innaprop_options_of(const torch::optim::OptimizerParamGroup& group) {
  const auto* options = dynamic_cast<const INNApropOptions*>(&group.options());
  TORCH_CHECK_TYPE(options != nullptr,
                   "INNAprop: a param group has options of another optimizer");
  return *options;
}

// Complex params are refused (c10::ValueError, as the Python class's add_param_group), and
// state_dtype is checked against every param whose dtype INNAprop supports (the others are
// refused by step() with a TypeError).
void check_innaprop_params(const std::vector<torch::Tensor>& params,
                           const INNApropOptions& options) {
  for (const auto& p : params) {
    TORCH_CHECK_VALUE(!p.is_complex(), "INNAprop: complex params are not supported (got a ",
                      p.scalar_type(), " param); pass torch::view_as_real views");
    if (contract::is_param_dtype(p.scalar_type())) {
      resolve_state_dtype_for(kInnaprop, options.state_dtype(), p.scalar_type());
    }
  }
}

// A state tensor (phase or exp_avg_sq) of an existing state must have the param's shape.
void check_state_shape(const torch::Tensor& t, const char* name, const torch::Tensor& p,
                       size_t group, size_t index) {
  TORCH_CHECK_VALUE(!t.defined() || t.sizes() == p.sizes(), kInnaprop, "the ", name,
                    " of param_groups[", group, "].params[", index, "] has shape ", t.sizes(),
                    " but the param has shape ", p.sizes());
}

}  // namespace

INNAprop::INNAprop(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                   INNApropOptions defaults)
    : Optimizer(param_groups, std::make_unique<INNApropOptions>(defaults)) {
  defaults.validate();
  for (size_t i = 0; i < param_groups.size(); ++i) {
    if (param_groups[i].has_options()) {
      const auto& options = innaprop_options_of(param_groups[i]);
      options.validate();
      this->param_groups()[i].set_options(std::make_unique<INNApropOptions>(options));
    }
  }
  for (const auto& group : this->param_groups()) {
    check_innaprop_params(group.params(), innaprop_options_of(group));
  }
}

INNAprop::INNAprop(std::vector<torch::Tensor> params, INNApropOptions defaults)
    : INNAprop({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void INNAprop::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  std::optional<INNApropOptions> options;
  if (param_group.has_options()) {
    options = innaprop_options_of(param_group);
    options->validate();
  }
  check_innaprop_params(param_group.params(),
                        options ? *options : static_cast<const INNApropOptions&>(defaults()));
  Optimizer::add_param_group(param_group);
  if (options) param_groups().back().set_options(std::make_unique<INNApropOptions>(*options));
}

torch::Tensor INNAprop::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }

  // Check everything first: every group's options, every (param, grad), the state dtype each
  // param gets and the shapes of existing (e.g. loaded) state.
  std::vector<const INNApropOptions*> group_options;
  for (size_t gi = 0; gi < param_groups().size(); ++gi) {
    const auto& group = param_groups()[gi];
    const auto& options = innaprop_options_of(group);
    options.validate();
    group_options.push_back(&options);
    for (size_t i = 0; i < group.params().size(); ++i) {
      const auto& p = group.params()[i];
      if (!p.grad().defined()) continue;
      check_param_and_grad(p, p.grad(), gi, i, "INNAprop", /*complex_ok=*/false);
      check_kernel_for(fused_innaprop_op(), p.device(), kInnaprop);
      resolve_state_dtype_for(kInnaprop, options.state_dtype(), p.scalar_type());
      auto it = state().find(p.unsafeGetTensorImpl());
      if (it != state().end()) {
        const auto& st = static_cast<const INNApropParamState&>(*it->second);
        check_state_shape(st.phase(), "phase", p, gi, i);
        check_state_shape(st.exp_avg_sq(), "exp_avg_sq", p, gi, i);
      }
    }
  }

  for (size_t gi = 0; gi < param_groups().size(); ++gi) {
    const auto& options = *group_options[gi];
    std::vector<PropBucket> buckets;  // few (device, dtypes) triples: a linear search is enough
    for (const auto& p : param_groups()[gi].params()) {
      if (!p.grad().defined()) continue;
      const auto phase_dtype =
          resolve_state_dtype_for(kInnaprop, options.state_dtype(), p.scalar_type());
      const auto sq_dtype = phase_dtype;  // exp_avg_sq takes the phase's dtype
      auto& slot = state()[p.unsafeGetTensorImpl()];
      if (!slot) {
        // Zeros as the Python class (the op never reads them on a param's first step).
        auto new_state = std::make_unique<INNApropParamState>();
        new_state->phase(torch::zeros_like(p, p.options().dtype(phase_dtype),
                                           at::MemoryFormat::Preserve));
        new_state->exp_avg_sq(torch::zeros_like(p, p.options().dtype(sq_dtype),
                                                at::MemoryFormat::Preserve));
        new_state->step(torch::zeros({}, p.options().dtype(torch::kFloat32)));
        slot = std::move(new_state);
      }
      auto& st = static_cast<INNApropParamState&>(*slot);
      // State loaded from an archive may sit on another device or have another dtype; a changed
      // state_dtype converts the phase and exp_avg_sq here.
      if (st.step().device() != p.device()) st.step(st.step().to(p.device()));
      st.phase(st.phase().to(p.device(), phase_dtype));
      st.exp_avg_sq(st.exp_avg_sq().to(p.device(), sq_dtype));

      auto it = std::find_if(buckets.begin(), buckets.end(), [&](const PropBucket& b) {
        return b.device == p.device() && b.dtype == p.scalar_type() &&
               b.phase_dtype == phase_dtype;
      });
      if (it == buckets.end()) {
        buckets.push_back(PropBucket{p.device(), p.scalar_type(), phase_dtype, {}, {}, {}, {}, {}});
        it = std::prev(buckets.end());
      }
      it->params.push_back(p);
      it->grads.push_back(p.grad());
      it->phases.push_back(st.phase());
      it->exp_avg_sqs.push_back(st.exp_avg_sq());
      it->steps.push_back(st.step());
    }
    for (const auto& b : buckets) {
      fused_innaprop_(b.params, b.grads, b.phases, b.exp_avg_sqs, b.steps, options);
    }
  }
  return loss;
}

void INNAprop::save(torch::serialize::OutputArchive& archive) const { serialize(*this, archive); }

void INNAprop::load(torch::serialize::InputArchive& archive) {
  serialize(*this, archive);
  for (const auto& group : param_groups()) {
    static_cast<const INNApropOptions&>(group.options()).validate();
  }
  // The authors' ψ: w = (ψ − (1 − αβ)θ)/β, in float64, from the params' current values (the
  // model must be loaded first), stored in the group's state dtype; other step dtypes: float32.
  torch::NoGradGuard no_grad;
  for (const auto& group : param_groups()) {
    const auto& options = static_cast<const INNApropOptions&>(group.options());
    for (const auto& p : group.params()) {
      auto it = state().find(p.unsafeGetTensorImpl());
      if (it == state().end()) continue;
      auto& st = static_cast<INNApropParamState&>(*it->second);
      TORCH_CHECK_VALUE(st.phase().defined() || st.legacy_psi().defined(),
                        "INNAprop: the archive holds a parameter state with neither phase nor psi");
      TORCH_CHECK_VALUE(st.exp_avg_sq().defined(),
                        "INNAprop: the archive holds a parameter state without exp_avg_sq");
      TORCH_CHECK_VALUE(st.step().defined() && st.step().numel() == 1,
                        "INNAprop: the archive holds a parameter state without a one-element step");
      if (st.step().scalar_type() != torch::kFloat32) {
        st.step(st.step().to(torch::kFloat32).reshape({}));
      }
      if (!st.legacy_psi().defined()) continue;
      const auto theta = p.detach().to(p.device(), torch::kDouble);
      const auto psi = st.legacy_psi().to(p.device(), torch::kDouble);
      const double a = options.alpha(), b = options.beta();
      st.phase(((psi - (1.0 - a * b) * theta) / b)
                   .to(resolve_state_dtype_for(kInnaprop, options.state_dtype(),
                                               p.scalar_type())));
      st.legacy_psi(torch::Tensor());
    }
  }
}

}  // namespace inna_fused
