#include "worker/engine/mechanism.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "worker/engine/batching.h"
#include "worker/engine/hooks.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

at::TensorOptions F64(const at::Tensor& like) {
  return at::TensorOptions().dtype(at::kDouble).device(like.device());
}

/// The gain of the FFN input norm of `layer` (undefined for post-norm).
at::Tensor FfnInputGain(const Model& model, int64_t layer) {
  const std::string p = absl::StrCat("model.layers.", layer, ".");
  switch (model.config().norm_placement) {
    case NormPlacement::kPre:
      return model.weight(p + "post_attention_layernorm.weight");
    case NormPlacement::kSandwich:
      return model.weight(p + "pre_feedforward_layernorm.weight");
    case NormPlacement::kPost:
    case NormPlacement::kNone:
      return at::Tensor();
  }
  return at::Tensor();
}

/// Hook of the FFN input (the gained normalised state, or the residual for post-norm).
std::string FfnInputHook(const Model& model, int64_t layer) {
  return !model.config().HasInputNorms()
             ? HookName(layer, "hook_resid_mid")
             : HookName(layer, "ln2.hook_normalized");
}

double LowerMedian(std::vector<float> v) {
  if (v.empty()) return 0;
  auto nth = v.begin() + (v.size() - 1) / 2;
  std::nth_element(v.begin(), nth, v.end());
  return *nth;
}

std::vector<float> ToFloats(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).cpu().contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

absl::Status CheckMlpBlocks(const std::vector<int64_t>& blocks, const ModelConfig& c,
                            const std::string& field) {
  for (int64_t b : blocks) {
    if (b < 1 || b > c.n_blocks()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": block ", b,
                                                     " does not exist: the model has blocks 1..",
                                                     c.n_blocks()));
    }
    if (b % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": block ", b, " is an attention block (layer ", (b - 1) / 2,
          " attn); an MLP block (even number) is needed"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FfnWeights> FoldedFfnWeights(const Model& model, int64_t layer) {
  const ModelConfig& c = model.config();
  if (layer < 0 || layer >= c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " does not exist (layers 0..", c.n_layers - 1, ")"));
  }
  const std::string p = absl::StrCat("model.layers.", layer, ".mlp.");
  FfnWeights w;
  w.gate = model.weight(p + "gate_proj.weight").to(at::kDouble);
  w.up = model.weight(p + "up_proj.weight").to(at::kDouble);
  w.down = model.weight(p + "down_proj.weight").to(at::kDouble);
  if (at::Tensor g = FfnInputGain(model, layer); g.defined()) {
    at::Tensor g64 = g.to(at::kDouble).view({1, -1});
    w.gate = w.gate * g64;
    w.up = w.up * g64;
  }
  return w;
}

at::Tensor FfnFrobeniusNorms(const FfnWeights& w, int64_t row_chunk) {
  const int64_t f = w.gate.size(0), D = w.down.size(0);
  at::Tensor f2 = at::zeros({D}, w.gate.options());  // float64 from FoldedFfnWeights
  at::Tensor gate_t = w.gate.t(), up_t = w.up.t();
  for (int64_t s = 0; s < f; s += row_chunk) {
    const int64_t n = std::min(row_chunk, f - s);
    at::Tensor m = at::matmul(w.gate.narrow(0, s, n), gate_t);  // [n, f]
    m.mul_(at::matmul(w.up.narrow(0, s, n), up_t));             // o (W_up[I] W_up^T)
    at::Tensor proj = at::matmul(w.down, m.t());                // [D, n]
    f2.add_((w.down.narrow(1, s, n) * proj).sum(1));
  }
  return f2.clamp_min(0).sqrt();
}

at::Tensor ApplySk(const FfnWeights& w, int64_t k, const at::Tensor& x) {
  const bool vec = x.dim() == 1;
  at::Tensor X = vec ? x.view({-1, 1}) : x;
  at::Tensor d = w.down.select(0, k).view({-1, 1});  // [f, 1]
  at::Tensor ux = at::matmul(w.gate.t(), d * at::matmul(w.up, X));
  at::Tensor utx = at::matmul(w.up.t(), d * at::matmul(w.gate, X));
  at::Tensor out = (ux + utx) * 0.5;
  return vec ? out.view({-1}) : out;
}

