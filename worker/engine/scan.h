// Activation scan (paper section 3.1, Fig. 1 and 7, Table 1).
//
// For each of the 2L blocks (paper numbering 1..2L: odd = attention, even =
// MLP; block b is layer (b-1)/2) it reports the top-k |value| entries of the
// post-residual stream (`hook_resid_mid` after attention, `hook_resid_post`
// after the MLP) and of the block output (`hook_attn_out` / `hook_mlp_out`),
// and the median |value| of that post-residual hidden state. Then, for the
// whole model, the massive activations (Sun et al. 2024 rule:
// |h| > abs_threshold AND |h| > rel_threshold * median|h| of the same hidden
// state of the same sequence), the spike tokens and spike channels, and the
// step-up / step-down blocks:
//
//   For each spike entry e = (sequence, position, channel) let P_e be its peak
//   post-residual value (signed, largest |.|) over the blocks where e is
//   massive. Block b's output at e is o_b,e = h_b,e - h_{b-1},e (h_0 =
//   hook_embed); it is examined for the blocks that create or remove the
//   entry, i.e. e is massive right after b or right before b. Block b is a
//   *step-up block* if for some spike entry sign(o_b,e) = sign(P_e) and
//   |o_b,e| >= step_fraction * |P_e|, a *step-down block* if
//   sign(o_b,e) = -sign(P_e) and |o_b,e| >= step_fraction * |P_e|.
//
// One forward pass: the only activation kept across hook points is the
// previous post-residual (to form o_b,e at the few spike entries).
// Statistics are float32 whatever the model dtype. Reductions happen in the
// probes; no activation is kept beyond its block.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"

namespace sinkscope {

/// Parameters of the scan. Defaults are the field's (Sun et al. 2024).
struct ScanParams {
  int64_t top_k = 3;               // 1..64
  double abs_threshold = 100.0;    // >= 0
  double rel_threshold = 1000.0;   // >= 0, multiple of the median
  double step_fraction = 0.5;      // (0, 1]
  /// Max spike entries listed in the summary (the counts are exact).
  int64_t max_listed_entries = 256;
};

/// Checks ranges; InvalidArgument naming the parameter otherwise.
absl::Status ValidateScanParams(const ScanParams& p);

/// One activation entry.
struct ActivationEntry {
  float value = 0;  // signed value
  int64_t sequence = 0, position = 0, channel = 0;
};

/// Paper block number b (1..2L) <-> layer, sublayer.
struct BlockId {
  int64_t block = 0;  // 1..2L
  int64_t layer = 0;  // 0..L-1
  bool is_mlp = false;
  std::string sublayer() const { return is_mlp ? "mlp" : "attn"; }
  /// Hook of the post-residual: blocks.l.hook_resid_mid / hook_resid_post.
  std::string resid_hook() const;
  /// Hook of the block output: blocks.l.hook_attn_out / hook_mlp_out.
  std::string output_hook() const;
  static BlockId FromBlock(int64_t block);
};

/// Per-block record, emitted as soon as the block has been seen for all sequences.
struct BlockRecord {
  BlockId id;
  std::vector<ActivationEntry> resid_top;   // top-k by |value| of post-residual
  std::vector<ActivationEntry> output_top;  // top-k by |value| of block output
  std::vector<float> resid_median_abs;      // per sequence: median |h| of the post-residual
  float resid_max_abs = 0;                  // max |h| over sequences
  int64_t n_massive = 0;                    // entries passing both thresholds
};

/// Whole-model summary.
struct ScanSummary {
  std::vector<BlockRecord> blocks;
  std::vector<std::pair<int64_t, int64_t>> spike_tokens;  // (sequence, position), sorted
  std::vector<int64_t> spike_channels;                    // sorted
  std::vector<ActivationEntry> spike_entries;  // at their peak block, largest first (capped)
  std::vector<int64_t> step_up_blocks;         // paper numbering, ascending
  std::vector<int64_t> step_down_blocks;
  float peak_abs = 0;         // max |h| over blocks, tokens, channels (all sequences)
  int64_t peak_block = 0;     // block where peak_abs is reached
  float spike_mean_over_sequences = 0;  // mean over sequences of per-sequence max |h|
  int64_t n_tokens = 0;
};

/// Progress callback: (units done, units total); a unit is one block of one batch.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;
using BlockFn = std::function<void(const BlockRecord&)>;

/// Runs the scan over `sequences` (token ids, BOS included if wanted).
/// Sequences of equal length are batched. `on_block` is called once per block
/// in order 1..2L after all sequences have passed it. Errors: bad params,
/// bad token ids, too-long sequences (InvalidArgument), CANCELLED.
absl::StatusOr<ScanSummary> RunActivationScan(const Model& model,
                                              const std::vector<std::vector<int64_t>>& sequences,
                                              const ScanParams& params, const BlockFn& on_block,
                                              const ProgressFn& progress,
                                              const std::atomic<bool>* cancel = nullptr);

}  // namespace sinkscope
