// Checkpoint readers: the shared llama2.c models, safetensors round trips,
// config.json round trips and one test per malformed input.
#include "worker/engine/checkpoint.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <malloc.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tests/engine/test_util.h"
#include "worker/engine/config.h"
#include "worker/engine/model.h"

namespace sinkscope {
namespace {

// Substring matchers without gmock (the test links gtest only).
struct HasSubstr {
  explicit HasSubstr(std::string s) : sub(std::move(s)) {}
  std::string sub;
};
template <typename... T>
std::vector<HasSubstr> AllOf(T... subs) {
  return {subs...};
}
::testing::AssertionResult Contains(const std::string& text, const std::vector<HasSubstr>& subs) {
  for (const HasSubstr& s : subs) {
    if (text.find(s.sub) == std::string::npos) {
      return ::testing::AssertionFailure() << "\"" << text << "\" lacks \"" << s.sub << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}
::testing::AssertionResult Contains(const std::string& text, const HasSubstr& sub) {
  return Contains(text, std::vector<HasSubstr>{sub});
}
#define EXPECT_THAT(text, matcher) EXPECT_TRUE(Contains((text), (matcher)))

std::vector<char> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const void* data, size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

void WriteText(const std::string& path, const std::string& text) {
  WriteAll(path, text.data(), text.size());
}

std::vector<int64_t> Sizes(const at::Tensor& t) { return t.sizes().vec(); }

// Exact equality of dtype, shape and values (compared in float32, exact for f16/bf16).
void ExpectSameTensor(const at::Tensor& a, const at::Tensor& b, const std::string& name) {
  ASSERT_TRUE(a.defined() && b.defined()) << name;
  EXPECT_EQ(a.scalar_type(), b.scalar_type()) << name;
  ASSERT_EQ(Sizes(a), Sizes(b)) << name;
  EXPECT_TRUE(at::equal(a.to(at::kFloat), b.to(at::kFloat))) << name;
}

// ---------------------------------------------------------------------------
// llama2.c models from shared/

// Float index (after the 28-byte header) of rms_final for a llama2.c header.
int64_t RmsFinalIndex(int64_t dim, int64_t hidden, int64_t L, int64_t heads, int64_t kv_heads,
                      int64_t vocab) {
  const int64_t kv_dim = dim / heads * kv_heads;
  return vocab * dim + L * dim + 2 * L * dim * dim + 2 * L * kv_dim * dim + L * dim +
         3 * L * hidden * dim;
}

float FloatAt(const std::vector<char>& bytes, int64_t float_index) {
  float v;
  std::memcpy(&v, bytes.data() + 28 + 4 * float_index, 4);
  return v;
}

TEST(Llama2cTest, Stories260KLoads) {
  SKIP_IF_NO_SHARED(path, "models/stories260K/stories260K.bin");
  absl::StatusOr<Checkpoint> ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  const ModelConfig& c = ck->config;
  EXPECT_EQ(ck->format, "llama2c");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.d_ffn, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.d_head, 8);
  EXPECT_EQ(c.d_vocab, 512);
  EXPECT_EQ(c.n_ctx, 512);
  EXPECT_EQ(c.rope_layout, RopeLayout::kAdjacentPairs);
  EXPECT_EQ(c.norm_placement, NormPlacement::kPre);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(ck->tensors.count("lm_head.weight"), 0u);
  // embed + norm + 9 per layer.
  EXPECT_EQ(ck->tensors.size(), 2u + 9u * 5u);
  const auto& t = ck->tensors;
  EXPECT_EQ(Sizes(t.at("model.embed_tokens.weight")), (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(Sizes(t.at("model.layers.4.self_attn.q_proj.weight")), (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(Sizes(t.at("model.layers.0.self_attn.k_proj.weight")), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(Sizes(t.at("model.layers.0.self_attn.v_proj.weight")), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(Sizes(t.at("model.layers.0.self_attn.o_proj.weight")), (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(Sizes(t.at("model.layers.2.mlp.gate_proj.weight")), (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(Sizes(t.at("model.layers.2.mlp.up_proj.weight")), (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(Sizes(t.at("model.layers.2.mlp.down_proj.weight")), (std::vector<int64_t>{64, 172}));
  EXPECT_EQ(Sizes(t.at("model.layers.3.input_layernorm.weight")), (std::vector<int64_t>{64}));
  EXPECT_EQ(Sizes(t.at("model.norm.weight")), (std::vector<int64_t>{64}));
  for (const auto& [name, tensor] : t) {
    EXPECT_EQ(tensor.scalar_type(), at::kFloat) << name;
    EXPECT_TRUE(tensor.is_contiguous()) << name;
  }

  // Layout checked against the raw bytes, computed independently.
  const std::vector<char> bytes = ReadAll(path);
  const int64_t rms_final = RmsFinalIndex(64, 172, 5, 8, 4, 512);
  const at::Tensor norm = t.at("model.norm.weight");
  for (int64_t i : {0, 1, 37, 63}) {
    EXPECT_EQ(norm[i].item<float>(), FloatAt(bytes, rms_final + i)) << i;
  }
  // wq of layer 1, row 2, column 3: after embedding and rms_att, then one [64, 64] layer.
  const int64_t wq1 = 512 * 64 + 5 * 64 + 64 * 64 + 2 * 64 + 3;
  EXPECT_EQ(t.at("model.layers.1.self_attn.q_proj.weight")[2][3].item<float>(),
            FloatAt(bytes, wq1));
  // w2 (down) of layer 4, last element: w3 [L, hidden, dim] follows it, then rms_final.
  EXPECT_EQ(t.at("model.layers.4.mlp.down_proj.weight")[63][171].item<float>(),
            FloatAt(bytes, rms_final - 5 * 172 * 64 - 1));
}

TEST(Llama2cTest, Aidreams260KLoads) {
  SKIP_IF_NO_SHARED(path, "models/aidreams260K/aidreams260K.bin");
  absl::StatusOr<Checkpoint> ck = LoadCheckpoint(path);  // dispatch on .bin
  ASSERT_TRUE(ck.ok()) << ck.status();
  const ModelConfig& c = ck->config;
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.d_ffn, 172);
  EXPECT_EQ(c.n_layers, 4);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.d_head, 16);
  EXPECT_EQ(c.d_vocab, 512);
  EXPECT_EQ(c.n_ctx, 128);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(Sizes(ck->tensors.at("model.layers.3.self_attn.k_proj.weight")),
            (std::vector<int64_t>{64, 64}));
  const std::vector<char> bytes = ReadAll(path);
  const int64_t rms_final = RmsFinalIndex(64, 172, 4, 4, 4, 512);
  EXPECT_EQ(ck->tensors.at("model.norm.weight")[5].item<float>(), FloatAt(bytes, rms_final + 5));
  EXPECT_EQ(ck->tensors.at("model.embed_tokens.weight")[1][2].item<float>(),
            FloatAt(bytes, 64 + 2));
}

// A tiny untied llama2.c file built in memory: the wcls path and its layout.
std::vector<char> TinyLlama2c(std::vector<int32_t> header) {
  const int64_t dim = header[0], hidden = header[1], L = header[2], heads = header[3],
                kv = header[4], vocab = std::abs(header[5]), seq = header[6];
  const int64_t head = dim / heads;
  int64_t floats = RmsFinalIndex(dim, hidden, L, heads, kv, vocab) + dim + seq * head;
  if (header[5] < 0) floats += vocab * dim;
  std::vector<char> bytes(28 + 4 * floats);
  std::memcpy(bytes.data(), header.data(), 28);
  for (int64_t i = 0; i < floats; ++i) {
    const float v = static_cast<float>(i % 1000) * 0.001f;
    std::memcpy(bytes.data() + 28 + 4 * i, &v, 4);
  }
  return bytes;
}

TEST(Llama2cTest, UntiedHeadIsLmHead) {
  std::vector<char> bytes = TinyLlama2c({8, 12, 2, 2, 1, -16, 4});
  const std::string path = testing::MakeTempDir("ckpt") + "/untied.bin";
  WriteAll(path, bytes.data(), bytes.size());
  absl::StatusOr<Checkpoint> ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_FALSE(ck->config.tied_embeddings);
  EXPECT_EQ(ck->config.d_vocab, 16);
  ASSERT_EQ(ck->tensors.count("lm_head.weight"), 1u);
  // wcls is the last array: its last float is the file's last float.
  float last;
  std::memcpy(&last, bytes.data() + bytes.size() - 4, 4);
  EXPECT_EQ(ck->tensors.at("lm_head.weight")[15][7].item<float>(), last);
}

TEST(Llama2cTest, TruncatedFileNamesSizes) {
  SKIP_IF_NO_SHARED(src, "models/stories260K/stories260K.bin");
  std::vector<char> bytes = ReadAll(src);
  const std::string path = testing::MakeTempDir("ckpt") + "/truncated.bin";
  WriteAll(path, bytes.data(), bytes.size() - 100);
  absl::StatusOr<Checkpoint> ck = LoadLlama2c(path);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ck.status().message()),
              AllOf(HasSubstr("truncated.bin"), HasSubstr("truncated"), HasSubstr("1056540 bytes"),
                    HasSubstr("file has 1056440 bytes")));

  WriteAll(path, bytes.data(), 10);  // shorter than the header
  ck = LoadLlama2c(path);
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()), HasSubstr("file has 10 bytes"));
}

TEST(Llama2cTest, BadHeaderFieldsNamed) {
  struct Case {
    std::vector<int32_t> header;
    std::string field;
  };
  const std::vector<Case> cases = {
      {{-64, 172, 5, 8, 4, 512, 512}, "dim = -64"},
      {{0, 172, 5, 8, 4, 512, 512}, "dim = 0"},
      {{64, 0, 5, 8, 4, 512, 512}, "hidden_dim = 0"},
      {{64, 172, -1, 8, 4, 512, 512}, "n_layers = -1"},
      {{64, 172, 5, 0, 4, 512, 512}, "n_heads = 0"},
      {{64, 172, 5, 8, 0, 512, 512}, "n_kv_heads = 0"},
      {{64, 172, 5, 8, 4, 0, 512}, "vocab_size = 0"},
      {{64, 172, 5, 8, 4, 512, -3}, "seq_len = -3"},
      {{64, 172, 5, 7, 7, 512, 512}, "not a multiple of n_heads"},
      {{64, 172, 5, 8, 3, 512, 512}, "not a multiple of n_kv_heads"},
  };
  for (const Case& c : cases) {
    std::vector<char> bytes(4096, 0);
    std::memcpy(bytes.data(), c.header.data(), 28);
    absl::StatusOr<Checkpoint> ck =
        ParseLlama2c(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "bad.bin");
    ASSERT_FALSE(ck.ok()) << c.field;
    EXPECT_THAT(std::string(ck.status().message()),
                AllOf(HasSubstr("bad.bin"), HasSubstr(c.field)));
  }
  // Huge dims: the size computation must not overflow into a "valid" size.
  std::vector<int32_t> huge = {1 << 30, 1 << 30, 1 << 30, 2, 1, 1 << 30, 1 << 30};
  std::vector<char> bytes(28);
  std::memcpy(bytes.data(), huge.data(), 28);
  absl::StatusOr<Checkpoint> ck =
      ParseLlama2c(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "huge.bin");
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()), HasSubstr("huge.bin"));
}

// ---------------------------------------------------------------------------
// HF directories

ModelConfig TinyConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.d_head = 4;
  c.d_ffn = 12;
  c.d_vocab = 16;
  c.n_ctx = 32;
  return c;
}

// Random tensors for every name `c` implies (names/shapes from checkpoint.h).
std::map<std::string, at::Tensor> MakeWeights(const ModelConfig& c, at::ScalarType dtype) {
  std::map<std::string, at::Tensor> w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    w[name] = at::randn(shape, at::TensorOptions().dtype(at::kFloat)).to(dtype);
  };
  const int64_t q = c.n_heads * c.d_head, kv = c.n_kv_heads * c.d_head;
  add("model.embed_tokens.weight", {c.d_vocab, c.d_model});
  add("model.norm.weight", {c.d_model});
  if (!c.tied_embeddings) add("lm_head.weight", {c.d_vocab, c.d_model});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (c.norm_placement != NormPlacement::kPost) add(p + "input_layernorm.weight", {c.d_model});
    add(p + "post_attention_layernorm.weight", {c.d_model});
    if (c.norm_placement == NormPlacement::kSandwich) {
      add(p + "pre_feedforward_layernorm.weight", {c.d_model});
    }
    if (c.norm_placement != NormPlacement::kPre) {
      add(p + "post_feedforward_layernorm.weight", {c.d_model});
    }
    add(p + "self_attn.q_proj.weight", {q, c.d_model});
    add(p + "self_attn.k_proj.weight", {kv, c.d_model});
    add(p + "self_attn.v_proj.weight", {kv, c.d_model});
    add(p + "self_attn.o_proj.weight", {c.d_model, q});
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", {c.d_head});
      add(p + "self_attn.k_norm.weight", {c.d_head});
    }
    add(p + "mlp.gate_proj.weight", {c.d_ffn, c.d_model});
    add(p + "mlp.up_proj.weight", {c.d_ffn, c.d_model});
    add(p + "mlp.down_proj.weight", {c.d_model, c.d_ffn});
  }
  return w;
}

// Writes config.json + model.safetensors into a fresh directory.
std::string WriteHfDir(const ModelConfig& c, const std::map<std::string, at::Tensor>& w) {
  const std::string dir = testing::MakeTempDir("ckpt_hf");
  EXPECT_TRUE(WriteHfConfig(dir + "/config.json", c).ok());
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", w).ok());
  return dir;
}

class SafetensorsRoundTrip : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(SafetensorsRoundTrip, LoadsExactly) {
  ModelConfig c = TinyConfig();
  const auto w = MakeWeights(c, GetParam());
  const std::string dir = WriteHfDir(c, w);
  absl::StatusOr<Checkpoint> ck = LoadCheckpoint(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->format, "hf-safetensors");
  EXPECT_EQ(ck->config.rope_layout, RopeLayout::kRotateHalves);
  ASSERT_EQ(ck->tensors.size(), w.size());
  for (const auto& [name, t] : w) ExpectSameTensor(ck->tensors.at(name), t, name);

  // The header is padded so the data section starts 8-byte aligned.
  const std::vector<char> bytes = ReadAll(dir + "/model.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  size_t data_start = 0;
  auto entries = ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(bytes.data()),
                                        bytes.size(), "x", &data_start);
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_EQ(data_start, 8 + n);
  EXPECT_EQ(entries->size(), w.size());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SafetensorsRoundTrip,
                         ::testing::Values(at::kFloat, at::kHalf, at::kBFloat16));

TEST(HfTest, TensorsOutliveCheckpointAndAreWritableCopies) {
  ModelConfig c = TinyConfig();
  const auto w = MakeWeights(c, at::kFloat);
  const std::string dir = WriteHfDir(c, w);
  at::Tensor kept;
  {
    absl::StatusOr<Checkpoint> ck = LoadHfDirectory(dir);
    ASSERT_TRUE(ck.ok()) << ck.status();
    kept = ck->tensors.at("model.layers.1.mlp.down_proj.weight");
  }
  std::remove((dir + "/model.safetensors").c_str());
  ExpectSameTensor(kept, w.at("model.layers.1.mlp.down_proj.weight"), "kept");
  kept.mul_(2.0);  // copy-on-write mapping: allowed, file untouched
  ExpectSameTensor(kept, w.at("model.layers.1.mlp.down_proj.weight").mul(2.0), "scaled");
}

TEST(HfTest, ShardedIndexLoads) {
  ModelConfig c = TinyConfig();
  c.model_type = "qwen2";
  c.qkv_bias = true;
  const auto w = MakeWeights(c, at::kBFloat16);
  const std::string dir = testing::MakeTempDir("ckpt_shard");
  ASSERT_TRUE(WriteHfConfig(dir + "/config.json", c).ok());
  std::map<std::string, at::Tensor> a, b;
  nlohmann::json index;
  int i = 0;
  for (const auto& [name, t] : w) {
    const bool first = (i++ % 2 == 0);
    (first ? a : b)[name] = t;
    index["weight_map"][name] =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  a["model.layers.0.self_attn.rotary_emb.inv_freq"] = at::randn({2});  // ignored
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors", a).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", b).ok());
  WriteText(dir + "/model.safetensors.index.json", index.dump());
  absl::StatusOr<Checkpoint> ck = LoadHfDirectory(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->config.qkv_bias);
  ASSERT_EQ(ck->tensors.size(), w.size());
  for (const auto& [name, t] : w) ExpectSameTensor(ck->tensors.at(name), t, name);

  // A weight_map entry pointing to a shard that lacks the tensor.
  index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors";
  index["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors";
  WriteText(dir + "/model.safetensors.index.json", index.dump());
  ck = LoadHfDirectory(dir);
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()), HasSubstr("does not contain it"));