Eigenpairs LeadingEigenpairs(const FfnWeights& w, int64_t k, int64_t n_eig, uint64_t seed) {
  const int64_t D = w.gate.size(1);
  const int64_t m = std::min<int64_t>(D, std::max<int64_t>(3 * n_eig + 20, 60));
  const at::TensorOptions opts = F64(w.gate);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003 + k + 1);
  auto random_unit = [&](const at::Tensor& basis) {
    at::Tensor r = at::randn({D}, gen, at::TensorOptions().dtype(at::kDouble)).to(opts.device());
    for (int rep = 0; rep < 2 && basis.defined(); ++rep) {
      r = r - at::matmul(basis.t(), at::matmul(basis, r));
    }
    return r / r.norm();
  };
  at::Tensor V = at::zeros({m, D}, opts);
  std::vector<double> alpha, beta;
  at::Tensor v = random_unit(at::Tensor());
  double scale = 0;
  for (int64_t j = 0; j < m; ++j) {
    V[j].copy_(v);
    at::Tensor wv = ApplySk(w, k, v);
    const double a = at::dot(wv, v).item<double>();
    alpha.push_back(a);
    scale = std::max(scale, std::fabs(a));
    if (j + 1 == m) break;
    at::Tensor basis = V.narrow(0, 0, j + 1);
    for (int rep = 0; rep < 2; ++rep) wv = wv - at::matmul(basis.t(), at::matmul(basis, wv));
    double b = wv.norm().item<double>();
    scale = std::max(scale, b);
    if (b <= 1e-12 * std::max(scale, 1e-300)) {  // invariant subspace: restart orthogonally
      v = random_unit(basis);
      b = 0;
    } else {
      v = wv / b;
    }
    beta.push_back(b);
  }
  const int64_t n = static_cast<int64_t>(alpha.size());
  at::Tensor T = at::zeros({n, n}, at::TensorOptions().dtype(at::kDouble));
  for (int64_t i = 0; i < n; ++i) {
    T[i][i] = alpha[i];
    if (i + 1 < n) {
      T[i][i + 1] = beta[i];
      T[i + 1][i] = beta[i];
    }
  }
  auto [evals, evecs] = at::linalg_eigh(T);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  auto ev = evals.accessor<double, 1>();
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return std::fabs(ev[a]) > std::fabs(ev[b]); });
  Eigenpairs out;
  for (int64_t i = 0; i < std::min(n, n_eig); ++i) out.values.push_back(ev[order[i]]);
  at::Tensor y = evecs.select(1, order[0]).to(opts.device());
  at::Tensor s = at::matmul(V.narrow(0, 0, n).t(), y);
  s = s / s.norm();
  const int64_t arg = s.abs().argmax().item<int64_t>();
  if (s[arg].item<double>() < 0) s = -s;
  out.leading_vector = s;
  const double l1 = out.values.empty() ? 0 : out.values[0];
  out.residual = (ApplySk(w, k, s) - l1 * s).norm().item<double>() / std::max(std::fabs(l1), 1e-300);
  return out;
}

absl::Status ValidateFfnQuadraticParams(const FfnQuadraticParams& p, const ModelConfig& c) {
  RETURN_IF_ERROR(CheckMlpBlocks(p.blocks, c, "ffn_quadratic.blocks"));
  if (p.top_channels < 0 || p.top_channels > c.d_model) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ffn_quadratic.top_channels must be in 1..d_model (", c.d_model, "), got ", p.top_channels));
  }
  if (p.sample_channels < 0 || p.sample_channels > c.d_model) {
    return absl::InvalidArgumentError(
        absl::StrCat("ffn_quadratic.sample_channels must be in 0..d_model (", c.d_model, "), got ",
                     p.sample_channels));
  }
  if (p.n_eigenvalues < 1 || p.n_eigenvalues > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("ffn_quadratic.n_eigenvalues must be in 1..64, got ", p.n_eigenvalues));
  }
  if (p.top_rows < 1 || p.top_rows > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("ffn_quadratic.top_rows must be in 1..256, got ", p.top_rows));
  }
  if (!(p.outlier_factor > 1) || !std::isfinite(p.outlier_factor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ffn_quadratic.outlier_factor must be a finite number > 1, got ",
                     p.outlier_factor));
  }
  if (p.row_chunk < 1) return absl::InvalidArgumentError("ffn_quadratic.row_chunk must be >= 1");
  return absl::OkStatus();
}

