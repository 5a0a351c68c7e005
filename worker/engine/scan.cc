// Activation scan: probes on the post-residual stream and block outputs that
// reduce each [batch, pos, d_model] tensor to top-k, median and massive
// entries as soon as it is produced (nothing is cached across blocks).
#include "worker/engine/scan.h"

#include <ATen/TensorIndexing.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "worker/engine/batching.h"
#include "worker/engine/reductions.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

/// Keeps the k entries of largest |value|.
void MergeTopK(std::vector<ActivationEntry>& acc, const std::vector<ActivationEntry>& more,
               int64_t k) {
  acc.insert(acc.end(), more.begin(), more.end());
  std::stable_sort(acc.begin(), acc.end(), [](const ActivationEntry& a, const ActivationEntry& b) {
    return std::fabs(a.value) > std::fabs(b.value);
  });
  if (static_cast<int64_t>(acc.size()) > k) acc.resize(k);
}

/// |x| of a float as its IEEE bits: for non-negative floats the bit patterns
/// order like the values; NaN bit patterns are above 0x7f800000 (inf).
inline uint32_t AbsBits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x7fffffffu;
}

}  // namespace

// CPU float32 fast path of TopK (declared in worker/engine/reductions.h).
// Chunks of kChunk values: a branch-free max of the |x| bit patterns first
// (vectorised by the compiler; it also finds NaN), and the per-element
// insertion only in a chunk whose max beats the current k-th |value|. Once
// the k best are large, almost every chunk is skipped; the result is the
// per-element loop's (a skipped element could not have entered).
bool TopKAbsCpu(const at::Tensor& flat, int64_t k, std::vector<std::pair<float, int64_t>>* out) {
  const float* p = flat.data_ptr<float>();
  const int64_t n = flat.numel();
  std::vector<std::pair<float, int64_t>>& best = *out;  // signed value, index; by |value| desc
  best.clear();
  float floor_abs = -1.f;  // |value| of best.back() once full
  constexpr int64_t kChunk = 64;
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t end = std::min(n, begin + kChunk);
    int32_t max_bits = 0;  // |x| bits are < 2^31: signed compare is exact
    for (int64_t i = begin; i < end; ++i) {
      max_bits = std::max(max_bits, static_cast<int32_t>(AbsBits(p[i])));
    }
    if (static_cast<uint32_t>(max_bits) > 0x7f800000u) return false;  // NaN present
    float chunk_max;
    std::memcpy(&chunk_max, &max_bits, sizeof chunk_max);
    if (static_cast<int64_t>(best.size()) == k && !(chunk_max > floor_abs)) continue;
    for (int64_t i = begin; i < end; ++i) {
      const float a = std::fabs(p[i]);
      if (static_cast<int64_t>(best.size()) == k && !(a > floor_abs)) continue;
      auto pos = std::upper_bound(best.begin(), best.end(), a,
                                  [](float v, const std::pair<float, int64_t>& e) {
                                    return v > std::fabs(e.first);
                                  });
      best.insert(pos, {p[i], i});
      if (static_cast<int64_t>(best.size()) > k) best.pop_back();
      if (static_cast<int64_t>(best.size()) == k) floor_abs = std::fabs(best.back().first);
    }
  }
  return true;
}

