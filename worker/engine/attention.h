// Attention scores, the chunked attention output and the O(T) statistics of an
// attention pattern, computed from query chunks: a chunk of queries against
// the keys it may see (causal, sliding window), softmax per row in float32,
// never a [T, T] tensor per layer. Model::Forward computes its scores with the
// same AttentionScores, so a chunk's rows are the rows of attn.hook_pattern.
//
// Shapes use TransformerLens names: q [batch, pos, head, d_head] (as
// attn.hook_rot_q, or attn.hook_q without RoPE), k [batch, pos, kv_head,
// d_head], qh/kh/vh [batch, head, pos, d_head].
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "worker/engine/config.h"

namespace sinkscope {

/// How one layer turns queries and keys into scores, as Model::Forward does.
struct AttentionSpec {
  double scale = 1.0;    // query scale (ModelConfig::QueryScale)
  double softcap = 0.0;  // c in c tanh(s / c) (Gemma 2); <= 0: none
  int64_t window = 0;    // sliding window: key k visible from t when t - k < window; <= 0: causal only
  bool sigmoid = false;  // AttnFn::kSigmoid: pattern = sigmoid(scores), no row normalisation
  /// ModelConfig::kv_bias: the learned key k* and value v* [kv_head, d_head]
  /// every query sees besides the tokens (a learned sink); undefined = none.
  /// With them the softmax runs over [q.k*, q.k_0..] and the statistics below
  /// keep the token keys (a row's token mass is 1 - A*).
  at::Tensor sink_key, sink_value;
};
/// The spec of layer `layer` of `c` (without the kv-bias tensors: Model::Attention adds them).
AttentionSpec LayerAttention(const ModelConfig& c, int64_t layer);

/// k* or v* [kv_head, d_head] per query head as [1, head, 1, d_head] in
/// `dtype` (head h uses kv head h / (n_heads / n_kv_heads), as RepeatKv lays them out).
at::Tensor PerQueryHead(const at::Tensor& per_kv_head, int64_t n_heads, c10::ScalarType dtype);

/// Scores of queries qh [batch, head, nq, d_head] against the learned key of
/// spec.sink_key: [batch, head, nq, 1], (q . k*) * scale, in qh's dtype.
at::Tensor SinkSlotScores(const at::Tensor& qh, const AttentionSpec& spec);

/// The pattern of float32 scores [..., nq, nk] (-inf where not visible):
/// softmax over the last dim, or the elementwise sigmoid (invisible keys 0).
at::Tensor PatternOfScores(const at::Tensor& scores, const AttentionSpec& spec);

/// Boolean may-attend mask [nq, nk] of queries at positions q0.. against keys
/// at positions k0..: causal, and within the window if any.
at::Tensor AttendMask(int64_t q0, int64_t nq, int64_t k0, int64_t nk, int64_t window,
                      const at::Device& device);

/// Scores of queries qh [batch, head, nq, d_head] at positions q0.. against keys
/// kh [batch, head (or 1), nk, d_head] at positions k0..: (q . k) * scale,
/// soft-capped, -inf where not visible, in qh's dtype: [batch, head, nq, nk].
/// With q0 = k0 = 0 and every position, this is attn.hook_attn_scores.
at::Tensor AttentionScores(const at::Tensor& qh, const at::Tensor& kh, int64_t q0, int64_t k0,
                           const AttentionSpec& spec);

/// A range of query rows [q0, q1) and the first key they may see (keys [k0, q1)).
struct QueryChunk {
  int64_t q0 = 0, q1 = 0, k0 = 0;
};
/// Consecutive chunks of `rows` queries (the last may be shorter) covering
/// positions 0..T-1, each with its first visible key under `window`.
std::vector<QueryChunk> QueryChunks(int64_t T, int64_t rows, int64_t window);

/// Attention output z [batch, head, pos, d_head] from query chunks sized by
/// AttentionChunkRows (common/attention_chunks.h): memory O(chunk x T) instead
/// of O(T^2). Without a soft-cap or sigmoid each chunk runs the fused
/// scaled_dot_product_attention with its [chunk, keys] window mask (and the
/// learned key/value slot first when spec.sink_key is set); with one,
/// softmax(AttentionScores) in float32, cast to qh's dtype, times vh.
/// qh, kh, vh: [batch, head, pos, d_head] (kv heads already repeated).
at::Tensor ChunkedAttention(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh,
                            const AttentionSpec& spec);

/// Per-row statistics of one layer's attention pattern A [batch, head, T, T]
/// (attn.hook_pattern: softmax of attn.hook_attn_scores in float32, rounded to
/// the model dtype), accumulated from query chunks. All [batch, head, T], on
/// the device of q.
struct PatternStats {
  at::Tensor col_sum;      // float64, indexed by key k: sum_t A[t, k]
  at::Tensor row_sum;      // float64: sum_k A[t, k] (1 up to rounding; 1 - A* with a learned slot)
  at::Tensor key_moment;   // float64: sum_k A[t, k] k (k in tokens, 0-based)
  at::Tensor diag;         // float64: A[t, t]
  at::Tensor score_sum;    // float64: sum of the scores of the keys t sees (attn_scores, float32)
  at::Tensor logsumexp;    // float32: log sum_k exp(score[t, k]) over the keys t sees (and the learned slot)
  /// The row's largest entry: its key m_t (int64), and the mass and key
  /// moment of the other keys, summed without it (float64): accurate even when
  /// A[t, m_t] is within rounding of the row sum, where row_sum - A[t, m_t]
  /// would cancel.
  at::Tensor row_argmax, mass_without_argmax, moment_without_argmax;
};

/// Computes PatternStats for one layer from q [batch, T, head, d_head] and
/// k [batch, T, kv_head, d_head] (heads share kv heads in groups, GQA), in
/// query chunks of `rows` rows per kv-head group (0: AttentionChunkRows), so
/// the memory is O(rows x T) per group. `dtype` is the model's (the pattern is
/// rounded to it as Model::Forward does).
PatternStats ComputePatternStats(const at::Tensor& q, const at::Tensor& k,
                                 const AttentionSpec& spec, c10::ScalarType dtype,
                                 int64_t rows = 0);

/// Scores score[t, key[b, h]] of every query t against one key per (batch,
/// head): q, k as for ComputePatternStats, key [batch, head] int64. Returns
/// [batch, head, T] float32, -inf where t cannot see that key.
at::Tensor ScoresAtKey(const at::Tensor& q, const at::Tensor& k, const at::Tensor& key,
                       const AttentionSpec& spec);

/// A[t, key[b, h]] from the scores at that key and PatternStats::logsumexp:
/// exp(score - logsumexp) (sigmoid attention: sigmoid(score)), 0 where not
/// visible, rounded through `dtype` as the pattern is. [batch, head, T] float32.
at::Tensor PatternAtKey(const at::Tensor& scores_at_key, const at::Tensor& logsumexp,
                        const AttentionSpec& spec, c10::ScalarType dtype);

}  // namespace sinkscope
