// test_optim.cpp — the C++ optimizer inna_fused::INNA against (a) eq. (12) transcribed below as
// scalar loops in double, in the paper's ψ (the optimizer keeps the phase w = (α − 1/β)θ + ψ/β;
// the comparisons convert the transcription's ψ to w in double), (b) the registered op called
// directly through the dispatcher, and its serialization (including archives of the ψ format),
// options checking, all-or-nothing behaviour and low-precision training.
//
//   test_optim            run every case
//   test_optim NAME       run one case (CTest registers one test per case)
//   test_optim --list     print the case names
// What this file shares with test_innaprop.cpp (runner, checks, procedures) is in test_support.h.
#include "test_support.h"

#include <inna_fused/optim.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

using inna_fused::INNA;
using inna_fused::INNAOptions;
using inna_fused::INNAParamState;
using inna_fused::PsiInit;

namespace inna_fused_test {
template <>
struct OptimTraits<INNA> {
  using Options = INNAOptions;
  using State = INNAParamState;
  static NamedTensors state_tensors(const State& st) {
    return {{"phase", st.phase()}, {"step", st.step()}};
  }
};
}  // namespace inna_fused_test

namespace {

using namespace inna_fused_test;

// ---- Eq. (12), one parameter, in double --------------------------------------------------------

struct Eq12Param {
  std::vector<double> theta, psi;
  int64_t k = 0;
};

void eq12_step(Eq12Param& p, const std::vector<double>& grad, const INNAOptions& o) {
  const double a = o.alpha(), b = o.beta(), wd = o.weight_decay();
  const double gamma = o.lr() / std::pow(p.k + 1.0, o.decaypower());
  for (size_t i = 0; i < p.theta.size(); ++i) {
    const double v = o.maximize() ? -grad[i] : grad[i];
    double theta = p.theta[i];
    if (o.decoupled_weight_decay()) theta *= 1.0 - gamma * wd;
    if (p.k == 0) {
      p.psi[i] = (1.0 - a * b) * theta;
      if (o.psi_init() == PsiInit::Paper) p.psi[i] -= (b * b - b) * v;
    }
    const double phase = (a - 1.0 / b) * theta + p.psi[i] / b;
    double theta_step = phase + b * v;
    if (!o.decoupled_weight_decay()) theta_step += wd * theta;
    p.psi[i] -= gamma * phase;
    p.theta[i] = theta - gamma * theta_step;
  }
  ++p.k;
}

Eq12Param eq12_from(const torch::Tensor& p) {
  return {to_doubles(p), std::vector<double>(p.numel(), 0.0), 0};
}

// The transcription's phase w = (α − 1/β)θ + ψ/β, in double.
std::vector<double> eq12_phase(const Eq12Param& p, const INNAOptions& o) {
  std::vector<double> w(p.theta.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = (o.alpha() - 1.0 / o.beta()) * p.theta[i] + p.psi[i] / o.beta();
  }
  return w;
}

// Restart the transcription from θ as stored (rounded to the param's dtype), keeping its phase w:
// ψ moves by (1 − αβ)(θ_stored − θ). With `phase` given, restart from that stored phase too.
void eq12_restart(Eq12Param& p, const torch::Tensor& theta, const INNAOptions& o,
                  const torch::Tensor& phase = {}) {
  const auto stored = to_doubles(theta);
  const auto w = phase.defined() ? to_doubles(phase) : eq12_phase(p, o);
  for (size_t i = 0; i < stored.size(); ++i) {
    p.theta[i] = stored[i];
    p.psi[i] = o.beta() * (w[i] - (o.alpha() - 1.0 / o.beta()) * stored[i]);
  }
}

// The options the comparisons sweep: both ψ inits × no/coupled/decoupled weight decay ×
// constant/decaying steps × minimize/maximize.
std::vector<std::pair<std::string, INNAOptions>> option_sweep() {
  std::vector<std::pair<std::string, INNAOptions>> sweep;
  for (auto init : {PsiInit::Paper, PsiInit::Zero}) {
    for (int wd_mode = 0; wd_mode < 3; ++wd_mode) {
      for (double q : {0.0, 0.5}) {
        for (bool maximize : {false, true}) {
          auto o = INNAOptions(0.05).alpha(0.7).beta(0.2).decaypower(q).psi_init(init)
                       .maximize(maximize).weight_decay(wd_mode == 0 ? 0.0 : 0.3)
                       .decoupled_weight_decay(wd_mode == 2);
          std::string name = "psi_init=" + inna_fused::to_string(init) +
                             (wd_mode == 0 ? "-wd=none" : wd_mode == 1 ? "-wd=coupled" : "-wd=decoupled") +
                             "-decaypower=" + (q == 0.0 ? "0" : "0.5") +
                             (maximize ? "-maximize" : "");
          sweep.emplace_back(name, o);
        }
      }
    }
  }
  return sweep;
}

// ---- Cases ---------------------------------------------------------------------------------------

// INNA on float64 params against eq. (12) in double, 6 steps, every option combination.
void optimizer_matches_eq12_float64() {
  for (const auto& [name, options] : option_sweep()) {
    torch::manual_seed(1);
    std::vector<torch::Tensor> params = {torch::randn({3, 4}, torch::kDouble),
                                         torch::randn({5}, torch::kDouble)};
    std::vector<Eq12Param> ref = {eq12_from(params[0]), eq12_from(params[1])};
    INNA opt(params, options);
    step_with_reference<Eq12Param>(opt, params, ref, 0, 6, [&](Eq12Param& r, const torch::Tensor& g) {
      eq12_step(r, to_doubles(g), options);
    });
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& st = state_of(opt, params[i]);
      expect_close(params[i], ref[i].theta, 1e-12, 1e-12, name + " theta[" + std::to_string(i) + "]");
      expect_close(st.phase(), eq12_phase(ref[i], options), 1e-12, 1e-12,
                   name + " phase[" + std::to_string(i) + "]");
      expect(st.step().item<double>() == 6.0, name + ": step count is not 6");
    }
  }
}

