// Sink analysis: planted sink heads found exactly; eq. 27 against a float64
// recomputation from hook_rot_q / hook_rot_k on the real checkpoints.
#include "worker/engine/sinks.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "tests/engine/fixtures.h"
#include "tests/engine/llama2c_reference.h"
#include "tests/engine/test_util.h"

namespace sinkscope {
namespace {

using testing::PlantedCheckpoint;
using testing::PlantedSpec;
using testing::PlantedTruth;

using testing::MakeCpuModel;
using testing::RandomCheckpoint;
using testing::TestTolerance;

std::vector<int64_t> OrdinarySequence(int64_t n, int64_t start) {
  std::vector<int64_t> s = {1};
  for (int64_t i = 1; i < n; ++i) s.push_back(10 + (start + 7 * i) % 50);  // never 1, 5, 9
  return s;
}

TEST(SinkAnalysis, FindsExactlyThePlantedSinkHeads) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  std::vector<std::vector<int64_t>> seqs = {OrdinarySequence(40, 0), OrdinarySequence(40, 3),
                                            OrdinarySequence(32, 11)};
  SinkParams p;
  p.window = 32;
  std::vector<int64_t> streamed;
  auto r = RunSinkAnalysis(*model, seqs, p,
                           [&](const LayerSinkRecord& rec) { streamed.push_back(rec.layer); },
                           nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(streamed, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  std::set<std::pair<int64_t, int64_t>> found;
  for (const auto& layer : r->layers) {
    for (const auto& h : layer.heads) {
      if (h.is_sink_head) {
        found.emplace(h.layer, h.head);
        EXPECT_EQ(h.argmax_key, 0) << "sinks on the spike token at position 0";
        EXPECT_GT(h.max_importance, 0.9);
      }
    }
  }
  std::set<std::pair<int64_t, int64_t>> planted(truth.sink_heads.begin(), truth.sink_heads.end());
  EXPECT_EQ(found, planted);
  EXPECT_NEAR(r->sink_ratio, 3.0 / 24.0, 1e-12);
  EXPECT_EQ(r->n_sink_heads, 3);
  EXPECT_EQ(r->n_heads, 24);
  EXPECT_EQ(r->n_sequences, 3);
  // Sink heads separate the sink key: large logit gap (planted |u|^2 / sqrt(d_head) = 49/4).
  EXPECT_GT(r->sink_heads_logit_gap, 8.0);
  EXPECT_LT(std::fabs(r->other_heads_logit_gap), 2.0);
  // With the sink: all mass on key 0, distance = mean_t t = (T-1)/2 = 15.5.
  EXPECT_NEAR(r->sink_heads_distance, 15.5, 0.5);
  // Without the sink key's share the planted heads are ~uniform over keys 1..t:
  // mean over t = 1..31 of (t-1)/2 = 7.5.
  EXPECT_NEAR(r->sink_heads_distance_without_sink, 7.5, 0.5);
}

TEST(SinkAnalysis, OnlyRequestedLayersAreAnalysed) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  SinkParams p;
  p.window = 32;
  p.layers = {3};
  auto r = RunSinkAnalysis(*model, {OrdinarySequence(32, 0)}, p, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layers.size(), 1u);
  EXPECT_EQ(r->layers[0].layer, 3);
  EXPECT_NEAR(r->layers[0].sink_ratio, 0.25, 1e-12) << "head 1 of 4 sinks in layer 3";
}

// A layer listed twice is analysed once (QA: it used to be double-counted,
// giving alpha > 1 and a sink ratio of 150%).
TEST(SinkAnalysis, RepeatedLayersAreAnalysedOnce) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  SinkParams p;
  p.window = 32;
  p.layers = {3, 2, 3};
  auto r = RunSinkAnalysis(*model, {OrdinarySequence(32, 0)}, p, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layers.size(), 2u);
  EXPECT_EQ(r->layers[0].layer, 2);
  EXPECT_EQ(r->layers[1].layer, 3);
  EXPECT_NEAR(r->sink_ratio, 3.0 / 8.0, 1e-12);
  for (const auto& l : r->layers) {
    for (const auto& h : l.heads) EXPECT_LE(h.max_importance, 1.0 + 1e-9);
  }
  // The window reported is the one used: a 10-token sequence with T = 64.
  auto short_r = RunSinkAnalysis(*model, {OrdinarySequence(10, 0)}, SinkParams{}, nullptr, nullptr);
  ASSERT_TRUE(short_r.ok());
  EXPECT_EQ(short_r->window, 10);
  SelfAttentionParams sp;
  sp.layers = {0, 0};
  auto prof = RunSelfAttentionProfile(*model, {OrdinarySequence(8, 0)}, sp, nullptr, nullptr);
  ASSERT_TRUE(prof.ok());
  ASSERT_EQ(prof->layers.size(), 1u);
  EXPECT_EQ(prof->layers[0].group_count[0] + prof->layers[0].group_count[2], 8);
}

TEST(SinkAnalysis, BadParametersAreRefused) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  auto bad = [&](SinkParams p, const std::string& what) {
    testing::ExpectInvalidArgumentNaming(
        RunSinkAnalysis(*model, {OrdinarySequence(8, 0)}, p, nullptr, nullptr).status(), what);
  };
  SinkParams p;
  p.window = 1;
  bad(p, "window");
  p = SinkParams{};
  p.epsilon = 0;
  bad(p, "epsilon");
  p.epsilon = 1.5;
  bad(p, "epsilon");
  p = SinkParams{};
  p.layers = {6};
  bad(p, "layer 6");
  auto short_seq = RunSinkAnalysis(*model, {{1}}, SinkParams{}, nullptr, nullptr);
  EXPECT_FALSE(short_seq.ok());
}

