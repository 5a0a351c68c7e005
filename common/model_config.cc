// ModelConfig: names, validation, the family table and the HF config.json
// parser/writer. The keys below are those of the llama-like entries; each
// FamilySpec names its own (GPT-2: n_embd, n_layer, n_head, n_inner, n_positions,
// layer_norm_epsilon, activation_function).
//
// config.json mapping (ParseHfConfig <-> WriteHfConfig):
//   model_type                 llama | mistral | qwen2 | qwen3 | olmo2 | gemma2 (writable); gpt2 |
//                              gemma3_text | gemma3 | gpt_neox (read only)
//   text_config                gemma3 (multimodal): the text decoder's keys, read as gemma3_text;
//                              absent keys take Gemma3TextConfig's defaults (the Hub's files
//                              list only the non-default ones)
//   use_parallel_residual      gpt_neox: parallel_attn_mlp (default true)
//   rotary_pct, rotary_emb_base  gpt_neox (transformers 4; 5 writes rope_parameters.
//                              partial_rotary_factor / rope_theta): rotary_dim = int(d_head x pct)
//   rope_parameters            transformers 5: {rope_type, rope_theta, factor, ...} or, for
//                              gemma3_text, {full_attention: {...}, sliding_attention: {...}}
//   layer_types                gemma2/gemma3_text: per-layer sliding_attention | full_attention
//   hidden_size                d_model
//   num_hidden_layers          n_layers
//   num_attention_heads        n_heads
//   num_key_value_heads        n_kv_heads (default n_heads)
//   head_dim                   d_head (default hidden_size / num_attention_heads; null = default)
//   intermediate_size          d_ffn
//   vocab_size                 d_vocab
//   max_position_embeddings    n_ctx (default 2048)
//   rms_norm_eps               norm_eps (default 1e-6, HF's default)
//   rope_theta                 rope_theta (default 10000)
//   rope_scaling               null | {rope_type|type: default|linear|llama3, factor, ...}
//   tie_word_embeddings        tied_embeddings (default false)
//   attention_bias             qkv_bias for llama/mistral/qwen3; qwen2 always has q/k/v bias
//   (qwen3)                    qk_norm = true; qk_norm is only expressible as model_type qwen3
//   sliding_window             mistral only (null or absent = 0 = full attention);
//                              qwen2/qwen3 with use_sliding_window=true are rejected
//   bos_token_id/eos_token_id  int, or a list (the first entry is used), null keeps the default
//   hidden_act                 must be "silu"
//   sinkscope_norm_placement   extra key: "pre" (default) | "sandwich" | "post"
//   sinkscope_rope_layout      extra key: "rotate_halves" (default, HF) | "adjacent_pairs";
//                              written only for adjacent pairs (e.g. an unpermuted llama2.c
//                              export), so that WriteHfConfig round-trips every config.
//   The training variants (paper-notes.md, "Variants a lab trains"), extra keys of the
//   families with canonical (Llama) tensor names, written only when not the default:
//   sinkscope_norm_placement   also "none" (no norm in the blocks)
//   sinkscope_norm_kind        "rmsnorm" (default) | "layernorm" | "dyt" (DynamicTanh)
//   sinkscope_dyt_alpha0       DynamicTanh's initial alpha (default 0.5)
//   sinkscope_attn_gate        "none" (default) | "headwise" | "elementwise" (gated attention)
//   sinkscope_attn_fn          "softmax" (default) | "sigmoid" (no row normalisation)
//   sinkscope_kv_bias          false (default) | true: a learned key/value slot per kv head
//                              (ModelConfig::kv_bias; softmax, no soft-cap, no window)
//   sinkscope_mlp              "gated" (default: act(x W_gate) * x W_up) | "plain" (act(x W_up))
//   sinkscope_positions        "rope" (default) | "learned" (absolute table) | "none" (NoPE)
//   hidden_act                 for these families also gelu, gelu_pytorch_tanh, relu
//                              (with sinkscope_mlp: GeGLU, GELU, ReGLU, ReLU MLPs)
//   Any other key starting with "sinkscope_" is refused (a misspelt knob is no silent default).
//   transformers ignores these keys: it would run such a checkpoint as its plain family.
// WriteHfConfig refuses configs config.json cannot express (qk_norm without qwen3 or
// olmo2, qwen2 without qkv bias, a sliding window outside mistral, olmo2 other than
// post-norm with full-width q/k norm and d_head = d_model / n_heads, gemma2 other than
// Gemma 2's own fields: sandwich, (1 + w) gains, sqrt(d_model) embedding scale).
#include "common/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

using nlohmann::json;

// Upper bound on any single dimension; keeps products of a few dims in int64.
constexpr int64_t kMaxDim = int64_t{1} << 31;

const char* JsonTypeName(const json& j) { return j.type_name(); }

absl::Status FieldError(const std::string& source, const std::string& field,
                        const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
}

// Reads an integer field; `required` = false leaves *out untouched when absent or null.
absl::Status GetInt(const json& j, const char* field, bool required, const std::string& source,
                    int64_t* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(source, field, "missing") : absl::OkStatus();
  }
  if (it->is_number_unsigned()) {
    uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return FieldError(source, field, "is out of range");
    }
    *out = static_cast<int64_t>(v);
    return absl::OkStatus();
  }
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
    return absl::OkStatus();
  }
  return FieldError(source, field, absl::StrCat("must be an integer, got ", JsonTypeName(*it)));
}