// float32, float16 and bfloat16 params against eq. (12) in double, rounding to nearest
// (stochastic_rounding(false)). The transcription restarts every step from the param as stored
// (θ is rounded to its dtype after each step; the restart keeps its phase), so θ may differ by
// that rounding plus float32 arithmetic, and the phase (float32) by float32 arithmetic only.
void optimizer_matches_eq12_low_precision() {
  for (const auto& c : low_precision_cases()) {
    for (auto [name, options] : option_sweep()) {
      options.stochastic_rounding(false);
      torch::manual_seed(2);
      auto p = torch::randn({257}, torch::kDouble).to(c.dtype);
      auto ref = eq12_from(p);
      INNA opt({p}, options);
      const auto label = name + "-dtype=" + std::string(c10::toString(c.dtype));
      for (int step = 0; step < 4; ++step) {
        p.mutable_grad() = grad_for(p, step, 0);
        eq12_step(ref, to_doubles(p.grad()), options);
        opt.step();
        const auto at_step = label + " step " + std::to_string(step);
        expect(state_of(opt, p).phase().scalar_type() == torch::kFloat, at_step + " phase dtype");
        expect_close(p, ref.theta, 2e-6, c.theta_rtol, at_step + " theta");
        expect_close(state_of(opt, p).phase(), eq12_phase(ref, options), 2e-6, 1e-6,
                     at_step + " phase");
        eq12_restart(ref, p, options);
      }
    }
  }
}

// state_dtype(bfloat16): the phase is a bfloat16 tensor (2 bytes per element) for float64,
// float32 and bfloat16 params. Rounding to nearest, the phase may differ from eq. (12) by one
// bfloat16 rounding (≤ 2^-8 relative) plus float32 arithmetic; the transcription restarts every
// step from the stored θ and phase, so θ differs by its own rounding and arithmetic only.
void optimizer_matches_eq12_bf16_state() {
  struct Case { torch::ScalarType dtype; double theta_atol, theta_rtol; };
  for (const auto& c : {Case{torch::kDouble, 1e-12, 1e-12}, Case{torch::kFloat, 2e-6, 1e-6},
                        Case{torch::kBFloat16, 2e-6, 8e-3}}) {
    for (auto [name, options] : option_sweep()) {
      options.state_dtype(torch::kBFloat16).stochastic_rounding(false);
      torch::manual_seed(6);
      auto p = torch::randn({257}, torch::kDouble).to(c.dtype);
      auto ref = eq12_from(p);
      INNA opt({p}, options);
      const auto label = name + "-state_dtype=bfloat16-dtype=" + std::string(c10::toString(c.dtype));
      for (int step = 0; step < 4; ++step) {
        p.mutable_grad() = grad_for(p, step, 0);
        eq12_step(ref, to_doubles(p.grad()), options);
        opt.step();
        const auto at_step = label + " step " + std::to_string(step);
        const auto& phase = state_of(opt, p).phase();
        expect(phase.scalar_type() == torch::kBFloat16 && phase.element_size() == 2 &&
                   phase.sizes() == p.sizes(), at_step + ": phase is not a bfloat16 tensor of the param's shape");
        expect_close(p, ref.theta, c.theta_atol, c.theta_rtol, at_step + " theta");
        expect_close(phase, eq12_phase(ref, options), 2e-6, 4e-3, at_step + " phase");
        eq12_restart(ref, p, options, phase);
      }
    }
  }
}