  // Shard names must be plain file names.
  index["weight_map"]["model.norm.weight"] = "../evil.safetensors";
  WriteText(dir + "/model.safetensors.index.json", index.dump());
  ck = LoadHfDirectory(dir);
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()), HasSubstr("plain file name"));
}

// VmRSS / VmHWM of this process, bytes (-1 if unreadable).
int64_t ProcStatusBytes(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::atoll(line.c_str() + key.size() + 1) * 1024;
  }
  return -1;
}

// A load placed at its target (what the worker does) peaks at the weights'
// bytes plus a chunk: each weight is copied once from the mapped shard into its
// final tensor, the shard's pages returned as it goes, and Model::Create adopts
// the placed tensors. (Loading unplaced, then Model::Create, reads every page
// of the mappings during validation and clones them all: 2x.)
TEST(PlacedLoadTest, PeakIsTheWeightsPlusOneChunk) {
  ModelConfig c = TinyConfig();
  c.d_model = 512;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.d_head = 64;
  c.d_ffn = 1536;
  c.n_layers = 6;
  c.d_vocab = 8192;
  const std::string dir = testing::MakeTempDir("ckpt_placed");
  ASSERT_TRUE(WriteHfConfig(dir + "/config.json", c).ok());
  int64_t bytes = 0;
  std::map<std::string, at::Tensor> expected;  // a few, to compare bit for bit
  {
    const auto w = MakeWeights(c, at::kBFloat16);
    std::map<std::string, at::Tensor> shard[3];
    nlohmann::json index;
    int i = 0;
    for (const auto& [name, t] : w) {
      const int k = i++ % 3;
      shard[k][name] = t;
      index["weight_map"][name] = "model-0000" + std::to_string(k + 1) + "-of-00003.safetensors";
      bytes += t.numel() * t.element_size();
    }
    for (int k = 0; k < 3; ++k) {
      ASSERT_TRUE(WriteSafetensors(dir + "/model-0000" + std::to_string(k + 1) + "-of-00003.safetensors",
                                   shard[k]).ok());
    }
    WriteText(dir + "/model.safetensors.index.json", index.dump());
    for (const char* n : {"model.embed_tokens.weight", "model.layers.5.mlp.down_proj.weight",
                          "model.norm.weight"}) {
      expected[n] = w.at(n).clone();
    }
  }
  malloc_trim(0);  // the writer's tensors: back to the kernel, so the load faults fresh pages
  ASSERT_GT(bytes, 50 << 20);
  { std::ofstream("/proc/self/clear_refs") << "5"; }  // VmHWM := VmRSS
  const int64_t before = ProcStatusBytes("VmRSS");
  if (before < 0 || ProcStatusBytes("VmHWM") > before + (1 << 20)) {
    GTEST_SKIP() << "VmHWM cannot be reset here (/proc/self/clear_refs)";
  }
  absl::StatusOr<Checkpoint> ck = LoadHfDirectory(dir, LoadTarget{c10::Device(c10::kCPU), at::kBFloat16});
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->placed);
  absl::StatusOr<std::unique_ptr<Model>> m = Model::Create(*ck, c10::Device(c10::kCPU), at::kBFloat16);
  ASSERT_TRUE(m.ok()) << m.status();
  const int64_t peak = ProcStatusBytes("VmHWM");
  EXPECT_EQ((*m)->weight_bytes(), bytes);
  EXPECT_LE(peak - before, bytes * 11 / 10 + (6 << 20))
      << "peak " << peak << " before " << before << " weights " << bytes;
  for (const auto& [name, t] : expected) {
    const at::Tensor got = (*m)->weight(name);
    ExpectSameTensor(got, t, name);
    EXPECT_EQ(got.data_ptr(), ck->tensors.at(name).data_ptr()) << name << ": placed, not adopted";
  }
}