absl::Status GetDouble(const json& j, const char* field, bool required, const std::string& source,
                       double* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(source, field, "missing") : absl::OkStatus();
  }
  if (!it->is_number()) {
    return FieldError(source, field, absl::StrCat("must be a number, got ", JsonTypeName(*it)));
  }
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status GetBool(const json& j, const char* field, const std::string& source, bool* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return FieldError(source, field, absl::StrCat("must be a boolean, got ", JsonTypeName(*it)));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status GetString(const json& j, const char* field, bool required, const std::string& source,
                       std::string* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(source, field, "missing") : absl::OkStatus();
  }
  if (!it->is_string()) {
    return FieldError(source, field, absl::StrCat("must be a string, got ", JsonTypeName(*it)));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// bos/eos: int, list of ints (first one wins) or null.
absl::Status GetTokenId(const json& j, const char* field, const std::string& source, int64_t* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_array()) {
    if (it->empty()) return absl::OkStatus();
    json first = json::object({{field, (*it)[0]}});
    return GetInt(first, field, false, source, out);
  }
  return GetInt(j, field, false, source, out);
}

// Reads one rope dict ({rope_type|type, rope_theta, factor, ...}) into `rs` and,
// when it has rope_theta, `theta`. `field` names it in messages.
absl::Status ParseRopeDict(const json& r, const std::string& field, const std::string& source,
                           RopeScaling* rs, double* theta) {
  if (!r.is_object()) {
    return FieldError(source, field, absl::StrCat("must be an object or null, got ", JsonTypeName(r)));
  }
  RETURN_IF_ERROR(GetDouble(r, "rope_theta", false, source, theta));
  std::string type;
  RETURN_IF_ERROR(GetString(r, "rope_type", false, source, &type));
  if (type.empty()) RETURN_IF_ERROR(GetString(r, "type", false, source, &type));
  *rs = RopeScaling();
  if (type.empty() || type == "default") return absl::OkStatus();
  if (type != "llama3" && type != "linear") {
    return FieldError(source, field,
                      absl::StrCat("has unsupported rope_type '", type,
                                   "' (supported: default, linear, llama3)"));
  }
  rs->rope_type = type;
  RETURN_IF_ERROR(GetDouble(r, "factor", true, source, &rs->factor));
  if (type == "llama3") {
    RETURN_IF_ERROR(GetDouble(r, "low_freq_factor", false, source, &rs->low_freq_factor));
    RETURN_IF_ERROR(GetDouble(r, "high_freq_factor", false, source, &rs->high_freq_factor));
    RETURN_IF_ERROR(GetInt(r, "original_max_position_embeddings", false, source,
                           &rs->original_max_position_embeddings));
  }
  return absl::OkStatus();
}

// RoPE: transformers 5 `rope_parameters` (flat, or {full_attention, sliding_attention}
// for Gemma 3), else the older `rope_theta` + `rope_scaling` (+ Gemma 3's
// `rope_local_base_freq`).
absl::Status ParseRope(const json& j, const std::string& source, bool per_layer_type,
                       ModelConfig* c) {
  // The older keys first (with the family's defaults); rope_parameters overrides them.
  RETURN_IF_ERROR(GetDouble(j, "rope_theta", false, source, &c->rope_theta));
  if (per_layer_type) {
    RETURN_IF_ERROR(GetDouble(j, "rope_local_base_freq", false, source, &c->rope_local_theta));
  }
  auto rp = j.find("rope_parameters");
  if (rp != j.end() && !rp->is_null()) {
    if (!rp->is_object()) {
      return FieldError(source, "rope_parameters",
                        absl::StrCat("must be an object or null, got ", JsonTypeName(*rp)));
    }
    if (rp->contains("full_attention") || rp->contains("sliding_attention")) {
      if (auto f = rp->find("full_attention"); f != rp->end() && !f->is_null()) {
        RETURN_IF_ERROR(ParseRopeDict(*f, "rope_parameters.full_attention", source,
                                      &c->rope_scaling, &c->rope_theta));
      }
      if (auto sl = rp->find("sliding_attention"); sl != rp->end() && !sl->is_null()) {
        RopeScaling local;
        double theta = c->rope_local_theta > 0 ? c->rope_local_theta : c->rope_theta;
        RETURN_IF_ERROR(
            ParseRopeDict(*sl, "rope_parameters.sliding_attention", source, &local, &theta));
        if (!local.rope_type.empty()) {
          return FieldError(source, "rope_parameters.sliding_attention",
                            "has a scaled rope_type; only default is supported for local layers");
        }
        c->rope_local_theta = theta;
      }
      return absl::OkStatus();
    }
    return ParseRopeDict(*rp, "rope_parameters", source, &c->rope_scaling, &c->rope_theta);
  }
  auto it = j.find("rope_scaling");
  if (it != j.end() && !it->is_null()) {
    double unused = c->rope_theta;
    RETURN_IF_ERROR(ParseRopeDict(*it, "rope_scaling", source, &c->rope_scaling, &unused));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The family table (llama.cpp's architecture tables in spirit): one entry per
// HF model_type. The forward pass never sees the entry, only the fields it sets.

/// Canonical -> file tensor names of a family (checkpoint.h lists the canonical
/// names). Empty tables mean the file uses the canonical (Llama) names.
struct TensorNames {
  std::vector<std::pair<const char*, const char*>> top;  // e.g. model.embed_tokens -> transformer.wte
  const char* layer_prefix = "model.layers.";            // file prefix before the layer index
  std::vector<std::pair<const char*, const char*>> layer;  // per-layer module suffixes
  bool conv1d = false;  // linear weights stored [in, out] (GPT-2 Conv1D)
  const char* fused_qkv = nullptr;  // per-layer module holding q, k, v fused (GPT-2 attn.c_attn)
  TensorLayout fused_qkv_layout = TensorLayout::kFusedQkvConv1D;
  // A prefix the published files may leave out (the Hub's gpt2 files: bare `h.0...`, `wte`).
  const char* optional_prefix = nullptr;
  // Per-layer buffers that are no weights, skipped (GPT-2's causal mask `attn.bias`).
  std::vector<const char*> ignored_layer_suffixes;
  // Whole modules skipped (the vision tower of a multimodal checkpoint).
  std::vector<const char*> ignored_prefixes;
};

const TensorNames kCanonicalNames{};

const TensorNames kGpt2Names{
    {{"model.embed_tokens", "transformer.wte"},
     {"model.embed_positions", "transformer.wpe"},
     {"model.norm", "transformer.ln_f"}},
    "transformer.h.",
    {{"input_layernorm", "ln_1"},
     {"post_attention_layernorm", "ln_2"},
     {"self_attn.o_proj", "attn.c_proj"},
     {"mlp.up_proj", "mlp.c_fc"},
     {"mlp.down_proj", "mlp.c_proj"}},
    true,
    "attn.c_attn",
    TensorLayout::kFusedQkvConv1D,
    "transformer.",
    {"attn.bias", "attn.masked_bias"},
    {}};

// GPT-NeoX / Pythia (transformers' GPTNeoXForCausalLM; the Hub's files and
// transformers 5's save_pretrained both write `embed_out`, not `lm_head`).
const TensorNames kGptNeoxNames{
    {{"model.embed_tokens", "gpt_neox.embed_in"},
     {"model.norm", "gpt_neox.final_layer_norm"},
     {"lm_head", "embed_out"}},
    "gpt_neox.layers.",
    {{"self_attn.o_proj", "attention.dense"},
     {"mlp.up_proj", "mlp.dense_h_to_4h"},
     {"mlp.down_proj", "mlp.dense_4h_to_h"}},
    false,
    "attention.query_key_value",
    TensorLayout::kFusedQkvPerHead,
    nullptr,
    {"attention.bias", "attention.masked_bias"},
    {}};

// Gemma 3 multimodal (Gemma3ForConditionalGeneration) as the Hub's files and
// transformers 5.24's save_pretrained name it: the text decoder under
// `language_model.model.`, the vision tower and projector beside it.
const TensorNames kGemma3MultimodalNames{
    {{"model.embed_tokens", "language_model.model.embed_tokens"},
     {"model.norm", "language_model.model.norm"},
     {"lm_head", "language_model.lm_head"}},
    "language_model.model.layers.",
    {},
    false,
    nullptr,
    TensorLayout::kAsIs,
    nullptr,
    {},
    {"vision_tower.", "multi_modal_projector."}};

enum class WindowRule {
  kNone,        // full attention; `use_sliding_window: true` refused (Qwen)
  kAllLayers,   // `sliding_window` on every layer (Mistral)
  kLayerTypes,  // `layer_types` ("sliding_attention" | "full_attention"), else a pattern
};
enum class BiasRule {
  kNone,
  kAttentionBiasKey,  // attention_bias -> q/k/v/o bias, mlp_bias -> MLP bias (Llama)
  kQkvAlways,         // q/k/v always biased, o never (Qwen2)
  kAll,               // every linear and norm has a bias (GPT-2)
  kAttentionBiasKeyMlpAlways,  // attention_bias -> q/k/v/o bias; MLP always biased (GPT-NeoX)
};

struct FamilySpec {
  const char* model_type;
  const char* architecture;
  // config.json keys
  const char* d_model_key = "hidden_size";
  const char* n_layers_key = "num_hidden_layers";
  const char* n_heads_key = "num_attention_heads";
  const char* n_kv_heads_key = "num_key_value_heads";  // nullptr: = n_heads
  const char* head_dim_key = "head_dim";                // nullptr: d_model / n_heads
  const char* d_ffn_key = "intermediate_size";
  bool d_ffn_default_4x = false;  // GPT-2 n_inner: null = 4 d_model
  const char* n_ctx_key = "max_position_embeddings";
  const char* eps_key = "rms_norm_eps";
  double eps_default = 1e-6;
  std::vector<const char*> act_keys = {"hidden_act"};  // first present wins
  const char* act_default = "silu";
  // The families with Llama tensor names also train GeGLU / GELU / ReLU variants.
  std::vector<std::pair<const char*, Activation>> activations = {
      {"silu", Activation::kSilu}, {"gelu", Activation::kGelu},
      {"gelu_pytorch_tanh", Activation::kGeluTanh}, {"relu", Activation::kRelu}};
  bool tie_default = false;
  // architecture
  NormKind norm_kind = NormKind::kRms;
  double gain_offset = 0.0;
  NormPlacement placement = NormPlacement::kPre;
  Positional positional = Positional::kRope;
  bool gated = true;
  BiasRule bias = BiasRule::kAttentionBiasKey;
  bool qk_norm = false, qk_norm_full_width = false;
  WindowRule window = WindowRule::kNone;
  int64_t window_pattern = 0;  // without layer_types: 2 = sliding on even layers (Gemma 2),
                               // 6 = sliding unless (l + 1) % 6 == 0 (Gemma 3)
  bool softcaps = false;       // attn_logit_softcapping, final_logit_softcapping
  bool embed_scale_sqrt_d = false;
  bool query_pre_attn_scalar = false;
  bool rope_per_layer_type = false;
  bool attention_bias_default = false;  // attention_bias when absent (GPT-NeoX: true)
  // Parallel attention + MLP: this boolean key (GPT-NeoX use_parallel_residual), its default.
  const char* parallel_key = nullptr;
  bool parallel_default = false;
  // Partial rotary: rope_parameters.partial_rotary_factor, else rotary_pct (default 0.25),
  // base rope_parameters.rope_theta, else rotary_emb_base (GPT-NeoX).
  bool partial_rotary = false;
  // The decoder's keys sit in this nested object (Gemma 3 multimodal: text_config),
  // whose model_type, when given, must be text_model_type.
  const char* text_config_key = nullptr;
  const char* text_model_type = nullptr;
  // The transformers config class's defaults for absent keys, as a JSON object
  // (configs written by to_diff_dict leave out every default, as the Hub's Gemma 3 do).
  const char* defaults_json = nullptr;
  bool writable = false;  // WriteHfConfig can express it
  const TensorNames* names = &kCanonicalNames;
};

// transformers 5.24 Gemma3TextConfig defaults (configuration_gemma3.py).
constexpr const char* kGemma3TextDefaults = R"({
  "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
  "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
  "head_dim": 256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
  "query_pre_attn_scalar": 256, "sliding_window": 4096, "rope_theta": 1000000.0,
  "rope_local_base_freq": 10000.0, "bos_token_id": 2, "eos_token_id": 1,
  "tie_word_embeddings": true})";

const std::vector<FamilySpec>& Families() {
  static const std::vector<FamilySpec>* kFamilies = [] {
    auto* v = new std::vector<FamilySpec>();
    FamilySpec llama;
    llama.model_type = "llama";
    llama.architecture = "LlamaForCausalLM";
    llama.writable = true;
    v->push_back(llama);

    FamilySpec mistral = llama;
    mistral.model_type = "mistral";
    mistral.architecture = "MistralForCausalLM";
    mistral.window = WindowRule::kAllLayers;
    v->push_back(mistral);

    FamilySpec qwen2 = llama;
    qwen2.model_type = "qwen2";
    qwen2.architecture = "Qwen2ForCausalLM";
    qwen2.bias = BiasRule::kQkvAlways;
    v->push_back(qwen2);

    FamilySpec qwen3 = llama;
    qwen3.model_type = "qwen3";
    qwen3.architecture = "Qwen3ForCausalLM";
    qwen3.qk_norm = true;
    v->push_back(qwen3);

    FamilySpec gpt2;
    gpt2.model_type = "gpt2";
    gpt2.architecture = "GPT2LMHeadModel";
    gpt2.d_model_key = "n_embd";
    gpt2.n_layers_key = "n_layer";
    gpt2.n_heads_key = "n_head";
    gpt2.n_kv_heads_key = nullptr;
    gpt2.head_dim_key = nullptr;
    gpt2.d_ffn_key = "n_inner";
    gpt2.d_ffn_default_4x = true;
    gpt2.n_ctx_key = "n_positions";
    gpt2.eps_key = "layer_norm_epsilon";
    gpt2.eps_default = 1e-5;
    gpt2.act_keys = {"activation_function"};
    gpt2.act_default = "gelu_new";
    gpt2.activations = {{"gelu_new", Activation::kGeluTanh},
                        {"gelu_pytorch_tanh", Activation::kGeluTanh},
                        {"gelu", Activation::kGelu}};
    gpt2.tie_default = true;
    gpt2.norm_kind = NormKind::kLayer;
    gpt2.positional = Positional::kLearned;
    gpt2.gated = false;
    gpt2.bias = BiasRule::kAll;
    gpt2.names = &kGpt2Names;
    v->push_back(gpt2);

    FamilySpec gemma2 = llama;
    gemma2.model_type = "gemma2";
    gemma2.architecture = "Gemma2ForCausalLM";
    gemma2.writable = true;
    gemma2.act_keys = {"hidden_activation", "hidden_act"};
    gemma2.act_default = "gelu_pytorch_tanh";
    gemma2.activations = {{"gelu_pytorch_tanh", Activation::kGeluTanh},
                          {"gelu_new", Activation::kGeluTanh},
                          {"gelu", Activation::kGelu}};
    gemma2.tie_default = true;
    gemma2.gain_offset = 1.0;
    gemma2.placement = NormPlacement::kSandwich;
    gemma2.window = WindowRule::kLayerTypes;
    gemma2.window_pattern = 2;
    gemma2.softcaps = true;
    gemma2.embed_scale_sqrt_d = true;
    gemma2.query_pre_attn_scalar = true;
    v->push_back(gemma2);

    FamilySpec gemma3 = gemma2;
    gemma3.model_type = "gemma3_text";
    gemma3.architecture = "Gemma3ForCausalLM";
    gemma3.qk_norm = true;
    gemma3.window_pattern = 6;
    gemma3.rope_per_layer_type = true;
    gemma3.defaults_json = kGemma3TextDefaults;
    v->push_back(gemma3);

    FamilySpec gemma3_mm = gemma3;
    gemma3_mm.model_type = "gemma3";
    gemma3_mm.architecture = "Gemma3ForConditionalGeneration";
    gemma3_mm.text_config_key = "text_config";
    gemma3_mm.text_model_type = "gemma3_text";
    gemma3_mm.names = &kGemma3MultimodalNames;
    v->push_back(gemma3_mm);

    FamilySpec olmo2 = llama;
    olmo2.model_type = "olmo2";
    olmo2.architecture = "Olmo2ForCausalLM";
    olmo2.writable = true;
    olmo2.eps_default = 1e-5;
    olmo2.placement = NormPlacement::kPost;
    olmo2.qk_norm = true;
    olmo2.qk_norm_full_width = true;
    olmo2.head_dim_key = nullptr;
    v->push_back(olmo2);

    // GPT-NeoX / Pythia: keys of transformers' GPTNeoXConfig, defaults of its class.
    FamilySpec neox = llama;
    neox.model_type = "gpt_neox";
    neox.architecture = "GPTNeoXForCausalLM";
    neox.writable = false;
    neox.n_kv_heads_key = nullptr;
    neox.head_dim_key = nullptr;
    neox.eps_key = "layer_norm_eps";
    neox.eps_default = 1e-5;
    neox.act_default = "gelu";
    neox.activations = {{"gelu", Activation::kGelu},
                        {"gelu_new", Activation::kGeluTanh},
                        {"gelu_pytorch_tanh", Activation::kGeluTanh}};
    neox.norm_kind = NormKind::kLayer;
    neox.gated = false;
    neox.bias = BiasRule::kAttentionBiasKeyMlpAlways;
    neox.attention_bias_default = true;
    neox.parallel_key = "use_parallel_residual";
    neox.parallel_default = true;
    neox.partial_rotary = true;
    neox.defaults_json = R"({"bos_token_id": 0, "eos_token_id": 2})";
    neox.names = &kGptNeoxNames;
    v->push_back(neox);
    return v;
  }();
  return *kFamilies;
}

const FamilySpec* FindFamily(const std::string& model_type) {
  for (const FamilySpec& f : Families()) {
    if (model_type == f.model_type) return &f;
  }
  return nullptr;
}

std::string KnownFamiliesImpl() {
  std::vector<std::string> names;
  for (const FamilySpec& f : Families()) names.push_back(f.model_type);
  std::sort(names.begin(), names.end());
  return absl::StrJoin(names, ", ");
}

absl::Status GetActivation(const json& j, const FamilySpec& f, const std::string& source,
                           Activation* out) {
  std::string act = f.act_default, key = f.act_keys.front();
  for (const char* k : f.act_keys) {
    auto it = j.find(k);
    if (it != j.end() && !it->is_null()) {
      key = k;
      RETURN_IF_ERROR(GetString(j, k, false, source, &act));
      break;
    }
  }
  std::vector<std::string> allowed;
  for (const auto& [name, a] : f.activations) {
    if (act == name) {
      *out = a;
      return absl::OkStatus();
    }
    allowed.push_back(name);
  }
  return FieldError(source, key,
                    absl::StrCat("has unsupported value '", act, "' (", f.model_type, ": ",
                                 allowed.size() == 1 ? "only " : "one of ",
                                 absl::StrJoin(allowed, ", "), ")"));
}

// Gemma-style windows: layer_types, else the family's pattern.
absl::Status ParseLayerWindows(const json& j, const FamilySpec& f, const std::string& source,
                               ModelConfig* c) {
  int64_t window = 0;
  RETURN_IF_ERROR(GetInt(j, "sliding_window", false, source, &window));
  auto it = j.find("layer_types");
  std::vector<bool> sliding(c->n_layers, false);
  if (it != j.end() && !it->is_null()) {
    if (!it->is_array() || static_cast<int64_t>(it->size()) != c->n_layers) {
      return FieldError(source, "layer_types",
                        absl::StrCat("must be a list of ", c->n_layers, " layer types"));
    }
    for (int64_t l = 0; l < c->n_layers; ++l) {
      const json& t = (*it)[l];
      if (!t.is_string() ||
          (t.get<std::string>() != "sliding_attention" && t.get<std::string>() != "full_attention")) {
        return FieldError(source, "layer_types",
                          absl::StrCat("entry ", l, " must be \"sliding_attention\" or "
                                       "\"full_attention\", got ", t.dump()));
      }
      sliding[l] = t.get<std::string>() == "sliding_attention";
    }
  } else {
    int64_t pattern = f.window_pattern;
    RETURN_IF_ERROR(GetInt(j, "sliding_window_pattern", false, source, &pattern));
    for (int64_t l = 0; l < c->n_layers; ++l) {
      sliding[l] = pattern == 2 ? l % 2 == 0 : pattern > 0 && (l + 1) % pattern != 0;
    }
  }
  c->sliding_window = 0;
  c->layer_windows.assign(c->n_layers, 0);
  bool any = false;
  for (int64_t l = 0; l < c->n_layers; ++l) {
    if (sliding[l] && window > 0) {
      c->layer_windows[l] = window;
      any = true;
    }
  }
  if (any) c->sliding_window = window;
  if (!any) c->layer_windows.clear();
  return absl::OkStatus();
}

// The object holding the decoder's keys: the file's top level, or its
// `text_config` for a multimodal family; the family's defaults fill absent keys.
// `source` becomes "<file>: text_config" for the nested case.
absl::StatusOr<json> DecoderKeys(const json& file, const FamilySpec& f, std::string* source) {
  json j = file;
  if (f.text_config_key != nullptr) {
    auto it = file.find(f.text_config_key);
    if (it == file.end() || !it->is_object()) {
      return FieldError(*source, f.text_config_key,
                        absl::StrCat(it == file.end() ? "missing" : "must be an object",
                                     " (model_type ", f.model_type,
                                     " keeps its text decoder's config there)"));
    }
    j = *it;
    *source = absl::StrCat(*source, ": ", f.text_config_key);
    std::string text_type = f.text_model_type;
    RETURN_IF_ERROR(GetString(j, "model_type", false, *source, &text_type));
    if (text_type != f.text_model_type) {
      return FieldError(*source, "model_type",
                        absl::StrCat("has unsupported value '", text_type, "' (", f.model_type,
                                     " runs a ", f.text_model_type, " text model)"));
    }
  }
  if (f.defaults_json != nullptr) {
    const json defaults = json::parse(f.defaults_json);
    for (const auto& [key, value] : defaults.items()) {
      if (!j.contains(key)) j[key] = value;
    }
  }
  return j;
}

// The config.json spellings of the enum fields (the one list for parsing and naming).
template <typename E>
using NameTable = std::vector<std::pair<const char*, E>>;
const NameTable<NormPlacement> kNormPlacements = {{"pre", NormPlacement::kPre},
                                                  {"sandwich", NormPlacement::kSandwich},
                                                  {"post", NormPlacement::kPost},
                                                  {"none", NormPlacement::kNone}};
const NameTable<NormKind> kNormKinds = {
    {"rmsnorm", NormKind::kRms}, {"layernorm", NormKind::kLayer}, {"dyt", NormKind::kDyT}};
const NameTable<AttnGate> kAttnGates = {{"none", AttnGate::kNone},
                                        {"headwise", AttnGate::kHeadwise},
                                        {"elementwise", AttnGate::kElementwise}};
const NameTable<AttnFn> kAttnFns = {{"softmax", AttnFn::kSoftmax}, {"sigmoid", AttnFn::kSigmoid}};
const NameTable<Positional> kPositions = {
    {"rope", Positional::kRope}, {"learned", Positional::kLearned}, {"none", Positional::kNone}};
const NameTable<bool> kMlpKinds = {{"gated", true}, {"plain", false}};

template <typename E>
const char* NameOf(const NameTable<E>& table, E value) {
  for (const auto& [name, v] : table) {
    if (v == value) return name;
  }
  return "unknown";
}

// The training-variant keys (file comment), on `c` parsed from `j` of family `f`.
absl::Status ParseVariantKeys(const json& j, const FamilySpec& f, const std::string& source,
                              ModelConfig* c) {
  static const std::set<std::string> kKnown = {
      "sinkscope_norm_placement", "sinkscope_rope_layout", "sinkscope_norm_kind",
      "sinkscope_dyt_alpha0",     "sinkscope_attn_gate",   "sinkscope_attn_fn",
      "sinkscope_mlp",            "sinkscope_positions",   "sinkscope_kv_bias"};
  for (const auto& item : j.items()) {
    if (absl::StartsWith(item.key(), "sinkscope_") && !kKnown.count(item.key())) {
      return FieldError(source, item.key(),
                        absl::StrCat("is not a sinkscope key (known: ", absl::StrJoin(kKnown, ", "), ")"));
    }
  }
  // A key, its values and the enum value each names.
  auto choice = [&](const char* key, auto names, auto* out) -> absl::Status {
    std::string v;
    RETURN_IF_ERROR(GetString(j, key, false, source, &v));
    if (v.empty()) return absl::OkStatus();
    std::vector<std::string> allowed;
    for (const auto& [name, value] : names) {
      if (v == name) {
        if (f.names != &kCanonicalNames && value != *out) {
          return FieldError(source, key, absl::StrCat("is a training variant of the families with "
                                                      "Llama tensor names, not of ", f.model_type));
        }
        *out = value;
        return absl::OkStatus();
      }
      allowed.push_back(name);
    }
    return FieldError(source, key, absl::StrCat("has unknown value '", v, "' (expected ",
                                                 absl::StrJoin(allowed, ", "), ")"));
  };
  RETURN_IF_ERROR(choice("sinkscope_norm_kind", kNormKinds, &c->norm_kind));
  RETURN_IF_ERROR(choice("sinkscope_attn_gate", kAttnGates, &c->attn_gate));
  RETURN_IF_ERROR(choice("sinkscope_attn_fn", kAttnFns, &c->attn_fn));
  RETURN_IF_ERROR(choice("sinkscope_mlp", kMlpKinds, &c->gated_mlp));
  RETURN_IF_ERROR(choice("sinkscope_positions", kPositions, &c->positional));
  RETURN_IF_ERROR(GetBool(j, "sinkscope_kv_bias", source, &c->kv_bias));
  if (c->kv_bias && f.names != &kCanonicalNames) {
    return FieldError(source, "sinkscope_kv_bias", absl::StrCat("is a training variant of the families with "
                                                                 "Llama tensor names, not of ", f.model_type));
  }
  return GetDouble(j, "sinkscope_dyt_alpha0", false, source, &c->dyt_alpha0);
}


absl::StatusOr<ModelConfig> ParseHfConfigImpl(const json& file, const std::string& file_source) {
  if (!file.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_source, ": top level must be a JSON object, got ", JsonTypeName(file)));
  }
  ModelConfig c;
  RETURN_IF_ERROR(GetString(file, "model_type", true, file_source, &c.model_type));
  const FamilySpec* fp = FindFamily(c.model_type);
  if (fp == nullptr) {
    return FieldError(file_source, "model_type",
                      absl::StrCat("has unsupported value '", c.model_type,
                                   "' (supported: ", KnownFamiliesImpl(), ")"));
  }
  const FamilySpec& f = *fp;
  std::string source = file_source;
  ASSIGN_OR_RETURN(const json j, DecoderKeys(file, f, &source));
  RETURN_IF_ERROR(GetActivation(j, f, source, &c.activation));
  RETURN_IF_ERROR(GetInt(j, f.d_model_key, true, source, &c.d_model));
  RETURN_IF_ERROR(GetInt(j, f.n_layers_key, true, source, &c.n_layers));
  RETURN_IF_ERROR(GetInt(j, f.n_heads_key, true, source, &c.n_heads));
  c.n_kv_heads = c.n_heads;
  if (f.n_kv_heads_key) RETURN_IF_ERROR(GetInt(j, f.n_kv_heads_key, false, source, &c.n_kv_heads));
  c.d_head = c.n_heads > 0 ? c.d_model / c.n_heads : 0;
  if (f.head_dim_key) RETURN_IF_ERROR(GetInt(j, f.head_dim_key, false, source, &c.d_head));
  if (f.d_ffn_default_4x) {
    c.d_ffn = 4 * c.d_model;
    RETURN_IF_ERROR(GetInt(j, f.d_ffn_key, false, source, &c.d_ffn));
  } else {
    RETURN_IF_ERROR(GetInt(j, f.d_ffn_key, true, source, &c.d_ffn));
  }
  RETURN_IF_ERROR(GetInt(j, "vocab_size", true, source, &c.d_vocab));
  RETURN_IF_ERROR(GetInt(j, f.n_ctx_key, false, source, &c.n_ctx));
  c.norm_eps = f.eps_default;
  RETURN_IF_ERROR(GetDouble(j, f.eps_key, false, source, &c.norm_eps));
  c.tied_embeddings = f.tie_default;
  RETURN_IF_ERROR(GetBool(j, "tie_word_embeddings", source, &c.tied_embeddings));
  c.norm_kind = f.norm_kind;
  c.norm_gain_offset = f.gain_offset;
  c.norm_placement = f.placement;
  c.positional = f.positional;
  c.gated_mlp = f.gated;
  c.qk_norm = f.qk_norm;
  c.qk_norm_full_width = f.qk_norm_full_width;
  if (f.partial_rotary) RETURN_IF_ERROR(GetDouble(j, "rotary_emb_base", false, source, &c.rope_theta));
  if (c.positional == Positional::kRope) {
    RETURN_IF_ERROR(ParseRope(j, source, f.rope_per_layer_type, &c));
  }
  if (f.partial_rotary) {
    // transformers: rotary_ndims = int(head_size * partial_rotary_factor).
    double pct = 0.25;  // GPTNeoXConfig's default rotary_pct
    std::string field = "rotary_pct";
    RETURN_IF_ERROR(GetDouble(j, "rotary_pct", false, source, &pct));
    if (auto rp = j.find("rope_parameters"); rp != j.end() && rp->is_object() &&
                                             rp->contains("partial_rotary_factor")) {
      field = "rope_parameters.partial_rotary_factor";
      RETURN_IF_ERROR(GetDouble(*rp, "partial_rotary_factor", false, source, &pct));
    }
    if (!(pct > 0 && pct <= 1)) {
      return FieldError(source, field, absl::StrCat("must be in (0, 1], got ", pct));
    }
    c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.d_head) * pct);
    if (c.rotary_dim < 2) {
      return FieldError(source, field,
                        absl::StrCat("= ", pct, " rotates no coordinate of d_head ", c.d_head));
    }
  }
  if (f.parallel_key != nullptr) {
    c.parallel_attn_mlp = f.parallel_default;
    RETURN_IF_ERROR(GetBool(j, f.parallel_key, source, &c.parallel_attn_mlp));
  }
  switch (f.bias) {
    case BiasRule::kNone:
      break;
    case BiasRule::kAttentionBiasKey:
      RETURN_IF_ERROR(GetBool(j, "attention_bias", source, &c.qkv_bias));
      c.o_bias = c.qkv_bias;  // HF: attention_bias biases q, k, v and o
      RETURN_IF_ERROR(GetBool(j, "mlp_bias", source, &c.mlp_bias));
      break;
    case BiasRule::kQkvAlways:
      c.qkv_bias = true;
      break;
    case BiasRule::kAll:
      c.qkv_bias = c.o_bias = c.mlp_bias = true;
      break;
    case BiasRule::kAttentionBiasKeyMlpAlways:
      c.qkv_bias = f.attention_bias_default;
      RETURN_IF_ERROR(GetBool(j, "attention_bias", source, &c.qkv_bias));
      c.o_bias = c.qkv_bias;
      c.mlp_bias = true;
      break;
  }
  switch (f.window) {
    case WindowRule::kNone: {
      bool use_sw = false;
      RETURN_IF_ERROR(GetBool(j, "use_sliding_window", source, &use_sw));
      if (use_sw) return FieldError(source, "use_sliding_window", "= true is not supported");
      break;
    }
    case WindowRule::kAllLayers:
      RETURN_IF_ERROR(GetInt(j, "sliding_window", false, source, &c.sliding_window));
      break;
    case WindowRule::kLayerTypes:
      if (c.n_layers > 0 && c.n_layers <= (1 << 20)) {
        RETURN_IF_ERROR(ParseLayerWindows(j, f, source, &c));
      }
      break;
  }
  if (f.softcaps) {
    RETURN_IF_ERROR(GetDouble(j, "attn_logit_softcapping", false, source, &c.attn_softcap));
    RETURN_IF_ERROR(GetDouble(j, "final_logit_softcapping", false, source, &c.final_softcap));
  }
  if (f.embed_scale_sqrt_d) c.embed_scale = std::sqrt(static_cast<double>(c.d_model));
  if (f.query_pre_attn_scalar) {
    double q = 0;
    RETURN_IF_ERROR(GetDouble(j, "query_pre_attn_scalar", false, source, &q));
    if (q < 0 || !std::isfinite(q)) {
      return FieldError(source, "query_pre_attn_scalar", absl::StrCat("must be positive, got ", q));
    }
    if (q > 0) c.attn_scale = 1.0 / std::sqrt(q);
  }
  if (c.model_type == "gpt2") {
    // GPT-2 options that change the math: only the defaults are implemented.
    bool scale = true, by_layer = false;
    RETURN_IF_ERROR(GetBool(j, "scale_attn_weights", source, &scale));
    RETURN_IF_ERROR(GetBool(j, "scale_attn_by_inverse_layer_idx", source, &by_layer));
    if (!scale || by_layer) {
      return FieldError(source, scale ? "scale_attn_by_inverse_layer_idx" : "scale_attn_weights",
                        "has a non-default value, which is not supported");
    }
  }
  if (f.model_type == std::string("gpt2")) {
    c.bos_token_id = c.eos_token_id = 50256;
  }
  RETURN_IF_ERROR(GetTokenId(j, "bos_token_id", source, &c.bos_token_id));
  RETURN_IF_ERROR(GetTokenId(j, "eos_token_id", source, &c.eos_token_id));

  std::string placement;
  RETURN_IF_ERROR(GetString(j, "sinkscope_norm_placement", false, source, &placement));
  if (!placement.empty()) {
    auto p = ParseNormPlacement(placement);
    if (!p.ok())
      return FieldError(source, "sinkscope_norm_placement", std::string(p.status().message()));
    if (*p != f.placement && f.names != &kCanonicalNames) {
      return FieldError(source, "sinkscope_norm_placement",
                        absl::StrCat("cannot change the placement of family ", f.model_type));
    }
    c.norm_placement = *p;
  }
  RETURN_IF_ERROR(ParseVariantKeys(j, f, source, &c));
  std::string layout;
  RETURN_IF_ERROR(GetString(j, "sinkscope_rope_layout", false, source, &layout));
  c.rope_layout = RopeLayout::kRotateHalves;
  if (layout == "adjacent_pairs") {
    c.rope_layout = RopeLayout::kAdjacentPairs;
  } else if (!layout.empty() && layout != "rotate_halves") {
    return FieldError(source, "sinkscope_rope_layout",
                      absl::StrCat("has unknown value '", layout,
                                   "' (expected rotate_halves or adjacent_pairs)"));
  }
  RETURN_IF_ERROR(Annotate(c.Validate(), source));
  return c;
}

