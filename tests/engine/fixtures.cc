#include "tests/engine/fixtures.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"

namespace sinkscope::testing {

ModelConfig SmallConfig(const std::string& family) {
  ModelConfig c;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 4;
  c.d_head = 8;
  c.d_ffn = 48;
  c.d_vocab = 64;
  c.n_ctx = 64;
  c.rope_layout = RopeLayout::kRotateHalves;
  if (family == "llama3") {
    c.n_kv_heads = 2;
    c.rope_theta = 500000;
    c.rope_scaling.rope_type = "llama3";
    c.rope_scaling.factor = 8;
    c.rope_scaling.low_freq_factor = 1;
    c.rope_scaling.high_freq_factor = 4;
    c.rope_scaling.original_max_position_embeddings = 16;
  } else if (family == "mistral") {
    c.model_type = "mistral";
    c.n_kv_heads = 2;
    c.sliding_window = 5;
  } else if (family == "qwen2") {
    c.model_type = "qwen2";
    c.qkv_bias = true;
    c.n_kv_heads = 2;
  } else if (family == "qwen3") {
    c.model_type = "qwen3";
    c.qk_norm = true;
    c.d_head = 16;  // head_dim != d_model / n_heads, as in Qwen3
  } else if (family == "sandwich") {
    c.norm_placement = NormPlacement::kSandwich;
  } else if (family == "post") {
    c.norm_placement = NormPlacement::kPost;
  }
  return c;
}

Checkpoint RandomCheckpoint(const ModelConfig& c, uint64_t seed, double scale) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto randn = [&](std::vector<int64_t> shape, double s) {
    return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)) * s;
  };
  auto norm = [&](int64_t n) { return at::ones({n}) + randn({n}, 0.1); };
  Checkpoint ck;
  ck.config = c;
  ck.format = "test-random";
  auto& t = ck.tensors;
  t["model.embed_tokens.weight"] = randn({c.d_vocab, c.d_model}, 1.0);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const int64_t q_out = c.n_heads * c.d_head, kv_out = c.n_kv_heads * c.d_head;
    t[p + "self_attn.q_proj.weight"] = randn({q_out, c.d_model}, scale * 3);
    t[p + "self_attn.k_proj.weight"] = randn({kv_out, c.d_model}, scale * 3);
    t[p + "self_attn.v_proj.weight"] = randn({kv_out, c.d_model}, scale);
    t[p + "self_attn.o_proj.weight"] = randn({c.d_model, q_out}, scale);
    if (c.qkv_bias) {
      t[p + "self_attn.q_proj.bias"] = randn({q_out}, scale);
      t[p + "self_attn.k_proj.bias"] = randn({kv_out}, scale);
      t[p + "self_attn.v_proj.bias"] = randn({kv_out}, scale);
    }
    if (c.qk_norm) {
      t[p + "self_attn.q_norm.weight"] = norm(c.d_head);
      t[p + "self_attn.k_norm.weight"] = norm(c.d_head);
    }
    t[p + "mlp.gate_proj.weight"] = randn({c.d_ffn, c.d_model}, scale);
    t[p + "mlp.up_proj.weight"] = randn({c.d_ffn, c.d_model}, scale);
    t[p + "mlp.down_proj.weight"] = randn({c.d_model, c.d_ffn}, scale);
    switch (c.norm_placement) {
      case NormPlacement::kPre:
        t[p + "input_layernorm.weight"] = norm(c.d_model);
        t[p + "post_attention_layernorm.weight"] = norm(c.d_model);
        break;
      case NormPlacement::kSandwich:
        t[p + "input_layernorm.weight"] = norm(c.d_model);
        t[p + "post_attention_layernorm.weight"] = norm(c.d_model);
        t[p + "pre_feedforward_layernorm.weight"] = norm(c.d_model);
        t[p + "post_feedforward_layernorm.weight"] = norm(c.d_model);
        break;
      case NormPlacement::kPost:
        t[p + "post_attention_layernorm.weight"] = norm(c.d_model);
        t[p + "post_feedforward_layernorm.weight"] = norm(c.d_model);
        break;
    }
  }
  t["model.norm.weight"] = norm(c.d_model);
  if (!c.tied_embeddings) t["lm_head.weight"] = randn({c.d_vocab, c.d_model}, scale);
  return ck;
}

at::Tensor PermuteForRotateHalves(const at::Tensor& w, int64_t n_head, int64_t d_head) {
  const int64_t d_in = w.size(1);
  return w.view({n_head, d_head / 2, 2, d_in}).transpose(1, 2).reshape({n_head * d_head, d_in});
}

}  // namespace sinkscope::testing