// Placed at float32: every tensor equals the file's widened exactly; an Inf
// in a shard is refused naming the tensor and the index, as unplaced.
TEST(PlacedLoadTest, Float32TargetAndNonFiniteValues) {
  ModelConfig c = TinyConfig();
  const auto w = MakeWeights(c, at::kBFloat16);
  const std::string dir = testing::MakeTempDir("ckpt_placed32");
  ASSERT_TRUE(WriteHfConfig(dir + "/config.json", c).ok());
  std::map<std::string, at::Tensor> a, b;
  nlohmann::json index;
  int i = 0;
  for (const auto& [name, t] : w) {
    const bool first = (i++ % 2 == 0);
    (first ? a : b)[name] = t;
    index["weight_map"][name] =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors", a).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", b).ok());
  WriteText(dir + "/model.safetensors.index.json", index.dump());
  absl::StatusOr<Checkpoint> ck = LoadCheckpoint(dir, LoadTarget{c10::Device(c10::kCPU), at::kFloat});
  ASSERT_TRUE(ck.ok()) << ck.status();
  ASSERT_EQ(ck->tensors.size(), w.size());
  for (const auto& [name, t] : w) ExpectSameTensor(ck->tensors.at(name), t.to(at::kFloat), name);

  const std::string bad = "model.layers.1.mlp.up_proj.weight";
  std::map<std::string, at::Tensor>& shard = a.count(bad) ? a : b;
  shard[bad] = shard[bad].clone();
  shard[bad].view(-1)[5] = std::numeric_limits<float>::infinity();
  ASSERT_TRUE(WriteSafetensors(dir + (a.count(bad) ? "/model-00001-of-00002.safetensors"
                                                   : "/model-00002-of-00002.safetensors"),
                               shard).ok());
  ck = LoadCheckpoint(dir, LoadTarget{c10::Device(c10::kCPU), at::kBFloat16});
  ASSERT_FALSE(ck.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(ck.status())) << ck.status();
  EXPECT_THAT(std::string(ck.status().message()),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("tensor " + bad + " contains Inf")));
}

