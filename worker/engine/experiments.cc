// Perplexity and intervention experiments, built from hook-point interventions.
#include "worker/engine/experiments.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/sinks.h"
#include "common/status_macros.h"

namespace sinkscope {

std::vector<EvalChunk> MakeChunks(size_t n_tokens, const EvalParams& p) {
  const int64_t n = p.token_budget >= 0 ? std::min<int64_t>(p.token_budget, n_tokens) : n_tokens;
  std::vector<EvalChunk> out;
  for (int64_t s = 0; s < n; s += p.chunk_length) {
    const int64_t len = std::min<int64_t>(p.chunk_length, n - s);
    if (len >= 2) out.push_back({s, len});
  }
  return out;
}

at::Tensor ChunkIds(const std::vector<int64_t>& tokens, const EvalChunk& c) {
  std::vector<int64_t> ids(tokens.begin() + c.start, tokens.begin() + c.start + c.length);
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
}

at::Tensor LogProbs(const at::Tensor& logits) {
  return at::log_softmax(logits[0].to(at::kDouble), -1);
}

double NllSum(const at::Tensor& logp, const at::Tensor& ids) {
  const int64_t T = ids.size(1);
  at::Tensor targets = ids[0].narrow(0, 1, T - 1).to(logp.device()).view({T - 1, 1});
  return -logp.narrow(0, 0, T - 1).gather(1, targets).sum().item<double>();
}

double NextTokenNllSum(const at::Tensor& logits, const at::Tensor& ids) {
  const int64_t T = ids.size(1);
  // -log p(x_{t+1}) = logsumexp(z_t) - z_t[x_{t+1}]: ATen's stable
  // logsumexp per row in float32 (no [T, vocab] float64 copy), the
  // differences and their sum in float64.
  at::Tensor z = logits[0].narrow(0, 0, T - 1).to(at::kFloat);
  at::Tensor targets = ids[0].narrow(0, 1, T - 1).to(z.device()).view({T - 1, 1});
  at::Tensor lse = at::logsumexp(z, -1).to(at::kDouble);
  at::Tensor picked = z.gather(1, targets).squeeze(1).to(at::kDouble);
  return (lse - picked).sum().item<double>();
}

namespace {

/// Spike positions and channels of one hidden state h: [pos, d_model] (scan rule).
void DetectSpikes(const at::Tensor& h, const ScanParams& thr, std::set<int64_t>* positions,
                  std::set<int64_t>* channels) {
  at::Tensor a = h.to(at::kFloat).abs();
  const double median = a.reshape({-1}).median().item<double>();
  const double t = std::max(thr.abs_threshold, thr.rel_threshold * median);
  at::Tensor hits = (a > t).nonzero().cpu();  // [n, 2]
  auto hx = hits.accessor<int64_t, 2>();
  for (int64_t i = 0; i < hits.size(0); ++i) {
    if (positions) positions->insert(hx[i][0]);
    if (channels) channels->insert(hx[i][1]);
  }
}

/// A resolved constant substitution.
struct ResolvedSubstitution {
  int64_t block = 0;
  std::string hook;
  bool channels_only = false;
  std::vector<int64_t> channels;
  at::Tensor value;  // [d_model] or [n_channels], float32 CPU
  std::vector<int64_t> positions;  // fixed positions (empty = detect per chunk)
};

struct ResolvedAblation {
  AblationSpec::Method method;
  std::map<int64_t, std::vector<int64_t>> heads_by_layer;
  std::vector<std::pair<int64_t, int64_t>> heads;  // (layer, head) in the order given / found
  std::vector<int64_t> sink_positions;
};

}  // namespace

absl::Status ValidateEvalParams(const EvalParams& p, const ModelConfig& c, size_t n_tokens) {
  if (n_tokens == 0) return absl::InvalidArgumentError("the corpus is empty");
  if (p.chunk_length < 2 || p.chunk_length > c.n_ctx) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_length must be in [2, ", c.n_ctx,
                                                   "] (the model's context), got ",
                                                   p.chunk_length));
  }
  if (p.token_budget != -1 && p.token_budget < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_budget must be >= 2 tokens (or unset for the whole corpus), got ", p.token_budget));
  }
  if (MakeChunks(n_tokens, p).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nothing to score: ", n_tokens, " token(s) with token_budget ", p.token_budget,
        " give no chunk of at least 2 tokens"));
  }
  return absl::OkStatus();
}

