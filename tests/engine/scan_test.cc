// Activation scan: ground truth on the planted-mechanism fixture, and the
// per-block statistics against an independent computation on full tensors.
#include "worker/engine/scan.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "tests/engine/fixtures.h"
#include "worker/engine/reductions.h"
#include "tests/engine/test_util.h"

namespace sinkscope {
namespace {

using testing::PlantedCheckpoint;
using testing::PlantedSpec;
using testing::PlantedTruth;

using testing::MakeCpuModel;

TEST(ActivationScan, FindsThePlantedSpikeStepUpAndStepDown) {
  PlantedTruth truth;
  Checkpoint ck = PlantedCheckpoint(PlantedSpec{}, &truth);
  auto model = MakeCpuModel(ck);
  std::vector<std::vector<int64_t>> seqs = {{1, 10, 11, 12, 13, 14, 15, 16},
                                            {1, 20, 21, 22, 23, 24, 25, 26, 27, 28}};
  std::vector<int64_t> streamed;
  int64_t last_done = 0, last_total = 0;
  auto r = RunActivationScan(
      *model, seqs, ScanParams{},
      [&](const BlockRecord& b) { streamed.push_back(b.id.block); },
      [&](int64_t done, int64_t total) {
        EXPECT_EQ(done, last_done + 1);
        last_done = done;
        last_total = total;
      });
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<int64_t> all_blocks;
  for (int64_t b = 1; b <= 12; ++b) all_blocks.push_back(b);
  EXPECT_EQ(streamed, all_blocks) << "one record per block, in order";
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(r->spike_channels, std::vector<int64_t>{truth.spike_channel});
  EXPECT_EQ(r->spike_tokens, (std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {1, 0}}));
  EXPECT_EQ(r->step_up_blocks, std::vector<int64_t>{truth.step_up_block});
  EXPECT_EQ(r->step_down_blocks, std::vector<int64_t>{truth.step_down_block});
  // Analytic value after the step-up block: c * SiLU(a * 8) * (a * 8), c = 20, a = 1
  // (RMSNorm of 8 e_0 plus a small attention perturbation is ~8 e_0).
  const double expected = 20.0 * (8.0 / (1.0 + std::exp(-8.0))) * 8.0;
  for (int64_t b = truth.step_up_block; b < truth.step_down_block; ++b) {
    const BlockRecord& rec = r->blocks[b - 1];
    ASSERT_FALSE(rec.resid_top.empty());
    EXPECT_EQ(rec.resid_top[0].channel, truth.spike_channel) << "block " << b;
    EXPECT_EQ(rec.resid_top[0].position, 0);
    EXPECT_NEAR(rec.resid_top[0].value, expected, 0.01 * expected) << "block " << b;
    EXPECT_EQ(rec.n_massive, 2) << "one spike entry per sequence, block " << b;
  }
  EXPECT_EQ(r->blocks[2].n_massive, 0) << "block 3 is before the step-up";
  EXPECT_GT(r->blocks[3].output_top[0].value, 1000) << "the step-up block's output carries it";
  EXPECT_LT(r->blocks[9].output_top[0].value, -1000) << "the step-down block's output cancels it";
  EXPECT_NEAR(r->peak_abs, expected, 0.01 * expected);
  EXPECT_EQ(r->blocks[0].id.layer, 0);
  EXPECT_FALSE(r->blocks[0].id.is_mlp);
  EXPECT_EQ(r->blocks[3].id.layer, 1);
  EXPECT_TRUE(r->blocks[3].id.is_mlp);
  EXPECT_EQ(r->blocks[3].id.resid_hook(), "blocks.1.hook_resid_post");
}

TEST(ActivationScan, SandwichNormLeavesNoMassiveActivation) {
  PlantedSpec spec;
  spec.norm_placement = NormPlacement::kSandwich;
  Checkpoint ck = PlantedCheckpoint(spec, nullptr);
  auto model = MakeCpuModel(ck);
  auto r = RunActivationScan(*model, {{1, 10, 11, 12, 13, 14}}, ScanParams{}, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->spike_channels.empty());
  EXPECT_TRUE(r->step_up_blocks.empty());
  // Each block adds a normalised vector: every coordinate <= sqrt(d_model) = 8 per block.
  EXPECT_LT(r->peak_abs, 100.0);
}

TEST(ActivationScan, ThresholdsAreParameters) {
  Checkpoint ck = PlantedCheckpoint(PlantedSpec{}, nullptr);
  auto model = MakeCpuModel(ck);
  ScanParams p;
  p.abs_threshold = 5000;  // above the planted ~1280: nothing passes
  auto r = RunActivationScan(*model, {{1, 10, 11, 12}}, p, nullptr, nullptr);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->spike_channels.empty());
}

