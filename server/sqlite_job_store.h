// JobStore on an embedded SQLite database (WAL mode, busy timeout,
// synchronous FULL by default). One connection behind a mutex: every method
// is one short transaction.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "server/job_store.h"

struct sqlite3;

namespace sinkscope {
namespace server {

/// SQLite-backed JobStore.
class SqliteJobStore final : public JobStore {
 public:
  /// Opens (creating if needed) the database at `path` and its schema.
  /// `sync_full`: PRAGMA synchronous=FULL (else NORMAL, still safe against
  /// process crashes in WAL mode).
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path,
                                                              bool sync_full = true);
  ~SqliteJobStore() override;

  absl::StatusOr<v1::Job> CreateJob(const NewJob& job, bool* created) override;
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override;
  absl::StatusOr<JobPage> ListJobs(const JobFilter& filter) override;
  absl::StatusOr<std::vector<QueuedJob>> ListQueued() override;
  absl::StatusOr<v1::Job> ClaimJob(const std::string& id, const std::string& worker) override;
  absl::StatusOr<v1::JobEvent> AppendQueuedEvent(const std::string& id, int32_t position) override;
  absl::StatusOr<v1::JobEvent> AppendEvent(const std::string& id, int32_t attempt,
                                           const v1::JobEvent& event,
                                           std::optional<v1::JobState> new_state) override;
  absl::StatusOr<v1::JobEvent> FinishJob(const std::string& id, int32_t attempt,
                                         v1::JobState state, const v1::JobEvent& event) override;
  absl::StatusOr<ReleaseOutcome> ReleaseLostJob(const std::string& id, int32_t attempt,
                                                const std::string& reason, bool count_failure,
                                                int max_failures) override;
  absl::StatusOr<std::vector<std::string>> RequeueInterrupted(const std::string& reason) override;
  absl::StatusOr<std::vector<v1::JobEvent>> EventsSince(const std::string& id, int64_t after_seq,
                                                        int limit) override;
  absl::StatusOr<std::vector<v1::ResultRecord>> Results(const std::string& id) override;

 private:
  explicit SqliteJobStore(sqlite3* db) : db_(db) {}
  /// Group commit of progress: with sync_full, intermediate events (progress,
  /// result records, queue positions) commit with synchronous=NORMAL (in the
  /// WAL, no fsync); every other write (submission, claim, terminal event)
  /// commits with synchronous=FULL, whose fsync of the WAL also makes every
  /// earlier intermediate event durable. A killed server loses nothing (the
  /// WAL is in the OS page cache); a power loss can lose the progress events
  /// of a running job since its last FULL commit, never an accepted job or a
  /// completed result (the job is re-dispatched).
  absl::Status RelaxSyncLocked(bool relaxed);
  bool sync_full_ = true;
  bool relaxed_ = false;
  // Helpers; the caller holds mu_ and runs inside a transaction.
  absl::StatusOr<v1::Job> GetJobLocked(const std::string& id);
  absl::StatusOr<v1::JobEvent> InsertEventLocked(const std::string& id, int32_t attempt,
                                                 const v1::JobEvent& event);
  absl::StatusOr<int32_t> QueuePositionLocked(int64_t queue_seq);
  /// Inserts a Queued event with the job's queue position (from queue_seq).
  absl::Status InsertQueuedEventLocked(const std::string& id, int32_t attempt, int64_t queue_seq);
  absl::Status Exec(const char* sql);

  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace server
}  // namespace sinkscope
