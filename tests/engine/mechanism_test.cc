// Mechanism analyses: block attribution of spikes (scan), ffn-quadratic,
// silu-regime, vo-circuit and activations, against planted fixtures, explicit
// float64 constructions in the test and the engine's own hook tensors.
#include "worker/engine/mechanism.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "tests/engine/fixtures.h"
#include "tests/engine/test_util.h"
#include "worker/engine/activations.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/scan.h"

namespace sinkscope {
namespace {

using testing::MakeCpuModel;
using testing::PlantedCheckpoint;
using testing::PlantedSpec;
using testing::PlantedTruth;

const std::vector<std::vector<int64_t>> kSeqs = {{1, 10, 11, 12, 13, 14, 15, 16},
                                                 {1, 20, 21, 22, 23, 24, 25, 26, 27, 28}};

// ---- block attribution ----

TEST(BlockAttribution, DecompositionSumsToTheObservedPeakAndNamesPlantedBlocks) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  auto r = RunActivationScan(*model, kSeqs, ScanParams{}, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step_up_blocks, std::vector<int64_t>{truth.step_up_block});
  EXPECT_EQ(r->step_down_blocks, std::vector<int64_t>{truth.step_down_block});
  ASSERT_EQ(r->attributions.size(), r->spike_entries.size());
  ASSERT_EQ(r->attributions.size(), 2u);
  // Independent check of the decomposition: the test's own probes of
  // hook_embed and every block output at the entry, summed in float64.
  for (const SpikeAttribution& a : r->attributions) {
    EXPECT_EQ(a.entry.channel, truth.spike_channel);
    EXPECT_EQ(a.entry.position, 0);
    EXPECT_NEAR(a.sum_to_peak, a.entry.value, 4 * 1e-7 * std::fabs(a.entry.value))
        << "decomposition sums back to the observed value (float32 rounding)";
    HookRegistry hooks;
    double embed = 0, sum = 0, observed = 0;
    std::vector<double> outs(12, 0);
    const int64_t s = a.entry.sequence, k = a.entry.channel;
    hooks.AddProbe("hook_embed", [&](const std::string&, int64_t, const at::Tensor& t) {
      embed = t[0][0][k].item<double>();
    });
    for (int64_t b = 1; b <= 12; ++b) {
      hooks.AddProbe(BlockId::FromBlock(b).output_hook(),
                     [&, b](const std::string&, int64_t, const at::Tensor& t) {
                       outs[b - 1] = t[0][0][k].item<double>();
                     });
    }
    hooks.AddProbe(BlockId::FromBlock(a.peak_block).resid_hook(),
                   [&](const std::string&, int64_t, const at::Tensor& t) {
                     observed = t[0][0][k].item<double>();
                   });
    at::Tensor tokens = at::tensor(kSeqs[s], at::kLong).view({1, -1});
    ASSERT_TRUE(model->RunHooks(tokens, hooks, nullptr).ok());
    EXPECT_EQ(a.entry.value, static_cast<float>(observed));
    EXPECT_EQ(a.embed, static_cast<float>(embed));
    sum = embed;
    for (int64_t b = 1; b <= a.peak_block; ++b) sum += outs[b - 1];
    EXPECT_NEAR(sum, observed, 1e-6 * std::fabs(observed));
    for (int64_t b = 1; b <= 12; ++b) EXPECT_EQ(a.contributions[b - 1], static_cast<float>(outs[b - 1]));
    EXPECT_EQ(a.step_up_blocks, std::vector<int64_t>{truth.step_up_block});
    EXPECT_EQ(a.step_down_blocks, std::vector<int64_t>{truth.step_down_block});
  }
  EXPECT_EQ(LastStepUpBlockOfLargestSpike(*r), truth.step_up_block);
  // The single-block variant finds the same blocks on a one-block injection.
  ScanParams single;
  single.step_rule = ScanParams::StepRule::kSingleBlock;
  auto r1 = RunActivationScan(*model, kSeqs, single, nullptr, nullptr);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->step_up_blocks, std::vector<int64_t>{truth.step_up_block});
  EXPECT_EQ(r1->step_down_blocks, std::vector<int64_t>{truth.step_down_block});
}

