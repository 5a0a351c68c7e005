// llama2.c tokenizer.bin: loading, encoding and decoding exactly as llama2.c's
// run.c (`build_tokenizer`, `encode`, `decode`).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {
namespace {

constexpr int32_t kBosId = 1;
constexpr int32_t kEosId = 2;
// Byte fallback: the piece `<0xXX>` of byte b has id b + kByteOffset.
constexpr int32_t kByteOffset = 3;
// llama2.c starts its best-score search at -1e10 (a float) with a strict `>`,
// so merged pieces scoring at or below it (or NaN) are never merged.
constexpr float kMinMergeScore = -1e10f;

/// Reads a whole file; NotFound / InvalidArgument naming `path` on failure.
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    std::string msg = absl::StrCat(path, ": cannot open tokenizer: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
  }
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::InvalidArgumentError(absl::StrCat(path, ": read error"));
  return data;
}

/// Bounds-checked little-endian reader over a byte buffer.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  size_t remaining() const { return data_.size() - pos_; }
  bool ReadI32(int32_t* v) { return ReadRaw(v, sizeof(*v)); }
  bool ReadF32(float* v) { return ReadRaw(v, sizeof(*v)); }
  bool ReadBytes(size_t n, std::string* out) {
    if (remaining() < n) return false;
    out->assign(data_.data() + pos_, n);
    pos_ += n;
    return true;
  }

 private:
  bool ReadRaw(void* dst, size_t n) {
    if (remaining() < n) return false;
    std::memcpy(dst, data_.data() + pos_, n);  // host is little-endian (x86/arm)
    pos_ += n;
    return true;
  }
  std::string_view data_;
  size_t pos_ = 0;
};