namespace {

FfnChannelSpectrum Spectrum(const FfnWeights& w, int64_t k, bool is_top, double norm,
                            const FfnQuadraticParams& p) {
  FfnChannelSpectrum s;
  s.channel = k;
  s.is_top = is_top;
  s.frobenius_norm = norm;
  Eigenpairs e = LeadingEigenpairs(w, k, p.n_eigenvalues, p.seed);
  s.eigenvalues = e.values;
  const double l1 = e.values.empty() ? 0 : std::fabs(e.values[0]);
  const double l2 = e.values.size() > 1 ? std::fabs(e.values[1]) : 0;
  s.eigen_ratio = l2 > 0 ? l1 / l2 : std::numeric_limits<double>::infinity();
  s.leading_eigenvector = ToFloats(e.leading_vector);
  s.residual = e.residual;
  if (is_top) {
    at::Tensor row = w.down.select(0, k);
    const int64_t n = std::min<int64_t>(p.top_rows, row.numel());
    at::Tensor idx = std::get<1>(at::topk(row.abs(), n)).cpu();
    at::Tensor g = w.gate.index_select(0, idx.to(w.gate.device()));
    at::Tensor u = w.up.index_select(0, idx.to(w.gate.device()));
    at::Tensor cosv = ((g * u).sum(1) / (g.norm(2, {1}) * u.norm(2, {1})).clamp_min(1e-300)).cpu();
    at::Tensor vals = row.index_select(0, idx.to(row.device())).cpu();
    for (int64_t i = 0; i < n; ++i) {
      s.top_rows.push_back({idx[i].item<int64_t>(), static_cast<float>(vals[i].item<double>()),
                            cosv[i].item<double>()});
    }
  }
  return s;
}

}  // namespace

absl::Status RunFfnQuadratic(const Model& model, const FfnQuadraticParams& params,
                             const FfnBlockFn& on_block, const ProgressFn& progress,
                             const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(ValidateFfnQuadraticParams(params, c));
  std::vector<int64_t> blocks = params.blocks;
  if (blocks.empty()) {
    for (int64_t l = 0; l < c.n_layers; ++l) blocks.push_back(2 * l + 2);
  }
  int64_t done = 0;
  for (int64_t b : blocks) {
    if (cancel && cancel->load()) return absl::CancelledError("job cancelled");
    const auto t0 = std::chrono::steady_clock::now();
    FfnQuadraticBlock out;
    out.id = BlockId::FromBlock(b);
    ASSIGN_OR_RETURN(FfnWeights w, FoldedFfnWeights(model, out.id.layer));
    at::Tensor norms = FfnFrobeniusNorms(w, params.row_chunk);
    out.frobenius_norms = ToFloats(norms);
    std::vector<double> norms64(out.frobenius_norms.size());
    {
      at::Tensor n64 = norms.cpu().contiguous();
      std::copy(n64.data_ptr<double>(), n64.data_ptr<double>() + n64.numel(), norms64.begin());
    }
    out.median = LowerMedian(out.frobenius_norms);
    std::vector<int64_t> order(norms64.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b2) { return norms64[a] > norms64[b2]; });
    for (int64_t k : order) {
      if (norms64[k] > params.outlier_factor * out.median) out.outlier_channels.push_back(k);
    }
    std::vector<int64_t> top;
    if (params.top_channels > 0) {
      top.assign(order.begin(), order.begin() + params.top_channels);
    } else {
      top = out.outlier_channels;
      if (static_cast<int64_t>(top.size()) > params.max_outliers) top.resize(params.max_outliers);
    }
    const std::set<int64_t> top_set(top.begin(), top.end());
    std::vector<int64_t> ordinary;
    for (int64_t k = 0; k < c.d_model; ++k) {
      if (!top_set.count(k)) ordinary.push_back(k);
    }
    std::mt19937_64 rng(params.seed * 7919 + static_cast<uint64_t>(b));
    std::shuffle(ordinary.begin(), ordinary.end(), rng);
    ordinary.resize(std::min<size_t>(ordinary.size(), params.sample_channels));
    std::sort(ordinary.begin(), ordinary.end());
    for (int64_t k : top) out.channels.push_back(Spectrum(w, k, true, norms64[k], params));
    for (int64_t k : ordinary) out.channels.push_back(Spectrum(w, k, false, norms64[k], params));
    const size_t nt = top.size();
    out.top_cosine.assign(nt * nt, 1.0);
    double sum = 0;
    for (size_t i = 0; i < nt; ++i) {
      for (size_t j = 0; j < nt; ++j) {
        if (i == j) continue;
        const auto& a = out.channels[i].leading_eigenvector;
        const auto& v = out.channels[j].leading_eigenvector;
        double dot = 0, na = 0, nv = 0;
        for (size_t q = 0; q < a.size(); ++q) {
          dot += static_cast<double>(a[q]) * v[q];
          na += static_cast<double>(a[q]) * a[q];
          nv += static_cast<double>(v[q]) * v[q];
        }
        out.top_cosine[i * nt + j] = std::fabs(dot) / std::max(std::sqrt(na * nv), 1e-300);
        sum += out.top_cosine[i * nt + j];
      }
    }
    out.mean_top_cosine = nt > 1 ? sum / static_cast<double>(nt * (nt - 1)) : 0;
    out.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (on_block) on_block(out);
    if (progress) progress(++done, static_cast<int64_t>(blocks.size()));
  }
  return absl::OkStatus();
}