const char* SubstitutionModeName(SubstitutionSpec::Mode m) {
  switch (m) {
    case SubstitutionSpec::Mode::kMean: return "mean";
    case SubstitutionSpec::Mode::kConstant: return "constant";
    case SubstitutionSpec::Mode::kZero: return "zero";
  }
  return "?";
}
const char* AblationMethodName(AblationSpec::Method m) {
  switch (m) {
    case AblationSpec::Method::kMask: return "mask";
    case AblationSpec::Method::kZeroProb: return "zero-prob";
    case AblationSpec::Method::kZeroValue: return "zero-value";
  }
  return "?";
}
absl::StatusOr<SubstitutionSpec::Mode> ParseSubstitutionMode(const std::string& s) {
  const std::string l = absl::AsciiStrToLower(s);
  if (l == "mean") return SubstitutionSpec::Mode::kMean;
  if (l == "constant") return SubstitutionSpec::Mode::kConstant;
  if (l == "zero") return SubstitutionSpec::Mode::kZero;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown substitution mode '", s, "' (mean, constant, zero)"));
}
absl::StatusOr<AblationSpec::Method> ParseAblationMethod(const std::string& s) {
  const std::string l = absl::AsciiStrToLower(s);
  if (l == "mask") return AblationSpec::Method::kMask;
  if (l == "zero-prob" || l == "zero_prob") return AblationSpec::Method::kZeroProb;
  if (l == "zero-value" || l == "zero_value") return AblationSpec::Method::kZeroValue;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ablation method '", s, "' (mask, zero-prob, zero-value)"));
}