TEST(HfTest, TiedEmbeddings) {
  ModelConfig c = TinyConfig();
  c.tied_embeddings = true;
  auto w = MakeWeights(c, at::kHalf);
  ASSERT_EQ(w.count("lm_head.weight"), 0u);
  absl::StatusOr<Checkpoint> ck = LoadHfDirectory(WriteHfDir(c, w));
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE(ck->config.tied_embeddings);
  EXPECT_EQ(ck->tensors.count("lm_head.weight"), 0u);

  // Untied config without lm_head.weight: named as missing.
  c.tied_embeddings = false;
  ck = LoadHfDirectory(WriteHfDir(c, w));
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("missing tensor lm_head.weight")));
}

TEST(HfTest, NormPlacementsAndQkNorm) {
  for (NormPlacement p : {NormPlacement::kSandwich, NormPlacement::kPost}) {
    ModelConfig c = TinyConfig();
    c.model_type = "qwen3";
    c.qk_norm = true;
    c.d_head = 6;  // n_heads * d_head != d_model is allowed (Qwen3)
    c.norm_placement = p;
    const auto w = MakeWeights(c, at::kFloat);
    absl::StatusOr<Checkpoint> ck = LoadHfDirectory(WriteHfDir(c, w));
    ASSERT_TRUE(ck.ok()) << NormPlacementName(p) << ": " << ck.status();
    EXPECT_EQ(ck->config.norm_placement, p);
    EXPECT_TRUE(ck->config.qk_norm);
    EXPECT_EQ(ck->tensors.size(), w.size());
  }
}

