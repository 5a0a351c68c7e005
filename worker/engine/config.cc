// ModelConfig: names, validation and the HF config.json parser/writer.
//
// config.json mapping (ParseHfConfig <-> WriteHfConfig):
//   model_type                 llama | mistral | qwen2 | qwen3
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
// WriteHfConfig refuses configs config.json cannot express (qk_norm without qwen3,
// qwen2 without qkv bias, a sliding window outside mistral).
#include "worker/engine/config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/status_macros.h"

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

absl::StatusOr<RopeScaling> ParseRopeScaling(const json& j, const std::string& source) {
  RopeScaling rs;
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return rs;
  if (!it->is_object()) {
    return FieldError(source, "rope_scaling",
                      absl::StrCat("must be an object or null, got ", JsonTypeName(*it)));
  }
  const json& r = *it;
  std::string type;
  RETURN_IF_ERROR(GetString(r, "rope_type", false, source, &type));
  if (type.empty()) RETURN_IF_ERROR(GetString(r, "type", false, source, &type));
  if (type.empty() || type == "default") return rs;
  if (type != "llama3" && type != "linear") {
    return FieldError(source, "rope_scaling",
                      absl::StrCat("has unsupported rope_type '", type,
                                   "' (supported: default, linear, llama3)"));
  }
  rs.rope_type = type;
  RETURN_IF_ERROR(GetDouble(r, "factor", true, source, &rs.factor));
  if (type == "llama3") {
    RETURN_IF_ERROR(GetDouble(r, "low_freq_factor", false, source, &rs.low_freq_factor));
    RETURN_IF_ERROR(GetDouble(r, "high_freq_factor", false, source, &rs.high_freq_factor));
    RETURN_IF_ERROR(GetInt(r, "original_max_position_embeddings", false, source,
                           &rs.original_max_position_embeddings));
  }
  return rs;
}

absl::StatusOr<ModelConfig> ParseHfConfigImpl(const json& j, const std::string& source) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": top level must be a JSON object, got ", JsonTypeName(j)));
  }
  ModelConfig c;
  RETURN_IF_ERROR(GetString(j, "model_type", true, source, &c.model_type));
  const std::string& mt = c.model_type;
  if (mt != "llama" && mt != "mistral" && mt != "qwen2" && mt != "qwen3") {
    return FieldError(
        source, "model_type",
        absl::StrCat("has unsupported value '", mt, "' (supported: llama, mistral, qwen2, qwen3)"));
  }
  std::string act = "silu";
  RETURN_IF_ERROR(GetString(j, "hidden_act", false, source, &act));
  if (act != "silu") {
    return FieldError(source, "hidden_act",
                      absl::StrCat("has unsupported value '", act, "' (only silu)"));
  }
  RETURN_IF_ERROR(GetInt(j, "hidden_size", true, source, &c.d_model));
  RETURN_IF_ERROR(GetInt(j, "num_hidden_layers", true, source, &c.n_layers));
  RETURN_IF_ERROR(GetInt(j, "num_attention_heads", true, source, &c.n_heads));
  c.n_kv_heads = c.n_heads;
  RETURN_IF_ERROR(GetInt(j, "num_key_value_heads", false, source, &c.n_kv_heads));
  c.d_head = c.n_heads > 0 ? c.d_model / c.n_heads : 0;
  RETURN_IF_ERROR(GetInt(j, "head_dim", false, source, &c.d_head));
  RETURN_IF_ERROR(GetInt(j, "intermediate_size", true, source, &c.d_ffn));
  RETURN_IF_ERROR(GetInt(j, "vocab_size", true, source, &c.d_vocab));
  RETURN_IF_ERROR(GetInt(j, "max_position_embeddings", false, source, &c.n_ctx));
  c.norm_eps = 1e-6;
  RETURN_IF_ERROR(GetDouble(j, "rms_norm_eps", false, source, &c.norm_eps));
  RETURN_IF_ERROR(GetDouble(j, "rope_theta", false, source, &c.rope_theta));
  ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(j, source));
  RETURN_IF_ERROR(GetBool(j, "tie_word_embeddings", source, &c.tied_embeddings));
  if (mt == "qwen2") {
    c.qkv_bias = true;
  } else {
    RETURN_IF_ERROR(GetBool(j, "attention_bias", source, &c.qkv_bias));
  }
  c.qk_norm = (mt == "qwen3");
  if (mt == "mistral") {
    RETURN_IF_ERROR(GetInt(j, "sliding_window", false, source, &c.sliding_window));
  } else if (mt == "qwen2" || mt == "qwen3") {
    bool use_sw = false;
    RETURN_IF_ERROR(GetBool(j, "use_sliding_window", source, &use_sw));
    if (use_sw) return FieldError(source, "use_sliding_window", "= true is not supported");
  }
  RETURN_IF_ERROR(GetTokenId(j, "bos_token_id", source, &c.bos_token_id));
  RETURN_IF_ERROR(GetTokenId(j, "eos_token_id", source, &c.eos_token_id));

  std::string placement;
  RETURN_IF_ERROR(GetString(j, "sinkscope_norm_placement", false, source, &placement));
  if (!placement.empty()) {
    auto p = ParseNormPlacement(placement);
    if (!p.ok())
      return FieldError(source, "sinkscope_norm_placement", std::string(p.status().message()));
    c.norm_placement = *p;
  }
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
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "qwen3") return "Qwen3ForCausalLM";
  return "LlamaForCausalLM";
}

}  // namespace

