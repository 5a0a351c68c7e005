// The train job (issue 26) at the API edge: its checks before any work, its
// work estimate, and where its runs live (<runs_dir>/<user>/<run>/step-N/).
// No libtorch: the recipe checks mirror worker/engine/train.h's
// ValidateTrainRecipe (the worker checks again with the engine's own).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "server/catalog.h"
#include "server/validation.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// The directory name of `user` under the runs directory: the name itself
/// when it is made of [A-Za-z0-9._@-] (not "." or ".."), else "~" + its hex
/// bytes (auth "none" lets a caller name itself with any printable ASCII).
std::string UserDirName(const std::string& user);

/// <runs_dir>/<UserDirName(user)>/<run>.
std::string RunDir(const std::string& runs_dir, const std::string& user, const std::string& run);

/// OK for a run name of 1..64 characters of [A-Za-z0-9._-] starting with a
/// letter or digit; InvalidArgument naming the rule otherwise.
absl::Status CheckRunName(const std::string& run);

/// The architecture a train request trains: its config_json parsed (keys
/// other than the family table's and sinkscope_* ones refused, shapes
/// checked), or the catalog model it starts from (JobRequest.model, read
/// from its config.json). Errors: INVALID_ARGUMENT naming the key / field.
absl::StatusOr<ModelConfig> TrainModelConfig(const v1::JobRequest& request, const ModelCatalog& catalog);

/// The catalog model whose tokenizer reads a train job's corpus:
/// train.tokenizer, else the starting model when it has a tokenizer, else
/// nullptr (bytes: token id = byte). Errors: NOT_FOUND (not in the catalog),
/// FAILED_PRECONDITION (it has no tokenizer), INVALID_ARGUMENT (a vocabulary
/// inside a GGUF file, which the run cannot keep a copy of).
absl::StatusOr<const CatalogEntry*> TrainTokenizer(const v1::JobRequest& request,
                                                   const ModelCatalog& catalog);

/// Checks a train job of `owner` before any work (`catalog`: the catalog as
/// the owner sees it, with their own checkpoints). Errors:
///  - INVALID_ARGUMENT: sequences given, a dtype other than float32, a bad
///    run name, neither or both of config_json and model, an unknown config
///    key, a config the engine refuses (impossible shapes), a vocabulary that
///    is not byte-level (256, or 257 with BOS 256) when no tokenizer reads the
///    corpus, or smaller than the tokenizer's, a recipe field out of
///    range (named train.recipe.FIELD), a corpus whose training split holds
///    less than one batch (or held-out split less than one sequence while
///    eval_every > 0), log_every < 1;
///  - NOT_FOUND: the corpus or the starting model is not in the catalog;
///  - FAILED_PRECONDITION: it is unavailable, or training is off (no runs
///    directory);
///  - ALREADY_EXISTS: the owner already has a run of that name;
///  - RESOURCE_EXHAUSTED: steps x batch_size x seq_len over the owner's
///    max_train_tokens.
absl::Status ValidateTrainRequest(const v1::JobRequest& request, const ModelCatalog& catalog,
                                  const RequestLimits& limits, const std::string& owner);

/// The work of a train job (3 passes: forward, backward ~2x) for the
/// watchdog's progress deadline.
WorkEstimate EstimateTrainWork(const v1::JobRequest& request, const ModelCatalog& catalog);

/// Memory of a train job on its worker, bytes: parameters, gradients and two
/// AdamW moments in float32, plus the activations autograd keeps
/// (batch x seq_len x (layers x (12 d_model + 4 d_ffn + 2 heads x seq_len) + 3 vocab) floats).
int64_t EstimateTrainBytes(const ModelConfig& config, const v1::TrainRecipe& recipe);

}  // namespace server
}  // namespace sinkscope