TEST(BlockAttribution, GradualInjectionOverThreeBlocks) {
  PlantedTruth truth;
  PlantedSpec spec;
  spec.gradual = true;
  auto model = MakeCpuModel(PlantedCheckpoint(spec, &truth));
  auto r = RunActivationScan(*model, kSeqs, ScanParams{}, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->spike_channels, std::vector<int64_t>{truth.spike_channel});
  EXPECT_EQ(r->step_up_blocks, truth.step_up_blocks) << "the share rule names exactly the three";
  EXPECT_EQ(r->step_down_blocks, std::vector<int64_t>{truth.step_down_block});
  ASSERT_FALSE(r->attributions.empty());
  for (const SpikeAttribution& a : r->attributions) {
    EXPECT_EQ(a.step_up_blocks, truth.step_up_blocks);
    EXPECT_NEAR(a.sum_to_peak, a.entry.value, 4e-7 * std::fabs(a.entry.value));
    EXPECT_EQ(a.embed, 0.f) << "the planted embedding has nothing on channel k";
    // Planted shares: each block adds (20/3) SiLU(h~) h~ with h~ ~ 8, a third of the peak.
    for (size_t i = 0; i < truth.step_up_blocks.size(); ++i) {
      const float c = a.contributions[truth.step_up_blocks[i] - 1];
      EXPECT_NEAR(c / a.entry.value, truth.step_up_shares[i], 0.02)
          << "block " << truth.step_up_blocks[i];
      EXPECT_NEAR(c, 20.0 / 3.0 * 8.0 * 8.0 / (1 + std::exp(-8.0)), 0.02 * c);
    }
    for (int64_t b = 1; b <= a.peak_block; ++b) {
      if (std::count(truth.step_up_blocks.begin(), truth.step_up_blocks.end(), b)) continue;
      EXPECT_EQ(a.contributions[b - 1], 0.f) << "block " << b << " writes nothing on k";
    }
  }
  EXPECT_EQ(LastStepUpBlockOfLargestSpike(*r), 8);
  ScanParams single;
  single.step_rule = ScanParams::StepRule::kSingleBlock;
  auto r1 = RunActivationScan(*model, kSeqs, single, nullptr, nullptr);
  ASSERT_TRUE(r1.ok());
  EXPECT_TRUE(r1->step_up_blocks.empty()) << "no single block carries half of the peak";
}

// ---- ffn-quadratic ----

/// Explicit U_k = sum_i W_down[k,i] W_gate[i,:]^T W_up[i,:] in float64, gain folded,
/// from the checkpoint tensors (no engine code).
at::Tensor ExplicitUk(const Checkpoint& ck, int64_t layer, int64_t k) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  at::Tensor g = ck.tensors.at(p + "mlp.gate_proj.weight").to(at::kDouble);
  at::Tensor u = ck.tensors.at(p + "mlp.up_proj.weight").to(at::kDouble);
  at::Tensor d = ck.tensors.at(p + "mlp.down_proj.weight").to(at::kDouble);
  at::Tensor gain = ck.tensors.at(p + "post_attention_layernorm.weight").to(at::kDouble);
  g = g * gain.view({1, -1});
  u = u * gain.view({1, -1});
  const int64_t D = g.size(1);
  at::Tensor U = at::zeros({D, D}, at::kDouble);
  auto dk = d[k];
  for (int64_t i = 0; i < g.size(0); ++i) U += dk[i].item<double>() * at::outer(g[i], u[i]);
  return U;
}

