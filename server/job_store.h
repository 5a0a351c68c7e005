// Durable job store: the narrow interface the rest of the server uses.
//
// Every method is one transaction. SQLite implements it today
// (sqlite_job_store.h); a PostgreSQL backend can implement the same
// interface with the same simple SQL.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
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
  virtual absl::StatusOr<v1::JobEvent> AppendEvent(const std::string& id, int32_t attempt,
                                                   const v1::JobEvent& event,
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
  virtual absl::StatusOr<v1::JobEvent> FinishJob(const std::string& id, int32_t attempt,
                                                 v1::JobState state,
                                                 const v1::JobEvent& event) = 0;

  /// A dispatched job lost its worker (or the server is stopping): writes a
  /// Retrying event and puts it back in the queue at its original FIFO
  /// place. When `count_failure`, the job's failure count grows, and when it
  /// reaches `max_failures` the job FAILS (UNAVAILABLE, `reason`) instead.
  virtual absl::StatusOr<ReleaseOutcome> ReleaseLostJob(const std::string& id, int32_t attempt,
                                                        const std::string& reason,
                                                        bool count_failure,
                                                        int max_failures) = 0;

  /// Startup recovery: every MODEL_LOADING / RUNNING job goes back to QUEUED
  /// (without counting a failure). Returns their ids.
  virtual absl::StatusOr<std::vector<std::string>> RequeueInterrupted(
      const std::string& reason) = 0;

  /// Events with seq > after_seq, in order, at most `limit`.
  virtual absl::StatusOr<std::vector<v1::JobEvent>> EventsSince(const std::string& id,
                                                                int64_t after_seq,
                                                                int limit) = 0;

  /// Result records of the completing attempt, in order (empty unless COMPLETED).
  virtual absl::StatusOr<std::vector<v1::ResultRecord>> Results(const std::string& id) = 0;
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