// ---------------------------------------------------------------------------
// Malformed HF inputs

absl::Status LoadStatus(const std::string& dir) { return LoadHfDirectory(dir).status(); }

// A directory with a valid config and `model.safetensors` = raw bytes.
std::string DirWithRawSafetensors(const std::string& header, uint64_t header_len,
                                  size_t data_bytes) {
  const std::string dir = testing::MakeTempDir("ckpt_bad");
  EXPECT_TRUE(WriteHfConfig(dir + "/config.json", TinyConfig()).ok());
  std::string bytes(8, '\0');
  std::memcpy(&bytes[0], &header_len, 8);
  bytes += header;
  bytes += std::string(data_bytes, '\0');
  WriteText(dir + "/model.safetensors", bytes);
  return dir;
}

TEST(HfMalformedTest, HeaderLengthBeyondFile) {
  absl::Status s = LoadStatus(DirWithRawSafetensors("{}", 1000, 0));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("header length 1000"),
                    HasSubstr("exceeds the file size")));
  // Shorter than the length field itself.
  const std::string dir = DirWithRawSafetensors("", 0, 0);
  WriteText(dir + "/model.safetensors", "abc");
  EXPECT_THAT(std::string(LoadStatus(dir).message()), HasSubstr("file has 3 bytes"));
}