// eq. 27 recomputed in float64 from rotated queries and keys computed
// independently from the checkpoint's weights (tests/engine/llama2c_reference.h:
// a float64 forward sharing no code with the engine).
void CheckAgainstRecomputation(const std::string& rel) {
  std::string path = testing::SharedFile(rel);
  if (path.empty()) { SINKSCOPE_SKIP_MISSING("shared data missing: " << rel); }
  auto ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto model = MakeCpuModel(*ck);
  const ModelConfig& c = model->config();
  std::vector<int64_t> ids = {1};
  for (int64_t i = 1; i < 48; ++i) ids.push_back((i * 37 + 11) % c.d_vocab);
  SinkParams p;
  p.window = 40;  // the sequence is cut to its first 40 tokens
  auto r = RunSinkAnalysis(*model, {ids}, p, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  const int64_t T = 40;
  testing::Llama2cFloat64 reference;
  std::string error;
  ASSERT_TRUE(reference.Load(path, &error)) << error;
  ASSERT_EQ(reference.n_heads, c.n_heads);
  ASSERT_EQ(reference.n_kv_heads, c.n_kv_heads);
  const std::vector<int64_t> cut(ids.begin(), ids.begin() + T);
  const testing::Llama2cFloat64::Trace trace = reference.Forward(cut);
  const int64_t dh = reference.head_size();
  double ratio = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    int64_t sinks = 0;
    const at::Tensor q = at::tensor(trace.rot_q[l], at::kDouble).view({T, c.n_heads, dh});
    const at::Tensor k = at::tensor(trace.rot_k[l], at::kDouble).view({T, c.n_kv_heads, dh});
    for (int64_t h = 0; h < c.n_heads; ++h) {
      const int64_t kv = h / (c.n_heads / c.n_kv_heads);
      at::Tensor qh = q.select(1, h);   // [pos, d_head]
      at::Tensor kh = k.select(1, kv);  // [pos, d_head]
      at::Tensor s = at::matmul(qh, kh.t()) / std::sqrt(static_cast<double>(c.d_head));
      at::Tensor causal = at::ones({T, T}, at::kDouble).triu(1).to(at::kBool);
      at::Tensor A = at::softmax(s.masked_fill(causal, -INFINITY), -1);
      at::Tensor alpha = A.sum(0) / static_cast<double>(T);  // eq. 27
      const double max_alpha = alpha.narrow(0, 0, T / 2).max().item<double>();
      const HeadSinkStats& got = r->layers[l].heads[h];
      // float32 engine vs float64 reference: 1e-5 absolute; bfloat16: the
      // engine's whole forward rounds (2e-2).
      EXPECT_NEAR(got.max_importance, max_alpha, TestTolerance(1e-5, 2e-2)) << "layer " << l << " head " << h;
      EXPECT_NEAR(got.gu_first_key_score, alpha[0].item<double>(), TestTolerance(1e-5, 2e-2));
      EXPECT_EQ(got.is_sink_head, max_alpha > 0.3);
      // Mean attention distance sum_t sum_k A[t,k](t-k)/T.
      double dist = 0;
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t kk = 0; kk <= t; ++kk) dist += A[t][kk].item<double>() * (t - kk);
      }
      EXPECT_NEAR(got.mean_attention_distance, dist / T, TestTolerance(1e-4, 5e-2 * std::max(1.0, dist / T)));
      sinks += max_alpha > 0.3;
    }
    ratio += static_cast<double>(sinks) / c.n_heads;
  }
  EXPECT_NEAR(r->sink_ratio, ratio / c.n_layers, 1e-12);
}

