// The worker's runners of the analysis jobs other than the activation scan:
// each reads its parameters from the request, runs the engine analysis with
// progress and cancellation, and streams its records (worker/analysis_convert.h)
// through the job's event sink (worker/job_events.h), ending with a summary
// that carries provenance.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "sinkscope/v1/worker.pb.h"
#include "worker/job_events.h"
#include "worker/model_cache.h"
#include "worker/worker_service.h"

namespace sinkscope {
namespace worker {

/// Token ids of `sequences` (text through the model's tokenizer, BOS per
/// add_bos). `label` names them in errors ("sequence", "calibration sequence");
/// `check_ctx` refuses sequences longer than the model's context.
absl::StatusOr<std::vector<std::vector<int64_t>>> TokenizeSequences(
    const google::protobuf::RepeatedPtrField<v1::Sequence>& sequences, bool add_bos,
    const CachedModel& cached, const std::string& label, bool check_ctx);

/// The token stream of an evaluation (perplexity, interventions, profile):
/// the catalog corpus resolved by the server (tokenized with ctx's model's
/// tokenizer, else the corpus entry's; cached between jobs), or the
/// request's `sequences` concatenated in order. InvalidArgument when it has
/// fewer than 2 tokens or no tokenizer can read it.
absl::StatusOr<std::shared_ptr<const std::vector<int64_t>>> EvalStream(
    const JobContext& ctx, const v1::EvalCorpus& eval,
    const std::vector<std::vector<int64_t>>& sequences);

/// Runs the job named by run.request().params (not the scan). `sequences`
/// are the request's sequences, tokenized.
absl::Status RunAnalysisJob(const JobContext& ctx,
                            const std::vector<std::vector<int64_t>>& sequences);

}  // namespace worker
}  // namespace sinkscope
