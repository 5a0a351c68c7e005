// The `activations` job: hook tensors on demand (TransformerLens
// run_with_cache / nnsight as a remote job), sliced, float32.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/hook_layout.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"

namespace sinkscope {

/// HookDims of a model config.
HookDims HookDimsOf(const ModelConfig& c);

struct ActivationsParams {
  std::vector<std::string> hooks;   // TransformerLens names, at least one
  std::vector<int64_t> sequences;   // request sequence indices; empty = all
  HookSlices slices;                // positions / channels / heads (hook_layout.h)
  int64_t max_bytes = 0;            // 0 = no limit; else refused before running
};

/// One sliced hook tensor of one sequence: float32, row-major over `shape`.
struct HookTensor {
  std::string hook;
  int64_t sequence = 0;
  std::vector<int64_t> shape;
  std::vector<std::string> dims;
  std::vector<float> values;
};
using HookTensorFn = std::function<void(const HookTensor&)>;

/// Bytes of the result (float32) for `sequences`; InvalidArgument for an
/// unknown hook (names it), a hook the model lacks, empty hook list, bad
/// indices; RESOURCE_EXHAUSTED when over max_bytes (names both numbers).
absl::StatusOr<int64_t> CheckActivationsRequest(const Model& model,
                                                const std::vector<std::vector<int64_t>>& sequences,
                                                const ActivationsParams& params);

/// Runs the forward passes and calls `on_tensor` per (hook, sequence) in
/// forward order within each batch. Returns the total bytes sent.
absl::StatusOr<int64_t> RunActivations(const Model& model,
                                       const std::vector<std::vector<int64_t>>& sequences,
                                       const ActivationsParams& params,
                                       const HookTensorFn& on_tensor, const ProgressFn& progress,
                                       const std::atomic<bool>* cancel = nullptr);

}  // namespace sinkscope
