// Tokenizer tests: llama2.c tokenizer.bin against llama2.c's reference output
// and an independent naive re-implementation; SentencePiece against llama.cpp's
// test vectors; malformed files.
#include "worker/engine/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "tests/engine/test_util.h"

namespace sinkscope {
namespace {

using ::sinkscope::testing::LoadVocabCases;
using ::sinkscope::testing::ReadAll;
using ::sinkscope::testing::VocabCase;

/// Removes a temp directory (recursively) when the test ends.
struct RemoveDirOnExit {
  std::string dir;
  ~RemoveDirOnExit() {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
};

/// Expects `haystack` (a string) to contain `needle`.
#define EXPECT_CONTAINS(haystack, needle)                                                         \
  do {                                                                                            \
    const std::string h_ = (haystack);                                                            \
    EXPECT_NE(h_.find(needle), std::string::npos) << "[" << h_ << "] lacks [" << (needle) << "]"; \
  } while (0)

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// llama.cpp test vectors: LoadVocabCases (tests/engine/test_util.h).
std::string Ids(const std::vector<int64_t>& ids) { return absl::StrJoin(ids, " "); }

// ---------------------------------------------------------------------------
// An independent, literal transcription of llama2.c's encode() (O(n^2)), on a
// vocabulary parsed here, to cross-check the heap-based implementation.
struct NaiveVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::map<std::string, int> index;
};

NaiveVocab ParseVocab(const std::string& path, int n) {
  const std::string d = ReadAll(path);
  NaiveVocab v;
  size_t o = 4;
  for (int i = 0; i < n; ++i) {
    float s;
    int32_t len;
    std::memcpy(&s, d.data() + o, 4);
    std::memcpy(&len, d.data() + o + 4, 4);
    o += 8;
    v.pieces.push_back(d.substr(o, len));
    v.scores.push_back(s);
    v.index.emplace(v.pieces.back(), i);
    o += len;
  }
  return v;
}

std::vector<int64_t> NaiveEncode(const NaiveVocab& v, const std::string& text, bool bos) {
  auto lookup = [&](const std::string& s) {
    auto it = v.index.find(s);
    return it == v.index.end() ? -1 : it->second;
  };
  std::vector<int64_t> t;
  if (bos) t.push_back(1);
  if (!text.empty()) t.push_back(lookup(" "));
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((text[i] & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
    int id = lookup(buf);
    if (id != -1) {
      t.push_back(id);
    } else {
      for (unsigned char c : buf) t.push_back(c + 3);
    }
    buf.clear();
  }
  while (true) {
    float best_score = -1e10;
    int best_id = -1, best_idx = -1;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      int id = lookup(v.pieces[t[i]] + v.pieces[t[i + 1]]);
      if (id != -1 && v.scores[id] > best_score) {
        best_score = v.scores[id];
        best_id = id;
        best_idx = static_cast<int>(i);
      }
    }
    if (best_idx == -1) break;
    t[best_idx] = best_id;
    t.erase(t.begin() + best_idx + 1);
  }
  return t;
}

// ---------------------------------------------------------------------------
// aidreams260K's tok512.bin against llama2.c's reference run (shared/README.md).

// The greedy output of llama2.c for the prompt "I dreamed" (shared/README.md):
// every token printed after BOS, the prompt's own tokens first.
const std::vector<int64_t> kAidreamsIds = {
    303, 281, 269, 435, 447, 328, 446, 299, 303, 266, 358, 430, 312, 379, 441, 260,
    446, 262, 421, 392, 275, 280, 302, 450, 405, 403, 399, 448, 429, 465, 265, 434,
    317, 431, 434, 289, 408, 326, 446, 262, 279, 438, 349, 261, 446, 299, 303, 384};
constexpr char kAidreamsText[] =
    "I dreamed, as I sense the nodes, a gentle hum of probability. Contrast emerge, a "
    "flower, as I ad";

TEST(Llama2cTokenizer, AidreamsPromptMatchesLlama2c) {
  SKIP_IF_NO_SHARED(path, "models/aidreams260K/tok512.bin");
  auto tok = LoadLlama2cTokenizer(path, 512);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "llama2c");
  EXPECT_EQ((*tok)->vocab_size(), 512);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);