TEST(HfMalformedTest, OffsetsOutOfRange) {
  const std::string h =
      R"({"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})";
  absl::Status s = LoadStatus(DirWithRawSafetensors(h, h.size(), 16));
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("model.norm.weight"),
                                              HasSubstr("out of range"), HasSubstr("16 bytes")));
  // begin > end.
  const std::string h2 =
      R"({"model.norm.weight":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})";
  s = LoadStatus(DirWithRawSafetensors(h2, h2.size(), 16));
  EXPECT_THAT(std::string(s.message()), HasSubstr("out of range"));
  // Span inconsistent with shape x dtype.
  const std::string h3 =
      R"({"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,16]}})";
  s = LoadStatus(DirWithRawSafetensors(h3, h3.size(), 64));
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("span 16 bytes"), HasSubstr("needs 32")));
  // Negative shape entry; size overflow.
  const std::string h4 =
      R"({"model.norm.weight":{"dtype":"F32","shape":[-8],"data_offsets":[0,32]}})";
  s = LoadStatus(DirWithRawSafetensors(h4, h4.size(), 64));
  EXPECT_THAT(std::string(s.message()), HasSubstr("non-negative"));
  const std::string h5 =
      R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})";
  s = LoadStatus(DirWithRawSafetensors(h5, h5.size(), 0));
  EXPECT_THAT(std::string(s.message()), HasSubstr("overflows"));
}

TEST(HfMalformedTest, ShapeContradictsConfig) {
  ModelConfig c = TinyConfig();
  auto w = MakeWeights(c, at::kFloat);
  w["model.layers.0.self_attn.q_proj.weight"] = at::randn({8, 4});
  absl::Status s = LoadStatus(WriteHfDir(c, w));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("model.safetensors: tensor model.layers.0.self_attn.q_proj.weight has "
                        "shape [8, 4], config implies [8, 8]"));
}

TEST(HfMalformedTest, UnknownAndUnsupportedDtype) {
  const std::string h =
      R"({"model.norm.weight":{"dtype":"Q4_K","shape":[8],"data_offsets":[0,32]}})";
  absl::Status s = LoadStatus(DirWithRawSafetensors(h, h.size(), 32));
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("model.norm.weight"), HasSubstr("unknown dtype 'Q4_K'")));
  const std::string h2 =
      R"({"model.norm.weight":{"dtype":"I64","shape":[8],"data_offsets":[0,64]}})";
  s = LoadStatus(DirWithRawSafetensors(h2, h2.size(), 64));
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("model.norm.weight"), HasSubstr("unsupported dtype I64")));
}

TEST(HfMalformedTest, MissingAndUnexpectedTensor) {
  ModelConfig c = TinyConfig();
  auto w = MakeWeights(c, at::kFloat);
  w.erase("model.layers.1.mlp.up_proj.weight");
  absl::Status s = LoadStatus(WriteHfDir(c, w));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("missing tensor model.layers.1.mlp.up_proj.weight"));
  w = MakeWeights(c, at::kFloat);
  w["model.layers.0.mlp.extra.weight"] = at::randn({3});
  s = LoadStatus(WriteHfDir(c, w));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("unexpected tensor model.layers.0.mlp.extra.weight"));
}

TEST(HfMalformedTest, NanAndInfWeights) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      ModelConfig c = TinyConfig();
      auto w = MakeWeights(c, at::kFloat);
      at::Tensor t = w.at("model.layers.1.self_attn.v_proj.weight");
      t.data_ptr<float>()[5] = bad;
      for (auto& [name, x] : w) x = x.to(dtype);
      absl::Status s = LoadStatus(WriteHfDir(c, w));
      EXPECT_THAT(std::string(s.message()),
                  AllOf(HasSubstr("tensor model.layers.1.self_attn.v_proj.weight contains"),
                        HasSubstr(std::isnan(bad) ? "NaN" : "Inf")));
    }
  }
  // A finite tensor whose sum overflows float is still accepted.
  ModelConfig c = TinyConfig();
  auto w = MakeWeights(c, at::kFloat);
  w.at("model.embed_tokens.weight").fill_(3e38f);
  EXPECT_TRUE(LoadStatus(WriteHfDir(c, w)).ok());
}

TEST(HfMalformedTest, InvalidJsonHeader) {
  const std::string h = R"({"model.norm.weight":{"dtype":"F32",)";
  absl::Status s = LoadStatus(DirWithRawSafetensors(h, h.size(), 0));
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("invalid JSON header")));
  const std::string h2 = "[1, 2]";
  s = LoadStatus(DirWithRawSafetensors(h2, h2.size(), 0));
  EXPECT_THAT(std::string(s.message()), HasSubstr("expected an object"));
}

TEST(HfMalformedTest, InvalidConfigJson) {
  ModelConfig c = TinyConfig();
  const std::string dir = WriteHfDir(c, MakeWeights(c, at::kFloat));
  WriteText(dir + "/config.json", "{\"model_type\": \"llama\",");
  absl::Status s = LoadStatus(dir);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("config.json"), HasSubstr("invalid JSON")));
  std::remove((dir + "/config.json").c_str());
  EXPECT_THAT(std::string(LoadStatus(dir).message()), HasSubstr("config.json"));
  std::remove((dir + "/model.safetensors").c_str());
  WriteHfConfig(dir + "/config.json", c).IgnoreError();
  EXPECT_THAT(std::string(LoadStatus(dir).message()), HasSubstr("neither model.safetensors"));
}

