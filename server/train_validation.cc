#include "server/train_validation.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "common/status_macros.h"
#include "common/train_recipe.h"
#include "common/train_recipe_proto.h"

namespace sinkscope {
namespace server {
namespace {


/// config.json keys a training architecture may hold: what the family table
/// reads for the families the trainer writes (llama, qwen3, olmo2, gemma2,
/// mistral), the bookkeeping keys transformers writes, and sinkscope_* keys
/// (ParseHfConfig refuses unknown ones).
const std::set<std::string>& KnownConfigKeys() {
  static const std::set<std::string> kKeys = {
      "model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
      "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
      "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling",
      "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act",
      "hidden_activation", "attention_bias", "mlp_bias", "attention_dropout", "initializer_range",
      "torch_dtype", "dtype", "transformers_version", "use_cache", "sliding_window",
      "use_sliding_window", "max_window_layers", "layer_types", "query_pre_attn_scalar",
      "attn_logit_softcapping", "final_logit_softcapping", "sliding_window_pattern",
      "pretraining_tp"};
  return kKeys;
}




/// Upper bounds of a trainable shape (far above what a worker could train).
constexpr int64_t kMaxDim = 1 << 16, kMaxLayers = 1024, kMaxHeads = 1024, kMaxFfn = 1 << 18;

absl::Status CheckTrainShape(const ModelConfig& c) {
  if (absl::Status s = c.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("train.config_json: ", s.message()));
  }
  auto over = [](const char* what, int64_t v, int64_t max) {
    return absl::InvalidArgumentError(
        absl::StrCat("train.config_json: ", what, " = ", v, " is over the limit of ", max));
  };
  if (c.d_model > kMaxDim) return over("hidden_size", c.d_model, kMaxDim);
  if (c.n_layers > kMaxLayers) return over("num_hidden_layers", c.n_layers, kMaxLayers);
  if (c.n_heads > kMaxHeads) return over("num_attention_heads", c.n_heads, kMaxHeads);
  if (c.d_ffn > kMaxFfn) return over("intermediate_size", c.d_ffn, kMaxFfn);
  return absl::OkStatus();
}

}  // namespace

std::string UserDirName(const std::string& user) {
  bool plain = !user.empty() && user != "." && user != "..";
  for (char c : user) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == '@')) {
      plain = false;
    }
  }
  if (plain) return user;
  static const char kHex[] = "0123456789abcdef";
  std::string out = "~";
  for (unsigned char c : user) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::string RunDir(const std::string& runs_dir, const std::string& user, const std::string& run) {
  return absl::StrCat(runs_dir, "/", UserDirName(user), "/", run);
}

absl::Status CheckRunName(const std::string& run) {
  bool ok = !run.empty() && run.size() <= 64 && std::isalnum(static_cast<unsigned char>(run[0]));
  for (char c : run) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) ok = false;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "train.run_name \"", run.substr(0, 80), "\" is not a run name: 1 to 64 characters of ",
      "letters, digits, . _ -, starting with a letter or digit (its checkpoints are models RUN@STEP)"));
}

absl::StatusOr<ModelConfig> TrainModelConfig(const v1::JobRequest& request, const ModelCatalog& catalog) {
  const v1::TrainRequest& t = request.train();
  if (!request.model().empty()) {
    const CatalogEntry* entry = catalog.Find(request.model());
    if (entry == nullptr) {
      return absl::NotFoundError(absl::StrCat("model \"", request.model().substr(0, 128),
                                              "\" (the run's starting weights) is not in the catalog; see ListModels"));
    }
    if (entry->format != "hf") {
      return absl::InvalidArgumentError(absl::StrCat(
          "train: model ", entry->name, " is a ", entry->format,
          " checkpoint; a run starts from a Hugging Face directory (format hf) or from config_json"));
    }
    std::ifstream in(entry->path + "/config.json");
    std::stringstream text;
    text << in.rdbuf();
    absl::StatusOr<ModelConfig> c = ParseHfConfig(text.str(), entry->name + " config.json");
    if (!c.ok()) return absl::FailedPreconditionError(absl::StrCat("train: model ", entry->name, ": its config.json cannot be read"));
    return c;
  }
  nlohmann::json j = nlohmann::json::parse(t.config_json(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("train.config_json must be a JSON object (HF config.json keys)");
  }
  for (const auto& item : j.items()) {
    if (KnownConfigKeys().count(item.key()) || absl::StartsWith(item.key(), "sinkscope_")) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        "train.config_json: unknown key \"", item.key().substr(0, 80), "\" (known: ",
        absl::StrJoin(KnownConfigKeys(), ", "), ", sinkscope_*)"));
  }
  absl::StatusOr<ModelConfig> c = ParseHfConfig(t.config_json(), "train.config_json");
  if (!c.ok()) return absl::InvalidArgumentError(c.status().message());
  return c;
}

