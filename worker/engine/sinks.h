// Attention-sink analyses (paper section 3.2, eq. 27-28, section 4.3.3) and
// the self-attention profile of early layers (section 3.1.3, delimiters).
//
// Both compute the statistics of `blocks.l.attn.hook_pattern` ([batch, head,
// q_pos, k_pos]) and, for the logit gap, `blocks.l.attn.hook_attn_scores`,
// only in the layers asked for, without materialising them: the layer's
// queries and keys (attn.hook_rot_q / hook_rot_k) are scored by query chunks
// against all the keys each may see (attention.h), softmax per row in float32,
// and the column sums, distances and diagonal accumulated, so the memory is
// O(chunk x T) per head group and every layer keeps the fused attention path
// for its output. Equal to the materialised computation (tests/engine/
// sinks_test.cc). All statistics are computed in float32 or wider.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"

namespace sinkscope {

/// Parameters of the `sinks` job.
struct SinkParams {
  int64_t window = 64;        // T: tokens per sequence used (longer ones are cut), >= 2
  bool windowed = false;      // split long sequences into consecutive windows of T instead
  double epsilon = 0.3;       // sink-head threshold, in (0, 1)
  std::vector<int64_t> layers;  // layers to analyse (sorted, duplicates ignored); empty = all
  /// Query rows per chunk of the attention statistics; 0 = sized to
  /// kAttentionChunkElements (common/attention_chunks.h). Results do not depend on it.
  int64_t query_chunk = 0;
};
absl::Status ValidateSinkParams(const SinkParams& p, const ModelConfig& config);

/// Per (layer, head) statistics, averaged over the analysed sequences.
struct HeadSinkStats {
  int64_t layer = 0, head = 0;
  /// Mean over sequences of max_{k < floor(T/2)} alpha_k (eq. 27; 0-based keys).
  double max_importance = 0;
  /// Key index of that maximum, most frequent over sequences.
  int64_t argmax_key = 0;
  /// Fraction of sequences in which this head is a sink head (max alpha > epsilon).
  double sink_fraction = 0;
  /// True when sink_fraction >= 0.5.
  bool is_sink_head = false;
  /// Gu et al. (2025) variant: alpha~_0 = sum_t A[t, 0] / (T - 0), key 0 only.
  double gu_first_key_score = 0;
  double gu_sink_fraction = 0;  // fraction of sequences with alpha~_0 > epsilon
  /// Mean attention distance sum_t sum_k A[t,k] (t - k) / T (in tokens).
  double mean_attention_distance = 0;
  /// Same with the sink key's column removed and each row renormalised.
  double mean_attention_distance_without_sink = 0;
  /// Mean over queries t > k* of score[t, k*] - mean_{k != k*, k <= t} score[t, k]
  /// (pre-softmax scaled scores, hook_attn_scores), k* = argmax key.
  double mean_logit_gap = 0;
};

/// One record per analysed layer.
struct LayerSinkRecord {
  int64_t layer = 0;
  std::vector<HeadSinkStats> heads;
  double sink_ratio = 0;  // mean over sequences of the fraction of this layer's heads that sink
};

/// Summary: eq. 28 for the model, and sink heads vs the others.
struct SinkSummary {
  std::vector<LayerSinkRecord> layers;
  double sink_ratio = 0;      // s_eps averaged over sequences (eq. 28)
  double gu_sink_ratio = 0;   // same with the Gu et al. first-key criterion
  int64_t n_sink_heads = 0, n_heads = 0;
  int64_t n_sequences = 0;    // after cutting/windowing
  int64_t window = 0;         // longest window analysed: min(T, longest sequence)
  // Means over sink heads / other heads (NaN-free: 0 when the group is empty).
  double sink_heads_distance = 0, other_heads_distance = 0;
  double sink_heads_distance_without_sink = 0, other_heads_distance_without_sink = 0;
  double sink_heads_logit_gap = 0, other_heads_logit_gap = 0;
};

using LayerSinkFn = std::function<void(const LayerSinkRecord&)>;

/// The sink analysis's accumulators, apart from its loop, so that one forward
/// pass can serve several analyses (the profile job, profile.h). Construct
/// with validated params; AddProbes on the registry of every forward pass;
/// Finish once after the last. Statistics as RunSinkAnalysis (eq. 27-28).
class SinkAccumulator {
 public:
  /// `n_windows`: windows analysed over all passes (the divisor of the means).
  /// `on_layer` is called for each layer during the last pass; `progress`
  /// counts one unit per layer per pass, out of `progress_total`.
  SinkAccumulator(const Model& model, const SinkParams& params, int64_t n_windows,
                  LayerSinkFn on_layer = nullptr, ProgressFn progress = nullptr,
                  int64_t progress_total = 0);
  ~SinkAccumulator();
  SinkAccumulator(const SinkAccumulator&) = delete;
  SinkAccumulator& operator=(const SinkAccumulator&) = delete;