// Lower median of `abs_row` (declared in worker/engine/reductions.h). CPU
// float32: exact radix select on the bit patterns (histogram of the top 16
// bits, then nth_element inside one bucket), about 6x faster than
// at::median's copy + nth_element over the whole tensor. Else at::median.
namespace {

/// The radix select behind MedianAbs and MedianMaxAbsCpu: lower median and
/// max of |p[0..n)| (n > 0); false when a NaN is present.
bool RadixMedianMaxAbs(const float* p, int64_t n, float* median, float* max_abs) {
  const int64_t rank = (n - 1) / 2;  // 0-based rank of the lower median
  std::vector<uint32_t> hist(1u << 16, 0);
  uint32_t max_bits = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = AbsBits(p[i]);
    ++hist[b >> 16];
    max_bits = std::max(max_bits, b);
  }
  if (max_bits > 0x7f800000u) return false;  // NaN present
  uint32_t bucket = 0;
  int64_t below = 0;
  while (below + hist[bucket] <= rank) below += hist[bucket++];
  std::vector<float> cand;
  cand.reserve(hist[bucket]);
  for (int64_t i = 0; i < n; ++i) {
    if ((AbsBits(p[i]) >> 16) == bucket) cand.push_back(std::fabs(p[i]));
  }
  auto nth = cand.begin() + (rank - below);
  std::nth_element(cand.begin(), nth, cand.end());
  *median = *nth;
  std::memcpy(max_abs, &max_bits, sizeof max_bits);
  return true;
}

}  // namespace

float MedianAbs(const at::Tensor& abs_row) {
  if (!abs_row.device().is_cpu() || abs_row.scalar_type() != at::kFloat || abs_row.numel() == 0) {
    return abs_row.reshape({-1}).median().item<float>();
  }
  const at::Tensor c = abs_row.contiguous();
  float median = 0, max_abs = 0;
  if (!RadixMedianMaxAbs(c.data_ptr<float>(), c.numel(), &median, &max_abs)) {
    return c.reshape({-1}).median().item<float>();  // NaN present
  }
  return median;
}

bool MedianMaxAbsCpu(const at::Tensor& row, float* median, float* max_abs) {
  if (!row.device().is_cpu() || row.scalar_type() != at::kFloat || !row.is_contiguous() ||
      row.numel() == 0) {
    return false;
  }
  return RadixMedianMaxAbs(row.data_ptr<float>(), row.numel(), median, max_abs);
}

namespace {

/// Top-k entries by |value| of h: [batch, pos, d_model] (float32, CPU or not).
/// `seq_index[b]` maps batch row b to the request's sequence number.
std::vector<ActivationEntry> TopK(const at::Tensor& h32, int64_t k,
                                  const std::vector<int64_t>& seq_index) {
  const int64_t T = h32.size(1), D = h32.size(2);
  at::Tensor flat = h32.reshape({-1});
  k = std::min<int64_t>(k, flat.numel());
  if (flat.device().is_cpu() && flat.scalar_type() == at::kFloat) {
    flat = flat.contiguous();
    std::vector<std::pair<float, int64_t>> best;
    if (TopKAbsCpu(flat, k, &best)) {
      std::vector<ActivationEntry> out;
      for (const auto& [v, flat_i] : best) {
        out.push_back({v, seq_index[flat_i / (T * D)], (flat_i / D) % T, flat_i % D});
      }
      return out;
    }
  }
  auto [vals, idx] = at::topk(flat.abs(), k);
  at::Tensor signed_vals = flat.index_select(0, idx).cpu();
  idx = idx.cpu();
  std::vector<ActivationEntry> out;
  auto v = signed_vals.accessor<float, 1>();
  auto ix = idx.accessor<int64_t, 1>();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t flat_i = ix[i];
    out.push_back({v[i], seq_index[flat_i / (T * D)], (flat_i / D) % T, flat_i % D});
  }
  return out;
}


/// Spike entries tracked for the step-up/down analysis (counts stay exact).
constexpr size_t kMaxTrackedEntries = 16384;

/// Spike entry key (sequence, position, channel).
using EntryKey = std::tuple<int64_t, int64_t, int64_t>;

}  // namespace

struct ActivationScanner::BlockAccumulator {
  std::vector<ActivationEntry> resid_top, output_top;
  std::vector<float> median_by_seq;
  float max_abs = 0;
  int64_t n_massive = 0;
};

/// What block b did at a tracked entry: the post-residual value there, the
/// block output o_b = h_b - h_{b-1}, and whether the entry is massive after b.
struct ActivationScanner::Observation {
  int64_t block;
  float value, output;
  bool massive;
};