absl::Status RegisterAblation(const ModelConfig& c, const AblationSpec& spec, int64_t T,
                              HookRegistry* hooks) {
  std::map<int64_t, std::vector<int64_t>> by_layer;
  for (auto [l, h] : spec.heads) {
    if (l < 0 || l >= c.n_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, " is out of range [0, ", c.n_layers, ")"));
    }
    if (h < 0 || h >= c.n_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("head ", h, " is out of range [0, ", c.n_heads, ")"));
    }
    by_layer[l].push_back(h);
  }
  std::vector<int64_t> sinks;
  for (int64_t p : spec.sink_positions) {
    if (p < 0) return absl::InvalidArgumentError(absl::StrCat("negative sink position ", p));
    if (p < T) sinks.push_back(p);
  }
  if (sinks.empty()) return absl::OkStatus();
  for (const auto& [l, hs] : by_layer) {
    switch (spec.method) {
      case AblationSpec::Method::kMask:
        hooks->AddIntervention(HookName(l, "attn.hook_attn_scores"), [hs, sinks](
                                                                         const std::string&, int64_t,
                                                                         const at::Tensor& t) {
          at::Tensor out = t.clone();  // [batch, head, q, k]
          for (int64_t h : hs) {
            at::Tensor sh = out.select(1, h);
            at::Tensor orig = sh.clone();
            for (int64_t k : sinks) sh.select(-1, k).fill_(-std::numeric_limits<double>::infinity());
            // A query that sees only sink keys keeps them (else its row would be all -inf).
            at::Tensor dead = sh.isinf().all(-1, true);
            sh.copy_(at::where(dead, orig, sh));
          }
          return out;
        });
        break;
      case AblationSpec::Method::kZeroProb:
        hooks->AddIntervention(HookName(l, "attn.hook_pattern"), [hs, sinks](
                                                                     const std::string&, int64_t,
                                                                     const at::Tensor& t) {
          at::Tensor out = t.clone();  // [batch, head, q, k]
          for (int64_t h : hs) {
            for (int64_t k : sinks) out.select(1, h).select(-1, k).zero_();
          }
          return out;
        });
        break;
      case AblationSpec::Method::kZeroValue: {
        const int64_t group = c.n_heads / c.n_kv_heads;
        hooks->AddIntervention(HookName(l, "attn.hook_v"), [hs, sinks, group](
                                                               const std::string&, int64_t,
                                                               const at::Tensor& t) {
          at::Tensor out = t.clone();  // [batch, pos, kv_head, d_head]
          for (int64_t h : hs) {
            for (int64_t k : sinks) out.select(1, k).select(1, h / group).zero_();
          }
          return out;
        });
        break;
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PerplexityResult> RunPerplexity(const Model& model,
                                               const std::vector<int64_t>& tokens,
                                               const EvalParams& params, const ChunkFn& on_chunk,
                                               const ProgressFn& progress,
                                               const std::atomic<bool>* cancel,
                                               const ChunkHooksFn& chunk_hooks) {
  RETURN_IF_ERROR(ValidateEvalParams(params, model.config(), tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= model.config().d_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at offset ", i,
                                                     " is out of range [0, ",
                                                     model.config().d_vocab, ")"));
    }
  }
  const std::vector<EvalChunk> chunks = MakeChunks(tokens.size(), params);
  PerplexityResult res;
  double nll = 0;
  ForwardOptions opts;
  opts.cancel = cancel;
  for (size_t i = 0; i < chunks.size(); ++i) {
    at::Tensor ids = ChunkIds(tokens, chunks[i]);
    HookRegistry hooks;
    if (chunk_hooks) chunk_hooks(&hooks, static_cast<int64_t>(i), chunks[i], i + 1 == chunks.size());
    ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(ids, hooks, opts));
    ChunkRecord rec;
    rec.index = static_cast<int64_t>(i);
    rec.first_token = chunks[i].start;
    rec.n_scored = chunks[i].length - 1;
    rec.nll_sum = NextTokenNllSum(logits, ids);
    rec.mean_loss = rec.nll_sum / rec.n_scored;
    rec.perplexity = std::exp(rec.mean_loss);
    nll += rec.nll_sum;
    res.n_scored += rec.n_scored;
    res.n_tokens += chunks[i].length;
    if (on_chunk) on_chunk(rec);
    res.chunks.push_back(rec);
    if (progress) progress(static_cast<int64_t>(i + 1), static_cast<int64_t>(chunks.size()));
  }
  res.mean_loss = nll / res.n_scored;
  res.perplexity = std::exp(res.mean_loss);
  return res;
}

namespace {

/// An intervention whose given positions are all past every chunk would
/// change nothing and report "+0%" as if it were a finding: FailedPrecondition.
absl::Status TouchesNothing(int64_t longest_chunk, const std::string& where, const char* field,
                            const std::vector<int64_t>& positions) {
  if (positions.empty()) return absl::OkStatus();
  for (int64_t p : positions) {
    if (p < longest_chunk) return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      where, "touches nothing: every ", field, " (", absl::StrJoin(positions, ", "),
      ") is past every evaluation chunk (the longest has ", longest_chunk,
      " tokens); give positions below ", longest_chunk, " or a longer corpus"));
}

