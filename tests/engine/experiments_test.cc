// Causal experiments: perplexity against an independent float64 computation,
// constant substitution and sink ablation on the planted-mechanism fixture.
#include "worker/engine/experiments.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "tests/engine/fixtures.h"
#include "tests/engine/llama2c_reference.h"
#include "tests/engine/test_util.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {
namespace {

using testing::PlantedCheckpoint;
using testing::PlantedSpec;
using testing::PlantedTruth;

using testing::MakeCpuModel;
using testing::TestTolerance;

std::vector<int64_t> ShakespeareSlice(int64_t vocab, std::string* why_skip) {
  std::string corpus = testing::SharedFile("corpora/tinyshakespeare.txt");
  std::string tokp = testing::SharedFile("models/aidreams260K/tok512.bin");
  if (corpus.empty() || tokp.empty()) {
    *why_skip = "shared corpus or tokenizer missing";
    return {};
  }
  std::ifstream in(corpus);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str().substr(0, 3000);  // fixed slice: first 3000 bytes
  auto tok = LoadTokenizer(tokp, vocab);
  EXPECT_TRUE(tok.ok());
  auto ids = (*tok)->Encode(text, true);
  EXPECT_TRUE(ids.ok());
  return *ids;
}

void CheckPerplexity(const std::string& model_rel) {
  std::string path = testing::SharedFile(model_rel);
  if (path.empty()) { SINKSCOPE_SKIP_MISSING("shared data missing: " << model_rel); }
  auto ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto model = MakeCpuModel(*ck);
  // The reference: a float64 forward of the same file sharing no code with
  // the engine (tests/engine/llama2c_reference.h), context reset per chunk.
  testing::Llama2cFloat64 reference;
  std::string error;
  ASSERT_TRUE(reference.Load(path, &error)) << error;
  std::string why;
  std::vector<int64_t> ids = ShakespeareSlice(512, &why);
  if (ids.empty()) { SINKSCOPE_SKIP_MISSING(why); }
  ASSERT_GT(ids.size(), 300u);
  ids.resize(300);
  for (int64_t chunk : {128, 100}) {
    EvalParams p;
    p.chunk_length = chunk;
    std::vector<ChunkRecord> streamed;
    auto r = RunPerplexity(*model, ids, p, [&](const ChunkRecord& c) { streamed.push_back(c); },
                           nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    // Documented difference between chunkings: the first token of each chunk is unscored.
    const int64_t n_chunks = (300 + chunk - 1) / chunk;
    EXPECT_EQ(r->n_scored, 300 - n_chunks);
    EXPECT_EQ(static_cast<int64_t>(streamed.size()), n_chunks);
    double ref = 0;
    for (int64_t s = 0; s < 300; s += chunk) {
      std::vector<int64_t> c(ids.begin() + s, ids.begin() + std::min<int64_t>(300, s + chunk));
      const double nll = reference.NllSum(c);
      // float32 engine vs float64 reference: 1e-5 relative (bfloat16: 3e-2).
      EXPECT_NEAR(streamed[s / chunk].nll_sum, nll, TestTolerance(1e-5, 3e-2) * nll);
      ref += nll;
    }
    const double ref_ppl = std::exp(ref / (300 - n_chunks));
    EXPECT_NEAR(r->perplexity, ref_ppl, TestTolerance(1e-5, 3e-2) * ref_ppl) << model_rel << " chunk " << chunk;
    std::printf("%s: perplexity %.6f over %lld tokens (chunks of %lld)\n", model_rel.c_str(),
                r->perplexity, static_cast<long long>(r->n_scored), static_cast<long long>(chunk));
  }
}

TEST(Perplexity, Aidreams260KOnShakespeareSlice) {
  ASSERT_NO_FATAL_FAILURE(CheckPerplexity("models/aidreams260K/aidreams260K.bin"));
}
TEST(Perplexity, Stories260KOnSameIds) {
  ASSERT_NO_FATAL_FAILURE(CheckPerplexity("models/stories260K/stories260K.bin"));
}

TEST(Perplexity, BadRequests) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  EvalParams p;
  EXPECT_FALSE(RunPerplexity(*model, {}, p, nullptr, nullptr).ok()) << "empty corpus";
  p.token_budget = 0;
  auto r = RunPerplexity(*model, {1, 2, 3, 4}, p, nullptr, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("token_budget"), std::string::npos);
  p = EvalParams{};
  p.chunk_length = 1;
  EXPECT_FALSE(RunPerplexity(*model, {1, 2, 3}, p, nullptr, nullptr).ok());
  p = EvalParams{};
  auto bad_id = RunPerplexity(*model, {1, 2, 300}, p, nullptr, nullptr);
  ASSERT_FALSE(bad_id.ok());
  EXPECT_NE(bad_id.status().message().find("300"), std::string::npos);
}

std::vector<int64_t> PlantedCorpus(int64_t n_chunks, int64_t len) {
  std::vector<int64_t> ids;
  for (int64_t c = 0; c < n_chunks; ++c) {
    ids.push_back(1);  // BOS: the spike token of each chunk
    for (int64_t i = 1; i < len; ++i) ids.push_back(10 + (c * 13 + i * 7) % 50);
  }
  return ids;
}

InterventionSpec Substitution(SubstitutionSpec::Mode mode, int64_t block) {
  InterventionSpec s;
  s.kind = InterventionSpec::Kind::kSubstitution;
  s.substitution.mode = mode;
  s.substitution.block = block;
  return s;
}

TEST(ConstantSubstitution, MeanKeepsPerplexityZeroBreaksIt) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  const std::vector<int64_t> corpus = PlantedCorpus(3, 32);
  ExperimentParams p;
  p.eval.chunk_length = 32;
  p.interventions = {Substitution(SubstitutionSpec::Mode::kMean, 0)};  // 0 = after step-up
  auto mean = RunInterventionExperiment(*model, corpus, p, nullptr, nullptr);
  ASSERT_TRUE(mean.ok()) << mean.status();
  EXPECT_EQ(mean->substitution_blocks, std::vector<int64_t>{truth.step_up_block});
  ASSERT_EQ(mean->substitution_values.size(), 1u);
  EXPECT_NEAR(mean->substitution_values[0][truth.spike_channel], 1279.6, 13.0);
  EXPECT_NEAR(mean->intervened_perplexity, mean->baseline_perplexity,
              1e-4 * mean->baseline_perplexity);
  EXPECT_LT(mean->kl.all, 1e-9) << "the spike token's state is constant there";
  EXPECT_EQ(mean->kl.n_spike, 3) << "one spike token (position 0) per chunk";