const char* ArchitectureName(const std::string& model_type) {
  const FamilySpec* f = FindFamily(model_type);
  return f ? f->architecture : "LlamaForCausalLM";
}

// Canonical name `canon` (e.g. "model.layers.3.mlp.up_proj.weight") -> file name.
std::string FileName(const TensorNames& n, const std::string& canon) {
  for (const auto& [from, to] : n.top) {
    const std::string f = from;
    if (canon.compare(0, f.size() + 1, f + ".") == 0) return to + canon.substr(f.size());
  }
  const std::string lp = "model.layers.";
  if (canon.compare(0, lp.size(), lp) == 0) {
    const size_t dot = canon.find('.', lp.size());
    const std::string index = canon.substr(lp.size(), dot - lp.size());
    std::string rest = canon.substr(dot + 1);
    for (const auto& [from, to] : n.layer) {
      const std::string f = from;
      if (rest.compare(0, f.size() + 1, f + ".") == 0) {
        rest = to + rest.substr(f.size());
        break;
      }
    }
    return absl::StrCat(n.layer_prefix, index, ".", rest);
  }
  return canon;
}

}  // namespace



const char* NormPlacementName(NormPlacement p) { return NameOf(kNormPlacements, p); }
const char* NormKindName(NormKind k) { return NameOf(kNormKinds, k); }
const char* AttnGateName(AttnGate g) { return NameOf(kAttnGates, g); }
const char* AttnFnName(AttnFn f) { return NameOf(kAttnFns, f); }
const char* PositionalName(Positional p) { return NameOf(kPositions, p); }