// Independent computation: capture full post-residual tensors with probes and
// compute top-k and the (lower) median by sorting in float64.
TEST(ActivationScan, StatisticsMatchFullTensorComputation) {
  SKIP_IF_NO_SHARED(path, "models/stories260K/stories260K.bin");
  auto ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto model = MakeCpuModel(*ck);
  std::vector<std::vector<int64_t>> seqs = {{1, 461, 401, 378, 455, 473, 13},
                                            {1, 300, 301, 302},
                                            {1, 100, 200, 300, 400, 500, 7}};
  ScanParams params;
  params.top_k = 4;
  auto r = RunActivationScan(*model, seqs, params, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->blocks.size(), 10u);
  // Reference, one sequence at a time.
  std::map<std::string, std::vector<at::Tensor>> full;  // hook -> per sequence [pos, d_model]
  for (const auto& s : seqs) {
    HookRegistry hooks;
    for (int64_t b = 1; b <= 10; ++b) {
      for (const std::string& h : {BlockId::FromBlock(b).resid_hook(),
                                   BlockId::FromBlock(b).output_hook()}) {
        hooks.AddProbe(h, [&full](const std::string& n, int64_t, const at::Tensor& t) {
          full[n].push_back(t.squeeze(0).to(at::kDouble).clone());
        });
      }
    }
    at::Tensor ids = at::tensor(s, at::TensorOptions().dtype(at::kLong)).view({1, -1});
    ASSERT_TRUE(model->Forward(ids, hooks).ok());
  }
  for (const BlockRecord& rec : r->blocks) {
    for (bool resid : {true, false}) {
      const auto& tensors = full[resid ? rec.id.resid_hook() : rec.id.output_hook()];
      std::vector<double> all;
      for (const auto& t : tensors) {
        at::Tensor flat = t.reshape({-1}).abs();
        std::vector<double> v(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
        all.insert(all.end(), v.begin(), v.end());
      }
      std::sort(all.rbegin(), all.rend());
      const auto& top = resid ? rec.resid_top : rec.output_top;
      ASSERT_EQ(top.size(), 4u);
      for (size_t i = 0; i < 4; ++i) {
        EXPECT_NEAR(std::fabs(top[i].value), all[i], 1e-4 * (1 + all[i]))
            << "block " << rec.id.block << (resid ? " resid" : " output") << " rank " << i;
        // The reported location holds the reported signed value.
        const double at_loc =
            tensors[top[i].sequence][top[i].position][top[i].channel].item<double>();
        EXPECT_NEAR(at_loc, top[i].value, 1e-4 * (1 + all[i]));
      }
    }
    for (size_t s = 0; s < seqs.size(); ++s) {
      at::Tensor flat = full[rec.id.resid_hook()][s].reshape({-1}).abs();
      std::vector<double> v(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
      std::sort(v.begin(), v.end());
      const double lower_median = v[(v.size() - 1) / 2];
      EXPECT_NEAR(rec.resid_median_abs[s], lower_median, 1e-5 * (1 + lower_median));
    }
  }
}

// The scan's fused CPU row statistics against a float64 sort of |x| done
// here: signed values, ties, odd and even lengths, zeros, infinities; a NaN
// or a non-float32 row is left to the tensor path (false).
TEST(ActivationScan, FusedMedianAndMaxOfAbsMatchASort) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 3.f);
  for (int64_t n : {1, 2, 3, 10, 511, 512, 4096}) {
    for (int variant = 0; variant < 3; ++variant) {
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& x : v) x = normal(rng);
      if (variant == 1) {  // many ties and both signs of the same magnitude
        for (size_t i = 0; i < v.size(); ++i) v[i] = (i % 2 ? -1.f : 1.f) * static_cast<float>(i % 5);
      }
      if (variant == 2) {  // a massive entry and an infinity
        v[0] = -500.f;
        v.back() = INFINITY;
      }
      std::vector<double> sorted;
      for (float x : v) sorted.push_back(std::fabs(static_cast<double>(x)));
      std::sort(sorted.begin(), sorted.end());
      const double want_median = sorted[static_cast<size_t>((n - 1) / 2)];  // lower median
      const double want_max = sorted.back();
      const at::Tensor row = at::tensor(v);
      float median = -1, mx = -1;
      ASSERT_TRUE(MedianMaxAbsCpu(row, &median, &mx)) << n << " " << variant;
      EXPECT_EQ(static_cast<double>(median), want_median) << n << " " << variant;
      EXPECT_EQ(static_cast<double>(mx), want_max) << n << " " << variant;
      EXPECT_EQ(static_cast<double>(MedianAbs(row.abs())), want_median);
    }
  }
  float median = -1, mx = -1;
  EXPECT_FALSE(MedianMaxAbsCpu(at::tensor(std::vector<float>{1.f, NAN, 2.f}), &median, &mx));
  EXPECT_FALSE(MedianMaxAbsCpu(at::tensor(std::vector<double>{1.0, 2.0}), &median, &mx));
  EXPECT_FALSE(MedianMaxAbsCpu(at::tensor(std::vector<float>{}), &median, &mx));
  EXPECT_EQ(median, -1.f);
  EXPECT_EQ(mx, -1.f);
}

