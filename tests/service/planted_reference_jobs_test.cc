// Intervention and sink features through the whole service (real
// sinkscope-server + sinkscope-worker, the planted checkpoint of
// tests/engine/fixtures.h served as a Hugging Face directory), checked
// against values computed independently of the engine: the planted
// construction (analytic) and a float64 Llama forward pass written here with
// plain loops over the checkpoint's tensors (it shares no code with
// worker/engine). Covers sink-ablation "zero-value", windowed sinks on
// sequences longer than the context, constant substitution of named channels
// only, and the calibration mean of a "mean" substitution.
#include <ATen/core/Tensor.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "service_test_util.h"
#include "shared_server_suite.h"
#include "tests/engine/fixtures.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;
using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // [pos][channel]

// ---- float64 reference forward of the planted (pre-norm Llama) model ----

/// What the reference run changes, mirroring the documented semantics of the
/// API (proto/sinkscope/v1/analysis.proto), not the engine's code.
struct RefIntervention {
  int64_t sub_block = 0;  // paper block whose post-residual is replaced; 0 = none
  std::vector<int64_t> sub_positions;
  std::vector<int64_t> sub_channels;                       // empty = the whole state
  Vec sub_value;                                           // [d_model] or one per channel
  std::set<std::pair<int64_t, int64_t>> zero_value_heads;  // hook_v[sink, h] = 0
  int64_t zero_value_position = 0;                         // the sink key
};

struct RefTrace {
  std::vector<Mat> resid;                 // [block 0..2L][pos][d_model]; block 0 = embeddings
  std::vector<std::vector<Mat>> pattern;  // [layer][head][q][k]
  std::vector<std::vector<Mat>> z;        // [layer][head][pos][d_head]
  std::vector<std::vector<Mat>> v;        // [layer][head][pos][d_head] (after any ablation)
  Mat logp;                               // [pos][vocab] log-softmax
};

class RefModel {
 public:
  explicit RefModel(const Checkpoint& ck) : c_(ck.config) {
    for (const auto& [name, t] : ck.tensors) {
      at::Tensor f = t.to(at::kDouble).contiguous();
      w_[name] = Vec(f.data_ptr<double>(), f.data_ptr<double>() + f.numel());
    }
  }

