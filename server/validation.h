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
///  - NOT_FOUND naming the model when it is not in the catalog;
///  - FAILED_PRECONDITION when the model's checkpoint is unavailable;
///  - INVALID_ARGUMENT for no sequences, an empty sequence, text for a model
///    without tokenizer, text that is not UTF-8, a token id outside
///    [0, vocab_size), a sequence longer than n_ctx, no job parameters, a bad
///    parameter (top_k outside 1..64, negative or non-finite thresholds,
///    step_fraction outside (0, 1]), an unknown dtype;
///  - RESOURCE_EXHAUSTED for too many sequences or tokens;
///  - UNIMPLEMENTED for job types the server does not run yet.
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