const char* RopeLayoutName(RopeLayout l) {
  switch (l) {
    case RopeLayout::kAdjacentPairs:
      return "adjacent_pairs";
    case RopeLayout::kRotateHalves:
      return "rotate_halves";
  }
  return "unknown";
}


const char* ActivationName(Activation a) {
  switch (a) {
    case Activation::kSilu:
      return "silu";
    case Activation::kGelu:
      return "gelu";
    case Activation::kGeluTanh:
      return "gelu_tanh";
    case Activation::kRelu:
      return "relu";
  }
  return "unknown";
}

double ModelConfig::QueryScale() const {
  return attn_scale > 0 ? attn_scale : 1.0 / std::sqrt(static_cast<double>(d_head));
}

std::string KnownFamilies() { return KnownFamiliesImpl(); }

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c) {
  const FamilySpec* f = FindFamily(c.model_type);
  const TensorNames& names = f ? *f->names : kCanonicalNames;
  std::vector<TensorSpec> out;
  auto add = [&](const std::string& canon, std::vector<int64_t> shape, bool linear = false) {
    TensorSpec s;
    s.canonical = canon;
    s.file_name = FileName(names, canon);
    if (linear && names.conv1d && shape.size() == 2) {
      std::swap(shape[0], shape[1]);
      s.layout = TensorLayout::kConv1D;
    }
    s.shape = std::move(shape);
    out.push_back(std::move(s));
  };
  const bool has_bias = c.norm_kind != NormKind::kRms;
  auto norm = [&](const std::string& prefix, int64_t d) {
    add(prefix + ".weight", {d});
    if (has_bias) add(prefix + ".bias", {d});
    if (c.norm_kind == NormKind::kDyT) add(prefix + ".alpha", {1});
  };
  const int64_t q_dim = c.n_heads * c.d_head, kv_dim = c.n_kv_heads * c.d_head;
  add("model.embed_tokens.weight", {c.d_vocab, c.d_model});
  if (c.positional == Positional::kLearned) add("model.embed_positions.weight", {c.n_ctx, c.d_model});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    switch (c.norm_placement) {
      case NormPlacement::kPre:
        norm(p + "input_layernorm", c.d_model);
        norm(p + "post_attention_layernorm", c.d_model);
        break;
      case NormPlacement::kSandwich:
        norm(p + "input_layernorm", c.d_model);
        norm(p + "post_attention_layernorm", c.d_model);
        norm(p + "pre_feedforward_layernorm", c.d_model);
        norm(p + "post_feedforward_layernorm", c.d_model);
        break;
      case NormPlacement::kPost:
        norm(p + "post_attention_layernorm", c.d_model);
        norm(p + "post_feedforward_layernorm", c.d_model);
        break;
      case NormPlacement::kNone:
        break;
    }
    if (names.fused_qkv != nullptr) {
      // One weight (and bias) holds q, k and v: GPT-2's Conv1D [d_model, q + 2 kv],
      // GPT-NeoX's Linear [q + 2 kv, d_model] (per head [q_h | k_h | v_h]).
      const bool conv1d = names.fused_qkv_layout == TensorLayout::kFusedQkvConv1D;
      for (const char* kind : {"weight", "bias"}) {
        if (std::string(kind) == "bias" && !c.qkv_bias) continue;
        TensorSpec s;
        s.file_name = absl::StrCat(names.layer_prefix, l, ".", names.fused_qkv, ".", kind);
        s.canonical = absl::StrCat(p, "self_attn.q_proj.", kind);
        s.canonical_k = absl::StrCat(p, "self_attn.k_proj.", kind);
        s.canonical_v = absl::StrCat(p, "self_attn.v_proj.", kind);
        s.layout = names.fused_qkv_layout;
        if (std::string(kind) == "bias") {
          s.shape = {q_dim + 2 * kv_dim};
        } else if (conv1d) {
          s.shape = {c.d_model, q_dim + 2 * kv_dim};
        } else {
          s.shape = {q_dim + 2 * kv_dim, c.d_model};
        }
        out.push_back(std::move(s));
      }
    } else {
      add(p + "self_attn.q_proj.weight", {q_dim, c.d_model}, true);
      add(p + "self_attn.k_proj.weight", {kv_dim, c.d_model}, true);
      add(p + "self_attn.v_proj.weight", {kv_dim, c.d_model}, true);
      if (c.qkv_bias) {
        add(p + "self_attn.q_proj.bias", {q_dim});
        add(p + "self_attn.k_proj.bias", {kv_dim});
        add(p + "self_attn.v_proj.bias", {kv_dim});
      }
    }
    if (c.attn_gate != AttnGate::kNone) {
      add(p + "self_attn.gate_proj.weight",
          {c.attn_gate == AttnGate::kHeadwise ? c.n_heads : q_dim, c.d_model}, true);
    }
    if (c.kv_bias) {
      add(p + "self_attn.sink_key", {c.n_kv_heads, c.d_head});
      add(p + "self_attn.sink_value", {c.n_kv_heads, c.d_head});
    }
    add(p + "self_attn.o_proj.weight", {c.d_model, q_dim}, true);
    if (c.o_bias) add(p + "self_attn.o_proj.bias", {c.d_model});
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", {c.qk_norm_full_width ? q_dim : c.d_head});
      add(p + "self_attn.k_norm.weight", {c.qk_norm_full_width ? kv_dim : c.d_head});
    }
    if (c.gated_mlp) add(p + "mlp.gate_proj.weight", {c.d_ffn, c.d_model}, true);
    add(p + "mlp.up_proj.weight", {c.d_ffn, c.d_model}, true);
    add(p + "mlp.down_proj.weight", {c.d_model, c.d_ffn}, true);
    if (c.mlp_bias) {
      if (c.gated_mlp) add(p + "mlp.gate_proj.bias", {c.d_ffn});
      add(p + "mlp.up_proj.bias", {c.d_ffn});
      add(p + "mlp.down_proj.bias", {c.d_model});
    }
  }
  norm("model.norm", c.d_model);
  if (!c.tied_embeddings) add("lm_head.weight", {c.d_vocab, c.d_model});
  return out;
}