// The optimizer against the op called directly, through the dispatcher, on copies: params of two
// dtypes in one group (two op calls) and a second group with other options. Bitwise equal.
void optimizer_matches_op_called_directly() {
  using Signature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double,
                         double, double, double, double, bool, bool, bool, bool, int64_t,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("inna_fused::fused_inna_", "").typed<Signature>();
  torch::manual_seed(3);
  check_matches_op_called_directly<INNA>(
      {{torch::randn({70000}), torch::randn({33}).to(torch::kBFloat16), torch::randn({2, 3}),
        torch::randn({9}).to(torch::kBFloat16)},
       {torch::randn({4, 5}, torch::kDouble)},
       {torch::randn({50}), torch::randn({20}).to(torch::kBFloat16),
        torch::randn({7}, torch::kDouble)}},
      {INNAOptions(0.1).decaypower(0.25).weight_decay(0.01),
       INNAOptions(0.02).alpha(1.3).psi_init("zero").maximize(true),
       INNAOptions(0.05).state_dtype(torch::kBFloat16).seed(7).decoupled_weight_decay(true)
           .weight_decay(0.1)},
      6,
      [](const torch::Tensor& p, const INNAOptions& o) -> std::vector<torch::Tensor> {
        return {torch::zeros_like(p, torch::dtype(inna_fused::resolve_state_dtype(
                                         o.state_dtype(), p.scalar_type()))),
                torch::zeros({}, torch::kFloat)};
      },
      [&](std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads,
          std::vector<std::vector<at::Tensor>>& state, const INNAOptions& o) {
        op.call(params, grads, state[0], state[1], o.lr(), o.alpha(), o.beta(), o.decaypower(),
                o.weight_decay(), o.decoupled_weight_decay(), o.psi_init() == PsiInit::Paper,
                o.maximize(), o.stochastic_rounding(), o.seed(), std::nullopt, std::nullopt);
      });
}

// State as in the Python class: phase float32 for 16-bit params (param dtype otherwise), or
// bfloat16 with state_dtype(bfloat16) (complex params: a real (..., 2) bfloat16 tensor); step a
// float32 0-d tensor on the param's device counting the steps; no state for params without grad.
void state_layout() {
  for (bool bf16_state : {false, true}) {
    std::vector<torch::Tensor> params = {torch::randn({4}).to(torch::kHalf),
                                         torch::randn({4}).to(torch::kBFloat16),
                                         torch::randn({4}), torch::randn({4}, torch::kDouble),
                                         torch::randn({3}, torch::kComplexFloat),
                                         torch::randn({4})};
    const torch::ScalarType phase_dtype[] = {torch::kFloat, torch::kFloat, torch::kFloat,
                                             torch::kDouble, torch::kComplexFloat};
    check_state_layout<INNA>(
        params, bf16_state ? INNAOptions().state_dtype(torch::kBFloat16) : INNAOptions(),
        [&](const INNAParamState& st, size_t i) {
          const auto which = std::string(bf16_state ? "bfloat16 " : "") + "phase of param " +
                             std::to_string(i);
          expect(st.phase().scalar_type() == (bf16_state ? torch::kBFloat16 : phase_dtype[i]),
                 which + ": dtype " + c10::toString(st.phase().scalar_type()));
          auto shape = params[i].sizes().vec();
          if (bf16_state && params[i].is_complex()) shape.push_back(2);
          expect(st.phase().sizes() == shape, which + ": shape");
          if (bf16_state) expect(st.phase().element_size() == 2, which + ": not 2 bytes per element");
        });
  }
}

