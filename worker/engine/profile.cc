// The profile: one forward pass per chunk, with the scan's and the sink
// analysis's probes on it and the logits for the NLL (profile.h).
#include "worker/engine/profile.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "worker/engine/status_macros.h"

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
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(ValidateProfileParams(params, c, tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.d_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at offset ", i,
                                                     " is out of range [0, ", c.d_vocab, ")"));
    }
  }
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
  ForwardOptions opts;
  opts.cancel = cancel;
  ProfileResult res;
  PerplexityResult& ppl = res.perplexity;
  double nll = 0;
  for (int64_t i = 0; i < n_chunks; ++i) {
    const bool last = i + 1 == n_chunks;
    HookRegistry hooks;
    scanner.AddProbes(&hooks, {i}, last);
    sinks.AddProbes(&hooks, std::min(params.sinks.window, chunks[i].length), last);
    at::Tensor ids = ChunkIds(tokens, chunks[i]);
    ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(ids, hooks, opts));
    ChunkRecord rec;
    rec.index = i;
    rec.first_token = chunks[i].start;
    rec.n_scored = chunks[i].length - 1;
    rec.nll_sum = NextTokenNllSum(logits, ids);
    rec.mean_loss = rec.nll_sum / rec.n_scored;
    rec.perplexity = std::exp(rec.mean_loss);
    nll += rec.nll_sum;
    ppl.n_scored += rec.n_scored;
    ppl.n_tokens += chunks[i].length;
    if (on_chunk) on_chunk(rec);
    ppl.chunks.push_back(rec);
    if (progress) progress(i + 1, n_chunks + 1);
  }
  ppl.mean_loss = nll / ppl.n_scored;
  ppl.perplexity = std::exp(ppl.mean_loss);
  res.sinks = sinks.Finish();
  for (const auto& s : sequences) {
    res.sinks.window = std::max<int64_t>(res.sinks.window, std::min<int64_t>(s.size(), params.sinks.window));
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
