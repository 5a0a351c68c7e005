// Conversions between the engine's activation-scan types and the protocol.
#pragma once

#include "absl/status/statusor.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {

struct BlockRecord;
struct ScanParams;
struct ScanSummary;

namespace worker {

/// Engine block record -> ScanBlock (paper block number, layer, sublayer, hooks).
v1::ScanBlock ToProto(const BlockRecord& record);

/// Engine summary -> ScanSummary. `thresholds` and `provenance` are filled by
/// the caller (the engine does not know the model name or device string).
v1::ScanSummary ToProto(const ScanSummary& summary);

/// Request parameters with the defaults of ScanParams applied; not validated.
ScanParams ScanParamsFromProto(const v1::ActivationScanRequest& request);

/// The thresholds that `params` stands for.
v1::ScanThresholds ThresholdsToProto(const ScanParams& params);

}  // namespace worker
}  // namespace sinkscope