// ---- silu-regime ----

absl::Status ValidateSiluRegimeParams(const SiluRegimeParams& p, const ModelConfig& c) {
  RETURN_IF_ERROR(CheckMlpBlocks(p.blocks, c, "silu_regime.blocks"));
  if (p.channel < -1 || p.channel >= c.d_model) {
    return absl::InvalidArgumentError(absl::StrCat("silu_regime.channel ", p.channel,
                                                   " is out of range 0..", c.d_model - 1));
  }
  return ValidateScanParams(p.scan);
}

absl::StatusOr<SiluRegimeResult> RunSiluRegime(const Model& model,
                                               const std::vector<std::vector<int64_t>>& sequences,
                                               const SiluRegimeParams& params,
                                               const ProgressFn& progress,
                                               const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(ValidateSiluRegimeParams(params, c));
  ASSIGN_OR_RETURN(ScanSummary scan,
                   RunActivationScan(model, sequences, params.scan, nullptr, nullptr, cancel));
  SiluRegimeResult res;
  res.spike_tokens = scan.spike_tokens;
  std::vector<int64_t> blocks = params.blocks;
  if (blocks.empty()) {
    std::set<int64_t> s;
    for (int64_t b : scan.step_up_blocks) if (b % 2 == 0) s.insert(b);
    for (int64_t b : scan.step_down_blocks) if (b % 2 == 0) s.insert(b);
    blocks.assign(s.begin(), s.end());
    if (blocks.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "silu_regime: no step-up or step-down MLP block detected (abs_threshold ",
          params.scan.abs_threshold, ", rel_threshold ", params.scan.rel_threshold,
          ", peak |h| ", scan.peak_abs, "); give the MLP blocks: --blocks 2,4 (silu_regime.blocks)"));
    }
  }
  int64_t channel = params.channel;
  if (channel < 0 && !scan.spike_entries.empty()) channel = scan.spike_entries.front().channel;
  const std::set<std::pair<int64_t, int64_t>> spike(scan.spike_tokens.begin(),
                                                    scan.spike_tokens.end());
  struct Quad {
    double lambda = 0;
    at::Tensor s, gain;  // s* [D] float64; gain [D] float64 or undefined
  };
  std::map<int64_t, Quad> quad;
  for (int64_t b : blocks) {
    SiluRegimeBlock blk;
    blk.id = BlockId::FromBlock(b);
    blk.channel = channel;
    res.blocks.push_back(blk);
    if (channel >= 0) {
      ASSIGN_OR_RETURN(FfnWeights w, FoldedFfnWeights(model, blk.id.layer));
      Eigenpairs e = LeadingEigenpairs(w, channel, 2);
      Quad q;
      q.lambda = e.values.empty() ? 0 : e.values[0];
      q.s = e.leading_vector;
      if (at::Tensor g = FfnInputGain(model, blk.id.layer); g.defined()) q.gain = g.to(at::kDouble);
      quad[b] = q;
      res.blocks.back().lambda_star = q.lambda;
    }
  }
  const std::vector<std::vector<int64_t>> batches = BatchByLength(sequences);
  int64_t done = 0;
  for (const auto& batch : batches) {
    HookRegistry hooks;
    std::map<int64_t, at::Tensor> pre, in;  // layer -> [B, T, .] float64
    for (size_t bi = 0; bi < blocks.size(); ++bi) {
      const int64_t layer = BlockId::FromBlock(blocks[bi]).layer;
      hooks.AddProbe(HookName(layer, "mlp.hook_pre"),
                     [&, layer](const std::string&, int64_t, const at::Tensor& t) {
                       pre[layer] = t.to(at::kDouble);
                     });
      hooks.AddProbe(FfnInputHook(model, layer),
                     [&, layer](const std::string&, int64_t, const at::Tensor& t) {
                       in[layer] = t.to(at::kDouble);
                     });
      hooks.AddProbe(HookName(layer, "hook_mlp_out"), [&, bi, layer](const std::string&, int64_t,
                                                                     const at::Tensor& t) {
        SiluRegimeBlock& blk = res.blocks[bi];
        at::Tensor x = pre[layer];
        at::Tensor sx = x * at::sigmoid(x);
        at::Tensor nx = x.norm(2, {-1}), ns = sx.norm(2, {-1});
        at::Tensor cosv = ((x * sx).sum(-1) / (nx * ns).clamp_min(1e-300)).cpu();
        at::Tensor ratio = (ns / nx.clamp_min(1e-300)).cpu();
        at::Tensor out = t.to(at::kDouble);
        at::Tensor maxabs = out.abs().amax(-1).cpu();
        at::Tensor approx, fk;
        auto qi = quad.find(blocks[bi]);
        if (qi != quad.end()) {
          at::Tensor h = in[layer];
          if (qi->second.gain.defined()) h = h / qi->second.gain;  // h~ without the gain
          approx = (qi->second.lambda * at::matmul(h, qi->second.s).pow(2)).cpu();
          fk = out.select(-1, channel).cpu();
        }
        auto ca = cosv.accessor<double, 2>();
        auto ra = ratio.accessor<double, 2>();
        auto ma = maxabs.accessor<double, 2>();
        for (int64_t r = 0; r < static_cast<int64_t>(batch.size()); ++r) {
          for (int64_t p = 0; p < x.size(1); ++p) {
            SiluToken tok;
            tok.sequence = batch[r];
            tok.position = p;
            tok.is_spike_token = spike.count({batch[r], p}) > 0;
            tok.cosine = ca[r][p];
            tok.norm_ratio = ra[r][p];
            tok.max_abs_output = static_cast<float>(ma[r][p]);
            if (tok.is_spike_token && approx.defined()) {
              const double f = fk[r][p].item<double>();
              const double err = std::fabs(f - approx[r][p].item<double>()) /
                                 std::max(std::fabs(f), 1e-300);
              blk.mean_quadratic_error += err;  // summed here, divided below
              blk.max_quadratic_error = std::max(blk.max_quadratic_error, err);
            }
            blk.tokens.push_back(tok);
          }
        }
      });
    }
    RETURN_IF_ERROR(model.RunHooks(BatchTokens(sequences, batch), hooks, cancel));
    if (progress) progress(++done, static_cast<int64_t>(batches.size()));
  }
  for (SiluRegimeBlock& blk : res.blocks) {
    std::stable_sort(blk.tokens.begin(), blk.tokens.end(), [](const SiluToken& a, const SiluToken& b) {
      return std::make_pair(a.sequence, a.position) < std::make_pair(b.sequence, b.position);
    });
    auto agg = [&](bool want_spike) {
      SiluStats s;
      s.min_cosine = 1;
      for (const SiluToken& t : blk.tokens) {
        if (t.is_spike_token != want_spike) continue;
        ++s.n;
        s.mean_cosine += t.cosine;
        s.mean_norm_ratio += t.norm_ratio;
        s.min_cosine = std::min(s.min_cosine, t.cosine);
      }
      if (s.n > 0) {
        s.mean_cosine /= s.n;
        s.mean_norm_ratio /= s.n;
      } else {
        s.min_cosine = 0;
      }
      return s;
    };
    blk.spike = agg(true);
    blk.other = agg(false);
    if (blk.spike.n > 0) blk.mean_quadratic_error /= blk.spike.n;
  }
  return res;
}

