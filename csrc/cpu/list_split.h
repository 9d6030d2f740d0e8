// list_split.h — the generic CPU work split of a multi-tensor step: names no optimizer.
//
// The list's elements, laid end to end, are cut into units of kUnit elements and
// at::parallel_for runs over the units, so a list of many small tensors parallelises like one
// large tensor and every thread gets the same number of elements (deterministic and balanced:
// every unit but the last carries the same work, and at::parallel_for hands each thread a
// contiguous range of units). A unit may span several tensors or start mid-tensor, at any
// element offset; a thread gets each tensor's part of its units as one span (entry, first, count).
// An optimizer's per-element update must therefore give the same result for an element whatever
// span it is in (inna_cpu.cpp says how INNA's does). (Per-tensor chunks were not balanced: a
// 64-element tensor counted as much as a full chunk, and on ResNet-50's list one of two threads
// got 10% more elements than the other.)
//
// Also the CPU side of torch's per-tensor step counts (1-element float32/float64 tensors).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace inna_fused {
namespace cpu {

constexpr int64_t kUnit = int64_t(1) << 15;  // elements per work unit

class ListSplit {
 public:
  explicit ListSplit(size_t capacity) { start_.reserve(capacity); }

  // Appends an entry of `numel` (> 0) elements; entries are numbered in the order added.
  void add(int64_t numel) {
    start_.push_back(total_);
    total_ += numel;
  }

  int64_t total() const { return total_; }

  // Runs span(entry, first, count) in parallel over every element of every entry: elements
  // [first, first + count) of entry `entry`, each element exactly once.
  template <typename Span>
  void parallel_for_spans(Span&& span) const {
    const int64_t units = (total_ + kUnit - 1) / kUnit;
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
      const int64_t first = begin * kUnit;
      const int64_t last = std::min(total_, end * kUnit);  // exclusive
      // The entry holding element `first`: the last one that starts at or before it.
      size_t e = std::upper_bound(start_.begin(), start_.end(), first) - start_.begin() - 1;
      for (int64_t pos = first; pos < last; ++e) {
        const int64_t lo = pos - start_[e];
        const int64_t end_of_entry = e + 1 < start_.size() ? start_[e + 1] : total_;
        const int64_t hi = std::min(end_of_entry, last) - start_[e];
        span(e, lo, hi - lo);
        pos = start_[e] + hi;
      }
    });
  }

 private:
  std::vector<int64_t> start_;  // start_[e] = elements of entries [0, e)
  int64_t total_ = 0;
};

// k, the number of steps a tensor has taken.
inline double read_step(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? *t.const_data_ptr<double>()
                                        : static_cast<double>(*t.const_data_ptr<float>());
}

inline void increment_step(const at::Tensor& t) {
  if (t.scalar_type() == at::kDouble) {
    *t.mutable_data_ptr<double>() += 1.0;
  } else {
    *t.mutable_data_ptr<float>() += 1.0f;
  }
}

}  // namespace cpu
}  // namespace inna_fused