TEST(SinkAnalysis, Stories260KMatchesFloat64Recomputation) {
  ASSERT_NO_FATAL_FAILURE(CheckAgainstRecomputation("models/stories260K/stories260K.bin"));
}
TEST(SinkAnalysis, Aidreams260KMatchesFloat64Recomputation) {
  ASSERT_NO_FATAL_FAILURE(CheckAgainstRecomputation("models/aidreams260K/aidreams260K.bin"));
}

// ---- O(T) statistics (query chunks) against the materialised pattern ----

/// Per-head statistics of one sequence's pattern, from their definitions on the
/// materialised attn.hook_pattern / attn.hook_attn_scores of the eager path.
struct MaterialisedHead {
  double max_importance = 0, gu = 0, dist = 0, dist_wo = 0, gap = 0;
  int64_t argmax = 0;
  bool has_dist_wo = false, has_gap = false;
};

/// A [q, k] float64 pattern and its scores (-inf where not visible) -> statistics.
MaterialisedHead FromDefinitions(const at::Tensor& A, const at::Tensor& S) {
  const int64_t T = A.size(0);
  MaterialisedHead m;
  at::Tensor alpha = A.sum(0) / static_cast<double>(T);  // eq. 27
  auto best = alpha.narrow(0, 0, std::max<int64_t>(1, T / 2)).max(0);
  m.max_importance = std::get<0>(best).item<double>();
  m.argmax = std::get<1>(best).item<int64_t>();
  m.gu = alpha[0].item<double>();
  const int64_t ks = m.argmax;
  double dist = 0, dist_wo = 0, gap = 0;
  int64_t n_wo = 0, n_gap = 0;
  auto a = A.accessor<double, 2>();
  auto sc = S.accessor<double, 2>();
  for (int64_t t = 0; t < T; ++t) {
    double mass = 0, d = 0, other = 0;
    int64_t n_other = 0;
    for (int64_t k = 0; k < T; ++k) {
      dist += a[t][k] * (t - k);
      if (k != ks) {
        mass += a[t][k];
        d += a[t][k] * (t - k);
        if (std::isfinite(sc[t][k])) {
          other += sc[t][k];
          ++n_other;
        }
      }
    }
    if (mass > 1e-12) {
      dist_wo += d / mass;
      ++n_wo;
    }
    if (t > ks && n_other > 0) {  // a sink key outside the window counts as score 0
      gap += (std::isfinite(sc[t][ks]) ? sc[t][ks] : 0.0) - other / n_other;
      ++n_gap;
    }
  }
  m.dist = dist / T;
  m.has_dist_wo = n_wo > 0;
  m.dist_wo = n_wo ? dist_wo / n_wo : 0;
  m.has_gap = n_gap > 0;
  m.gap = n_gap ? gap / n_gap : 0;
  return m;
}

