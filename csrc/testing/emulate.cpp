// testing/emulate.cpp — test-only ops that run the CUDA backend's launch plan on the CPU. Built
// into the test-only extension inna_fused._C_testing (setup.py, INNA_FUSED_BUILD_TESTING=1) and
// the test-only CMake target inna_fused_testing, never into users' inna_fused._C.
//
// CI has no GPU. These ops take CPU tensors, pack them with the same host code as the CUDA
// launcher (cuda/multi_tensor_apply.cuh: collect_entries, launch_all; cuda/inna_functor.cuh:
// make_scalars) and run the same functor over an emulated grid (emulate_main_launch: for each
// block, every thread's share of the chunk, then, the block barrier, every thread's
// block_finish; then the step-increment launch). Only the <<<...>>> launch itself and nvcc's code
// generation are not covered. They are not part of the public API:
//
//   _emulated_cuda_launch_(...)      the fused step, emulated; returns launch statistics
//   _emulated_cuda_innaprop_launch_(...)  the same for fused_innaprop_
//   _cuda_launch_plan(numels, ...)   the packing of tensors of the given sizes, without data
//   _cuda_launch_constants()         chunk size, capacities and block sizes the packing uses
#include "../contract.h"
#include "../cuda/inna_functor.cuh"
#include "../cuda/innaprop_functor.cuh"
#include "../inna_op.h"

#include <torch/library.h>

#include <vector>

namespace inna_fused {
namespace {

using namespace mta;

// What the op returns, in this order (tests/test_cuda_emulated.py reads it by these names).
struct EmulationStats {
  LaunchStats launch;
  int64_t vector_blocks = 0;   // blocks whose chunk took the aligned 16-byte path
  int64_t scalar_blocks = 0;   // blocks whose chunk took the scalar path
  int64_t skipped_blocks = 0;  // blocks that found found_inf set
};

thread_local EmulationStats emulation_stats;

// One emulated fused step (the emulated counterpart of cuda/launch.cuh's launch_fused):
// `Functor<param type, phase type>` over the entries `collect` gathers, with the scalars
// `make_scalars` builds; the statistics go to emulation_stats.
template <template <typename, typename> class Functor, int Depth, bool kLargeMetadata,
          typename MakeScalars, typename Collect>
void emulate_fused(const InnaLists& lists, const InnaHyper& h, MakeScalars make_scalars,
                   Collect collect) {
  const auto scalars = make_scalars(h, lists.params[0].device());
  std::vector<TensorEntry<Depth>> entries;
  std::vector<TaggedStep> late_steps;
  collect(lists, entries, late_steps);
  EmulationStats& stats = emulation_stats;
  dispatch_dtypes(lists, [&](auto p, auto s) {
    using F = Functor<typename decltype(p)::type, typename decltype(s)::type>;
    stats.launch = launch_all<kLargeMetadata>(
        entries, late_steps,
        [&](const auto& meta, int64_t blocks, int block_size) {
          emulate_main_launch<F>(
              meta, blocks, block_size, scalars, [&](int64_t, int thread, int32_t path) {
                if (thread == 0) {
                  stats.vector_blocks += path == kVectorPath;
                  stats.scalar_blocks += path == kScalarPath;
                  stats.skipped_blocks += path == kSkipped;
                }
              });
        },
        [&](const StepMeta& meta) { emulate_step_launch(meta, scalars.found_inf); });
  });
}

// The statistics of the last emulated call, in the order the ops return them.
std::vector<int64_t> stats_vector() {
  const EmulationStats& s = emulation_stats;
  return {s.launch.main_launches, s.launch.large_launches, s.launch.step_launches,
          s.launch.blocks,        s.launch.small_block_launches, s.vector_blocks,
          s.scalar_blocks,        s.skipped_blocks};
}

template <bool kLargeMetadata>
void emulated_kernel(const InnaLists& lists, const InnaHyper& h) {
  emulate_fused<InnaFunctor, kInnaDepth, kLargeMetadata>(lists, h, make_scalars,
                                                         collect_inna_entries);
}

template <bool kLargeMetadata>
void emulated_innaprop_kernel(const InnaLists& lists, const InnaHyper& h) {
  emulate_fused<InnapropFunctor, kInnapropDepth, kLargeMetadata>(
      lists, h, make_innaprop_scalars, collect_innaprop_entries);
}

std::vector<int64_t> emulated_cuda_launch(
    at::TensorList params, at::TensorList grads, at::TensorList phases, at::TensorList steps,
    double lr, double alpha, double beta, double decay_power, double weight_decay,
    bool decoupled_weight_decay, bool paper_init, bool maximize, bool stochastic_rounding,
    int64_t seed, const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,
    const std::optional<at::Tensor>& found_inf, bool large_metadata) {
  for (const auto& p : params) {
    TORCH_CHECK_VALUE(p.device().is_cpu(), "_emulated_cuda_launch_ takes CPU tensors");
  }
  const InnaHyper h = op_hyper(lr, lr_tensor, alpha, beta, decay_power, weight_decay,
                               decoupled_weight_decay, paper_init, maximize, stochastic_rounding,
                               seed, grad_scale, found_inf);
  emulation_stats = EmulationStats{};
  run_fused_inna(params, grads, phases, steps, h,
                 large_metadata ? &emulated_kernel<true> : &emulated_kernel<false>);
  return stats_vector();
}

std::vector<int64_t> emulated_cuda_innaprop_launch(
    at::TensorList params, at::TensorList grads, at::TensorList phases,
    at::TensorList exp_avg_sqs, at::TensorList steps, double lr, double alpha, double beta,
    double sigma, double eps, double weight_decay, bool maximize, bool stochastic_rounding,
    int64_t seed, const std::optional<at::Tensor>& lr_tensor,
    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    bool large_metadata) {
  for (const auto& p : params) {
    TORCH_CHECK_VALUE(p.device().is_cpu(), "_emulated_cuda_innaprop_launch_ takes CPU tensors");
  }
  const InnaHyper h = innaprop_op_hyper(lr, lr_tensor, alpha, beta, sigma, eps, weight_decay,
                                        maximize, stochastic_rounding, seed, grad_scale,
                                        found_inf);
  emulation_stats = EmulationStats{};
  run_fused_innaprop(params, grads, phases, exp_avg_sqs, steps, h,
                     large_metadata ? &emulated_innaprop_kernel<true>
                                    : &emulated_innaprop_kernel<false>);
  return stats_vector();
}

// Packs tensors of the given sizes (no data) and resolves every block of every launch with the
// kernel's locate_block(). Returns [main_launches, large_launches, step_launches] followed by,
// per input tensor: launch index (-1: empty), block size of that launch, blocks, elements covered,
// start of its last chunk, elements of its last chunk, 1 if its chunks tile [0, numel) in order.
std::vector<int64_t> cuda_launch_plan(at::IntArrayRef numels, bool large_metadata) {
  constexpr int kFields = 7;
  std::vector<TensorEntry<kInnaDepth>> entries;
  std::vector<TaggedStep> late_steps;
  std::vector<size_t> entry_to_input;
  for (size_t i = 0; i < numels.size(); ++i) {
    TORCH_CHECK_VALUE(numels[i] >= 0, "_cuda_launch_plan: negative size ", numels[i]);
    if (numels[i] > 0) {
      entries.push_back({{nullptr, nullptr, nullptr}, 0, numels[i]});
      entry_to_input.push_back(i);
    }
    if (!step_advanced_in_block(numels[i])) late_steps.push_back(0);
  }
  std::vector<int64_t> out(3 + kFields * numels.size(), 0);
  for (size_t i = 0; i < numels.size(); ++i) {
    out[3 + kFields * i] = -1;
    out[3 + kFields * i + 6] = 1;
  }
  int64_t launch = 0;
  size_t first_entry = 0;  // entries before this one belong to earlier launches
  auto plan_launch = [&](const auto& meta, int64_t blocks, int block_size) {
    std::vector<int64_t> next_start(meta.num_tensors, 0);
    for (int64_t block = 0; block < blocks; ++block) {
      const BlockWork w = locate_block(meta, block);
      int64_t* row = out.data() + 3 + kFields * entry_to_input[first_entry + w.tensor];
      row[0] = launch;
      row[1] = block_size;
      row[2] += 1;
      row[3] += w.count;
      row[4] = w.start;
      row[5] = w.count;
      if (w.start != next_start[w.tensor] || w.count <= 0) row[6] = 0;
      next_start[w.tensor] = w.start + w.count;
    }
    first_entry += meta.num_tensors;
    ++launch;
  };
  const LaunchStats stats =
      large_metadata
          ? launch_all<true>(entries, late_steps, plan_launch, [](const StepMeta&) {})
          : launch_all<false>(entries, late_steps, plan_launch, [](const StepMeta&) {});
  out[0] = stats.main_launches;
  out[1] = stats.large_launches;
  out[2] = stats.step_launches;
  return out;
}

std::vector<int64_t> cuda_launch_constants() {
  return {kChunk, kSmallCapacity, kLargeCapacity, kStepCapacity, kBlockLarge, kBlockSmall};
}

}  // namespace
}  // namespace inna_fused