  RefTrace Forward(const std::vector<int64_t>& ids, const RefIntervention& iv = {}) const {
    const int64_t T = static_cast<int64_t>(ids.size()), D = c_.d_model, H = c_.n_heads,
                  dh = c_.d_head, F = c_.d_ffn, V = c_.d_vocab;
    RefTrace tr;
    Mat h(T, Vec(D));
    const Vec& E = W("model.embed_tokens.weight");
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t d = 0; d < D; ++d) h[t][d] = E[ids[t] * D + d];
    }
    tr.resid.push_back(h);
    auto substitute = [&](int64_t block) {
      if (iv.sub_block != block) return;
      for (int64_t p : iv.sub_positions) {
        if (p >= T) continue;
        if (iv.sub_channels.empty()) {
          h[p] = iv.sub_value;
        } else {
          for (size_t i = 0; i < iv.sub_channels.size(); ++i)
            h[p][iv.sub_channels[i]] = iv.sub_value[i];
        }
      }
    };
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      Mat x = Norm(h, W(p + "input_layernorm.weight"));
      Mat q = Linear(x, W(p + "self_attn.q_proj.weight"), H * dh);
      Mat k = Linear(x, W(p + "self_attn.k_proj.weight"), H * dh);
      Mat v = Linear(x, W(p + "self_attn.v_proj.weight"), H * dh);
      for (int64_t hd = 0; hd < H; ++hd) {
        if (iv.zero_value_heads.count({l, hd})) {
          for (int64_t e = 0; e < dh; ++e) v[iv.zero_value_position][hd * dh + e] = 0;
        }
      }
      Rope(&q);
      Rope(&k);
      Mat z(T, Vec(H * dh, 0.0));
      tr.pattern.emplace_back();
      tr.z.emplace_back();
      tr.v.emplace_back();
      for (int64_t hd = 0; hd < H; ++hd) {
        Mat A(T, Vec(T, 0.0));
        for (int64_t t = 0; t < T; ++t) {
          Vec s(t + 1);
          double mx = -1e300;
          for (int64_t j = 0; j <= t; ++j) {
            double dot = 0;
            for (int64_t e = 0; e < dh; ++e) dot += q[t][hd * dh + e] * k[j][hd * dh + e];
            s[j] = dot / std::sqrt(static_cast<double>(dh));
            mx = std::max(mx, s[j]);
          }
          double sum = 0;
          for (int64_t j = 0; j <= t; ++j) sum += (s[j] = std::exp(s[j] - mx));
          for (int64_t j = 0; j <= t; ++j) A[t][j] = s[j] / sum;
          for (int64_t j = 0; j <= t; ++j) {
            for (int64_t e = 0; e < dh; ++e) z[t][hd * dh + e] += A[t][j] * v[j][hd * dh + e];
          }
        }
        Mat zh(T, Vec(dh)), vh(T, Vec(dh));
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t e = 0; e < dh; ++e) {
            zh[t][e] = z[t][hd * dh + e];
            vh[t][e] = v[t][hd * dh + e];
          }
        }
        tr.pattern.back().push_back(std::move(A));
        tr.z.back().push_back(std::move(zh));
        tr.v.back().push_back(std::move(vh));
      }
      Mat o = Linear(z, W(p + "self_attn.o_proj.weight"), D);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t d = 0; d < D; ++d) h[t][d] += o[t][d];
      }
      substitute(2 * l + 1);
      tr.resid.push_back(h);
      x = Norm(h, W(p + "post_attention_layernorm.weight"));
      Mat g = Linear(x, W(p + "mlp.gate_proj.weight"), F);
      Mat u = Linear(x, W(p + "mlp.up_proj.weight"), F);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t f = 0; f < F; ++f) g[t][f] = g[t][f] / (1 + std::exp(-g[t][f])) * u[t][f];
      }
      Mat m = Linear(g, W(p + "mlp.down_proj.weight"), D);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t d = 0; d < D; ++d) h[t][d] += m[t][d];
      }
      substitute(2 * l + 2);
      tr.resid.push_back(h);
    }
    Mat logits = Linear(Norm(h, W("model.norm.weight")), W("lm_head.weight"), V);
    for (Vec& row : logits) {
      const double mx = *std::max_element(row.begin(), row.end());
      double sum = 0;
      for (double x : row) sum += std::exp(x - mx);
      for (double& x : row) x = x - mx - std::log(sum);
    }
    tr.logp = std::move(logits);
    return tr;
  }

  const ModelConfig& config() const { return c_; }

 private:
  const Vec& W(const std::string& name) const { return w_.at(name); }

  Mat Norm(const Mat& h, const Vec& gain) const {
    Mat out = h;
    for (Vec& row : out) {
      double ms = 0;
      for (double x : row) ms += x * x;
      const double r = 1.0 / std::sqrt(ms / row.size() + c_.norm_eps);
      for (size_t d = 0; d < row.size(); ++d) row[d] *= r * gain[d];
    }
    return out;
  }

  static Mat Linear(const Mat& x, const Vec& w, int64_t n_out) {  // w: [n_out, n_in]
    Mat out(x.size(), Vec(n_out, 0.0));
    const size_t n_in = x.empty() ? 0 : x[0].size();
    for (size_t t = 0; t < x.size(); ++t) {
      for (int64_t o = 0; o < n_out; ++o) {
        double s = 0;
        for (size_t i = 0; i < n_in; ++i) s += w[o * n_in + i] * x[t][i];
        out[t][o] = s;
      }
    }
    return out;
  }

  // Rotate-halves RoPE (HF layout), angle pos * theta^(-2i/d_head).
  void Rope(Mat* x) const {
    const int64_t dh = c_.d_head, half = dh / 2;
    for (size_t t = 0; t < x->size(); ++t) {
      for (int64_t hd = 0; hd < c_.n_heads; ++hd) {
        double* r = (*x)[t].data() + hd * dh;
        for (int64_t i = 0; i < half; ++i) {
          const double a = t * std::pow(c_.rope_theta, -2.0 * i / dh);
          const double x1 = r[i], x2 = r[i + half];
          r[i] = x1 * std::cos(a) - x2 * std::sin(a);
          r[i + half] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      }
    }
  }

  ModelConfig c_;
  std::map<std::string, Vec> w_;
};

double NllSum(const RefTrace& tr, const std::vector<int64_t>& ids) {
  double s = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) s -= tr.logp[t][ids[t + 1]];
  return s;
}