/// The sink analysis and the self-attention profile with query chunks of
/// `chunk` rows equal the statistics of the materialised pattern (1e-6).
void ExpectChunkedEqualsMaterialised(const ModelConfig& config, int64_t T, int64_t chunk,
                                     int64_t n_seq) {
  SINKSCOPE_FLOAT32_ONLY("compares two float32 computations to 1e-6");
  // Weights of std 0.15: scores of a few units, where float32 rounding of a
  // score (different vector lanes per chunk) moves A by well under 1e-6.
  auto model = MakeCpuModel(RandomCheckpoint(config, 29, 0.15));
  std::vector<std::vector<int64_t>> seqs;
  for (int64_t s = 0; s < n_seq; ++s) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < T; ++i) ids.push_back((i * (5 + 2 * s) + 3 * s + 1) % config.d_vocab);
    seqs.push_back(ids);
  }
  SinkParams p;
  p.window = T;
  p.query_chunk = chunk;
  auto r = RunSinkAnalysis(*model, seqs, p, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  SelfAttentionParams sp;
  for (int64_t l = 0; l < config.n_layers; ++l) sp.layers.push_back(l);
  sp.query_chunk = chunk;
  auto prof = RunSelfAttentionProfile(*model, seqs, sp, nullptr, nullptr);
  ASSERT_TRUE(prof.ok()) << prof.status();

  std::map<int64_t, at::Tensor> pattern, scores;  // layer -> [seq, head, q, k] float64
  HookRegistry hooks;
  for (int64_t l = 0; l < config.n_layers; ++l) {
    hooks.AddProbe(HookName(l, "attn.hook_pattern"),
                   [&, l](auto&, auto, const at::Tensor& t) { pattern[l] = t.to(at::kDouble); });
    hooks.AddProbe(HookName(l, "attn.hook_attn_scores"),
                   [&, l](auto&, auto, const at::Tensor& t) { scores[l] = t.to(at::kDouble); });
  }
  std::vector<int64_t> flat;
  for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
  ASSERT_TRUE(model->Forward(at::tensor(flat, at::TensorOptions().dtype(at::kLong)).view({n_seq, T}),
                             hooks)
                  .ok());
  const int64_t H = config.n_heads;
  ASSERT_EQ(r->layers.size(), static_cast<size_t>(config.n_layers));
  for (int64_t l = 0; l < config.n_layers; ++l) {
    for (int64_t h = 0; h < H; ++h) {
      double mi = 0, gu = 0, dist = 0, dist_wo = 0, gap = 0;
      int64_t n_wo = 0, n_gap = 0;
      std::map<int64_t, int64_t> votes;
      for (int64_t s = 0; s < n_seq; ++s) {
        const MaterialisedHead m =
            FromDefinitions(pattern[l][s][h].contiguous(), scores[l][s][h].contiguous());
        mi += m.max_importance / n_seq;
        gu += m.gu / n_seq;
        dist += m.dist / n_seq;
        if (m.has_dist_wo) { dist_wo += m.dist_wo; ++n_wo; }
        if (m.has_gap) { gap += m.gap; ++n_gap; }
        votes[m.argmax]++;
      }
      const HeadSinkStats& got = r->layers[l].heads[h];
      const std::string where = absl::StrCat("T ", T, " chunk ", chunk, " layer ", l, " head ", h);
      EXPECT_NEAR(got.max_importance, mi, 1e-6) << where;
      EXPECT_NEAR(got.gu_first_key_score, gu, 1e-6) << where;
      EXPECT_NEAR(got.mean_attention_distance, dist, 1e-6 * std::max(1.0, dist)) << where;
      const double wo = n_wo ? dist_wo / n_wo : 0;
      EXPECT_NEAR(got.mean_attention_distance_without_sink, wo, 1e-6 * std::max(1.0, wo)) << where;
      const double g = n_gap ? gap / n_gap : 0;
      EXPECT_NEAR(got.mean_logit_gap, g, 1e-6 * std::max(1.0, std::fabs(g))) << where;
      if (n_seq == 1) EXPECT_EQ(got.argmax_key, votes.begin()->first) << where;
    }
    // Self-attention profile: mean over heads of A[t, t].
    ASSERT_EQ(prof->layers[l].per_token.size(), static_cast<size_t>(n_seq));
    for (int64_t s = 0; s < n_seq; ++s) {
      at::Tensor diag = pattern[l][s].diagonal(0, -2, -1).mean(0);  // [pos]
      ASSERT_EQ(prof->layers[l].per_token[s].size(), static_cast<size_t>(T));
      for (int64_t t = 0; t < T; ++t) {
        EXPECT_NEAR(prof->layers[l].per_token[s][t], diag[t].item<double>(), 1e-6)
            << "self-attention layer " << l << " seq " << s << " pos " << t;
      }
    }
  }
}

ModelConfig LongConfig(const std::string& family, int64_t n_ctx) {
  ModelConfig c = testing::SmallConfig(family);
  c.n_ctx = n_ctx;
  return c;
}

// T not a multiple of the chunk; GQA (4 query heads on 2 kv heads).
TEST(ChunkedAttentionStatistics, GqaEqualsMaterialised) {
  ModelConfig c = LongConfig("llama3", 128);
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(c, 37, 8, 1));
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(c, 37, 37, 1));  // one chunk
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(c, 50, 7, 2));   // a batch of two sequences
}

// Sliding window 5 (Mistral): chunks see only keys [q0 - 4, q1).
TEST(ChunkedAttentionStatistics, SlidingWindowEqualsMaterialised) {
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(LongConfig("mistral", 128), 41, 6, 1));
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(LongConfig("mistral", 128), 41, 3, 2));  // chunk < window
}

