// optim.cpp — inna_fused::INNA, the torch::optim-style optimizer over the registered op.
//
// Layering as in the Python package: step() gathers (param, grad, psi, step) from the param groups
// and their state, checks every pair of every group, then calls the op inna_fused::fused_inna_
// once per (device, dtype), through the dispatcher (so the CPU or CUDA kernel is chosen by device).
#include "inna_fused/optim.h"

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

// ---- Options -----------------------------------------------------------------------------------

INNAOptions::INNAOptions(double lr) : lr_(lr) {}

void INNAOptions::validate() const {
  auto finite = [](double x) { return std::isfinite(x); };
  TORCH_CHECK_VALUE(finite(lr()) && lr() >= 0, "INNA: invalid lr: ", lr(),
                    " (need finite lr >= 0)");
  TORCH_CHECK_VALUE(finite(alpha()) && alpha() > 0, "INNA: invalid alpha: ", alpha(),
                    " (need finite alpha > 0)");
  TORCH_CHECK_VALUE(finite(beta()) && beta() > 0, "INNA: invalid beta: ", beta(),
                    " (need finite beta > 0)");
  TORCH_CHECK_VALUE(finite(decaypower()) && decaypower() >= 0, "INNA: invalid decaypower: ",
                    decaypower(), " (need finite decaypower >= 0)");
  TORCH_CHECK_VALUE(finite(weight_decay()) && weight_decay() >= 0,
                    "INNA: invalid weight_decay: ", weight_decay(),
                    " (need finite weight_decay >= 0)");
  TORCH_CHECK_VALUE(psi_init() == PsiInit::Paper || psi_init() == PsiInit::Zero,
                    "INNA: invalid psi_init value ", static_cast<int>(psi_init()));
}

bool operator==(const INNAOptions& lhs, const INNAOptions& rhs) {
  return lhs.lr() == rhs.lr() && lhs.alpha() == rhs.alpha() && lhs.beta() == rhs.beta() &&
         lhs.decaypower() == rhs.decaypower() && lhs.weight_decay() == rhs.weight_decay() &&
         lhs.psi_init() == rhs.psi_init() &&
         lhs.decoupled_weight_decay() == rhs.decoupled_weight_decay() &&
         lhs.maximize() == rhs.maximize();
}

void INNAOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(alpha);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(beta);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(decaypower);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(decoupled_weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(maximize);
  archive.write("psi_init", c10::IValue(to_string(psi_init())));  // the Python spelling
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
}

double INNAOptions::get_lr() const { return lr(); }

void INNAOptions::set_lr(const double lr) { this->lr(lr); }

// ---- Per-parameter state -----------------------------------------------------------------------

bool operator==(const INNAParamState& lhs, const INNAParamState& rhs) {
  auto same = [](const torch::Tensor& a, const torch::Tensor& b) {
    return a.defined() == b.defined() && (!a.defined() || torch::equal(a, b));
  };
  return same(lhs.psi(), rhs.psi()) && same(lhs.step(), rhs.step());
}

void INNAParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(psi);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
}

void INNAParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, psi);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, step);
}

// ---- The op ------------------------------------------------------------------------------------

namespace {

using FusedInnaSignature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                                double, double, double, double, double, bool, bool, bool,
                                const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&);

const c10::OperatorHandle& fused_inna_op() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("inna_fused::fused_inna_", "");
  return op;
}

// The dispatch key of a device's kernel, to say clearly which kernel this build lacks.
void check_kernel_for(const at::Device& device) {
  const auto key = c10::computeDispatchKey(std::nullopt, std::nullopt, device);
  TORCH_CHECK(fused_inna_op().hasKernelForDispatchKey(key),
              "INNA: this build of inna_fused has no kernel for ", device.type(),
              " tensors (build it with ",
              device.is_cuda() ? "-DINNA_FUSED_WITH_CUDA=ON)" : "the matching backend)");
}

