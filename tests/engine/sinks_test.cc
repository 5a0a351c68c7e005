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

#include "tests/engine/fixtures.h"
#include "tests/engine/llama2c_reference.h"
#include "tests/engine/test_util.h"

namespace sinkscope {
namespace {

using testing::PlantedCheckpoint;
using testing::PlantedSpec;
using testing::PlantedTruth;

using testing::MakeCpuModel;
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
