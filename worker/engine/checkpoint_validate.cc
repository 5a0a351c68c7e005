// ValidateCheckpointTensors: the config's implied tensor set, shapes, finiteness.
#include <ATen/core/Tensor.h>
#include <ATen/ops/any.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/checkpoint.h"

namespace sinkscope {
namespace {

using Shape = std::vector<int64_t>;

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Every tensor `c` implies, with its shape (names and shapes in checkpoint.h).
std::map<std::string, Shape> ExpectedTensors(const ModelConfig& c) {
  std::map<std::string, Shape> e;
  const int64_t q_dim = c.n_heads * c.d_head, kv_dim = c.n_kv_heads * c.d_head;
  e["model.embed_tokens.weight"] = {c.d_vocab, c.d_model};
  e["model.norm.weight"] = {c.d_model};
  if (!c.tied_embeddings) e["lm_head.weight"] = {c.d_vocab, c.d_model};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    switch (c.norm_placement) {
      case NormPlacement::kPre:
        e[p + "input_layernorm.weight"] = {c.d_model};
        e[p + "post_attention_layernorm.weight"] = {c.d_model};
        break;
      case NormPlacement::kSandwich:
        e[p + "input_layernorm.weight"] = {c.d_model};
        e[p + "post_attention_layernorm.weight"] = {c.d_model};
        e[p + "pre_feedforward_layernorm.weight"] = {c.d_model};
        e[p + "post_feedforward_layernorm.weight"] = {c.d_model};
        break;
      case NormPlacement::kPost:
        e[p + "post_attention_layernorm.weight"] = {c.d_model};
        e[p + "post_feedforward_layernorm.weight"] = {c.d_model};
        break;
    }
    e[p + "self_attn.q_proj.weight"] = {q_dim, c.d_model};
    e[p + "self_attn.k_proj.weight"] = {kv_dim, c.d_model};
    e[p + "self_attn.v_proj.weight"] = {kv_dim, c.d_model};
    e[p + "self_attn.o_proj.weight"] = {c.d_model, q_dim};
    if (c.qkv_bias) {
      e[p + "self_attn.q_proj.bias"] = {q_dim};
      e[p + "self_attn.k_proj.bias"] = {kv_dim};
      e[p + "self_attn.v_proj.bias"] = {kv_dim};
    }
    if (c.qk_norm) {
      e[p + "self_attn.q_norm.weight"] = {c.d_head};
      e[p + "self_attn.k_norm.weight"] = {c.d_head};
    }
    e[p + "mlp.gate_proj.weight"] = {c.d_ffn, c.d_model};
    e[p + "mlp.up_proj.weight"] = {c.d_ffn, c.d_model};
    e[p + "mlp.down_proj.weight"] = {c.d_model, c.d_ffn};
  }
  return e;
}

// Lists at most a few names, then "(and N more)".
std::string NameList(const std::vector<std::string>& names) {
  constexpr size_t kShow = 6;
  std::vector<std::string> shown(names.begin(), names.begin() + std::min(kShow, names.size()));
  std::string s = absl::StrJoin(shown, ", ");
  if (names.size() > kShow) absl::StrAppend(&s, " (and ", names.size() - kShow, " more)");
  return s;
}

// OK when every value of `t` is finite. Fast path: a finite sum implies finite
// elements (NaN and Inf propagate); only a non-finite sum, which may also be an
// overflow, pays for the exact elementwise check.
absl::Status CheckFinite(const std::string& name, const at::Tensor& t, const std::string& source) {
  if (t.numel() == 0) return absl::OkStatus();
  const double sum = t.sum().item<double>();
  if (std::isfinite(sum)) return absl::OkStatus();
  if (at::isfinite(t).all().item<bool>()) return absl::OkStatus();
  const bool has_nan = at::isnan(t).any().item<bool>();
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": tensor ", name, " contains ", has_nan ? "NaN" : "Inf", " values"));
}

absl::Status ValidateImpl(const ModelConfig& config,
                          const std::map<std::string, at::Tensor>& tensors,
                          const std::string& source) {
  if (absl::Status s = config.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid config: ", s.message()));
  }
  const std::map<std::string, Shape> expected = ExpectedTensors(config);
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, shape] : expected) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      missing.push_back(name);
      continue;
    }
    const at::Tensor& t = it->second;
    if (!t.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, " is undefined"));
    }
    if (t.sizes() != c10::IntArrayRef(shape)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, " has shape ",
                                                     ShapeString(t.sizes()), ", config implies ",
                                                     ShapeString(shape)));
    }
    if (!t.is_floating_point()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, " has dtype ",
                                                     c10::toString(t.scalar_type()),
                                                     ", expected a floating-point type"));
    }
  }
  for (const auto& [name, t] : tensors) {
    if (expected.count(name) == 0) unexpected.push_back(name);
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": missing tensor", missing.size() > 1 ? "s " : " ", NameList(missing),
                     " (config: ", config.Summary(), ")"));
  }
  if (!unexpected.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unexpected tensor", unexpected.size() > 1 ? "s " : " ",
                     NameList(unexpected), " not implied by the config (", config.Summary(), ")"));
  }
  for (const auto& [name, t] : tensors) {
    if (absl::Status s = CheckFinite(name, t, source); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateCheckpointTensors(const ModelConfig& config,
                                       const std::map<std::string, at::Tensor>& tensors,
                                       const std::string& source) {
  try {
    return ValidateImpl(config, tensors, source);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(source, ": libtorch error while validating: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(source, ": error while validating: ", e.what()));
  }
}

}  // namespace sinkscope