// Complex params are updated as real views: same result as the float32 view updated directly.
void complex_params_as_real_views() {
  torch::manual_seed(4);
  auto z = torch::randn({6}, torch::kComplexFloat);
  auto x = torch::view_as_real(z).clone();
  INNA opt_z({z}, INNAOptions(0.1).weight_decay(0.1));
  INNA opt_x({x}, INNAOptions(0.1).weight_decay(0.1));
  for (int step = 0; step < 3; ++step) {
    z.mutable_grad() = torch::randn_like(z);
    x.mutable_grad() = torch::view_as_real(z.grad()).clone();
    opt_z.step();
    opt_x.step();
  }
  expect_equal(torch::view_as_real(z), x, "complex param");
  expect_equal(torch::view_as_real(state_of(opt_z, z).phase()), state_of(opt_x, x).phase(),
               "complex phase");
}

// torch::save after 3 steps, torch::load into a new optimizer over new params, 3 more steps: identical to 6
// uninterrupted steps. Options travel with the archive. Two groups (see test_support.h), one with
// a bfloat16 phase and stochastic rounding, one with a float64 phase.
void serialize_load_continues_identically() {
  check_serialize_load_continues_identically<INNA>(
      INNAOptions(0.05).decaypower(0.5).weight_decay(0.2).decoupled_weight_decay(true)
          .psi_init("zero").state_dtype(torch::kBFloat16).seed(123),
      INNAOptions(0.01).alpha(0.9).beta(0.3).maximize(true).stochastic_rounding(false)
          .state_dtype(torch::kDouble));
}

// An archive of the previous (ψ) format, written by hand in its layout: state `psi` and `step`,
// options without state_dtype / stochastic_rounding / seed. Loading converts ψ to the phase from
// the params' values, and training continues as eq. (12) (in ψ) does.
void load_archive_of_psi_format() {
  // The archive below spells psi_init "paper" (the previous default), so the options say so too.
  const auto options =
      INNAOptions(0.05).alpha(0.7).beta(0.2).decaypower(0.5).weight_decay(0.1).psi_init("paper");
  torch::manual_seed(7);
  std::vector<torch::Tensor> params = {torch::randn({6}, torch::kDouble), torch::randn({3, 5}),
                                       torch::randn({4}, torch::kComplexDouble)};
  // Eq. (12) for 3 steps; the complex param as its real view.
  auto real = [](const torch::Tensor& t) { return t.is_complex() ? torch::view_as_real(t) : t; };
  std::vector<Eq12Param> ref;
  for (const auto& p : params) ref.push_back(eq12_from(real(p)));
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      eq12_step(ref[i], to_doubles(real(grad_for(params[i], step, i))), options);
    }
  }
  // The params hold θ₃ (float32 θ rounded; the transcription restarts from it, keeping ψ as the
  // archive does).
  for (size_t i = 0; i < params.size(); ++i) {
    auto theta = torch::tensor(ref[i].theta, torch::kDouble).view(real(params[i]).sizes());
    real(params[i]).copy_(theta);
    ref[i].theta = to_doubles(real(params[i]));
  }
  INNA opt(params, INNAOptions(1.0));
  load_handwritten_archive(
      opt, params,
      [&](size_t i, torch::serialize::OutputArchive& param_state) {
        auto psi = torch::tensor(ref[i].psi, torch::kDouble).view(real(params[i]).sizes());
        if (params[i].scalar_type() == torch::kFloat) psi = psi.to(torch::kFloat);
        ref[i].psi = to_doubles(psi);  // the transcription continues from ψ as stored
        if (params[i].is_complex()) psi = torch::view_as_complex(psi);
        param_state.write("psi", psi);
        param_state.write("step", torch::full({}, 3.0f));
      },
      [&](torch::serialize::OutputArchive& old_options) {
        old_options.write("lr", options.lr());
        old_options.write("alpha", options.alpha());
        old_options.write("beta", options.beta());
        old_options.write("decaypower", options.decaypower());
        old_options.write("weight_decay", options.weight_decay());
        old_options.write("decoupled_weight_decay", options.decoupled_weight_decay());
        old_options.write("maximize", options.maximize());
        old_options.write("psi_init", c10::IValue(std::string("paper")));
      });
  expect(static_cast<const INNAOptions&>(opt.param_groups()[0].options()) == options,
         "options of the psi format not restored with the new options' defaults");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& st = state_of(opt, params[i]);
    expect(!st.legacy_psi().defined(), "legacy psi kept after load");
    expect(st.phase().scalar_type() == params[i].scalar_type(), "converted phase dtype");
    const bool f32 = params[i].scalar_type() == torch::kFloat;
    expect_close(real(st.phase()), eq12_phase(ref[i], options), f32 ? 2e-6 : 1e-12,
                 f32 ? 1e-6 : 1e-12, "converted phase of param " + std::to_string(i));
  }
  step_with_reference<Eq12Param>(opt, params, ref, 3, 6, [&](Eq12Param& r, const torch::Tensor& g) {
    eq12_step(r, to_doubles(real(g)), options);
  });
  for (size_t i = 0; i < params.size(); ++i) {
    const bool f32 = params[i].scalar_type() == torch::kFloat;
    const auto label = "after load, param " + std::to_string(i);
    expect_close(real(params[i]), ref[i].theta, f32 ? 2e-6 : 1e-12, f32 ? 1e-6 : 1e-12, label + " theta");
    expect_close(real(state_of(opt, params[i]).phase()), eq12_phase(ref[i], options),
                 f32 ? 2e-6 : 1e-12, f32 ? 1e-6 : 1e-12, label + " phase");
    expect(state_of(opt, params[i]).step().item<double>() == 6.0, label + ": step count is not 6");
  }
}

