// GGUF: vocabularies against llama.cpp's test vectors, dequantization against
// hand-computed blocks, malformed files (written here byte by byte) refused
// with messages naming the file, the tensor and the problem, and the
// vocabulary-size check. The transformers / gguf-py comparisons of whole GGUF
// checkpoints are in python/test_gguf_checkpoint.py.
#include "common/gguf.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/engine/test_util.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {
namespace {

using ::sinkscope::testing::ExpectInvalidArgumentNaming;
using ::sinkscope::testing::LoadVocabCases;
using ::sinkscope::testing::ReadAll;
using ::sinkscope::testing::VocabCase;

/// Encodes every case; returns how many match, printing the others.
int CountMatches(const Tokenizer& tok, const std::vector<VocabCase>& cases, const char* label) {
  int matched = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    auto got = tok.Encode(cases[i].input, /*add_bos=*/false);
    EXPECT_TRUE(got.ok()) << got.status();
    if (got.ok() && *got == cases[i].ids) {
      ++matched;
    } else if (got.ok()) {
      std::cout << "[ " << label << " differs ] case " << i << " [" << cases[i].input << "]\n  want "
                << absl::StrJoin(cases[i].ids, " ") << "\n  got  " << absl::StrJoin(*got, " ") << "\n";
    }
  }
  std::cout << label << ": " << matched << " of " << cases.size() << " llama.cpp vectors match\n";
  return matched;
}

TEST(GgufVocab, Gpt2ReproducesEveryLlamaCppVector) {
  SKIP_IF_NO_SHARED(path, "tokenizers/llamacpp-vocab/ggml-vocab-gpt-2.gguf");
  SKIP_IF_NO_SHARED(inp, "tokenizers/llamacpp-vocab/ggml-vocab-gpt-2.gguf.inp");
  SKIP_IF_NO_SHARED(out, "tokenizers/llamacpp-vocab/ggml-vocab-gpt-2.gguf.out");
  auto tok = LoadTokenizer(path, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "bpe");
  EXPECT_EQ((*tok)->vocab_size(), 50257);  // GPT-2's published vocabulary size
  const auto cases = LoadVocabCases(inp, out);
  ASSERT_EQ(cases.size(), 46u);
  EXPECT_EQ(CountMatches(**tok, cases, "gpt-2 gguf"), static_cast<int>(cases.size()));
  // Byte-level decoding inverts encoding on every input.
  for (const VocabCase& c : cases) EXPECT_EQ((*tok)->Decode(c.ids), c.input);
}

TEST(GgufVocab, LlamaSpmReproducesLlamaCppVectors) {
  SKIP_IF_NO_SHARED(path, "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf");
  SKIP_IF_NO_SHARED(inp, "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf.inp");
  SKIP_IF_NO_SHARED(out, "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf.out");
  auto tok = LoadTokenizer(path, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "spm");
  EXPECT_EQ((*tok)->vocab_size(), 32000);
  EXPECT_EQ((*tok)->bos_id(), 1);
  const auto cases = LoadVocabCases(inp, out);
  ASSERT_EQ(cases.size(), 46u);
  // The engine's SPM (llama2.c's score-greedy merge = sentencepiece BPE).
  EXPECT_EQ(CountMatches(**tok, cases, "llama-spm gguf"), static_cast<int>(cases.size()));
}

// ---------------------------------------------------------------------------
// A GGUF writer for the malformed cases (layout in common/gguf.h).

struct GgufWriter {
  std::string kv;
  uint64_t n_kv = 0;
  struct T {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    std::string data;
  };
  std::vector<T> tensors;
  uint32_t version = 3;
  std::string magic = "GGUF";

  static void Str(std::string* o, const std::string& s) {
    uint64_t n = s.size();
    o->append(reinterpret_cast<const char*>(&n), 8);
    o->append(s);
  }
  template <typename V>
  static void Pod(std::string* o, V v) {
    o->append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void U32(const std::string& k, uint32_t v) { Str(&kv, k); Pod(&kv, uint32_t{4}); Pod(&kv, v); ++n_kv; }
  void F32(const std::string& k, float v) { Str(&kv, k); Pod(&kv, uint32_t{6}); Pod(&kv, v); ++n_kv; }
  void S(const std::string& k, const std::string& v) { Str(&kv, k); Pod(&kv, uint32_t{8}); Str(&kv, v); ++n_kv; }
  void Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, std::string data) {
    tensors.push_back({name, std::move(ne), type, std::move(data)});
  }
  std::string Bytes() const {
    std::string o = magic;
    Pod(&o, version);
    Pod(&o, uint64_t{tensors.size()});
    Pod(&o, n_kv);
    o += kv;
    uint64_t off = 0;
    for (const T& t : tensors) {
      Str(&o, t.name);
      Pod(&o, uint32_t(t.ne.size()));
      for (uint64_t d : t.ne) Pod(&o, d);
      Pod(&o, t.type);
      Pod(&o, off);
      off += (t.data.size() + 31) / 32 * 32;
    }
    o.resize((o.size() + 31) / 32 * 32, '\0');
    for (const T& t : tensors) {
      std::string d = t.data;
      d.resize((d.size() + 31) / 32 * 32, '\0');
      o += d;
    }
    return o;
  }
};