  /// Registers on `hooks` the probes of one pass whose batch rows are
  /// windows of `T` tokens: the statistics read the first T positions of the
  /// pass, which may be longer (causal attention: they equal a T-token pass).
  /// `last`: the final pass (each layer's record is finished as it passes).
  /// The accumulator must outlive the pass.
  void AddProbes(HookRegistry* hooks, int64_t T, bool last);
  /// The summary after the last pass (`window` left 0 for the caller).
  SinkSummary Finish();

 private:
  struct HeadAcc;
  void Accumulate(int64_t layer, int64_t T, const at::Tensor& q, const at::Tensor& k);
  void FinishLayer(int64_t layer);

  const Model& model_;
  const SinkParams params_;
  const std::vector<int64_t> layers_;
  const int64_t n_windows_;
  LayerSinkFn on_layer_;
  ProgressFn progress_;
  int64_t progress_total_ = 0, progress_done_ = 0;
  std::map<int64_t, std::vector<HeadAcc>> acc_;  // layer -> heads
  std::map<int64_t, double> layer_ratio_sum_, layer_gu_ratio_sum_;
  SinkSummary summary_;
};

/// Runs the sink analysis. Errors: bad params (names it), bad tokens,
/// a sequence shorter than 2 tokens, CANCELLED.
absl::StatusOr<SinkSummary> RunSinkAnalysis(const Model& model,
                                            const std::vector<std::vector<int64_t>>& sequences,
                                            const SinkParams& params, const LayerSinkFn& on_layer,
                                            const ProgressFn& progress,
                                            const std::atomic<bool>* cancel = nullptr);

/// Parameters of the self-attention profile.
struct SelfAttentionParams {
  /// Layers to profile (sorted, duplicates ignored); empty = layers
  /// 0..(step-up block's layer), found by a
  /// scan with default thresholds (all layers when no step-up block is found).
  std::vector<int64_t> layers;
  /// Token ids counted as delimiters (e.g. the ids of "." and "\n").
  std::vector<int64_t> delimiter_ids;
  /// Query rows per chunk, as SinkParams::query_chunk.
  int64_t query_chunk = 0;
};

/// Token groups of the profile.
enum class TokenGroup { kFirst = 0, kDelimiter = 1, kOther = 2 };
const char* TokenGroupName(TokenGroup g);

struct SelfAttentionLayer {
  int64_t layer = 0;
  /// Mean A[t,t] over heads for each token: [sequence][position].
  std::vector<std::vector<float>> per_token;
  /// Mean A[t,t] per group (first, delimiter, other), averaged over heads and tokens.
  double group_mean[3] = {0, 0, 0};
  /// Per head, per group: [head][group].
  std::vector<std::array<double, 3>> per_head_group_mean;
  int64_t group_count[3] = {0, 0, 0};
};

struct SelfAttentionProfile {
  std::vector<SelfAttentionLayer> layers;
  std::vector<int64_t> profiled_layers;
};

/// Self-attention A[t,t] of every token in the chosen early layers.
absl::StatusOr<SelfAttentionProfile> RunSelfAttentionProfile(
    const Model& model, const std::vector<std::vector<int64_t>>& sequences,
    const SelfAttentionParams& params, const std::function<void(const SelfAttentionLayer&)>& on_layer,
    const ProgressFn& progress, const std::atomic<bool>* cancel = nullptr);

}  // namespace sinkscope
