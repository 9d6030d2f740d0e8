// test_optim.cpp — the C++ optimizer inna_fused::INNA against (a) eq. (12) transcribed below as
// scalar loops in double, (b) the registered op called directly through the dispatcher, and its
// serialization, options checking and all-or-nothing behaviour.
//
//   test_optim            run every case
//   test_optim NAME       run one case (CTest registers one test per case)
//   test_optim --list     print the case names
#include <inna_fused/optim.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/serialize/archive.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using inna_fused::INNA;
using inna_fused::INNAOptions;
using inna_fused::INNAParamState;
using inna_fused::PsiInit;

namespace {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void expect(bool ok, const std::string& what) {
  if (!ok) throw Failure(what);
}

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

std::vector<double> to_doubles(const torch::Tensor& t) {
  auto d = t.detach().to(torch::kDouble).contiguous().cpu();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

Eq12Param eq12_from(const torch::Tensor& p) {
  return {to_doubles(p), std::vector<double>(p.numel(), 0.0), 0};
}

// max |x − ref| / (atol + rtol·|ref|) over all elements; ≤ 1 passes.
void expect_close(const torch::Tensor& actual, const std::vector<double>& ref, double atol,
                  double rtol, const std::string& what) {
  const auto got = to_doubles(actual);
  expect(got.size() == ref.size(), what + ": size differs");
  double worst = 0.0, worst_err = 0.0;
  size_t where = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - ref[i]);
    const double ratio = err / (atol + rtol * std::abs(ref[i]));
    if (!(ratio <= worst)) {  // also catches NaN
      worst = ratio;
      worst_err = err;
      where = i;
    }
  }
  std::ostringstream msg;
  msg << what << ": max abs error " << worst_err << " at [" << where << "] (got " << got[where]
      << ", eq. (12) " << ref[where] << ", atol " << atol << ", rtol " << rtol << ")";
  expect(worst <= 1.0, msg.str());
}

void expect_equal(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  expect(a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes(),
         what + ": dtype/shape differ");
  expect(torch::equal(a, b), what + ": not bitwise equal (max abs diff " +
                                 std::to_string((a.to(torch::kDouble) - b.to(torch::kDouble))
                                                    .abs().max().item<double>()) + ")");
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

const INNAParamState& state_of(INNA& opt, const torch::Tensor& p) {
  return static_cast<const INNAParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
}

// A fresh gradient for step `step` of param `index`, the same for every run with the same seed.
torch::Tensor grad_for(const torch::Tensor& p, int step, int index) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 * step + index);
  return torch::randn(p.sizes(), gen, torch::kDouble).to(p.scalar_type());
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
    for (int step = 0; step < 6; ++step) {
      for (size_t i = 0; i < params.size(); ++i) {
        params[i].mutable_grad() = grad_for(params[i], step, i);
        eq12_step(ref[i], to_doubles(params[i].grad()), options);
      }
      opt.step();
    }
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& st = state_of(opt, params[i]);
      expect_close(params[i], ref[i].theta, 1e-12, 1e-12, name + " theta[" + std::to_string(i) + "]");
      expect_close(st.psi(), ref[i].psi, 1e-12, 1e-12, name + " psi[" + std::to_string(i) + "]");
      expect(st.step().item<double>() == 6.0, name + ": step count is not 6");
    }
  }
}

// float32, float16 and bfloat16 params against eq. (12) in double. The transcription restarts
// every step from the param as stored (θ is rounded to its dtype after each step), so θ may differ
// by that rounding plus float32 arithmetic, and ψ (float32) by float32 arithmetic only.
void optimizer_matches_eq12_low_precision() {
  struct Case { torch::ScalarType dtype; double theta_rtol; };
  for (const auto& c : {Case{torch::kFloat, 1e-6}, Case{torch::kHalf, 1e-3},
                        Case{torch::kBFloat16, 8e-3}}) {
    for (const auto& [name, options] : option_sweep()) {
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
        expect_close(p, ref.theta, 2e-6, c.theta_rtol, at_step + " theta");
        expect_close(state_of(opt, p).psi(), ref.psi, 2e-6, 1e-6, at_step + " psi");
        ref.theta = to_doubles(p);
      }
    }
  }
}

