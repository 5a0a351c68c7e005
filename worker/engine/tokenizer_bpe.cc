// Byte-level BPE (GPT-2, Llama 3, Qwen2/3) from a Hugging Face tokenizer.json
// or a GGUF vocabulary, and SPM from a GGUF vocabulary.
//
// Encoding follows the `tokenizers` package (and llama.cpp's llm_tokenizer_bpe):
//   1. added tokens are cut out of the text first (leftmost, longest match);
//   2. an optional NFC normalizer (ICU);
//   3. the pre-tokenizer splits each remaining segment with its regexes
//      (PCRE2 with PCRE2_UTF | PCRE2_UCP, so \p{L}, \p{N}, \s are Unicode
//      classes), "Isolated" behaviour: matches and the gaps between them;
//   4. ByteLevel maps every byte of a piece to a printable code point
//      (GPT-2's bytes_to_unicode);
//   5. BPE: the pair of adjacent symbols with the lowest merge rank is merged,
//      leftmost first, until no pair has a rank (`ignore_merges`: a piece
//      that is itself a token is emitted whole).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/gguf.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {

const char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char kQwen2Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t Utf8Len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

/// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
/// other 68 bytes to U+0100.. in byte order. Both directions, as UTF-8.
struct ByteMap {
  std::string to_unicode[256];
  std::unordered_map<std::string, unsigned char> to_byte;
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      AppendUtf8(printable ? static_cast<uint32_t>(b) : next++, &to_unicode[b]);
      to_byte[to_unicode[b]] = static_cast<unsigned char>(b);
    }
  }
};
const ByteMap& Bytes() {
  static const ByteMap* m = new ByteMap;
  return *m;
}

/// One compiled PCRE2 pattern (UTF + UCP), JIT-compiled when available.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern, bool literal,
                                                        const std::string& source) {
    int err = 0;
    PCRE2_SIZE off = 0;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     opts, &err, &off, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return absl::InvalidArgumentError(absl::StrCat(source, ": pre-tokenizer regex /", pattern,
                                                     "/ does not compile at offset ", off, ": ",
                                                     reinterpret_cast<const char*>(msg)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; interpreted otherwise
    auto r = std::unique_ptr<Regex>(new Regex);
    r->code_ = code;
    return r;
  }
  ~Regex() { pcre2_code_free(code_); }
  /// Isolated split: every match and every non-empty gap, in order.
  void Split(std::string_view text, std::vector<std::string_view>* out) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t pos = 0, gap = 0;
    const auto* s = reinterpret_cast<PCRE2_SPTR>(text.data());
    while (pos <= text.size()) {
      int rc = pcre2_match(code_, s, text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: step over one character
        pos = b + (b < text.size() ? Utf8Len(static_cast<unsigned char>(text[b])) : 1);
        continue;
      }
      if (b > gap) out->push_back(text.substr(gap, b - gap));
      out->push_back(text.substr(b, e - b));
      gap = pos = e;
    }
    if (gap < text.size()) out->push_back(text.substr(gap));
    pcre2_match_data_free(md);
  }

 private:
  Regex() = default;
  pcre2_code* code_ = nullptr;
};

struct AddedToken {
  std::string content;
  int32_t id;
  bool lstrip = false, rstrip = false;
};

struct PairHash {
  size_t operator()(const std::pair<int32_t, int32_t>& p) const {
    return std::hash<uint64_t>()((uint64_t(uint32_t(p.first)) << 32) | uint32_t(p.second));
  }
};

