// test_innaprop.cpp — the C++ optimizer inna_fused::INNAprop against (a) the authors' step
// transcribed literally below with torch ops in float64 (their ψ form; the optimizer keeps the
// phase w with ψ = (1 − αβ)θ + βw), (b) the registered op inna_fused::fused_innaprop_ called
// directly through the dispatcher; its serialization (including archives in the authors' ψ form),
// options checking, all-or-nothing behaviour and bfloat16 training.
//
//   test_innaprop            run every case
//   test_innaprop NAME       run one case (CTest registers one test per case)
//   test_innaprop --list     print the case names
// INNA_FUSED_TEST_VERBOSE=1 prints the worst error ratio of every comparison with a reference.
// What this file shares with test_optim.cpp (runner, checks, procedures) is in test_support.h.
#include "test_support.h"

#include <inna_fused/optim.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

using inna_fused::INNAprop;
using inna_fused::INNApropOptions;
using inna_fused::INNApropParamState;

namespace inna_fused_test {
template <>
struct OptimTraits<INNAprop> {
  using Options = INNApropOptions;
  using State = INNApropParamState;
  static NamedTensors state_tensors(const State& st) {
    return {{"phase", st.phase()}, {"exp_avg_sq", st.exp_avg_sq()}, {"step", st.step()}};
  }
};
}  // namespace inna_fused_test