// The optimizer against the op called directly, through the dispatcher, on copies: params of two
// dtypes in one group (two op calls) and a second group with other options. Bitwise equal.
void optimizer_matches_op_called_directly() {
  using Signature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double,
                         double, double, double, double, bool, bool, bool,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("inna_fused::fused_inna_", "").typed<Signature>();
  torch::manual_seed(3);
  std::vector<std::vector<torch::Tensor>> groups = {
      {torch::randn({70000}), torch::randn({33}).to(torch::kBFloat16), torch::randn({2, 3}),
       torch::randn({9}).to(torch::kBFloat16)},
      {torch::randn({4, 5}, torch::kDouble)}};
  const std::vector<INNAOptions> options = {
      INNAOptions(0.1).decaypower(0.25).weight_decay(0.01),
      INNAOptions(0.02).alpha(1.3).psi_init("zero").maximize(true)};

  // The direct calls' own copies and state: one set of lists per (group, dtype). `slot` says, for
  // every param in order, which lists hold its copy and where.
  struct Direct {
    size_t group;
    torch::ScalarType dtype;
    std::vector<at::Tensor> params, psis, grads, steps;
  };
  std::vector<Direct> direct;
  std::vector<std::pair<size_t, size_t>> slot;
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const auto& p : groups[g]) {
      size_t d = 0;
      while (d < direct.size() && !(direct[d].group == g && direct[d].dtype == p.scalar_type())) ++d;
      if (d == direct.size()) direct.push_back(Direct{g, p.scalar_type(), {}, {}, {}, {}});
      slot.emplace_back(d, direct[d].params.size());
      direct[d].params.push_back(p.clone());
      direct[d].psis.push_back(torch::zeros_like(
          p, torch::dtype(p.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat)));
      direct[d].steps.push_back(torch::zeros({}, torch::kFloat));
    }
  }
  expect(direct.size() == 3, "test bug: expected three (group, dtype) lists");

  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (size_t g = 0; g < groups.size(); ++g) {
    param_groups.emplace_back(groups[g], std::make_unique<INNAOptions>(options[g]));
  }
  INNA opt(param_groups);

  for (int step = 0; step < 5; ++step) {
    for (auto& d : direct) d.grads.clear();
    size_t index = 0;
    for (auto& group : groups) {
      for (auto& p : group) {
        p.mutable_grad() = grad_for(p, step, index);
        direct[slot[index].first].grads.push_back(p.grad().clone());
        ++index;
      }
    }
    opt.step();
    for (auto& d : direct) {
      const auto& o = options[d.group];
      op.call(d.params, d.psis, d.grads, d.steps, o.lr(), o.alpha(), o.beta(), o.decaypower(),
              o.weight_decay(), o.decoupled_weight_decay(), o.psi_init() == PsiInit::Paper,
              o.maximize(), std::nullopt, std::nullopt);
    }
  }
  size_t index = 0;
  for (auto& group : groups) {
    for (auto& p : group) {
      const auto [d, i] = slot[index++];
      const auto label = "param of shape " + c10::str(p.sizes()) + " " + c10::toString(p.scalar_type());
      expect_equal(p, direct[d].params[i], label);
      expect_equal(state_of(opt, p).psi(), direct[d].psis[i], label + " psi");
      expect_equal(state_of(opt, p).step(), direct[d].steps[i], label + " step");
    }
  }
}