/// Sum over positions of KL(base || intervened), nats.
double KlSum(const RefTrace& base, const RefTrace& intv) {
  double s = 0;
  for (size_t t = 0; t < base.logp.size(); ++t) {
    double kl = 0;
    for (size_t v = 0; v < base.logp[t].size(); ++v) {
      kl += std::exp(base.logp[t][v]) * (base.logp[t][v] - intv.logp[t][v]);
    }
    s += std::max(0.0, kl);
  }
  return s;
}

double Norm2(const Vec& x) {
  double s = 0;
  for (double v : x) s += v * v;
  return std::sqrt(s);
}

/// Mean attention distance sum_t sum_k A[t,k] (t - k) / T.
double Distance(const Mat& A) {
  double d = 0;
  for (size_t t = 0; t < A.size(); ++t) {
    for (size_t k = 0; k <= t; ++k) d += A[t][k] * static_cast<double>(t - k);
  }
  return d / A.size();
}

double MeanZNorm(const Mat& z) {
  double s = 0;
  for (const Vec& row : z) s += Norm2(row);
  return s / z.size();
}

// ---- the service ----

std::vector<int64_t> PlantedCorpus(int n_chunks, int len) {  // as analysis_jobs_test.cc
  std::vector<int64_t> ids;
  for (int c = 0; c < n_chunks; ++c) {
    ids.push_back(1);
    for (int i = 1; i < len; ++i) ids.push_back(10 + (c * 13 + i * 7) % 50);
  }
  return ids;
}

std::vector<std::vector<int64_t>> Chunks(const std::vector<int64_t>& stream, size_t len) {
  std::vector<std::vector<int64_t>> out;
  for (size_t s = 0; s < stream.size(); s += len) {
    out.emplace_back(stream.begin() + s, stream.begin() + std::min(stream.size(), s + len));
  }
  return out;
}

class PlantedReferenceJobsTest : public SharedServerSuite<PlantedReferenceJobsTest> {
 protected:
  static void SetUpTestSuite() {
    truth_ = new PlantedTruth;
    Checkpoint ck = PlantedCheckpoint(PlantedSpec{}, truth_);
    ref_ = new RefModel(ck);
    const std::string planted = WriteHfModel("planted", ck);
    if (planted.empty()) return;
    StartSharedServer(absl::StrCat(R"({"models": [)", HfModelEntry("planted", planted), "]}"));
  }
  static void TearDownTestSuite() {
    delete ref_;
    delete truth_;
    ref_ = nullptr;
    truth_ = nullptr;
    SharedServerSuite::TearDownTestSuite();
  }

  static v1::SubmitJobRequest Request(const std::vector<std::vector<int64_t>>& sequences) {
    std::vector<std::vector<int32_t>> ids;
    for (const auto& seq : sequences) ids.emplace_back(seq.begin(), seq.end());
    return SharedServerSuite::Request("planted", ids);
  }

  static const v1::InterventionSummary* Summary(const v1::Job& job) {
    if (job.results_size() == 0 ||
        !job.results(job.results_size() - 1).has_intervention_summary()) {
      ADD_FAILURE() << "no intervention summary";
      return nullptr;
    }
    return &job.results(job.results_size() - 1).intervention_summary();
  }

  static inline PlantedTruth* truth_ = nullptr;
  static inline RefModel* ref_ = nullptr;
};

bool IsSpikeToken(const PlantedTruth& t, int64_t id) {
  return std::find(t.spike_token_ids.begin(), t.spike_token_ids.end(), id) !=
         t.spike_token_ids.end();
}