// bfloat16 params train with stochastic rounding: the regression of examples/cpp/train_tiny.cpp,
// model and data in bfloat16, reaches a final loss (evaluated in float32) within 1.5× of the
// float32 run's; with the default float32 phase and with state_dtype(bfloat16).
void bf16_stochastic_rounding_trains() {
  torch::manual_seed(0);
  const auto x = torch::randn({512, 3});
  const auto y = (torch::sin(3 * x.select(1, 0)) + 0.5 * x.select(1, 1).pow(2) - x.select(1, 2) +
                  0.05 * torch::randn({512})).unsqueeze(1);
  auto train = [&](torch::ScalarType dtype, const INNAOptions& options) {
    torch::manual_seed(1);
    torch::nn::Sequential model(torch::nn::Linear(3, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1));
    model->to(dtype);
    INNA opt(model->parameters(), options);
    const auto xd = x.to(dtype), yd = y.to(dtype);
    for (int step = 0; step < 400; ++step) {
      opt.zero_grad();
      torch::mse_loss(model->forward(xd), yd).backward();
      opt.step();
    }
    torch::NoGradGuard no_grad;
    model->to(torch::kFloat);
    return torch::mse_loss(model->forward(x), y).item<double>();
  };
  const auto options = INNAOptions(0.1).alpha(0.5).beta(0.1);
  const double fp32 = train(torch::kFloat, options);
  const double bf16 = train(torch::kBFloat16, options);
  const double bf16_state = train(torch::kBFloat16, INNAOptions(options).state_dtype(torch::kBFloat16));
  const double bf16_nearest = train(torch::kBFloat16, INNAOptions(options).stochastic_rounding(false));
  std::cout << "final loss: float32 " << fp32 << ", bfloat16 " << bf16 << ", bfloat16 + bfloat16 state "
            << bf16_state << " (round to nearest: " << bf16_nearest << ")" << std::endl;
  expect(bf16 <= 1.5 * fp32, "bfloat16 params with stochastic rounding: loss " + std::to_string(bf16) +
                                 " > 1.5 × float32's " + std::to_string(fp32));
  expect(bf16_state <= 1.5 * fp32, "bfloat16 params and state: loss " + std::to_string(bf16_state) +
                                       " > 1.5 × float32's " + std::to_string(fp32));
}