std::string BlockId::resid_hook() const {
  return HookName(layer, is_mlp ? "hook_resid_post" : "hook_resid_mid");
}
std::string BlockId::output_hook() const {
  return HookName(layer, is_mlp ? "hook_mlp_out" : "hook_attn_out");
}
BlockId BlockId::FromBlock(int64_t block) {
  BlockId id;
  id.block = block;
  id.layer = (block - 1) / 2;
  id.is_mlp = block % 2 == 0;
  return id;
}

const char* StepRuleName(ScanParams::StepRule rule) {
  return rule == ScanParams::StepRule::kShare ? "share" : "single-block";
}

absl::StatusOr<ScanParams::StepRule> ParseStepRule(const std::string& name) {
  if (name == "share") return ScanParams::StepRule::kShare;
  if (name == "single-block") return ScanParams::StepRule::kSingleBlock;
  return absl::InvalidArgumentError(
      absl::StrCat("step_rule must be \"share\" or \"single-block\", got \"", name, "\""));
}

int64_t LastStepUpBlockOfLargestSpike(const ScanSummary& summary) {
  if (!summary.attributions.empty() && !summary.attributions.front().step_up_blocks.empty()) {
    return summary.attributions.front().step_up_blocks.back();
  }
  return summary.step_up_blocks.empty() ? 0 : summary.step_up_blocks.back();
}

absl::Status ValidateScanParams(const ScanParams& p) {
  if (p.top_k < 1 || p.top_k > 64) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be in [1, 64], got ", p.top_k));
  }
  if (!(p.abs_threshold >= 0) || !std::isfinite(p.abs_threshold)) {
    return absl::InvalidArgumentError(
        absl::StrCat("abs_threshold must be a finite number >= 0, got ", p.abs_threshold));
  }
  if (!(p.rel_threshold >= 0) || !std::isfinite(p.rel_threshold)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rel_threshold must be a finite number >= 0, got ", p.rel_threshold));
  }
  if (!(p.step_fraction > 0 && p.step_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("step_fraction must be in (0, 1], got ", p.step_fraction));
  }
  if (!(p.step_share > 0 && p.step_share <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("step_share must be in (0, 1], got ", p.step_share));
  }
  if (p.max_listed_entries < 0) {
    return absl::InvalidArgumentError("max_listed_entries must be >= 0");
  }
  return absl::OkStatus();
}

ActivationScanner::ActivationScanner(const Model& model, int64_t n_sequences,
                                     const ScanParams& params, BlockFn on_block,
                                     ProgressFn progress, int64_t progress_total)
    : model_(model),
      params_(params),
      n_seq_(n_sequences),
      n_blocks_(2 * model.config().n_layers),
      on_block_(std::move(on_block)),
      progress_(std::move(progress)),
      progress_total_(progress_total),
      acc_(n_blocks_ + 1),
      seq_max_(n_sequences, 0.f) {
  for (auto& a : acc_) a.median_by_seq.assign(n_sequences, 0.f);
}

ActivationScanner::~ActivationScanner() = default;

