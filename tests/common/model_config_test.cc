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

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

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

// The Hub's config.json of EleutherAI/pythia-70m (transformers 4.24 keys).
constexpr const char* kPythia70mConfig = R"({
  "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
  "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
  "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
  "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
  "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": false,
  "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": true,
  "use_parallel_residual": true, "vocab_size": 50304})";

// The Hub's config.json of google/gemma-3-4b-it: text_config lists only the keys
// that differ from Gemma3TextConfig's defaults.
constexpr const char* kGemma3_4bItConfig = R"({
  "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999,
  "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
  "initializer_range": 0.02, "mm_tokens_per_image": 256, "model_type": "gemma3",
  "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                  "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                  "sliding_window": 1024},
  "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
  "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                    "model_type": "siglip_vision_model", "num_attention_heads": 16,
                    "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}})";

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
      // EleutherAI/pythia-70m's config.json (70,426,624: the Pythia paper's count).
      {kPythia70mConfig, 70426624},
      // google/gemma-3-4b-it's config.json: its text decoder (the vision tower is not run).
      {kGemma3_4bItConfig, 3880263168},
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

TEST(FamilyTable, GptNeoxFields) {
  ModelConfig c = Parse(kPythia70mConfig);
  EXPECT_EQ(c.d_head, 64);
  EXPECT_EQ(c.rotary_dim, 16);  // int(64 x rotary_pct 0.25)
  EXPECT_EQ(c.RotaryDim(), 16);
  EXPECT_TRUE(c.parallel_attn_mlp);
  EXPECT_EQ(c.norm_kind, NormKind::kLayer);
  EXPECT_EQ(c.activation, Activation::kGelu);  // "gelu" is erf GELU
  EXPECT_FALSE(c.gated_mlp);
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.mlp_bias);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_EQ(c.bos_token_id, 0);
  std::map<std::string, TensorSpec> files;
  for (const TensorSpec& s : ExpectedTensors(c)) files[s.file_name] = s;
  ASSERT_TRUE(files.count("gpt_neox.layers.0.attention.query_key_value.weight"));
  const TensorSpec& qkv = files["gpt_neox.layers.0.attention.query_key_value.weight"];
  EXPECT_EQ(qkv.layout, TensorLayout::kFusedQkvPerHead);
  EXPECT_EQ(qkv.shape, (std::vector<int64_t>{1536, 512}));
  EXPECT_EQ(qkv.canonical_k, "model.layers.0.self_attn.k_proj.weight");
  for (const char* name : {"gpt_neox.embed_in.weight", "embed_out.weight",
                           "gpt_neox.final_layer_norm.bias", "gpt_neox.layers.5.attention.dense.bias",
                           "gpt_neox.layers.5.mlp.dense_h_to_4h.weight",
                           "gpt_neox.layers.5.mlp.dense_4h_to_h.bias",
                           "gpt_neox.layers.5.post_attention_layernorm.bias"}) {
    EXPECT_TRUE(files.count(name)) << name;
  }
  // transformers 5 writes rope_parameters; use_parallel_residual false is the sequential variant.
  ModelConfig t5 = Parse(R"({"model_type":"gpt_neox","hidden_size":64,"num_hidden_layers":2,
      "num_attention_heads":4,"intermediate_size":96,"vocab_size":100,"attention_bias":false,
      "use_parallel_residual":false,"rope_parameters":{"rope_type":"default",
      "rope_theta":20000.0,"partial_rotary_factor":0.5}})");
  EXPECT_EQ(t5.rotary_dim, 8);
  EXPECT_DOUBLE_EQ(t5.rope_theta, 20000.0);
  EXPECT_FALSE(t5.parallel_attn_mlp);
  EXPECT_FALSE(t5.qkv_bias || t5.o_bias);
  EXPECT_TRUE(t5.mlp_bias);
  auto bad = ParseHfConfig(R"({"model_type":"gpt_neox","hidden_size":64,"num_hidden_layers":2,
      "num_attention_heads":4,"intermediate_size":96,"vocab_size":100,"rotary_pct":1.5})",
                           "config.json");
  EXPECT_THAT(std::string(bad.status().message()), AllOf(HasSubstr("rotary_pct"), HasSubstr("1.5")));
}