  p.interventions = {Substitution(SubstitutionSpec::Mode::kZero, 0)};
  auto zero = RunInterventionExperiment(*model, corpus, p, nullptr, nullptr);
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_GT(std::fabs(zero->intervened_perplexity - zero->baseline_perplexity),
            100 * std::fabs(mean->intervened_perplexity - mean->baseline_perplexity) + 1e-3);
  EXPECT_GT(zero->kl.spike, 0.1) << "the zeroed token's own prediction changes";
  EXPECT_GT(zero->kl.all, 1000 * std::max(mean->kl.all, 1e-12));
  ASSERT_FALSE(zero->residual_shifts.empty());
  EXPECT_GT(zero->residual_shifts[0].relative_change_spike, 0.5);
  std::printf("planted: baseline ppl %.4f, mean-substituted %.4f, zeroed %.4f; KL mean %.3g zero %.3g\n",
              mean->baseline_perplexity, mean->intervened_perplexity, zero->intervened_perplexity,
              mean->kl.all, zero->kl.all);
}

TEST(ConstantSubstitution, WritingBackTheSameTensorHasZeroKl) {
  SINKSCOPE_FLOAT32_ONLY("reads the float32 hook tensor directly");
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  // A constant equal to the state itself, taken from a first run.
  const std::vector<int64_t> corpus = PlantedCorpus(2, 16);
  at::Tensor state;
  HookRegistry probe;
  probe.AddProbe("blocks.1.hook_resid_post",
                 [&](auto&, auto, const at::Tensor& t) { state = t[0][0].clone(); });
  std::vector<int64_t> first(corpus.begin(), corpus.begin() + 16);
  ASSERT_TRUE(
      model->Forward(at::tensor(first, at::TensorOptions().dtype(at::kLong)).view({1, -1}), probe)
          .ok());
  ExperimentParams p;
  p.eval.chunk_length = 16;
  InterventionSpec s = Substitution(SubstitutionSpec::Mode::kConstant, 4);
  s.substitution.constant.assign(state.data_ptr<float>(), state.data_ptr<float>() + state.numel());
  s.substitution.positions = {0};
  p.interventions = {s};
  auto r = RunInterventionExperiment(*model, corpus, p, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kl.all, 0.0);
  EXPECT_EQ(r->intervened_perplexity, r->baseline_perplexity);
}

