// Renderers of the train job (issue 26): one progress line per TrainStep
// record as it streams, and the run's loss curve and summary as text. No
// gRPC calls.
#pragma once

#include <string>
#include <vector>

#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace client {

/// True for train_step / train_summary records.
bool IsTrainRecord(const v1::ResultRecord& record);

/// One line for a streamed record: "step     50/500  loss 2.5509  lr 0.00198
/// |g| 0.652  19002 tok/s  5.4 s (ETA 49 s)  held-out 1.78  -> tiny@250"
/// (as `sinkscope-run train` prints it; replayed records say so).
std::string RenderTrainStepLine(const v1::TrainStep& step);

/// The records of a train job: the logged steps as a table (step, loss, lr,
/// |g|, held-out, checkpoint), then the summary.
std::string RenderTrainResults(const std::vector<v1::ResultRecord>& records);

}  // namespace client
}  // namespace sinkscope
