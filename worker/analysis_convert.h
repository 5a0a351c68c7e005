// Conversions between the engine's analysis types (sinks, first-token probe,
// spike similarity, self-attention profile, perplexity, interventions) and the
// protocol. Requests: proto -> engine parameters with the engine's defaults
// applied (not validated: the engine validates). Results: engine -> proto
// records; provenance is filled by the caller (the engine does not know the
// model name or device string).
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/analysis.pb.h"
#include "worker/engine/experiments.h"
#include "worker/engine/sinks.h"
#include "worker/engine/spikes.h"

namespace sinkscope {
namespace worker {

// ---- sinks (paper eq. 27-28) ----
SinkParams SinkParamsFromProto(const v1::SinksRequest& request);
v1::SinkLayer ToProto(const LayerSinkRecord& record);
/// Summary; layers and window are the ones the engine analysed, `params` the rest.
v1::SinkSummary ToProto(const SinkSummary& summary, const SinkParams& params);

// ---- first-token probe (Table 2, eq. 22) ----
FirstTokenParams FirstTokenParamsFromProto(const v1::FirstTokenProbeRequest& request);
/// `params` with the prefix default ([bos]) and range end resolved.
v1::FirstTokenProbeResult ToProto(const FirstTokenResult& result, const FirstTokenParams& params);

// ---- spike similarity (Fig. 5, eq. 25) ----
SpikeSimilarityParams SpikeSimilarityParamsFromProto(const v1::SpikeSimilarityRequest& request);
v1::SpikeSimilaritySummary ToProto(const SpikeSimilarityResult& result,
                                   const SpikeSimilarityParams& params);

// ---- self-attention profile (section 3.1.3) ----
v1::SelfAttentionLayer ToProto(const SelfAttentionLayer& layer);

// ---- perplexity and interventions (finding 6) ----
EvalParams EvalParamsFromProto(const v1::EvalCorpus& eval);
v1::EvalUsed EvalUsedToProto(const EvalParams& params, const std::string& corpus,
                             int64_t stream_tokens);
v1::PerplexityChunk ToPerplexityChunk(const ChunkRecord& chunk);
v1::PerplexitySummary ToProto(const PerplexityResult& result);
v1::InterventionChunk ToInterventionChunk(const ChunkRecord& chunk);

/// The request's interventions and thresholds (calibration tokens are filled
/// by the caller). An empty list becomes the front-end default of `type`:
/// one "mean" substitution after the step-up block (constant substitution)
/// or one "mask" ablation of the detected sink heads (sink ablation).
/// INVALID_ARGUMENT for an unknown mode or method.
absl::StatusOr<ExperimentParams> ExperimentParamsFromProto(const v1::InterventionRequest& request,
                                                           v1::JobType type);
/// Summary: results plus the interventions as resolved (block, channels,
/// the vector written, heads), so that the experiment can be repeated.
v1::InterventionSummary ToProto(const ExperimentResult& result, const ExperimentParams& params);

/// Paper block number -> BlockRef (layer and sublayer).
v1::BlockRef BlockRefOf(int64_t block);

}  // namespace worker
}  // namespace sinkscope