/// Returns the byte of a `<0xXX>` piece, or -1.
int ParseBytePiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores,
                   std::string kind = "llama2c")
      : pieces_(std::move(pieces)), scores_(std::move(scores)), kind_(std::move(kind)) {
    lookup_.reserve(pieces_.size());
    decoded_.reserve(pieces_.size());
    for (size_t i = 0; i < pieces_.size(); ++i) {
      // Duplicate pieces: the lowest id wins (llama2.c's bsearch is unspecified).
      lookup_.emplace(pieces_[i], static_cast<int32_t>(i));
      const int b = ParseBytePiece(pieces_[i]);
      decoded_.push_back(b >= 0 ? std::string(1, static_cast<char>(b)) : pieces_[i]);
    }
  }

  // lookup_ holds views into pieces_.
  Llama2cTokenizer(const Llama2cTokenizer&) = delete;
  Llama2cTokenizer& operator=(const Llama2cTokenizer&) = delete;

  absl::StatusOr<std::vector<int64_t>> Encode(std::string_view text, bool add_bos) const override {
    if (!IsValidUtf8(text)) {
      return absl::InvalidArgumentError("llama2c tokenizer: text is not valid UTF-8");
    }
    std::vector<int32_t> tokens;
    tokens.reserve(text.size() + 2);
    if (add_bos) tokens.push_back(kBosId);
    auto push_piece = [&](std::string_view piece) -> absl::Status {
      const int32_t id = Lookup(piece);
      if (id >= 0) {
        tokens.push_back(id);
        return absl::OkStatus();
      }
      for (unsigned char c : piece) {
        const int64_t byte_id = int64_t{c} + kByteOffset;
        if (byte_id >= vocab_size()) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "llama2c tokenizer: no piece for byte 0x%02X and byte fallback id %d is "
              "outside the vocabulary of %d",
              c, byte_id, vocab_size()));
        }
        tokens.push_back(static_cast<int32_t>(byte_id));
      }
      return absl::OkStatus();
    };
    // Dummy prefix, as sentencepiece's add_dummy_prefix.
    if (!text.empty()) {
      absl::Status st = push_piece(" ");
      if (!st.ok()) return st;
    }
    // One piece per UTF-8 code point (the text is valid, so lead bytes delimit).
    for (size_t i = 0; i < text.size();) {
      size_t j = i + 1;
      while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80) ++j;
      absl::Status st = push_piece(text.substr(i, j - i));
      if (!st.ok()) return st;
      i = j;
    }
    Merge(tokens);
    return std::vector<int64_t>(tokens.begin(), tokens.end());
  }

  std::string DecodeToken(int64_t id) const override {
    if (id < 0 || id >= vocab_size()) return "";
    return decoded_[id];
  }

  std::string Decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    int64_t prev = -1;
    for (int64_t id : ids) {
      // BOS / EOS delimit sequences; llama2.c never prints them.
      if (id != kBosId && id != kEosId && id >= 0 && id < vocab_size()) {
        std::string_view piece = pieces_[id];
        // After BOS, sentencepiece strips the leading space (llama2.c PR #89).
        if (prev == kBosId && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
        const int b = ParseBytePiece(piece);
        if (b >= 0) {
          out.push_back(static_cast<char>(b));
        } else {
          out.append(piece);
        }
      }
      prev = id;
    }
    return out;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const override { return kBosId; }
  int64_t eos_id() const override { return kEosId; }
  std::string kind() const override { return kind_; }

 private:
  int32_t Lookup(std::string_view piece) const {
    auto it = lookup_.find(piece);
    return it == lookup_.end() ? -1 : it->second;
  }

  /// Greedy BPE exactly as llama2.c: repeatedly merge the adjacent pair whose
  /// concatenation is a piece with the highest score (leftmost on ties). A
  /// heap with lazy invalidation gives the same result in O(n log n): the
  /// symbols keep their original order, so "leftmost" is the smallest index.
  void Merge(std::vector<int32_t>& tokens) const {
    const int n = static_cast<int>(tokens.size());
    if (n < 2) return;
    struct Symbol {
      int32_t id;
      int prev, next;  // -1 at the ends
      bool alive;
    };
    struct Candidate {
      float score;
      int left, right;
      int32_t left_id, right_id, merged_id;
    };
    auto worse = [](const Candidate& a, const Candidate& b) {
      if (a.score != b.score) return a.score < b.score;
      return a.left > b.left;
    };
    std::vector<Symbol> sym(n);
    for (int i = 0; i < n; ++i) sym[i] = {tokens[i], i - 1, i + 1 < n ? i + 1 : -1, true};
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> heap(worse);
    std::string buf;
    auto consider = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      buf.assign(pieces_[sym[left].id]);
      buf.append(pieces_[sym[right].id]);
      const int32_t id = Lookup(buf);
      if (id < 0 || !(scores_[id] > kMinMergeScore)) return;
      heap.push({scores_[id], left, right, sym[left].id, sym[right].id, id});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      Symbol& l = sym[c.left];
      Symbol& r = sym[c.right];
      if (!l.alive || !r.alive || l.next != c.right || l.id != c.left_id || r.id != c.right_id) {
        continue;  // stale
      }
      l.id = c.merged_id;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = c.left;
      r.alive = false;
      consider(l.prev, c.left);
      consider(c.left, l.next);
    }
    tokens.clear();
    for (int i = 0; i >= 0; i = sym[i].next) tokens.push_back(sym[i].id);
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<std::string> decoded_;                      // byte pieces as their byte
  std::unordered_map<std::string_view, int32_t> lookup_;  // views into pieces_
  std::string kind_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                                int64_t vocab_size) {
  auto fail = [&](const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", problem));
  };
  if (vocab_size <= kEosId || vocab_size > INT32_MAX) {
    return fail(absl::StrCat("invalid vocab_size ", vocab_size,
                             " (need 3..2^31-1: <unk>, BOS and EOS at least)"));
  }
  absl::StatusOr<std::string> data = ReadFile(path);
  if (!data.ok()) return data.status();
  Reader r(*data);
  int32_t max_token_length = 0;
  if (!r.ReadI32(&max_token_length)) {
    return fail(
        absl::StrCat("truncated header: ", data->size(), " bytes, need 4 for max_token_length"));
  }
  if (max_token_length < 0) {
    return fail(absl::StrCat("negative max_token_length ", max_token_length));
  }
  std::vector<std::string> pieces;
  std::vector<float> scores;
  // Each token takes at least 8 bytes: never reserve more than the file holds.
  const size_t cap = std::min<size_t>(vocab_size, r.remaining() / 8 + 1);
  pieces.reserve(cap);
  scores.reserve(cap);
  for (int64_t i = 0; i < vocab_size; ++i) {
    float score = 0;
    int32_t len = 0;
    if (!r.ReadF32(&score) || !r.ReadI32(&len)) {
      return fail(
          absl::StrCat("truncated at token ", i, " of ", vocab_size, " (score/length header)"));
    }
    if (len < 0) return fail(absl::StrCat("token ", i, " has negative length ", len));
    if (len > max_token_length) {
      return fail(absl::StrCat("token ", i, " length ", len, " exceeds max_token_length ",
                               max_token_length));
    }
    std::string piece;
    if (!r.ReadBytes(static_cast<size_t>(len), &piece)) {
      return fail(absl::StrCat("truncated at token ", i, " of ", vocab_size, ": length ", len,
                               " exceeds the ", r.remaining(), " bytes left in the file"));
    }
    pieces.push_back(std::move(piece));
    scores.push_back(score);
  }
  // Trailing bytes are ignored, as llama2.c does, unless they hold further
  // whole pieces: then the file's vocabulary is larger than the model's, and
  // reading only its first vocab_size pieces would give wrong ids.
  int64_t extra = 0;
  for (;;) {
    float score = 0;
    int32_t len = 0;
    std::string piece;
    if (!r.ReadF32(&score) || !r.ReadI32(&len) || len < 0 || len > max_token_length ||
        !r.ReadBytes(static_cast<size_t>(len), &piece)) {
      break;
    }
    ++extra;
  }
  if (extra > 0) {
    return fail(absl::StrCat("the tokenizer holds ", vocab_size + extra,
                             " pieces but the model's vocabulary has ", vocab_size,
                             ": vocabulary mismatch (this tokenizer is not the model's)"));
  }
  return std::unique_ptr<Tokenizer>(new Llama2cTokenizer(std::move(pieces), std::move(scores)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(const std::vector<std::string>& pieces,
                                                            const std::vector<float>& scores,
                                                            int64_t bos_id, int64_t eos_id,
                                                            const std::string& source) {
  auto fail = [&](const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", problem));
  };
  if (pieces.size() != scores.size()) return fail("pieces and scores differ in number");
  if (pieces.size() < 256 + kByteOffset) return fail(absl::StrCat("SPM vocabulary of ", pieces.size(), " pieces has no byte pieces"));
  if (bos_id != kBosId || eos_id != kEosId) {
    return fail(absl::StrCat("SPM vocabulary with BOS ", bos_id, " and EOS ", eos_id,
                             " is not supported (BOS 1, EOS 2)"));
  }
  std::vector<std::string> spaced;
  spaced.reserve(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (i >= kByteOffset && i < 256 + kByteOffset &&
        ParseBytePiece(pieces[i]) != static_cast<int>(i) - kByteOffset) {
      return fail(absl::StrCat("piece ", i, " is \"", pieces[i], "\", expected the byte piece <0x",
                               absl::StrFormat("%02X", static_cast<int>(i) - kByteOffset), ">"));
    }
    // U+2581 is the space marker; llama2.c's pieces hold the space itself.
    std::string p;
    for (size_t k = 0; k < pieces[i].size();) {
      if (pieces[i].compare(k, 3, "\xE2\x96\x81") == 0) {
        p.push_back(' ');
        k += 3;
      } else {
        p.push_back(pieces[i][k++]);
      }
    }
    spaced.push_back(std::move(p));
  }
  return std::unique_ptr<Tokenizer>(new Llama2cTokenizer(std::move(spaced), scores, "spm"));
}

}  // namespace sinkscope
