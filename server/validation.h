// Validation of client requests at the API edge.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "server/catalog.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// Caps on one request (besides gRPC's max message size). Every repeated
/// field counts against one of them (README "Limits").
struct RequestLimits {
  /// Sequences of a job (calibration sequences included).
  int max_sequences = 1024;
  /// Tokens of a job: token ids as given, text as its bytes + 2 (an upper
  /// bound of what the llama2.c and SentencePiece tokenizers make of it:
  /// every piece covers >= 1 byte, plus BOS and the dummy-prefix piece).
  int64_t max_total_tokens = 1 << 20;
  /// Bytes of text of a job.
  int64_t max_text_bytes = 1 << 20;
  size_t max_client_request_id = 128;
  /// Work of a job in token-layers (EstimateJobWork).
  int64_t max_job_token_layers = int64_t{1} << 28;
  /// Interventions of one intervention job.
  int max_interventions = 16;
  /// Token ids probed by one first-token probe (ids or range).
  int64_t max_probe_ids = 1 << 18;
  /// Entries of any other list (layers, delimiter ids/strings, heads,
  /// channels, positions, constants).
  int max_list_entries = 4096;
  /// Exceptions a first-token probe may list.
  int max_listed_exceptions = 65536;
  /// Result bytes a job may store (max_result_bytes; the worker pool fails a
  /// job that passes it). A job whose result size is known at submission
  /// (activations) is refused there instead.
  int64_t max_result_bytes = 32 << 20;
  /// Training runs (issue 26): the runs directory (<runs_dir>/<user>/<run>;
  /// "" = training refused) and the most tokens (steps x batch x seq_len) of
  /// one run, per user.
  std::string runs_dir;
  int64_t max_train_tokens = int64_t{1} << 30;
  std::map<std::string, int64_t> user_max_train_tokens;
};

/// What a job will compute, estimated at submission from the request and the
/// model's shape (text counted as an upper bound, see max_total_tokens).
struct WorkEstimate {
  /// Tokens fed through the model, over every forward pass of the job.
  int64_t tokens = 0;
  /// tokens x layers: the unit of max_job_token_layers and of the
  /// watchdog's progress deadline.
  int64_t token_layers = 0;
  /// How it was counted, for messages ("2 passes x 4096 tokens x 32 layers").
  std::string basis;
};

/// The work of `request` (which ValidateJobRequest accepted).
WorkEstimate EstimateJobWork(const v1::JobRequest& request, const ModelCatalog& catalog);

/// Checks a JobRequest against the catalog and limits. Errors:
///  - NOT_FOUND naming the model (or the corpus) when it is not in the catalog;
///  - FAILED_PRECONDITION when the model's checkpoint (or the corpus) is
///    unavailable;
///  - INVALID_ARGUMENT for no sequences (jobs that read sequences), an empty
///    sequence, text for a model without tokenizer, text that is not UTF-8, a
///    token id outside [0, vocab_size), a sequence longer than n_ctx (except
///    evaluation streams, which are chunked), no job parameters, an unknown
///    dtype, and a bad parameter, named by its field path: top_k outside
///    1..64, negative or non-finite thresholds, step_fraction outside (0, 1],
///    sinks.window < 2 or > n_ctx, sinks.epsilon outside (0, 1), an unknown
///    layer, an empty vocabulary range, a block the model lacks, a constant
///    whose width is not d_model (or the channel count), a head index out of
///    range, an empty corpus (no corpus and no sequences), chunk_length
///    outside 2..n_ctx, token_budget < 2, unknown substitution mode or
///    ablation method;
///  - INVALID_ARGUMENT for a duplicate in a list that must not have one
///    (token_ids, delimiter ids, heads, channels, positions);
///  - RESOURCE_EXHAUSTED for too many sequences, tokens, text bytes, list
///    entries or interventions, or too much work (EstimateJobWork), naming
///    the count (or estimate) and the limit;
///  - UNIMPLEMENTED for job types the server does not run.
/// A training job (`train` params) is checked by ValidateTrainRequest
/// (server/train_validation.h) for `owner`.
absl::Status ValidateJobRequest(const v1::JobRequest& request, const ModelCatalog& catalog,
                                const RequestLimits& limits, const std::string& owner = "");

/// Checks the scan parameters (the defaults apply to unset fields).
absl::Status ValidateScanRequest(const v1::ActivationScanRequest& scan,
                                 const std::string& field = "scan");

/// The JobType a request stands for (UNSPECIFIED when no params are set).
v1::JobType JobTypeOf(const v1::JobRequest& request);

/// Strict UTF-8 check (no overlong forms, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view text);

}  // namespace server
}  // namespace sinkscope
