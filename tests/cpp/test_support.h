// test_support.h — what the optimizer tests test_optim.cpp (INNA) and test_innaprop.cpp
// (INNAprop) share: the case runner (one executable, one CTest test per case), the checks
// (expect, expect_throws, expect_close, expect_equal), the reproducible gradients, and the cases'
// common procedures, written once for either optimizer.
//
// Each test file specializes OptimTraits<Optimizer> (its options, its per-param state and the
// state's tensors by name) before using the procedures below.
//
// INNA_FUSED_TEST_VERBOSE=1 prints the worst error ratio of every comparison with a reference.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/serialize/archive.h>
#include <torch/torch.h>

#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace inna_fused_test {

// ---- Checks --------------------------------------------------------------------------------------

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void expect(bool ok, const std::string& what) {
  if (!ok) throw Failure(what);
}

// f() throws an Error whose message mentions `must_mention`.
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

inline std::vector<double> to_doubles(const torch::Tensor& t) {
  auto d = t.detach().to(torch::kDouble).contiguous().cpu();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// max |x − ref| / (atol + rtol·|ref|) over all elements, in float64; ≤ 1 passes (NaN fails).
inline void expect_close(const torch::Tensor& actual, const torch::Tensor& ref, double atol,
                         double rtol, const std::string& what) {
  const auto got = actual.detach().to(torch::kDouble).reshape(-1);
  const auto want = ref.detach().to(torch::kDouble).reshape(-1);
  expect(got.numel() == want.numel(), what + ": size differs");
  const auto err = (got - want).abs();
  const auto ratio = err / (atol + rtol * want.abs());
  const auto worst = ratio.max().item<double>();
  const auto where = ratio.argmax().item<int64_t>();
  std::ostringstream msg;
  msg.precision(17);
  msg << what << ": max error ratio " << worst << " at [" << where << "] (abs error "
      << err[where].item<double>() << ", got " << got[where].item<double>() << ", reference "
      << want[where].item<double>() << ", atol " << atol << ", rtol " << rtol << ")";
  if (std::getenv("INNA_FUSED_TEST_VERBOSE")) std::cout << msg.str() << std::endl;
  expect(worst <= 1.0, msg.str());  // also fails on NaN
}

inline void expect_close(const torch::Tensor& actual, const std::vector<double>& ref, double atol,
                         double rtol, const std::string& what) {
  expect_close(actual, torch::tensor(ref, torch::kDouble), atol, rtol, what);
}

inline void expect_equal(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  expect(a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes(),
         what + ": dtype/shape differ");
  expect(torch::equal(a, b), what + ": not bitwise equal (max abs diff " +
                                 std::to_string((a.to(torch::kDouble) - b.to(torch::kDouble))
                                                    .abs().max().item<double>()) + ")");
}

// ---- Inputs ---------------------------------------------------------------------------------------

// A fresh gradient for step `step` of param `index`, the same for every run.
inline torch::Tensor grad_for(const torch::Tensor& p, int step, int index) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 * step + index);
  return torch::randn(p.sizes(), gen, torch::kDouble).to(p.scalar_type());
}

// The low-precision param dtypes compared with a reference in double (rounding to nearest), and
// the relative tolerance of θ for each: its rounding plus float32 arithmetic.
struct LowPrecisionCase {
  torch::ScalarType dtype;
  double theta_rtol;
};
inline std::vector<LowPrecisionCase> low_precision_cases() {
  return {{torch::kFloat, 1e-6}, {torch::kHalf, 1e-3}, {torch::kBFloat16, 8e-3}};
}

// ---- The optimizer under test ----------------------------------------------------------------------

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Specialized by each test file:
//   using Options = ...; using State = ...;
//   static NamedTensors state_tensors(const State&);   // every state tensor, "step" last
template <class Opt>
struct OptimTraits;

template <class Opt>
const typename OptimTraits<Opt>::State& state_of(Opt& opt, const torch::Tensor& p) {
  return static_cast<const typename OptimTraits<Opt>::State&>(
      *opt.state().at(p.unsafeGetTensorImpl()));
}

// Steps `opt` and, in lockstep, one reference per param, for steps [first, last), on the grads
// grad_for(params[i], step, i).
template <class Ref>
void step_with_reference(torch::optim::Optimizer& opt, std::vector<torch::Tensor>& params,
                         std::vector<Ref>& ref, int first, int last,
                         const std::function<void(Ref&, const torch::Tensor&)>& ref_step) {
  for (int step = first; step < last; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = grad_for(params[i], step, i);
      ref_step(ref[i], params[i].grad());
    }
    opt.step();
  }
}

