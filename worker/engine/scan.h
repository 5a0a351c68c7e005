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
//   This is StepRule::kSingleBlock ("single-block"); it misses spikes that
//   grow over several blocks.
//
// Block attribution (the default rule, StepRule::kShare, "share"): the
// residual stream is a sum, so for a spike entry e with peak block p
//   resid_p[e] = embed[e] + sum_{j <= p} out_j[e]     (exactly)
// with out_j = hook_attn_out / hook_mlp_out of block j. The scan reports, for
// every listed spike entry, embed[e] and out_j[e] for all blocks j = 1..2L
// (shares = value / P_e). Block j is a step-up block of e if j <= p,
// sign(out_j[e]) = sign(P_e) and |out_j[e]| >= step_share * |P_e|; a
// step-down block if sign(out_j[e]) = -sign(P_e) and |out_j[e]| >=
// step_share * |P_e| (any j). The model's step-up / step-down blocks are the
// union over spike entries (all tracked entries, not only the listed ones).
//
// Passes: one forward pass finds the massive entries (the only activation
// kept across hook points is the previous post-residual); when there are
// spike entries and the rule is kShare, a second pass over the batches that
// hold them gathers hook_embed and every block output at those entries only
// (memory: 2L+1 floats per tracked entry, at most 16384 entries).
// Statistics are float32 whatever the model dtype. Reductions happen in the
// probes; no activation is kept beyond its block.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"

namespace sinkscope {

/// Parameters of the scan. Defaults are the field's (Sun et al. 2024).
struct ScanParams {
  int64_t top_k = 3;               // 1..64
  double abs_threshold = 100.0;    // >= 0
  double rel_threshold = 1000.0;   // >= 0, multiple of the median
  double step_fraction = 0.5;      // (0, 1]; StepRule::kSingleBlock only
  /// How step-up / step-down blocks are defined (see the file comment).
  enum class StepRule { kShare, kSingleBlock };
  StepRule step_rule = StepRule::kShare;
  double step_share = 0.1;         // (0, 1]; StepRule::kShare only
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

/// Name of a step rule: "share" | "single-block".
const char* StepRuleName(ScanParams::StepRule rule);
/// Parses "share" | "single-block"; InvalidArgument naming `step_rule` otherwise.
absl::StatusOr<ScanParams::StepRule> ParseStepRule(const std::string& name);

/// Block attribution of one spike entry e at its peak block p:
/// observed resid_p[e] = embed + sum_{j <= p} contributions[j-1] (exact up to
/// the float32 rounding of the sum; the model adds in its own dtype).
struct SpikeAttribution {
  ActivationEntry entry;              // value = observed peak post-residual P_e
  int64_t peak_block = 0;             // p (paper numbering)
  float embed = 0;                    // hook_embed at e
  std::vector<float> contributions;   // [2L]: out_j[e] for blocks j = 1..2L (also after p)
  float sum_to_peak = 0;              // embed + sum_{j<=p} out_j[e], float32 in block order
  std::vector<int64_t> step_up_blocks, step_down_blocks;  // of this entry, rule in use
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
  /// Distinct (sequence, position, channel) entries massive in some block
  /// (tracked up to 16384).
  int64_t n_massive_entries = 0;
  /// Block attribution of spike_entries (same order; kShare rule only).
  std::vector<SpikeAttribution> attributions;
};

/// The block after which interventions act by default: the last step-up block
/// of the largest spike entry (its attribution); without attributions, the
/// last step-up block of the model; 0 when there is none.
int64_t LastStepUpBlockOfLargestSpike(const ScanSummary& summary);

/// Progress callback: (units done, units total); a unit is one block of one batch.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;
using BlockFn = std::function<void(const BlockRecord&)>;

/// The scan's passes apart from its loop, so that one forward pass can serve
/// several analyses (the profile job, profile.h). Construct with validated
/// params and checked tokens; AddProbes on the registry of every first-pass
/// forward; Finish once after the last (it runs the attribution pass).
class ActivationScanner {
 public:
  /// `n_sequences`: sequences over all passes (indices 0..n-1). `on_block`
  /// is called per block during the last pass; `progress` counts one unit
  /// per block per pass, out of `progress_total`.
  ActivationScanner(const Model& model, int64_t n_sequences, const ScanParams& params,
                    BlockFn on_block = nullptr, ProgressFn progress = nullptr,
                    int64_t progress_total = 0);
  ~ActivationScanner();
  ActivationScanner(const ActivationScanner&) = delete;
  ActivationScanner& operator=(const ActivationScanner&) = delete;

  /// Registers the first-pass probes of one forward whose batch rows are the
  /// sequences `batch` (indices). `last_batch`: the final pass. The scanner
  /// must outlive the pass.
  void AddProbes(HookRegistry* hooks, const std::vector<int64_t>& batch, bool last_batch);
  /// The summary after the last pass: blocks, spike tokens / channels and,
  /// for StepRule::kShare, the attribution pass over those of `batches`
  /// (indices into `sequences`, the sequences of the first pass) that hold
  /// tracked entries, cut after the last tracked position. CANCELLED.
  absl::StatusOr<ScanSummary> Finish(const std::vector<std::vector<int64_t>>& sequences,
                                     const std::vector<std::vector<int64_t>>& batches,
                                     const std::atomic<bool>* cancel);

 private:
  struct BlockAccumulator;
  struct Observation;
  using EntryKey = std::tuple<int64_t, int64_t, int64_t>;  // (sequence, position, channel)

  const Model& model_;
  const ScanParams params_;
  const int64_t n_seq_, n_blocks_;
  BlockFn on_block_;
  ProgressFn progress_;
  int64_t progress_total_ = 0, units_done_ = 0;
  std::vector<BlockAccumulator> acc_;  // [0..2L], block 0 unused
  std::vector<float> seq_max_;         // per sequence: max |h| over blocks
  std::set<EntryKey> massive_;         // entries passing both thresholds in some block
  std::map<EntryKey, std::vector<Observation>> observations_;
  // Per pass: h_{b-1} [batch, pos, d_model] float32 and its massive (row, pos, channel).
  at::Tensor prev_;
  std::set<std::array<int64_t, 3>> prev_hits_;
};

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