std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

/// A 1-layer llama in F32: d_model 4, 2 heads of 2, ffn 8, vocab 6, tied.
GgufWriter TinyLlama() {
  GgufWriter w;
  w.S("general.architecture", "llama");
  w.U32("llama.embedding_length", 4);
  w.U32("llama.block_count", 1);
  w.U32("llama.feed_forward_length", 8);
  w.U32("llama.attention.head_count", 2);
  w.U32("llama.attention.head_count_kv", 2);
  w.U32("llama.context_length", 16);
  w.F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  auto mat = [](uint64_t rows, uint64_t cols) {
    std::vector<float> v(rows * cols);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.01f * static_cast<float>(i % 13) - 0.05f;
    return F32Bytes(v);
  };
  w.Tensor("token_embd.weight", {4, 6}, kGgmlF32, mat(6, 4));
  w.Tensor("blk.0.attn_norm.weight", {4}, kGgmlF32, F32Bytes({1, 1, 1, 1}));
  for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output"}) {
    w.Tensor(std::string("blk.0.") + n + ".weight", {4, 4}, kGgmlF32, mat(4, 4));
  }
  w.Tensor("blk.0.ffn_norm.weight", {4}, kGgmlF32, F32Bytes({1, 1, 1, 1}));
  w.Tensor("blk.0.ffn_gate.weight", {4, 8}, kGgmlF32, mat(8, 4));
  w.Tensor("blk.0.ffn_up.weight", {4, 8}, kGgmlF32, mat(8, 4));
  w.Tensor("blk.0.ffn_down.weight", {8, 4}, kGgmlF32, mat(4, 8));
  w.Tensor("output_norm.weight", {4}, kGgmlF32, F32Bytes({1, 1, 1, 1}));
  return w;
}

absl::StatusOr<Checkpoint> Parse(const std::string& bytes, const std::string& name = "tiny.gguf") {
  return ParseGgufCheckpoint(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
}

TEST(GgufCheckpoint, TinyLlamaLoadsWithHfNamesAndUnpermutedQ) {
  GgufWriter w = TinyLlama();
  auto ck = Parse(w.Bytes());
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->format, "gguf");
  EXPECT_EQ(ck->config.d_vocab, 6);
  EXPECT_TRUE(ck->config.tied_embeddings);
  ASSERT_TRUE(ck->tensors.count("model.layers.0.self_attn.q_proj.weight"));
  // ggml ne = {4 cols, 6 rows} is torch [6, 4]; element (r, c) = file[r * 4 + c].
  at::Tensor e = ck->tensors.at("model.embed_tokens.weight");
  ASSERT_EQ(e.sizes(), (at::IntArrayRef{6, 4}));
  EXPECT_FLOAT_EQ(e[2][3].item<float>(), 0.01f * ((2 * 4 + 3) % 13) - 0.05f);
  // Q rows in the file are HF rows permuted per head (d_head 2: rows 2h, 2h+1
  // = pairs (i, i + 1)); with d_head 2 the permutation is the identity.
  at::Tensor q = ck->tensors.at("model.layers.0.self_attn.q_proj.weight");
  EXPECT_FLOAT_EQ(q[1][0].item<float>(), 0.01f * (4 % 13) - 0.05f);
}