// The optimizer against its op called directly through the dispatcher, on copies, 5 steps:
// bitwise equal params and state. One op call per (group, dtype): `expected_lists` of them.
// `initial_state(p, group options)` makes a param's state tensors for the direct calls, in the
// order of OptimTraits::state_tensors; `call(params, grads, state lists, group options)` calls
// the op.
template <class Opt>
void check_matches_op_called_directly(
    std::vector<std::vector<torch::Tensor>> groups,
    const std::vector<typename OptimTraits<Opt>::Options>& options, size_t expected_lists,
    const std::function<std::vector<torch::Tensor>(const torch::Tensor&,
                                                   const typename OptimTraits<Opt>::Options&)>&
        initial_state,
    const std::function<void(std::vector<at::Tensor>&, std::vector<at::Tensor>&,
                             std::vector<std::vector<at::Tensor>>&,
                             const typename OptimTraits<Opt>::Options&)>& call) {
  using Options = typename OptimTraits<Opt>::Options;
  // The direct calls' own copies and state: one set of lists per (group, dtype). `slot` says,
  // for every param in order, which lists hold its copy and where.
  struct Direct {
    size_t group;
    torch::ScalarType dtype;
    std::vector<at::Tensor> params, grads;
    std::vector<std::vector<at::Tensor>> states;
  };
  std::vector<Direct> direct;
  std::vector<std::pair<size_t, size_t>> slot;
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const auto& p : groups[g]) {
      size_t d = 0;
      while (d < direct.size() && !(direct[d].group == g && direct[d].dtype == p.scalar_type())) ++d;
      if (d == direct.size()) direct.push_back(Direct{g, p.scalar_type(), {}, {}, {}});
      slot.emplace_back(d, direct[d].params.size());
      direct[d].params.push_back(p.clone());
      const auto state = initial_state(p, options[g]);
      direct[d].states.resize(state.size());
      for (size_t k = 0; k < state.size(); ++k) direct[d].states[k].push_back(state[k]);
    }
  }
  expect(direct.size() == expected_lists,
         "test bug: expected " + std::to_string(expected_lists) + " (group, dtype) lists");

  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (size_t g = 0; g < groups.size(); ++g) {
    param_groups.emplace_back(groups[g], std::make_unique<Options>(options[g]));
  }
  Opt opt(param_groups);
  for (size_t g = 0; g < groups.size(); ++g) {
    expect(static_cast<const Options&>(opt.param_groups()[g].options()) == options[g],
           "group " + std::to_string(g) + " did not keep its options");
  }

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
    for (auto& d : direct) call(d.params, d.grads, d.states, options[d.group]);
  }
  size_t index = 0;
  for (auto& group : groups) {
    for (auto& p : group) {
      const auto [d, i] = slot[index++];
      const auto label = "param of shape " + c10::str(p.sizes()) + " " + c10::toString(p.scalar_type());
      expect_equal(p, direct[d].params[i], label);
      const auto state = OptimTraits<Opt>::state_tensors(state_of(opt, p));
      for (size_t k = 0; k < state.size(); ++k) {
        expect_equal(state[k].second, direct[d].states[k][i], label + " " + state[k].first);
      }
    }
  }
}

// Three steps on every param but the last, which gets no grad. Then, for the others,
// check(state, i) and: step is a float32 0-d tensor on the param's device counting 3 steps; the
// last param has no state and has not changed.
template <class Opt>
void check_state_layout(
    std::vector<torch::Tensor> params, const typename OptimTraits<Opt>::Options& options,
    const std::function<void(const typename OptimTraits<Opt>::State&, size_t)>& check) {
  const auto untouched = params.back().clone();
  Opt opt(params, options);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i + 1 < params.size(); ++i) {
      params[i].mutable_grad() = torch::randn_like(params[i]);
    }
    opt.step();
  }
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    const auto& st = state_of(opt, params[i]);
    check(st, i);
    expect(st.step().scalar_type() == torch::kFloat && st.step().dim() == 0 &&
               st.step().device() == params[i].device(), "step is not a float32 0-d tensor");
    expect(st.step().template item<double>() == 3.0, "step count is not 3");
  }
  expect(opt.state().count(params.back().unsafeGetTensorImpl()) == 0,
         "a param without grad got state");
  expect_equal(params.back(), untouched, "param without grad");
}