// ---------------------------------------------------------------------------
// config.json

const char* kLlamaJson = R"({
  "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
  "num_attention_heads": 8, "intermediate_size": 172, "vocab_size": 512,
  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
  "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": [128001, 128009],
  "torch_dtype": "bfloat16"
})";

TEST(ConfigTest, ParsesLlama3) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(kLlamaJson, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->d_model, 64);
  EXPECT_EQ(c->n_kv_heads, 8);  // default = heads
  EXPECT_EQ(c->d_head, 8);      // default = hidden / heads
  EXPECT_EQ(c->n_ctx, 4096);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.rope_type, "llama3");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->eos_token_id, 128001);
  EXPECT_FALSE(c->tied_embeddings);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_EQ(c->rope_layout, RopeLayout::kRotateHalves);
  EXPECT_THAT(c->Summary(), AllOf(HasSubstr("rotate_halves"), HasSubstr("pre")));
}

TEST(ConfigTest, ParsesFamilies) {
  auto mistral = ParseHfConfig(
      R"({"model_type":"mistral","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
          "num_key_value_heads":2,"intermediate_size":64,"vocab_size":100,"sliding_window":null})",
      "m.json");
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->sliding_window, 0);
  EXPECT_EQ(mistral->n_kv_heads, 2);
  auto qwen2 = ParseHfConfig(
      R"({"model_type":"qwen2","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
          "intermediate_size":64,"vocab_size":100,"tie_word_embeddings":true,
          "use_sliding_window":false,"sliding_window":4096})",
      "q.json");
  ASSERT_TRUE(qwen2.ok()) << qwen2.status();
  EXPECT_TRUE(qwen2->qkv_bias);
  EXPECT_TRUE(qwen2->tied_embeddings);
  EXPECT_EQ(qwen2->sliding_window, 0);
  auto qwen3 = ParseHfConfig(
      R"({"model_type":"qwen3","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
          "head_dim":16,"intermediate_size":64,"vocab_size":100,"attention_bias":false,
          "sinkscope_norm_placement":"sandwich"})",
      "q3.json");
  ASSERT_TRUE(qwen3.ok()) << qwen3.status();
  EXPECT_TRUE(qwen3->qk_norm);
  EXPECT_EQ(qwen3->d_head, 16);
  EXPECT_EQ(qwen3->norm_placement, NormPlacement::kSandwich);
}

TEST(ConfigTest, ErrorsNameFileAndField) {
  struct Case {
    std::string json;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {R"({"model_type":"llama","num_hidden_layers":1,"num_attention_heads":4,
           "intermediate_size":64,"vocab_size":100})",
       "config.json: field 'hidden_size' missing"},
      {R"({"model_type":"llama","hidden_size":"32","num_hidden_layers":1,
           "num_attention_heads":4,"intermediate_size":64,"vocab_size":100})",
       "config.json: field 'hidden_size' must be an integer, got string"},
      {R"({"model_type":"bert","hidden_size":32})", "config.json: field 'model_type'"},
      {R"({"hidden_size":32})", "config.json: field 'model_type' missing"},
      {R"({"model_type":"llama","hidden_act":"tanh","hidden_size":32})",
       "config.json: field 'hidden_act' has unsupported value 'tanh'"},
      {R"({"model_type":"llama","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
           "num_key_value_heads":3,"intermediate_size":64,"vocab_size":100})",
       "config.json: n_heads (4) must be a multiple of n_kv_heads (3)"},
      {R"({"model_type":"llama","hidden_size":32,"num_hidden_layers":0,"num_attention_heads":4,
           "intermediate_size":64,"vocab_size":100})",
       "config.json: n_layers must be positive"},
      {R"({"model_type":"llama","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
           "intermediate_size":64,"vocab_size":100,"rope_scaling":{"type":"yarn","factor":2}})",
       "config.json: field 'rope_scaling' has unsupported rope_type 'yarn'"},
      {R"({"model_type":"llama","hidden_size":32,"num_hidden_layers":1,"num_attention_heads":4,
           "intermediate_size":64,"vocab_size":100,"sinkscope_norm_placement":"middle"})",
       "config.json: field 'sinkscope_norm_placement'"},
      {R"({"model_type":"llama", )", "config.json: invalid JSON"},
      {R"([1,2,3])", "config.json: top level must be a JSON object"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ModelConfig> r = ParseHfConfig(c.json, "config.json");
    ASSERT_FALSE(r.ok()) << c.expected;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.expected));
  }
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.d_model, b.d_model);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.d_head, b.d_head);
  EXPECT_EQ(a.d_ffn, b.d_ffn);
  EXPECT_EQ(a.d_vocab, b.d_vocab);
  EXPECT_EQ(a.n_ctx, b.n_ctx);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.rope_type, b.rope_scaling.rope_type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.rope_layout, b.rope_layout);
  EXPECT_EQ(a.norm_placement, b.norm_placement);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
  EXPECT_EQ(a.tied_embeddings, b.tied_embeddings);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.layer_windows, b.layer_windows);
  EXPECT_EQ(a.attn_softcap, b.attn_softcap);
  EXPECT_EQ(a.final_softcap, b.final_softcap);
  EXPECT_EQ(a.norm_gain_offset, b.norm_gain_offset);
  EXPECT_EQ(a.embed_scale, b.embed_scale);
  EXPECT_EQ(a.activation, b.activation);
}

