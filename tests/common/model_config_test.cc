// The family table without libtorch (common/model_config.h): config.json of each
// family -> fields, and parameter counts against transformers.
//
// Reference parameter counts: transformers 5.24.0,
// sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
// on the meta device (tied embeddings counted once) for the configs below; the
// GPT-2 (124,439,808) and Llama-2-7B (6,738,415,616) values are also the
// published sizes of those checkpoints.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/model_config.h"

namespace sinkscope {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

ModelConfig Parse(const std::string& json) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(json, "config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig();
}

TEST(FamilyTable, ParameterCountsMatchTransformers) {
  struct Case {
    const char* json;
    int64_t params;
  };
  const Case cases[] = {
      {R"({"model_type":"gpt2","n_embd":768,"n_layer":12,"n_head":12,"n_positions":1024,
           "n_inner":null,"vocab_size":50257})",
       124439808},
      {R"({"model_type":"llama","hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,
           "intermediate_size":11008,"vocab_size":32000})",
       6738415616},
      {R"({"model_type":"qwen3","hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,
           "num_key_value_heads":8,"head_dim":128,"intermediate_size":22016,"vocab_size":151936,
           "tie_word_embeddings":false})",
       11244154880},
      {R"({"model_type":"qwen2","hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,
           "intermediate_size":22016,"vocab_size":151936})",
       12049846272},
      {R"({"model_type":"gemma2","hidden_size":2304,"num_hidden_layers":26,"num_attention_heads":8,
           "num_key_value_heads":4,"head_dim":256,"intermediate_size":9216,"vocab_size":256000,
           "sliding_window":4096})",
       2614341888},
      {R"({"model_type":"gemma3_text","hidden_size":2304,"num_hidden_layers":26,
           "num_attention_heads":8,"num_key_value_heads":4,"head_dim":256,
           "intermediate_size":9216,"vocab_size":262208,"sliding_window":4096})",
       2628658432},
      {R"({"model_type":"olmo2","hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,
           "intermediate_size":11008,"vocab_size":50304})",
       6888624128},
  };
  for (const Case& c : cases) {
    ModelConfig m = Parse(c.json);
    EXPECT_EQ(ParameterCount(m), c.params) << m.Summary();
  }
}

TEST(FamilyTable, Gpt2Fields) {
  ModelConfig c = Parse(R"({"model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,
                            "n_positions":32,"vocab_size":100,"activation_function":"gelu_new"})");
  EXPECT_EQ(c.d_ffn, 256);  // n_inner null = 4 n_embd
  EXPECT_EQ(c.norm_kind, NormKind::kLayer);
  EXPECT_EQ(c.positional, Positional::kLearned);
  EXPECT_EQ(c.activation, Activation::kGeluTanh);
  EXPECT_FALSE(c.gated_mlp);
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.mlp_bias);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  // Fused Conv1D c_attn: one [in, 3 out] file tensor for q, k, v.
  bool found = false;
  for (const TensorSpec& s : ExpectedTensors(c)) {
    if (s.file_name == "transformer.h.1.attn.c_attn.weight") {
      found = true;
      EXPECT_EQ(s.shape, (std::vector<int64_t>{64, 192}));
      EXPECT_EQ(s.layout, TensorLayout::kFusedQkvConv1D);
      EXPECT_EQ(s.canonical_v, "model.layers.1.self_attn.v_proj.weight");
    }
  }
  EXPECT_TRUE(found);
}