at::ScalarType psi_dtype_for(at::ScalarType param_dtype) {
  return param_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

bool is_supported_param_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The real view the kernel updates (complex tensors as (..., 2) real tensors).
torch::Tensor real_view(const torch::Tensor& t) {
  return t.is_complex() ? torch::view_as_real(t) : t;
}

// What the op would reject in a (param, grad) pair; checked for all groups before the first call,
// so that a bad pair in a later group leaves earlier groups untouched (the op itself is
// all-or-nothing per call only).
void check_param_and_grad(const torch::Tensor& p, const torch::Tensor& g, size_t group,
                          size_t index) {
  const auto where = [&] {
    return "param_groups[" + std::to_string(group) + "].params[" + std::to_string(index) + "]";
  };
  TORCH_CHECK_TYPE(p.layout() == at::kStrided, "INNA: ", where(), " has layout ", p.layout(),
                   "; only strided params are supported");
  const auto real_dtype = p.is_complex() ? c10::toRealValueType(p.scalar_type()) : p.scalar_type();
  TORCH_CHECK_TYPE(is_supported_param_dtype(real_dtype), "INNA: ", where(), " has dtype ",
                   p.scalar_type(), "; supported are float32, float64, float16 and bfloat16 ",
                   "(and complex64/complex128)");
  TORCH_CHECK_TYPE(g.layout() == at::kStrided, "INNA: the grad of ", where(),
                   " is sparse; INNA does not support sparse gradients");
  TORCH_CHECK_TYPE(g.scalar_type() == p.scalar_type(), "INNA: the grad of ", where(),
                   " has dtype ", g.scalar_type(), " but the param has ", p.scalar_type());
  TORCH_CHECK_VALUE(g.device() == p.device(), "INNA: the grad of ", where(), " is on ",
                    g.device(), " but the param is on ", p.device());
  TORCH_CHECK_VALUE(g.sizes() == p.sizes(), "INNA: the grad of ", where(), " has shape ",
                    g.sizes(), " but the param has shape ", p.sizes());
}

// The lists of one (device, dtype) of one param group.
struct Bucket {
  at::Device device;
  at::ScalarType dtype;
  std::vector<at::Tensor> params, psis, grads, steps;
};

}  // namespace

void fused_inna_(at::TensorList params, at::TensorList psis, at::TensorList grads,
                 at::TensorList steps, const INNAOptions& options) {
  static const auto op = fused_inna_op().typed<FusedInnaSignature>();
  op.call(params, psis, grads, steps, options.lr(), options.alpha(), options.beta(),
          options.decaypower(), options.weight_decay(), options.decoupled_weight_decay(),
          options.psi_init() == PsiInit::Paper, options.maximize(), std::nullopt, std::nullopt);
}

// ---- The optimizer -----------------------------------------------------------------------------

namespace {

// The INNAOptions of a group as given by the user; throws for options of another optimizer.
const INNAOptions& inna_options_of(const torch::optim::OptimizerParamGroup& group) {
  const auto* options = dynamic_cast<const INNAOptions*>(&group.options());
  TORCH_CHECK_TYPE(options != nullptr, "INNA: a param group has options of another optimizer");
  return *options;
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
}

void INNA::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  std::optional<INNAOptions> options;
  if (param_group.has_options()) {
    options = inna_options_of(param_group);
    options->validate();
  }
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
  // changed through param_groups() were not seen by the constructor), then every (param, grad).
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
      check_kernel_for(p.device());
    }
  }

  for (size_t gi = 0; gi < param_groups().size(); ++gi) {
    std::vector<Bucket> buckets;  // few (device, dtype) pairs: a linear search is enough
    for (const auto& p : param_groups()[gi].params()) {
      if (!p.grad().defined()) continue;
      auto& slot = state()[p.unsafeGetTensorImpl()];
      if (!slot) {
        // ψ is filled by the first step in the same pass; its contents are never read before.
        const auto psi_dtype = p.is_complex()
            ? c10::toComplexType(psi_dtype_for(c10::toRealValueType(p.scalar_type())))
            : psi_dtype_for(p.scalar_type());
        auto new_state = std::make_unique<INNAParamState>();
        new_state->psi(torch::empty_like(p, p.options().dtype(psi_dtype),
                                         at::MemoryFormat::Preserve));
        new_state->step(torch::zeros({}, p.options().dtype(torch::kFloat32)));
        slot = std::move(new_state);
      }
      auto& st = static_cast<INNAParamState&>(*slot);
      // State loaded from an archive may sit on another device than its param.
      if (st.step().device() != p.device()) st.step(st.step().to(p.device()));
      if (st.psi().device() != p.device()) st.psi(st.psi().to(p.device()));

      const auto param = real_view(p);
      auto it = std::find_if(buckets.begin(), buckets.end(), [&](const Bucket& b) {
        return b.device == param.device() && b.dtype == param.scalar_type();
      });
      if (it == buckets.end()) {
        buckets.push_back(Bucket{param.device(), param.scalar_type(), {}, {}, {}, {}});
        it = std::prev(buckets.end());
      }
      it->params.push_back(param);
      it->psis.push_back(real_view(st.psi()));
      it->grads.push_back(real_view(p.grad()));
      it->steps.push_back(st.step());
    }
    for (const auto& bucket : buckets) {
      fused_inna_(bucket.params, bucket.psis, bucket.grads, bucket.steps, *group_options[gi]);
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
}

}  // namespace inna_fused