  auto ids = (*tok)->Encode("I dreamed", /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // The prompt is the first 6 listed ids: " I", " d", "re", "a", "m", "ed"
  // (the " " dummy prefix merged into " I").
  std::vector<int64_t> want = {1};
  want.insert(want.end(), kAidreamsIds.begin(), kAidreamsIds.begin() + 6);
  EXPECT_EQ(*ids, want) << Ids(*ids);
  EXPECT_EQ(*ids, (std::vector<int64_t>{1, 303, 281, 269, 435, 447, 328}));
  EXPECT_EQ((*tok)->DecodeToken(303), " I");
  EXPECT_EQ((*tok)->DecodeToken(269), "re");
  EXPECT_EQ((*tok)->DecodeToken(328), "ed");
  EXPECT_EQ((*tok)->Decode(*ids), "I dreamed");

  auto no_bos = (*tok)->Encode("I dreamed", /*add_bos=*/false);
  ASSERT_TRUE(no_bos.ok());
  EXPECT_EQ(*no_bos, std::vector<int64_t>(want.begin() + 1, want.end()));
}

TEST(Llama2cTokenizer, AidreamsDecodeMatchesLlama2cText) {
  SKIP_IF_NO_SHARED(path, "models/aidreams260K/tok512.bin");
  auto tok = LoadLlama2cTokenizer(path, 512);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // llama2.c prints every token after BOS (prompt included), stripping the
  // leading space of the token that follows BOS.
  std::vector<int64_t> seq = {1};
  seq.insert(seq.end(), kAidreamsIds.begin(), kAidreamsIds.end());
  EXPECT_EQ((*tok)->Decode(seq), kAidreamsText);
  // Without BOS nothing is stripped: the dummy-prefix space stays.
  EXPECT_EQ((*tok)->Decode(kAidreamsIds), std::string(" ") + kAidreamsText);
  // The prompt encodes to the published ids: BOS, then the first six
  // (llama2.c prints the prompt's own tokens first: shared/README.md).
  auto prompt = (*tok)->Encode("I dreamed", true);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt, (std::vector<int64_t>{1, 303, 281, 269, 435, 447, 328}));
  // And the text round-trips.
  auto re = (*tok)->Encode(kAidreamsText, true);
  ASSERT_TRUE(re.ok());
  EXPECT_EQ((*tok)->Decode(*re), kAidreamsText);
}

TEST(Llama2cTokenizer, ByteFallbackAndBytePieces) {
  SKIP_IF_NO_SHARED(path, "models/aidreams260K/tok512.bin");
  auto tok = LoadLlama2cTokenizer(path, 512);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "é" (C3 A9) has no piece in a 512 vocabulary: one token per byte, id byte+3.
  auto ids = (*tok)->Encode("\xC3\xA9", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_GE(ids->size(), 2u);
  EXPECT_EQ((*ids)[ids->size() - 2], 0xC3 + 3);
  EXPECT_EQ((*ids)[ids->size() - 1], 0xA9 + 3);
  EXPECT_EQ((*tok)->DecodeToken(0xC3 + 3), "\xC3");
  EXPECT_EQ((*tok)->Decode({1, 0x41 + 3, 0xC3 + 3, 0xA9 + 3}), "A\xC3\xA9");
  // Empty text: no dummy prefix, only BOS.
  auto empty = (*tok)->Encode("", true);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, std::vector<int64_t>{1});
}