/// Resolves a substitution: its block (0 = after the last step-up block of the
/// largest spike on `calibration`), channels and value (a calibration pass for
/// mean mode or detected channels). `where` prefixes error messages.
absl::StatusOr<ResolvedSubstitution> ResolveSubstitution(
    const Model& model, const SubstitutionSpec& s, const ExperimentParams& params,
    const std::vector<std::vector<int64_t>>& calibration, int64_t longest_chunk,
    const std::string& where, const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  const int64_t D = c.d_model, n_blocks = 2 * c.n_layers;
  ForwardOptions opts;
  opts.cancel = cancel;
  ResolvedSubstitution r;
  r.block = s.block;
  if (r.block == 0) {
    ASSIGN_OR_RETURN(ScanSummary scan, RunActivationScan(model, calibration, params.thresholds,
                                                         nullptr, nullptr, cancel));
    // After the last step-up block of the largest spike (block attribution rule).
    r.block = LastStepUpBlockOfLargestSpike(scan);
    if (r.block == 0) {
      return absl::FailedPreconditionError(
          where + "no step-up block detected on the calibration set (abs_threshold " +
          absl::StrCat(params.thresholds.abs_threshold) + ", rel_threshold " +
          absl::StrCat(params.thresholds.rel_threshold) +
          "); lower them (--abs-threshold X --rel-threshold Y) or give the block: --block B "
          "(substitution.block; --substitute-block with sink-ablation)");
    }
  }
  if (r.block < 1 || r.block > n_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(where, "block ", r.block,
                                                   " does not exist: the model has blocks 1..",
                                                   n_blocks));
  }
  r.hook = BlockId::FromBlock(r.block).resid_hook();
  r.channels_only = s.channels_only;
  r.positions = s.positions;
  for (int64_t ch : s.channels) {
    if (ch < 0 || ch >= D) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "channel ", ch, " is out of range [0, ", D, ")"));
    }
  }
  for (int64_t p : s.positions) {
    if (p < 0 || p >= params.eval.chunk_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "position ", p, " is outside a chunk of ", params.eval.chunk_length));
    }
  }
  RETURN_IF_ERROR(TouchesNothing(longest_chunk, where, "substitution position", s.positions));
  // Calibration pass: spike states at the block (mean mode, detected channels).
  const bool need_calibration =
      s.mode == SubstitutionSpec::Mode::kMean || (s.channels_only && s.channels.empty());
  std::set<int64_t> channels(s.channels.begin(), s.channels.end());
  if (need_calibration) {
    at::Tensor sum = at::zeros({D}, at::kDouble);
    int64_t count = 0;
    std::set<int64_t> detected_channels;
    for (const auto& seq : calibration) {
      HookRegistry hooks;
      hooks.AddProbe(r.hook, [&](const std::string&, int64_t, const at::Tensor& t) {
        std::set<int64_t> pos;
        at::Tensor h = t[0].to(at::kDouble).cpu();  // [pos, d_model]
        DetectSpikes(h, params.thresholds, &pos, &detected_channels);
        if (!s.positions.empty()) {
          pos.clear();
          for (int64_t p : s.positions) {
            if (p < h.size(0)) pos.insert(p);
          }
        }
        for (int64_t p : pos) {
          sum += h[p];
          ++count;
        }
      });
      opts.compute_logits = false;
      ASSIGN_OR_RETURN(at::Tensor unused,
                       model.Forward(at::tensor(seq, at::TensorOptions().dtype(at::kLong))
                                         .view({1, -1}),
                                     hooks, opts));
      (void)unused;
    }
    opts.compute_logits = true;
    if (count == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          where, "the calibration set has no spike token at block ", r.block, " (",
          r.hook, ") with abs_threshold ", params.thresholds.abs_threshold,
          " and rel_threshold ", params.thresholds.rel_threshold,
          "; lower them (--abs-threshold X --rel-threshold Y), or use --mode zero / constant"));
    }
    if (channels.empty()) channels = detected_channels;
    if (s.mode == SubstitutionSpec::Mode::kMean) r.value = (sum / count).to(at::kFloat);
  }
  r.channels.assign(channels.begin(), channels.end());
  if (r.channels_only && r.channels.empty()) {
    return absl::FailedPreconditionError(
        where + "no spike channel to substitute; give them: --channels C1,C2 (substitution.channels)");
  }
  const int64_t width = r.channels_only ? static_cast<int64_t>(r.channels.size()) : D;
  if (s.mode == SubstitutionSpec::Mode::kConstant) {
    if (static_cast<int64_t>(s.constant.size()) != width) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "constant has width ", s.constant.size(), ", expected ", width,
          r.channels_only ? " (one value per spike channel)" : " (d_model)"));
    }
    r.value = at::tensor(s.constant, at::TensorOptions().dtype(at::kFloat));
  } else if (s.mode == SubstitutionSpec::Mode::kZero) {
    r.value = at::zeros({width}, at::kFloat);
  } else if (r.channels_only) {
    at::Tensor idx = at::tensor(r.channels, at::TensorOptions().dtype(at::kLong));
    r.value = r.value.index_select(0, idx);
  }
  return r;
}

