// WorkerPool: spawns one sinkscope-worker process per configured device,
// talks to each over a Unix-domain socket, dispatches queued jobs to them,
// health-checks them, and restarts a worker that dies (re-queueing the job
// it held, up to max_attempts).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/config.h"
#include "server/job_manager.h"
#include "sinkscope/v1/worker.pb.h"

namespace grpc {
class ClientContext;
}

namespace sinkscope {
namespace server {

/// The watchdog's deadlines for one running job (README "Limits").
struct JobDeadlines {
  /// Longest silence (no event, no heartbeat) before the lease expires.
  absl::Duration lease;
  /// Longest model load (from dispatch to the loaded/cached event).
  absl::Duration load;
  /// Base of the progress deadline for the job type, and the seconds per
  /// token-layer of work (slowest device supported: 100 token-layers/s).
  absl::Duration progress_base;
  double seconds_per_token_layer = 0.01;
  double scale = 1.0;
  int64_t token_layers = 0;
  /// Longest time without units_done advancing: scale x (base + the work
  /// of one unit at the slowest rate); before the first Running event the
  /// whole job counts as one unit.
  absl::Duration Progress(int64_t units_total) const {
    const double per_unit = static_cast<double>(token_layers) /
                            static_cast<double>(units_total > 0 ? units_total : 1);
    return (progress_base + absl::Seconds(per_unit * seconds_per_token_layer)) * scale;
  }
};

/// Deadlines of a job of `type` doing `token_layers` of work under `config`.
JobDeadlines DeadlinesForJob(const ServerConfig& config, v1::JobType type, int64_t token_layers);

/// Owns the worker processes and one dispatch thread per worker.
class WorkerPool {
 public:
  /// `manager` must outlive the pool. Sockets go into `runtime_dir`.
  WorkerPool(JobManager* manager, ServerConfig config, std::string runtime_dir);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Starts the dispatch threads; each spawns its worker and waits for it.
  /// Fails when the worker binary is missing.
  absl::Status Start();

  /// Waits until no job is running on any worker, or `deadline`. True if idle.
  bool WaitIdle(absl::Time deadline);

  /// Cancels every running job's RPC; those jobs go back to the queue
  /// without counting a failure. Call after JobManager::BeginDrain.
  void AbortRunning();

  /// Stops the dispatch threads and terminates the workers (SIGTERM, then
  /// SIGKILL after a grace period).
  void Stop();

  /// Current worker pids (-1 for a worker not running), by index.
  std::vector<pid_t> WorkerPids() const;

  /// Consecutive startup failures after which a worker counts as down (and,
  /// when every worker is down, SubmitJob answers UNAVAILABLE).
  static constexpr int kDownAfterFailures = 3;
  /// Backoff between startup attempts: 1 s doubling up to this.
  static constexpr int kMaxStartBackoffS = 60;
  /// The workers' health (for ListModels, SubmitJob and GetJob).
  v1::WorkerHealth Health() const;

 private:
  struct Slot;
  void SlotLoop(Slot* slot);
  bool EnsureWorker(Slot* slot);
  bool CheckHealth(Slot* slot, absl::Duration timeout);
  /// Runs one job on `slot`'s worker to its end; true when the worker's
  /// models or memory may have changed (a load, a failure).
  bool RunJob(Slot* slot, const v1::Job& job);
  /// The worker's request for `job`: the catalog model (and compared
  /// models, with their weight estimates), the corpus path, limits and the
  /// memory estimate. The status the job must fail with when its model,
  /// dtype or corpus cannot be resolved (left the catalog); nullopt if none.
  std::optional<absl::Status> ResolveRunRequest(const v1::Job& job, v1::RunJobRequest* out);
  JobDeadlines DeadlinesFor(const v1::Job& job) const {
    return DeadlinesForJob(config_, job.type(), manager_->EstimateWork(job.request(), job.owner()).token_layers);
  }
  /// Waits briefly for the worker to exit (else kills it); says how it ended.
  std::string ReapWorker(Slot* slot, absl::Duration grace, int kill_signal);
  void SleepUnlessStopping(absl::Duration d);
  /// Asks the worker for its cached models and memory; updates the
  /// scheduler's view and the memory gauges.
  void RefreshStatus(Slot* slot);
  /// Records a slot's state ("starting", "idle", "busy", "down") in metrics.
  void SetState(Slot* slot, const char* state);

  JobManager* const manager_;
  const ServerConfig config_;
  const std::string runtime_dir_;
  std::vector<std::unique_ptr<Slot>> slots_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool aborting_ = false;
  int running_jobs_ = 0;
};

}  // namespace server
}  // namespace sinkscope
