// Model configuration: one struct describes every supported decoder family,
// and one table (model_config.cc, FamilySpec) says how each Hugging Face family maps
// onto it: config.json keys, tensor names per role, norm kind and placement,
// activation, positional scheme, biases, soft-caps, per-layer windows.
//
// Families (HF `model_type`): llama (Llama 2/3, incl. Llama 3 rope scaling),
// mistral (sliding window), qwen2 (q/k/v bias), qwen3 (per-head RMSNorm on q, k),
// gpt2 (LayerNorm, learned positions, GELU MLP, fused Conv1D c_attn),
// gemma2 (sandwich norm, (1 + w) gain, soft-caps, alternating windows),
// gemma3_text (gemma2 + per-head q/k norm, local/global RoPE bases),
// gemma3 (Gemma 3's multimodal checkpoints run as their text model: `text_config`,
// `language_model.model.*` tensors, vision tower ignored),
// olmo2 (post-norm, q/k norm over the full projected width),
// gpt_neox (Pythia: LayerNorm, parallel attention + MLP residual, partial rotary,
// fused per-head query_key_value).
// Architecture differences are fields, never checks of the family name inside
// the forward pass (TransformerLens' config-driven style). No libtorch here:
// the server links this library too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope {

/// Where the norms sit in each transformer block.
///  - kPre:      h = h + f(norm(h))                   (Llama, Qwen, Mistral)
///  - kSandwich: h = h + post_norm(f(pre_norm(h)))    (Gemma 2/3)
///  - kPost:     h = h + post_norm(f(h))              (OLMo 2)
///  - kNone:     h = h + f(h)  (no norm in the blocks; the final norm before
///               the unembedding stays; a training variant, paper-notes.md)
/// For kSandwich/kPost the block output (`hook_attn_out`, `hook_mlp_out`) is
/// the tensor added to the residual stream, i.e. after the extra norm.
enum class NormPlacement { kPre, kSandwich, kPost, kNone };

/// How RoPE pairs the d_head coordinates of q and k.
///  - kAdjacentPairs: (2i, 2i+1) rotate together (llama2.c, Meta's original).
///  - kRotateHalves:  (i, i + d_head/2) rotate together (HF transformers; HF
///    conversion permutes W_Q/W_K rows so both give the same attention).
enum class RopeLayout { kAdjacentPairs, kRotateHalves };

/// Normalisation function: RMSNorm (gain only), LayerNorm (mean-centred, gain +
/// bias) or DynamicTanh (Zhu et al. 2025: gamma * tanh(alpha * x) + beta; tensors
/// `.weight` = gamma [d], `.bias` = beta [d], `.alpha` = alpha [1], a learnable
/// scalar). QK-norm is RMSNorm whatever the kind.
enum class NormKind { kRms, kLayer, kDyT };
/// Gate on each head's attention output (Qiu et al. 2025, position G1: after
/// SDPA, before W_O): z_h *= sigmoid(x W_g) from the normalised input x that
/// produced the query; `self_attn.gate_proj.weight` [n_heads, d_model]
/// (kHeadwise, one scalar per head) or [n_heads * d_head, d_model] (kElementwise).
enum class AttnGate { kNone, kHeadwise, kElementwise };
/// How scores become the pattern: softmax over the visible keys, or an
/// elementwise sigmoid of the scaled scores without row normalisation (Gu et
/// al. 2025), invisible keys 0.
enum class AttnFn { kSoftmax, kSigmoid };
/// MLP activation: silu (SwiGLU), exact gelu (erf), tanh-approximated gelu
/// (GPT-2 "gelu_new", Gemma "gelu_pytorch_tanh"), relu (a training variant).
enum class Activation { kSilu, kGelu, kGeluTanh, kRelu };
/// Positional scheme: RoPE on q/k, a learned [n_ctx, d_model] table added to
/// the embedding (`model.embed_positions.weight`), or none (NoPE: causal
/// attention alone tells positions apart; a training variant).
enum class Positional { kRope, kLearned, kNone };