// State as in the Python class: psi float32 for 16-bit params (param dtype otherwise), step a
// float32 0-d tensor on the param's device counting the steps; no state for params without grad.
void state_layout() {
  std::vector<torch::Tensor> params = {torch::randn({4}).to(torch::kHalf),
                                       torch::randn({4}).to(torch::kBFloat16),
                                       torch::randn({4}), torch::randn({4}, torch::kDouble),
                                       torch::randn({3}, torch::kComplexFloat),
                                       torch::randn({4})};
  const auto untouched = params.back().clone();
  INNA opt(params);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i + 1 < params.size(); ++i) params[i].mutable_grad() = torch::randn_like(params[i]);
    opt.step();
  }
  const torch::ScalarType psi_dtype[] = {torch::kFloat, torch::kFloat, torch::kFloat,
                                         torch::kDouble, torch::kComplexFloat};
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    const auto& st = state_of(opt, params[i]);
    expect(st.psi().scalar_type() == psi_dtype[i], "psi dtype of param " + std::to_string(i));
    expect(st.psi().sizes() == params[i].sizes(), "psi shape of param " + std::to_string(i));
    expect(st.step().scalar_type() == torch::kFloat && st.step().dim() == 0 &&
               st.step().device() == params[i].device(), "step is not a float32 0-d tensor");
    expect(st.step().item<double>() == 3.0, "step count is not 3");
  }
  expect(opt.state().count(params.back().unsafeGetTensorImpl()) == 0,
         "a param without grad got state");
  expect_equal(params.back(), untouched, "param without grad");
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
  expect_equal(torch::view_as_real(state_of(opt_z, z).psi()), state_of(opt_x, x).psi(), "complex psi");
}

// torch::save after 3 steps, torch::load into a new optimizer over new params, 3 more steps: identical to 6
// uninterrupted steps. Options travel with the archive.
void serialize_load_continues_identically() {
  const auto options0 = INNAOptions(0.05).decaypower(0.5).weight_decay(0.2)
                            .decoupled_weight_decay(true).psi_init("zero");
  const auto options1 = INNAOptions(0.01).alpha(0.9).beta(0.3).maximize(true);
  auto make = [&](std::vector<torch::Tensor> a, std::vector<torch::Tensor> b, bool with_options) {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    if (with_options) {
      groups.emplace_back(std::move(a), std::make_unique<INNAOptions>(options0));
      groups.emplace_back(std::move(b), std::make_unique<INNAOptions>(options1));
    } else {
      groups.emplace_back(std::move(a));
      groups.emplace_back(std::move(b));
    }
    return std::make_unique<INNA>(groups);
  };
  torch::manual_seed(5);
  std::vector<torch::Tensor> a = {torch::randn({3, 3}), torch::randn({5}).to(torch::kBFloat16)};
  std::vector<torch::Tensor> b = {torch::randn({7}, torch::kDouble)};
  std::vector<torch::Tensor> a2 = {a[0].clone(), a[1].clone()}, b2 = {b[0].clone()};
  auto straight = make(a, b, true);
  auto first = make(a2, b2, true);
  auto set_grads = [](std::vector<torch::Tensor>& a, std::vector<torch::Tensor>& b, int step) {
    int index = 0;
    for (auto* ps : {&a, &b})
      for (auto& p : *ps) p.mutable_grad() = grad_for(p, step, index++);
  };
  for (int step = 0; step < 3; ++step) {
    set_grads(a, b, step);
    straight->step();
    set_grads(a2, b2, step);
    first->step();
  }
  std::stringstream stream;
  torch::save(*first, stream);
  // New params (same values), a new optimizer with default options: load restores both.
  std::vector<torch::Tensor> a3 = {a2[0].clone(), a2[1].clone()}, b3 = {b2[0].clone()};
  auto resumed = make(a3, b3, false);
  torch::load(*resumed, stream);
  expect(static_cast<const INNAOptions&>(resumed->param_groups()[0].options()) == options0,
         "group 0 options not restored");
  expect(static_cast<const INNAOptions&>(resumed->param_groups()[1].options()) == options1,
         "group 1 options not restored");
  for (int step = 3; step < 6; ++step) {
    set_grads(a, b, step);
    straight->step();
    set_grads(a3, b3, step);
    resumed->step();
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs = {{a[0], a3[0]}, {a[1], a3[1]}, {b[0], b3[0]}};
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto label = "param " + std::to_string(i);
    expect_equal(pairs[i].second, pairs[i].first, label);
    expect_equal(state_of(*resumed, pairs[i].second).psi(), state_of(*straight, pairs[i].first).psi(), label + " psi");
    expect_equal(state_of(*resumed, pairs[i].second).step(), state_of(*straight, pairs[i].first).step(), label + " step");
  }
}

