// Tokenizers: llama2.c `tokenizer.bin`, SentencePiece `tokenizer.model`,
// byte-level BPE `tokenizer.json` (Hugging Face `tokenizers`) and GGUF
// vocabularies (byte-level BPE or SPM).
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
  virtual std::string kind() const = 0;  // "llama2c", "sentencepiece", "bpe", "spm"
};

struct GgufVocab;

/// GPT-2, Llama 3 and Qwen2 pre-tokenizer regexes (as in their tokenizer.json
/// and llama.cpp's llama-vocab.cpp), for PCRE2 with UTF + UCP.
extern const char kGpt2Pattern[];
extern const char kLlama3Pattern[];
extern const char kQwen2Pattern[];

/// llama2.c tokenizer.bin (layout and encoding in shared/README.md).
/// `vocab_size` is the model's (the file does not store it).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::string& path,
                                                                int64_t vocab_size);
/// SentencePiece model through libsentencepiece.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);
/// Byte-level BPE from a Hugging Face tokenizer.json (`json_text`; model BPE;
/// pre-tokenizer ByteLevel, or Sequence of Split(Regex, Isolated) + ByteLevel;
/// normalizer none or NFC; merges as "a b" or ["a", "b"]; added tokens cut
/// out of the text first, as `tokenizers` does). BOS/EOS from the optional
/// tokenizer_config.json text `config_text`, else the post-processor
/// template. Errors name `source`: InvalidArgument for malformed JSON, ids or
/// merges naming unknown tokens; Unimplemented for other models, normalizers
/// or pre-tokenizers, dropout, byte_fallback.
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseTokenizerJson(const std::string& json_text,
                                                              const std::string& config_text,
                                                              const std::string& source);
/// Reads `path` (and tokenizer_config.json beside it, when present).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::string& path);
/// A tokenizer from a GGUF vocabulary: tokenizer.ggml.model "gpt2" (byte-level
/// BPE; pre "gpt-2", "llama-bpe", "qwen2"; user-defined tokens matched in text,
/// control tokens only as ids, as llama.cpp with parse_special off) or "llama"
/// (SPM: scores, byte fallback `<0xXX>` at ids 3..258, dummy prefix).
absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromGgufVocab(const GgufVocab& vocab,
                                                                  const std::string& source);
/// Reads the vocabulary of a GGUF file (a vocab-only file or a checkpoint).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::string& path);
/// SPM (sentencepiece BPE, as llama.cpp's llm_tokenizer_spm and llama2.c) from
/// pieces with U+2581 for spaces and their scores. Byte pieces `<0xXX>` must
/// be ids 3..258, BOS 1, EOS 2 (InvalidArgument naming `source` otherwise).
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(const std::vector<std::string>& pieces,
                                                            const std::vector<float>& scores,
                                                            int64_t bos_id, int64_t eos_id,
                                                            const std::string& source);
/// Dispatches on the path: `.model` SentencePiece, `.json` tokenizer.json,
/// `.gguf` GGUF vocabulary, otherwise llama2.c (`vocab_size` is the model's).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path,
                                                         int64_t vocab_size);

/// The tokenizer a checkpoint brings with it: `tokenizer.json`, then
/// `tokenizer.model` in a HF directory, or the .gguf file itself when it
/// holds `tokenizer.ggml.tokens`; "" when none.
std::string FindModelTokenizer(const std::string& model_path);

/// Checks that `tok`'s vocabulary fits a model with `d_vocab` embedding rows:
/// equal sizes, or (`allow_padding`: the model's own tokenizer) a model with
/// padded rows beyond the tokenizer's ids. InvalidArgument naming both sizes
/// and `what` (e.g. "corpus tinyshakespeare's tokenizer") otherwise.
absl::Status CheckTokenizerVocab(const Tokenizer& tok, int64_t d_vocab, bool allow_padding,
                                 const std::string& what);

/// True when `text` is valid UTF-8.
bool IsValidUtf8(std::string_view text);

}  // namespace sinkscope
