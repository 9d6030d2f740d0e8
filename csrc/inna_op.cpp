// inna_op.cpp — input validation and layout handling of the fused INNA op (run_fused_inna). The
// schema and its registration are op_schema.cpp: this file registers nothing, so the test-only
// extension (testing/) can compile it too.
//
// Nothing here touches tensor data: validation runs over every tensor of the call first, so a bad
// entry anywhere in a list raises before the first write (no half-updated lists).
#include "inna_op.h"

#include "contract.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <iterator>
#include <cmath>
#include <string>

namespace inna_fused {

namespace {

constexpr const char* kInnaOp = "inna_fused::fused_inna_: ";
constexpr const char* kInnapropOp = "inna_fused::fused_innaprop_: ";

const char* op_prefix(const InnaHyper& h) {
  return h.algorithm == Algorithm::kInnaprop ? kInnapropOp : kInnaOp;
}

std::string name(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

void check_hyper(const char* kOp, const InnaHyper& h) {
  if (h.algorithm == Algorithm::kInnaprop) {
    contract::check_innaprop_hyper(kOp, /*check_lr=*/!h.lr_tensor, h.lr, h.alpha, h.beta, h.sigma,
                                   h.eps, h.weight_decay);
    return;
  }
  contract::check_hyper(kOp, /*check_lr=*/!h.lr_tensor, h.lr, h.alpha, h.beta, h.decay_power,
                        "decay_power", h.weight_decay);
}

// A 1-element floating scalar tensor argument (lr, grad_scale, found_inf).
void check_scalar_tensor(const char* kOp, const at::Tensor& t, const char* what,
                         const at::Device& device,
                         bool cpu_allowed) {
  TORCH_CHECK_VALUE(t.defined(), kOp, what, " is an undefined tensor");
  TORCH_CHECK_VALUE(t.numel() == 1, kOp, what, " must have exactly one element, got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), kOp, what,
                   " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device || (cpu_allowed && t.device().is_cpu()), kOp, what,
                    " is on ", t.device(), " but params are on ", device);
}

// Address range [lo, hi) covered by a strided tensor (all torch strides are >= 0), and which
// argument it is. The name is spelled out only for an error message: building a string per span
// cost about as much as the rest of the validation on lists of thousands of tensors.
struct Span {
  uintptr_t lo, hi;
  const char* list;  // "params", "phases", "grads", "steps", or a scalar argument's name
  int64_t index;     // position in the list; -1 for a scalar argument
  std::string who() const {
    return index < 0 ? std::string(list) : name(list, static_cast<size_t>(index));
  }
};

Span span_of(const at::Tensor& t, const char* list, int64_t index = -1) {
  auto lo = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto item = static_cast<int64_t>(t.element_size());
  if (t.is_contiguous()) {  // the usual case: numel() elements from data_ptr()
    return {lo, lo + static_cast<uintptr_t>(std::max<int64_t>(t.numel(), 1) * item), list, index};
  }
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  int64_t last = 0;
  for (size_t d = 0; d < sizes.size(); ++d) last += (sizes[d] - 1) * strides[d];
  return {lo, lo + static_cast<uintptr_t>((last + 1) * item), list, index};
}

bool by_lo(const Span& a, const Span& b) { return a.lo < b.lo; }

// Sort spans by start address. `v` is a concatenation of runs (one per list, ending at
// run_ends); each run is sorted on its own, which is a linear check in the usual case (a list's
// tensors are allocated one after another), and the runs are merged in linear time. On lists of
// thousands of tensors a plain sort of all spans cost more than the rest of the validation.
void sort_runs(std::vector<Span>& v, std::initializer_list<size_t> run_ends) {
  size_t start = 0;
  for (size_t end : run_ends) {
    const auto b = v.begin() + static_cast<std::ptrdiff_t>(start);
    const auto e = v.begin() + static_cast<std::ptrdiff_t>(end);
    if (!std::is_sorted(b, e, by_lo)) std::sort(b, e, by_lo);
    if (start > 0) std::inplace_merge(v.begin(), b, e, by_lo);
    start = end;
  }
}

// Tensors written by the call must not share memory with each other or with any tensor read by
// it; read-only tensors (grads, scalars) may share memory among themselves. `written` is sorted
// by start address (sort_runs).
void check_written_disjoint(const char* kOp, const std::vector<Span>& written) {
  for (size_t i = 1; i < written.size(); ++i) {
    TORCH_CHECK_VALUE(written[i].lo >= written[i - 1].hi, kOp, written[i - 1].who(), " and ",
                      written[i].who(), " overlap in memory; every param, phase and step of a call ",
                      "must own its memory");
  }
}

void check_reads_disjoint(const char* kOp, const std::vector<Span>& written,
                          const std::vector<Span>& read) {
  // Written spans are disjoint and sorted, so their ends are sorted too: the first one ending
  // beyond r.lo is the only candidate for an overlap with r. Reads in ascending or descending
  // address order (grads allocated in param order, or in reverse by backward) find it by moving
  // one cursor; any other order by binary search.
  auto first_beyond = [&](uintptr_t lo) {
    return std::upper_bound(written.begin(), written.end(), lo,
                            [](uintptr_t x, const Span& s) { return x < s.hi; });
  };
  auto check = [&](const Span& r, std::vector<Span>::const_iterator it) {
    TORCH_CHECK_VALUE(it == written.end() || it->lo >= r.hi, kOp, r.who(), " and ", it->who(),
                      " overlap in memory; a tensor the step reads must not alias one it writes");
  };
  auto sweep = [&](auto r, auto end) {  // reads in ascending address order
    auto it = written.begin();
    for (; r != end; ++r) {
      while (it != written.end() && it->hi <= r->lo) ++it;
      check(*r, it);
    }
  };
  if (std::is_sorted(read.begin(), read.end(), by_lo)) {
    sweep(read.begin(), read.end());
  } else if (std::is_sorted(read.rbegin(), read.rend(), by_lo)) {
    sweep(read.rbegin(), read.rend());
  } else {
    for (const auto& r : read) check(r, first_beyond(r.lo));
  }
}

// exp_avg_sqs: INNAprop's second state list (empty and unchecked for INNA).
void validate(at::TensorList params, at::TensorList grads, at::TensorList phases,
              at::TensorList exp_avg_sqs, at::TensorList steps, const InnaHyper& h) {
  const char* kOp = op_prefix(h);
  const bool prop = h.algorithm == Algorithm::kInnaprop;
  check_hyper(kOp, h);
  const size_t n = params.size();
  TORCH_CHECK_VALUE(phases.size() == n && grads.size() == n && steps.size() == n, kOp,
                    "lists must have equal lengths, got params=", n, " grads=", grads.size(),
                    " phases=", phases.size(), " steps=", steps.size());
  TORCH_CHECK_VALUE(!prop || exp_avg_sqs.size() == n, kOp,
                    "lists must have equal lengths, got params=", n, " exp_avg_sqs=",
                    exp_avg_sqs.size());
  if (n == 0) return;

  TORCH_CHECK_VALUE(params[0].defined(), kOp, "params[0] is an undefined tensor");
  const at::Device device = params[0].device();
  const at::ScalarType dtype = params[0].scalar_type();
  TORCH_CHECK_VALUE(phases[0].defined(), kOp, "phases[0] is an undefined tensor");
  const at::ScalarType phase_dtype = phases[0].scalar_type();
  // Written spans in three runs (params, phases, steps), each usually already in address order.
  std::vector<Span> written, written_phases, written_sqs, written_steps, read, scalars;
  written.reserve(4 * n);
  written_phases.reserve(n);
  if (prop) written_sqs.reserve(n);
  written_steps.reserve(n);
  read.reserve(n + 3);

  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const at::Tensor& phase = phases[i];
    const at::Tensor& step = steps[i];
    TORCH_CHECK_VALUE(p.defined(), kOp, name("params", i), " is an undefined tensor");
    TORCH_CHECK_VALUE(g.defined(), kOp, name("grads", i), " is an undefined tensor");
    TORCH_CHECK_VALUE(phase.defined(), kOp, name("phases", i), " is an undefined tensor");
    TORCH_CHECK_VALUE(step.defined(), kOp, name("steps", i), " is an undefined tensor");
    TORCH_CHECK_TYPE(p.layout() == at::kStrided, kOp, name("params", i),
                     " has layout ", p.layout(), "; only strided params are supported");
    TORCH_CHECK_TYPE(contract::is_param_dtype(p.scalar_type()), kOp, name("params", i),
                     " has dtype ", p.scalar_type(), "; supported are ",
                     contract::param_dtype_names(),
                     at::isComplexType(p.scalar_type())
                         ? " (pass complex params as torch.view_as_real views)" : "");
    TORCH_CHECK_TYPE(p.scalar_type() == dtype, kOp, name("params", i), " has dtype ",
                     p.scalar_type(), " but params[0] has ", dtype,
                     "; one call takes one dtype (group the lists by dtype)");
    TORCH_CHECK_VALUE(p.device() == device, kOp, name("params", i), " is on ", p.device(),
                      " but params[0] is on ", device);

    TORCH_CHECK_TYPE(g.layout() == at::kStrided, kOp, name("grads", i), " is ",
                     g.is_sparse() ? "sparse" : "not strided",
                     "; INNA does not support sparse gradients");
    TORCH_CHECK_TYPE(g.scalar_type() == dtype, kOp, name("grads", i), " has dtype ",
                     g.scalar_type(), " but its param has ", dtype);
    TORCH_CHECK_VALUE(g.device() == device, kOp, name("grads", i), " is on ", g.device(),
                      " but its param is on ", device);
    TORCH_CHECK_VALUE(g.sizes() == p.sizes(), kOp, name("grads", i), " has shape ", g.sizes(),
                      " but its param has shape ", p.sizes());

    TORCH_CHECK_TYPE(phase.layout() == at::kStrided, kOp, name("phases", i), " is not strided");
    TORCH_CHECK_TYPE(contract::state_dtype_fits(dtype, phase.scalar_type()), kOp,
                     name("phases", i), " has dtype ", phase.scalar_type(), "; a ", dtype,
                     " param needs a ", contract::default_state_dtype(dtype), " or ",
                     contract::kLowPrecisionStateDtype, " phase");
    TORCH_CHECK_TYPE(phase.scalar_type() == phase_dtype, kOp, name("phases", i), " has dtype ",
                     phase.scalar_type(), " but phases[0] has ", phase_dtype,
                     "; one call takes one phase dtype (group the lists by it)");
    TORCH_CHECK_VALUE(phase.device() == device, kOp, name("phases", i), " is on ", phase.device(),
                      " but its param is on ", device);
    TORCH_CHECK_VALUE(phase.sizes() == p.sizes(), kOp, name("phases", i), " has shape ",
                      phase.sizes(), " but its param has shape ", p.sizes());

    TORCH_CHECK_VALUE(step.numel() == 1, kOp, name("steps", i),
                      " must have exactly one element, got shape ", step.sizes());
    TORCH_CHECK_TYPE(step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble,
                     kOp, name("steps", i), " must be a float32 or float64 tensor, got ",
                     step.scalar_type());
    TORCH_CHECK_VALUE(step.device() == device, kOp, name("steps", i), " is on ",
                      step.device(), " but its param is on ", device);

    if (prop) {
      const at::Tensor& sq = exp_avg_sqs[i];
      const at::ScalarType sq_dtype = phases[i].scalar_type();
      TORCH_CHECK_VALUE(sq.defined(), kOp, name("exp_avg_sqs", i), " is an undefined tensor");
      TORCH_CHECK_TYPE(sq.layout() == at::kStrided, kOp, name("exp_avg_sqs", i),
                       " is not strided");
      TORCH_CHECK_TYPE(sq.scalar_type() == sq_dtype, kOp, name("exp_avg_sqs", i), " has dtype ",
                       sq.scalar_type(), " but its phase is ", sq_dtype,
                       " (exp_avg_sq takes the phase's dtype)");
      TORCH_CHECK_VALUE(sq.device() == device, kOp, name("exp_avg_sqs", i), " is on ",
                        sq.device(), " but its param is on ", device);
      TORCH_CHECK_VALUE(sq.sizes() == p.sizes(), kOp, name("exp_avg_sqs", i), " has shape ",
                        sq.sizes(), " but its param has shape ", p.sizes());
      if (p.numel() > 0) {
        TORCH_CHECK_VALUE(at::has_internal_overlap(sq) != at::MemOverlap::Yes, kOp,
                          name("exp_avg_sqs", i), " has internally overlapping memory");
        written_sqs.push_back(span_of(sq, "exp_avg_sqs", i));
      }
    }

    if (p.numel() > 0) {
      TORCH_CHECK_VALUE(at::has_internal_overlap(p) != at::MemOverlap::Yes, kOp,
                        name("params", i), " has internally overlapping memory (e.g. expand())");
      TORCH_CHECK_VALUE(at::has_internal_overlap(phase) != at::MemOverlap::Yes, kOp,
                        name("phases", i), " has internally overlapping memory");
      written.push_back(span_of(p, "params", i));
      written_phases.push_back(span_of(phase, "phases", i));
      read.push_back(span_of(g, "grads", i));
    }
    written_steps.push_back(span_of(step, "steps", i));
  }

  if (h.lr_tensor) {
    check_scalar_tensor(kOp, *h.lr_tensor, "lr", device, /*cpu_allowed=*/true);
    if (h.lr_tensor->device().is_cpu()) {
      const double lr = h.lr_tensor->item<double>();
      TORCH_CHECK_VALUE(contract::valid_lr(lr), kOp, "invalid lr: ", lr,
                        " (need finite lr >= 0)");
      TORCH_CHECK_VALUE(!prop || contract::innaprop_lr_ok(lr, h.beta), kOp, "invalid lr: ", lr,
                        " (need lr < beta = ", h.beta, ", the authors' requirement gamma < beta)");
    }
    read.push_back(span_of(*h.lr_tensor, "lr"));
  }
  if (h.grad_scale) {
    check_scalar_tensor(kOp, *h.grad_scale, "grad_scale", device, /*cpu_allowed=*/false);
    read.push_back(span_of(*h.grad_scale, "grad_scale"));
  }
  if (h.found_inf) {
    check_scalar_tensor(kOp, *h.found_inf, "found_inf", device, /*cpu_allowed=*/false);
    read.push_back(span_of(*h.found_inf, "found_inf"));
  }
  const size_t params_end = written.size();
  written.insert(written.end(), written_phases.begin(), written_phases.end());
  const size_t phases_end = written.size();
  written.insert(written.end(), written_sqs.begin(), written_sqs.end());
  const size_t sqs_end = written.size();
  written.insert(written.end(), written_steps.begin(), written_steps.end());
  sort_runs(written, {params_end, phases_end, sqs_end, written.size()});
  check_written_disjoint(kOp, written);
  // The grads apart from the scalar arguments, so that the grads' own address order is seen.
  const size_t grads_end = read.size() - (h.lr_tensor ? 1 : 0) - (h.grad_scale ? 1 : 0) -
                           (h.found_inf ? 1 : 0);
  scalars.assign(read.begin() + static_cast<std::ptrdiff_t>(grads_end), read.end());
  read.resize(grads_end);
  check_reads_disjoint(kOp, written, read);
  check_reads_disjoint(kOp, written, scalars);
}

// Param, grad and phase can be walked as three flat arrays when the param is dense and
// non-overlapping and the other two have exactly its strides.
bool flat_walkable(const at::Tensor& p, const at::Tensor& g, const at::Tensor& phase,
                   const at::Tensor* exp_avg_sq) {
  return p.is_non_overlapping_and_dense() && g.strides() == p.strides() &&
         phase.strides() == p.strides() &&
         (exp_avg_sq == nullptr || exp_avg_sq->strides() == p.strides());
}

// Validate, lay out and run either algorithm (exp_avg_sqs empty for INNA).
void run_fused(at::TensorList params, at::TensorList grads, at::TensorList phases,
               at::TensorList exp_avg_sqs, at::TensorList steps, const InnaHyper& hyper,
               InnaKernel kernel) {
  validate(params, grads, phases, exp_avg_sqs, steps, hyper);
  const bool prop = hyper.algorithm == Algorithm::kInnaprop;
  const size_t n = params.size();
  if (n == 0) return;

  // The lists hold borrowed tensors (no reference count taken or dropped per entry: the
  // caller's lists keep them alive for the call), except the contiguous copies.
  InnaLists lists;
  std::vector<size_t> copied;  // entries whose layouts differ: run on copies, written back
  struct ReleaseBorrows {
    InnaLists& lists;
    const std::vector<size_t>& copied;
    ~ReleaseBorrows() {
      using Traits = c10::MaybeOwnedTraits<at::Tensor>;
      auto c = copied.begin();
      for (size_t i = 0; i < lists.params.size(); ++i) {
        if (c != copied.end() && *c == i) {
          ++c;  // owned copies are released by the vectors
        } else {
          Traits::destroyBorrow(lists.params[i]);
          Traits::destroyBorrow(lists.phases[i]);
          Traits::destroyBorrow(lists.grads[i]);
          if (!lists.exp_avg_sqs.empty()) Traits::destroyBorrow(lists.exp_avg_sqs[i]);
        }
      }
      for (auto& step : lists.steps) Traits::destroyBorrow(step);
    }
  } release{lists, copied};
  using Traits = c10::MaybeOwnedTraits<at::Tensor>;
  lists.params.reserve(n);
  lists.phases.reserve(n);
  lists.grads.reserve(n);
  lists.steps.reserve(n);
  if (prop) lists.exp_avg_sqs.reserve(n);
  for (size_t i = 0; i < n; ++i) lists.steps.push_back(Traits::createBorrow(steps[i]));
  for (size_t i = 0; i < n; ++i) {
    if (params[i].numel() == 0 ||
        flat_walkable(params[i], grads[i], phases[i], prop ? &exp_avg_sqs[i] : nullptr)) {
      lists.params.push_back(Traits::createBorrow(params[i]));
      lists.phases.push_back(Traits::createBorrow(phases[i]));
      lists.grads.push_back(Traits::createBorrow(grads[i]));
      if (prop) lists.exp_avg_sqs.push_back(Traits::createBorrow(exp_avg_sqs[i]));
    } else {
      copied.push_back(i);  // before the copies: if one throws, entry i holds no borrow
      lists.params.push_back(params[i].contiguous());
      lists.phases.push_back(phases[i].contiguous());
      lists.grads.push_back(grads[i].contiguous());
      if (prop) lists.exp_avg_sqs.push_back(exp_avg_sqs[i].contiguous());
    }
  }
  kernel(lists, hyper);
  for (size_t i : copied) {
    if (!lists.params[i].is_same(params[i])) params[i].copy_(lists.params[i]);
    if (!lists.phases[i].is_same(phases[i])) phases[i].copy_(lists.phases[i]);
    if (prop && !lists.exp_avg_sqs[i].is_same(exp_avg_sqs[i])) {
      exp_avg_sqs[i].copy_(lists.exp_avg_sqs[i]);
    }
  }
}

}  // namespace

void run_fused_inna(at::TensorList params, at::TensorList grads, at::TensorList phases,
                    at::TensorList steps, const InnaHyper& hyper, InnaKernel kernel) {
  TORCH_CHECK(hyper.algorithm == Algorithm::kInna, "run_fused_inna: an INNA call");
  run_fused(params, grads, phases, {}, steps, hyper, kernel);
}

void run_fused_innaprop(at::TensorList params, at::TensorList grads, at::TensorList phases,
                        at::TensorList exp_avg_sqs, at::TensorList steps, const InnaHyper& hyper,
                        InnaKernel kernel) {
  TORCH_CHECK(hyper.algorithm == Algorithm::kInnaprop, "run_fused_innaprop: an INNAprop call");
  run_fused(params, grads, phases, exp_avg_sqs, steps, hyper, kernel);
}

}  // namespace inna_fused
