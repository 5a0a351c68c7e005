// Checkpoints built in memory for tests: random-initialised models of every
// supported family.
#pragma once

#include <string>

#include "worker/engine/checkpoint.h"

namespace sinkscope::testing {

/// A small config of the given family: "llama2", "llama3" (GQA + llama3
/// rope_scaling), "mistral" (GQA + sliding window 5), "qwen2" (qkv bias),
/// "qwen3" (qk_norm, explicit head_dim), "sandwich", "post".
ModelConfig SmallConfig(const std::string& family);

/// Random weights (normal, std `scale`; norms near 1) for `config`, under the
/// canonical names of checkpoint.h. Deterministic in `seed`.
Checkpoint RandomCheckpoint(const ModelConfig& config, uint64_t seed, double scale = 0.08);

/// HF conversion permutation of a q/k weight [n_head * d_head, d_model]:
/// llama2.c adjacent-pair rows -> HF rotate-halves rows (transformers'
/// convert_llama_weights_to_hf.py `permute`).
at::Tensor PermuteForRotateHalves(const at::Tensor& w, int64_t n_head, int64_t d_head);

}  // namespace sinkscope::testing