void CheckFrobeniusAgainstExplicit(const Checkpoint& ck, const std::string& what) {
  auto model = MakeCpuModel(ck);
  ASSERT_TRUE(model);
  const int64_t D = ck.config.d_model;
  for (int64_t layer : {int64_t{0}, ck.config.n_layers - 1}) {
    auto w = FoldedFfnWeights(*model, layer);
    ASSERT_TRUE(w.ok()) << w.status();
    at::Tensor fast = FfnFrobeniusNorms(*w, /*row_chunk=*/7);  // chunks that do not divide d_ffn
    for (int64_t k : {int64_t{0}, D / 3, D - 1}) {
      at::Tensor U = ExplicitUk(ck, layer, k);
      const double expected = U.norm().item<double>();
      EXPECT_NEAR(fast[k].item<double>(), expected, 1e-5 * expected)
          << what << " layer " << layer << " k " << k;
      // Leading eigenvalue against a dense eigendecomposition of S_k.
      at::Tensor S = (U + U.t()) * 0.5;
      at::Tensor ev = std::get<0>(at::linalg_eigh(S));
      const int64_t arg = ev.abs().argmax().item<int64_t>();
      const double lambda1 = ev[arg].item<double>();
      Eigenpairs e = LeadingEigenpairs(*w, k, 3);
      EXPECT_NEAR(e.values[0], lambda1, 1e-6 * std::fabs(lambda1)) << what << " k " << k;
    }
  }
}

TEST(FfnQuadratic, FastFrobeniusEqualsExplicitOnRandomFixture) {
  ModelConfig c = testing::SmallConfig("llama2");  // d_model 32, d_ffn 48
  ASSERT_NE(c.d_ffn, c.d_model);
  CheckFrobeniusAgainstExplicit(testing::RandomCheckpoint(c, 7), "random");
}

TEST(FfnQuadratic, FastFrobeniusEqualsExplicitOnStories260K) {
  SKIP_IF_NO_SHARED(path, "models/stories260K/stories260K.bin");
  auto ck = LoadCheckpoint(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  CheckFrobeniusAgainstExplicit(*ck, "stories260K");
}

TEST(FfnQuadratic, FastFrobeniusEqualsExplicitOnAidreams260K) {
  SKIP_IF_NO_SHARED(path, "models/aidreams260K/aidreams260K.bin");
  auto ck = LoadCheckpoint(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  CheckFrobeniusAgainstExplicit(*ck, "aidreams260K");
}

TEST(FfnQuadratic, PlantedChannelIsTheSingleOutlierOfTheStepBlocks) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  std::map<int64_t, FfnQuadraticBlock> blocks;
  FfnQuadraticParams p;
  auto st = RunFfnQuadratic(*model, p, [&](const FfnQuadraticBlock& b) { blocks[b.id.block] = b; },
                            nullptr);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(blocks.size(), 6u);
  for (auto& [b, blk] : blocks) {
    if (b == truth.step_up_block || b == truth.step_down_block) {
      EXPECT_EQ(blk.outlier_channels, std::vector<int64_t>{truth.spike_channel}) << "block " << b;
      ASSERT_FALSE(blk.channels.empty());
      const FfnChannelSpectrum& s = blk.channels[0];
      EXPECT_TRUE(s.is_top);
      EXPECT_EQ(s.channel, truth.spike_channel);
      EXPECT_NEAR(s.frobenius_norm, 20.0, 1e-9) << "|W_down[k,0]| ||g_0|| ||u_0|| = 20";
      EXPECT_GT(s.eigen_ratio, 100.0);
      EXPECT_NEAR(std::fabs(s.eigenvalues[0]), 20.0, 1e-9);
      // Planted direction: s* = e_0 at the step-up block, e_k at the step-down block.
      const int64_t dir = b == truth.step_up_block ? truth.spike_direction : truth.spike_channel;
      double norm2 = 0;
      for (float x : s.leading_eigenvector) norm2 += double(x) * x;
      EXPECT_GT(std::fabs(s.leading_eigenvector[dir]) / std::sqrt(norm2), 0.999);
      ASSERT_FALSE(s.top_rows.empty());
      EXPECT_EQ(s.top_rows[0].row, 0) << "the planted unit";
      EXPECT_NEAR(s.top_rows[0].gate_up_cosine, 1.0, 1e-9);
      // Sampled ordinary channels: no dominant eigenvalue of that size.
      for (size_t i = 1; i < blk.channels.size(); ++i) {
        EXPECT_FALSE(blk.channels[i].is_top);
        EXPECT_LT(blk.channels[i].frobenius_norm, 0.1 * s.frobenius_norm);
      }
    } else {
      EXPECT_TRUE(blk.outlier_channels.empty()) << "block " << b;
    }
  }
}

TEST(FfnQuadratic, RefusesBadParameters) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  FfnQuadraticParams p;
  p.blocks = {3};
  EXPECT_FALSE(ValidateFfnQuadraticParams(p, model->config()).ok());
  testing::ExpectInvalidArgumentNaming(ValidateFfnQuadraticParams(p, model->config()),
                                       "attention block");
  p.blocks = {14};
  testing::ExpectInvalidArgumentNaming(ValidateFfnQuadraticParams(p, model->config()),
                                       "does not exist");
  p.blocks = {};
  p.sample_channels = 65;
  testing::ExpectInvalidArgumentNaming(ValidateFfnQuadraticParams(p, model->config()),
                                       "sample_channels");
}

