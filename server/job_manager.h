// JobManager: the server's domain core between the API edge and the worker
// pool. Owns no durable state itself (the JobStore does); it validates,
// enqueues, notifies watchers, and tracks running jobs for cancellation.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/auth.h"
#include "server/catalog.h"
#include "server/memory_estimate.h"
#include "server/metrics.h"
#include "server/job_store.h"
#include "server/scheduler.h"
#include "server/validation.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// Shared-host settings of the manager.
struct SharedHostOptions {
  /// Most QUEUED jobs per owner (RESOURCE_EXHAUSTED at submission beyond).
  int max_queued_per_user = 1000;
  /// Largest worker memory budget, bytes; 0 when some worker is unlimited.
  /// A job whose estimate exceeds it is refused with RESOURCE_EXHAUSTED.
  int64_t max_worker_budget = 0;
  /// Minimum interval between updated Queued events.
  int queue_event_interval_ms = 1000;
  /// Most bytes of results one Get(include_results) answers (0 = no cap).
  int64_t max_get_response_bytes = 0;
};

/// Thread-safe job operations for the API and the worker pool.
class JobManager {
 public:
  /// `store`, `catalog` and `scheduler` must outlive the manager.
  JobManager(JobStore* store, const ModelCatalog* catalog, Scheduler* scheduler,
             RequestLimits limits, int max_attempts);
  ~JobManager();

  /// Shared-host settings and metrics (`metrics` may be null; must outlive
  /// the manager). Call before StartBackground.
  void Configure(SharedHostOptions options, Metrics* metrics);
  /// Starts the thread that keeps Queued positions truthful (and the queue
  /// gauges current); it ends at Shutdown.
  void StartBackground();

  /// OK when `caller` may see job `id` (its owner, or an admin); NOT_FOUND
  /// otherwise, with the same message as for an unknown job.
  absl::Status CheckAccess(const std::string& id, const Caller& caller);
  /// The memory a job would need (weights in its dtype + activations).
  /// `owner`'s training checkpoints (RUN@STEP) count among the models.
  absl::StatusOr<MemoryEstimate> Estimate(const v1::JobRequest& request,
                                          const std::string& owner = "");
  /// The work a job of `owner` will do (token-layers), for limits and deadlines.
  WorkEstimate EstimateWork(const v1::JobRequest& request, const std::string& owner = "") const {
    return EstimateJobWork(request, *CatalogFor(owner));
  }
  /// The catalog as `owner` sees it: the server's catalog plus the owner's
  /// training checkpoints RUN@STEP under the runs directory (issue 26); the
  /// server's catalog itself when the owner has no runs ("" = nobody's).
  std::shared_ptr<const ModelCatalog> CatalogFor(const std::string& owner) const;
  /// Whether a QUEUED job of a user other than `owner` was submitted more
  /// than `wait` ago (a training run then yields its worker at a checkpoint).
  bool OthersWaitedLonger(const std::string& owner, absl::Duration wait);
  /// The owner's runs directory, <runs_dir>/<user> ("" when training is off).
  std::string UserRunsDir(const std::string& owner) const;
  /// Traits of a stored job for the scheduler.
  JobTraits TraitsOf(const std::string& id);
  Metrics* metrics() const { return metrics_; }
  Scheduler* scheduler() const { return scheduler_; }

  // --- API side -----------------------------------------------------------

  /// Validates and stores a job (QUEUED); UNAVAILABLE while draining.
  absl::StatusOr<v1::Job> Submit(const std::string& owner, const v1::SubmitJobRequest& request);
  /// The job with its queue position; results when asked and COMPLETED:
  /// all of them (RESOURCE_EXHAUSTED over max_get_response_bytes), or with
  /// `page_results` those from `results_offset` that fit in one answer.
  absl::StatusOr<v1::Job> Get(const std::string& id, bool include_results,
                              bool page_results = false, int32_t results_offset = 0);
  /// A page of jobs, newest first.
  absl::StatusOr<v1::ListJobsResponse> List(const v1::ListJobsRequest& request);
  /// Cancels a job (see AnalysisService.CancelJob). `who` goes into the reason.
  absl::StatusOr<v1::Job> Cancel(const std::string& id, const std::string& who);
  /// Streams events with seq > after_seq through `write`, then live ones,
  /// until the terminal event (OK). CANCELLED when `write` fails or
  /// `client_gone` says so; UNAVAILABLE when the server shuts down.
  absl::Status Watch(const std::string& id, int64_t after_seq,
                     const std::function<bool(const v1::JobEvent&)>& write,
                     const std::function<bool()>& client_gone);
  /// The catalog's public view, with models that failed to load marked
  /// unavailable, and the workers' health.
  /// `user`'s training checkpoints are listed too (RUN@STEP, theirs only).
  v1::ListModelsResponse ListModels(const std::string& user = "") const;
  /// Queue counts for `user` (every user's jobs counted, nobody named).
  absl::StatusOr<v1::QueueOverview> QueueOverviewFor(const std::string& user);

