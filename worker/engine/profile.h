// The profile: the paper's table row for one model (Tables 3-8: perplexity,
// sink ratio, spike; with the step-up / step-down blocks, spike tokens and
// channels the text cites) from one pass over an evaluation corpus.
//
// The stream is cut into chunks as the perplexity job cuts it
// (experiments.h: consecutive chunks of `eval.chunk_length`, context reset at
// every edge). Every chunk is one forward pass that serves the three
// analyses at once:
//   - perplexity: next-token NLL of the chunk (float64 sums), as RunPerplexity;
//   - sinks (eq. 27-28): the first T = min(sink_window, chunk length) tokens
//     of the chunk are one sink window; by causality they equal a T-token
//     pass, so the statistics are those of RunSinkAnalysis over the chunks
//     cut to T (not windowed);
//   - scan: the activation scan of the chunks as sequences (massive
//     activations, spike tokens / channels, step-up / step-down blocks, and
//     "spike" = max |h| over blocks, tokens and channels per chunk, mean over
//     chunks), as RunActivationScan; its attribution pass (step rule "share")
//     re-reads only the chunks that hold spike entries, cut after the last
//     spike position.
// So a profile's numbers equal those of the separate perplexity, sinks and
// scan jobs with the same parameters on the same chunks.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/experiments.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"
#include "worker/engine/sinks.h"

namespace sinkscope {

/// Parameters of the profile.
struct ProfileParams {
  /// Chunking of the stream (default chunks of 128 tokens, all of it).
  EvalParams eval;
  /// Sink analysis: T (default 64), epsilon (0.3), layers (all); `windowed`
  /// is not used (one window per chunk).
  SinkParams sinks;
  /// Scan thresholds (defaults: abs 100, rel 1000, step rule "share").
  ScanParams scan;
};
/// Checks ranges (InvalidArgument naming the parameter) for a stream of `n_tokens`.
absl::Status ValidateProfileParams(const ProfileParams& p, const ModelConfig& c, size_t n_tokens);

/// The row and its parts.
struct ProfileResult {
  /// Perplexity over the scored tokens and per chunk.
  PerplexityResult perplexity;
  /// Sink statistics over the chunks' first T tokens (one window per chunk).
  SinkSummary sinks;
  /// Activation scan over the chunks.
  ScanSummary scan;
  /// The key position most often the argmax (eq. 27) of the sink heads; -1
  /// when there is no sink head.
  int64_t top_sink_key = -1;
  /// Sink heads whose argmax key is top_sink_key.
  int64_t top_sink_key_heads = 0;
};

/// Profiles `tokens` (one stream). `on_chunk` is called per chunk in order
/// (its perplexity record); progress counts chunks (plus 1 for the
/// attribution pass). Errors: bad params or token ids (InvalidArgument),
/// CANCELLED.
absl::StatusOr<ProfileResult> RunProfile(const Model& model, const std::vector<int64_t>& tokens,
                                         const ProfileParams& params, const ChunkFn& on_chunk,
                                         const ProgressFn& progress,
                                         const std::atomic<bool>* cancel = nullptr);

}  // namespace sinkscope