// ---- silu-regime ----

TEST(SiluRegime, NearIdentityAtTheSpikeTokenOfThePlantedBlocks) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  auto r = RunSiluRegime(*model, kSeqs, SiluRegimeParams{}, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->blocks.size(), 2u);
  EXPECT_EQ(r->blocks[0].id.block, truth.step_up_block);
  EXPECT_EQ(r->blocks[1].id.block, truth.step_down_block);
  for (const SiluRegimeBlock& b : r->blocks) {
    EXPECT_EQ(b.spike.n, 2);
    // Gate pre-activation is ~8 on the planted unit: SiLU(8)/8 = 0.99966.
    EXPECT_GT(b.spike.min_cosine, 0.999) << "block " << b.id.block;
    EXPECT_NEAR(b.spike.mean_norm_ratio, 1.0, 0.01) << "block " << b.id.block;
    EXPECT_LT(b.other.mean_norm_ratio, 0.9) << "ordinary tokens sit near 0, where SiLU ~ x/2";
    EXPECT_EQ(b.channel, truth.spike_channel);
    EXPECT_LT(b.max_quadratic_error, 0.01);
    for (const SiluToken& t : b.tokens) {
      if (t.is_spike_token) {
        EXPECT_GT(t.max_abs_output, 1000.f);
      }
    }
  }
}

// ---- vo-circuit ----

TEST(VoCircuit, MatrixIsTheSumOverHeadsWithKvGroups) {
  ModelConfig c = testing::SmallConfig("llama3");  // GQA: 4 query heads, 2 KV heads
  Checkpoint ck = testing::RandomCheckpoint(c, 3);
  auto model = MakeCpuModel(ck);
  at::Tensor m = VoMatrix(*model, 1);
  // The attention output of a one-token sequence is W_VO x (pattern = 1).
  at::Tensor x;
  at::Tensor out;
  HookRegistry hooks;
  hooks.AddProbe("blocks.1.ln1.hook_normalized",
                 [&](const std::string&, int64_t, const at::Tensor& t) { x = t[0][0].to(at::kDouble); });
  hooks.AddProbe("blocks.1.hook_attn_out",
                 [&](const std::string&, int64_t, const at::Tensor& t) { out = t[0][0].to(at::kDouble); });
  ASSERT_TRUE(model->RunHooks(at::tensor(std::vector<int64_t>{5}, at::kLong).view({1, 1}), hooks, nullptr).ok());
  EXPECT_LT((at::matmul(m, x) - out).abs().max().item<double>(), 1e-5);
}

// ---- activations ----

