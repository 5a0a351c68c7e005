// Tokenizer dispatch and UTF-8 validation.
#include "worker/engine/tokenizer.h"

#include <utf8.h>

#include <cstdint>
#include <string>

#include "absl/strings/match.h"

namespace sinkscope {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path,
                                                         int64_t vocab_size) {
  if (absl::EndsWith(path, ".model")) return LoadSentencePieceTokenizer(path);
  return LoadLlama2cTokenizer(path, vocab_size);
}

bool IsValidUtf8(std::string_view text) {
  // UTF8-CPP (Debian libutfcpp-dev): rejects overlong forms, surrogates,
  // code points above U+10FFFF and truncated sequences.
  return utf8::is_valid(text.begin(), text.end());
}

}  // namespace sinkscope