std::optional<std::string> StoredTensorName(const ModelConfig& c, const std::string& name_in_file) {
  if (absl::EndsWith(name_in_file, "rotary_emb.inv_freq")) return std::nullopt;  // RoPE buffer
  const FamilySpec* f = FindFamily(c.model_type);
  if (f == nullptr) return name_in_file;
  const TensorNames& n = *f->names;
  std::string name = name_in_file;
  if (n.optional_prefix != nullptr && !absl::StartsWith(name, n.optional_prefix)) {
    // Bare only where the prefixed name is one of the family's (not e.g. lm_head.weight).
    const std::string prefixed = absl::StrCat(n.optional_prefix, name);
    bool known = absl::StartsWith(prefixed, n.layer_prefix);
    for (const auto& [canon, file] : n.top) known |= absl::StartsWith(prefixed, absl::StrCat(file, "."));
    if (known) name = prefixed;
  }
  for (const char* p : n.ignored_prefixes) {
    if (absl::StartsWith(name, p)) return std::nullopt;
  }
  if (absl::StartsWith(name, n.layer_prefix)) {
    // <layer_prefix><digits>.<suffix>
    const size_t dot = name.find('.', std::strlen(n.layer_prefix));
    if (dot != std::string::npos) {
      const std::string suffix = name.substr(dot + 1);
      for (const char* s : n.ignored_layer_suffixes) {
        if (suffix == s) return std::nullopt;
      }
    }
  }
  return name;
}