// Placed at load (the worker's path): tensor by tensor into the target dtype,
// each equal to the unplaced (float32) tensor cast, the Q/K rows unpermuted alike.
TEST(GgufCheckpoint, PlacedLoadCastsEachTensorOnce) {
  GgufWriter w = TinyLlama();
  const std::string dir = testing::MakeTempDir("gguf_placed");
  const std::string path = dir + "/tiny.gguf";
  { std::ofstream(path, std::ios::binary) << w.Bytes(); }
  auto plain = LoadGguf(path);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->placed);
  auto placed = LoadGguf(path, LoadTarget{c10::Device(c10::kCPU), at::kBFloat16});
  ASSERT_TRUE(placed.ok()) << placed.status();
  EXPECT_TRUE(placed->placed);
  ASSERT_EQ(placed->tensors.size(), plain->tensors.size());
  for (const auto& [name, t] : plain->tensors) {
    const at::Tensor& p = placed->tensors.at(name);
    EXPECT_EQ(p.scalar_type(), at::kBFloat16) << name;
    EXPECT_TRUE(p.equal(t.to(at::kBFloat16))) << name;
  }
}

TEST(GgufCheckpoint, BadMagicIsRefused) {
  GgufWriter w = TinyLlama();
  w.magic = "GGUX";
  auto st = Parse(w.Bytes(), "bad-magic.gguf").status();
  ASSERT_FALSE(st.ok());
  ExpectInvalidArgumentNaming(st, "bad-magic.gguf");
  ExpectInvalidArgumentNaming(st, "bad magic \"GGUX\"");
}

TEST(GgufCheckpoint, WrongVersionIsRefused) {
  for (uint32_t v : {1u, 4u}) {
    GgufWriter w = TinyLlama();
    w.version = v;
    auto st = Parse(w.Bytes(), "v.gguf").status();
    EXPECT_FALSE(st.ok()) << "version " << v;
    ExpectInvalidArgumentNaming(st, absl::StrCat("unsupported GGUF version ", v));
  }
}

TEST(GgufCheckpoint, TruncatedTensorDataNamesTheTensor) {
  std::string b = TinyLlama().Bytes();
  b.resize(b.size() - 24);  // 16 bytes of padding and 8 of output_norm.weight, the last tensor
  auto st = Parse(b, "cut.gguf").status();
  ASSERT_FALSE(st.ok());
  ExpectInvalidArgumentNaming(st, "cut.gguf: tensor output_norm.weight");
  ExpectInvalidArgumentNaming(st, "truncated tensor data");
  // A cut inside the header names where it stopped.
  auto st2 = Parse(b.substr(0, 60), "cut2.gguf").status();
  ExpectInvalidArgumentNaming(st2, "cut2.gguf");
}

TEST(GgufCheckpoint, UnsupportedQuantTypeIsNamed) {
  GgufWriter w = TinyLlama();
  // Q5_K (13): super-blocks of 256 elements in 176 bytes.
  w.tensors[2].ne = {256, 1};
  w.tensors[2].type = 13;
  w.tensors[2].data = std::string(176, '\0');
  auto st = Parse(w.Bytes(), "q5k.gguf").status();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  for (const char* s : {"q5k.gguf", "tensor blk.0.attn_q.weight", "Q5_K", "not supported"}) {
    EXPECT_NE(st.message().find(s), std::string::npos) << st << " lacks " << s;
  }
  // An unknown type number.
  w.tensors[2].type = 77;
  ExpectInvalidArgumentNaming(Parse(w.Bytes(), "t77.gguf").status(), "unknown ggml type 77");
}

TEST(GgufCheckpoint, UnknownTensorAndArchitectureAreRefused) {
  GgufWriter w = TinyLlama();
  w.tensors[1].name = "blk.0.attn_sink.weight";
  ExpectInvalidArgumentNaming(Parse(w.Bytes()).status(), "tensor blk.0.attn_sink.weight: not a llama tensor name");
  GgufWriter m = TinyLlama();
  m.tensors.pop_back();  // no output_norm
  ExpectInvalidArgumentNaming(Parse(m.Bytes()).status(), "model.norm.weight");
  GgufWriter a;
  a.S("general.architecture", "mamba");
  auto st = Parse(a.Bytes()).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("\"mamba\" is not supported"), std::string::npos) << st;
}

// ---------------------------------------------------------------------------
// Dequantization on hand-built blocks (values computed here by hand).

TEST(GgufDequantize, Q8_0Block) {
  std::string b(34, '\0');
  const uint16_t half_0_5 = 0x3800;  // 0.5 in IEEE binary16
  std::memcpy(b.data(), &half_0_5, 2);
  for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<char>(static_cast<int8_t>(j * 8 - 128));
  std::vector<float> y(32);
  ASSERT_TRUE(DequantizeGgml(kGgmlQ8_0, reinterpret_cast<const uint8_t*>(b.data()), 32, y.data()).ok());
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.5f * (j * 8 - 128)) << j;
}

