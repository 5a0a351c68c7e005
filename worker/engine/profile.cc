// The profile: one forward pass per chunk, with the scan's and the sink
// analysis's probes on it and the logits for the NLL (profile.h).
#include "worker/engine/profile.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <map>

#include "common/status_macros.h"

namespace sinkscope {

absl::Status ValidateProfileParams(const ProfileParams& p, const ModelConfig& c, size_t n_tokens) {
  RETURN_IF_ERROR(ValidateEvalParams(p.eval, c, n_tokens));
  RETURN_IF_ERROR(ValidateSinkParams(p.sinks, c));
  return ValidateScanParams(p.scan);
}

absl::StatusOr<ProfileResult> RunProfile(const Model& model, const std::vector<int64_t>& tokens,
                                         const ProfileParams& params, const ChunkFn& on_chunk,
                                         const ProgressFn& progress,
                                         const std::atomic<bool>* cancel) {
  RETURN_IF_ERROR(ValidateProfileParams(params, model.config(), tokens.size()));
  const std::vector<EvalChunk> chunks = MakeChunks(tokens.size(), params.eval);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  std::vector<std::vector<int64_t>> sequences;  // the chunks, for the attribution pass
  sequences.reserve(chunks.size());
  for (const EvalChunk& ch : chunks) {
    sequences.emplace_back(tokens.begin() + ch.start, tokens.begin() + ch.start + ch.length);
  }
  SinkParams sink_params = params.sinks;
  sink_params.windowed = false;
  ActivationScanner scanner(model, n_chunks, params.scan);
  SinkAccumulator sinks(model, sink_params, n_chunks);
  // The perplexity pass, each chunk's forward carrying the scan's and the
  // sink statistics' probes (the chunk's first T tokens are its window).
  const ChunkHooksFn add_probes = [&](HookRegistry* hooks, int64_t i, const EvalChunk& chunk,
                                      bool last) {
    scanner.AddProbes(hooks, {i}, last);
    sinks.AddProbes(hooks, std::min(params.sinks.window, chunk.length), last);
  };
  const ProgressFn chunk_progress = [&](int64_t done, int64_t total) {
    if (progress) progress(done, total + 1);  // + the attribution pass
  };
  ProfileResult res;
  ASSIGN_OR_RETURN(res.perplexity, RunPerplexity(model, tokens, params.eval, on_chunk,
                                                 chunk_progress, cancel, add_probes));
  res.sinks = sinks.Finish();
  for (const EvalChunk& ch : chunks) {
    res.sinks.window = std::max(res.sinks.window, std::min(ch.length, params.sinks.window));
  }
  // The attribution pass reads the chunks one at a time, as the first pass did.
  std::vector<std::vector<int64_t>> batches;
  for (int64_t i = 0; i < n_chunks; ++i) batches.push_back({i});
  ASSIGN_OR_RETURN(res.scan, scanner.Finish(sequences, batches, cancel));
  if (progress) progress(n_chunks + 1, n_chunks + 1);
  std::map<int64_t, int64_t> votes;  // key -> sink heads
  for (const LayerSinkRecord& layer : res.sinks.layers) {
    for (const HeadSinkStats& h : layer.heads) {
      if (h.is_sink_head) votes[h.argmax_key]++;
    }
  }
  for (const auto& [key, n] : votes) {
    if (n > res.top_sink_key_heads) {
      res.top_sink_key = key;
      res.top_sink_key_heads = n;
    }
  }
  return res;
}

}  // namespace sinkscope
