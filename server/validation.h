// Validation of client requests at the API edge.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "server/catalog.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// Caps on one request (besides gRPC's max message size).
struct RequestLimits {
  int max_sequences = 1024;
  int64_t max_total_tokens = 1 << 20;
  size_t max_client_request_id = 128;
};

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
///  - RESOURCE_EXHAUSTED for too many sequences or tokens;
///  - UNIMPLEMENTED for job types the server does not run.
absl::Status ValidateJobRequest(const v1::JobRequest& request, const ModelCatalog& catalog,
                                const RequestLimits& limits);

/// Checks the scan parameters (the defaults apply to unset fields).
absl::Status ValidateScanRequest(const v1::ActivationScanRequest& scan);

/// The JobType a request stands for (UNSPECIFIED when no params are set).
v1::JobType JobTypeOf(const v1::JobRequest& request);

/// Strict UTF-8 check (no overlong forms, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view text);

}  // namespace server
}  // namespace sinkscope
