// The worker's runners of the mechanism jobs (ffn-quadratic, silu-regime,
// vo-circuit, activations): parameters from the request, the engine analysis
// (worker/engine/mechanism.h, activations.h), records streamed per block /
// layer / hook, a summary with provenance.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "worker/job_events.h"

namespace sinkscope {
namespace worker {

/// True for the params cases this file runs.
bool IsMechanismJob(v1::JobRequest::ParamsCase params_case);

/// Runs one of them; `sequences` are the request's, tokenized.
absl::Status RunMechanismJob(const JobContext& ctx,
                             const std::vector<std::vector<int64_t>>& sequences);

}  // namespace worker
}  // namespace sinkscope
