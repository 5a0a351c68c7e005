// First-token probe (Table 2) and spike-token cosine similarity (Fig. 5).
#include "worker/engine/spikes.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

/// Pairwise cosine similarity of the rows of x: [n, d] (float64).
CosineMatrix Cosines(const std::string& hook, const at::Tensor& x) {
  CosineMatrix m;
  m.hook = hook;
  at::Tensor u = x / x.norm(2, {1}, true).clamp_min(1e-30);
  at::Tensor c = at::matmul(u, u.t()).contiguous();
  const int64_t n = c.size(0);
  m.values.assign(c.data_ptr<double>(), c.data_ptr<double>() + n * n);
  double sum = 0, mn = 1;
  int64_t cnt = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      if (i == j) continue;
      sum += m.values[i * n + j];
      mn = std::min(mn, m.values[i * n + j]);
      ++cnt;
    }
  }
  m.mean_off_diagonal = cnt ? sum / cnt : 1.0;
  m.min_off_diagonal = cnt ? mn : 1.0;
  return m;
}

}  // namespace

absl::Status ValidateFirstTokenParams(const FirstTokenParams& p, const ModelConfig& c) {
  for (int64_t id : p.token_ids) {
    if (id < 0 || id >= c.d_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is out of range [0, ", c.d_vocab, ")"));
    }
  }
  if (p.token_ids.empty()) {
    const int64_t end = p.range_end < 0 ? c.d_vocab : p.range_end;
    if (p.range_begin < 0 || end > c.d_vocab || p.range_begin >= end) {
      return absl::InvalidArgumentError(absl::StrCat("empty or invalid vocabulary range [",
                                                     p.range_begin, ", ", end,
                                                     ") for a vocabulary of ", c.d_vocab));
    }
  }
  for (int64_t id : p.prefix) {
    if (id < 0 || id >= c.d_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prefix token id ", id, " is out of range [0, ", c.d_vocab, ")"));
    }
  }
  if (static_cast<int64_t>(p.prefix.size()) + 1 > c.n_ctx) {
    return absl::InvalidArgumentError("prefix longer than the model's context");
  }
  if (!(p.abs_threshold >= 0) || !(p.rel_threshold >= 0)) {
    return absl::InvalidArgumentError("abs_threshold and rel_threshold must be >= 0");
  }
  if (p.batch_size < 1 || p.batch_size > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size must be in [1, 65536], got ", p.batch_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<FirstTokenResult> RunFirstTokenProbe(const Model& model,
                                                    const FirstTokenParams& params_in,
                                                    const ProgressFn& progress,
                                                    const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  FirstTokenParams params = params_in;
  if (params.prefix.empty()) params.prefix = {c.bos_token_id};
  RETURN_IF_ERROR(ValidateFirstTokenParams(params, c));
  std::vector<int64_t> tokens = params.token_ids;
  if (tokens.empty()) {
    const int64_t end = params.range_end < 0 ? c.d_vocab : params.range_end;
    for (int64_t v = params.range_begin; v < end; ++v) tokens.push_back(v);
  }
  const auto t0 = Clock::now();
  const int64_t P = static_cast<int64_t>(params.prefix.size()), T = P + 1, n_blocks = 2 * c.n_layers;
  FirstTokenResult res;
  res.n_tokens = static_cast<int64_t>(tokens.size());
  res.first_spike_block_histogram.assign(n_blocks + 1, 0);
  double probe_seconds = 0, forward_seconds = 0;
  for (size_t start = 0; start < tokens.size(); start += params.batch_size) {
    const size_t n = std::min<size_t>(params.batch_size, tokens.size() - start);
    // Rows 0..n-1: [v, prefix...]; rows n..2n-1: [prefix..., v].
    std::vector<int64_t> flat;
    flat.reserve(2 * n * T);
    for (size_t i = 0; i < n; ++i) {
      flat.push_back(tokens[start + i]);
      flat.insert(flat.end(), params.prefix.begin(), params.prefix.end());
    }
    for (size_t i = 0; i < n; ++i) {
      flat.insert(flat.end(), params.prefix.begin(), params.prefix.end());
      flat.push_back(tokens[start + i]);
    }
    at::Tensor ids = at::tensor(flat, at::TensorOptions().dtype(at::kLong))
                         .view({static_cast<int64_t>(2 * n), T});
    // First block (1..2L) at which each row's checked position spikes; 0 = never.
    std::vector<int64_t> first_block(2 * n, 0);
    HookRegistry hooks;
    for (int64_t b = 1; b <= n_blocks; ++b) {
      hooks.AddProbe(BlockId::FromBlock(b).resid_hook(), [&, b, n](const std::string&, int64_t,
                                                                   const at::Tensor& t) {
        const auto p0 = Clock::now();
        at::Tensor a = t.to(at::kFloat).abs();                      // [2n, T, d_model]
        const int64_t rows = a.size(0);
        at::Tensor median = std::get<0>(a.reshape({rows, -1}).median(1));  // lower median
        at::Tensor thr = (median * params.rel_threshold).clamp_min(params.abs_threshold);
        at::Tensor at_first = a.narrow(0, 0, n).select(1, 0);        // [n, d_model]
        at::Tensor at_ctrl = a.narrow(0, n, n).select(1, P);         // [n, d_model]
        at::Tensor peak = at::cat({std::get<0>(at_first.max(1)), std::get<0>(at_ctrl.max(1))}, 0);
        at::Tensor hit = (peak > thr).cpu();
        auto h = hit.accessor<bool, 1>();
        for (int64_t r = 0; r < rows; ++r) {
          if (h[r] && first_block[r] == 0) first_block[r] = b;
        }
        probe_seconds += Seconds(Clock::now() - p0);
      });
    }
    const auto f0 = Clock::now();
    RETURN_IF_ERROR(model.RunHooks(ids, hooks, cancel));
    forward_seconds += Seconds(Clock::now() - f0);
    for (size_t i = 0; i < n; ++i) {
      const int64_t v = tokens[start + i];
      if (first_block[i]) {
        ++res.n_spike_at_first;
        ++res.first_spike_block_histogram[first_block[i]];
      } else if (static_cast<int64_t>(res.not_spiking_at_first.size()) < params.max_listed_exceptions) {
        res.not_spiking_at_first.push_back(v);
      }
      if (first_block[n + i]) {
        ++res.n_spike_in_control;
        if (static_cast<int64_t>(res.spiking_in_control.size()) < params.max_listed_exceptions) {
          res.spiking_in_control.push_back(v);
        }
      }
    }
    if (progress) progress(static_cast<int64_t>(start + n), res.n_tokens);
  }
  res.ratio_at_first = static_cast<double>(res.n_spike_at_first) / res.n_tokens;
  res.ratio_in_control = static_cast<double>(res.n_spike_in_control) / res.n_tokens;
  res.forward_seconds = forward_seconds - probe_seconds;  // model compute only
  res.total_seconds = Seconds(Clock::now() - t0);
  return res;
}

absl::StatusOr<SpikeSimilarityResult> RunSpikeSimilarity(
    const Model& model, const std::vector<std::vector<int64_t>>& sequences,
    const SpikeSimilarityParams& params, const ProgressFn& progress,
    const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  const int64_t n_blocks = 2 * c.n_layers;
  if (params.step_up_block < 0 || params.step_up_block > n_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("step_up_block ", params.step_up_block,
                                                   " does not exist: blocks are 1..", n_blocks));
  }
  ASSIGN_OR_RETURN(ScanSummary scan,
                   RunActivationScan(model, sequences, params.scan, nullptr, nullptr, cancel));
  if (scan.spike_tokens.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no spike token found with abs_threshold ", params.scan.abs_threshold, " and rel_threshold ",
        params.scan.rel_threshold, " (peak |h| ", scan.peak_abs,
        "); lower them: --abs-threshold X --rel-threshold Y (spike_similarity.abs_threshold, "
        "rel_threshold)"));
  }
  SpikeSimilarityResult res;
  res.spike_tokens = scan.spike_tokens;
  res.step_up_block = params.step_up_block;
  if (res.step_up_block == 0) {
    if (scan.step_up_blocks.empty()) {
      return absl::FailedPreconditionError(
          "spike tokens found but no step-up block detected; give it: --step-up-block B "
          "(spike_similarity.step_up_block)");
    }
    res.step_up_block = scan.step_up_blocks.front();
  }
  const BlockId up = BlockId::FromBlock(res.step_up_block);
  const std::string before_hook =
      up.is_mlp ? HookName(up.layer, "hook_resid_mid") : HookName(up.layer, "hook_resid_pre");
  const std::string after_hook = up.resid_hook();
  const std::string norm_hook = HookName(up.layer + 1, "ln1.hook_normalized");
  const bool has_norm = model.HasHook(norm_hook);
  std::map<std::string, std::vector<at::Tensor>> rows;  // hook -> [d_model] per spike token
  std::map<int64_t, std::vector<int64_t>> pos_by_seq;
  for (const auto& [s, p] : res.spike_tokens) pos_by_seq[s].push_back(p);
  int64_t done = 0;
  for (const auto& [s, positions] : pos_by_seq) {
    for (int64_t p : positions) res.token_ids.push_back(sequences[s][p]);
    at::Tensor pos = at::tensor(positions, at::TensorOptions().dtype(at::kLong));
    HookRegistry hooks;
    for (const std::string& h : {before_hook, after_hook}) {
      hooks.AddProbe(h, [&rows, pos](const std::string& name, int64_t, const at::Tensor& t) {
        at::Tensor sel = t[0].index_select(0, pos.to(t.device())).to(at::kDouble).cpu();
        for (int64_t i = 0; i < sel.size(0); ++i) rows[name].push_back(sel[i]);
      });
    }
    if (has_norm) {
      hooks.AddProbe(norm_hook, [&rows, pos](const std::string& name, int64_t, const at::Tensor& t) {
        at::Tensor sel = t[0].index_select(0, pos.to(t.device())).to(at::kDouble).cpu();
        for (int64_t i = 0; i < sel.size(0); ++i) rows[name].push_back(sel[i]);
      });
    }
    at::Tensor ids = at::tensor(sequences[s], at::TensorOptions().dtype(at::kLong)).view({1, -1});
    RETURN_IF_ERROR(model.RunHooks(ids, hooks, cancel));
    if (progress) progress(++done, static_cast<int64_t>(pos_by_seq.size()));
  }
  auto stack = [&](const std::string& h) { return at::stack(rows[h], 0); };
  res.before = Cosines(before_hook, stack(before_hook));
  res.after = Cosines(after_hook, stack(after_hook));
  if (has_norm) res.normalized = Cosines(norm_hook, stack(norm_hook));
  return res;
}

}  // namespace sinkscope