template <typename Error>
void expect_throws(const std::function<void()>& f, const std::string& must_mention,
                   const std::string& what) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    expect(msg.find(must_mention) != std::string::npos,
           what + ": message does not mention '" + must_mention + "': " + msg);
    return;
  }
  throw Failure(what + ": no error of the expected type");
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
  // A group's own options are checked too.
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{p}, std::make_unique<INNAOptions>(INNAOptions().beta(0.0)));
  expect_throws<V>([&] { INNA{groups}; }, "beta", "group options");
  // Options of another optimizer are refused.
  std::vector<torch::optim::OptimizerParamGroup> sgd_groups;
  sgd_groups.emplace_back(std::vector<torch::Tensor>{p}, std::make_unique<torch::optim::SGDOptions>(0.1));
  expect_throws<c10::TypeError>([&] { INNA{sgd_groups}; }, "another optimizer", "SGD options");
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
  struct BadGrad { torch::Tensor grad; std::string mention; bool type_error; };
  for (const auto& bad : {BadGrad{torch::randn({5}), "shape", false},
                          BadGrad{torch::randn({4}, torch::kDouble), "dtype", true},
                          BadGrad{torch::randn({4}).to_sparse(), "sparse", true}}) {
    later.mutable_grad() = bad.grad;
    if (bad.type_error) {
      expect_throws<c10::TypeError>([&] { opt.step(); }, bad.mention, "grad with bad " + bad.mention);
    } else {
      expect_throws<c10::ValueError>([&] { opt.step(); }, bad.mention, "grad with bad " + bad.mention);
    }
    expect_equal(good, good0, "first group's param after a refused step");
    expect_equal(later, later0, "second group's param after a refused step");
    expect(opt.state().empty(), "state created by a refused step");
  }
  auto int_param = torch::ones({2}, torch::kInt);
  int_param.mutable_grad() = torch::ones({2}, torch::kInt);
  INNA int_opt({int_param});
  expect_throws<c10::TypeError>([&] { int_opt.step(); }, "dtype", "integer param");
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
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("inna_fused::fused_inna_", "");
  expect(op.hasKernelForDispatchKey(c10::DispatchKey::CPU), "no CPU kernel registered");
  auto op_tensor_lr = c10::Dispatcher::singleton().findSchemaOrThrow("inna_fused::fused_inna_", "tensor_lr");
  expect(op_tensor_lr.hasKernelForDispatchKey(c10::DispatchKey::CPU), "no CPU kernel for tensor_lr");
  expect(!inna_fused::cpu_simd_level().empty(), "cpu_simd_level is empty");
}

const std::vector<std::pair<std::string, std::function<void()>>>& cases() {
  static const std::vector<std::pair<std::string, std::function<void()>>> all = {
      {"optimizer_matches_eq12_float64", optimizer_matches_eq12_float64},
      {"optimizer_matches_eq12_low_precision", optimizer_matches_eq12_low_precision},
      {"optimizer_matches_op_called_directly", optimizer_matches_op_called_directly},
      {"state_layout", state_layout},
      {"complex_params_as_real_views", complex_params_as_real_views},
      {"serialize_load_continues_identically", serialize_load_continues_identically},
      {"bad_options_rejected", bad_options_rejected},
      {"bad_step_changes_nothing", bad_step_changes_nothing},
      {"closure_and_set_lr", closure_and_set_lr},
      {"op_is_registered_for_cpu", op_is_registered_for_cpu},
  };
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const auto& [name, fn] : cases()) std::cout << name << "\n";
    return 0;
  }
  int passed = 0, failed = 0, selected = 0;
  for (const auto& [name, fn] : cases()) {
    if (argc == 2 && name != argv[1]) continue;
    ++selected;
    try {
      fn();
      ++passed;
      std::cout << "PASS " << name << std::endl;
    } catch (const std::exception& e) {
      ++failed;
      std::cout << "FAIL " << name << ": " << e.what() << std::endl;
    }
  }
  if (selected == 0) {
    std::cerr << "no test case named '" << argv[1] << "' (see --list)\n";
    return 2;
  }
  std::cout << passed << " passed, " << failed << " failed" << std::endl;
  return failed == 0 ? 0 : 1;
}
