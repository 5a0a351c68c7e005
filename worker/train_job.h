// The worker's runner of the train job (issue 26; the engine's trainer,
// worker/engine/train.h): trains on a catalog corpus read byte-level into
// the run directory the server resolved, and streams TrainStep records and a
// TrainSummary. A run directory that already holds checkpoints (the job was
// re-queued after its worker or server was lost) is resumed from its latest
// one; the losses before it are replayed from that checkpoint as records, so
// the completing attempt's records hold the whole curve.
#pragma once

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "sinkscope/v1/worker.pb.h"
#include "worker/model_cache.h"
#include "worker/worker_service.h"

namespace sinkscope {
namespace worker {

/// Runs the train job of `run` (params case kTrain). Errors: InvalidArgument
/// for a recipe or config the engine refuses, NotFound for an unreadable
/// corpus, Cancelled when `cancel` is set or the receiver went away, and the
/// engine's own errors.
/// `cache` loads the checkpoints the run profiles (TrainRequest.profile_every).
absl::Status RunTrainJob(ModelCache& cache, const WorkerOptions& options,
                         const v1::RunJobRequest& run, const EventSink& sink,
                         const std::atomic<bool>* cancel);

/// A HF tokenizer.json for byte-level models (token id = byte, GPT-2's
/// byte-to-unicode pieces; with `bos_id` >= 0 the added token <bos> that
/// text starts with), so a run's checkpoints read text and catalog corpora.
std::string ByteLevelTokenizerJson(int64_t bos_id);

}  // namespace worker
}  // namespace sinkscope
