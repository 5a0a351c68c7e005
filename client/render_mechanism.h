// Text renderers of the mechanism results (block attribution of the scan,
// ffn-quadratic, silu-regime, vo-circuit, activations). No gRPC calls.
#pragma once

#include <string>
#include <vector>

#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace client {

/// Block attribution of spike entries: per entry (largest first, at most
/// `max_entries`), its peak, the embedding's share and every block whose
/// |share| >= `min_share`, with its signed contribution and share; step-up /
/// step-down blocks of the entry.
std::string RenderAttributionTable(const v1::ScanSummary& summary, int max_entries = 8,
                                   double min_share = 0.01);

/// True for the record cases rendered by RenderMechanismResults.
bool IsMechanismRecord(const v1::ResultRecord& record);

/// The mechanism records of one job, as tables and summaries.
std::string RenderMechanismResults(const std::vector<v1::ResultRecord>& records);

}  // namespace client
}  // namespace sinkscope