namespace {

using namespace inna_fused_test;

// ---- The authors' step, literally, in float64 ----------------------------------------------------
//
//   θ ← (1 − γλ)θ;  v ← σv + (1 − σ)g²;  d = √v/√(1 − σ^t) + ε
//   ψ ← (1 − γ/β)ψ + γ(1/β − α)θ
//   θ ← (1 + γ(1 − αβ)/(β − γ))θ − γ/(β − γ)ψ − γβ g/d
// with ψ₀ = (1 − αβ)θ₀ (θ₀ before the decay) and v₀ = 0.

struct Authors {
  torch::Tensor theta, psi, v;
  int64_t t = 0;
};

Authors authors_from(const torch::Tensor& p) {
  const auto theta = p.detach().to(torch::kDouble).clone();
  return {theta, torch::Tensor(), torch::zeros_like(theta), 0};
}

void authors_step(Authors& s, torch::Tensor g, const INNApropOptions& o) {
  const double lr = o.lr(), a = o.alpha(), b = o.beta(), sigma = o.sigma(), eps = o.eps(),
               wd = o.weight_decay();
  g = g.to(torch::kDouble);
  if (o.maximize()) g = -g;
  if (s.t == 0) s.psi = (1.0 - a * b) * s.theta;
  s.t += 1;
  s.theta = (1.0 - lr * wd) * s.theta;
  s.v = sigma * s.v + (1.0 - sigma) * g * g;
  const auto d = s.v.sqrt() / std::sqrt(1.0 - std::pow(sigma, static_cast<double>(s.t))) + eps;
  s.psi = (1.0 - lr / b) * s.psi + lr * (1.0 / b - a) * s.theta;
  s.theta = (1.0 + lr * (1.0 - a * b) / (b - lr)) * s.theta - lr / (b - lr) * s.psi -
            lr * b * g / d;
}

// ---- Helpers -----------------------------------------------------------------------------------

// The optimizer's state in the authors' form: ψ = (1 − αβ)θ + βw, in float64.
torch::Tensor psi_of(INNAprop& opt, const torch::Tensor& p, const INNApropOptions& o) {
  return (1.0 - o.alpha() * o.beta()) * p.detach().to(torch::kDouble) +
         o.beta() * state_of(opt, p).phase().to(torch::kDouble);
}

// The option sets compared with the authors' step: their defaults, the brief's second set, and
// maximize without weight decay.
std::vector<std::pair<std::string, INNApropOptions>> option_sets() {
  return {{"defaults", INNApropOptions()},
          {"lr=6e-4,alpha=beta=2,sigma=0.99,wd=0.1",
           INNApropOptions(6e-4).alpha(2.0).beta(2.0).sigma(0.99).weight_decay(0.1)},
          {"lr=0.01,alpha=0.5,beta=0.3,wd=0,eps=1e-6,maximize",
           INNApropOptions(0.01).alpha(0.5).beta(0.3).weight_decay(0.0).eps(1e-6).maximize(true)}};
}

// ---- Cases ---------------------------------------------------------------------------------------

// The defaults are the authors'.
void defaults_are_the_authors() {
  const INNApropOptions o;
  expect(o.lr() == 1e-3 && o.alpha() == 0.1 && o.beta() == 0.9 && o.sigma() == 0.999 &&
             o.eps() == 1e-8 && o.weight_decay() == 0.01 && !o.maximize() &&
             !o.state_dtype().has_value() && o.stochastic_rounding() && o.seed() == 0,
         "INNApropOptions defaults");
}

// float64 params against the authors' step, 100 steps, to 1e-12 relative: θ, ψ and v.
void optimizer_matches_authors_float64() {
  for (const auto& [name, options] : option_sets()) {
    torch::manual_seed(1);
    std::vector<torch::Tensor> params = {torch::randn({3, 4}, torch::kDouble),
                                         torch::randn({5}, torch::kDouble)};
    std::vector<Authors> ref = {authors_from(params[0]), authors_from(params[1])};
    INNAprop opt(params, options);
    step_with_reference<Authors>(opt, params, ref, 0, 100, [&](Authors& r, const torch::Tensor& g) {
      authors_step(r, g, options);
    });
    for (size_t i = 0; i < params.size(); ++i) {
      const auto label = name + " param " + std::to_string(i);
      const auto& st = state_of(opt, params[i]);
      expect_close(params[i], ref[i].theta, 1e-15, 1e-12, label + " theta");
      expect_close(psi_of(opt, params[i], options), ref[i].psi, 1e-15, 1e-12, label + " psi");
      expect_close(st.exp_avg_sq(), ref[i].v, 0.0, 1e-12, label + " exp_avg_sq");
      expect(st.step().item<double>() == 100.0, label + ": step count is not 100");
    }
  }
}

// set_lr between steps (what LR schedulers do: here a cosine schedule with warm-up) and
// step(closure): the authors' step with that step's γ, float64, 1e-12 relative.
void lr_schedule_and_closure_match_authors() {
  const auto base = INNApropOptions(2e-3).weight_decay(0.05);
  torch::manual_seed(2);
  auto w = torch::randn({6}, torch::kDouble).requires_grad_(true);
  const auto target = torch::randn({6}, torch::kDouble);
  auto ref = authors_from(w);
  INNAprop opt({w}, base);
  auto closure = [&] {
    opt.zero_grad();
    auto loss = ((w - target).pow(2) * torch::arange(1, 7, torch::kDouble)).sum();
    loss.backward();
    return loss;
  };
  for (int step = 0; step < 60; ++step) {
    const double lr = step < 5 ? base.lr() * (step + 1) / 5.0
                               : base.lr() * 0.5 * (1.0 + std::cos(M_PI * (step - 5) / 55.0));
    opt.param_groups()[0].options().set_lr(lr);
    const auto grad = 2.0 * (w.detach() - target) * torch::arange(1, 7, torch::kDouble);
    const double expected_loss = ((w.detach() - target).pow(2) *
                                  torch::arange(1, 7, torch::kDouble)).sum().item<double>();
    const auto loss = opt.step(closure);
    expect(loss.defined() && loss.item<double>() == expected_loss, "step(closure) loss");
    authors_step(ref, grad, INNApropOptions(base).lr(lr));
  }
  expect_close(w, ref.theta, 1e-15, 1e-12, "theta under an lr schedule");
  expect_close(psi_of(opt, w, base), ref.psi, 1e-15, 1e-12, "psi under an lr schedule");
}

// float32, float16 and bfloat16 params (round to nearest) against the authors' step, restarted
// every step from θ as stored (ψ moves by (1 − αβ)(θ_stored − θ), keeping w) and from the stored
// v: θ differs by its rounding plus float32 arithmetic.
void optimizer_matches_authors_low_precision() {
  for (const auto& c : low_precision_cases()) {
    for (auto [name, options] : option_sets()) {
      options.stochastic_rounding(false);
      torch::manual_seed(3);
      auto p = torch::randn({257}, torch::kDouble).to(c.dtype);
      auto ref = authors_from(p);
      INNAprop opt({p}, options);
      const auto label = name + " " + c10::toString(c.dtype);
      for (int step = 0; step < 5; ++step) {
        p.mutable_grad() = grad_for(p, step, 0);
        authors_step(ref, p.grad(), options);
        opt.step();
        const auto at = label + " step " + std::to_string(step);
        const auto& st = state_of(opt, p);
        expect(st.phase().scalar_type() == torch::kFloat &&
                   st.exp_avg_sq().scalar_type() == torch::kFloat, at + ": state dtypes");
        expect_close(p, ref.theta, 1e-6, c.theta_rtol, at + " theta");
        expect_close(st.exp_avg_sq(), ref.v, 1e-12, 1e-6, at + " exp_avg_sq");
        // Restart from what is stored.
        const auto stored = p.detach().to(torch::kDouble);
        const double ab = 1.0 - options.alpha() * options.beta();
        ref.psi = ab * stored + options.beta() * st.phase().to(torch::kDouble);
        ref.theta = stored;
        ref.v = st.exp_avg_sq().to(torch::kDouble);
      }
    }
  }
}

// The optimizer against the op called directly, on copies: params of two dtypes in one group
// (two op calls), a float64 group with other options, a group with a bfloat16 phase. Bitwise.
void optimizer_matches_op_called_directly() {
  using Signature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                         at::TensorList, double, double, double, double, double, double, bool,
                         bool, int64_t, const std::optional<at::Tensor>&,
                         const std::optional<at::Tensor>&);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("inna_fused::fused_innaprop_", "").typed<Signature>();
  torch::manual_seed(4);
  check_matches_op_called_directly<INNAprop>(
      {{torch::randn({70000}), torch::randn({33}).to(torch::kBFloat16), torch::randn({2, 3}),
        torch::randn({9}).to(torch::kHalf)},
       {torch::randn({4, 5}, torch::kDouble)},
       {torch::randn({50}), torch::randn({20}).to(torch::kBFloat16),
        torch::randn({7}, torch::kDouble)}},
      {INNApropOptions(0.01),
       INNApropOptions(0.02).alpha(1.3).beta(0.5).sigma(0.9).maximize(true).weight_decay(0.0),
       INNApropOptions(0.005).state_dtype(torch::kBFloat16).seed(7).weight_decay(0.1).eps(1e-6)},
      7,
      [](const torch::Tensor& p, const INNApropOptions& o) -> std::vector<torch::Tensor> {
        const auto opmath = p.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
        const auto state = torch::dtype(o.state_dtype().value_or(opmath));  // phase and v
        return {torch::zeros_like(p, state), torch::zeros_like(p, state),
                torch::zeros({}, torch::kFloat)};
      },
      [&](std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads,
          std::vector<std::vector<at::Tensor>>& state, const INNApropOptions& o) {
        op.call(params, grads, state[0], state[1], state[2], o.lr(), o.alpha(), o.beta(),
                o.sigma(), o.eps(), o.weight_decay(), o.maximize(), o.stochastic_rounding(),
                o.seed(), std::nullopt, std::nullopt);
      });
}