void bad_options_rejected() {
  auto p = torch::randn({3});
  using V = c10::ValueError;
  expect_throws<V>([&] { INNA({p}, INNAOptions(-1.0)); }, "lr", "lr < 0");
  expect_throws<V>([&] { INNA({p}, INNAOptions(NAN)); }, "lr", "lr NaN");
  expect_throws<V>([&] { INNA({p}, INNAOptions().alpha(0.0)); }, "alpha", "alpha = 0");
  expect_throws<V>([&] { INNA({p}, INNAOptions().beta(-0.1)); }, "beta", "beta < 0");
  expect_throws<V>([&] { INNA({p}, INNAOptions().beta(INFINITY)); }, "beta", "beta inf");
  expect_throws<V>([&] { INNA({p}, INNAOptions().decaypower(-0.5)); }, "decaypower", "decaypower < 0");
  expect_throws<V>([&] { INNA({p}, INNAOptions().weight_decay(-1e-4)); }, "weight_decay", "weight_decay < 0");
  expect_throws<V>([&] { INNAOptions().psi_init("bogus"); }, "psi_init", "psi_init name");
  // state_dtype: float32/float64/bfloat16 only, and float64 only for float64 params, float32 only
  // for 16/32-bit params.
  for (auto t : {torch::kHalf, torch::kInt, torch::kComplexFloat}) {
    expect_throws<V>([&] { INNAOptions().state_dtype(t).validate(); }, "state_dtype",
                     std::string("state_dtype ") + c10::toString(t) + " (validate)");
    expect_throws<V>([&] { INNA({p}, INNAOptions().state_dtype(t)); }, "state_dtype",
                     std::string("state_dtype ") + c10::toString(t));
  }
  expect_throws<V>([&] { INNA({p}, INNAOptions().state_dtype(torch::kDouble)); }, "state_dtype",
                   "float64 state for a float32 param");
  expect_throws<V>([&] { INNA({torch::randn({3}, torch::kDouble)}, INNAOptions().state_dtype(torch::kFloat)); },
                   "state_dtype", "float32 state for a float64 param");
  expect_throws<V>([&] { INNA({torch::randn({3}, torch::kComplexDouble)}, INNAOptions().state_dtype(torch::kFloat)); },
                   "state_dtype", "float32 state for a complex128 param");
  for (auto t : {torch::kHalf, torch::kBFloat16, torch::kFloat}) {
    INNA({torch::randn({3}).to(t)}, INNAOptions().state_dtype(torch::kFloat));
    INNA({torch::randn({3}).to(t)}, INNAOptions().state_dtype(torch::kBFloat16));
  }
  INNA({torch::randn({3}, torch::kDouble)}, INNAOptions().state_dtype(torch::kDouble));
  INNA({torch::randn({3}, torch::kDouble)}, INNAOptions().state_dtype(torch::kBFloat16));
  // A group's own options are checked too.
  expect_group_refused<INNA, V>(p, std::make_unique<INNAOptions>(INNAOptions().beta(0.0)), "beta",
                                "group options");
  // Options of another optimizer are refused.
  expect_group_refused<INNA, c10::TypeError>(p, std::make_unique<torch::optim::SGDOptions>(0.1),
                                             "another optimizer", "SGD options");
}