TEST(FamilyTable, GemmaFields) {
  ModelConfig g2 = Parse(R"({"model_type":"gemma2","hidden_size":64,"num_hidden_layers":3,
      "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"intermediate_size":96,
      "vocab_size":100,"query_pre_attn_scalar":24,"sliding_window":8,
      "attn_logit_softcapping":50.0,"final_logit_softcapping":30.0,
      "layer_types":["sliding_attention","full_attention","sliding_attention"],
      "rope_parameters":{"rope_type":"default","rope_theta":10000.0}})");
  EXPECT_EQ(g2.norm_placement, NormPlacement::kSandwich);
  EXPECT_DOUBLE_EQ(g2.norm_gain_offset, 1.0);
  EXPECT_DOUBLE_EQ(g2.embed_scale, 8.0);
  EXPECT_DOUBLE_EQ(g2.QueryScale(), 1.0 / std::sqrt(24.0));
  EXPECT_DOUBLE_EQ(g2.attn_softcap, 50.0);
  EXPECT_DOUBLE_EQ(g2.final_softcap, 30.0);
  EXPECT_EQ(g2.layer_windows, (std::vector<int64_t>{8, 0, 8}));
  EXPECT_EQ(g2.activation, Activation::kGeluTanh);
  EXPECT_TRUE(g2.tied_embeddings);
  // Without layer_types: Gemma 2 slides on even layers, Gemma 3 on 5 of 6.
  ModelConfig g3 = Parse(R"({"model_type":"gemma3_text","hidden_size":64,"num_hidden_layers":7,
      "num_attention_heads":4,"head_dim":16,"intermediate_size":96,"vocab_size":100,
      "sliding_window":4,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
      "rope_scaling":{"rope_type":"linear","factor":8.0}})");
  EXPECT_EQ(g3.layer_windows, (std::vector<int64_t>{4, 4, 4, 4, 4, 0, 4}));
  EXPECT_DOUBLE_EQ(g3.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(g3.rope_local_theta, 1e4);
  EXPECT_DOUBLE_EQ(g3.LayerRopeTheta(5), 1e6);
  EXPECT_DOUBLE_EQ(g3.LayerRopeTheta(0), 1e4);
  EXPECT_EQ(g3.rope_scaling.rope_type, "linear");
  EXPECT_TRUE(g3.qk_norm);
  EXPECT_FALSE(g3.qk_norm_full_width);
  // transformers 5: per-layer-type rope_parameters.
  ModelConfig g3b = Parse(R"({"model_type":"gemma3_text","hidden_size":64,"num_hidden_layers":2,
      "num_attention_heads":4,"head_dim":16,"intermediate_size":96,"vocab_size":100,
      "rope_parameters":{"full_attention":{"rope_type":"default","rope_theta":1000000.0},
                         "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}})");
  EXPECT_DOUBLE_EQ(g3b.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(g3b.rope_local_theta, 1e4);
}

TEST(FamilyTable, TransformersFiveRopeParameters) {
  ModelConfig c = Parse(R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":1,
      "num_attention_heads":4,"intermediate_size":96,"vocab_size":100,
      "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
                         "low_freq_factor":1.0,"high_freq_factor":4.0,
                         "original_max_position_embeddings":8192}})");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.rope_type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
}

TEST(FamilyTable, Olmo2Fields) {
  ModelConfig c = Parse(R"({"model_type":"olmo2","hidden_size":64,"num_hidden_layers":2,
      "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":96,"vocab_size":100})");
  EXPECT_EQ(c.norm_placement, NormPlacement::kPost);
  EXPECT_TRUE(c.qk_norm && c.qk_norm_full_width);
  for (const TensorSpec& s : ExpectedTensors(c)) {
    if (s.file_name == "model.layers.0.self_attn.k_norm.weight") {
      EXPECT_EQ(s.shape, (std::vector<int64_t>{32}));  // n_kv_heads * d_head
    }
    EXPECT_EQ(s.file_name.find("input_layernorm"), std::string::npos) << s.file_name;
  }
}

TEST(FamilyTable, UnknownModelTypeNamesTheKnownOnes) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(R"({"model_type":"bert"})", "dir/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr("dir/config.json"), HasSubstr("'bert'"),
                    HasSubstr("gemma2, gemma3_text, gpt2, llama, mistral, olmo2, qwen2, qwen3")));
  EXPECT_EQ(KnownFamilies(), "gemma2, gemma3_text, gpt2, llama, mistral, olmo2, qwen2, qwen3");
}

TEST(FamilyTable, RefusesWhatTheForwardPassDoesNotImplement) {
  auto r = ParseHfConfig(R"({"model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,
      "vocab_size":100,"scale_attn_by_inverse_layer_idx":true})", "config.json");
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("scale_attn_by_inverse_layer_idx"));
  r = ParseHfConfig(R"({"model_type":"gemma2","hidden_size":64,"num_hidden_layers":2,
      "num_attention_heads":4,"head_dim":16,"intermediate_size":96,"vocab_size":100,
      "hidden_activation":"relu"})", "config.json");
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("hidden_activation"), HasSubstr("'relu'")));
}

}  // namespace
}  // namespace sinkscope