// (a) zero-value: the sink key's value vector of each planted sink head is
// zeroed. At the first ablated layer (2) the pattern is untouched and the head
// output loses exactly the sink's share: z_int[t] = z_base[t] - A[t,s] v_s.
// With the spike token first (BOS = token 1), its state is exactly
// 8 e_0 + c e_k (position 0 sees only itself and no weight reads s* or k
// except the planted units), so v_0 = 0 exactly and the ablation is an exact
// no-op. With the spike token at position 4 of each chunk (after ordinary
// tokens) its value is small but nonzero and carries nearly all of the head's
// output for queries t >= 4.
TEST_F(PlantedReferenceJobsTest, ZeroValueAblationRemovesTheSinkValueFromPlantedHeads) {
  struct Case {
    std::string name;
    std::vector<int64_t> stream;
    int64_t sink = 0;
  };
  std::vector<int64_t> late;  // two chunks of 32: ordinary tokens, the spike token at 4
  for (int c = 0; c < 2; ++c) {
    for (int i = 0; i < 32; ++i)
      late.push_back(i == 4 ? truth_->spike_token_ids[1 + c] : 10 + (c * 13 + i * 7) % 50);
  }
  for (const Case& cs :
       {Case{"spike token first", PlantedCorpus(2, 32), 0}, Case{"spike token at 4", late, 4}}) {
    SCOPED_TRACE(cs.name);
    auto req = Request({cs.stream});
    v1::InterventionRequest* a = req.mutable_request()->mutable_sink_ablation();
    a->mutable_eval()->set_chunk_length(32);
    v1::SinkAblation* abl = a->add_interventions()->mutable_ablation();
    abl->set_method("zero-value");
    if (cs.sink != 0) abl->add_sink_positions(static_cast<int>(cs.sink));
    RefIntervention iv;
    iv.zero_value_position = cs.sink;
    for (auto [l, h] : truth_->sink_heads) {
      v1::HeadRef* ref = abl->add_heads();
      ref->set_layer(static_cast<int>(l));
      ref->set_head(static_cast<int>(h));
      iv.zero_value_heads.insert({l, h});
    }
    v1::Job job = RunOk(req);
    const v1::InterventionSummary* s = Summary(job);
    ASSERT_NE(s, nullptr);
    ASSERT_EQ(s->interventions_size(), 1);
    EXPECT_EQ(s->interventions(0).ablation().method(), "zero-value");
    ASSERT_EQ(s->interventions(0).ablation().sink_positions_size(), 1);
    EXPECT_EQ(s->interventions(0).ablation().sink_positions(0), cs.sink);

    // Reference: per chunk, baseline and ablated float64 runs.
    const auto chunks = Chunks(cs.stream, 32);
    std::map<std::pair<int64_t, int64_t>, std::array<double, 5>>
        want;  // zb, zi, db, di, z analytic
    double base_nll = 0, int_nll = 0, kl = 0, max_v_sink = 0;
    int64_t n_scored = 0, n_pos = 0;
    for (const auto& ch : chunks) {
      const RefTrace base = ref_->Forward(ch), intv = ref_->Forward(ch, iv);
      base_nll += NllSum(base, ch);
      int_nll += NllSum(intv, ch);
      kl += KlSum(base, intv);
      n_scored += ch.size() - 1;
      n_pos += ch.size();
      for (auto [l, h] : truth_->sink_heads) {
        auto& w = want[{l, h}];
        const Mat& A = base.pattern[l][h];
        const Vec& v_sink = base.v[l][h][cs.sink];
        max_v_sink = std::max(max_v_sink, Norm2(v_sink));
        w[0] += MeanZNorm(base.z[l][h]) / chunks.size();
        w[1] += MeanZNorm(intv.z[l][h]) / chunks.size();
        w[2] += Distance(A) / chunks.size();
        w[3] += Distance(intv.pattern[l][h]) / chunks.size();
        Mat z = base.z[l][h];  // analytic from the baseline run (exact at layer 2 only)
        for (size_t t = 0; t < z.size(); ++t) {
          for (size_t e = 0; e < z[t].size(); ++e) z[t][e] -= A[t][cs.sink] * v_sink[e];
        }
        w[4] += MeanZNorm(z) / chunks.size();
      }
    }
    if (cs.sink == 0) {
      EXPECT_EQ(max_v_sink, 0.0) << "planted: the BOS spike token's value is exactly 0";
    } else {
      EXPECT_GT(max_v_sink, 1e-3);
    }
    ASSERT_EQ(s->head_effects_size(), 3);
    for (const auto& e : s->head_effects()) {
      const auto& w = want.at({e.layer(), e.head()});
      const std::string at = absl::StrCat("head (", e.layer(), ", ", e.head(), ")");
      EXPECT_NEAR(e.z_norm_baseline(), w[0], 1e-5 * w[0]) << at;
      EXPECT_NEAR(e.z_norm_intervened(), w[1], 1e-5 * w[1]) << at;
      EXPECT_NEAR(e.distance_baseline(), w[2], 1e-4 * w[2]) << at;
      EXPECT_NEAR(e.distance_intervened(), w[3], 1e-4 * w[3]) << at;
      if (e.layer() == 2) {
        EXPECT_NEAR(e.z_norm_intervened(), w[4], 1e-5 * w[4]) << at << " (analytic)";
        // zero-value leaves this layer's pattern as it was (unlike mask).
        EXPECT_NEAR(e.distance_intervened(), e.distance_baseline(), 1e-6 * w[2]) << at;
      }
      if (cs.sink == 0) {  // an exact no-op
        EXPECT_EQ(e.z_norm_intervened(), e.z_norm_baseline()) << at;
        EXPECT_EQ(e.distance_intervened(), e.distance_baseline()) << at;
      } else {  // the drop of ||z|| is the reference's, and well above float32 noise
        const double drop = w[0] - w[1];
        EXPECT_GT(drop, 1e-4 * w[0]) << at;
        EXPECT_NEAR(e.z_norm_baseline() - e.z_norm_intervened(), drop, 0.02 * drop) << at;
      }
      std::printf(
          "%s, %s: ||z|| %.6e -> %.6e (ref %.6e -> %.6e, analytic %.6e), distance %.4f -> %.4f\n",
          cs.name.c_str(), at.c_str(), e.z_norm_baseline(), e.z_norm_intervened(), w[0], w[1], w[4],
          e.distance_baseline(), e.distance_intervened());
    }
    const double base_ppl = std::exp(base_nll / n_scored), int_ppl = std::exp(int_nll / n_scored);
    EXPECT_NEAR(s->baseline_perplexity(), base_ppl, 1e-4 * base_ppl);
    EXPECT_NEAR(s->intervened_perplexity(), int_ppl, 1e-4 * int_ppl);
    EXPECT_NEAR(s->kl().all(), kl / n_pos, 1e-3 * kl / n_pos + 1e-7);
    if (cs.sink == 0) {
      EXPECT_EQ(s->intervened_perplexity(), s->baseline_perplexity());
      EXPECT_EQ(s->kl().all(), 0.0);
    } else {
      EXPECT_NEAR(s->intervened_perplexity() - s->baseline_perplexity(), int_ppl - base_ppl,
                  0.01 * std::fabs(int_ppl - base_ppl));
      EXPECT_GT(s->kl().all(), 0.0);
    }
    std::printf("%s: perplexity %.5f -> %.5f (ref %.5f -> %.5f), KL %.3e (ref %.3e)\n",
                cs.name.c_str(), s->baseline_perplexity(), s->intervened_perplexity(), base_ppl,
                int_ppl, s->kl().all(), kl / n_pos);
  }
}

