// Renderers of the profile job: the paper's table (Tables 3-8: one row per
// model with perplexity, sink ratio and spike, and the step-up / step-down
// blocks, spike channels and the top sink key the text cites), as text and
// as CSV. No gRPC calls.
#pragma once

#include <string>
#include <vector>

#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace client {

/// True for profile_row / profile_summary records.
bool IsProfileRecord(const v1::ResultRecord& record);

/// One line for a streamed row: "profile stories260K: PPL 1.234, sink ratio
/// 45.00%, spike 12.3, step-up 4 (layer 1 mlp)" (or the row's failure).
std::string RenderProfileRowLine(const v1::ProfileRow& row);

/// The rows of a job's profile records as the paper's table, then (with a
/// summary) the parameters used and the first row's provenance. The rows
/// of the summary when there is one, else the streamed rows.
std::string RenderProfileResults(const std::vector<v1::ResultRecord>& records);

/// The same rows as CSV (RFC 4180, header first): model, status, perplexity,
/// mean_loss, sink_ratio, gu_sink_ratio, spike, peak_abs, peak_block,
/// step_up_blocks, step_down_blocks, spike_channels, spike_positions,
/// n_spike_tokens, n_massive, n_sink_heads, n_heads, top_sink_key,
/// sink_heads_distance, other_heads_distance, layer_sink_ratios, n_chunks,
/// n_scored, dtype, device, code_version, error. Lists are ';'-separated.
std::string RenderProfileCsv(const std::vector<v1::ResultRecord>& records);

}  // namespace client
}  // namespace sinkscope