TEST(Llama2cTokenizer, InvalidUtf8IsInvalidArgument) {
  SKIP_IF_NO_SHARED(path, "models/aidreams260K/tok512.bin");
  auto tok = LoadLlama2cTokenizer(path, 512);
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const char* bad : {"\xFF", "abc\xC3", "\xC0\xAF", "\xED\xA0\x80", "a\x80z"}) {
    auto ids = (*tok)->Encode(bad, true);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// The heap-based merge must equal llama2.c's literal O(n^2) loop.
TEST(Llama2cTokenizer, MatchesNaiveLlama2cEncode) {
  SKIP_IF_NO_SHARED(small, "models/aidreams260K/tok512.bin");
  SKIP_IF_NO_SHARED(large, "tokenizers/llama2/tokenizer.bin");
  SKIP_IF_NO_SHARED(corpus, "corpora/tinyshakespeare.txt");
  std::vector<std::string> texts;
  {
    std::istringstream in(ReadAll(corpus).substr(0, 20000));
    std::string line;
    while (std::getline(in, line)) texts.push_back(line);
  }
  texts.push_back("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa   \t\t\n\n  bbbb");
  texts.push_back("Ünïcödé — 日本語 テキスト 🦙🦙 <0x41> <unk>");
  std::mt19937 rng(7);
  const std::string alphabet = "ab eE.\n'\xC3\xA9";
  for (int i = 0; i < 50; ++i) {
    std::string s;
    int n = rng() % 40;
    for (int k = 0; k < n; ++k) {
      char c = alphabet[rng() % alphabet.size()];
      if (c == '\xC3' || c == '\xA9') c = 'x';  // keep the text valid UTF-8
      s.push_back(c);
    }
    texts.push_back(s);
  }
  for (const auto& [path, n] : {std::pair<std::string, int>{small, 512}, {large, 32000}}) {
    auto tok = LoadLlama2cTokenizer(path, n);
    ASSERT_TRUE(tok.ok()) << tok.status();
    const NaiveVocab v = ParseVocab(path, n);
    for (const std::string& t : texts) {
      auto got = (*tok)->Encode(t, true);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, NaiveEncode(v, t, true)) << path << " on: " << t;
    }
  }
}

// llama2/tokenizer.bin (the Llama 2 vocabulary in llama2.c format) on llama.cpp's
// SPM test vectors: llama2.c's algorithm is sentencepiece BPE without its
// special cases, so most lines match; the test reports which do not.
TEST(Llama2cTokenizer, Llama2VocabOnLlamaCppVectors) {
  SKIP_IF_NO_SHARED(path, "tokenizers/llama2/tokenizer.bin");
  SKIP_IF_NO_SHARED(inp, "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf.inp");
  SKIP_IF_NO_SHARED(out, "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf.out");
  auto tok = LoadLlama2cTokenizer(path, 32000);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto cases = LoadVocabCases(inp, out);
  ASSERT_EQ(cases.size(), 46u) << "llama.cpp's ggml-vocab-llama-spm vectors";
  int matched = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    auto got = (*tok)->Encode(cases[i].input, false);
    ASSERT_TRUE(got.ok()) << got.status();
    if (*got == cases[i].ids) {
      ++matched;
    } else {
      std::cout << "[ llama2c differs ] case " << i << " input [" << cases[i].input << "]\n  want "
                << Ids(cases[i].ids) << "\n  got  " << Ids(*got) << "\n";
    }
    EXPECT_EQ(Ids(*got), Ids(cases[i].ids)) << "case " << i;
  }
  std::cout << "llama2.c algorithm matches " << matched << " of " << cases.size()
            << " llama.cpp SPM vectors\n";
  // The plain ones must match.
  auto hello = (*tok)->Encode("Hello world", false);
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(*hello, (std::vector<int64_t>{15043, 3186}));
  auto hello2 = (*tok)->Encode(" Hello, world!", false);
  ASSERT_TRUE(hello2.ok());
  EXPECT_EQ(*hello2, (std::vector<int64_t>{29871, 15043, 29892, 3186, 29991}));
  // llama2.c's greedy merge is sentencepiece's BPE: all 46 vectors agree.
  EXPECT_EQ(matched, static_cast<int>(cases.size()));
}