TEST(GgufDequantize, Q4_0Block) {
  std::string b(18, '\0');
  const uint16_t half_2 = 0x4000;  // 2.0
  std::memcpy(b.data(), &half_2, 2);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<char>((j & 0xF) | ((15 - j) << 4));
  std::vector<float> y(32);
  ASSERT_TRUE(DequantizeGgml(kGgmlQ4_0, reinterpret_cast<const uint8_t*>(b.data()), 32, y.data()).ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 2.0f * (j - 8)) << j;             // low nibble -> element j
    EXPECT_EQ(y[j + 16], 2.0f * ((15 - j) - 8)) << j;  // high nibble -> element j + 16
  }
}

TEST(GgufDequantize, Q4_KSuperBlock) {
  std::string b(144, '\0');
  const uint16_t half_1 = 0x3C00, half_0_25 = 0x3400;  // d = 1, dmin = 0.25
  std::memcpy(b.data(), &half_1, 2);
  std::memcpy(b.data() + 2, &half_0_25, 2);
  uint8_t* sc = reinterpret_cast<uint8_t*>(b.data() + 4);
  // Sub-blocks 0..3: scale in sc[j] & 63, min in sc[j + 4] & 63.
  // Sub-blocks 4..7: low 4 bits in sc[j + 4], high 2 bits in the top of sc[j - 4] / sc[j].
  sc[0] = 3;
  sc[4] = 2;                                   // sub-block 0: scale 3, min 2
  sc[8] = 0x5 | (0x1 << 4);                    // sub-block 4: low bits scale 5, min 1
  sc[0] |= 1 << 6;                             // scale high bits 01 -> 16 + 5 = 21
  sc[4] |= 2 << 6;                             // min high bits 10 -> 32 + 1 = 33
  uint8_t* q = reinterpret_cast<uint8_t*>(b.data() + 16);
  for (int l = 0; l < 128; ++l) q[l] = static_cast<uint8_t>((l % 16) | (((l + 3) % 16) << 4));
  std::vector<float> y(256);
  ASSERT_TRUE(DequantizeGgml(kGgmlQ4_K, reinterpret_cast<const uint8_t*>(b.data()), 256, y.data()).ok());
  // Sub-block 0 = low nibbles of q[0..31]: 3 * q - 0.25 * 2.
  for (int l = 0; l < 32; ++l) EXPECT_EQ(y[l], 3.0f * (l % 16) - 0.5f) << l;
  // Sub-block 1 = high nibbles of q[0..31], scale sc[1] = 0, min sc[5] = 0.
  for (int l = 0; l < 32; ++l) EXPECT_EQ(y[32 + l], 0.0f) << l;
  // Sub-block 4 = low nibbles of q[64..95]: 21 * q - 0.25 * 33.
  for (int l = 0; l < 32; ++l) EXPECT_EQ(y[128 + l], 21.0f * ((64 + l) % 16) - 8.25f) << l;
}

TEST(GgufDequantize, OtherTypesRefused) {
  std::vector<float> y(256);
  std::string b(256, '\0');
  auto st = DequantizeGgml(14, reinterpret_cast<const uint8_t*>(b.data()), 256, y.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("Q6_K"), std::string::npos) << st;
}

// ---------------------------------------------------------------------------
// The vocabulary check (issue: a corpus tokenizer cut to the model's size).

TEST(TokenizerVocab, MismatchNamesBothSizes) {
  SKIP_IF_NO_SHARED(path, "tokenizers/llama2/tokenizer.bin");
  // The 32,000-piece Llama 2 tokenizer read for a 512-token model.
  auto cut = LoadTokenizer(path, 512);
  ExpectInvalidArgumentNaming(cut.status(), "holds 32000 pieces but the model's vocabulary has 512");
  SKIP_IF_NO_SHARED(gguf, "tokenizers/llamacpp-vocab/ggml-vocab-gpt-2.gguf");
  auto tok = LoadTokenizer(gguf, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto st = CheckTokenizerVocab(**tok, 512, /*allow_padding=*/false, "corpus c's tokenizer");
  ExpectInvalidArgumentNaming(st, "corpus c's tokenizer has a vocabulary of 50257 tokens but the model's has 512");
  // A model's own tokenizer may be smaller than padded embeddings, a corpus's not.
  EXPECT_TRUE(CheckTokenizerVocab(**tok, 50304, true, "t").ok());
  EXPECT_FALSE(CheckTokenizerVocab(**tok, 50304, false, "t").ok());
  EXPECT_TRUE(CheckTokenizerVocab(**tok, 50257, false, "t").ok());
}

}  // namespace
}  // namespace sinkscope