const char* NormPlacementName(NormPlacement p);
const char* NormKindName(NormKind k);
const char* ActivationName(Activation a);
const char* RopeLayoutName(RopeLayout l);
const char* AttnGateName(AttnGate g);
const char* AttnFnName(AttnFn f);
const char* PositionalName(Positional p);
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
  bool qkv_bias = false;        // Qwen2/2.5, GPT-2, Llama attention_bias
  bool o_bias = false;          // bias on the attention output projection (GPT-2, Llama attention_bias)
  bool mlp_bias = false;        // biases on the MLP projections (GPT-2, Llama mlp_bias)
  bool qk_norm = false;         // Qwen3, Gemma 3, OLMo 2: norm of q and k before RoPE
  /// qk_norm over the full projected width n_heads*d_head (OLMo 2) instead of per head (d_head).
  bool qk_norm_full_width = false;
  bool tied_embeddings = false;  // unembedding = embedding^T
  int64_t sliding_window = 0;   // Mistral, Gemma; 0 = full causal attention
  /// Per-layer window (0 = full); empty = `sliding_window` on every layer.
  /// Gemma 2: sliding on even layers; Gemma 3: 5 local : 1 global.
  std::vector<int64_t> layer_windows;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;

  NormKind norm_kind = NormKind::kRms;
  /// Gain is (offset + w): 0 (Llama, w) or 1 (Gemma's (1 + w), weights stored zero-centred).
  double norm_gain_offset = 0.0;
  /// DynamicTanh's initial alpha (init only; the trained alpha is a tensor).
  double dyt_alpha0 = 0.5;
  AttnGate attn_gate = AttnGate::kNone;
  AttnFn attn_fn = AttnFn::kSoftmax;
  /// Learnable key/value bias (Gu et al. 2025, sail-sg): per layer and kv
  /// head a learned key k* and value v* (self_attn.sink_key / sink_value,
  /// [n_kv_heads, d_head], not rotated) that every query attends to besides
  /// the tokens: softmax over [q.k*, q.k_0..t], z = A* v* + sum_j A_j v_j. A
  /// learned sink: attn.hook_pattern keeps the token keys (rows sum to 1 - A*).
  bool kv_bias = false;
  Activation activation = Activation::kSilu;
  bool gated_mlp = true;        // down(act(gate x) * up x); false: down(act(up x)) (GPT-2)
  Positional positional = Positional::kRope;
  /// Attention-logit soft-cap c: scores = c tanh(scores / c); 0 = off (Gemma 2: 50).
  double attn_softcap = 0.0;
  /// Final-logit soft-cap, same form (Gemma 2: 30); applied after unembed.hook_out.
  double final_softcap = 0.0;
  /// Factor on the token embedding (Gemma: sqrt(d_model)); 1 = none.
  double embed_scale = 1.0;
  /// Query scale; 0 = 1/sqrt(d_head). Gemma: query_pre_attn_scalar^-1/2.
  double attn_scale = 0.0;
  /// RoPE base of the windowed (local) layers; 0 = rope_theta (Gemma 3: 10000 local,
  /// 1e6 global; rope_scaling applies to the global layers only when this is set).
  double rope_local_theta = 0.0;
  /// Partial rotary (GPT-NeoX `rotary_pct` / `partial_rotary_factor`): RoPE rotates
  /// only the first `rotary_dim` coordinates of each head (halves of those), the
  /// rest pass unchanged; 0 = all d_head (TransformerLens' `rotary_dim`).
  int64_t rotary_dim = 0;
  /// Parallel attention and MLP (GPT-NeoX `use_parallel_residual`, TransformerLens'
  /// `parallel_attn_mlp`): both read the layer input, resid_post = resid_pre +
  /// attn_out + mlp_out, the MLP reading ln2(resid_pre). hook_resid_mid is then the
  /// virtual point resid_pre + attn_out (as if the attention were added first), so
  /// paper blocks 2l+1 / 2l+2 and the block attribution stay exact.
  bool parallel_attn_mlp = false;

  int64_t n_blocks() const { return 2 * n_layers; }
  /// Attention window of layer `l` (0 = full causal attention).
  int64_t Window(int64_t l) const {
    if (layer_windows.empty()) return sliding_window;
    return l >= 0 && l < static_cast<int64_t>(layer_windows.size()) ? layer_windows[l] : 0;
  }
  /// Coordinates of each head that RoPE rotates: rotary_dim, or d_head when 0.
  int64_t RotaryDim() const { return rotary_dim > 0 ? rotary_dim : d_head; }
  /// RoPE base of layer `l` (local base for windowed layers when rope_local_theta > 0).
  double LayerRopeTheta(int64_t l) const {
    return rope_local_theta > 0 && Window(l) > 0 ? rope_local_theta : rope_theta;
  }
  /// 1/sqrt(d_head) unless attn_scale is set.
  double QueryScale() const;
  /// Whether the blocks norm their input (pre, sandwich): ln1/ln2.hook_normalized exist.
  bool HasInputNorms() const {
    return norm_placement == NormPlacement::kPre || norm_placement == NormPlacement::kSandwich;
  }
  /// Whether the blocks norm their output before the residual add (sandwich, post).
  bool HasOutputNorms() const {
    return norm_placement == NormPlacement::kSandwich || norm_placement == NormPlacement::kPost;
  }
  /// Checks that the numbers are consistent (positive, heads divide, ...).
  absl::Status Validate() const;
  /// One-line human summary, names the RoPE layout and norm placement.
  std::string Summary() const;
};

