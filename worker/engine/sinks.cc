// Sink analysis (eq. 27-28) and self-attention profile, reduced from query
// chunks of the requested layers' attention (attention.h): O(T) memory per
// layer, never its [T, T] pattern.
#include "worker/engine/sinks.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/attention.h"
#include "worker/engine/batching.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

absl::Status CheckLayers(const std::vector<int64_t>& layers, const ModelConfig& c) {
  for (int64_t l : layers) {
    if (l < 0 || l >= c.n_layers) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " does not exist: the model has ",
                                                     c.n_layers, " layers (0..", c.n_layers - 1,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

/// The requested layers sorted, duplicates dropped; all layers when empty.
std::vector<int64_t> ResolveLayers(const std::vector<int64_t>& requested, const ModelConfig& c) {
  std::set<int64_t> unique(requested.begin(), requested.end());
  if (unique.empty()) {
    for (int64_t l = 0; l < c.n_layers; ++l) unique.insert(l);
  }
  return std::vector<int64_t>(unique.begin(), unique.end());
}

/// Probes layer `l`'s queries and keys as its attention scores use them
/// (attn.hook_rot_q / hook_rot_k with RoPE, attn.hook_q / hook_k otherwise) and
/// calls `fn(q [batch, pos, head, d_head], k [batch, pos, kv_head, d_head])`
/// once both are in. The layer keeps the fused attention path: no pattern hook.
void AddQueryKeyProbes(HookRegistry* hooks, const ModelConfig& c, int64_t l,
                       std::function<void(const at::Tensor&, const at::Tensor&)> fn) {
  const bool rope = c.positional == Positional::kRope;
  auto q = std::make_shared<at::Tensor>();
  hooks->AddProbe(HookName(l, rope ? "attn.hook_rot_q" : "attn.hook_q"),
                  [q](const std::string&, int64_t, const at::Tensor& t) { *q = t; });
  hooks->AddProbe(HookName(l, rope ? "attn.hook_rot_k" : "attn.hook_k"),
                  [q, fn = std::move(fn)](const std::string&, int64_t, const at::Tensor& t) {
                    fn(*q, t);
                    *q = at::Tensor();
                  });
}

}  // namespace

/// Per-head accumulators of the sink analysis.
struct SinkAccumulator::HeadAcc {
  double max_importance = 0, sink = 0, gu = 0, gu_sink = 0, dist = 0, dist_wo = 0, gap = 0;
  int64_t gap_n = 0, dist_wo_n = 0;
  std::map<int64_t, int64_t> argmax_votes;
};

absl::Status ValidateSinkParams(const SinkParams& p, const ModelConfig& c) {
  if (p.window < 2) {
    return absl::InvalidArgumentError(absl::StrCat("window T must be >= 2, got ", p.window));
  }
  if (p.window > c.n_ctx) {
    return absl::InvalidArgumentError(absl::StrCat("window T = ", p.window,
                                                   " exceeds the model's context of ", c.n_ctx));
  }
  if (!(p.epsilon > 0 && p.epsilon < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("epsilon must be in (0, 1), got ", p.epsilon));
  }
  return CheckLayers(p.layers, c);
}

SinkAccumulator::SinkAccumulator(const Model& model, const SinkParams& params, int64_t n_windows,
                                 LayerSinkFn on_layer, ProgressFn progress, int64_t progress_total)
    : model_(model),
      params_(params),
      layers_(ResolveLayers(params.layers, model.config())),
      n_windows_(n_windows),
      on_layer_(std::move(on_layer)),
      progress_(std::move(progress)),
      progress_total_(progress_total) {
  for (int64_t l : layers_) acc_[l].resize(model.config().n_heads);
}

SinkAccumulator::~SinkAccumulator() = default;

void SinkAccumulator::AddProbes(HookRegistry* hooks, int64_t T, bool last) {
  for (int64_t l : layers_) {
    AddQueryKeyProbes(hooks, model_.config(), l, [this, l, T, last](const at::Tensor& q_all,
                                                                   const at::Tensor& k_all) {
      // A longer pass: its first T positions are a T-token pass (causal).
      const at::Tensor q = q_all.size(1) > T ? q_all.narrow(1, 0, T) : q_all;
      const at::Tensor k = k_all.size(1) > T ? k_all.narrow(1, 0, T) : k_all;
      Accumulate(l, T, q, k);
      if (last) FinishLayer(l);
      ++progress_done_;
      if (progress_) progress_(progress_done_, progress_total_);
    });
  }
}

void SinkAccumulator::Accumulate(int64_t l, int64_t T, const at::Tensor& q, const at::Tensor& k) {
  const int64_t H = model_.config().n_heads;
  // The pattern's row and column statistics from query chunks (O(T)
  // memory; attention.h), then float64 on the [b, h, T] results; the
  // distances use closed forms instead of [q, k] products.
  const AttentionSpec spec = model_.Attention(l);
  const PatternStats st = ComputePatternStats(q, k, spec, model_.dtype(), params_.query_chunk);
  const int64_t B = q.size(0);
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(q.device());
  at::Tensor pos = at::arange(T, f64);                                  // [T]
  const at::Tensor& col = st.col_sum;                                   // [b, h, k]
  const at::Tensor& row = st.row_sum;                                   // [b, h, q]
  // eq. 27: alpha_k = (1/T) sum_t A[t, k]
  at::Tensor alpha = col / static_cast<double>(T);
  const int64_t half = std::max<int64_t>(1, T / 2);
  auto [max_alpha, kstar] = alpha.narrow(2, 0, half).max(-1);  // [batch, head]
  at::Tensor gu = alpha.select(2, 0);  // Gu et al.: sum_t A[t,0] / (T - 0)
  // sum_t sum_k A[t,k] (t - k) = sum_t t * row_t - sum_k k * col_k
  at::Tensor mean_dist = ((row * pos).sum(-1) - (col * pos).sum(-1)) / static_cast<double>(T);
  // Without the sink key k*: per row t, mass m_t = row_t - A[t,k*] and
  // sum_k A[t,k](t-k) over k != k*  =  t row_t - (A k)_t - A[t,k*](t - k*).
  // A[t,k*] = exp(score[t,k*] - logsumexp_t), the row's softmax at k*.
  at::Tensor s_key = ScoresAtKey(q, k, kstar, spec);                    // [b, h, q], -inf unseen
  at::Tensor a_sink = PatternAtKey(s_key, st.logsumexp, spec, model_.dtype()).to(at::kDouble);
  at::Tensor kst = kstar.to(at::kDouble).unsqueeze(-1);                  // [b, h, 1]
  // Where k* is the row's largest entry, the others' mass and moment are
  // the ones summed without it (no cancellation when A[t,k*] ~ 1);
  // elsewhere A[t,k*] <= the largest entry, so row - A[t,k*] >= row / 2.
  at::Tensor sink_is_top = st.row_argmax == kstar.unsqueeze(-1);
  at::Tensor mass = at::where(sink_is_top, st.mass_without_argmax, row - a_sink);
  at::Tensor valid = mass > 1e-12;
  at::Tensor num = at::where(sink_is_top, pos * st.mass_without_argmax - st.moment_without_argmax,
                             pos * row - st.key_moment - a_sink * (pos - kst));
  at::Tensor dist_wo = at::where(valid, num / mass.clamp_min(1e-12), at::zeros_like(num)).sum(-1);
  at::Tensor n_valid = valid.sum(-1, false, at::kDouble);
  // Logit gap between k* and the other visible keys, for queries t > k*
  // (pre-softmax scores; a query sees min(t + 1, window) keys).
  at::Tensor sink_vis = s_key.isfinite();                                // visible[q, k*]
  at::Tensor s_sink = at::where(sink_vis, s_key, at::zeros_like(s_key)).to(at::kDouble);
  at::Tensor other_sum = st.score_sum - s_sink;
  at::Tensor vis_n = pos + 1;
  if (spec.window > 0) vis_n = vis_n.clamp_max(static_cast<double>(spec.window));
  at::Tensor other_n = vis_n - sink_vis.to(at::kDouble);
  at::Tensor ok = (pos > kst).logical_and(other_n > 0);
  at::Tensor gap = at::where(ok, s_sink - other_sum / other_n.clamp_min(1), at::zeros_like(s_sink));
  at::Tensor gap_sum = gap.sum(-1).cpu();
  at::Tensor gap_n = ok.sum(-1, false, at::kDouble).cpu();
  auto ma = max_alpha.cpu(), ks = kstar.cpu(), g = gu.cpu(), md = mean_dist.cpu(),
       dw = dist_wo.cpu(), nv = n_valid.cpu();
  for (int64_t b = 0; b < B; ++b) {
    int64_t sinks = 0, gu_sinks = 0;
    for (int64_t h = 0; h < H; ++h) {
      HeadAcc& a = acc_[l][h];
      const double m = ma[b][h].item<double>(), gv = g[b][h].item<double>();
      a.max_importance += m;
      a.sink += m > params_.epsilon;
      a.gu += gv;
      a.gu_sink += gv > params_.epsilon;
      a.dist += md[b][h].item<double>();
      const double nvalid = nv[b][h].item<double>();
      if (nvalid > 0) {
        a.dist_wo += dw[b][h].item<double>() / nvalid;
        ++a.dist_wo_n;
      }
      a.argmax_votes[ks[b][h].item<int64_t>()]++;
      const double n = gap_n[b][h].item<double>();
      if (n > 0) {
        a.gap += gap_sum[b][h].item<double>() / n;
        ++a.gap_n;
      }
      sinks += m > params_.epsilon;
      gu_sinks += gv > params_.epsilon;
    }
    layer_ratio_sum_[l] += static_cast<double>(sinks) / H;
    layer_gu_ratio_sum_[l] += static_cast<double>(gu_sinks) / H;
  }
}

void SinkAccumulator::FinishLayer(int64_t l) {
  const int64_t H = model_.config().n_heads;
  const double n_win = static_cast<double>(n_windows_);
  LayerSinkRecord rec;
  rec.layer = l;
  for (int64_t h = 0; h < H; ++h) {
    const HeadAcc& a = acc_[l][h];
    HeadSinkStats s;
    s.layer = l;
    s.head = h;
    s.max_importance = a.max_importance / n_win;
    s.sink_fraction = a.sink / n_win;
    s.is_sink_head = s.sink_fraction >= 0.5;
    s.gu_first_key_score = a.gu / n_win;
    s.gu_sink_fraction = a.gu_sink / n_win;
    s.mean_attention_distance = a.dist / n_win;
    s.mean_attention_distance_without_sink = a.dist_wo_n ? a.dist_wo / a.dist_wo_n : 0;
    s.mean_logit_gap = a.gap_n ? a.gap / a.gap_n : 0;
    int64_t best = -1;
    for (const auto& [key, votes] : a.argmax_votes) {
      if (best < 0 || votes > a.argmax_votes.at(best)) best = key;
    }
    s.argmax_key = std::max<int64_t>(best, 0);
    rec.heads.push_back(s);
  }
  rec.sink_ratio = layer_ratio_sum_[l] / n_win;
  if (on_layer_) on_layer_(rec);
  summary_.layers.push_back(std::move(rec));
}

SinkSummary SinkAccumulator::Finish() {
  SinkSummary summary = std::move(summary_);
  summary.n_sequences = n_windows_;
  // Model-level: eq. 28 averaged over sequences = mean over layers of layer ratios.
  double ratio = 0, gu_ratio = 0;
  std::array<double, 6> grp{};  // sink/other: dist, dist_wo, gap
  std::array<int64_t, 2> grp_n{};
  for (const LayerSinkRecord& rec : summary.layers) {
    ratio += rec.sink_ratio;
    gu_ratio += layer_gu_ratio_sum_[rec.layer] / n_windows_;
    for (const HeadSinkStats& s : rec.heads) {
      const int g = s.is_sink_head ? 0 : 1;
      grp[3 * g + 0] += s.mean_attention_distance;
      grp[3 * g + 1] += s.mean_attention_distance_without_sink;
      grp[3 * g + 2] += s.mean_logit_gap;
      grp_n[g]++;
      summary.n_sink_heads += s.is_sink_head;
      summary.n_heads++;
    }
  }
  const double nl = std::max<size_t>(1, summary.layers.size());
  summary.sink_ratio = ratio / nl;
  summary.gu_sink_ratio = gu_ratio / nl;
  auto mean = [&](int g, int k) { return grp_n[g] ? grp[3 * g + k] / grp_n[g] : 0.0; };
  summary.sink_heads_distance = mean(0, 0);
  summary.sink_heads_distance_without_sink = mean(0, 1);
  summary.sink_heads_logit_gap = mean(0, 2);
  summary.other_heads_distance = mean(1, 0);
  summary.other_heads_distance_without_sink = mean(1, 1);
  summary.other_heads_logit_gap = mean(1, 2);
  return summary;
}

absl::StatusOr<SinkSummary> RunSinkAnalysis(const Model& model,
                                            const std::vector<std::vector<int64_t>>& sequences,
                                            const SinkParams& params, const LayerSinkFn& on_layer,
                                            const ProgressFn& progress,
                                            const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(ValidateSinkParams(params, c));
  // Sequences may exceed the context: each is cut (or windowed) to T <= n_ctx
  // tokens first, and the windows are what must fit.
  if (sequences.empty()) return absl::InvalidArgumentError("no sequences given");
  std::vector<std::vector<int64_t>> windows;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto& seq = sequences[s];
    if (seq.size() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, " has ", seq.size(), " token(s); the sink analysis needs >= 2"));
    }
    const size_t T = static_cast<size_t>(params.window);
    if (!params.windowed || seq.size() <= T) {
      windows.emplace_back(seq.begin(), seq.begin() + std::min(seq.size(), T));
    } else {
      for (size_t i = 0; i + 2 <= seq.size(); i += T) {
        windows.emplace_back(seq.begin() + i, seq.begin() + std::min(seq.size(), i + T));
      }
    }
  }
  RETURN_IF_ERROR(model.ValidateTokens(windows));
  const std::vector<std::vector<int64_t>> batches = BatchByLength(windows);
  const int64_t n_layers = static_cast<int64_t>(ResolveLayers(params.layers, c).size());
  SinkAccumulator acc(model, params, static_cast<int64_t>(windows.size()), on_layer, progress,
                      n_layers * static_cast<int64_t>(batches.size()));
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const std::vector<int64_t>& rows = batches[bi];
    HookRegistry hooks;
    acc.AddProbes(&hooks, static_cast<int64_t>(windows[rows[0]].size()), bi + 1 == batches.size());
    RETURN_IF_ERROR(model.RunHooks(BatchTokens(windows, rows), hooks, cancel));
  }
  SinkSummary summary = acc.Finish();
  summary.window = 0;  // the longest window actually analysed (<= params.window)
  for (const auto& w : windows) summary.window = std::max<int64_t>(summary.window, w.size());
  return summary;
}