int64_t ParameterCount(const ModelConfig& c) {
  int64_t n = 0;
  for (const TensorSpec& s : ExpectedTensors(c)) {
    int64_t e = 1;
    for (int64_t d : s.shape) e *= d;
    n += e;
  }
  return n;
}

absl::StatusOr<NormPlacement> ParseNormPlacement(const std::string& name) {
  for (const auto& [n, p] : kNormPlacements) {
    if (name == n) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown norm placement '", name, "' (expected pre, sandwich, post or none)"));
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(name, " must be positive, got ", v));
    if (v > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(name, " is too large: ", v, " > ", kMaxDim));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(positive("d_model", d_model));
  RETURN_IF_ERROR(positive("n_layers", n_layers));
  RETURN_IF_ERROR(positive("n_heads", n_heads));
  RETURN_IF_ERROR(positive("n_kv_heads", n_kv_heads));
  RETURN_IF_ERROR(positive("d_head", d_head));
  RETURN_IF_ERROR(positive("d_ffn", d_ffn));
  RETURN_IF_ERROR(positive("d_vocab", d_vocab));
  RETURN_IF_ERROR(positive("n_ctx", n_ctx));
  if (n_heads % n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_heads (", n_heads, ") must be a multiple of n_kv_heads (", n_kv_heads, ")"));
  }
  if (positional == Positional::kRope && d_head % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("d_head must be even for RoPE, got ", d_head));
  }
  if (rotary_dim < 0 || rotary_dim > d_head || rotary_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rotary_dim must be even and in [0, d_head = ", d_head, "], got ", rotary_dim,
        " (0 = all of d_head)"));
  }
  if (parallel_attn_mlp && norm_placement != NormPlacement::kPre) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel attention + MLP is implemented for pre-norm only, not ",
        NormPlacementName(norm_placement), " norm"));
  }
  if (kv_bias && (attn_fn != AttnFn::kSoftmax || attn_softcap > 0 || sliding_window > 0 ||
                  std::any_of(layer_windows.begin(), layer_windows.end(), [](int64_t w) { return w > 0; }))) {
    return absl::InvalidArgumentError(
        "kv_bias (a learned key/value slot) is implemented for softmax attention without soft-cap "
        "or sliding window");
  }
  if (norm_kind == NormKind::kDyT && (!(dyt_alpha0 > 0) || !std::isfinite(dyt_alpha0))) {
    return absl::InvalidArgumentError(absl::StrCat("dyt_alpha0 must be positive, got ", dyt_alpha0));
  }
  if (!(norm_eps > 0) || !std::isfinite(norm_eps)) {
    return absl::InvalidArgumentError(absl::StrCat("norm_eps must be positive, got ", norm_eps));
  }
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope_theta must be positive, got ", rope_theta));
  }
  for (size_t l = 0; l < layer_windows.size(); ++l) {
    if (layer_windows[l] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer_windows[", l, "] must be >= 0, got ", layer_windows[l]));
    }
  }
  if (!layer_windows.empty() && static_cast<int64_t>(layer_windows.size()) != n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer_windows has ", layer_windows.size(),
                                                   " entries for ", n_layers, " layers"));
  }
  for (const auto& [name, v] : {std::pair<const char*, double>{"attn_softcap", attn_softcap},
                                {"final_softcap", final_softcap},
                                {"attn_scale", attn_scale},
                                {"rope_local_theta", rope_local_theta}}) {
    if (!(v >= 0) || !std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be >= 0, got ", v));
    }
  }
  if (!(embed_scale > 0) || !std::isfinite(embed_scale)) {
    return absl::InvalidArgumentError(absl::StrCat("embed_scale must be positive, got ", embed_scale));
  }
  if (sliding_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sliding_window must be >= 0, got ", sliding_window));
  }
  const RopeScaling& rs = rope_scaling;
  if (!rs.rope_type.empty()) {
    if (rs.rope_type != "llama3" && rs.rope_type != "linear") {
      return absl::InvalidArgumentError(
          absl::StrCat("rope_scaling.rope_type '", rs.rope_type, "' is not supported"));
    }
    if (!(rs.factor > 0) || !std::isfinite(rs.factor)) {
      return absl::InvalidArgumentError(
          absl::StrCat("rope_scaling.factor must be positive, got ", rs.factor));
    }
    if (rs.rope_type == "llama3") {
      if (!(rs.low_freq_factor > 0) || !(rs.high_freq_factor > rs.low_freq_factor) ||
          !std::isfinite(rs.high_freq_factor)) {
        return absl::InvalidArgumentError(
            absl::StrCat("rope_scaling needs 0 < low_freq_factor < high_freq_factor, got ",
                         rs.low_freq_factor, " and ", rs.high_freq_factor));
      }
      if (rs.original_max_position_embeddings <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("rope_scaling.original_max_position_embeddings must be positive, got ",
                         rs.original_max_position_embeddings));
      }
    }
  }
  return absl::OkStatus();
}