  // --- Health ---------------------------------------------------------------

  /// Where the workers' health comes from (the pool); "" problem = fine.
  void SetWorkerHealthSource(std::function<v1::WorkerHealth()> source);
  /// The workers' health (an empty message without a source).
  v1::WorkerHealth WorkerHealth() const;
  /// A worker failed to load `name`: refuse jobs naming it (FAILED_PRECONDITION
  /// with `reason`, which must not hold server paths) until its checkpoint
  /// file changes (mtime or size).
  void MarkModelLoadFailed(const std::string& name, const std::string& reason);
  /// Why `entry` is unavailable: the catalog's reason or a load failure since
  /// its files last changed; "" when it is available.
  std::string UnavailableReason(const CatalogEntry& entry) const;
  /// Admin: forgets the load failure of model `name` (ClearModelUnavailable).
  /// NOT_FOUND for a model not in the catalog. Returns the cleared reason
  /// ("" when the model was not marked).
  absl::StatusOr<std::string> ClearModelUnavailable(const std::string& name);
  /// The forward-pass dtypes worker `worker` reported it can run.
  void SetWorkerDtypes(const std::string& worker, std::vector<std::string> dtypes);
  /// INVALID_ARGUMENT when no worker that reported its dtypes can run
  /// `dtype` (OK while none has reported).
  absl::Status CheckDtypeRunnable(const std::string& dtype) const;

  // --- Worker-pool side ---------------------------------------------------

  /// Waits up to `timeout` for a queued job and claims it for `worker`.
  /// nullopt on timeout, while draining, or on a store error (logged).
  std::optional<v1::Job> WaitForJob(const std::string& worker, absl::Duration timeout);
  /// Stores a non-terminal event of the job's current attempt and notifies.
  absl::Status RecordEvent(const v1::Job& job, const v1::JobEvent& event,
                           std::optional<v1::JobState> new_state);
  /// RecordEvent for several events (a worker's batch): one transaction, one
  /// notification.
  absl::Status RecordEvents(const v1::Job& job, const std::vector<v1::JobEvent>& events,
                            std::optional<v1::JobState> new_state);
  /// Stores a terminal event + state transactionally and notifies;
  /// `preceding` (the attempt's last records) go first, in the same commit.
  absl::Status Finish(const v1::Job& job, v1::JobState state, const v1::JobEvent& event,
                      const std::vector<v1::JobEvent>& preceding = {});
  /// The job's worker was lost; re-queue (or fail after max_attempts when
  /// `count_failure`) and notify.
  absl::StatusOr<ReleaseOutcome> Release(const v1::Job& job, const std::string& reason,
                                         bool count_failure);
  /// Registers the function that cancels a running job's worker RPC. Returns
  /// false when a cancel was already requested (the caller should cancel).
  bool SetRunning(const std::string& id, std::function<void()> cancel);
  void ClearRunning(const std::string& id);
  /// Drops the cancel request of a finished job.
  void ForgetCancel(const std::string& id);
  /// Who asked to cancel `id` ("" when nobody did).
  std::string CancelRequester(const std::string& id);
  /// The catalog entry a job names (nullptr if it vanished).
  const CatalogEntry* FindModel(const std::string& name) const { return catalog_.load()->Find(name); }
  /// ExpandCheckpoints over this server's catalog ("RUN@*" -> RUN@STEP, ...).
  std::vector<std::string> ExpandModels(const std::string& name) const {
    return ExpandCheckpoints(*catalog_.load(), name);
  }
  /// The catalog corpus a job names (nullptr if it vanished).
  const CorpusEntry* FindCorpus(const std::string& name) const {
    return catalog_.load()->FindCorpus(name);
  }
  /// Serves `catalog` from now on (catalog reload, SIGHUP). Entries of the
  /// previous catalogs stay valid (they are kept: reloads are rare), so
  /// running jobs keep the entry they were dispatched with; cached shapes
  /// and load-failure marks of the old entries are dropped.
  void ReplaceCatalog(std::unique_ptr<ModelCatalog> catalog);