// ---- vo-circuit ----

absl::Status ValidateVoCircuitParams(const VoCircuitParams& p, const ModelConfig& c) {
  if (p.token_ids.empty() && p.vocab_sample == 0) {
    return absl::InvalidArgumentError(
        "vo_circuit: give --tokens (vo_circuit.token_ids) or --vocab-sample N > 0 (vocab_sample)");
  }
  for (int64_t id : p.token_ids) {
    if (id < 0 || id >= c.d_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("vo_circuit.token_ids: token id ", id,
                                                     " is out of range [0, ", c.d_vocab, ")"));
    }
  }
  if (p.vocab_sample < 0 || p.vocab_sample > c.d_vocab) {
    return absl::InvalidArgumentError(absl::StrCat("vo_circuit.vocab_sample must be in 0..",
                                                   c.d_vocab, ", got ", p.vocab_sample));
  }
  if (p.step_up_block != 0) {
    RETURN_IF_ERROR(CheckMlpBlocks({p.step_up_block}, c, "vo_circuit.step_up_block"));
  }
  return ValidateScanParams(p.scan);
}

at::Tensor VoMatrix(const Model& model, int64_t layer) {
  const ModelConfig& c = model.config();
  const std::string p = absl::StrCat("model.layers.", layer, ".self_attn.");
  at::Tensor v = model.weight(p + "v_proj.weight").to(at::kDouble);  // [KV*dh, D]
  at::Tensor o = model.weight(p + "o_proj.weight").to(at::kDouble);  // [D, H*dh]
  const int64_t H = c.n_heads, KV = c.n_kv_heads, dh = c.d_head;
  at::Tensor m = at::zeros({c.d_model, c.d_model}, v.options());
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / (H / KV);
    m.add_(at::matmul(o.narrow(1, h * dh, dh), v.narrow(0, g * dh, dh)));
  }
  return m;
}