/// Resolves a sink ablation: its heads (none given = the sink heads of the
/// first chunk's first 64 tokens) by layer, checked against the model.
absl::StatusOr<ResolvedAblation> ResolveAblation(const Model& model, const AblationSpec& a,
                                                 const std::vector<int64_t>& tokens,
                                                 const std::vector<EvalChunk>& chunks,
                                                 int64_t longest_chunk, const std::string& where,
                                                 const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  ResolvedAblation r;
  r.method = a.method;
  r.sink_positions = a.sink_positions;
  for (int64_t p : a.sink_positions) {
    if (p < 0) return absl::InvalidArgumentError(where + "negative sink position");
  }
  RETURN_IF_ERROR(TouchesNothing(longest_chunk, where, "ablated sink position", a.sink_positions));
  std::vector<std::pair<int64_t, int64_t>> heads = a.heads;
  if (heads.empty()) {
    SinkParams sp;
    sp.window = std::min<int64_t>(64, chunks[0].length);
    std::vector<int64_t> first(tokens.begin() + chunks[0].start,
                               tokens.begin() + chunks[0].start + chunks[0].length);
    ASSIGN_OR_RETURN(SinkSummary sinks,
                     RunSinkAnalysis(model, {first}, sp, nullptr, nullptr, cancel));
    for (const auto& layer : sinks.layers) {
      for (const auto& h : layer.heads) {
        if (h.is_sink_head) heads.emplace_back(h.layer, h.head);
      }
    }
    if (heads.empty()) {
      return absl::FailedPreconditionError(
          where + "no sink head found to ablate; give the heads: --heads L:H,L:H "
                  "(ablation.heads)");
    }
  }
  for (auto [l, h] : heads) {
    if (l < 0 || l >= c.n_layers) {
      return absl::InvalidArgumentError(absl::StrCat(where, "layer ", l,
                                                     " is out of range [0, ", c.n_layers, ")"));
    }
    if (h < 0 || h >= c.n_heads) {
      return absl::InvalidArgumentError(absl::StrCat(where, "head ", h, " is out of range [0, ",
                                                     c.n_heads, ")"));
    }
    r.heads_by_layer[l].push_back(h);
    r.heads.emplace_back(l, h);
  }
  return r;
}

/// One chunk's record from its baseline and intervened logits [1, T, vocab]:
/// NLLs, perplexities and KL(baseline || intervened) per position, added to
/// `kl` by class (spike = substituted or ablated-sink positions, the position
/// after one, the rest). index / first_token are left to the caller;
/// *int_sum = the intervened NLL sum.
ChunkRecord ScoreChunk(const at::Tensor& base_logits, const at::Tensor& int_logits,
                       const at::Tensor& ids, const std::vector<std::vector<int64_t>>& sub_positions,
                       const std::vector<ResolvedAblation>& abls, KlByClass* kl, double* int_sum) {
  const int64_t T = ids.size(1);
  // Scores and KL(baseline || intervened) per position.
  at::Tensor lp = LogProbs(base_logits), lq = LogProbs(int_logits);
  at::Tensor kl_pos = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0).cpu();  // [pos]
  std::set<int64_t> spike, after;
  for (const auto& v : sub_positions) spike.insert(v.begin(), v.end());
  for (const ResolvedAblation& a : abls) {
    for (int64_t p : a.sink_positions) {
      if (p < T) spike.insert(p);
    }
  }
  for (int64_t p : spike) {
    if (p + 1 < T && !spike.count(p + 1)) after.insert(p + 1);
  }
  ChunkRecord rec;
  rec.n_scored = T - 1;
  rec.nll_sum = NllSum(lp, ids);
  *int_sum = NllSum(lq, ids);
  rec.mean_loss = rec.nll_sum / rec.n_scored;
  rec.perplexity = std::exp(rec.mean_loss);
  rec.intervened_mean_loss = *int_sum / rec.n_scored;
  rec.intervened_perplexity = std::exp(rec.intervened_mean_loss);
  double chunk_kl = 0;
  for (int64_t p = 0; p < T; ++p) {
    const double v = kl_pos[p].item<double>();
    chunk_kl += v;
    if (spike.count(p)) {
      kl->spike += v;
      ++kl->n_spike;
    } else if (after.count(p)) {
      kl->after_spike += v;
      ++kl->n_after_spike;
    } else {
      kl->rest += v;
      ++kl->n_rest;
    }
  }
  rec.kl_mean = chunk_kl / T;
  kl->all += chunk_kl;
  return rec;
}

