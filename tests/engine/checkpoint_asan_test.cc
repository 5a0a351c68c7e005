// Malformed inputs for the checkpoint/config parsers, built with
// -fsanitize=address (tests/engine/asan.cmake). Every input is a heap buffer of
// exactly its own size, so any read past the end is an ASan report. The
// parsers must return a Status, never crash, for: every truncation, byte
// flips in the headers, and hostile header fields.
#include <ATen/core/Tensor.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/engine/test_util.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/config.h"

namespace sinkscope {
namespace {

using Bytes = std::vector<uint8_t>;

// Deterministic pseudo-random numbers (no global state, reproducible).
struct Lcg {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  uint64_t Next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return s >> 17;
  }
};

Bytes ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// Parses a copy of data[0, n) held in a buffer of exactly n bytes.
absl::Status ParseSafetensorsCopy(const Bytes& data, size_t n) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[n == 0 ? 1 : n]);
  if (n > 0) std::memcpy(buf.get(), data.data(), n);
  size_t start = 0;
  auto r = ParseSafetensorsHeader(buf.get(), n, "fuzz.safetensors", &start);
  if (r.ok()) {
    EXPECT_LE(start, n);
    for (const SafetensorsEntry& e : *r) EXPECT_LE(start + e.end, n) << e.name;
  }
  return r.status();
}

absl::Status ParseLlama2cCopy(const Bytes& data, size_t n) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[n == 0 ? 1 : n]);
  if (n > 0) std::memcpy(buf.get(), data.data(), n);
  return ParseLlama2c(buf.get(), n, "fuzz.bin").status();
}

ModelConfig TinyConfig() {
  ModelConfig c;
  c.d_model = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.d_head = 4;
  c.d_ffn = 12;
  c.d_vocab = 16;
  c.tied_embeddings = true;
  return c;
}

std::map<std::string, at::Tensor> TinyWeights() {
  std::map<std::string, at::Tensor> w;
  auto add = [&](const std::string& n, std::vector<int64_t> s, at::ScalarType t) {
    w[n] = at::randn(s).to(t);
  };
  add("model.embed_tokens.weight", {16, 8}, at::kHalf);
  add("model.norm.weight", {8}, at::kFloat);
  const std::string p = "model.layers.0.";
  add(p + "input_layernorm.weight", {8}, at::kFloat);
  add(p + "post_attention_layernorm.weight", {8}, at::kBFloat16);
  add(p + "self_attn.q_proj.weight", {8, 8}, at::kFloat);
  add(p + "self_attn.k_proj.weight", {4, 8}, at::kHalf);
  add(p + "self_attn.v_proj.weight", {4, 8}, at::kHalf);
  add(p + "self_attn.o_proj.weight", {8, 8}, at::kFloat);
  add(p + "mlp.gate_proj.weight", {12, 8}, at::kBFloat16);
  add(p + "mlp.up_proj.weight", {12, 8}, at::kFloat);
  add(p + "mlp.down_proj.weight", {8, 12}, at::kFloat);
  return w;
}

TEST(AsanSafetensors, EveryTruncationAndFlip) {
  const std::string dir = testing::MakeTempDir("asan_st");
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", TinyWeights()).ok());
  const Bytes good = ReadAll(dir + "/model.safetensors");
  ASSERT_TRUE(ParseSafetensorsCopy(good, good.size()).ok());
  for (size_t n = 0; n < good.size(); ++n) (void)ParseSafetensorsCopy(good, n);

  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  Lcg rng;
  const char kChars[] = "{}[]\",:0123456789-e. \\aFBI";
  for (size_t i = 0; i < 8 + header_len; ++i) {
    for (int k = 0; k < 4; ++k) {
      Bytes m = good;
      m[i] = k == 0 ? static_cast<uint8_t>(m[i] ^ (1u << (rng.Next() % 8)))
                    : static_cast<uint8_t>(kChars[rng.Next() % (sizeof(kChars) - 1)]);
      (void)ParseSafetensorsCopy(m, m.size());
    }
  }
  // Hostile header lengths.
  for (uint64_t len :
       {uint64_t{0}, uint64_t{1}, header_len + 1, uint64_t(good.size()), uint64_t(good.size() - 8),
        uint64_t(good.size() - 7), ~uint64_t{0}, uint64_t{1} << 63}) {
    Bytes m = good;
    std::memcpy(m.data(), &len, 8);
    (void)ParseSafetensorsCopy(m, m.size());
  }
}

