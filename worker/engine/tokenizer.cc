// Tokenizer dispatch and UTF-8 validation.
#include "worker/engine/tokenizer.h"

#include <utf8.h>

#include <cstdint>
#include <string>

#include <sys/stat.h>

#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace sinkscope {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path,
                                                         int64_t vocab_size) {
  if (absl::EndsWith(path, ".model")) return LoadSentencePieceTokenizer(path);
  if (absl::EndsWith(path, ".json")) return LoadTokenizerJson(path);
  if (absl::EndsWith(path, ".gguf")) return LoadGgufTokenizer(path);
  return LoadLlama2cTokenizer(path, vocab_size);
}

std::string FindModelTokenizer(const std::string& model_path) {
  struct stat st;
  if (::stat(model_path.c_str(), &st) != 0) return "";
  if (S_ISDIR(st.st_mode)) {
    for (const char* name : {"/tokenizer.json", "/tokenizer.model"}) {
      const std::string p = model_path + name;
      if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return p;
    }
    return "";
  }
  if (absl::EndsWith(model_path, ".gguf")) {
    // Cheap test for the key; LoadGgufTokenizer does the parsing.
    std::ifstream in(model_path, std::ios::binary);
    std::string head(1 << 20, '\0');
    in.read(head.data(), head.size());
    head.resize(in.gcount());
    if (head.find("tokenizer.ggml.tokens") != std::string::npos) return model_path;
  }
  return "";
}

absl::Status CheckTokenizerVocab(const Tokenizer& tok, int64_t d_vocab, bool allow_padding,
                                 const std::string& what) {
  const int64_t n = tok.vocab_size();
  if (n == d_vocab || (allow_padding && n < d_vocab)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, " has a vocabulary of ", n, " tokens but the model's has ", d_vocab,
      ": vocabulary mismatch (its ids would index the wrong embedding rows)"));
}

bool IsValidUtf8(std::string_view text) {
  // UTF8-CPP (Debian libutfcpp-dev): rejects overlong forms, surrogates,
  // code points above U+10FFFF and truncated sequences.
  return utf8::is_valid(text.begin(), text.end());
}

}  // namespace sinkscope