/// Registers the intervened run's edits on `hooks`: each substitution writes
/// its value at its positions of this chunk (`sub_positions`, read when the
/// hook runs), each ablation through RegisterAblation for a chunk of T tokens.
absl::Status RegisterInterventions(const ModelConfig& c, const std::vector<ResolvedSubstitution>& subs,
                                   const std::vector<std::vector<int64_t>>& sub_positions,
                                   const std::vector<ResolvedAblation>& abls, int64_t T,
                                   HookRegistry* hooks) {
  for (size_t si = 0; si < subs.size(); ++si) {
    hooks->AddIntervention(subs[si].hook, [&, si](const std::string&, int64_t, const at::Tensor& t) {
      const ResolvedSubstitution& s = subs[si];
      if (sub_positions[si].empty()) return t;
      at::Tensor out = t.clone();
      at::Tensor v = s.value.to(t.device(), t.scalar_type());
      for (int64_t p : sub_positions[si]) {
        if (s.channels_only) {
          at::Tensor idx = at::tensor(s.channels, at::TensorOptions().dtype(at::kLong)).to(t.device());
          out[0][p].index_copy_(0, idx, v);
        } else {
          out[0][p].copy_(v);
        }
      }
      return out;
    });
  }
  for (const ResolvedAblation& a : abls) {
    AblationSpec spec;
    spec.method = a.method;
    spec.sink_positions = a.sink_positions;
    for (const auto& [l, heads] : a.heads_by_layer) {
      for (int64_t h : heads) spec.heads.emplace_back(l, h);
    }
    RETURN_IF_ERROR(RegisterAblation(c, spec, T, hooks));
  }
  return absl::OkStatus();
}

