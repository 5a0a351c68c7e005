// Server-side checks of the mechanism job types (ffn-quadratic, silu-regime,
// vo-circuit, activations), before a job is queued; no libtorch.
#pragma once

#include "absl/status/status.h"
#include "server/catalog.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// True for the params cases checked here.
bool IsMechanismRequest(const v1::JobRequest& request);

/// Checks the parameters of a mechanism job against `model`'s shape. Errors
/// name the field: INVALID_ARGUMENT for an unknown block, an attention block
/// where an MLP block is needed, zero / too many channels, a sample larger
/// than d_model (or the vocabulary), an unknown hook name, an empty hook
/// list, an index out of range, sequences given to a weights-only job;
/// RESOURCE_EXHAUSTED for an activations result over the limit (names the
/// computed size and the limit; text counts one token per byte + BOS).
/// `*sequences_needed`: 1 required, 0 forbidden, -1 optional.
absl::Status ValidateMechanismRequest(const v1::JobRequest& request, const CatalogEntry& model,
                                      int* sequences_needed);

}  // namespace server
}  // namespace sinkscope
