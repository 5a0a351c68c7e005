// Server-side checks of the mechanism job types (ffn-quadratic, silu-regime,
// vo-circuit, activations), before a job is queued; no libtorch.
#pragma once

#include "absl/status/status.h"
#include "server/catalog.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// Checks the parameters of a mechanism job against `model`'s shape. Errors
/// name the field: INVALID_ARGUMENT for an unknown block, an attention block
/// where an MLP block is needed, zero / too many channels, a sample larger
/// than d_model (or the vocabulary), an unknown hook name, an empty hook
/// list, an index out of range; RESOURCE_EXHAUSTED for an activations result
/// over the limit, the lower of the engine's kDefaultMaxActivationsBytes and
/// `max_result_bytes` (names the computed size and which limit; text counts
/// one token per byte + BOS); UNIMPLEMENTED for a request that is no mechanism
/// job. Whether sequences are required or forbidden is a trait of the job
/// type (common/job_types.h), checked by ValidateJobRequest.
absl::Status ValidateMechanismRequest(const v1::JobRequest& request, const CatalogEntry& model,
                                      int64_t max_result_bytes);

}  // namespace server
}  // namespace sinkscope