// State as in the Python class: phase and exp_avg_sq float32 for 16/32-bit params, float64 for
// float64 params, or both bfloat16 with state_dtype(bfloat16); step a float32 0-d tensor counting
// the steps; no state for params without grad.
void state_layout() {
  for (bool bf16_state : {false, true}) {
    std::vector<torch::Tensor> params = {torch::randn({4}).to(torch::kHalf),
                                         torch::randn({2, 2}).to(torch::kBFloat16),
                                         torch::randn({4}), torch::randn({3}, torch::kDouble),
                                         torch::randn({4})};
    const torch::ScalarType opmath[] = {torch::kFloat, torch::kFloat, torch::kFloat,
                                        torch::kDouble};
    check_state_layout<INNAprop>(
        params, bf16_state ? INNApropOptions().state_dtype(torch::kBFloat16) : INNApropOptions(),
        [&](const INNApropParamState& st, size_t i) {
          const auto which = std::string(bf16_state ? "bfloat16 state: " : "") + "param " +
                             std::to_string(i);
          expect(st.phase().scalar_type() == (bf16_state ? torch::kBFloat16 : opmath[i]),
                 which + ": phase dtype " + c10::toString(st.phase().scalar_type()));
          expect(st.exp_avg_sq().scalar_type() == st.phase().scalar_type(),
                 which + ": exp_avg_sq dtype " + c10::toString(st.exp_avg_sq().scalar_type()));
          expect(st.phase().sizes() == params[i].sizes() &&
                     st.exp_avg_sq().sizes() == params[i].sizes(), which + ": state shapes");
        });
  }
}

