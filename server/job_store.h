// Durable job store: the narrow interface the rest of the server uses.
//
// Every method is one transaction. SqlJobStore (sql_job_store.h) implements
// it on SQLite (one host) and on PostgreSQL (several hosts on one queue);
// the state machine both follow is in job_transitions.h.
//
// Several hosts: a store is opened for one host (StoreOptions::host). Each
// claim is leased to that host until lease_ms from the database's clock;
// the host renews its leases (RenewLeases) while it lives, and any host
// re-queues jobs whose lease ran out (ReclaimExpiredLeases).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// What CreateJob stores.
struct NewJob {
  std::string id;
  std::string owner;
  v1::JobType type = v1::JOB_TYPE_UNSPECIFIED;
  v1::JobRequest request;
  std::string client_request_id;  // "" = none
  int32_t priority = 0;           // higher runs first within the owner's jobs
};

/// A queued job as the scheduler sees it.
struct QueuedJob {
  std::string id;
  std::string owner;
  int64_t queue_seq = 0;  // FIFO order of submission
  int32_t attempts = 0;   // dispatches so far (events of a re-queued job use it)
  int32_t priority = 0;   // SubmitJobRequest.priority
  // Filled by the Scheduler (not stored): model name and estimated bytes.
  std::string model;
  int64_t need_bytes = 0;
};

/// ListJobs filter and page.
struct JobFilter {
  std::string owner;                 // "" = all
  std::vector<v1::JobState> states;  // empty = all
  int limit = 50;
  int64_t before_queue_seq = 0;      // 0 = from the newest
};

/// A page of jobs, newest first.
struct JobPage {
  std::vector<v1::Job> jobs;
  int64_t next_before_queue_seq = 0;  // 0 = no more
};

/// A worker as its host publishes it for the other hosts' schedulers
/// (model affinity across hosts).
struct HostWorker {
  std::string host;
  std::string worker;
  int64_t budget_bytes = 0;        // 0 = unlimited
  std::set<std::string> models;    // catalog names it holds loaded
  bool busy = false;
  int64_t seen_us = 0;             // when its host last published it (database clock)
};

/// Outcome of ReleaseLostJob.
enum class ReleaseOutcome { kRequeued, kFailed, kAlreadyFinished };

/// Durable jobs and their events. Thread-safe.
class JobStore {
 public:
  virtual ~JobStore() = default;

  /// Stores a QUEUED job and its first event (Queued with its FIFO position).
  /// When `job.client_request_id` is set and the owner already has a job with
  /// it, returns that job and sets `*created` to false.
  virtual absl::StatusOr<v1::Job> CreateJob(const NewJob& job, bool* created) = 0;

  /// The job (without results or queue_position). NotFound when unknown.
  virtual absl::StatusOr<v1::Job> GetJob(const std::string& id) = 0;

  /// Jobs matching `filter`, newest first.
  virtual absl::StatusOr<JobPage> ListJobs(const JobFilter& filter) = 0;

  /// QUEUED jobs in FIFO order (oldest submission first).
  virtual absl::StatusOr<std::vector<QueuedJob>> ListQueued() = 0;

  /// QUEUED -> MODEL_LOADING: increments attempts, records the worker and the
  /// start time. FailedPrecondition when the job is not QUEUED (already
  /// claimed, finished or cancelled). Returns the claimed job.
  virtual absl::StatusOr<v1::Job> ClaimJob(const std::string& id, const std::string& worker) = 0;

  /// Appends a non-terminal event of dispatch `attempt` (seq and time are
  /// assigned here) and, when `new_state` is set, moves the job to that
  /// non-terminal state. FailedPrecondition when the job is finished or its
  /// current attempt is not `attempt` (a stale writer). Returns the event.
  absl::StatusOr<v1::JobEvent> AppendEvent(const std::string& id, int32_t attempt,
                                           const v1::JobEvent& event,
                                           std::optional<v1::JobState> new_state) {
    absl::StatusOr<std::vector<v1::JobEvent>> stored = AppendEvents(id, attempt, {event}, new_state);
    if (!stored.ok()) return stored.status();
    return std::move(stored->front());
  }

  /// AppendEvent for several events at once, in one transaction: all are
  /// stored (consecutive seqs, in order) or none. `events` is not empty.
  /// Returns the stored events.
  virtual absl::StatusOr<std::vector<v1::JobEvent>> AppendEvents(
      const std::string& id, int32_t attempt, const std::vector<v1::JobEvent>& events,
      std::optional<v1::JobState> new_state) = 0;

