// Spike-token probes: why position 0 spikes (paper Table 2, eq. 22) and
// whether spike tokens become one near-constant vector after the step-up
// block (Fig. 5, eq. 25).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"

namespace sinkscope {

/// Parameters of the first-token probe.
struct FirstTokenParams {
  /// Token ids probed; empty = [range_begin, range_end).
  std::vector<int64_t> token_ids;
  int64_t range_begin = 0;
  int64_t range_end = -1;  // -1 = d_vocab
  /// Fixed prefix of the control run (default: [bos]). The probed token v is
  /// run as [v, prefix...] (checked at position 0) and as [prefix..., v]
  /// (checked at position |prefix|): both runs have the same length.
  std::vector<int64_t> prefix;
  /// Spike rule (the scan's): |h| > abs_threshold and > rel_threshold * median|h|.
  double abs_threshold = 100.0;
  double rel_threshold = 1000.0;
  int64_t batch_size = 512;        // sequences per forward pass
  int64_t max_listed_exceptions = 256;
};
absl::Status ValidateFirstTokenParams(const FirstTokenParams& p, const ModelConfig& c);

struct FirstTokenResult {
  int64_t n_tokens = 0;
  int64_t n_spike_at_first = 0;    // spike token when at position 0
  int64_t n_spike_in_control = 0;  // spike token after the prefix
  double ratio_at_first = 0, ratio_in_control = 0;
  /// Tokens that do NOT spike at position 0 (capped list), and tokens that DO
  /// spike in the control (capped list).
  std::vector<int64_t> not_spiking_at_first, spiking_in_control;
  /// The block (paper numbering) where each counted spike was first seen, histogram [2L+1].
  std::vector<int64_t> first_spike_block_histogram;
  double forward_seconds = 0, total_seconds = 0;  // timing of the probe itself
};

/// Runs the probe, batched. Progress units are tokens probed.
absl::StatusOr<FirstTokenResult> RunFirstTokenProbe(const Model& model,
                                                    const FirstTokenParams& params,
                                                    const ProgressFn& progress,
                                                    const std::atomic<bool>* cancel = nullptr);

/// Parameters of the spike-similarity analysis.
struct SpikeSimilarityParams {
  ScanParams scan;              // thresholds used to find spike tokens and the step-up block
  int64_t step_up_block = 0;    // 0 = detect (first step-up block of the scan)
};

/// A square matrix of pairwise cosine similarities and its summary.
struct CosineMatrix {
  std::string hook;              // where the hidden states were read
  std::vector<double> values;    // row-major [n, n]
  double mean_off_diagonal = 0, min_off_diagonal = 0;
};

struct SpikeSimilarityResult {
  std::vector<std::pair<int64_t, int64_t>> spike_tokens;  // (sequence, position)
  std::vector<int64_t> token_ids;                         // id at each spike token
  int64_t step_up_block = 0;
  CosineMatrix before;      // residual before the step-up block (its input)
  CosineMatrix after;       // post-residual of the step-up block
  CosineMatrix normalized;  // blocks.{l+1}.ln1.hook_normalized, next layer (if any)
};

/// Pairwise cosine similarity (eq. 25) of the spike tokens' hidden states
/// around the step-up block. Errors: FAILED_PRECONDITION when no spike token
/// or no step-up block is found (names the thresholds), bad block number.
absl::StatusOr<SpikeSimilarityResult> RunSpikeSimilarity(
    const Model& model, const std::vector<std::vector<int64_t>>& sequences,
    const SpikeSimilarityParams& params, const ProgressFn& progress,
    const std::atomic<bool>* cancel = nullptr);

}  // namespace sinkscope