const char* NormPlacementName(NormPlacement p) {
  switch (p) {
    case NormPlacement::kPre:
      return "pre";
    case NormPlacement::kSandwich:
      return "sandwich";
    case NormPlacement::kPost:
      return "post";
  }
  return "unknown";
}

const char* RopeLayoutName(RopeLayout l) {
  switch (l) {
    case RopeLayout::kAdjacentPairs:
      return "adjacent_pairs";
    case RopeLayout::kRotateHalves:
      return "rotate_halves";
  }
  return "unknown";
}

absl::StatusOr<NormPlacement> ParseNormPlacement(const std::string& name) {
  if (name == "pre") return NormPlacement::kPre;
  if (name == "sandwich") return NormPlacement::kSandwich;
  if (name == "post") return NormPlacement::kPost;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown norm placement '", name, "' (expected pre, sandwich or post)"));
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
  if (d_head % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("d_head must be even for RoPE, got ", d_head));
  }
  if (!(norm_eps > 0) || !std::isfinite(norm_eps)) {
    return absl::InvalidArgumentError(absl::StrCat("norm_eps must be positive, got ", norm_eps));
  }
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope_theta must be positive, got ", rope_theta));
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
  if (qkv_bias) absl::StrAppend(&s, " qkv_bias");
  if (qk_norm) absl::StrAppend(&s, " qk_norm");
  if (sliding_window > 0) absl::StrAppend(&s, " sliding_window=", sliding_window);
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

absl::Status WriteHfConfig(const std::string& path, const ModelConfig& c) {
  RETURN_IF_ERROR(Annotate(c.Validate(), path));
  const std::string& mt = c.model_type;
  if (mt != "llama" && mt != "mistral" && mt != "qwen2" && mt != "qwen3") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": model_type '", mt, "' cannot be written as config.json"));
  }
  if (c.qk_norm != (mt == "qwen3")) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": qk_norm is expressed only by model_type qwen3 (qk_norm=", c.qk_norm,
                     ", model_type=", mt, ")"));
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
  j["hidden_act"] = "silu";
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
  if (mt == "mistral") {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  }
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["sinkscope_norm_placement"] = NormPlacementName(c.norm_placement);
  if (c.rope_layout == RopeLayout::kAdjacentPairs) {
    j["sinkscope_rope_layout"] = RopeLayoutName(c.rope_layout);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  out << j.dump(2) << "\n";
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace sinkscope