void ActivationScanner::AddProbes(HookRegistry* hooks, const std::vector<int64_t>& batch,
                                  bool last_batch) {
  hooks->AddProbe("hook_embed", [this](const std::string&, int64_t, const at::Tensor& t) {
    prev_ = t.to(at::kFloat);
    prev_hits_.clear();
  });
  for (int64_t b = 1; b <= n_blocks_; ++b) {
    const BlockId id = BlockId::FromBlock(b);
    hooks->AddProbe(id.output_hook(), [this, b, batch](const std::string&, int64_t, const at::Tensor& t) {
      MergeTopK(acc_[b].output_top, TopK(t.to(at::kFloat), params_.top_k, batch), params_.top_k);
    });
    hooks->AddProbe(id.resid_hook(), [this, b, id, batch, last_batch](const std::string&, int64_t,
                                                                 const at::Tensor& t) {
      BlockAccumulator& a = acc_[b];
      at::Tensor h32 = t.to(at::kFloat).contiguous();
      MergeTopK(a.resid_top, TopK(h32, params_.top_k, batch), params_.top_k);
      std::set<std::array<int64_t, 3>> cur_hits;
      for (int64_t r = 0; r < static_cast<int64_t>(batch.size()); ++r) {
        const at::Tensor row = h32.select(0, r);  // signed, [pos, d_model]
        // torch.median semantics: the lower of the two middle values. The
        // CPU float32 path reads the signed row once for median and max
        // (no |row| copy); others (and NaN) take the tensor path.
        float median = 0, mx = 0;
        at::Tensor abs_row;
        if (!MedianMaxAbsCpu(row, &median, &mx)) {
          abs_row = row.abs();
          median = MedianAbs(abs_row);
          mx = abs_row.max().item<float>();
        }
        const int64_t s = batch[r];
        a.median_by_seq[s] = median;
        a.max_abs = std::max(a.max_abs, mx);
        seq_max_[s] = std::max(seq_max_[s], mx);
        const double thr =
            std::max(params_.abs_threshold, params_.rel_threshold * static_cast<double>(median));
        // No entry can pass the threshold when the row's max does not
        // (a NaN max still looks, like the tensor comparison would).
        if (static_cast<double>(mx) <= thr) continue;
        if (!abs_row.defined()) abs_row = row.abs();
        at::Tensor hits = (abs_row > thr).nonzero().cpu();  // [n, 2] (pos, channel)
        a.n_massive += hits.size(0);
        auto hx = hits.accessor<int64_t, 2>();
        for (int64_t i = 0; i < hits.size(0); ++i) {
          const EntryKey key{s, hx[i][0], hx[i][1]};
          if (massive_.size() < kMaxTrackedEntries) massive_.insert(key);
          if (massive_.count(key)) cur_hits.insert({r, hx[i][0], hx[i][1]});
        }
      }
      std::set<std::array<int64_t, 3>> seen = cur_hits;
      seen.insert(prev_hits_.begin(), prev_hits_.end());
      if (!seen.empty()) {
        std::vector<int64_t> rr, pp, cc;
        for (const auto& e : seen) {
          rr.push_back(e[0]);
          pp.push_back(e[1]);
          cc.push_back(e[2]);
        }
        const auto lopt = at::TensorOptions().dtype(at::kLong).device(h32.device());
        const std::vector<at::indexing::TensorIndex> idx = {
            at::tensor(rr, lopt), at::tensor(pp, lopt), at::tensor(cc, lopt)};
        at::Tensor now = h32.index(idx).cpu(), before = prev_.index(idx).cpu();
        auto nv = now.accessor<float, 1>();
        auto bv = before.accessor<float, 1>();
        size_t i = 0;
        for (const auto& e : seen) {
          observations_[EntryKey{batch[e[0]], e[1], e[2]}].push_back(
              {b, nv[i], nv[i] - bv[i], cur_hits.count(e) > 0});
          ++i;
        }
      }
      prev_ = h32;
      prev_hits_ = std::move(cur_hits);
      if (last_batch && on_block_) {
        BlockRecord rec;
        rec.id = id;
        rec.resid_top = a.resid_top;
        rec.output_top = a.output_top;
        rec.resid_median_abs = a.median_by_seq;
        rec.resid_max_abs = a.max_abs;
        rec.n_massive = a.n_massive;
        on_block_(rec);
      }
      ++units_done_;
      if (progress_) progress_(units_done_, progress_total_);
    });
  }
}