// (b) Windowed sinks on a sequence longer than the context (300 > 256 tokens):
// windows of 64 start at 0, 64, 128, 192, 256 (the last has 44 tokens). A spike
// token opens every window but the fourth, so each planted head sinks in 4 of
// the 5 windows and no other head sinks in any.
TEST_F(PlantedReferenceJobsTest, WindowedSinksOnASequenceLongerThanTheContext) {
  const int64_t n_ctx = ref_->config().n_ctx, L = ref_->config().n_layers,
                H = ref_->config().n_heads;
  std::vector<int64_t> seq;
  for (int i = 0; i < 300; ++i) seq.push_back(10 + (i * 7 + i / 11) % 50);
  for (int p : {0, 64, 128, 256})
    seq[p] = truth_->spike_token_ids[p / 64 % truth_->spike_token_ids.size()];
  ASSERT_GT(static_cast<int64_t>(seq.size()), n_ctx);
  auto req = Request({seq});
  req.mutable_request()->mutable_sinks()->set_window(64);
  req.mutable_request()->mutable_sinks()->set_windowed(true);
  v1::Job job = RunOk(req);
  ASSERT_EQ(job.results_size(), L + 1);

  // Planted expectation and the float64 reference, per window.
  const std::vector<std::vector<int64_t>> windows = Chunks(seq, 64);
  std::set<std::pair<int64_t, int64_t>> planted(truth_->sink_heads.begin(),
                                                truth_->sink_heads.end());
  std::vector<std::vector<double>> max_imp(L, std::vector<double>(H)),
      frac(L, std::vector<double>(H)), gu(L, std::vector<double>(H));
  for (const auto& w : windows) {
    const RefTrace tr = ref_->Forward(w);
    const int64_t T = w.size();
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> alpha(T, 0.0);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t k = 0; k <= t; ++k) alpha[k] += tr.pattern[l][h][t][k] / T;
        }
        const double m = *std::max_element(alpha.begin(), alpha.begin() + T / 2);
        max_imp[l][h] += m / windows.size();
        frac[l][h] += (m > 0.3 ? 1.0 : 0.0) / windows.size();
        gu[l][h] += alpha[0] / windows.size();
      }
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    const v1::SinkLayer& layer = job.results(l).sink_layer();
    int planted_in_layer = 0;
    for (const auto& h : layer.heads()) {
      const bool sink = planted.count({h.layer(), h.head()}) > 0;
      planted_in_layer += sink;
      const std::string at = absl::StrCat("head (", h.layer(), ", ", h.head(), ")");
      // Planted: 4 of 5 windows for the sink heads, none for the others.
      EXPECT_DOUBLE_EQ(h.sink_fraction(), sink ? 0.8 : 0.0) << at;
      EXPECT_DOUBLE_EQ(frac[h.layer()][h.head()], sink ? 0.8 : 0.0) << at << " (reference)";
      EXPECT_EQ(h.is_sink_head(), sink) << at;
      if (sink) {
        EXPECT_EQ(h.argmax_key(), 0) << at;
      }
      EXPECT_NEAR(h.max_importance(), max_imp[h.layer()][h.head()], 1e-5) << at;
      EXPECT_NEAR(h.gu_first_key_score(), gu[h.layer()][h.head()], 1e-5) << at;
      if (sink) {
        std::printf("%s: max importance %.6f (ref %.6f), sink fraction %.2f\n", at.c_str(),
                    h.max_importance(), max_imp[h.layer()][h.head()], h.sink_fraction());
      }
    }
    // Layer ratio: 4 windows with planted_in_layer/4 sinking heads, one with none.
    EXPECT_NEAR(layer.sink_ratio(), 4.0 / 5.0 * planted_in_layer / H, 1e-12) << "layer " << l;
  }
  const v1::SinkSummary& s = job.results(L).sink_summary();
  EXPECT_EQ(s.n_windows(), 5);
  EXPECT_NEAR(s.sink_ratio(), 4.0 / 5.0 * 3.0 / 24.0, 1e-12);
  EXPECT_TRUE(s.params().windowed());
  EXPECT_EQ(s.params().window(), 64);
}