TEST(Activations, ReturnsTheEnginesHookTensorsBitwise) {
  auto model = MakeCpuModel(testing::RandomCheckpoint(testing::SmallConfig("llama3"), 5));
  const std::vector<std::vector<int64_t>> seqs = {{1, 4, 5, 6, 7}, {1, 9, 8, 7, 6}, {2, 3}};
  ActivationsParams p;
  // Every hook kind: [pos, C] (d_model, d_ffn, d_vocab), [pos, head, d_head]
  // (query heads and KV heads), [head, q, k].
  p.hooks = {"hook_embed", "blocks.0.hook_resid_post", "blocks.1.mlp.hook_pre",
             "blocks.0.attn.hook_q", "blocks.1.attn.hook_v", "blocks.1.attn.hook_pattern",
             "blocks.0.attn.hook_attn_scores", "unembed.hook_out", "ln_final.hook_normalized"};
  p.sequences = {1, 0};
  p.slices.positions = {4, 0, 2};
  p.slices.channels = {1, 0, 3};
  p.slices.heads = {1};
  std::vector<HookTensor> got;
  auto bytes = RunActivations(*model, seqs, p, [&](const HookTensor& t) { got.push_back(t); }, nullptr);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_EQ(got.size(), p.hooks.size() * 2);
  // Reference: the engine's hook tensors from a forward pass of the same
  // batch (rows: sequence 1, sequence 0), sliced here with index_select.
  std::map<std::string, at::Tensor> ref;
  HookRegistry hooks;
  for (const std::string& h : p.hooks) {
    hooks.AddProbe(h, [&, h](const std::string&, int64_t, const at::Tensor& t) { ref[h] = t.clone(); });
  }
  at::Tensor tokens = at::tensor(std::vector<int64_t>{1, 9, 8, 7, 6, 1, 4, 5, 6, 7}, at::kLong).view({2, 5});
  ASSERT_TRUE(model->RunHooks(tokens, hooks, nullptr).ok());
  auto idx = [](std::vector<int64_t> v) { return at::tensor(v, at::kLong); };
  int64_t total = 0;
  for (const HookTensor& t : got) {
    at::Tensor x = ref.at(t.hook)[t.sequence == 1 ? 0 : 1];
    if (x.dim() == 2) {
      x = x.index_select(0, idx({4, 0, 2})).index_select(1, idx({1, 0, 3}));
    } else if (t.hook.find("pattern") != std::string::npos || t.hook.find("scores") != std::string::npos) {
      x = x.index_select(0, idx({1})).index_select(1, idx({4, 0, 2})).index_select(2, idx({1, 0, 3}));
    } else {
      x = x.index_select(0, idx({4, 0, 2})).index_select(1, idx({1})).index_select(2, idx({1, 0, 3}));
    }
    x = x.to(at::kFloat).contiguous();
    ASSERT_EQ(t.shape, std::vector<int64_t>(x.sizes().begin(), x.sizes().end())) << t.hook;
    ASSERT_EQ(static_cast<int64_t>(t.values.size()), x.numel()) << t.hook;
    EXPECT_EQ(std::memcmp(t.values.data(), x.data_ptr<float>(), 4 * x.numel()), 0)
        << t.hook << " sequence " << t.sequence << ": not bitwise equal";
    total += 4 * x.numel();
  }
  EXPECT_EQ(*bytes, total);
}

TEST(Activations, RefusesUnknownHooksBadIndicesAndOverSizeBeforeRunning) {
  auto model = MakeCpuModel(testing::RandomCheckpoint(testing::SmallConfig("llama2"), 5));
  const std::vector<std::vector<int64_t>> seqs = {{1, 4, 5, 6, 7}};
  ActivationsParams p;
  p.hooks = {"blocks.0.hook_nonsense"};
  testing::ExpectInvalidArgumentNaming(CheckActivationsRequest(*model, seqs, p).status(),
                                       "blocks.0.hook_nonsense");
  p.hooks = {"blocks.7.hook_resid_post"};
  testing::ExpectInvalidArgumentNaming(CheckActivationsRequest(*model, seqs, p).status(), "layer 7");
  p.hooks = {};
  testing::ExpectInvalidArgumentNaming(CheckActivationsRequest(*model, seqs, p).status(), "hooks");
  p.hooks = {"blocks.0.hook_resid_post"};
  p.slices.positions = {5};
  testing::ExpectInvalidArgumentNaming(CheckActivationsRequest(*model, seqs, p).status(), "positions");
  p.slices.positions = {};
  // [5, 32] float32 = 640 bytes; limit 639: refused with both numbers, the probe never runs.
  p.max_bytes = 639;
  bool ran = false;
  auto r = RunActivations(*model, seqs, p, [&](const HookTensor&) { ran = true; }, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("640"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("639"), std::string::npos) << r.status();
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace sinkscope