TEST(FamilyTable, Gemma3MultimodalRunsItsTextModel) {
  ModelConfig c = Parse(kGemma3_4bItConfig);
  EXPECT_EQ(c.model_type, "gemma3");
  // From text_config, the rest from Gemma3TextConfig's defaults.
  EXPECT_EQ(c.d_model, 2560);
  EXPECT_EQ(c.n_layers, 34);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.d_head, 256);
  EXPECT_EQ(c.d_vocab, 262208);
  EXPECT_DOUBLE_EQ(c.QueryScale(), 1.0 / 16);  // query_pre_attn_scalar 256
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rope_local_theta, 1e4);
  EXPECT_EQ(c.rope_scaling.rope_type, "linear");
  EXPECT_EQ(c.Window(0), 1024);
  EXPECT_EQ(c.Window(5), 0);
  EXPECT_TRUE(c.qk_norm && c.tied_embeddings);
  EXPECT_EQ(c.norm_placement, NormPlacement::kSandwich);
  std::set<std::string> files;
  for (const TensorSpec& s : ExpectedTensors(c)) files.insert(s.file_name);
  EXPECT_TRUE(files.count("language_model.model.embed_tokens.weight"));
  EXPECT_TRUE(files.count("language_model.model.layers.33.self_attn.q_norm.weight"));
  EXPECT_TRUE(files.count("language_model.model.norm.weight"));
  EXPECT_FALSE(files.count("language_model.lm_head.weight"));  // tied

  auto r = ParseHfConfig(R"({"model_type":"gemma3"})", "config.json");
  EXPECT_THAT(std::string(r.status().message()), AllOf(HasSubstr("text_config"), HasSubstr("missing")));
  r = ParseHfConfig(R"({"model_type":"gemma3","text_config":{"model_type":"llama"}})", "config.json");
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("config.json: text_config"), HasSubstr("'llama'")));
  r = ParseHfConfig(R"({"model_type":"gemma3","text_config":{"num_hidden_layers":"2"}})", "c.json");
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("c.json: text_config"), HasSubstr("num_hidden_layers")));
}

TEST(FamilyTable, StoredTensorNamesOfPublishedFiles) {
  ModelConfig gpt2 = Parse(R"({"model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,
                               "n_positions":32,"vocab_size":100})");
  // The Hub's gpt2 file: bare names and causal-mask buffers.
  EXPECT_EQ(StoredTensorName(gpt2, "h.0.attn.c_attn.weight"), "transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(StoredTensorName(gpt2, "wte.weight"), "transformer.wte.weight");
  EXPECT_EQ(StoredTensorName(gpt2, "ln_f.bias"), "transformer.ln_f.bias");
  EXPECT_EQ(StoredTensorName(gpt2, "transformer.h.1.attn.c_attn.bias"),
            "transformer.h.1.attn.c_attn.bias");
  EXPECT_EQ(StoredTensorName(gpt2, "h.1.attn.bias"), std::nullopt);
  EXPECT_EQ(StoredTensorName(gpt2, "h.1.attn.masked_bias"), std::nullopt);
  EXPECT_EQ(StoredTensorName(gpt2, "transformer.h.1.attn.bias"), std::nullopt);
  EXPECT_EQ(StoredTensorName(gpt2, "lm_head.weight"), "lm_head.weight");  // not a bare name
  ModelConfig neox = Parse(kPythia70mConfig);
  EXPECT_EQ(StoredTensorName(neox, "gpt_neox.layers.3.attention.bias"), std::nullopt);
  EXPECT_EQ(StoredTensorName(neox, "gpt_neox.layers.3.attention.masked_bias"), std::nullopt);
  EXPECT_EQ(StoredTensorName(neox, "gpt_neox.layers.3.attention.rotary_emb.inv_freq"), std::nullopt);
  EXPECT_EQ(StoredTensorName(neox, "gpt_neox.layers.3.attention.dense.bias"),
            "gpt_neox.layers.3.attention.dense.bias");
  ModelConfig gemma3 = Parse(kGemma3_4bItConfig);
  EXPECT_EQ(StoredTensorName(gemma3, "vision_tower.vision_model.post_layernorm.bias"), std::nullopt);
  EXPECT_EQ(StoredTensorName(gemma3, "multi_modal_projector.mm_input_projection_weight"),
            std::nullopt);
  EXPECT_EQ(StoredTensorName(gemma3, "language_model.model.norm.weight"),
            "language_model.model.norm.weight");
}

TEST(FamilyTable, UnknownModelTypeNamesTheKnownOnes) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(R"({"model_type":"bert"})", "dir/config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr("dir/config.json"), HasSubstr("'bert'"),
                    HasSubstr("gemma2, gemma3, gemma3_text, gpt2, gpt_neox, llama, mistral, olmo2, qwen2, qwen3")));
  EXPECT_EQ(KnownFamilies(), "gemma2, gemma3, gemma3_text, gpt2, gpt_neox, llama, mistral, olmo2, qwen2, qwen3");
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