  // --- Life cycle ---------------------------------------------------------

  /// Stop accepting jobs (Submit -> UNAVAILABLE) and stop handing them out.
  void BeginDrain();
  bool draining() const;
  /// Ends every Watch with UNAVAILABLE.
  void Shutdown();
  /// Wakes waiters (after any change of the store made outside the manager).
  void Notify();
  /// Wakes waiters after a change of job `id` (its watchers look again).
  /// `queue_changed` (a job entered or left the queue, a worker was freed)
  /// also wakes the idle workers and the queue-position loop; progress and
  /// result events do not, so that they cost no queue scan each.
  void NotifyJob(const std::string& id, bool queue_changed = true);
  /// Called (outside the manager's locks) with the id of every changed job,
  /// "" when any may have changed. Set before serving; null to unset.
  void SetChangeListener(std::function<void(const std::string&)> listener);
  /// Called (before the change listener) with the events the worker pool
  /// just committed for a job (in seq order): watchers are fed from memory
  /// instead of reading them back from the store.
  void SetEventsListener(
      std::function<void(const std::string&, const std::vector<v1::JobEvent>&)> listener);

 private:
  JobStore* const store_;
  std::atomic<const ModelCatalog*> catalog_;
  std::mutex catalogs_mu_;
  std::vector<std::unique_ptr<ModelCatalog>> reloaded_catalogs_;  // kept alive, see ReplaceCatalog
  Scheduler* const scheduler_;
  const RequestLimits limits_;
  const int max_attempts_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t generation_ = 0;  // bumped on every change; watchers compare
  // Bumped (with queue_cv_) only when the queue may have changed: idle
  // workers (WaitForJob) and PositionLoop wait on it.
  std::condition_variable queue_cv_;
  int64_t queue_generation_ = 0;
  bool draining_ = false;
  bool shutdown_ = false;
  std::map<std::string, std::function<void()>> running_;  // job id -> cancel
  std::map<std::string, std::string> cancel_requested_;   // job id -> who

  void PositionLoop();
  /// Appends a Queued event when a queued job's position changed.
  void RefreshPositions();
  SharedHostOptions shared_;
  Metrics* metrics_ = nullptr;
  std::mutex submit_mu_;  // per-user queue limit check + insert
  std::mutex shapes_mu_;
  std::map<std::string, ModelShape> shapes_;  // catalog name -> shape
  std::thread position_thread_;
  /// Load failures by model name, with the checkpoint's stamp at the time.
  struct LoadFailure {
    std::string reason;
    std::string stamp;
  };
  mutable std::mutex health_mu_;
  mutable std::map<std::string, LoadFailure> load_failures_;
  std::function<v1::WorkerHealth()> worker_health_;
  std::map<std::string, std::vector<std::string>> worker_dtypes_;  // guarded by health_mu_
  std::map<std::string, int32_t> last_position_;  // position thread only
  mutable std::mutex listener_mu_;
  std::function<void(const std::string&)> listener_;
  std::function<void(const std::string&, const std::vector<v1::JobEvent>&)> events_listener_;
  /// Hands `events` of job `id` to the events listener, if any.
  void OfferEvents(const std::string& id, const std::vector<v1::JobEvent>& events);
};

/// Size and mtime of a checkpoint file, or of the files of a HF directory
/// (changes when any of them is rewritten); "" when it cannot be read.
std::string CheckpointStamp(const std::string& path);

/// A new random job id: "j-" + 16 hex digits.
std::string NewJobId();

}  // namespace server
}  // namespace sinkscope
