// The worker's runner of the profile job (worker/engine/profile.h): one
// ProfileRow per model (JobRequest.model, then ProfileRequest.compare_models
// in order), each streamed as it is done, then the ProfileSummary. A model
// of the comparison that cannot be loaded or profiled gives a failed row;
// the first model's failure fails the job.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/worker.pb.h"
#include "worker/job_events.h"
#include "worker/model_cache.h"

namespace sinkscope {
namespace worker {

/// Loads (or finds cached) the model of a comparison; `estimated_weight_bytes`
/// as RunJobRequest's (0 = unknown).
using ModelLoader = std::function<absl::StatusOr<std::shared_ptr<CachedModel>>(
    const v1::ResolvedModel& model, int64_t estimated_weight_bytes)>;

/// Runs the profile job of ctx.run (params case kProfile). `sequences`: the
/// request's sequences tokenized by ctx's model (for a stream of sequences;
/// each compared model tokenizes them again with its own tokenizer).
/// The ProfileRow of `cached`'s model on token stream `stream` with the
/// parameters of `params` (its eval.corpus is not read): what a profile job
/// computes for one model. Used by training runs on their checkpoints.
absl::StatusOr<v1::ProfileRow> ProfileStream(const CachedModel& cached,
                                             const std::vector<int64_t>& stream,
                                             const v1::ProfileRequest& params,
                                             const std::atomic<bool>* cancel);

absl::Status RunProfileJob(const JobContext& ctx,
                           const std::vector<std::vector<int64_t>>& sequences,
                           const ModelLoader& load_model);

}  // namespace worker
}  // namespace sinkscope