absl::StatusOr<VoCircuitResult> RunVoCircuit(const Model& model, const VoCircuitParams& params,
                                             const ProgressFn& progress,
                                             const std::atomic<bool>* cancel) {
  const ModelConfig& c = model.config();
  RETURN_IF_ERROR(ValidateVoCircuitParams(params, c));
  VoCircuitResult res;
  std::vector<std::vector<int64_t>> token_seqs;
  for (int64_t id : params.token_ids) token_seqs.push_back({id});
  std::mt19937_64 rng(params.seed + 17);
  std::vector<int64_t> all(c.d_vocab);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  res.sample_ids.assign(all.begin(), all.begin() + params.vocab_sample);
  std::sort(res.sample_ids.begin(), res.sample_ids.end());
  std::vector<std::vector<int64_t>> sample_seqs;
  for (int64_t id : res.sample_ids) sample_seqs.push_back({id});

  res.step_up_block = params.step_up_block;
  res.channel = -1;
  {
    const auto& probe = token_seqs.empty() ? sample_seqs : token_seqs;
    ASSIGN_OR_RETURN(ScanSummary scan,
                     RunActivationScan(model, probe, params.scan, nullptr, nullptr, cancel));
    if (res.step_up_block == 0) {
      int64_t b = LastStepUpBlockOfLargestSpike(scan);
      if (b % 2 != 0 && b > 0) b = 0;  // an attention step-up block has no s*
      if (b == 0) {
        for (int64_t x : scan.step_up_blocks) if (x % 2 == 0) b = x;
      }
      if (b == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "vo_circuit: no MLP step-up block detected at position 0 (abs_threshold ",
            params.scan.abs_threshold, ", rel_threshold ", params.scan.rel_threshold,
            ", peak |h| ", scan.peak_abs, "); give it: --step-up-block B, an even block ",
            "(vo_circuit.step_up_block)"));
      }
      res.step_up_block = b;
    }
    if (!scan.spike_entries.empty()) res.channel = scan.spike_entries.front().channel;
  }
  const BlockId up = BlockId::FromBlock(res.step_up_block);
  ASSIGN_OR_RETURN(FfnWeights w, FoldedFfnWeights(model, up.layer));
  if (res.channel < 0) res.channel = FfnFrobeniusNorms(w).argmax().item<int64_t>();
  const at::Tensor s_star = LeadingEigenpairs(w, res.channel, 2).leading_vector;

  const int64_t last_layer = up.layer;
  std::vector<at::Tensor> vo(last_layer + 1), bias(last_layer + 1);
  for (int64_t l = 0; l <= last_layer; ++l) {
    vo[l] = VoMatrix(model, l);
    const std::string p = absl::StrCat("model.layers.", l, ".self_attn.");
    at::Tensor bv = model.weight(p + "v_proj.bias");
    if (bv.defined()) {
      at::Tensor o = model.weight(p + "o_proj.weight").to(at::kDouble);
      const int64_t H = c.n_heads, KV = c.n_kv_heads, dh = c.d_head;
      at::Tensor b64 = bv.to(at::kDouble);
      at::Tensor full = at::zeros({H * dh}, b64.options());
      for (int64_t h = 0; h < H; ++h) full.narrow(0, h * dh, dh).copy_(b64.narrow(0, (h / (H / KV)) * dh, dh));
      bias[l] = at::matmul(o, full);
    }
  }
  // |cos(W_VO x + b, s*)| at position 0 for every sequence of `seqs`: [layers][seq].
  auto alignments = [&](const std::vector<std::vector<int64_t>>& seqs)
      -> absl::StatusOr<std::vector<std::vector<double>>> {
    std::vector<std::vector<double>> out(last_layer + 1, std::vector<double>(seqs.size(), 0));
    for (const auto& batch : BatchByLength(seqs)) {
      HookRegistry hooks;
      for (int64_t l = 0; l <= last_layer; ++l) {
        const std::string hook = !c.HasInputNorms()
                                     ? HookName(l, "hook_resid_pre")
                                     : HookName(l, "ln1.hook_normalized");
        hooks.AddProbe(hook, [&, l](const std::string&, int64_t, const at::Tensor& t) {
          at::Tensor x = t.select(1, 0).to(at::kDouble);  // [B, D] position 0
          at::Tensor y = at::matmul(x, vo[l].t());
          if (bias[l].defined()) y = y + bias[l];
          at::Tensor cosv = (at::matmul(y, s_star).abs() / y.norm(2, {1}).clamp_min(1e-300)).cpu();
          for (size_t r = 0; r < batch.size(); ++r) out[l][batch[r]] = cosv[r].item<double>();
        });
      }
      RETURN_IF_ERROR(model.RunHooks(BatchTokens(seqs, batch), hooks, cancel));
    }
    return out;
  };
  std::vector<std::vector<double>> tok, smp;
  if (!token_seqs.empty()) {
    ASSIGN_OR_RETURN(tok, alignments(token_seqs));
  }
  if (progress) progress(1, 2);
  if (!sample_seqs.empty()) {
    ASSIGN_OR_RETURN(smp, alignments(sample_seqs));
  }
  if (progress) progress(2, 2);
  for (int64_t l = 0; l <= last_layer; ++l) {
    VoCircuitLayer L;
    L.layer = l;
    if (!tok.empty()) L.token_alignment = tok[l];
    if (!smp.empty()) {
      std::vector<double> v = smp[l];
      std::sort(v.begin(), v.end());
      L.min = v.front();
      L.max = v.back();
      L.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
      for (double q : {0.1, 0.5, 0.9}) {
        L.quantiles.push_back(v[static_cast<size_t>(q * (v.size() - 1))]);
      }
    }
    res.layers.push_back(std::move(L));
  }
  return res;
}

}  // namespace sinkscope