// (c) channels_only constant substitution writes only the named channels.
// s* = channel 0 is exactly 8 at every spike token at every block (no weight
// writes it), so writing 8 there changes nothing at all; writing (0, 3.5) to
// channels (k, 20) moves the run exactly as the float64 reference predicts.
TEST_F(PlantedReferenceJobsTest, ChannelsOnlyConstantSubstitutionTouchesOnlyTheNamedChannels) {
  const std::vector<int64_t> stream = PlantedCorpus(2, 32);
  const auto chunks = Chunks(stream, 32);
  const int64_t block = truth_->step_up_block, s_star = truth_->spike_direction,
                k = truth_->spike_channel;
  auto make = [&](std::vector<int> channels, std::vector<float> values) {
    auto req = Request({stream});
    v1::InterventionRequest* r = req.mutable_request()->mutable_constant_substitution();
    r->mutable_eval()->set_chunk_length(32);
    v1::ConstantSubstitution* sub = r->add_interventions()->mutable_substitution();
    sub->set_mode("constant");
    sub->set_block(static_cast<int>(block));
    sub->set_channels_only(true);
    for (int c : channels) sub->add_channels(c);
    for (float v : values) sub->add_constant(v);
    return req;
  };

  // 1. The value already there: a no-op.
  {
    v1::Job job = RunOk(make({static_cast<int>(s_star)}, {8.0f}));
    const v1::InterventionSummary* s = Summary(job);
    ASSERT_NE(s, nullptr);
    const v1::ResolvedSubstitution& sub = s->interventions(0).substitution();
    EXPECT_TRUE(sub.channels_only());
    ASSERT_EQ(sub.channels_size(), 1);
    EXPECT_EQ(sub.channels(0), s_star);
    ASSERT_EQ(sub.values_size(), 1);
    EXPECT_EQ(sub.values(0), 8.0f);
    // Reference: channel 0 at the spike tokens after the block is exactly 8.
    for (const auto& ch : chunks) {
      const RefTrace tr = ref_->Forward(ch);
      for (size_t p = 0; p < ch.size(); ++p) {
        EXPECT_EQ(tr.resid[block][p][s_star], IsSpikeToken(*truth_, ch[p]) ? 8.0 : 0.0) << p;
      }
    }
    EXPECT_EQ(s->intervened_perplexity(), s->baseline_perplexity());
    EXPECT_EQ(s->kl().all(), 0.0);
    EXPECT_EQ(s->kl().n_spike(), 2);  // position 0 of each chunk (token 1)
    ASSERT_FALSE(s->residual_shifts().empty());
    for (const auto& r : s->residual_shifts()) {
      EXPECT_EQ(r.relative_change_spike(), 0.0) << r.block().block();
      EXPECT_EQ(r.relative_change_rest(), 0.0) << r.block().block();
    }
  }

  // 2. Channels (k, 20) <- (0, 3.5) at the spike tokens: the reference with
  // exactly those two channels replaced.
  {
    v1::Job job = RunOk(make({static_cast<int>(k), 20}, {0.0f, 3.5f}));
    const v1::InterventionSummary* s = Summary(job);
    ASSERT_NE(s, nullptr);
    const v1::ResolvedSubstitution& sub = s->interventions(0).substitution();
    ASSERT_EQ(sub.channels_size(), 2);
    EXPECT_EQ(sub.channels(0), k);
    EXPECT_EQ(sub.channels(1), 20);
    ASSERT_EQ(sub.values_size(), 2);
    EXPECT_EQ(sub.values(0), 0.0f);
    EXPECT_EQ(sub.values(1), 3.5f);
    RefIntervention iv;
    iv.sub_block = block;
    iv.sub_positions = {0};  // the spike token of each chunk (planted: token 1 only)
    iv.sub_channels = {k, 20};
    iv.sub_value = {0.0, 3.5};
    // Shift blocks b0+1, b0+2, (b0 + 2L + 1) / 2, 2L (experiments.h: "a few after").
    const int64_t nb = 2 * ref_->config().n_layers;
    const std::vector<int64_t> blocks = {block + 1, block + 2, (block + nb + 1) / 2, nb};
    std::map<int64_t, std::array<double, 4>> acc;
    double base_nll = 0, int_nll = 0, kl = 0;
    int64_t n_scored = 0, n_pos = 0;
    for (const auto& ch : chunks) {
      const RefTrace base = ref_->Forward(ch), intv = ref_->Forward(ch, iv);
      // The written state: exactly the named channels changed at block b0.
      for (int64_t d = 0; d < ref_->config().d_model; ++d) {
        const double want = d == k ? 0.0 : d == 20 ? 3.5 : base.resid[block][0][d];
        EXPECT_EQ(intv.resid[block][0][d], want) << d;
      }
      base_nll += NllSum(base, ch);
      int_nll += NllSum(intv, ch);
      kl += KlSum(base, intv);
      n_scored += ch.size() - 1;
      n_pos += ch.size();
      for (int64_t b : blocks) {
        for (size_t p = 0; p < ch.size(); ++p) {
          Vec diff = intv.resid[b][p];
          for (size_t d = 0; d < diff.size(); ++d) diff[d] -= base.resid[b][p][d];
          auto& a = acc[b];
          const int i = p == 0 ? 0 : 2;
          a[i] += Norm2(diff);
          a[i + 1] += Norm2(base.resid[b][p]);
        }
      }
    }
    ASSERT_EQ(s->residual_shifts_size(), static_cast<int>(blocks.size()));
    for (int i = 0; i < s->residual_shifts_size(); ++i) {
      const v1::ResidualShift& r = s->residual_shifts(i);
      EXPECT_EQ(r.block().block(), blocks[i]);
      const auto& a = acc[blocks[i]];
      EXPECT_NEAR(r.relative_change_spike(), a[0] / a[1], 1e-4 * a[0] / a[1] + 1e-7) << blocks[i];
      EXPECT_NEAR(r.relative_change_rest(), a[2] / a[3], 1e-3 * a[2] / a[3] + 1e-6) << blocks[i];
      std::printf("block %lld: shift spike %.6f (ref %.6f), rest %.6f (ref %.6f)\n",
                  static_cast<long long>(blocks[i]), r.relative_change_spike(), a[0] / a[1],
                  r.relative_change_rest(), a[2] / a[3]);
    }
    const double int_ppl = std::exp(int_nll / n_scored), base_ppl = std::exp(base_nll / n_scored);
    EXPECT_NEAR(s->baseline_perplexity(), base_ppl, 1e-4 * base_ppl);
    EXPECT_NEAR(s->intervened_perplexity(), int_ppl, 1e-4 * int_ppl);
    EXPECT_NEAR(s->kl().all(), kl / n_pos, 1e-3 * kl / n_pos + 1e-7);
    std::printf("channels (k, 20) <- (0, 3.5): perplexity %.5f -> %.5f (ref %.5f -> %.5f)\n",
                s->baseline_perplexity(), s->intervened_perplexity(), base_ppl, int_ppl);
  }
}