// The scan's CPU top-k by |x| against a float64 stable sort done here
// (ties: the lower index first): lengths around its 64-value chunks, k from 1
// to 64, ties of both signs, zeros, an increasing row (every value enters),
// a massive entry and an infinity; a NaN is left to at::topk (false).
TEST(ActivationScan, CpuTopKOfAbsMatchesAStableSort) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 3.f);
  for (int64_t n : {1, 2, 63, 64, 65, 130, 4096}) {
    for (int variant = 0; variant < 5; ++variant) {
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& x : v) x = normal(rng);
      for (size_t i = 0; i < v.size(); ++i) {
        if (variant == 1) v[i] = (i % 2 ? -1.f : 1.f) * static_cast<float>(i % 5);  // ties
        if (variant == 2) v[i] = 0.f;
        if (variant == 3) v[i] = static_cast<float>(i) * (i % 3 ? 1.f : -1.f);  // increasing |x|
      }
      if (variant == 4) {
        v[static_cast<size_t>(n / 2)] = -500.f;
        v.back() = INFINITY;
      }
      std::vector<int64_t> order(v.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return std::fabs(static_cast<double>(v[a])) > std::fabs(static_cast<double>(v[b]));
      });
      for (int64_t k : {1, 3, 64}) {
        if (k > n) continue;
        std::vector<std::pair<float, int64_t>> got;
        ASSERT_TRUE(TopKAbsCpu(at::tensor(v), k, &got)) << n << " " << variant << " " << k;
        ASSERT_EQ(got.size(), static_cast<size_t>(k));
        for (int64_t r = 0; r < k; ++r) {
          EXPECT_EQ(got[r].second, order[r]) << n << " " << variant << " k " << k << " rank " << r;
          EXPECT_EQ(got[r].first, v[order[r]]) << n << " " << variant << " k " << k << " rank " << r;
        }
      }
    }
  }
  std::vector<std::pair<float, int64_t>> got;
  std::vector<float> with_nan(100, 1.f);
  with_nan[70] = NAN;
  EXPECT_FALSE(TopKAbsCpu(at::tensor(with_nan), 3, &got));
}

TEST(ActivationScan, BadParametersAreRefusedByName) {
  Checkpoint ck = PlantedCheckpoint(PlantedSpec{}, nullptr);
  auto model = MakeCpuModel(ck);
  auto expect_bad = [&](ScanParams p, const std::string& name) {
    testing::ExpectInvalidArgumentNaming(
        RunActivationScan(*model, {{1, 2, 3}}, p, nullptr, nullptr).status(), name);
  };
  ScanParams p;
  p.top_k = 0;
  expect_bad(p, "top_k");
  p = ScanParams{};
  p.top_k = 100000;
  expect_bad(p, "top_k");
  p = ScanParams{};
  p.abs_threshold = -1;
  expect_bad(p, "abs_threshold");
  p = ScanParams{};
  p.rel_threshold = -3;
  expect_bad(p, "rel_threshold");
  p = ScanParams{};
  p.step_fraction = 0;
  expect_bad(p, "step_fraction");
  auto r = RunActivationScan(*model, {{1, 2, 64}}, ScanParams{}, nullptr, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("token id 64"), std::string::npos) << r.status();
  auto empty = RunActivationScan(*model, {}, ScanParams{}, nullptr, nullptr);
  EXPECT_FALSE(empty.ok());
}

}  // namespace
}  // namespace sinkscope
