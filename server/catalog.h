// Model catalog: the only models a job may name. Clients name a model; the
// server resolves it to paths it trusts, so a client can never make it open
// an arbitrary file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// One catalog model, paths absolute.
struct CatalogEntry {
  std::string name;
  std::string format;          // "llama2c", "hf" or "gguf"
  std::string path;            // checkpoint file (llama2c) or directory (hf)
  std::string tokenizer_path;  // "" = none
  /// Other tokenizer files (absolute, canonical) the catalog declares this
  /// model's embedding was trained with: a corpus that brings one of them
  /// may be read for this model when it has no tokenizer of its own.
  std::vector<std::string> compatible_tokenizers;
  std::string default_dtype = "float32";
  std::string description;
  /// Shape read from the checkpoint header / config.json; 0 when unknown.
  int64_t vocab_size = 0, n_ctx = 0, n_layers = 0, d_model = 0, n_heads = 0;
  /// FFN width, KV heads (n_heads without GQA), head dim (d_model / n_heads
  /// unless given); 0 when unknown. Used for hook shapes (activations jobs).
  int64_t d_ffn = 0, n_kv_heads = 0, d_head = 0;
  /// False when the checkpoint could not be read at load time (jobs naming
  /// the model are refused with FAILED_PRECONDITION).
  bool available = false;
  std::string unavailable_reason;

  /// Public view of the entry (no paths).
  v1::ModelInfo ToModelInfo() const;
};

/// One catalog corpus (text for perplexity and intervention jobs), path absolute.
struct CorpusEntry {
  std::string name;
  std::string path;            // UTF-8 text file
  std::string tokenizer_path;  // "" = none; for models that declare it compatible
  std::string description;
  int64_t size_bytes = 0;
  /// False when the file could not be read or is empty at load time (jobs
  /// naming it are refused with FAILED_PRECONDITION).
  bool available = false;
  std::string unavailable_reason;

  /// Public view of the entry (no paths).
  v1::CorpusInfo ToCorpusInfo() const;
};

/// An immutable set of models and corpora, by name.
class ModelCatalog {
 public:
  /// Reads a catalog JSON file: {"models": [{name, format, path, tokenizer?,
  /// default_dtype?, description?}, ...], "corpora": [{name, path,
  /// tokenizer?, description?}, ...]} (a bare array of models is accepted
  /// too; "corpora" is optional). Relative paths are resolved against the
  /// file's directory. Only a file that cannot be read or parsed is an
  /// error: an entry without a usable or with a duplicate name is left out
  /// (warnings()); an unknown format or dtype, a missing path, or a
  /// checkpoint, tokenizer or corpus that cannot be read marks that entry
  /// unavailable with the reason, and the rest are served.
  static absl::StatusOr<ModelCatalog> LoadFile(const std::string& path);

  /// The entry named `name`, or nullptr.
  const CatalogEntry* Find(const std::string& name) const;
  /// All entries, sorted by name.
  const std::vector<CatalogEntry>& entries() const { return entries_; }
  /// The corpus named `name`, or nullptr.
  const CorpusEntry* FindCorpus(const std::string& name) const;
  /// All corpora, sorted by name.
  const std::vector<CorpusEntry>& corpora() const { return corpora_; }
  /// Problems of single entries found at load (entries left out for want of
  /// a usable name, malformed ones listed unavailable), for the server log.
  const std::vector<std::string>& warnings() const { return warnings_; }

  /// This catalog plus the training checkpoints of one user (issue 26):
  /// every `user_runs_dir`/RUN/step-N/ that holds config.json and
  /// trainer_state.json (a complete checkpoint) becomes a model named
  /// RUN@N, format hf, with RUN/tokenizer.json (or .model, .bin: the
  /// tokenizer the run read its corpus with) as its tokenizer when that exists. A name the catalog already has keeps its catalog entry.
  ModelCatalog WithRunCheckpoints(const std::string& user_runs_dir) const;

 private:
  std::vector<std::string> warnings_;
  std::vector<CatalogEntry> entries_;
  std::vector<CorpusEntry> corpora_;
};

/// The models a comparison names by `name`: "RUN@*" stands for every entry
/// named RUN@STEP (STEP decimal digits) in step order (none when no
/// checkpoint matches); any other name for itself.
std::vector<std::string> ExpandCheckpoints(const ModelCatalog& catalog, const std::string& name);

/// OK when corpus `corpus` can be read for `model`: through the model's own
/// tokenizer, or (a model without one) through the corpus's tokenizer when
/// the model lists it in compatible_tokenizers. InvalidArgument naming the
/// model and the corpus's tokenizer (file name only) otherwise: read through
/// another model's pieces, the ids would be wrong even when the vocabulary
/// sizes agree.
absl::Status CheckCorpusTokenizer(const CatalogEntry& model, const CorpusEntry& corpus);

/// The catalog corpus a request names (perplexity / intervention jobs), or
/// "" when it names none.
std::string CorpusNameOf(const v1::JobRequest& request);

/// "float32" | "bfloat16" | "float16" (and fp32/bf16/fp16) -> canonical name.
absl::StatusOr<std::string> CanonicalDtype(const std::string& name);
/// Canonical dtype name <-> proto enum.
v1::Dtype DtypeToProto(const std::string& canonical);
/// "" for DTYPE_UNSPECIFIED, InvalidArgument for an unknown value.
absl::StatusOr<std::string> DtypeFromProto(int dtype);

}  // namespace server
}  // namespace sinkscope