class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  /// `tokens[id]` in byte-level form; `merges` as (left, right) strings by rank.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(
      std::vector<std::string> tokens, const std::vector<std::pair<std::string, std::string>>& merges,
      std::vector<std::string> patterns, bool add_prefix_space, bool ignore_merges, bool nfc,
      std::vector<AddedToken> added, int64_t bos, int64_t eos, const std::string& source) {
    std::unique_ptr<ByteLevelBpeTokenizer> t(new ByteLevelBpeTokenizer);
    t->tokens_ = std::move(tokens);
    for (size_t i = 0; i < t->tokens_.size(); ++i) {
      if (!t->tokens_[i].empty()) t->ids_.emplace(t->tokens_[i], static_cast<int32_t>(i));
    }
    for (size_t r = 0; r < merges.size(); ++r) {
      const auto& [a, b] = merges[r];
      auto ia = t->ids_.find(a), ib = t->ids_.find(b), im = t->ids_.find(a + b);
      if (ia == t->ids_.end() || ib == t->ids_.end() || im == t->ids_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": merge ", r, " \"", a, " ", b,
                                                       "\" names a token not in the vocabulary"));
      }
      t->merges_.emplace(std::make_pair(ia->second, ib->second),
                         std::make_pair(static_cast<int32_t>(r), im->second));
    }
    for (const std::string& p : patterns) {
      auto re = Regex::Compile(p, false, source);
      if (!re.ok()) return re.status();
      t->splits_.push_back(*std::move(re));
    }
    t->add_prefix_space_ = add_prefix_space;
    t->ignore_merges_ = ignore_merges;
    t->nfc_ = nfc;
    // Longest first, so the first match at a position is the longest.
    std::sort(added.begin(), added.end(),
              [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    t->added_ = std::move(added);
    t->raw_.assign(t->tokens_.size(), false);
    for (const AddedToken& a : t->added_) {
      if (a.id >= 0 && static_cast<size_t>(a.id) < t->raw_.size()) t->raw_[a.id] = true;
    }
    t->bos_ = bos;
    t->eos_ = eos;
    return std::unique_ptr<Tokenizer>(std::move(t));
  }

  absl::StatusOr<std::vector<int64_t>> Encode(std::string_view text, bool add_bos) const override {
    if (!IsValidUtf8(text)) return absl::InvalidArgumentError("bpe tokenizer: text is not valid UTF-8");
    std::vector<int64_t> out;
    if (add_bos) {
      if (bos_ < 0) return absl::InvalidArgumentError("bpe tokenizer: the vocabulary has no BOS token");
      out.push_back(bos_);
    }
    // 1. Added tokens.
    size_t seg = 0;
    std::vector<std::pair<std::string_view, int32_t>> parts;  // (text, -1) or ("", id)
    size_t i = 0;
    bool strip_next = false;
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      if (!added_.empty()) {
        for (const AddedToken& a : added_) {
          if (!a.content.empty() && text.compare(i, a.content.size(), a.content) == 0) {
            hit = &a;
            break;
          }
        }
      }
      if (hit == nullptr) {
        i += Utf8Len(static_cast<unsigned char>(text[i]));
        continue;
      }
      std::string_view before = text.substr(seg, i - seg);
      if (strip_next) before = LStrip(before);
      if (hit->lstrip) before = RStrip(before);
      if (!before.empty()) parts.emplace_back(before, -1);
      parts.emplace_back(std::string_view(), hit->id);
      strip_next = hit->rstrip;
      i += hit->content.size();
      seg = i;
    }
    std::string_view rest = text.substr(seg);
    if (strip_next) rest = LStrip(rest);
    if (!rest.empty()) parts.emplace_back(rest, -1);
    bool first = true;
    for (const auto& [part, id] : parts) {
      if (id >= 0) {
        out.push_back(id);
      } else {
        EncodeSegment(part, first, &out);
      }
      first = false;
    }
    return out;
  }

  std::string DecodeToken(int64_t id) const override {
    if (id < 0 || id >= vocab_size()) return "";
    if (raw_[id]) return tokens_[id];
    return ToBytes(tokens_[id]);
  }

  std::string Decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    for (int64_t id : ids) out += DecodeToken(id);
    return out;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(tokens_.size()); }
  int64_t bos_id() const override { return bos_; }
  int64_t eos_id() const override { return eos_; }
  std::string kind() const override { return "bpe"; }

 private:
  ByteLevelBpeTokenizer() = default;

  static std::string_view LStrip(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n' || s.front() == '\r')) s.remove_prefix(1);
    return s;
  }
  static std::string_view RStrip(std::string_view s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r')) s.remove_suffix(1);
    return s;
  }

  /// Byte-level text back to bytes; code points outside the map kept as is.
  static std::string ToBytes(const std::string& s) {
    const ByteMap& bm = Bytes();
    std::string out;
    for (size_t i = 0; i < s.size();) {
      const size_t n = std::min(Utf8Len(static_cast<unsigned char>(s[i])), s.size() - i);
      auto it = bm.to_byte.find(s.substr(i, n));
      if (it != bm.to_byte.end()) {
        out.push_back(static_cast<char>(it->second));
      } else {
        out.append(s, i, n);
      }
      i += n;
    }
    return out;
  }

  void EncodeSegment(std::string_view text, bool first, std::vector<int64_t>* out) const {
    std::string owned;
    if (nfc_) {
      UErrorCode status = U_ZERO_ERROR;
      const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(status);
      if (U_SUCCESS(status)) {
        icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), text.size()));
        icu::UnicodeString norm = n->normalize(u, status);
        if (U_SUCCESS(status)) {
          norm.toUTF8String(owned);
          text = owned;
        }
      }
    }
    if (add_prefix_space_ && first && !text.empty() && text[0] != ' ') {
      owned = " " + std::string(text);
      text = owned;
    }
    std::vector<std::string_view> pieces{text}, next;
    for (const auto& re : splits_) {
      next.clear();
      for (std::string_view p : pieces) re->Split(p, &next);
      pieces.swap(next);
    }
    const ByteMap& bm = Bytes();
    std::string mapped;
    for (std::string_view p : pieces) {
      mapped.clear();
      for (unsigned char c : p) mapped += bm.to_unicode[c];
      Bpe(mapped, out);
    }
  }

  /// Lowest rank first, leftmost on ties; a heap with lazy invalidation.
  void Bpe(const std::string& word, std::vector<int64_t>* out) const {
    if (ignore_merges_) {
      auto it = ids_.find(word);
      if (it != ids_.end()) {
        out->push_back(it->second);
        return;
      }
    }
    struct Sym {
      int32_t id;
      int prev, next;
      bool alive;
    };
    std::vector<Sym> sym;
    for (size_t i = 0; i < word.size();) {
      const size_t n = std::min(Utf8Len(static_cast<unsigned char>(word[i])), word.size() - i);
      auto it = ids_.find(word.substr(i, n));
      i += n;
      if (it == ids_.end()) continue;  // no such symbol and no unk: dropped, as `tokenizers`
      const int k = static_cast<int>(sym.size());
      sym.push_back({it->second, k - 1, k + 1, true});
    }
    if (sym.empty()) return;
    sym.back().next = -1;
    struct Cand {
      int32_t rank;
      int left, right;
      int32_t lid, rid, merged;
    };
    auto worse = [](const Cand& a, const Cand& b) {
      return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
    };
    std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
    auto consider = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      auto it = merges_.find({sym[l].id, sym[r].id});
      if (it != merges_.end()) heap.push({it->second.first, l, r, sym[l].id, sym[r].id, it->second.second});
    };
    for (size_t k = 0; k + 1 < sym.size(); ++k) consider(static_cast<int>(k), static_cast<int>(k + 1));
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& l = sym[c.left];
      Sym& r = sym[c.right];
      if (!l.alive || !r.alive || l.next != c.right || l.id != c.lid || r.id != c.rid) continue;
      l.id = c.merged;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = c.left;
      r.alive = false;
      consider(l.prev, c.left);
      consider(c.left, l.next);
    }
    for (int k = 0; k >= 0; k = sym[k].next) out->push_back(sym[k].id);
  }

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> ids_;
  std::unordered_map<std::pair<int32_t, int32_t>, std::pair<int32_t, int32_t>, PairHash> merges_;
  std::vector<std::unique_ptr<Regex>> splits_;
  std::vector<AddedToken> added_;
  std::vector<bool> raw_;  // added tokens: decoded as their content
  bool add_prefix_space_ = false, ignore_merges_ = false, nfc_ = false;
  int64_t bos_ = -1, eos_ = -1;
};