TORCH_LIBRARY_FRAGMENT(inna_fused, m) {
  m.def(
      "_emulated_cuda_launch_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] phases, "
      "Tensor(c!)[] steps, *, float lr, float alpha, float beta, float decay_power, "
      "float weight_decay, bool decoupled_weight_decay, bool paper_init, bool maximize, "
      "bool stochastic_rounding=True, int seed=0, Tensor? lr_tensor=None, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "bool large_metadata=True) -> int[]");
  m.def(
      "_emulated_cuda_innaprop_launch_(Tensor(a!)[] params, Tensor[] grads, "
      "Tensor(b!)[] phases, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, *, float lr, "
      "float alpha, float beta, float sigma, float eps, float weight_decay, bool maximize, "
      "bool stochastic_rounding=True, int seed=0, Tensor? lr_tensor=None, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, bool large_metadata=True) -> int[]");
  m.def("_cuda_launch_plan(int[] numels, bool large_metadata=True) -> int[]",
        &inna_fused::cuda_launch_plan);
  m.def("_cuda_launch_constants() -> int[]", &inna_fused::cuda_launch_constants);
}

TORCH_LIBRARY_IMPL(inna_fused, CPU, m) {
  m.impl("_emulated_cuda_launch_", &inna_fused::emulated_cuda_launch);
  m.impl("_emulated_cuda_innaprop_launch_", &inna_fused::emulated_cuda_innaprop_launch);
}
