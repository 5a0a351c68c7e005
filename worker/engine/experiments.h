// Causal experiments (paper section 4, "distinct roles"): perplexity, constant
// substitution of massive activations, and sink ablations. Every intervention
// is a hook-point intervention of the engine (model.h), never a fork of the
// forward pass; several compose in the order given.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"

namespace sinkscope {

/// How a corpus is cut for evaluation. Chunks are consecutive, non-overlapping
/// windows of `chunk_length` tokens; the context is reset at every chunk edge,
/// so the first token of each chunk is never scored: a stream of N tokens cut
/// into chunks of C scores N - ceil(N / C) tokens (a last chunk of 1 token is dropped).
struct EvalParams {
  int64_t chunk_length = 128;  // >= 2, <= n_ctx
  int64_t token_budget = -1;   // max tokens fed; -1 = the whole stream, else >= 2
};
absl::Status ValidateEvalParams(const EvalParams& p, const ModelConfig& c, size_t n_tokens);

/// One evaluation chunk: tokens [start, start + length) of the stream.
struct EvalChunk {
  int64_t start = 0, length = 0;
};
/// The chunks of a stream of `n_tokens` under `p` (chunks of one token dropped).
std::vector<EvalChunk> MakeChunks(size_t n_tokens, const EvalParams& p);
/// The chunk's ids as a [1, length] int64 CPU tensor.
at::Tensor ChunkIds(const std::vector<int64_t>& tokens, const EvalChunk& c);
/// Log-probabilities [pos, vocab] (float64) from logits [1, pos, vocab].
at::Tensor LogProbs(const at::Tensor& logits);
/// Sum of -log p(next token) over positions 0..T-2 of ids [1, T], nats (float64).
double NllSum(const at::Tensor& logp, const at::Tensor& ids);
/// The same from logits [1, T, vocab] (any dtype): float32 logsumexp per
/// position, float64 differences and sum; what perplexity and the profile use.
double NextTokenNllSum(const at::Tensor& logits, const at::Tensor& ids);

/// Per-chunk perplexity record. Loss is mean next-token negative log-likelihood, nats.
struct ChunkRecord {
  int64_t index = 0;
  int64_t first_token = 0;  // offset in the stream
  int64_t n_scored = 0;
  double nll_sum = 0;  // nats
  double mean_loss = 0, perplexity = 0;
  // Filled by interventions: the intervened run and the KL to the baseline.
  double intervened_mean_loss = 0, intervened_perplexity = 0;
  double kl_mean = 0;  // mean over scored positions of KL(baseline || intervened), nats
};

struct PerplexityResult {
  std::vector<ChunkRecord> chunks;
  int64_t n_scored = 0, n_tokens = 0;
  double mean_loss = 0, perplexity = 0;  // over all scored tokens
};

using ChunkFn = std::function<void(const ChunkRecord&)>;
/// Registers the probes of chunk `index`'s forward pass (`last`: the final
/// chunk), for analyses that ride on the perplexity pass (profile.h).
using ChunkHooksFn =
    std::function<void(HookRegistry* hooks, int64_t index, const EvalChunk& chunk, bool last)>;

/// Perplexity of `tokens` (one stream) chunked per `params` (float64 sums),
/// one forward pass per chunk carrying `chunk_hooks`' probes when given.
absl::StatusOr<PerplexityResult> RunPerplexity(const Model& model,
                                               const std::vector<int64_t>& tokens,
                                               const EvalParams& params, const ChunkFn& on_chunk,
                                               const ProgressFn& progress,
                                               const std::atomic<bool>* cancel = nullptr,
                                               const ChunkHooksFn& chunk_hooks = nullptr);

/// Constant substitution (paper finding 6; Sun et al. 2024 set_mean/set_zero).
struct SubstitutionSpec {
  enum class Mode { kMean, kConstant, kZero };
  Mode mode = Mode::kMean;
  /// Paper block whose post-residual is replaced; 0 = the first detected step-up block.
  int64_t block = 0;
  /// Replace only the spike channels (given, or detected at `block`) instead of the whole state.
  bool channels_only = false;
  std::vector<int64_t> channels;
  /// Positions replaced in every chunk; empty = the spike tokens detected at
  /// `block` in that chunk's baseline run (scan thresholds).
  std::vector<int64_t> positions;
  /// kConstant: the vector written, [d_model] (or [n_channels] when channels_only).
  std::vector<float> constant;
};

/// Sink ablation on chosen heads (paper finding 6).
struct AblationSpec {
  enum class Method { kMask, kZeroProb, kZeroValue };
  Method method = Method::kMask;
  /// (layer, head) pairs; empty = the sink heads found by the `sinks` rule
  /// (eq. 27, epsilon 0.3, T = min(64, chunk)) on the first chunk.
  std::vector<std::pair<int64_t, int64_t>> heads;
  std::vector<int64_t> sink_positions = {0};
};

const char* SubstitutionModeName(SubstitutionSpec::Mode m);
const char* AblationMethodName(AblationSpec::Method m);
absl::StatusOr<SubstitutionSpec::Mode> ParseSubstitutionMode(const std::string& s);
absl::StatusOr<AblationSpec::Method> ParseAblationMethod(const std::string& s);

/// Registers the ablation's interventions on `hooks` for chunks of T tokens:
///  mask:       blocks.l.attn.hook_attn_scores[:, h, :, sink] = -inf (rows that
///              would be left with no key keep theirs), softmax renormalises;
///  zero-prob:  blocks.l.attn.hook_pattern[:, h, :, sink] = 0, no renormalisation;
///  zero-value: blocks.l.attn.hook_v[:, sink, h / group, :] = 0 (with GQA this
///              silences the sink's value for every query head of that KV group).
/// Errors: layer or head out of range, negative position (InvalidArgument).
absl::Status RegisterAblation(const ModelConfig& config, const AblationSpec& spec, int64_t T,
                              HookRegistry* hooks);

/// One intervention of a composed request.
struct InterventionSpec {
  enum class Kind { kSubstitution, kAblation };
  Kind kind = Kind::kSubstitution;
  SubstitutionSpec substitution;
  AblationSpec ablation;
};

/// KL split by position class.
struct KlByClass {
  double spike = 0, after_spike = 0, rest = 0, all = 0;
  int64_t n_spike = 0, n_after_spike = 0, n_rest = 0;
};

/// Change of one ablated head, baseline -> intervened, averaged over chunks.
struct HeadAblationEffect {
  int64_t layer = 0, head = 0;
  double z_norm_baseline = 0, z_norm_intervened = 0;  // mean over positions of ||hook_z[t, head]||
  double distance_baseline = 0, distance_intervened = 0;  // sum_t sum_k A[t,k](t-k)/T
};

/// Relative residual movement ||h_int - h_base|| / ||h_base|| at each later block.
struct ResidualShift {
  int64_t block = 0;
  double relative_change_spike = 0, relative_change_rest = 0;
};

struct ExperimentParams {
  EvalParams eval;
  ScanParams thresholds;  // spike rule (abs/rel thresholds)
  std::vector<InterventionSpec> interventions;
  /// Calibration sequences for Mode::kMean (spike tokens detected at the block).
  std::vector<std::vector<int64_t>> calibration;
};

struct ExperimentResult {
  std::vector<ChunkRecord> chunks;
  int64_t n_scored = 0;
  double baseline_loss = 0, baseline_perplexity = 0;
  double intervened_loss = 0, intervened_perplexity = 0;
  KlByClass kl;
  /// Resolved parameters (so the experiment can be repeated).
  std::vector<int64_t> substitution_blocks;           // per substitution
  std::vector<std::vector<float>> substitution_values;  // the vector written, per substitution
  std::vector<std::vector<int64_t>> substitution_channels;
  std::vector<std::pair<int64_t, int64_t>> ablated_heads;
  std::vector<HeadAblationEffect> head_effects;
  std::vector<ResidualShift> residual_shifts;
};

/// Runs baseline and intervened passes chunk by chunk. Errors (InvalidArgument
/// naming the problem): block the model lacks, constant of the wrong width,
/// head out of range, empty corpus, budget 0 left nothing, calibration with no
/// spike token (FailedPrecondition), no step-up block to default to.
absl::StatusOr<ExperimentResult> RunInterventionExperiment(
    const Model& model, const std::vector<int64_t>& tokens, const ExperimentParams& params,
    const ChunkFn& on_chunk, const ProgressFn& progress,
    const std::atomic<bool>* cancel = nullptr);

}  // namespace sinkscope