/// Checks an experiment's inputs before any pass (InvalidArgument naming the
/// problem): eval params, thresholds, at least one intervention, token ids.
absl::Status ValidateExperimentInputs(const Model& model, const std::vector<int64_t>& tokens,
                                      const ExperimentParams& params) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(ValidateEvalParams(params.eval, c, tokens.size()));
  RETURN_IF_ERROR(ValidateScanParams(params.thresholds));
  if (params.interventions.empty()) {
    return absl::InvalidArgumentError("no intervention given");
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.d_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at offset ", i,
                                                     " is out of range [0, ", c.d_vocab, ")"));
    }
  }
  if (!params.calibration.empty()) RETURN_IF_ERROR(model.ValidateTokens(params.calibration));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ExperimentResult> RunInterventionExperiment(
    const Model& model, const std::vector<int64_t>& tokens, const ExperimentParams& params,
    const ChunkFn& on_chunk, const ProgressFn& progress, const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  const int64_t n_blocks = 2 * c.n_layers;
  RETURN_IF_ERROR(ValidateExperimentInputs(model, tokens, params));
  const std::vector<EvalChunk> chunks = MakeChunks(tokens.size(), params.eval);
  ForwardOptions opts;
  opts.cancel = cancel;
  // Calibration set: the given sequences, else the evaluation chunks themselves.
  std::vector<std::vector<int64_t>> calibration = params.calibration;
  if (calibration.empty()) {
    for (const EvalChunk& ch : chunks) {
      calibration.emplace_back(tokens.begin() + ch.start, tokens.begin() + ch.start + ch.length);
    }
  }
  ExperimentResult res;

  // ---- resolve the interventions ----
  std::vector<ResolvedSubstitution> subs;
  std::vector<ResolvedAblation> abls;
  // Longest chunk of the evaluation: a position at or past it is in no chunk.
  int64_t longest_chunk = 0;
  for (const auto& ch : chunks) longest_chunk = std::max(longest_chunk, ch.length);
  for (size_t i = 0; i < params.interventions.size(); ++i) {
    const InterventionSpec& spec = params.interventions[i];
    const std::string where = absl::StrCat("intervention ", i, ": ");
    if (spec.kind == InterventionSpec::Kind::kSubstitution) {
      ASSIGN_OR_RETURN(ResolvedSubstitution r,
                       ResolveSubstitution(model, spec.substitution, params, calibration,
                                           longest_chunk, where, cancel));
      res.substitution_blocks.push_back(r.block);
      res.substitution_values.emplace_back(r.value.data_ptr<float>(),
                                           r.value.data_ptr<float>() + r.value.numel());
      res.substitution_channels.push_back(r.channels);
      subs.push_back(std::move(r));
    } else {
      ASSIGN_OR_RETURN(ResolvedAblation r, ResolveAblation(model, spec.ablation, tokens, chunks,
                                                           longest_chunk, where, cancel));
      res.ablated_heads.insert(res.ablated_heads.end(), r.heads.begin(), r.heads.end());
      abls.push_back(std::move(r));
    }
  }

  // Blocks where the residual shift is measured: a few after the first substitution.
  std::vector<int64_t> shift_blocks;
  if (!subs.empty()) {
    const int64_t b0 = subs.front().block;
    for (int64_t b : {b0 + 1, b0 + 2, (b0 + n_blocks + 1) / 2, n_blocks}) {
      if (b > b0 && b <= n_blocks &&
          (shift_blocks.empty() || shift_blocks.back() < b)) {
        shift_blocks.push_back(b);
      }
    }
  }
  std::map<int64_t, std::array<double, 4>> shift_acc;  // block -> {spike num, spike den, rest num, rest den}
  std::map<std::pair<int64_t, int64_t>, HeadAblationEffect> effects;
  for (auto [l, h] : res.ablated_heads) effects[{l, h}] = HeadAblationEffect{l, h};

  double base_nll = 0, int_nll = 0;
  KlByClass kl;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    at::Tensor ids = ChunkIds(tokens, chunks[ci]);
    const int64_t T = chunks[ci].length;
    // Per substitution: positions replaced in this chunk.
    std::vector<std::vector<int64_t>> sub_positions(subs.size());
    std::map<int64_t, at::Tensor> base_resid;
    // Measurement probes shared by both runs; `phase` 0 = baseline, 1 = intervened.
    int phase = 0;
    auto add_measurements = [&](HookRegistry& hooks) {
      for (int64_t b : shift_blocks) {
        hooks.AddProbe(BlockId::FromBlock(b).resid_hook(),
                       [&, b](const std::string&, int64_t, const at::Tensor& t) {
                         if (phase == 0) {
                           base_resid[b] = t[0].to(at::kDouble).cpu();
                           return;
                         }
                         at::Tensor diff = t[0].to(at::kDouble).cpu() - base_resid[b];
                         std::set<int64_t> spike;
                         for (const auto& v : sub_positions) spike.insert(v.begin(), v.end());
                         auto& a = shift_acc[b];
                         for (int64_t p = 0; p < T; ++p) {
                           const double num = diff[p].norm().item<double>();
                           const double den = base_resid[b][p].norm().item<double>();
                           const int k = spike.count(p) ? 0 : 2;
                           a[k] += num;
                           a[k + 1] += den;
                         }
                       });
      }
      for (const auto& [lh, _] : effects) {
        const int64_t l = lh.first, h = lh.second;
        hooks.AddProbe(HookName(l, "attn.hook_z"), [&, l, h](const std::string&, int64_t,
                                                             const at::Tensor& t) {
          const double n = t[0].select(1, h).to(at::kDouble).norm(2, {-1}).mean().item<double>();
          (phase == 0 ? effects[{l, h}].z_norm_baseline : effects[{l, h}].z_norm_intervened) +=
              n / chunks.size();
        });
        hooks.AddProbe(HookName(l, "attn.hook_pattern"), [&, l, h, T](const std::string&, int64_t,
                                                                      const at::Tensor& t) {
          at::Tensor A = t[0][h].to(at::kDouble);  // [q, k]
          double d = 0;
          auto acc = A.cpu();
          for (int64_t q = 0; q < T; ++q) {
            for (int64_t k = 0; k <= q; ++k) d += acc[q][k].item<double>() * (q - k);
          }
          (phase == 0 ? effects[{l, h}].distance_baseline : effects[{l, h}].distance_intervened) +=
              d / T / chunks.size();
        });
      }
    };
    // Baseline run: detect the spike positions at each substitution block.
    HookRegistry base_hooks;
    for (size_t si = 0; si < subs.size(); ++si) {
      base_hooks.AddProbe(subs[si].hook, [&, si](const std::string&, int64_t, const at::Tensor& t) {
        if (!subs[si].positions.empty()) {
          for (int64_t p : subs[si].positions) {
            if (p < T) sub_positions[si].push_back(p);
          }
          return;
        }
        std::set<int64_t> pos;
        DetectSpikes(t[0], params.thresholds, &pos, nullptr);
        sub_positions[si].assign(pos.begin(), pos.end());
      });
    }
    add_measurements(base_hooks);
    opts.compute_logits = true;
    ASSIGN_OR_RETURN(at::Tensor base_logits, model.Forward(ids, base_hooks, opts));
    // Intervened run.
    phase = 1;
    HookRegistry hooks;
    RETURN_IF_ERROR(RegisterInterventions(c, subs, sub_positions, abls, T, &hooks));
    add_measurements(hooks);
    ASSIGN_OR_RETURN(at::Tensor int_logits, model.Forward(ids, hooks, opts));
    phase = 0;
    double int_sum = 0;
    ChunkRecord rec = ScoreChunk(base_logits, int_logits, ids, sub_positions, abls, &kl, &int_sum);
    rec.index = static_cast<int64_t>(ci);
    rec.first_token = chunks[ci].start;
    base_nll += rec.nll_sum;
    int_nll += int_sum;
    res.n_scored += rec.n_scored;
    if (on_chunk) on_chunk(rec);
    res.chunks.push_back(rec);
    if (progress) progress(static_cast<int64_t>(ci + 1), static_cast<int64_t>(chunks.size()));
  }
  const int64_t n_pos = kl.n_spike + kl.n_after_spike + kl.n_rest;
  kl.all /= std::max<int64_t>(1, n_pos);
  kl.spike /= std::max<int64_t>(1, kl.n_spike);
  kl.after_spike /= std::max<int64_t>(1, kl.n_after_spike);
  kl.rest /= std::max<int64_t>(1, kl.n_rest);
  res.kl = kl;
  res.baseline_loss = base_nll / res.n_scored;
  res.baseline_perplexity = std::exp(res.baseline_loss);
  res.intervened_loss = int_nll / res.n_scored;
  res.intervened_perplexity = std::exp(res.intervened_loss);
  for (int64_t b : shift_blocks) {
    const auto& a = shift_acc[b];
    res.residual_shifts.push_back({b, a[1] > 0 ? a[0] / a[1] : 0, a[3] > 0 ? a[2] / a[3] : 0});
  }
  for (const auto& [_, e] : effects) res.head_effects.push_back(e);
  return res;
}

}  // namespace sinkscope
