// Checkpoints built in memory for tests: random-initialised models of every
// supported family.
#pragma once

#include <string>

#include <memory>

#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"

namespace sinkscope::testing {

/// A small config of the given family: "llama2", "llama3" (GQA + llama3
/// rope_scaling), "mistral" (GQA + sliding window 5), "qwen2" (qkv bias),
/// "qwen3" (qk_norm, explicit head_dim), "qwen2_tied" (qwen2 + tied
/// embeddings, no lm_head.weight), "olmo2" (post-norm + full-width q/k norm,
/// GQA), "sandwich", "post".
ModelConfig SmallConfig(const std::string& family);

/// Random weights (normal, std `scale`; norms near 1) for `config`, under the
/// canonical names of checkpoint.h. Deterministic in `seed`.
Checkpoint RandomCheckpoint(const ModelConfig& config, uint64_t seed, double scale = 0.08);

/// Model::Create on cpu (float32 by default); fails the current test on error.
/// The device and dtype the engine tests run on: SINKSCOPE_TEST_DEVICE
/// ("cpu" default, "cuda", "cuda:N") and SINKSCOPE_TEST_DTYPE ("float32"
/// default, "bfloat16"), so the same tests run on a GPU host (bench/gpu/run.sh).
c10::Device TestDevice();
c10::ScalarType TestDtype();
/// The tolerance a test states for the dtype under test: `float32_tol` in
/// float32, `bfloat16_tol` otherwise.
double TestTolerance(double float32_tol, double bfloat16_tol);

/// Skips a test whose assertion holds in float32 only (exact ids, bitwise
/// identities), with the reason, when SINKSCOPE_TEST_DTYPE is another dtype.
#define SINKSCOPE_FLOAT32_ONLY(why)                                            \
  if (::sinkscope::testing::TestDtype() != at::kFloat) {                      \
    GTEST_SKIP() << "float32 only: " << why;                                   \
  }                                                                            \
  do {                                                                         \
  } while (0)

/// A model on TestDevice(); `dtype` float32 means TestDtype().
std::unique_ptr<Model> MakeCpuModel(const Checkpoint& ck, c10::ScalarType dtype = at::kFloat);

/// HF conversion permutation of a q/k weight [n_head * d_head, d_model]:
/// llama2.c adjacent-pair rows -> HF rotate-halves rows (transformers'
/// convert_llama_weights_to_hf.py `permute`).
at::Tensor PermuteForRotateHalves(const at::Tensor& w, int64_t n_head, int64_t d_head);

}  // namespace sinkscope::testing

namespace sinkscope::testing {

/// Ground truth of a planted-mechanism checkpoint (see PlantedCheckpoint).
struct PlantedTruth {
  int64_t spike_channel = 0;        // k: where the step-up MLP writes
  int64_t spike_direction = 0;      // s* = e_{spike_direction} in embedding space
  int64_t offset_channel = 0;       // common offset m = e_{offset_channel}
  std::vector<int64_t> spike_token_ids;  // tokens whose embedding is aligned with s*
  int64_t step_up_block = 0;        // paper numbering
  int64_t step_down_block = 0;
  std::vector<std::pair<int64_t, int64_t>> sink_heads;  // (layer, head)
  /// Every block that injects the spike, and the planted share of the peak
  /// each carries ({4} / {1.0}; gradual: {4, 6, 8} / {1/3, 1/3, 1/3}).
  std::vector<int64_t> step_up_blocks;
  std::vector<double> step_up_shares;
};

/// Options of the planted fixture.
struct PlantedSpec {
  int64_t d_vocab = 64;
  /// kSandwich: same weights + extra norms (Gemma 2); kPost: same weights, the
  /// pre-norms replaced by output norms (OLMo 2).
  NormPlacement norm_placement = NormPlacement::kPre;
  uint64_t seed = 1234;
  /// Gradual injection: the spike is written by three MLP blocks (4, 6, 8),
  /// about a third each (unit 0 with W_down[k,0] = 20/3; block 4 reads s*,
  /// blocks 6 and 8 read e_k, which the spike token's h~ is after block 4).
  bool gradual = false;
};

/// A Llama-architecture checkpoint (HF layout, 6 layers, d_model 64, 4 heads
/// of 16) with the paper's mechanism planted (issue "attention sinks"):
///  - s* = e_0; the spike tokens' embeddings are 8 s*, the others are the
///    common offset m = e_1 plus noise in channels 3.. (orthogonal to s*, e_k);
///  - step-up MLP at layer 1 (block 4): unit 0 has W_gate = W_up = a s*,
///    W_down[k, 0] = c, so a spike token gets ~ c a^2 (s* . h~)^2 ~ 1280 on
///    channel k = 7 (directional quadratic amplifier, paper eq. 19);
///  - step-down MLP at layer 4 (block 10): reads e_k, writes -1280 e_k;
///  - sink heads (2,0), (2,2), (3,1): W_K maps e_k (a spike token after RMSNorm)
///    to u and W_Q maps m to u, u in the slowest-rotating RoPE pair, so every
///    query puts most of its mass on the spike token;
///  - everything else small random weights.
/// With NormPlacement::kSandwich the same weights get an extra RMSNorm on
/// each block output, which bounds every coordinate by sqrt(d_model).
Checkpoint PlantedCheckpoint(const PlantedSpec& spec, PlantedTruth* truth);

}  // namespace sinkscope::testing
