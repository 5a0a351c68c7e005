// Tokenizers: llama2.c `tokenizer.bin` and SentencePiece `tokenizer.model`.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope {

/// Text <-> token ids.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// Encodes UTF-8 `text`; prepends BOS when `add_bos`. Errors:
  /// InvalidArgument when `text` is not valid UTF-8.
  virtual absl::StatusOr<std::vector<int64_t>> Encode(std::string_view text,
                                                      bool add_bos) const = 0;
  /// The piece of one id, as text (byte pieces decoded to their byte).
  virtual std::string DecodeToken(int64_t id) const = 0;
  /// Decodes a sequence (leading-space handling as the format does).
  virtual std::string Decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual std::string kind() const = 0;  // "llama2c" or "sentencepiece"
};

/// llama2.c tokenizer.bin (layout and encoding in shared/README.md).
/// `vocab_size` is the model's (the file does not store it).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                                int64_t vocab_size);
/// SentencePiece model through libsentencepiece.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);
/// Dispatches on the extension: `.model` SentencePiece, otherwise llama2.c.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path,
                                                         int64_t vocab_size);

/// True when `text` is valid UTF-8.
bool IsValidUtf8(std::string_view text);

}  // namespace sinkscope
