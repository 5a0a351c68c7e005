// Model configuration: one struct describes every supported decoder family.
//
// Families (HF `model_type`): llama (Llama 2/3, incl. Llama 3 rope_scaling),
// mistral (sliding window), qwen2 (q/k/v bias), qwen3 (per-head RMSNorm on q, k).
// Architecture differences are fields, never checks of the family name inside
// the forward pass (TransformerLens' config-driven style).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace sinkscope {

/// Where the RMSNorms sit in each transformer block.
///  - kPre:      h = h + f(norm(h))                   (Llama, Qwen, Mistral)
///  - kSandwich: h = h + post_norm(f(pre_norm(h)))    (Gemma 2/3)
///  - kPost:     h = h + post_norm(f(h))              (OLMo 2)
/// For kSandwich/kPost the block output (`hook_attn_out`, `hook_mlp_out`) is
/// the tensor added to the residual stream, i.e. after the extra norm.
enum class NormPlacement { kPre, kSandwich, kPost };

/// How RoPE pairs the d_head coordinates of q and k.
///  - kAdjacentPairs: (2i, 2i+1) rotate together (llama2.c, Meta's original).
///  - kRotateHalves:  (i, i + d_head/2) rotate together (HF transformers; HF
///    conversion permutes W_Q/W_K rows so both give the same attention).
enum class RopeLayout { kAdjacentPairs, kRotateHalves };

const char* NormPlacementName(NormPlacement p);
const char* RopeLayoutName(RopeLayout l);
absl::StatusOr<NormPlacement> ParseNormPlacement(const std::string& name);

/// Llama 3 `rope_scaling` (rope_type "llama3"); factor 1 = off.
struct RopeScaling {
  std::string rope_type;  // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

/// Hyper-parameters of a decoder-only transformer. Shapes below use
/// d_model, n_heads, n_kv_heads (GQA), d_head, d_ffn, d_vocab.
struct ModelConfig {
  std::string model_type = "llama";  // HF model_type, informational
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t d_head = 0;  // usually d_model / n_heads (Qwen3 sets it explicitly)
  int64_t d_ffn = 0;
  int64_t d_vocab = 0;
  int64_t n_ctx = 2048;  // max_position_embeddings / llama2.c seq_len
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  RopeLayout rope_layout = RopeLayout::kRotateHalves;
  NormPlacement norm_placement = NormPlacement::kPre;
  bool qkv_bias = false;        // Qwen2/2.5
  bool qk_norm = false;         // Qwen3, OLMo 2: RMSNorm over d_head of q and k
  bool tied_embeddings = false;  // unembedding = embedding^T
  int64_t sliding_window = 0;   // Mistral; 0 = full causal attention
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;

  int64_t n_blocks() const { return 2 * n_layers; }
  /// Checks that the numbers are consistent (positive, heads divide, ...).
  absl::Status Validate() const;
  /// One-line human summary, names the RoPE layout and norm placement.
  std::string Summary() const;
};

/// Parses a Hugging Face `config.json` (llama, mistral, qwen2, qwen3; an extra
/// `"sinkscope_norm_placement": "sandwich"|"post"` key selects the placement).
/// `source` names the file in error messages.
/// Errors: InvalidArgument for malformed JSON, a missing or wrong-typed field,
/// an unsupported model_type or hidden_act.
absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& json_text, const std::string& source);

}  // namespace sinkscope