absl::StatusOr<const CatalogEntry*> TrainTokenizer(const v1::JobRequest& request,
                                                   const ModelCatalog& catalog) {
  const std::string& named = request.train().tokenizer();
  if (named.empty()) {
    const CatalogEntry* start = request.model().empty() ? nullptr : catalog.Find(request.model());
    return start != nullptr && !start->tokenizer_path.empty() ? start : nullptr;
  }
  const CatalogEntry* e = catalog.Find(named);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("train.tokenizer: model \"", named.substr(0, 128),
                                            "\" is not in the catalog; see ListModels"));
  }
  if (e->tokenizer_path.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("train.tokenizer: model ", e->name, " has no tokenizer"));
  }
  if (absl::EndsWith(e->tokenizer_path, ".gguf")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train.tokenizer: model ", e->name, "'s vocabulary lives inside its GGUF file, which a run "
        "cannot keep a copy of; name a model with a tokenizer.json, tokenizer.model or llama2c "
        "tokenizer file"));
  }
  return e;
}

absl::Status ValidateTrainRequest(const v1::JobRequest& request, const ModelCatalog& catalog,
                                  const RequestLimits& limits, const std::string& owner) {
  const v1::TrainRequest& t = request.train();
  if (limits.runs_dir.empty()) {
    return absl::FailedPreconditionError("this server has no runs directory: training is off");
  }
  if (request.sequences_size() > 0) {
    return absl::InvalidArgumentError("train reads a catalog corpus (train.corpus): give no sequences");
  }
  if (request.dtype() != v1::DTYPE_UNSPECIFIED && request.dtype() != v1::DTYPE_FLOAT32) {
    return absl::InvalidArgumentError("train: the trainer runs in float32 only (dtype)");
  }
  RETURN_IF_ERROR(CheckRunName(t.run_name()));
  if (request.model().empty() == t.config_json().empty()) {
    return absl::InvalidArgumentError(
        "train: give exactly one of config_json (a fresh model) and model (a catalog model to start from)");
  }
  if (!request.model().empty()) {
    const CatalogEntry* entry = catalog.Find(request.model());
    if (entry != nullptr && !entry->available) {
      return absl::FailedPreconditionError(absl::StrCat("model ", entry->name, " is not available: ",
                                                        entry->unavailable_reason));
    }
  }
  ASSIGN_OR_RETURN(ModelConfig config, TrainModelConfig(request, catalog));
  RETURN_IF_ERROR(CheckTrainShape(config));
  const TrainRecipe r = TrainRecipeFromProto(t.recipe());
  RETURN_IF_ERROR(CheckTrainRecipeFields(r, config, "train.recipe."));
  if (t.has_log_every() && t.log_every() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("train.log_every must be >= 1, got ", t.log_every()));
  }
  if (t.has_profile_every() && t.profile_every() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("train.profile_every must be >= 0, got ", t.profile_every()));
  }
  if (t.has_profile()) {
    const v1::ProfileRequest& p = t.profile();
    if (!p.eval().corpus().empty() || p.compare_models_size() > 0) {
      return absl::InvalidArgumentError(
          "train.profile: the run profiles its own checkpoints on its held-out split: give no "
          "eval.corpus and no compare_models");
    }
    if (p.eval().has_chunk_length() && (p.eval().chunk_length() < 2 || p.eval().chunk_length() > config.n_ctx)) {
      return absl::InvalidArgumentError(absl::StrCat("train.profile.eval.chunk_length must be in 2..",
                                                     config.n_ctx, ", got ", p.eval().chunk_length()));
    }
    if (p.eval().has_token_budget() && p.eval().token_budget() < 2) {
      return absl::InvalidArgumentError("train.profile.eval.token_budget must be >= 2");
    }
    if (p.has_sink_window() && (p.sink_window() < 2 || p.sink_window() > config.n_ctx)) {
      return absl::InvalidArgumentError(absl::StrCat("train.profile.sink_window must be in 2..",
                                                     config.n_ctx, ", got ", p.sink_window()));
    }
    if (p.has_epsilon() && !(p.epsilon() > 0 && p.epsilon() < 1)) {
      return absl::InvalidArgumentError("train.profile.epsilon must be in (0, 1)");
    }
    for (int32_t l : p.sink_layers()) {
      if (l < 0 || l >= config.n_layers) {
        return absl::InvalidArgumentError(absl::StrCat("train.profile.sink_layers: layer ", l,
                                                       " is not in 0..", config.n_layers - 1));
      }
    }
    RETURN_IF_ERROR(ValidateScanRequest(p.thresholds(), "train.profile.thresholds"));
  }
  if (t.profile_every() > 0 && !(r.heldout_fraction > 0)) {
    return absl::InvalidArgumentError(
        "train.profile_every: the run profiles itself on its held-out split; set heldout_fraction > 0");
  }
  // Budget: tokens trained, per user.
  int64_t limit = limits.max_train_tokens;
  if (auto it = limits.user_max_train_tokens.find(owner); it != limits.user_max_train_tokens.end()) {
    limit = it->second;
  }
  const double tokens = static_cast<double>(r.steps) * r.batch_size * r.seq_len;
  if (tokens > static_cast<double>(limit)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "train: steps x batch_size x seq_len = ", r.steps, " x ", r.batch_size, " x ", r.seq_len,
        " = ", static_cast<int64_t>(tokens), " tokens is over this server's limit for user ", owner,
        " of ", limit, " tokens (max_train_tokens)"));
  }
  // The tokenizer that reads the corpus: its ids must index the embedding.
  ASSIGN_OR_RETURN(const CatalogEntry* tokenizer, TrainTokenizer(request, catalog));
  if (tokenizer == nullptr && config.d_vocab != 256 && config.d_vocab != 257) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train: vocab_size = ", config.d_vocab, ", but the corpus is read byte-level (token id = byte): ",
        "vocab_size must be 256, or 257 with BOS 256; or name a catalog model whose tokenizer reads "
        "it (train.tokenizer, --tokenizer)"));
  }
  if (tokenizer != nullptr && tokenizer->vocab_size > config.d_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train: vocab_size = ", config.d_vocab, " is smaller than the vocabulary of ", tokenizer->name,
        "'s tokenizer (", tokenizer->vocab_size, "): its ids would fall outside the embedding"));
  }
  if (t.corpus().empty()) return absl::InvalidArgumentError("train.corpus is not set; see ListModels corpora");
  const CorpusEntry* corpus = catalog.FindCorpus(t.corpus());
  if (corpus == nullptr) {
    return absl::NotFoundError(absl::StrCat("corpus \"", t.corpus().substr(0, 128),
                                            "\" is not in the catalog; see ListModels"));
  }
  if (!corpus->available) {
    return absl::FailedPreconditionError(absl::StrCat("corpus ", corpus->name, " is not available: ",
                                                      corpus->unavailable_reason));
  }
  // Byte-level, its tokens are its bytes; through a tokenizer there are no
  // more tokens than bytes, so these checks are necessary conditions (the
  // worker checks the tokenised stream again before the first update).
  const int64_t n = corpus->size_bytes;
  const int64_t held = static_cast<int64_t>(std::floor(static_cast<double>(n) * r.heldout_fraction));
  const int64_t train = n - held;
  const int64_t need = r.bos_id >= 0 ? r.seq_len : r.seq_len + 1;
  if (static_cast<double>(train) < static_cast<double>(need) * r.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train: corpus ", corpus->name, " has ", n, " bytes, its training split ", train,
        ", fewer than one batch needs (batch_size ", r.batch_size, " x ", need, " tokens per sequence)"));
  }
  if (r.eval_every > 0 && held < need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train: corpus ", corpus->name, ": the held-out split has ", held, " tokens (heldout_fraction ",
        r.heldout_fraction, "), fewer than one sequence needs (", need,
        "); raise train.recipe.heldout_fraction or set eval_every 0"));
  }
  // A run name is one run per user: its directory must not exist yet.
  struct stat st;
  if (stat(RunDir(limits.runs_dir, owner, t.run_name()).c_str(), &st) == 0) {
    return absl::AlreadyExistsError(absl::StrCat(
        "train: you already have a run named ", t.run_name(), " (its checkpoints are ",
        t.run_name(), "@STEP); choose another run_name"));
  }
  return absl::OkStatus();
}