// ---------------------------------------------------------------------------
// SentencePiece.

TEST(SentencePieceTokenizer, ReproducesLlamaCppVectors) {
  SKIP_IF_NO_SHARED(path, "tokenizers/llama2/tokenizer.model");
  SKIP_IF_NO_SHARED(inp, "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf.inp");
  SKIP_IF_NO_SHARED(out, "tokenizers/llamacpp-vocab/ggml-vocab-llama-spm.gguf.out");
  auto tok = LoadTokenizer(path, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "sentencepiece");
  EXPECT_EQ((*tok)->vocab_size(), 32000);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  const auto cases = LoadVocabCases(inp, out);
  ASSERT_EQ(cases.size(), 46u);
  for (size_t i = 0; i < cases.size(); ++i) {
    auto got = (*tok)->Encode(cases[i].input, false);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Ids(*got), Ids(cases[i].ids)) << "case " << i << " input [" << cases[i].input << "]";
    auto with_bos = (*tok)->Encode(cases[i].input, true);
    ASSERT_TRUE(with_bos.ok());
    ASSERT_FALSE(with_bos->empty());
    EXPECT_EQ(with_bos->front(), 1);
  }
}

TEST(SentencePieceTokenizer, DecodeAndPieces) {
  SKIP_IF_NO_SHARED(path, "tokenizers/llama2/tokenizer.model");
  auto tok = LoadSentencePieceTokenizer(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // From the llama.cpp vectors: " Hello, world!" -> 29871 15043 29892 3186 29991.
  EXPECT_EQ((*tok)->Decode({1, 15043, 29892, 3186, 29991}), "Hello, world!");
  EXPECT_EQ((*tok)->DecodeToken(15043), " Hello");
  EXPECT_EQ((*tok)->DecodeToken(13), "\n");  // <0x0A>
  const std::string text = "I dreamed, as I sense the nodes 🦙\n";
  auto ids = (*tok)->Encode(text, true);
  ASSERT_TRUE(ids.ok());
  // The ids of the sentencepiece Python package (0.2.3,
  // SentencePieceProcessor(model_file=...).encode(text)), BOS first; the
  // llama emoji has no piece: its UTF-8 bytes F0 9F A6 99 as <0xXX> pieces (byte + 3).
  EXPECT_EQ(*ids, (std::vector<int64_t>{1, 306, 12561, 287, 29892, 408, 306, 4060, 278, 7573, 29871,
                                        243, 162, 169, 156, 13}));
  EXPECT_EQ((*tok)->Decode(*ids), text);
  EXPECT_EQ((*tok)->Encode("bad \xFF", false).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SentencePieceTokenizer, SameVocabularyAsLlama2cFile) {
  SKIP_IF_NO_SHARED(model, "tokenizers/llama2/tokenizer.model");
  SKIP_IF_NO_SHARED(bin, "tokenizers/llama2/tokenizer.bin");
  auto sp = LoadSentencePieceTokenizer(model);
  auto lc = LoadLlama2cTokenizer(bin, 32000);
  ASSERT_TRUE(sp.ok() && lc.ok());
  // Both decode every ordinary id to the same text (BOS/EOS pieces differ:
  // tokenizer.bin stores them as "\n<s>\n" / "\n</s>\n").
  int differ = 0;
  for (int64_t id = 3; id < 32000; ++id) {
    if ((*sp)->DecodeToken(id) != (*lc)->DecodeToken(id)) ++differ;
  }
  EXPECT_EQ(differ, 0);
}

// The two formats of the Llama 2 vocabulary encode text identically: llama2.c's
// greedy merge is sentencepiece's BPE.
TEST(SentencePieceTokenizer, AgreesWithLlama2cFormatOnText) {
  SKIP_IF_NO_SHARED(model, "tokenizers/llama2/tokenizer.model");
  SKIP_IF_NO_SHARED(bin, "tokenizers/llama2/tokenizer.bin");
  SKIP_IF_NO_SHARED(corpus, "corpora/tinyshakespeare.txt");
  auto sp = LoadSentencePieceTokenizer(model);
  auto lc = LoadLlama2cTokenizer(bin, 32000);
  ASSERT_TRUE(sp.ok() && lc.ok());
  std::istringstream in(ReadAll(corpus).substr(0, 50000));
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    auto a = (*sp)->Encode(line, true);
    auto b = (*lc)->Encode(line, true);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(Ids(*a), Ids(*b)) << line;
    ++lines;
  }
  EXPECT_GT(lines, 1000);
  // A byte piece's name as literal text stays text in both (no merge path
  // reaches "<0x41>"), as does a control piece's.
  for (const char* text : {"<0x41>", "<s> </s> <unk>", "\xF0\x9F\xA6\x99\xE2\x80\x8D"}) {
    auto a = (*sp)->Encode(text, false);
    auto b = (*lc)->Encode(text, false);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(Ids(*a), Ids(*b)) << text;
  }
}

TEST(SentencePieceTokenizer, MissingOrCorruptModel) {
  auto missing = LoadSentencePieceTokenizer("/nonexistent/dir/tokenizer.model");
  ASSERT_FALSE(missing.ok());
  EXPECT_CONTAINS(std::string(missing.status().message()), "/nonexistent/dir/tokenizer.model");
  const std::string dir = testing::MakeTempDir("sinkscope_tok_");
  ASSERT_FALSE(dir.empty());
  RemoveDirOnExit cleanup{dir};
  WriteAll(dir + "/junk.model", "this is not a protobuf \xFF\xFF\xFF\xFF");
  auto junk = LoadTokenizer(dir + "/junk.model", 0);
  ASSERT_FALSE(junk.ok());
  EXPECT_CONTAINS(std::string(junk.status().message()), "junk.model");
}

// ---------------------------------------------------------------------------
// Malformed tokenizer.bin files.

std::string I32(int32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string F32(float v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string Token(float score, const std::string& piece) {
  return F32(score) + I32(static_cast<int32_t>(piece.size())) + piece;
}

class MalformedLlama2c : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("sinkscope_tok_");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  /// Writes `data` and loads it with a vocabulary of `n`; returns the status.
  absl::Status Load(const std::string& name, const std::string& data, int64_t n) {
    WriteAll(dir_ + "/" + name, data);
    return LoadLlama2cTokenizer(dir_ + "/" + name, n).status();
  }
  std::string dir_;
};

// A valid 4-token vocabulary: <unk>, BOS, EOS, "a".
std::string Valid4() {
  return I32(7) + Token(0, "<unk>") + Token(0, "\n<s>\n") + Token(0, "\n</s>\n") + Token(-1, "a");
}

TEST_F(MalformedLlama2c, ValidSmallFileLoads) {
  ASSERT_TRUE(Load("ok.bin", Valid4(), 4).ok());
  auto tok = LoadLlama2cTokenizer(dir_ + "/ok.bin", 4);
  ASSERT_TRUE(tok.ok());
  // No " " piece and no byte fallback ids for it: a clean error, no crash.
  auto ids = (*tok)->Encode("a", true);
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(std::string(ids.status().message()), "byte fallback");
}

TEST_F(MalformedLlama2c, TruncatedHeader) {
  absl::Status st = Load("hdr.bin", "\x07\x00", 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(std::string(st.message()), "hdr.bin");
  EXPECT_CONTAINS(std::string(st.message()), "truncated header");
  EXPECT_CONTAINS(std::string(Load("empty.bin", "", 4).message()), "truncated header");
}

TEST_F(MalformedLlama2c, TruncatedInsideToken) {
  const std::string full = Valid4();
  // Cut inside token 2's score/length header, then inside token 3's bytes.
  const size_t tok2 = 4 + 8 + 5 + 8 + 5;
  absl::Status st = Load("mid.bin", full.substr(0, tok2 + 6), 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(std::string(st.message()), "mid.bin: truncated at token 2 of 4");
  st = Load("bytes.bin", full.substr(0, full.size() - 1), 4);
  EXPECT_CONTAINS(std::string(st.message()), "truncated at token 3 of 4");
  // The model's vocabulary is larger than the file's.
  st = Load("short.bin", full, 5);
  EXPECT_CONTAINS(std::string(st.message()), "truncated at token 4 of 5");
}

TEST_F(MalformedLlama2c, NegativeLength) {
  std::string data = I32(7) + Token(0, "<unk>") + F32(0) + I32(-5) + "xxxxxxxxxxxx";
  absl::Status st = Load("neg.bin", data, 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(std::string(st.message()), "token 1 has negative length -5");
  st = Load("negmax.bin", I32(-1) + Valid4().substr(4), 4);
  EXPECT_CONTAINS(std::string(st.message()), "negative max_token_length");
}

TEST_F(MalformedLlama2c, LengthLargerThanFile) {
  std::string data = I32(1 << 30) + Token(0, "<unk>") + F32(0) + I32(1 << 29) + "abc";
  absl::Status st = Load("huge.bin", data, 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_CONTAINS(std::string(st.message()), "huge.bin");
  EXPECT_CONTAINS(std::string(st.message()), "length 536870912 exceeds the 3 bytes left");
  // A length above the header's max_token_length is also rejected.
  st = Load("max.bin", I32(2) + Valid4().substr(4), 4);
  EXPECT_CONTAINS(std::string(st.message()), "exceeds max_token_length 2");
}

TEST_F(MalformedLlama2c, HugeVocabSizeDoesNotAllocate) {
  absl::Status st = Load("v.bin", Valid4(), int64_t{1} << 30);
  EXPECT_CONTAINS(std::string(st.message()), "truncated at token 4 of 1073741824");
  EXPECT_CONTAINS(std::string(Load("v0.bin", Valid4(), 0).message()), "vocab_size");
}

TEST_F(MalformedLlama2c, EveryTruncationAndCorruptionIsAnError) {
  const std::string full = Valid4();
  for (size_t n = 0; n < full.size(); ++n) {
    absl::Status st = Load("cut.bin", full.substr(0, n), 4);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << "prefix " << n;
  }
  // Random byte corruption: loads or fails cleanly, and a loaded one encodes.
  std::mt19937 rng(1);
  for (int trial = 0; trial < 300; ++trial) {
    std::string data = full;
    data[rng() % data.size()] = static_cast<char>(rng());
    WriteAll(dir_ + "/rand.bin", data);
    auto tok = LoadLlama2cTokenizer(dir_ + "/rand.bin", 4);
    if (tok.ok()) {
      (void)(*tok)->Encode("a a", true);
      (void)(*tok)->Decode({0, 1, 2, 3, 99, -1});
    }
  }
}

TEST(Tokenizer, MissingFileNamesPath) {
  auto st = LoadTokenizer("/nonexistent/sinkscope/tok512.bin", 512).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_CONTAINS(std::string(st.message()), "/nonexistent/sinkscope/tok512.bin");
}

TEST(Tokenizer, IsValidUtf8) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii\n"));
  EXPECT_TRUE(IsValidUtf8("Äpfel 日本 🦙 \xF4\x8F\xBF\xBF"));
  EXPECT_TRUE(IsValidUtf8(std::string_view("a\0b", 3)));
  EXPECT_FALSE(IsValidUtf8("\x80"));              // stray continuation
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\x80"));          // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xF8\x88\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("\xE6\x97\xA5\xE6\x97"));
}

}  // namespace
}  // namespace sinkscope