// (d) "mean" substitution with a calibration set whose spike tokens sit at
// varying positions: the resolved vector is the mean of their post-residual
// states at the step-up block, which differs from every single one of them.
TEST_F(PlantedReferenceJobsTest, MeanSubstitutionResolvesTheCalibrationMean) {
  // Spike tokens (1, 5, 9) at positions 0, 3, 9, 17, 26; never BOS-only.
  const std::vector<std::vector<int64_t>> calibration = {
      {1, 12, 13, 5, 14, 15, 16, 17, 18, 9, 19, 20},
      {22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 1, 39, 40},
      {41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54,
       55, 56, 57, 58, 59, 10, 11, 12, 13, 14, 15, 16, 5,  17}};
  const std::vector<int64_t> stream = PlantedCorpus(2, 32);
  auto req = Request({stream});
  v1::InterventionRequest* r = req.mutable_request()->mutable_constant_substitution();
  r->mutable_eval()->set_chunk_length(32);
  r->add_interventions()->mutable_substitution()->set_mode("mean");  // block 0: detected
  for (const auto& seq : calibration) {
    auto* ids = r->add_calibration()->mutable_ids()->mutable_ids();
    for (int64_t id : seq) ids->Add(static_cast<int32_t>(id));
  }
  v1::Job job = RunOk(req);
  const v1::InterventionSummary* s = Summary(job);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->n_calibration_sequences(), 3);
  const v1::ResolvedSubstitution& sub = s->interventions(0).substitution();
  EXPECT_EQ(sub.mode(), "mean");
  const int64_t block = truth_->step_up_block, D = ref_->config().d_model;
  EXPECT_EQ(sub.block().block(), block);
  ASSERT_EQ(sub.values_size(), D);

  // The reference: post-residual of block 4 at the planted spike tokens.
  std::vector<Vec> states;
  for (const auto& seq : calibration) {
    const RefTrace tr = ref_->Forward(seq);
    for (size_t p = 0; p < seq.size(); ++p) {
      if (IsSpikeToken(*truth_, seq[p])) states.push_back(tr.resid[block][p]);
    }
  }
  ASSERT_EQ(states.size(), 5u);
  Vec mean(D, 0.0);
  for (const Vec& st : states) {
    for (int64_t d = 0; d < D; ++d) mean[d] += st[d] / states.size();
  }
  double max_err = 0;
  for (int64_t d = 0; d < D; ++d) {
    const double tol = 2e-6 * std::fabs(mean[d]) + 2e-6;
    EXPECT_NEAR(sub.values(d), mean[d], tol) << "channel " << d;
    max_err = std::max(max_err, std::fabs(sub.values(d) - mean[d]));
  }
  EXPECT_NEAR(sub.values(static_cast<int>(truth_->spike_channel)), 1280.0, 13.0);
  // The mean is no single state: each differs from it far beyond the tolerance.
  double min_dist = 1e300;
  for (const Vec& st : states) {
    double dist = 0;
    for (int64_t d = 0; d < D; ++d) dist = std::max(dist, std::fabs(st[d] - mean[d]));
    min_dist = std::min(min_dist, dist);
  }
  EXPECT_GT(min_dist, 100 * std::max(max_err, 1e-6));
  std::printf("calibration mean: h_k %.4f (ref %.4f), max |err| %.2e, closest state %.4f away\n",
              sub.values(static_cast<int>(truth_->spike_channel)), mean[truth_->spike_channel],
              max_err, min_dist);

  // The evaluation then writes that mean at each chunk's spike token (position 0).
  RefIntervention iv;
  iv.sub_block = block;
  iv.sub_positions = {0};
  iv.sub_value = mean;
  double int_nll = 0, base_nll = 0;
  int64_t n_scored = 0;
  for (const auto& ch : Chunks(stream, 32)) {
    base_nll += NllSum(ref_->Forward(ch), ch);
    int_nll += NllSum(ref_->Forward(ch, iv), ch);
    n_scored += ch.size() - 1;
  }
  const double int_ppl = std::exp(int_nll / n_scored), base_ppl = std::exp(base_nll / n_scored);
  EXPECT_NEAR(s->baseline_perplexity(), base_ppl, 1e-4 * base_ppl);
  EXPECT_NEAR(s->intervened_perplexity(), int_ppl, 1e-4 * int_ppl);
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