const char* TokenGroupName(TokenGroup g) {
  switch (g) {
    case TokenGroup::kFirst: return "first";
    case TokenGroup::kDelimiter: return "delimiter";
    case TokenGroup::kOther: return "other";
  }
  return "?";
}

absl::StatusOr<SelfAttentionProfile> RunSelfAttentionProfile(
    const Model& model, const std::vector<std::vector<int64_t>>& sequences,
    const SelfAttentionParams& params,
    const std::function<void(const SelfAttentionLayer&)>& on_layer, const ProgressFn& progress,
    const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(model.ValidateTokens(sequences));
  RETURN_IF_ERROR(CheckLayers(params.layers, c));
  for (int64_t id : params.delimiter_ids) {
    if (id < 0 || id >= c.d_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("delimiter token id ", id, " is out of range [0, ", c.d_vocab, ")"));
    }
  }
  SelfAttentionProfile out;
  out.profiled_layers = params.layers.empty() ? std::vector<int64_t>{} : ResolveLayers(params.layers, c);
  if (out.profiled_layers.empty()) {
    ASSIGN_OR_RETURN(ScanSummary scan,
                     RunActivationScan(model, sequences, ScanParams{}, nullptr, nullptr, cancel));
    const int64_t last = scan.step_up_blocks.empty()
                             ? c.n_layers - 1
                             : BlockId::FromBlock(scan.step_up_blocks.front()).layer;
    for (int64_t l = 0; l <= last; ++l) out.profiled_layers.push_back(l);
  }
  const std::set<int64_t> delims(params.delimiter_ids.begin(), params.delimiter_ids.end());
  const int64_t H = c.n_heads;
  std::map<int64_t, SelfAttentionLayer> acc;
  for (int64_t l : out.profiled_layers) {
    SelfAttentionLayer& a = acc[l];
    a.layer = l;
    a.per_token.resize(sequences.size());
    a.per_head_group_mean.assign(H, {0, 0, 0});
  }
  auto group_of = [&](int64_t s, int64_t p) {
    if (p == 0) return TokenGroup::kFirst;
    return delims.count(sequences[s][p]) ? TokenGroup::kDelimiter : TokenGroup::kOther;
  };
  const std::vector<std::vector<int64_t>> batches = BatchByLength(sequences);
  const int64_t total = static_cast<int64_t>(out.profiled_layers.size() * batches.size());
  int64_t done = 0;
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const std::vector<int64_t>& row_seq = batches[bi];
    const bool last = bi + 1 == batches.size();
    HookRegistry hooks;
    for (int64_t l : out.profiled_layers) {
      AddQueryKeyProbes(&hooks, c, l, [&, l](const at::Tensor& q, const at::Tensor& k) {
        // A[t, t] from query chunks (O(T) memory; attention.h).
        at::Tensor diag = ComputePatternStats(q, k, model.Attention(l), model.dtype(),
                                              params.query_chunk)
                              .diag.cpu();  // [batch, head, pos]
        SelfAttentionLayer& a = acc[l];
        for (int64_t r = 0; r < diag.size(0); ++r) {
          const int64_t s = row_seq[r];
          auto d = diag[r];
          for (int64_t p = 0; p < diag.size(2); ++p) {
            const int g = static_cast<int>(group_of(s, p));
            double head_mean = 0;
            for (int64_t h = 0; h < H; ++h) {
              const double v = d[h][p].item<double>();
              head_mean += v;
              a.per_head_group_mean[h][g] += v;
            }
            head_mean /= H;
            a.per_token[s].push_back(static_cast<float>(head_mean));
            a.group_mean[g] += head_mean;
            a.group_count[g]++;
          }
        }
        if (last) {
          for (int g = 0; g < 3; ++g) {
            const double n = std::max<int64_t>(1, a.group_count[g]);
            a.group_mean[g] /= n;
            for (int64_t h = 0; h < H; ++h) a.per_head_group_mean[h][g] /= n;
          }
          if (on_layer) on_layer(a);
        }
        ++done;
        if (progress) progress(done, total);
      });
    }
    RETURN_IF_ERROR(model.RunHooks(BatchTokens(sequences, row_seq), hooks, cancel));
  }
  for (int64_t l : out.profiled_layers) out.layers.push_back(std::move(acc[l]));
  return out;
}

}  // namespace sinkscope
