// First-token probe and spike similarity on the planted-mechanism fixture.
#include "worker/engine/spikes.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "tests/engine/fixtures.h"

namespace sinkscope {
namespace {

using testing::PlantedCheckpoint;
using testing::PlantedSpec;
using testing::PlantedTruth;

using testing::MakeCpuModel;

TEST(FirstTokenProbe, PlantedTokensAndOnlyTheySpike) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  FirstTokenParams p;
  p.prefix = {10, 11};  // ordinary tokens: the control puts v at position 2
  p.batch_size = 16;    // several batches
  int64_t last = 0;
  auto r = RunFirstTokenProbe(*model, p, [&](int64_t done, int64_t total) {
    EXPECT_GT(done, last);
    EXPECT_EQ(total, 64);
    last = done;
  });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(last, 64);
  EXPECT_EQ(r->n_tokens, 64);
  const int64_t planted = static_cast<int64_t>(truth.spike_token_ids.size());
  EXPECT_EQ(r->n_spike_at_first, planted);
  EXPECT_DOUBLE_EQ(r->ratio_at_first, planted / 64.0);
  EXPECT_EQ(r->not_spiking_at_first.size(), static_cast<size_t>(64 - planted));
  for (int64_t id : truth.spike_token_ids) {
    EXPECT_EQ(std::count(r->not_spiking_at_first.begin(), r->not_spiking_at_first.end(), id), 0);
  }
  // The planted amplifier is position-independent: the same tokens spike in the control.
  std::vector<int64_t> ctrl = r->spiking_in_control;
  std::sort(ctrl.begin(), ctrl.end());
  EXPECT_EQ(ctrl, truth.spike_token_ids);
  EXPECT_EQ(r->first_spike_block_histogram[truth.step_up_block], planted)
      << "every spike first appears after the step-up block";
}

TEST(FirstTokenProbe, BadRangesAreRefused) {
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, nullptr));
  FirstTokenParams p;
  p.range_begin = 10;
  p.range_end = 10;
  auto r = RunFirstTokenProbe(*model, p, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("range"), std::string::npos);
  p = FirstTokenParams{};
  p.token_ids = {3, 99};
  r = RunFirstTokenProbe(*model, p, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("99"), std::string::npos);
}

// The Llama 2 vocabulary size: 32,000 tokens in batches, not 32,000 passes.
TEST(FirstTokenProbe, FullLlama2VocabularyIsBatched) {
  PlantedSpec spec;
  spec.d_vocab = 32000;
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(spec, &truth));
  FirstTokenParams p;
  p.batch_size = 1024;
  auto r = RunFirstTokenProbe(*model, p, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->n_tokens, 32000);
  EXPECT_EQ(r->n_spike_at_first, static_cast<int64_t>(truth.spike_token_ids.size()));
  std::printf("first-token probe, 32000 tokens: %.2f s total, %.2f s in forward passes (%.0f%%)\n",
              r->total_seconds, r->forward_seconds, 100 * r->forward_seconds / r->total_seconds);
}

TEST(SpikeSimilarity, SpikeTokensConvergeAfterTheStepUpBlock) {
  PlantedTruth truth;
  auto model = MakeCpuModel(PlantedCheckpoint(PlantedSpec{}, &truth));
  // Spike tokens 1, 5, 9 at position 0 and later positions.
  std::vector<std::vector<int64_t>> seqs = {{1, 10, 11, 5, 12}, {9, 20, 21, 22}, {1, 30, 9, 31}};
  auto r = RunSpikeSimilarity(*model, seqs, SpikeSimilarityParams{}, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step_up_block, truth.step_up_block);
  EXPECT_EQ(r->spike_tokens.size(), 5u);
  EXPECT_EQ(r->after.hook, "blocks.1.hook_resid_post");
  EXPECT_EQ(r->before.hook, "blocks.1.hook_resid_mid");
  EXPECT_EQ(r->normalized.hook, "blocks.2.ln1.hook_normalized");
  // After the step-up block all spike tokens are ~ 1280 e_k + 8 e_0 + small.
  EXPECT_GT(r->after.min_off_diagonal, 0.999);
  EXPECT_GT(r->normalized.min_off_diagonal, 0.999);
  EXPECT_LT(r->before.min_off_diagonal, r->after.min_off_diagonal);
  EXPECT_EQ(r->after.values.size(), 25u);
}

TEST(SpikeSimilarity, NoSpikeIsAClearError) {
  PlantedSpec spec;
  spec.norm_placement = NormPlacement::kSandwich;
  auto model = MakeCpuModel(PlantedCheckpoint(spec, nullptr));
  auto r = RunSpikeSimilarity(*model, {{1, 10, 11}}, SpikeSimilarityParams{}, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("no spike token"), std::string::npos);
}

}  // namespace
}  // namespace sinkscope