std::string ModelConfig::Summary() const {
  std::string s = absl::StrFormat(
      "%s: d_model=%d n_layers=%d n_heads=%d n_kv_heads=%d d_head=%d d_ffn=%d d_vocab=%d "
      "n_ctx=%d norm=%s eps=%g rope=%s theta=%g",
      model_type, d_model, n_layers, n_heads, n_kv_heads, d_head, d_ffn, d_vocab, n_ctx,
      NormPlacementName(norm_placement), norm_eps, RopeLayoutName(rope_layout), rope_theta);
  if (!rope_scaling.rope_type.empty()) {
    absl::StrAppend(&s, " rope_scaling=", rope_scaling.rope_type, "x", rope_scaling.factor);
  }
  if (norm_kind != NormKind::kRms) absl::StrAppend(&s, " ", NormKindName(norm_kind));
  if (norm_kind == NormKind::kDyT) absl::StrAppend(&s, " alpha0=", dyt_alpha0);
  if (attn_gate != AttnGate::kNone) absl::StrAppend(&s, " attn_gate=", AttnGateName(attn_gate));
  if (attn_fn != AttnFn::kSoftmax) absl::StrAppend(&s, " attn_fn=", AttnFnName(attn_fn));
  if (kv_bias) absl::StrAppend(&s, " kv_bias");
  if (norm_gain_offset != 0) absl::StrAppend(&s, " gain=", norm_gain_offset, "+w");
  absl::StrAppend(&s, " act=", ActivationName(activation), gated_mlp ? " gated" : " ungated");
  if (positional != Positional::kRope) absl::StrAppend(&s, " positions=", PositionalName(positional));
  if (qkv_bias) absl::StrAppend(&s, " qkv_bias");
  if (o_bias) absl::StrAppend(&s, " o_bias");
  if (mlp_bias) absl::StrAppend(&s, " mlp_bias");
  if (qk_norm) absl::StrAppend(&s, qk_norm_full_width ? " qk_norm(full)" : " qk_norm");
  if (sliding_window > 0) absl::StrAppend(&s, " sliding_window=", sliding_window);
  if (!layer_windows.empty()) absl::StrAppend(&s, " layer_windows=[", absl::StrJoin(layer_windows, ","), "]");
  if (rope_local_theta > 0) absl::StrAppend(&s, " local_theta=", rope_local_theta);
  if (rotary_dim > 0 && rotary_dim < d_head) absl::StrAppend(&s, " rotary_dim=", rotary_dim);
  if (parallel_attn_mlp) absl::StrAppend(&s, " parallel_attn_mlp");
  if (attn_softcap > 0) absl::StrAppend(&s, " attn_softcap=", attn_softcap);
  if (final_softcap > 0) absl::StrAppend(&s, " final_softcap=", final_softcap);
  if (embed_scale != 1.0) absl::StrAppend(&s, " embed_scale=", embed_scale);
  if (attn_scale > 0) absl::StrAppend(&s, " attn_scale=", attn_scale);
  absl::StrAppend(&s, tied_embeddings ? " tied" : " untied");
  return s;
}

absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", e.what()));
  }
  try {
    return ParseHfConfigImpl(j, source);
  } catch (const json::exception& e) {  // defensive: get<> on an unexpected type
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

namespace {

absl::Status WriteJson(const std::string& path, const json& j) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  out << j.dump(2) << "\n";
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

// Gemma2Config keys (transformers 5): only configs with Gemma 2's fixed fields.
absl::Status WriteGemma2Config(const std::string& path, const ModelConfig& c) {
  const double sqrt_d = std::sqrt(static_cast<double>(c.d_model));
  if (c.norm_placement != NormPlacement::kSandwich || c.norm_kind != NormKind::kRms ||
      c.norm_gain_offset != 1.0 || c.embed_scale != sqrt_d || !c.gated_mlp ||
      c.positional != Positional::kRope || c.activation == Activation::kSilu || c.qk_norm ||
      c.rope_local_theta > 0 || c.rotary_dim > 0 || c.parallel_attn_mlp || c.mlp_bias ||
      !c.rope_scaling.rope_type.empty() || c.rope_layout != RopeLayout::kRotateHalves) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": model_type gemma2 is sandwich RMSNorm with (1 + w) gains, sqrt(d_model) embedding "
              "scale, a gated gelu MLP and RoPE, without QK-norm, biases on the MLP or RoPE scaling"));
  }
  int64_t window = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const int64_t w = c.Window(l);
    if (w > 0 && window > 0 && w != window) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": gemma2 has one sliding_window; layers use ", window, " and ", w));
    }
    if (w > 0) window = w;
  }
  json types = json::array();
  for (int64_t l = 0; l < c.n_layers; ++l) {
    types.push_back(c.Window(l) > 0 ? "sliding_attention" : "full_attention");
  }
  // query_pre_attn_scalar q gives the query scale q^-1/2 (0 = 1/sqrt(d_head): q = d_head).
  // transformers types it as an int.
  const double q_exact = c.attn_scale > 0 ? 1.0 / (c.attn_scale * c.attn_scale)
                                          : static_cast<double>(c.d_head);
  const int64_t q = std::llround(q_exact);
  if (q <= 0 || std::abs(q_exact - static_cast<double>(q)) > 1e-6 * q_exact) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": gemma2's query_pre_attn_scalar is an integer; the query scale ", c.attn_scale,
        " gives ", q_exact));
  }
  json j;
  j["architectures"] = json::array({"Gemma2ForCausalLM"});
  j["model_type"] = "gemma2";
  j["hidden_activation"] = c.activation == Activation::kGelu ? "gelu" : "gelu_pytorch_tanh";
  j["hidden_size"] = c.d_model;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.d_head;
  j["intermediate_size"] = c.d_ffn;
  j["vocab_size"] = c.d_vocab;
  j["max_position_embeddings"] = c.n_ctx;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["attention_bias"] = c.qkv_bias;
  j["query_pre_attn_scalar"] = q;
  j["attn_logit_softcapping"] = c.attn_softcap > 0 ? json(c.attn_softcap) : json(nullptr);
  j["final_logit_softcapping"] = c.final_softcap > 0 ? json(c.final_softcap) : json(nullptr);
  j["layer_types"] = types;
  j["sliding_window"] = window > 0 ? window : c.n_ctx;  // unused when every layer is full
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  return WriteJson(path, j);
}

}  // namespace

absl::Status WriteHfConfig(const std::string& path, const ModelConfig& c) {
  RETURN_IF_ERROR(Annotate(c.Validate(), path));
  const std::string& mt = c.model_type;
  const FamilySpec* family = FindFamily(mt);
  if (family == nullptr || !family->writable) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": model_type '", mt, "' cannot be written as config.json"));
  }
  if (mt == "gemma2") return WriteGemma2Config(path, c);
  if (c.norm_gain_offset != 0 ||
      c.attn_softcap > 0 || c.final_softcap > 0 || c.embed_scale != 1.0 || c.attn_scale > 0 ||
      !c.layer_windows.empty() || c.rope_local_theta > 0 ||
      c.qk_norm_full_width != (mt == "olmo2") || c.rotary_dim > 0 || c.parallel_attn_mlp) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": config uses fields only gpt2/gemma/olmo2/gpt_neox families express; not writable as ",
        mt));
  }
  if (c.qk_norm != (mt == "qwen3" || mt == "olmo2")) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": qk_norm is expressed only by model_type qwen3 or olmo2 (qk_norm=",
                     c.qk_norm, ", model_type=", mt, ")"));
  }
  if (mt == "olmo2" && (c.norm_placement != NormPlacement::kPost || c.d_head * c.n_heads != c.d_model)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": model_type olmo2 is post-norm with d_head = d_model / n_heads (norm_placement=",
        NormPlacementName(c.norm_placement), ", d_head=", c.d_head, ", d_model=", c.d_model,
        ", n_heads=", c.n_heads, ")"));
  }
  if (mt == "qwen2" && !c.qkv_bias) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": model_type qwen2 always has q/k/v bias; qkv_bias=false"));
  }
  if (c.sliding_window != 0 && mt != "mistral") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": sliding_window is written only for model_type mistral"));
  }
  json j;
  j["architectures"] = json::array({ArchitectureName(mt)});
  j["model_type"] = mt;
  j["hidden_act"] = c.activation == Activation::kGeluTanh ? "gelu_pytorch_tanh"
                    : c.activation == Activation::kGelu   ? "gelu"
                    : c.activation == Activation::kRelu   ? "relu"
                                                          : "silu";
  j["hidden_size"] = c.d_model;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  if (mt != "olmo2") j["head_dim"] = c.d_head;  // Olmo2Config has no head_dim
  j["intermediate_size"] = c.d_ffn;
  j["vocab_size"] = c.d_vocab;
  j["max_position_embeddings"] = c.n_ctx;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.rope_type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    json r = {{"rope_type", c.rope_scaling.rope_type}, {"factor", c.rope_scaling.factor}};
    if (c.rope_scaling.rope_type == "llama3") {
      r["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      r["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  j["tie_word_embeddings"] = c.tied_embeddings;
  if (mt != "qwen2") j["attention_bias"] = c.qkv_bias;
  if (c.mlp_bias) j["mlp_bias"] = true;
  if (mt == "mistral") {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  }
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["sinkscope_norm_placement"] = NormPlacementName(c.norm_placement);
  if (c.norm_kind != NormKind::kRms) j["sinkscope_norm_kind"] = NormKindName(c.norm_kind);
  if (c.norm_kind == NormKind::kDyT) j["sinkscope_dyt_alpha0"] = c.dyt_alpha0;
  if (c.attn_gate != AttnGate::kNone) j["sinkscope_attn_gate"] = AttnGateName(c.attn_gate);
  if (c.attn_fn != AttnFn::kSoftmax) j["sinkscope_attn_fn"] = AttnFnName(c.attn_fn);
  if (c.kv_bias) j["sinkscope_kv_bias"] = true;
  if (!c.gated_mlp) j["sinkscope_mlp"] = "plain";
  if (c.positional != Positional::kRope) j["sinkscope_positions"] = PositionalName(c.positional);
  if (c.rope_layout == RopeLayout::kAdjacentPairs) {
    j["sinkscope_rope_layout"] = RopeLayoutName(c.rope_layout);
  }
  return WriteJson(path, j);
}

}  // namespace sinkscope