// A least-squares problem (loss floor 1e-4, the noise): bfloat16 params with stochastic rounding
// reach a loss (evaluated in float32) close to the float32 run's; with the default float32 state
// and with bfloat16 state (phase and exp_avg_sq). bfloat16's grid (2^-8 near |w| = 1) alone costs about the noise floor
// again (the float32 solution rounded to bfloat16 is printed), so "close" is within 5×; rounding
// to nearest stalls far above (updates below half a grid step are lost).
void bf16_stochastic_rounding_trains() {
  torch::manual_seed(0);
  const auto x = torch::randn({512, 32});
  const auto w_true = torch::randn({32, 1});
  const auto y = x.mm(w_true) + 0.01 * torch::randn({512, 1});
  const auto options = INNApropOptions(0.05).weight_decay(0.0);
  auto loss_of = [&](const torch::Tensor& w) {
    torch::NoGradGuard no_grad;
    return torch::mse_loss(x.mm(w.to(torch::kFloat)), y).item<double>();
  };
  auto train = [&](torch::ScalarType dtype, const INNApropOptions& o) {
    auto w = torch::zeros({32, 1}, dtype).requires_grad_(true);
    INNAprop opt({w}, o);
    const auto xd = x.to(dtype), yd = y.to(dtype);
    for (int step = 0; step < 1500; ++step) {
      // A decaying lr (as a scheduler would set it) lets the runs settle near the optimum.
      opt.param_groups()[0].options().set_lr(o.lr() * std::pow(0.997, step));
      opt.zero_grad();
      torch::mse_loss(xd.mm(w), yd).backward();
      opt.step();
    }
    return w.detach();
  };
  const auto w32 = train(torch::kFloat, options);
  const double fp32 = loss_of(w32);
  const double grid = loss_of(w32.to(torch::kBFloat16));
  const double bf16 = loss_of(train(torch::kBFloat16, options));
  const double bf16_state =
      loss_of(train(torch::kBFloat16, INNApropOptions(options).state_dtype(torch::kBFloat16)));
  const double bf16_nearest =
      loss_of(train(torch::kBFloat16, INNApropOptions(options).stochastic_rounding(false)));
  const double start = loss_of(torch::zeros({32, 1}));
  std::cout << "least squares, loss from " << start << ": float32 " << fp32
            << " (rounded to bfloat16: " << grid << "), bfloat16 " << bf16
            << ", bfloat16 + bfloat16 state " << bf16_state
            << " (bfloat16 rounding to nearest: " << bf16_nearest << ")" << std::endl;
  expect(fp32 < 2e-4, "float32 run did not reach the noise floor: " + std::to_string(fp32));
  const double bound = 5.0 * fp32;
  expect(bf16 <= bound, "bfloat16 params with stochastic rounding: loss " + std::to_string(bf16) +
                            " > 5 × float32's " + std::to_string(fp32));
  expect(bf16_state <= bound, "bfloat16 params and state: loss " + std::to_string(bf16_state) +
                                  " > 5 × float32's " + std::to_string(fp32));
  expect(bf16 < 0.5 * bf16_nearest, "stochastic rounding did not beat rounding to nearest");
}