// Ablating the planted sink heads of one layer changes, in that layer and
// every earlier one, the attention pattern of exactly those heads (all other
// heads bit-identical); later layers respond only through the residual stream.
TEST(SinkAblation, MaskChangesExactlyThePlantedHeads) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  const ModelConfig& c = model->config();
  std::vector<int64_t> ids = PlantedCorpus(1, 24);
  at::Tensor tokens = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  auto patterns = [&](const std::vector<std::pair<int64_t, int64_t>>& heads) {
    std::map<int64_t, at::Tensor> out;
    HookRegistry hooks;
    if (!heads.empty()) {
      AblationSpec a;
      a.method = AblationSpec::Method::kMask;
      a.heads = heads;
      EXPECT_TRUE(RegisterAblation(c, a, 24, &hooks).ok());
    }
    for (int64_t l = 0; l < c.n_layers; ++l) {
      hooks.AddProbe(HookName(l, "attn.hook_pattern"),
                     [&out, l](auto&, auto, const at::Tensor& t) { out[l] = t[0].clone(); });
    }
    EXPECT_TRUE(model->Forward(tokens, hooks).ok());
    return out;
  };
  auto base = patterns({});
  for (int64_t layer : {2, 3}) {
    std::vector<std::pair<int64_t, int64_t>> heads;
    for (auto lh : truth.sink_heads) {
      if (lh.first == layer) heads.push_back(lh);
    }
    auto abl = patterns(heads);
    std::set<std::pair<int64_t, int64_t>> changed;
    for (int64_t l = 0; l <= layer; ++l) {
      for (int64_t h = 0; h < c.n_heads; ++h) {
        if (!base[l][h].equal(abl[l][h])) changed.emplace(l, h);
      }
    }
    const std::set<std::pair<int64_t, int64_t>> want(heads.begin(), heads.end());
    EXPECT_EQ(changed, want) << "layer " << layer;
    for (auto [l, h] : heads) {
      EXPECT_LT((abl[l][h].sum(-1) - 1).abs().max().item<double>(), 1e-5) << "renormalised";
      EXPECT_EQ(abl[l][h].narrow(0, 1, 23).select(1, 0).abs().max().item<double>(), 0.0)
          << "no mass on the sink key beyond row 0";
      EXPECT_GT((base[l][h] - abl[l][h]).abs().max().item<double>(), 0.5);
    }
  }
}

TEST(SinkAblation, ExperimentReportsPerHeadEffects) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  ExperimentParams p;
  p.eval.chunk_length = 32;
  InterventionSpec a;
  a.kind = InterventionSpec::Kind::kAblation;
  a.ablation.method = AblationSpec::Method::kZeroProb;  // heads: detected sink heads
  p.interventions = {a};
  auto r = RunInterventionExperiment(*model, PlantedCorpus(2, 32), p, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  using HeadSet = std::set<std::pair<int64_t, int64_t>>;
  const HeadSet ablated(r->ablated_heads.begin(), r->ablated_heads.end());
  const HeadSet planted(truth.sink_heads.begin(), truth.sink_heads.end());
  EXPECT_EQ(ablated, planted);
  // One effect per ablated head, each of the planted heads.
  ASSERT_EQ(r->head_effects.size(), planted.size());
  HeadSet with_effect;
  for (const auto& e : r->head_effects) with_effect.emplace(e.layer, e.head);
  EXPECT_EQ(with_effect, planted);
  for (const auto& e : r->head_effects) {
    // All mass was on the sink at distance t: removing it without renormalising
    // leaves little mass, so the distance sum collapses.
    EXPECT_GT(e.distance_baseline, 10.0);
    EXPECT_LT(e.distance_intervened, 0.5 * e.distance_baseline);
  }
}

TEST(Experiments, BadRequestsAreRefused) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  const std::vector<int64_t> corpus = PlantedCorpus(1, 16);
  auto bad = [&](ExperimentParams p, const std::vector<int64_t>& toks, const std::string& what) {
    auto r = RunInterventionExperiment(*model, toks, p, nullptr, nullptr);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status();
  };
  ExperimentParams p;
  p.eval.chunk_length = 16;
  p.interventions = {Substitution(SubstitutionSpec::Mode::kZero, 13)};
  bad(p, corpus, "block 13");
  InterventionSpec wrong = Substitution(SubstitutionSpec::Mode::kConstant, 4);
  wrong.substitution.constant = {1, 2, 3};
  p.interventions = {wrong};
  bad(p, corpus, "width 3");
  InterventionSpec head;
  head.kind = InterventionSpec::Kind::kAblation;
  head.ablation.heads = {{1, 4}};
  p.interventions = {head};
  bad(p, corpus, "head 4");
  p.interventions = {Substitution(SubstitutionSpec::Mode::kZero, 4)};
  bad(p, {}, "empty");
  p.eval.token_budget = 0;
  bad(p, corpus, "token_budget");
  p.eval.token_budget = -1;
  p.interventions = {Substitution(SubstitutionSpec::Mode::kMean, 4)};
  p.calibration = {{10, 11, 12, 13}};  // no spike token
  bad(p, corpus, "no spike token");
}

}  // namespace
}  // namespace sinkscope