TEST(ConfigTest, WriteParseRoundTrip) {
  std::vector<ModelConfig> configs;
  ModelConfig llama3 = TinyConfig();
  llama3.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
  llama3.rope_theta = 500000.0;
  llama3.norm_eps = 1e-5;
  llama3.qkv_bias = true;
  llama3.norm_placement = NormPlacement::kSandwich;
  llama3.bos_token_id = 128000;
  llama3.eos_token_id = 128009;
  configs.push_back(llama3);
  ModelConfig llama2c = TinyConfig();  // adjacent pairs survive via the extra key
  llama2c.rope_layout = RopeLayout::kAdjacentPairs;
  llama2c.tied_embeddings = true;
  llama2c.rope_scaling = {"linear", 2.0, 1.0, 4.0, 8192};
  configs.push_back(llama2c);
  ModelConfig mistral = TinyConfig();
  mistral.model_type = "mistral";
  mistral.sliding_window = 4096;
  configs.push_back(mistral);
  ModelConfig qwen2 = TinyConfig();
  qwen2.model_type = "qwen2";
  qwen2.qkv_bias = true;
  qwen2.norm_eps = 1e-6;
  configs.push_back(qwen2);
  ModelConfig qwen3 = TinyConfig();
  qwen3.model_type = "qwen3";
  qwen3.qk_norm = true;
  qwen3.d_head = 16;
  qwen3.norm_placement = NormPlacement::kPost;
  configs.push_back(qwen3);
  ModelConfig olmo2 = TinyConfig();
  olmo2.model_type = "olmo2";
  olmo2.qk_norm = olmo2.qk_norm_full_width = true;
  olmo2.norm_placement = NormPlacement::kPost;
  configs.push_back(olmo2);
  ModelConfig gemma2 = TinyConfig();
  gemma2.model_type = "gemma2";
  gemma2.norm_placement = NormPlacement::kSandwich;
  gemma2.norm_gain_offset = 1.0;
  gemma2.embed_scale = std::sqrt(8.0);
  gemma2.activation = Activation::kGeluTanh;
  gemma2.attn_scale = 0.25;  // query_pre_attn_scalar 16
  gemma2.attn_softcap = 50;
  gemma2.final_softcap = 30;
  gemma2.sliding_window = 16;
  gemma2.layer_windows = {16, 0};
  gemma2.tied_embeddings = true;
  configs.push_back(gemma2);

  const std::string dir = testing::MakeTempDir("ckpt_cfg");
  for (const ModelConfig& c : configs) {
    SCOPED_TRACE(c.Summary());
    ASSERT_TRUE(WriteHfConfig(dir + "/config.json", c).ok());
    const std::vector<char> text = ReadAll(dir + "/config.json");
    absl::StatusOr<ModelConfig> back =
        ParseHfConfig(std::string(text.begin(), text.end()), "config.json");
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSameConfig(c, *back);
  }

  // Configs config.json cannot express are refused.
  ModelConfig bad = TinyConfig();
  bad.qk_norm = true;  // qk_norm needs model_type qwen3
  EXPECT_THAT(std::string(WriteHfConfig(dir + "/config.json", bad).message()), HasSubstr("qwen3"));
  bad = TinyConfig();
  bad.model_type = "qwen2";  // qwen2 always has q/k/v bias
  EXPECT_FALSE(WriteHfConfig(dir + "/config.json", bad).ok());
  bad = TinyConfig();
  bad.sliding_window = 128;
  EXPECT_FALSE(WriteHfConfig(dir + "/config.json", bad).ok());
  bad = gemma2;
  bad.norm_gain_offset = 0;  // Gemma 2 stores zero-centred gains
  EXPECT_THAT(std::string(WriteHfConfig(dir + "/config.json", bad).message()), HasSubstr("(1 + w)"));
  bad = olmo2;
  bad.norm_placement = NormPlacement::kPre;  // olmo2 is post-norm
  EXPECT_THAT(std::string(WriteHfConfig(dir + "/config.json", bad).message()), HasSubstr("post-norm"));
}

TEST(ConfigTest, NamesRoundTrip) {
  for (NormPlacement p : {NormPlacement::kPre, NormPlacement::kSandwich, NormPlacement::kPost}) {
    absl::StatusOr<NormPlacement> back = ParseNormPlacement(NormPlacementName(p));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, p);
  }
  EXPECT_FALSE(ParseNormPlacement("middle").ok());
  EXPECT_STREQ(RopeLayoutName(RopeLayout::kAdjacentPairs), "adjacent_pairs");
  EXPECT_STREQ(RopeLayoutName(RopeLayout::kRotateHalves), "rotate_halves");
}

}  // namespace
}  // namespace sinkscope