void bad_options_rejected() {
  auto p = torch::randn({3});
  using V = c10::ValueError;
  using O = INNApropOptions;
  expect_throws<V>([&] { INNAprop({p}, O(-1e-3)); }, "lr", "lr < 0");
  expect_throws<V>([&] { INNAprop({p}, O(NAN)); }, "lr", "lr NaN");
  expect_throws<V>([&] { INNAprop({p}, O(0.9)); }, "lr", "lr = beta");
  expect_throws<V>([&] { INNAprop({p}, O(1.0)); }, "lr", "lr > beta");
  expect_throws<V>([&] { INNAprop({p}, O(0.5).beta(0.4)); }, "lr", "lr > beta (set beta)");
  expect_throws<V>([&] { INNAprop({p}, O().alpha(0.0)); }, "alpha", "alpha = 0");
  expect_throws<V>([&] { INNAprop({p}, O().alpha(INFINITY)); }, "alpha", "alpha inf");
  expect_throws<V>([&] { INNAprop({p}, O().beta(-0.1)); }, "beta", "beta < 0");
  expect_throws<V>([&] { INNAprop({p}, O().beta(0.0)); }, "beta", "beta = 0");
  expect_throws<V>([&] { INNAprop({p}, O().sigma(1.0)); }, "sigma", "sigma = 1");
  expect_throws<V>([&] { INNAprop({p}, O().sigma(-0.1)); }, "sigma", "sigma < 0");
  expect_throws<V>([&] { INNAprop({p}, O().sigma(NAN)); }, "sigma", "sigma NaN");
  expect_throws<V>([&] { INNAprop({p}, O().eps(-1e-8)); }, "eps", "eps < 0");
  expect_throws<V>([&] { INNAprop({p}, O().weight_decay(-1e-4)); }, "weight_decay", "weight_decay < 0");
  expect_throws<V>([&] { INNAprop({p}, O().weight_decay(INFINITY)); }, "weight_decay", "weight_decay inf");
  expect_throws<V>([&] { O().sigma(1.5).validate(); }, "sigma", "validate()");
  // Edge values that are allowed: lr 0, sigma 0, eps 0, weight_decay 0.
  INNAprop({p}, O(0.0).sigma(0.0).eps(0.0).weight_decay(0.0));
  // state_dtype: the rules of INNA.
  for (auto t : {torch::kHalf, torch::kInt}) {
    expect_throws<V>([&] { INNAprop({p}, O().state_dtype(t)); }, "state_dtype",
                     std::string("state_dtype ") + c10::toString(t));
  }
  expect_throws<V>([&] { INNAprop({p}, O().state_dtype(torch::kDouble)); }, "state_dtype",
                   "float64 phase for a float32 param");
  expect_throws<V>([&] { INNAprop({torch::randn({3}, torch::kDouble)}, O().state_dtype(torch::kFloat)); },
                   "state_dtype", "float32 phase for a float64 param");
  INNAprop({torch::randn({3}).to(torch::kBFloat16)}, O().state_dtype(torch::kBFloat16));
  INNAprop({torch::randn({3}, torch::kDouble)}, O().state_dtype(torch::kBFloat16));
  // Complex params are refused (as the Python class).
  expect_throws<V>([&] { INNAprop({torch::randn({3}, torch::kComplexFloat)}); }, "complex",
                   "complex param");
  // A group's own options are checked too; options of another optimizer are refused.
  expect_group_refused<INNAprop, V>(p, std::make_unique<O>(O().eps(-1.0)), "eps", "group options");
  expect_group_refused<INNAprop, c10::TypeError>(
      p, std::make_unique<torch::optim::AdamOptions>(0.1), "another optimizer", "Adam options");
}

// A problem in the second group (bad options set after construction, a bad grad, a state dtype
// that does not fit) raises before anything is written: the first group's param and both states
// are untouched.
void bad_step_changes_nothing() {
  auto good = torch::randn({4});
  auto later = torch::randn({4});
  INNAprop opt({good});
  good.mutable_grad() = torch::randn({4});
  // One good step first, so that the first group has state that must not move either.
  opt.step();
  const auto good0 = good.clone(), later0 = later.clone();
  const auto phase0 = state_of(opt, good).phase().clone();
  const auto sq0 = state_of(opt, good).exp_avg_sq().clone();
  const auto step0 = state_of(opt, good).step().clone();
  auto unchanged = [&](const std::string& what) {
    expect_equal(good, good0, what + ": first group's param");
    expect_equal(later, later0, what + ": second group's param");
    expect_equal(state_of(opt, good).phase(), phase0, what + ": first group's phase");
    expect_equal(state_of(opt, good).exp_avg_sq(), sq0, what + ": first group's exp_avg_sq");
    expect_equal(state_of(opt, good).step(), step0, what + ": first group's step");
    expect(opt.state().size() == 1, what + ": state created by a refused step");
  };

  expect_throws<c10::ValueError>(
      [&] {
        opt.add_param_group(torch::optim::OptimizerParamGroup(
            {later}, std::make_unique<INNApropOptions>(INNApropOptions().sigma(1.0))));
      },
      "sigma", "add_param_group with sigma = 1");
  expect_throws<c10::ValueError>(
      [&] {
        opt.add_param_group(torch::optim::OptimizerParamGroup(
            {torch::randn({2}, torch::kComplexDouble)}));
      },
      "complex", "add_param_group with a complex param");
  expect(opt.param_groups().size() == 1, "a refused group was added");
  opt.add_param_group(torch::optim::OptimizerParamGroup(
      {later}, std::make_unique<INNApropOptions>(INNApropOptions(0.02).alpha(0.9))));
  expect(static_cast<const INNApropOptions&>(opt.param_groups()[1].options()) ==
             INNApropOptions(0.02).alpha(0.9), "add_param_group did not keep the group's options");
  later.mutable_grad() = torch::randn({4});
  auto& later_options = static_cast<INNApropOptions&>(opt.param_groups()[1].options());

  // Options made invalid after the group was added are caught by step().
  later_options.sigma(1.0);
  expect_throws<c10::ValueError>([&] { opt.step(); }, "sigma", "later group with sigma = 1");
  unchanged("sigma = 1 in the second group");
  later_options.sigma(0.999);
  later_options.set_lr(1.0);  // > beta
  expect_throws<c10::ValueError>([&] { opt.step(); }, "lr", "later group with lr > beta");
  unchanged("lr > beta in the second group");
  later_options.set_lr(0.02);
  later_options.eps(-1.0);
  expect_throws<c10::ValueError>([&] { opt.step(); }, "eps", "later group with eps < 0");
  unchanged("eps < 0 in the second group");
  later_options.eps(1e-8);

  expect_bad_grads_refused(opt, later, unchanged);
  later.mutable_grad() = torch::randn({4});
  later_options.state_dtype(torch::kDouble);
  expect_throws<c10::ValueError>([&] { opt.step(); }, "state_dtype", "float64 phase for float32 params");
  unchanged("float64 phase in the second group");
  later_options.state_dtype(std::nullopt);

  // And the good step still works afterwards.
  opt.step();
  expect(state_of(opt, good).step().item<double>() == 2.0 &&
             state_of(opt, later).step().item<double>() == 1.0, "step counts after recovery");

  expect_integer_param_refused<INNAprop>();
}

