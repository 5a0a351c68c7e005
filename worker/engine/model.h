// The decoder forward pass, instrumented with TransformerLens hook points.
//
// One implementation for every family in config.h. Attention probabilities
// are materialised only when a hook needs `attn.hook_attn_scores` or
// `attn.hook_pattern` in that layer; otherwise libtorch's fused
// scaled_dot_product_attention runs (same numbers within float32 rounding:
// tests/engine/model_test.cc SdpaEqualsEagerPerHook), by query chunks for
// windowed layers longer than their window, and soft-capped layers (Gemma 2)
// compute their output from query chunks (attention.h): O(T) memory.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"
#include "worker/engine/attention.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/config.h"
#include "worker/engine/hooks.h"

namespace sinkscope {

/// Options for Model::Forward.
struct ForwardOptions {
  /// Checked between hook points; when set, Forward returns CANCELLED.
  const std::atomic<bool>* cancel = nullptr;
  /// Compute logits (unembed). A scan that needs only the residual stream can skip it.
  bool compute_logits = true;
};

/// A model on one device in one dtype. Thread-compatible (one Forward at a time).
class Model {
 public:
  /// Moves the checkpoint's tensors to `device` in `dtype` (float32, bfloat16,
  /// float16). A checkpoint placed at load (LoadCheckpoint with a LoadTarget of
  /// the same device and dtype) is adopted without a copy: the model shares its
  /// tensors. Errors: InvalidArgument for an unsupported dtype; the
  /// checkpoint must already be validated.
  static absl::StatusOr<std::unique_ptr<Model>> Create(const Checkpoint& ckpt, c10::Device device,
                                                       c10::ScalarType dtype);

  /// Runs the model on `tokens` [batch, pos] (int64, any device). Returns the
  /// logits [batch, pos, d_vocab] in float32 (undefined tensor when
  /// !options.compute_logits). Errors: InvalidArgument for an id outside
  /// [0, d_vocab) (names the id), an empty batch, pos > n_ctx, a hook name the
  /// model lacks (names it); CANCELLED when options.cancel is set.
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& tokens, const HookRegistry& hooks,
                                     const ForwardOptions& options = {}) const;

  /// Forward pass run only for its hooks (no logits): what every analysis
  /// does. Same errors as Forward.
  absl::Status RunHooks(const at::Tensor& tokens, const HookRegistry& hooks,
                        const std::atomic<bool>* cancel) const;

  /// Greedy decoding from `prompt` (no KV cache: recomputes the prefix).
  absl::StatusOr<std::vector<int64_t>> GenerateGreedy(const std::vector<int64_t>& prompt,
                                                      int64_t max_new_tokens) const;

  /// Every hook name this model has, in forward order.
  std::vector<std::string> HookNames() const;
  /// True when `name` is one of HookNames().
  bool HasHook(const std::string& name) const;
  /// Checks ids are within the vocabulary (message names the first bad id and where).
  absl::Status ValidateTokens(const std::vector<std::vector<int64_t>>& seqs) const;

  const ModelConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }
  /// Config summary plus RoPE layout handling, dtype, device, attention path.
  std::string Summary() const;
  /// Name of the attention path used when no pattern is needed ("sdpa" or "eager").
  std::string fast_attention_path() const;
  /// Bytes held by the weights on the device.
  int64_t weight_bytes() const { return weight_bytes_; }
  /// Total parameter count.
  int64_t n_params() const { return n_params_; }
  /// A weight by its canonical name (checkpoint.h), on the model's device in
  /// its dtype; undefined tensor when the model has none of that name.
  /// Read-only: the mechanism analyses (mechanism.h) read W_gate/W_up/W_down,
  /// W_V/W_O and the norm gains.
  at::Tensor weight(const std::string& name) const;
  /// How layer `l` turns queries and keys into a pattern (attention.h):
  /// LayerAttention of the config plus, with kv_bias, its learned k* and v*.
  AttentionSpec Attention(int64_t layer) const;
  /// The model's own weight tensors by canonical name, each once (a tied
  /// lm_head is the embedding and is left out), for training (train.h): the
  /// handles share storage with the model, so `requires_grad_` and in-place
  /// updates of them change what Forward computes. Forward is differentiable
  /// with respect to them (no detach or NoGrad inside it; the in-place ops of
  /// the chunked attention path are autograd-safe but only the fused SDPA path
  /// of full causal attention is tested against transformers: test_train.py).
  std::vector<std::pair<std::string, at::Tensor>> Parameters();

 private:
  struct Layer;
  Model() = default;

  ModelConfig config_;
  c10::Device device_{c10::kCPU};
  c10::ScalarType dtype_ = c10::kFloat;
  std::map<std::string, at::Tensor> weights_;
  std::set<std::string> hook_names_;
  bool rope_permuted_at_load_ = false;
  at::Tensor rope_cos_, rope_sin_;  // [n_ctx, d_head/2] float32
  at::Tensor rope_local_cos_, rope_local_sin_;  // windowed layers when rope_local_theta > 0
  int64_t weight_bytes_ = 0;
  int64_t n_params_ = 0;
};

/// Parses "float32" | "bfloat16" | "float16" (also "fp32", "bf16", "fp16").
absl::StatusOr<c10::ScalarType> ParseDtype(const std::string& name);
std::string DtypeName(c10::ScalarType dtype);
/// Parses "cpu" | "cuda" | "cuda:N"; errors when CUDA is not available.
absl::StatusOr<c10::Device> ParseDevice(const std::string& name);

}  // namespace sinkscope
