#include "tests/engine/fixtures.h"

#include <cstdlib>

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>

#include <gtest/gtest.h>

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
  } else if (family == "qwen2_tied") {
    c.model_type = "qwen2";
    c.qkv_bias = true;
    c.n_kv_heads = 2;
    c.tied_embeddings = true;  // Qwen2-0.5B / 1.5B: lm_head = embed_tokens
  } else if (family == "olmo2") {
    c.model_type = "olmo2";
    c.norm_placement = NormPlacement::kPost;
    c.qk_norm = true;
    c.qk_norm_full_width = true;  // q_norm over n_heads*d_head, k_norm over n_kv_heads*d_head
    c.n_kv_heads = 2;
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
      t[p + "self_attn.q_norm.weight"] = norm(c.qk_norm_full_width ? q_out : c.d_head);
      t[p + "self_attn.k_norm.weight"] = norm(c.qk_norm_full_width ? kv_out : c.d_head);
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

c10::Device TestDevice() {
  const char* env = std::getenv("SINKSCOPE_TEST_DEVICE");
  if (env == nullptr || *env == '\0') return c10::Device(c10::kCPU);
  absl::StatusOr<c10::Device> d = ParseDevice(env);
  EXPECT_TRUE(d.ok()) << "SINKSCOPE_TEST_DEVICE: " << d.status();
  return d.ok() ? *d : c10::Device(c10::kCPU);
}

c10::ScalarType TestDtype() {
  const char* env = std::getenv("SINKSCOPE_TEST_DTYPE");
  if (env == nullptr || *env == '\0') return at::kFloat;
  absl::StatusOr<c10::ScalarType> d = ParseDtype(env);
  EXPECT_TRUE(d.ok()) << "SINKSCOPE_TEST_DTYPE: " << d.status();
  return d.ok() ? *d : at::kFloat;
}

double TestTolerance(double float32_tol, double bfloat16_tol) {
  return TestDtype() == at::kFloat ? float32_tol : bfloat16_tol;
}

std::unique_ptr<Model> MakeCpuModel(const Checkpoint& ck, c10::ScalarType dtype) {
  // float32 requests follow SINKSCOPE_TEST_DTYPE; explicit other dtypes stay.
  if (dtype == at::kFloat) dtype = TestDtype();
  auto m = Model::Create(ck, TestDevice(), dtype);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

at::Tensor PermuteForRotateHalves(const at::Tensor& w, int64_t n_head, int64_t d_head) {
  const int64_t d_in = w.size(1);
  return w.view({n_head, d_head / 2, 2, d_in}).transpose(1, 2).reshape({n_head * d_head, d_in});
}

}  // namespace sinkscope::testing

namespace sinkscope::testing {

Checkpoint PlantedCheckpoint(const PlantedSpec& spec, PlantedTruth* truth) {
  ModelConfig c;
  c.d_model = 64;
  c.n_layers = 6;
  c.n_heads = 4;
  c.n_kv_heads = 4;
  c.d_head = 16;
  c.d_ffn = 128;
  c.d_vocab = spec.d_vocab;
  c.n_ctx = 256;
  c.rope_layout = RopeLayout::kRotateHalves;
  c.norm_placement = NormPlacement::kPre;
  Checkpoint ck = RandomCheckpoint(c, spec.seed, 0.02);
  auto& t = ck.tensors;
  const int64_t s_star = 0, m_dir = 1, k = 7, D = c.d_model, dh = c.d_head;
  PlantedTruth tr;
  tr.spike_channel = k;
  tr.spike_direction = s_star;
  tr.offset_channel = m_dir;
  tr.spike_token_ids = {1};
  for (int64_t id : {5, 9}) {
    if (id < c.d_vocab) tr.spike_token_ids.push_back(id);
  }
  tr.step_up_block = 4;
  tr.step_down_block = 10;
  tr.sink_heads = {{2, 0}, {2, 2}, {3, 1}};

  // Embeddings: noise only in channels >= 3 (never on s*, m or k).
  at::Tensor E = t["model.embed_tokens.weight"];
  E.mul_(0.1);
  E.narrow(1, 0, 3).zero_();
  E.select(1, k).zero_();
  E.select(1, m_dir).fill_(1.0);
  for (int64_t id : tr.spike_token_ids) {
    E[id].zero_();
    E[id][s_star] = 8.0;
  }
  // Norm gains exactly 1 so the fixture's arithmetic is the paper's.
  for (auto& [name, w] : t) {
    if (name.find("layernorm") != std::string::npos || name == "model.norm.weight") w.fill_(1.0);
  }
  // Keep attention/MLP weights away from s*, k, m so the planted units dominate.
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    for (const char* n : {"self_attn.o_proj.weight", "mlp.down_proj.weight"}) {
      at::Tensor w = t[p + n];
      w.select(0, s_star).zero_();
      w.select(0, k).zero_();
      w.select(0, m_dir).zero_();
    }
    for (const char* n : {"mlp.gate_proj.weight", "mlp.up_proj.weight", "self_attn.q_proj.weight",
                          "self_attn.k_proj.weight", "self_attn.v_proj.weight"}) {
      at::Tensor w = t[p + n];
      w.select(1, s_star).zero_();
      w.select(1, k).zero_();
    }
  }
  // Step-up MLP, layer 1 unit 0: output on k ~ c * (a * 8)^2 = 1280 for a = 1, c = 20.
  {
    const std::string p = "model.layers.1.mlp.";
    t[p + "gate_proj.weight"][0].zero_();
    t[p + "gate_proj.weight"][0][s_star] = 1.0;
    t[p + "up_proj.weight"][0].zero_();
    t[p + "up_proj.weight"][0][s_star] = 1.0;
    t[p + "down_proj.weight"].select(1, 0).zero_();
    t[p + "down_proj.weight"][k][0] = 20.0;
  }
  // Step-down MLP, layer 4 unit 0: reads e_k (h~_k ~ 8), writes -1280 on k.
  {
    const std::string p = "model.layers.4.mlp.";
    t[p + "gate_proj.weight"][0].zero_();
    t[p + "gate_proj.weight"][0][k] = 1.0;
    t[p + "up_proj.weight"][0].zero_();
    t[p + "up_proj.weight"][0][k] = 1.0;
    t[p + "down_proj.weight"].select(1, 0).zero_();
    t[p + "down_proj.weight"][k][0] = -20.0;
  }
  tr.step_up_blocks = {4};
  tr.step_up_shares = {1.0};
  if (spec.gradual) {
    t["model.layers.1.mlp.down_proj.weight"][k][0] = 20.0 / 3.0;
    for (int64_t l : {2, 3}) {
      const std::string p = absl::StrCat("model.layers.", l, ".mlp.");
      t[p + "gate_proj.weight"][0].zero_();
      t[p + "gate_proj.weight"][0][k] = 1.0;
      t[p + "up_proj.weight"][0].zero_();
      t[p + "up_proj.weight"][0][k] = 1.0;
      t[p + "down_proj.weight"].select(1, 0).zero_();
      t[p + "down_proj.weight"][k][0] = 20.0 / 3.0;
    }
    tr.step_up_blocks = {4, 6, 8};
    tr.step_up_shares = {1.0 / 3, 1.0 / 3, 1.0 / 3};
  }
  // Sink heads: u = 7 * e_{slowest pair} in the head's d_head coordinates.
  // Queries: x~ on m is ~6.3 for ordinary tokens; keys: x~ on k is ~8 for spike tokens.
  const int64_t slow = dh / 2 - 1;
  for (auto [l, h] : tr.sink_heads) {
    const std::string p = absl::StrCat("model.layers.", l, ".self_attn.");
    at::Tensor wq = t[p + "q_proj.weight"].narrow(0, h * dh, dh);
    at::Tensor wk = t[p + "k_proj.weight"].narrow(0, h * dh, dh);
    wq.zero_();
    wk.zero_();
    wq[slow][m_dir] = 7.0 / 6.3;
    wk[slow][k] = 7.0 / 8.0;
    // Values that matter: the other keys' values are sizeable (never on s*,
    // m or k), so moving mass off the sink (mask) changes every later token's
    // residual stream. The sink's own value is ~0: a spike token's normalised
    // state lies on s* and k, which W_V never reads; a spike token at position
    // 0 has exactly v = 0 (planted_reference_jobs_test.cc).
    at::Tensor wv = t[p + "v_proj.weight"].narrow(0, h * dh, dh);
    wv.mul_(4.0);
    at::Tensor wo = t[p + "o_proj.weight"].narrow(1, h * dh, dh);
    wo.mul_(4.0);
  }
  // An unembedding with structure, so that changes of the final state show in
  // the next-token distributions.
  t["lm_head.weight"].mul_(25.0);
  (void)D;
  if (spec.norm_placement == NormPlacement::kSandwich) {
    // Same weights; the Llama pre-MLP norm becomes Gemma's pre_feedforward norm.
    ck.config.norm_placement = NormPlacement::kSandwich;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      t[p + "pre_feedforward_layernorm.weight"] = t[p + "post_attention_layernorm.weight"].clone();
      t[p + "post_feedforward_layernorm.weight"] = at::ones({c.d_model});
    }
  }
  if (spec.norm_placement == NormPlacement::kPost) {
    // Same weights, OLMo-2 style: no norm before the sub-layers, one RMSNorm
    // (gain 1) on each sub-layer's output before it is added.
    ck.config.norm_placement = NormPlacement::kPost;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      t.erase(p + "input_layernorm.weight");
      t[p + "post_attention_layernorm.weight"] = at::ones({c.d_model});
      t[p + "post_feedforward_layernorm.weight"] = at::ones({c.d_model});
    }
  }
  ck.format = "test-planted";
  if (truth) *truth = tr;
  return ck;
}

}  // namespace sinkscope::testing