// torch::save after 3 steps, torch::load into a new optimizer over new params (default
// options), 3 more steps: bitwise identical to 6 uninterrupted steps, two groups with their own
// options (a bfloat16 param and a bfloat16 phase with stochastic rounding in one).
void serialize_load_continues_identically() {
  check_serialize_load_continues_identically<INNAprop>(
      INNApropOptions(0.01).sigma(0.99).weight_decay(0.2).state_dtype(torch::kBFloat16).seed(123),
      INNApropOptions(0.005).alpha(0.9).beta(0.3).eps(1e-6).maximize(true)
          .stochastic_rounding(false).state_dtype(torch::kDouble));
}

// An archive in the authors' form, written by hand in torch::optim's layout: state `psi`,
// `exp_avg_sq` and an int64 `step`; options without maximize / state_dtype /
// stochastic_rounding / seed. Loading converts ψ to the phase from the params' values, and
// training continues as the authors' step does (float64, 1e-12).
void load_archive_of_authors_psi_form() {
  const auto options = INNApropOptions(0.01).alpha(0.5).beta(0.8).sigma(0.99).weight_decay(0.1);
  torch::manual_seed(7);
  std::vector<torch::Tensor> params = {torch::randn({6}, torch::kDouble),
                                       torch::randn({3, 5}, torch::kDouble)};
  std::vector<Authors> ref;
  for (const auto& p : params) ref.push_back(authors_from(p));
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      authors_step(ref[i], grad_for(params[i], step, i), options);
    }
  }
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(ref[i].theta);

  INNAprop opt(params, INNApropOptions(0.5).maximize(true));
  load_handwritten_archive(
      opt, params,
      [&](size_t i, torch::serialize::OutputArchive& param_state) {
        param_state.write("psi", ref[i].psi.clone());
        param_state.write("exp_avg_sq", ref[i].v.clone());
        param_state.write("step", torch::tensor(int64_t{3}));
      },
      [&](torch::serialize::OutputArchive& authors_options) {
        authors_options.write("lr", options.lr());
        authors_options.write("alpha", options.alpha());
        authors_options.write("beta", options.beta());
        authors_options.write("sigma", options.sigma());
        authors_options.write("eps", options.eps());
        authors_options.write("weight_decay", options.weight_decay());
      });
  expect(static_cast<const INNApropOptions&>(opt.param_groups()[0].options()) == options,
         "options of the authors' form not restored with the missing ones' defaults");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& st = state_of(opt, params[i]);
    expect(!st.legacy_psi().defined(), "psi kept after load");
    expect(st.phase().scalar_type() == torch::kDouble, "converted phase dtype");
    expect(st.step().scalar_type() == torch::kFloat && st.step().item<double>() == 3.0,
           "int64 step not converted to a float32 3");
    expect_close(psi_of(opt, params[i], options), ref[i].psi, 1e-15, 1e-12,
                 "converted psi of param " + std::to_string(i));
  }
  step_with_reference<Authors>(opt, params, ref, 3, 30, [&](Authors& r, const torch::Tensor& g) {
    authors_step(r, g, options);
  });
  for (size_t i = 0; i < params.size(); ++i) {
    const auto label = "after load, param " + std::to_string(i);
    expect_close(params[i], ref[i].theta, 1e-15, 1e-12, label + " theta");
    expect_close(psi_of(opt, params[i], options), ref[i].psi, 1e-15, 1e-12, label + " psi");
    expect_close(state_of(opt, params[i]).exp_avg_sq(), ref[i].v, 0.0, 1e-12, label + " v");
    expect(state_of(opt, params[i]).step().item<double>() == 30.0, label + ": step count");
  }
}