// Gemma 2: soft-capped scores, windowed and global layers alternating, a
// query scale that is not 1/sqrt(d_head), sandwich norms.
TEST(ChunkedAttentionStatistics, SoftCapAndLayerWindowsEqualMaterialised) {
  ModelConfig c = LongConfig("sandwich", 128);
  c.n_layers = 3;
  c.n_kv_heads = 2;
  c.attn_softcap = 5.0;
  c.attn_scale = 1.0 / std::sqrt(12.0);
  c.layer_windows = {6, 0, 6};
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(c, 45, 8, 1));
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(c, 45, 64, 2));
}

// Sigmoid attention (Gu et al.): unnormalised rows, the same statistics from chunks.
TEST(ChunkedAttentionStatistics, SigmoidAttentionEqualsMaterialised) {
  ModelConfig c = LongConfig("llama3", 128);
  c.attn_fn = AttnFn::kSigmoid;
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(c, 37, 8, 1));
  ASSERT_NO_FATAL_FAILURE(ExpectChunkedEqualsMaterialised(c, 50, 7, 2));
}

// The layer output from query chunks (soft-cap; a window shorter than T)
// equals the eager path's, per hook and in the logits, with several chunks.
TEST(ChunkedAttentionStatistics, ChunkedOutputEqualsEager) {
  SINKSCOPE_FLOAT32_ONLY("compares two float32 computations to 1e-5");
  ModelConfig c = LongConfig("sandwich", 4096);
  c.n_kv_heads = 2;
  c.attn_softcap = 5.0;
  c.layer_windows = {0, 700};
  auto model = MakeCpuModel(RandomCheckpoint(c, 31, 0.3));
  const int64_t T = 2500;  // > kAttentionChunkElements / (heads x T): several chunks
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < T; ++i) ids.push_back((i * 11 + 5) % c.d_vocab);
  at::Tensor tokens = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, T});
  auto collect = [&](bool eager, std::map<std::string, at::Tensor>* seen) {
    HookRegistry hooks;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      hooks.AddProbe(HookName(l, "attn.hook_z"), [seen](const std::string& n, int64_t,
                                                          const at::Tensor& t) {
        (*seen)[n] = t.to(at::kDouble);
      });
      if (eager) hooks.AddProbe(HookName(l, "attn.hook_pattern"), [](auto&, auto, auto&) {});
    }
    return model->Forward(tokens, hooks);
  };
  std::map<std::string, at::Tensor> chunked, eager;
  auto a = collect(false, &chunked);
  auto b = collect(true, &eager);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  for (const auto& [name, t] : chunked) {
    EXPECT_LT((t - eager.at(name)).abs().max().item<double>(), 1e-5) << name;
  }
  EXPECT_LT((*a - *b).abs().max().item<double>(), 1e-5 * std::max(1.0, b->abs().max().item<double>()));
}

TEST(SelfAttentionProfile, DiagonalGroupedByTokenClass) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  std::vector<std::vector<int64_t>> seqs = {{1, 10, 11, 40, 12, 13, 40, 14},
                                            {1, 40, 20, 21, 22}};
  SelfAttentionParams p;
  p.delimiter_ids = {40};
  std::vector<int64_t> streamed;
  auto r = RunSelfAttentionProfile(*model, seqs, p,
                                   [&](const SelfAttentionLayer& l) { streamed.push_back(l.layer); },
                                   nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  // Default layers: up to the step-up block's layer (block 4 = layer 1).
  EXPECT_EQ(r->profiled_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(streamed, r->profiled_layers);
  // Position 0 attends only to itself: A[0,0] = 1 in every head.
  for (const auto& layer : r->layers) {
    EXPECT_NEAR(layer.group_mean[0], 1.0, 1e-6);
    EXPECT_EQ(layer.group_count[0], 2);
    EXPECT_EQ(layer.group_count[1], 3);
    EXPECT_EQ(layer.group_count[2], 8);
    // Group means are the means of the per-token values.
    double delim = 0;
    delim += layer.per_token[0][3] + layer.per_token[0][6] + layer.per_token[1][1];
    EXPECT_NEAR(layer.group_mean[1], delim / 3, 1e-6);
  }
  SelfAttentionParams bad;
  bad.layers = {9};
  EXPECT_FALSE(RunSelfAttentionProfile(*model, seqs, bad, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace sinkscope