WorkEstimate EstimateTrainWork(const v1::JobRequest& request, const ModelCatalog& catalog) {
  WorkEstimate w;
  absl::StatusOr<ModelConfig> c = TrainModelConfig(request, catalog);
  const int64_t L = c.ok() && c->n_layers > 0 ? c->n_layers : 1;
  const TrainRecipe r = TrainRecipeFromProto(request.train().recipe());
  w.tokens = 3 * std::max<int64_t>(0, r.steps) * std::max<int64_t>(0, r.batch_size) *
             std::max<int64_t>(0, r.seq_len);
  w.token_layers = w.tokens * L;
  w.basis = absl::StrCat("3 passes (forward, backward) x ", r.steps, " steps x ", r.batch_size,
                         " x ", r.seq_len, " tokens x ", L, " layers");
  return w;
}

int64_t EstimateTrainBytes(const ModelConfig& c, const v1::TrainRecipe& recipe) {
  const TrainRecipe r = TrainRecipeFromProto(recipe);
  const double params = static_cast<double>(ParameterCount(c));
  const double bt = static_cast<double>(std::max<int64_t>(1, r.batch_size)) *
                    static_cast<double>(std::max<int64_t>(1, r.seq_len));
  const double per_token = static_cast<double>(c.n_layers) *
                               (12.0 * c.d_model + 4.0 * c.d_ffn + 2.0 * c.n_heads * r.seq_len) +
                           3.0 * c.d_vocab;
  const double bytes = 4.0 * (4.0 * params + bt * per_token);
  return bytes > 9e18 ? INT64_MAX : static_cast<int64_t>(bytes);
}

}  // namespace server
}  // namespace sinkscope