  /// Appends a Queued{position} event to a job that is QUEUED (its position
  /// moved). FailedPrecondition when it is not QUEUED any more.
  virtual absl::StatusOr<v1::JobEvent> AppendQueuedEvent(const std::string& id,
                                                         int32_t position) = 0;

  /// Moves a job to a terminal state (COMPLETED, FAILED, CANCELLED) with its
  /// terminal event, in one transaction: a job is finished at most once.
  /// `attempt` 0 accepts any attempt (used to cancel a queued job); a
  /// COMPLETED job records `attempt` as the one whose results count.
  /// FailedPrecondition when already finished or the attempt is stale.
  absl::StatusOr<v1::JobEvent> FinishJob(const std::string& id, int32_t attempt,
                                         v1::JobState state, const v1::JobEvent& event) {
    absl::StatusOr<std::vector<v1::JobEvent>> stored = FinishJob(id, attempt, state, {}, event);
    if (!stored.ok()) return stored.status();
    return std::move(stored->back());
  }
  /// FinishJob that first appends `preceding` (non-terminal events of the
  /// same attempt, e.g. a worker's last batch of records) in the same
  /// transaction: one durable commit for the end of a job. Returns every
  /// event stored, the terminal one last.
  virtual absl::StatusOr<std::vector<v1::JobEvent>> FinishJob(
      const std::string& id, int32_t attempt, v1::JobState state,
      const std::vector<v1::JobEvent>& preceding, const v1::JobEvent& event) = 0;

  /// A dispatched job lost its worker (or the server is stopping): writes a
  /// Retrying event and puts it back in the queue at its original FIFO
  /// place. When `count_failure`, the job's failure count grows, and when it
  /// reaches `max_failures` the job FAILS (UNAVAILABLE, `reason`) instead.
  virtual absl::StatusOr<ReleaseOutcome> ReleaseLostJob(const std::string& id, int32_t attempt,
                                                        const std::string& reason,
                                                        bool count_failure,
                                                        int max_failures) = 0;

  /// Startup recovery: every MODEL_LOADING / RUNNING job this host held
  /// goes back to QUEUED (without counting a failure); jobs other hosts
  /// hold under a live lease are left alone. Returns their ids.
  virtual absl::StatusOr<std::vector<std::string>> RequeueInterrupted(
      const std::string& reason) = 0;

  /// Events with seq > after_seq, in order, at most `limit`.
  virtual absl::StatusOr<std::vector<v1::JobEvent>> EventsSince(const std::string& id,
                                                                int64_t after_seq,
                                                                int limit) = 0;

  /// Result records of the completing attempt, in order (empty unless COMPLETED).
  virtual absl::StatusOr<std::vector<v1::ResultRecord>> Results(const std::string& id) = 0;

  // --- Several hosts -----------------------------------------------------

  /// The host this store claims for.
  virtual const std::string& host() const = 0;
  /// Extends the lease of every job this host holds (MODEL_LOADING /
  /// RUNNING) to now + lease. Returns how many.
  virtual absl::StatusOr<int> RenewLeases() = 0;
  /// Every dispatched job whose lease expired (its host stopped renewing)
  /// is released as by ReleaseLostJob(count_failure = true): re-queued, or
  /// FAILED after `max_failures`. Rows locked by another host are skipped
  /// (FOR UPDATE SKIP LOCKED). Returns the ids released.
  virtual absl::StatusOr<std::vector<std::string>> ReclaimExpiredLeases(int max_failures) = 0;
  /// Replaces this host's published workers with `workers` (host and
  /// seen_us are filled in here).
  virtual absl::Status PublishWorkers(const std::vector<HostWorker>& workers) = 0;
  /// Workers of the other hosts published within `max_age_ms`.
  virtual absl::StatusOr<std::vector<HostWorker>> PeerWorkers(int64_t max_age_ms) = 0;
  /// Dispatched jobs by owner on the other hosts (fair share across hosts).
  virtual absl::StatusOr<std::map<std::string, int>> PeerRunningByOwner() = 0;
  /// Calls `on_change(job_id)` (on a background thread) whenever any host
  /// changes a job ("" = re-read everything). SQLite: never (its one host
  /// notifies itself).
  virtual absl::Status SetChangeListener(std::function<void(const std::string&)> on_change) = 0;
  /// Whether this host does the once-per-queue chores (updated Queued
  /// events); one host at a time holds it.
  virtual bool LeadsQueue() = 0;
};

/// True for COMPLETED, FAILED, CANCELLED.
inline bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

/// True for a terminal event (Completed, Failed, Cancelled).
inline bool IsTerminalEvent(const v1::JobEvent& e) {
  return e.has_completed() || e.has_failed() || e.has_cancelled();
}

}  // namespace server
}  // namespace sinkscope