// A problem anywhere (bad options of a later group, a bad grad in a later group) raises before
// anything is written: no param changes and no state is created.
void bad_step_changes_nothing() {
  auto good = torch::randn({4});
  auto later = torch::randn({4});
  const auto good0 = good.clone(), later0 = later.clone();
  INNA opt({good});
  good.mutable_grad() = torch::randn({4});

  expect_throws<c10::ValueError>(
      [&] {
        opt.add_param_group(torch::optim::OptimizerParamGroup(
            {later}, std::make_unique<INNAOptions>(INNAOptions(-0.1))));
      },
      "lr", "add_param_group with lr < 0");
  expect(opt.param_groups().size() == 1, "a refused group was added");
  opt.add_param_group(torch::optim::OptimizerParamGroup(
      {later}, std::make_unique<INNAOptions>(INNAOptions(0.3).alpha(0.9))));
  expect(static_cast<const INNAOptions&>(opt.param_groups()[1].options()) ==
             INNAOptions(0.3).alpha(0.9), "add_param_group did not keep the group's options");

  // Options made invalid after the group was added are caught by step().
  later.mutable_grad() = torch::randn({4});
  opt.param_groups()[1].options().set_lr(-0.1);
  expect_throws<c10::ValueError>([&] { opt.step(); }, "lr", "later group with lr < 0");
  expect_equal(good, good0, "first group's param after a refused step");
  expect(opt.state().empty(), "state created by a refused step");

  opt.param_groups()[1].options().set_lr(0.1);
  auto unchanged = [&](const std::string&) {
    expect_equal(good, good0, "first group's param after a refused step");
    expect_equal(later, later0, "second group's param after a refused step");
    expect(opt.state().empty(), "state created by a refused step");
  };
  expect_bad_grads_refused(opt, later, unchanged);
  // A state_dtype that does not fit a param, set after construction: refused before any write,
  // in step() (a later group) and in add_param_group.
  later.mutable_grad() = torch::randn({4});
  static_cast<INNAOptions&>(opt.param_groups()[1].options()).state_dtype(torch::kDouble);
  expect_throws<c10::ValueError>([&] { opt.step(); }, "state_dtype", "float64 state for float32 params");
  static_cast<INNAOptions&>(opt.param_groups()[1].options()).state_dtype(torch::kHalf);
  expect_throws<c10::ValueError>([&] { opt.step(); }, "state_dtype", "float16 state");
  unchanged("float16 state");
  static_cast<INNAOptions&>(opt.param_groups()[1].options()).state_dtype(std::nullopt);
  expect_throws<c10::ValueError>(
      [&] {
        opt.add_param_group(torch::optim::OptimizerParamGroup(
            {torch::randn({2}, torch::kDouble)},
            std::make_unique<INNAOptions>(INNAOptions().state_dtype(torch::kFloat))));
      },
      "state_dtype", "add_param_group with float32 state for a float64 param");
  expect(opt.param_groups().size() == 2, "a refused group was added");

  expect_integer_param_refused<INNA>();
}

// step(closure) evaluates the closure with grad mode on and returns its loss; set_lr (what LR
// schedulers call) changes the next step.
void closure_and_set_lr() {
  auto w = torch::tensor({1.0, -2.0}, torch::kDouble).requires_grad_(true);
  const auto options = INNAOptions(0.1);
  INNA opt({w}, options);
  auto ref = eq12_from(w);
  auto closure = [&] {
    opt.zero_grad();
    auto loss = (w * w).sum();
    loss.backward();
    return loss;
  };
  const double expected_loss = (w * w).sum().item<double>();
  auto loss = opt.step(closure);
  expect(loss.defined() && loss.item<double>() == expected_loss, "step(closure) loss");
  eq12_step(ref, {2.0 * 1.0, 2.0 * -2.0}, options);
  expect_close(w, ref.theta, 1e-14, 1e-14, "after step(closure)");

  opt.param_groups()[0].options().set_lr(0.03);
  const auto grad = to_doubles(2.0 * w.detach());
  opt.step(closure);
  eq12_step(ref, grad, INNAOptions(0.03));
  expect_close(w, ref.theta, 1e-14, 1e-14, "after set_lr");
}

// Linking the library registers both overloads of the op with a CPU kernel.
void op_is_registered_for_cpu() {
  expect_op_registered_for_cpu("inna_fused::fused_inna_");
  expect(!inna_fused::cpu_simd_level().empty(), "cpu_simd_level is empty");
}

const Cases& cases() {
  static const Cases all = {
      {"optimizer_matches_eq12_float64", optimizer_matches_eq12_float64},
      {"optimizer_matches_eq12_low_precision", optimizer_matches_eq12_low_precision},
      {"optimizer_matches_eq12_bf16_state", optimizer_matches_eq12_bf16_state},
      {"optimizer_matches_op_called_directly", optimizer_matches_op_called_directly},
      {"state_layout", state_layout},
      {"complex_params_as_real_views", complex_params_as_real_views},
      {"serialize_load_continues_identically", serialize_load_continues_identically},
      {"load_archive_of_psi_format", load_archive_of_psi_format},
      {"bf16_stochastic_rounding_trains", bf16_stochastic_rounding_trains},
      {"bad_options_rejected", bad_options_rejected},
      {"bad_step_changes_nothing", bad_step_changes_nothing},
      {"closure_and_set_lr", closure_and_set_lr},
      {"op_is_registered_for_cpu", op_is_registered_for_cpu},
  };
  return all;
}

}  // namespace

int main(int argc, char** argv) { return inna_fused_test::run_cases(argc, argv, cases()); }
