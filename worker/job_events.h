// What every job runner of the worker shares (the activation scan in
// worker_service.cc, the other analyses in analysis_jobs.cc): its context,
// the events it emits through the job's sink, and the provenance of its
// summary.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "sinkscope/v1/worker.pb.h"
#include "worker/engine/scan.h"
#include "worker/model_cache.h"
#include "worker/worker_service.h"

namespace sinkscope {
namespace worker {

/// What every runner gets.
struct JobContext {
  const CachedModel& cached;
  const WorkerOptions& options;
  const v1::RunJobRequest& run;
  const EventSink& sink;
  const std::atomic<bool>* cancel;
};

/// Emits a job's events; throttles progress; remembers a receiver that went
/// away. Not copyable: Progress() captures it.
class Emitter {
 public:
  explicit Emitter(const JobContext& ctx) : ctx_(ctx) {}
  Emitter(const Emitter&) = delete;
  Emitter& operator=(const Emitter&) = delete;

  void Emit(const v1::WorkerEvent& event);
  /// A Result event carrying `record`.
  void Record(const v1::ResultRecord& record);
  /// The engine's progress callback: a Running event at most every
  /// options.progress_interval_ms (the last one always), and the test-only
  /// options.test_unit_delay_ms sleep after each unit.
  ProgressFn Progress();
  /// The job's outcome given the engine's status.
  absl::Status Finish(const absl::Status& status) const;
  /// Sends the job's summary record; returns the job's outcome.
  absl::Status FinishWith(const v1::ResultRecord& summary);

 private:
  using Clock = std::chrono::steady_clock;
  const JobContext& ctx_;
  bool gone_ = false;
  Clock::time_point last_ = Clock::now() - std::chrono::hours(1);
};

/// This worker's sinkscope version (SINKSCOPE_CODE_VERSION).
const char* CodeVersion();

/// Provenance of a result computed by `cached`'s model.
v1::Provenance MakeProvenance(const CachedModel& cached, int64_t n_tokens, int64_t n_sequences);
/// The same over `sequences` (all their tokens).
v1::Provenance MakeProvenance(const CachedModel& cached,
                              const std::vector<std::vector<int64_t>>& sequences);

}  // namespace worker
}  // namespace sinkscope
