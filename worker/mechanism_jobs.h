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

/// Runs one of them (the job types whose descriptor in common/job_types.h has
/// `mechanism`); `sequences` are the request's, tokenized. UNIMPLEMENTED for
/// any other params case.
absl::Status RunMechanismJob(const JobContext& ctx,
                             const std::vector<std::vector<int64_t>>& sequences);

}  // namespace worker
}  // namespace sinkscope