absl::StatusOr<std::string> ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open tokenizer"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// tokenizer_config.json's "bos_token"/"eos_token" (string or {"content"}).
std::string ConfigToken(const nlohmann::json& cfg, const char* key) {
  if (!cfg.contains(key)) return "";
  const nlohmann::json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseTokenizerJson(const std::string& json_text,
                                                              const std::string& config_text,
                                                              const std::string& source) {
  auto fail = [&](const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", problem));
  };
  auto unsupported = [&](const std::string& problem) {
    return absl::UnimplementedError(absl::StrCat(source, ": ", problem));
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    return fail(absl::StrCat("not valid JSON: ", e.what()));
  }
  try {
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) return fail("no \"model\" object");
    const nlohmann::json& m = j["model"];
    const std::string type = m.value("type", std::string("BPE"));
    if (type != "BPE") return unsupported(absl::StrCat("model type ", type, " is not supported (byte-level BPE only)"));
    if (m.contains("dropout") && !m["dropout"].is_null()) return unsupported("BPE dropout is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (m.contains(k) && m[k].is_string() && !m[k].get<std::string>().empty()) {
        return unsupported(absl::StrCat("BPE ", k, " is not supported"));
      }
    }
    if (m.value("byte_fallback", false)) return unsupported("BPE byte_fallback is not supported (byte-level BPE only)");
    const bool ignore_merges = m.value("ignore_merges", false);
    if (!m.contains("vocab") || !m["vocab"].is_object()) return fail("model.vocab is not an object");
    std::vector<std::string> tokens;
    auto place = [&](const std::string& s, int64_t id) -> absl::Status {
      if (id < 0 || id > (int64_t{1} << 24)) return fail(absl::StrCat("token id ", id, " of \"", s, "\" is out of range"));
      if (static_cast<size_t>(id) >= tokens.size()) tokens.resize(id + 1);
      tokens[id] = s;
      return absl::OkStatus();
    };
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
      if (!it.value().is_number_integer()) return fail(absl::StrCat("vocab entry \"", it.key(), "\" is not an integer id"));
      absl::Status st = place(it.key(), it.value().get<int64_t>());
      if (!st.ok()) return st;
    }
    std::vector<std::pair<std::string, std::string>> merges;
    if (m.contains("merges")) {
      if (!m["merges"].is_array()) return fail("model.merges is not an array");
      for (const nlohmann::json& e : m["merges"]) {
        if (e.is_string()) {  // "left right" (tokenizers < 0.20)
          const std::string s = e.get<std::string>();
          const size_t sp = s.find(' ', 1);
          if (sp == std::string::npos) return fail(absl::StrCat("merge \"", s, "\" has no space"));
          merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
          merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
        } else {
          return fail("a merge is neither \"a b\" nor [\"a\", \"b\"]");
        }
      }
    }
    std::vector<AddedToken> added;
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const nlohmann::json& a : j["added_tokens"]) {
        AddedToken t;
        t.content = a.at("content").get<std::string>();
        const int64_t id = a.at("id").get<int64_t>();
        t.lstrip = a.value("lstrip", false);
        t.rstrip = a.value("rstrip", false);
        absl::Status st = place(t.content, id);
        if (!st.ok()) return st;
        t.id = static_cast<int32_t>(id);
        added.push_back(std::move(t));
      }
    }
    bool nfc = false;
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const std::string nt = j["normalizer"].value("type", std::string());
      if (nt == "NFC") {
        nfc = true;
      } else {
        return unsupported(absl::StrCat("normalizer ", nt, " is not supported (none or NFC)"));
      }
    }
    // Pre-tokenizer: Split(Regex|String, Isolated)* then ByteLevel, or ByteLevel alone.
    std::vector<std::string> patterns;
    bool byte_level = false, add_prefix_space = false;
    std::vector<nlohmann::json> stages;
    if (j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object()) {
      const nlohmann::json& p = j["pre_tokenizer"];
      if (p.value("type", std::string()) == "Sequence") {
        for (const nlohmann::json& s : p.at("pretokenizers")) stages.push_back(s);
      } else {
        stages.push_back(p);
      }
    }
    for (const nlohmann::json& s : stages) {
      const std::string st = s.value("type", std::string());
      if (byte_level) return unsupported(absl::StrCat("pre-tokenizer ", st, " after ByteLevel is not supported"));
      if (st == "Split") {
        if (s.value("behavior", std::string()) != "Isolated" || s.value("invert", false)) {
          return unsupported("Split pre-tokenizer: only behavior Isolated without invert is supported");
        }
        const nlohmann::json& pat = s.at("pattern");
        if (pat.contains("Regex")) {
          patterns.push_back(pat["Regex"].get<std::string>());
        } else if (pat.contains("String")) {
          // A literal: quoted for PCRE2.
          patterns.push_back(absl::StrCat("\\Q", pat["String"].get<std::string>(), "\\E"));
        } else {
          return fail("Split pattern is neither Regex nor String");
        }
      } else if (st == "ByteLevel") {
        byte_level = true;
        add_prefix_space = s.value("add_prefix_space", false);
        if (s.value("use_regex", true)) patterns.push_back(kGpt2Pattern);
      } else {
        return unsupported(absl::StrCat("pre-tokenizer ", st.empty() ? "(none)" : st,
                                        " is not supported (Split, ByteLevel, Sequence)"));
      }
    }
    if (!byte_level) return unsupported("not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer)");
    // BOS / EOS: tokenizer_config.json, else the post-processor's template.
    std::unordered_map<std::string, int64_t> by_content;
    for (const AddedToken& a : added) by_content[a.content] = a.id;
    int64_t bos = -1, eos = -1;
    if (!config_text.empty()) {
      nlohmann::json cfg = nlohmann::json::parse(config_text, nullptr, false);
      if (cfg.is_object()) {
        auto b = by_content.find(ConfigToken(cfg, "bos_token"));
        if (b != by_content.end()) bos = b->second;
        auto e = by_content.find(ConfigToken(cfg, "eos_token"));
        if (e != by_content.end()) eos = e->second;
      }
    }
    if (bos < 0 && j.contains("post_processor") && j["post_processor"].is_object()) {
      const nlohmann::json& pp = j["post_processor"];
      if (pp.value("type", std::string()) == "TemplateProcessing" && pp.contains("single") &&
          pp["single"].is_array() && !pp["single"].empty() && pp["single"][0].contains("SpecialToken")) {
        auto b = by_content.find(pp["single"][0]["SpecialToken"].value("id", std::string()));
        if (b != by_content.end()) bos = b->second;
      }
    }
    return ByteLevelBpeTokenizer::Create(std::move(tokens), merges, std::move(patterns),
                                         add_prefix_space, ignore_merges, nfc, std::move(added), bos,
                                         eos, source);
  } catch (const nlohmann::json::exception& e) {
    return fail(absl::StrCat("malformed tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::string& path) {
  absl::StatusOr<std::string> text = ReadWhole(path);
  if (!text.ok()) return text.status();
  std::string config;
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  if (absl::StatusOr<std::string> c = ReadWhole(dir + "/tokenizer_config.json"); c.ok()) config = *c;
  return ParseTokenizerJson(*text, config, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromGgufVocab(const GgufVocab& v,
                                                                  const std::string& source) {
  auto unsupported = [&](const std::string& problem) {
    return absl::UnimplementedError(absl::StrCat(source, ": ", problem));
  };
  if (v.model == "gpt2") {
    std::vector<std::string> patterns;
    if (v.pre == "gpt-2" || v.pre.empty()) {
      patterns.push_back(kGpt2Pattern);
    } else if (v.pre == "llama-bpe" || v.pre == "llama3") {
      patterns.push_back(kLlama3Pattern);
    } else if (v.pre == "qwen2") {
      patterns.push_back(kQwen2Pattern);
    } else {
      return unsupported(absl::StrCat("tokenizer.ggml.pre \"", v.pre,
                                      "\" is not supported (gpt-2, llama-bpe, qwen2)"));
    }
    std::vector<std::pair<std::string, std::string>> merges;
    for (size_t r = 0; r < v.merges.size(); ++r) {
      const size_t sp = v.merges[r].find(' ', 1);
      if (sp == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": tokenizer.ggml.merges[", r, "] \"",
                                                       v.merges[r], "\" has no space"));
      }
      merges.emplace_back(v.merges[r].substr(0, sp), v.merges[r].substr(sp + 1));
    }
    // User-defined tokens (type 4) are matched in text, as llama.cpp does;
    // control tokens (type 3) only as ids (llama.cpp's parse_special = false).
    std::vector<AddedToken> added;
    for (size_t i = 0; i < v.token_types.size(); ++i) {
      if (v.token_types[i] == 4) added.push_back({v.tokens[i], static_cast<int32_t>(i)});
    }
    return ByteLevelBpeTokenizer::Create(v.tokens, merges, std::move(patterns), false,
                                         v.pre == "llama-bpe" || v.pre == "llama3", false,
                                         std::move(added), v.bos_id, v.eos_id, source);
  }
  if (v.model == "llama") {
    if (v.scores.size() != v.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": SPM vocabulary needs tokenizer.ggml.scores"));
    }
    if (!v.add_space_prefix) return unsupported("SPM without add_space_prefix is not supported");
    return MakeSpmTokenizer(v.tokens, v.scores, v.bos_id, v.eos_id, source);
  }
  return unsupported(absl::StrCat("tokenizer.ggml.model \"", v.model, "\" is not supported (gpt2, llama)"));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::string& path) {
  absl::StatusOr<GgufFile> f = ReadGgufFile(path);
  if (!f.ok()) return f.status();
  absl::StatusOr<GgufVocab> v = ReadGgufVocab(*f, path);
  if (!v.ok()) return v.status();
  return TokenizerFromGgufVocab(*v, path);
}

}  // namespace sinkscope