// exp_avg_sq follows the phase into a group's state_dtype: a state_dtype set after some steps, and
// a float32 exp_avg_sq beside a bfloat16 phase (what archives of 0.3's bfloat16 state hold), are
// converted by the next step; the values are the float32 state's, rounded to nearest.
void state_follows_state_dtype() {
  torch::manual_seed(5);
  auto p = torch::randn({257});
  INNAprop opt({p}, INNApropOptions(0.01));
  p.mutable_grad() = torch::randn({257});
  opt.step();
  auto& st = const_cast<INNApropParamState&>(state_of(opt, p));
  expect(st.phase().scalar_type() == torch::kFloat &&
             st.exp_avg_sq().scalar_type() == torch::kFloat, "float32 state by default");
  static_cast<INNApropOptions&>(opt.param_groups()[0].options()).state_dtype(torch::kBFloat16);
  const auto sq = st.exp_avg_sq().clone();
  const auto theta = p.detach().clone();
  p.mutable_grad() = torch::Tensor();  // no grad: the step leaves the param and its state alone
  opt.step();
  expect(torch::equal(st.exp_avg_sq(), sq) && torch::equal(p, theta), "a param without grad moved");
  p.mutable_grad() = torch::randn({257});
  const auto sigma = INNApropOptions().sigma();
  const auto want = (sq.to(torch::kBFloat16).to(torch::kFloat) * sigma +
                     (1 - sigma) * p.grad() * p.grad());
  opt.step();
  expect(st.phase().scalar_type() == torch::kBFloat16 &&
             st.exp_avg_sq().scalar_type() == torch::kBFloat16, "state not converted to bfloat16");
  // The update ran on the converted v: within one bfloat16 rounding of it.
  expect_close(st.exp_avg_sq().to(torch::kFloat), want, 0.0, 1.0 / 64,
               "exp_avg_sq after converting");
  st.exp_avg_sq(st.exp_avg_sq().to(torch::kFloat));  // an archive of 0.3: float32 v, bf16 phase
  opt.step();
  expect(st.exp_avg_sq().scalar_type() == torch::kBFloat16, "float32 exp_avg_sq not converted");
}

// Linking the library registers both overloads of the INNAprop op with a CPU kernel.
void op_is_registered_for_cpu() { expect_op_registered_for_cpu("inna_fused::fused_innaprop_"); }

const Cases& cases() {
  static const Cases all = {
      {"defaults_are_the_authors", defaults_are_the_authors},
      {"optimizer_matches_authors_float64", optimizer_matches_authors_float64},
      {"lr_schedule_and_closure_match_authors", lr_schedule_and_closure_match_authors},
      {"optimizer_matches_authors_low_precision", optimizer_matches_authors_low_precision},
      {"optimizer_matches_op_called_directly", optimizer_matches_op_called_directly},
      {"state_layout", state_layout},
      {"bf16_stochastic_rounding_trains", bf16_stochastic_rounding_trains},
      {"bad_options_rejected", bad_options_rejected},
      {"bad_step_changes_nothing", bad_step_changes_nothing},
      {"serialize_load_continues_identically", serialize_load_continues_identically},
      {"load_archive_of_authors_psi_form", load_archive_of_authors_psi_form},
      {"state_follows_state_dtype", state_follows_state_dtype},
      {"op_is_registered_for_cpu", op_is_registered_for_cpu},
  };
  return all;
}

}  // namespace

int main(int argc, char** argv) { return inna_fused_test::run_cases(argc, argv, cases()); }