// torch::save after 3 steps, torch::load into a new optimizer over new params (default
// options), 3 more steps: bitwise identical to 6 uninterrupted steps, params and every state
// tensor. Two groups with their own options, which travel with the archive; a float32 and a
// bfloat16 param in the first, a float64 param in the second.
template <class Opt>
void check_serialize_load_continues_identically(const typename OptimTraits<Opt>::Options& options0,
                                                const typename OptimTraits<Opt>::Options& options1) {
  using Options = typename OptimTraits<Opt>::Options;
  auto make = [&](std::vector<torch::Tensor> a, std::vector<torch::Tensor> b, bool with_options) {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    if (with_options) {
      groups.emplace_back(std::move(a), std::make_unique<Options>(options0));
      groups.emplace_back(std::move(b), std::make_unique<Options>(options1));
    } else {
      groups.emplace_back(std::move(a));
      groups.emplace_back(std::move(b));
    }
    return std::make_unique<Opt>(groups);
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
  expect(static_cast<const Options&>(resumed->param_groups()[0].options()) == options0,
         "group 0 options not restored");
  expect(static_cast<const Options&>(resumed->param_groups()[1].options()) == options1,
         "group 1 options not restored");
  for (int step = 3; step < 6; ++step) {
    set_grads(a, b, step);
    straight->step();
    set_grads(a3, b3, step);
    resumed->step();
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs = {
      {a[0], a3[0]}, {a[1], a3[1]}, {b[0], b3[0]}};
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto label = "param " + std::to_string(i);
    expect_equal(pairs[i].second, pairs[i].first, label);
    const auto want = OptimTraits<Opt>::state_tensors(state_of(*straight, pairs[i].first));
    const auto got = OptimTraits<Opt>::state_tensors(state_of(*resumed, pairs[i].second));
    for (size_t k = 0; k < want.size(); ++k) {
      expect_equal(got[k].second, want[k].second, label + " " + want[k].first);
    }
  }
}

// An optimizer archive of one param group written by hand in torch::optim's layout (as the
// previous formats were): write_state(i, archive) writes param i's state, write_options(archive)
// the group's options. Loaded into `opt`, whose params must be `params`.
inline void load_handwritten_archive(
    torch::optim::Optimizer& opt, const std::vector<torch::Tensor>& params,
    const std::function<void(size_t, torch::serialize::OutputArchive&)>& write_state,
    const std::function<void(torch::serialize::OutputArchive&)>& write_options) {
  auto key = [](const torch::Tensor& p) {
    return std::to_string(reinterpret_cast<size_t>(p.unsafeGetTensorImpl()));
  };
  torch::serialize::OutputArchive archive;
  archive.write("pytorch_version", c10::IValue("1.5.0"));
  torch::serialize::OutputArchive state(archive.compilation_unit());
  for (size_t i = 0; i < params.size(); ++i) {
    torch::serialize::OutputArchive param_state(archive.compilation_unit());
    write_state(i, param_state);
    state.write(key(params[i]), param_state);
  }
  archive.write("state", state);
  torch::serialize::OutputArchive groups(archive.compilation_unit());
  groups.write("param_groups/size", torch::tensor(int64_t{1}));
  torch::serialize::OutputArchive group(archive.compilation_unit());
  group.write("params/size", torch::tensor(static_cast<int64_t>(params.size())));
  for (size_t i = 0; i < params.size(); ++i) {
    group.write("params/" + std::to_string(i), c10::IValue(key(params[i])));
  }
  torch::serialize::OutputArchive options(archive.compilation_unit());
  write_options(options);
  group.write("options", options);
  groups.write("param_groups/0", group);
  archive.write("param_groups", groups);
  std::stringstream stream;
  archive.save_to(stream);

  torch::serialize::InputArchive in;
  in.load_from(stream);
  opt.load(in);
}

// A constructor given one param group with `options` throws an Error mentioning `mention`.
template <class Opt, class Error>
void expect_group_refused(const torch::Tensor& p,
                          std::unique_ptr<torch::optim::OptimizerOptions> options,
                          const std::string& mention, const std::string& what) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{p}, std::move(options));
  expect_throws<Error>([&] { Opt{groups}; }, mention, what);
}

// `later` (a float32 param of shape {4} in a later group of `opt`) gets a grad of the wrong
// shape, dtype or layout: step() throws, and unchanged(what) then checks nothing was written.
inline void expect_bad_grads_refused(torch::optim::Optimizer& opt, torch::Tensor& later,
                                     const std::function<void(const std::string&)>& unchanged) {
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
    unchanged("grad with bad " + bad.mention);
  }
}

// An integer param is refused by step().
template <class Opt>
void expect_integer_param_refused() {
  auto int_param = torch::ones({2}, torch::kInt);
  int_param.mutable_grad() = torch::ones({2}, torch::kInt);
  Opt int_opt({int_param});
  expect_throws<c10::TypeError>([&] { int_opt.step(); }, "dtype", "integer param");
}

// Linking the library registers both overloads of the op (`inna_fused::<name>`) with a CPU kernel.
inline void expect_op_registered_for_cpu(const std::string& name) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "");
  expect(op.hasKernelForDispatchKey(c10::DispatchKey::CPU), "no CPU kernel registered");
  auto op_tensor_lr = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "tensor_lr");
  expect(op_tensor_lr.hasKernelForDispatchKey(c10::DispatchKey::CPU), "no CPU kernel for tensor_lr");
}

// ---- The runner -----------------------------------------------------------------------------------

using Cases = std::vector<std::pair<std::string, std::function<void()>>>;

//   EXE            run every case
//   EXE NAME       run one case (CTest registers one test per case)
//   EXE --list     print the case names
inline int run_cases(int argc, char** argv, const Cases& cases) {
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const auto& [name, fn] : cases) std::cout << name << "\n";
    return 0;
  }
  int passed = 0, failed = 0, selected = 0;
  for (const auto& [name, fn] : cases) {
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

}  // namespace inna_fused_test