absl::StatusOr<ScanSummary> ActivationScanner::Finish(
    const std::vector<std::vector<int64_t>>& sequences,
    const std::vector<std::vector<int64_t>>& batches, const std::atomic<bool>* cancel) {
  const Model& model = model_;
  const int64_t n_blocks = n_blocks_;
  ScanSummary summary;
  for (const auto& s : sequences) summary.n_tokens += static_cast<int64_t>(s.size());
  for (int64_t b = 1; b <= n_blocks; ++b) {
    BlockRecord rec;
    rec.id = BlockId::FromBlock(b);
    rec.resid_top = acc_[b].resid_top;
    rec.output_top = acc_[b].output_top;
    rec.resid_median_abs = acc_[b].median_by_seq;
    rec.resid_max_abs = acc_[b].max_abs;
    rec.n_massive = acc_[b].n_massive;
    if (rec.resid_max_abs > summary.peak_abs) {
      summary.peak_abs = rec.resid_max_abs;
      summary.peak_block = b;
    }
    summary.blocks.push_back(std::move(rec));
  }
  double seq_max_sum = 0;
  for (float m : seq_max_) seq_max_sum += m;
  summary.spike_mean_over_sequences = static_cast<float>(seq_max_sum / std::max<int64_t>(1, n_seq_));
  summary.n_massive_entries = static_cast<int64_t>(massive_.size());
  if (massive_.empty()) return summary;

  {
    std::set<std::pair<int64_t, int64_t>> tokens;
    std::set<int64_t> channels;
    for (const auto& [s, p, ch] : massive_) {
      tokens.emplace(s, p);
      channels.insert(ch);
    }
    summary.spike_tokens.assign(tokens.begin(), tokens.end());
    summary.spike_channels.assign(channels.begin(), channels.end());
  }

  // Peak of every tracked entry: largest |value| over the blocks where it is massive.
  struct Peak {
    float value;
    int64_t block;
  };
  std::map<EntryKey, Peak> peaks;
  for (const auto& [key, obs] : observations_) {
    const Observation* peak_obs = nullptr;
    for (const Observation& o : obs) {
      if (o.massive && (!peak_obs || std::fabs(o.value) > std::fabs(peak_obs->value))) peak_obs = &o;
    }
    if (peak_obs) peaks[key] = {peak_obs->value, peak_obs->block};
  }

  std::set<int64_t> up, down;
  std::map<EntryKey, SpikeAttribution> attribution;
  if (params_.step_rule == ScanParams::StepRule::kSingleBlock) {
    for (const auto& [key, obs] : observations_) {
      auto pk = peaks.find(key);
      if (pk == peaks.end()) continue;
      const float peak = pk->second.value;
      for (const Observation& o : obs) {
        if (std::fabs(o.output) < params_.step_fraction * std::fabs(peak)) continue;
        ((o.output > 0) == (peak > 0) ? up : down).insert(o.block);
      }
    }
  } else {
    // Second pass: hook_embed and every block output at the tracked entries,
    // only for the batches that hold some.
    for (const auto& [key, pk] : peaks) {
      SpikeAttribution& a = attribution[key];
      a.entry = {pk.value, std::get<0>(key), std::get<1>(key), std::get<2>(key)};
      a.peak_block = pk.block;
      a.contributions.assign(n_blocks, 0.f);
    }
    for (const std::vector<int64_t>& batch : batches) {
      std::vector<int64_t> rr, pp, cc;
      std::vector<SpikeAttribution*> targets;
      for (int64_t r = 0; r < static_cast<int64_t>(batch.size()); ++r) {
        auto lo = attribution.lower_bound(EntryKey{batch[r], INT64_MIN, INT64_MIN});
        for (auto it = lo; it != attribution.end() && std::get<0>(it->first) == batch[r]; ++it) {
          rr.push_back(r);
          pp.push_back(std::get<1>(it->first));
          cc.push_back(std::get<2>(it->first));
          targets.push_back(&it->second);
        }
      }
      if (targets.empty()) continue;
      HookRegistry hooks;
      std::vector<at::indexing::TensorIndex> idx;
      auto gather = [&](const at::Tensor& t) {
        if (idx.empty()) {
          const auto lopt = at::TensorOptions().dtype(at::kLong).device(t.device());
          idx = {at::tensor(rr, lopt), at::tensor(pp, lopt), at::tensor(cc, lopt)};
        }
        at::Tensor v = t.index(idx).to(at::kFloat).cpu().contiguous();
        return std::vector<float>(v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
      };
      hooks.AddProbe("hook_embed", [&](const std::string&, int64_t, const at::Tensor& t) {
        const std::vector<float> v = gather(t);
        for (size_t i = 0; i < targets.size(); ++i) targets[i]->embed = v[i];
      });
      for (int64_t b = 1; b <= n_blocks; ++b) {
        hooks.AddProbe(BlockId::FromBlock(b).output_hook(),
                       [&, b](const std::string&, int64_t, const at::Tensor& t) {
                         const std::vector<float> v = gather(t);
                         for (size_t i = 0; i < targets.size(); ++i) {
                           targets[i]->contributions[b - 1] = v[i];
                         }
                       });
      }
      // Causal: the states at positions <= p depend on tokens <= p only, so
      // the pass stops after the last tracked position (spike tokens sit
      // early: this pass is usually a few tokens long, not a second forward).
      const int64_t keep = *std::max_element(pp.begin(), pp.end()) + 1;
      at::Tensor tokens = BatchTokens(sequences, batch);
      if (keep < tokens.size(1)) tokens = tokens.narrow(1, 0, keep).contiguous();
      RETURN_IF_ERROR(model.RunHooks(tokens, hooks, cancel));
    }
    for (auto& [key, a] : attribution) {
      const float peak = a.entry.value;
      const double min_abs = params_.step_share * std::fabs(peak);
      float sum = a.embed;
      for (int64_t j = 1; j <= n_blocks; ++j) {
        const float o = a.contributions[j - 1];
        if (j <= a.peak_block) sum += o;
        if (!(std::fabs(o) >= min_abs)) continue;
        if ((o > 0) == (peak > 0)) {
          if (j <= a.peak_block) a.step_up_blocks.push_back(j);
        } else {
          a.step_down_blocks.push_back(j);
        }
      }
      a.sum_to_peak = sum;
      up.insert(a.step_up_blocks.begin(), a.step_up_blocks.end());
      down.insert(a.step_down_blocks.begin(), a.step_down_blocks.end());
    }
  }

  std::vector<ActivationEntry> listed;
  for (const auto& [key, pk] : peaks) {
    listed.push_back({pk.value, std::get<0>(key), std::get<1>(key), std::get<2>(key)});
  }
  std::stable_sort(listed.begin(), listed.end(),
                   [](const ActivationEntry& a, const ActivationEntry& b) {
                     return std::fabs(a.value) > std::fabs(b.value);
                   });
  if (static_cast<int64_t>(listed.size()) > params_.max_listed_entries) {
    listed.resize(params_.max_listed_entries);
  }
  for (const ActivationEntry& e : listed) {
    auto it = attribution.find(EntryKey{e.sequence, e.position, e.channel});
    if (it != attribution.end()) summary.attributions.push_back(std::move(it->second));
  }
  summary.spike_entries = std::move(listed);
  summary.step_up_blocks.assign(up.begin(), up.end());
  summary.step_down_blocks.assign(down.begin(), down.end());
  return summary;
}


absl::StatusOr<ScanSummary> RunActivationScan(const Model& model,
                                              const std::vector<std::vector<int64_t>>& sequences,
                                              const ScanParams& params, const BlockFn& on_block,
                                              const ProgressFn& progress,
                                              const std::atomic<bool>* cancel) {
  RETURN_IF_ERROR(ValidateScanParams(params));
  RETURN_IF_ERROR(model.ValidateTokens(sequences));
  const std::vector<std::vector<int64_t>> batches = BatchByLength(sequences);
  ActivationScanner scanner(model, static_cast<int64_t>(sequences.size()), params, on_block,
                            progress,
                            2 * model.config().n_layers * static_cast<int64_t>(batches.size()));
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    HookRegistry hooks;
    scanner.AddProbes(&hooks, batches[bi], bi + 1 == batches.size());
    RETURN_IF_ERROR(model.RunHooks(BatchTokens(sequences, batches[bi]), hooks, cancel));
  }
  return scanner.Finish(sequences, batches, cancel);
}

}  // namespace sinkscope