/// Parses a Hugging Face `config.json` through the family table (KnownFamilies();
/// extra `sinkscope_*` keys select the training variants of the families with
/// Llama tensor names: norm placement / kind, DynamicTanh alpha0, attention gate
/// and function, plain or gated MLP, positions; model_config.cc lists them). Reads transformers 5 `rope_parameters` (flat, or per layer
/// type for Gemma 3) and the older `rope_theta` / `rope_scaling` keys.
/// `source` names the file in error messages.
/// Errors: InvalidArgument for malformed JSON, a missing or wrong-typed field,
/// an unknown model_type (message lists the known ones), an unsupported activation
/// or a `sinkscope_*` key or value it does not know.
absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& json_text, const std::string& source);

/// Writes `config` as a HF config.json (the inverse of ParseHfConfig for the
/// llama, mistral, qwen2 and qwen3 families).
absl::Status WriteHfConfig(const std::string& path, const ModelConfig& config);

/// How a checkpoint tensor is stored relative to its canonical (Llama, [out, in]) form.
enum class TensorLayout {
  kAsIs,
  kConv1D,          // GPT-2 Conv1D weight [in, out]: transposed at load
  kFusedQkvConv1D,  // GPT-2 c_attn [d_model, 3 d_model] (weight) / [3 d_model] (bias):
                    // split into q, k, v (and transposed) at load
  kFusedQkvPerHead,  // GPT-NeoX query_key_value Linear [3 d_model, d_model] / [3 d_model]:
                     // rows grouped per head [q_h | k_h | v_h] (view [n_heads, 3, d_head]),
                     // split into q, k, v at load
};

/// One tensor a config implies, as stored in the checkpoint file.
/// `canonical` is the name the forward pass reads (checkpoint.h); for a fused
/// tensor it is the q name and `canonical_k` / `canonical_v` the others.
struct TensorSpec {
  std::string file_name;
  std::vector<int64_t> shape;  // shape in the file
  std::string canonical;
  TensorLayout layout = TensorLayout::kAsIs;
  std::string canonical_k, canonical_v;
};

/// Every tensor `config` implies, under the names and shapes of its family's
/// checkpoint files (names in file order of roles: embeddings, layers, final).
/// Families without a table entry use the canonical (Llama) names.
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

/// What a tensor stored in a checkpoint file is, by its name (family table): its
/// name among ExpectedTensors(config).file_name, or std::nullopt when it is no
/// weight of the decoder and is skipped unread. Accepted spellings: GPT-2's bare
/// names as the Hub's gpt2 files have them (`h.0.attn.c_attn.weight`, `wte.weight`)
/// -> `transformer.`-prefixed. Skipped: buffers some exporters saved (RoPE
/// `rotary_emb.inv_freq`; GPT-2's causal masks `h.N.attn.bias`, `h.N.attn.masked_bias`;
/// GPT-NeoX's `attention.bias`, `attention.masked_bias`) and the towers a text
/// model does not run (Gemma 3: `vision_tower.*`, `multi_modal_projector.*`).
/// Any other name comes back unchanged (validation then names it as unexpected).
std::optional<std::string> StoredTensorName(const ModelConfig& config,
                                            const std::string& name_in_file);

/// Number of parameters of `config` (sum over ExpectedTensors; a tied head counted once).
int64_t ParameterCount(const ModelConfig& config);

/// The HF model_types the table knows, sorted, comma-separated ("gemma2, gemma3_text, ...").
std::string KnownFamilies();

}  // namespace sinkscope