TEST(AsanSafetensors, HostileEntries) {
  const std::vector<std::string> headers = {
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})",
      R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,0]}})",
      R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})",
      R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})",
      R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})",
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
      R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})",
      R"({"a":{"dtype":"F32","shape":{},"data_offsets":[0,4]}})",
      R"({"a":[],"__metadata__":{"x":"y"}})",
      R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})",
      R"("just a string")",
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{}})",
      std::string(2000, '['),
      "",
  };
  for (const std::string& h : headers) {
    Bytes b(8 + h.size() + 4, 0);
    const uint64_t n = h.size();
    std::memcpy(b.data(), &n, 8);
    std::memcpy(b.data() + 8, h.data(), h.size());
    absl::Status s = ParseSafetensorsCopy(b, b.size());
    EXPECT_FALSE(s.ok()) << h;
    EXPECT_NE(std::string(s.message()).find("fuzz.safetensors"), std::string::npos) << s;
  }
}

TEST(AsanSafetensors, TruncatedFilesThroughTheLoader) {
  const std::string dir = testing::MakeTempDir("asan_dir");
  ASSERT_TRUE(WriteHfConfig(dir + "/config.json", TinyConfig()).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", TinyWeights()).ok());
  ASSERT_TRUE(LoadHfDirectory(dir).ok());
  const Bytes good = ReadAll(dir + "/model.safetensors");
  for (size_t n :
       {size_t{0}, size_t{7}, size_t{8}, size_t{100}, good.size() / 2, good.size() - 1}) {
    std::ofstream(dir + "/model.safetensors", std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(good.data()), static_cast<std::streamsize>(n));
    EXPECT_FALSE(LoadHfDirectory(dir).ok()) << n;
  }
}

Bytes TinyLlama2c() {
  // dim 8, hidden 12, 2 layers, 2 heads, 1 kv head, untied vocab 16, seq 4.
  const int32_t h[7] = {8, 12, 2, 2, 1, -16, 4};
  const size_t floats = 16 * 8 + 2 * 8 + 2 * 64 + 2 * 2 * 4 * 8 + 2 * 64 + 2 * 8 + 3 * 2 * 12 * 8 +
                        8 + 4 * 4 + 16 * 8;
  Bytes b(28 + 4 * floats, 0);
  std::memcpy(b.data(), h, 28);
  for (size_t i = 0; i < floats; ++i) {
    const float v = 0.01f * static_cast<float>(i % 97);
    std::memcpy(b.data() + 28 + 4 * i, &v, 4);
  }
  return b;
}

TEST(AsanLlama2c, EveryTruncationAndHostileHeaders) {
  const Bytes good = TinyLlama2c();
  absl::Status ok = ParseLlama2cCopy(good, good.size());
  ASSERT_TRUE(ok.ok()) << ok;
  for (size_t n = 0; n < good.size(); n += (n < 64 ? 1 : 13)) {
    EXPECT_FALSE(ParseLlama2cCopy(good, n).ok()) << n;
  }
  Lcg rng;
  const int32_t interesting[] = {0, 1, -1, 2, 3, 7, 8, 16, 1 << 30, INT32_MIN, INT32_MAX, -16};
  for (int i = 0; i < 3000; ++i) {
    Bytes m = good;
    int32_t v = (rng.Next() % 2) ? interesting[rng.Next() % 12] : static_cast<int32_t>(rng.Next());
    const size_t field = rng.Next() % 7;
    std::memcpy(m.data() + 4 * field, &v, 4);
    (void)ParseLlama2cCopy(m, m.size());
  }
}

TEST(AsanConfig, TruncationsAndFlips) {
  const std::string dir = testing::MakeTempDir("asan_cfg");
  ModelConfig c = TinyConfig();
  c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
  ASSERT_TRUE(WriteHfConfig(dir + "/config.json", c).ok());
  const Bytes bytes = ReadAll(dir + "/config.json");
  const std::string good(bytes.begin(), bytes.end());
  ASSERT_TRUE(ParseHfConfig(good, "config.json").ok());
  for (size_t n = 0; n < good.size(); ++n) (void)ParseHfConfig(good.substr(0, n), "config.json");
  Lcg rng;
  const char kChars[] = "{}[]\",:0123456789-e.tfn ";
  for (size_t i = 0; i < good.size(); ++i) {
    std::string m = good;
    m[i] = kChars[rng.Next() % (sizeof(kChars) - 1)];
    (void)ParseHfConfig(m, "config.json");
  }
}

}  // namespace
}  // namespace sinkscope
