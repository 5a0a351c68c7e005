// JobStore on a SqlDb: the same parameterised SQL on SQLite (one host) and
// on PostgreSQL (several hosts on one queue), the state machine of
// job_transitions.h, and host leases.
//
// PostgreSQL: every transition locks the job's row (SELECT ... FOR UPDATE;
// claims and lease reclaims SKIP LOCKED, so two hosts never wait on each
// other for one job), event seqs are assigned under that lock (so they
// commit in order), and every change NOTIFYs channel "sinkscope_jobs" with
// the job id (kChangeChannel) for the other hosts' watchers and workers.
//
// Group commit of progress: intermediate events (progress, result records,
// queue positions) and lease renewals commit with SqlDurability::kGroupCommit
// (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off); every
// other write (submission, claim, terminal event) commits durably, which
// also makes the earlier intermediate ones durable. A killed server loses
// nothing; a power loss can lose the progress events of a running job since
// its last durable commit, never an accepted job or a completed result (the
// job is re-dispatched).
#pragma once

#include <memory>
#include <string>

#include "server/job_store.h"
#include "server/sql_db.h"

namespace sinkscope {
namespace server {

/// The NOTIFY channel of job changes.
inline constexpr char kChangeChannel[] = "sinkscope_jobs";

/// How a store claims.
struct StoreOptions {
  /// This host's name in leases ("" = the machine's hostname).
  std::string host;
  /// Lease of a claimed job, milliseconds; the host renews it (RenewLeases)
  /// well before. Another host may re-queue the job once it runs out.
  int64_t lease_ms = 30000;
};

/// JobStore over any SqlDb. Thread-safe.
class SqlJobStore : public JobStore {
 public:
  /// A store on `db` (already migrated, see OpenSqlDb).
  static std::unique_ptr<SqlJobStore> Create(std::shared_ptr<SqlDb> db, StoreOptions options);
  /// Opens `database` (SQLite path or PostgreSQL URI) and its schema.
  static absl::StatusOr<std::unique_ptr<SqlJobStore>> Open(const std::string& database,
                                                           StoreOptions options,
                                                           bool sqlite_sync_full = true);

  SqlDb* db() const { return db_.get(); }
  const std::shared_ptr<SqlDb>& shared_db() const { return db_; }

  absl::StatusOr<v1::Job> CreateJob(const NewJob& job, bool* created) override;
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override;
  absl::StatusOr<JobPage> ListJobs(const JobFilter& filter) override;
  absl::StatusOr<std::vector<QueuedJob>> ListQueued() override;
  absl::StatusOr<v1::Job> ClaimJob(const std::string& id, const std::string& worker) override;
  absl::StatusOr<v1::JobEvent> AppendQueuedEvent(const std::string& id, int32_t position) override;
  absl::StatusOr<std::vector<v1::JobEvent>> AppendEvents(
      const std::string& id, int32_t attempt, const std::vector<v1::JobEvent>& events,
      std::optional<v1::JobState> new_state) override;
  using JobStore::FinishJob;
  absl::StatusOr<std::vector<v1::JobEvent>> FinishJob(const std::string& id, int32_t attempt,
                                                      v1::JobState state,
                                                      const std::vector<v1::JobEvent>& preceding,
                                                      const v1::JobEvent& event) override;
  absl::StatusOr<ReleaseOutcome> ReleaseLostJob(const std::string& id, int32_t attempt,
                                                const std::string& reason, bool count_failure,
                                                int max_failures) override;
  absl::StatusOr<std::vector<std::string>> RequeueInterrupted(const std::string& reason) override;
  absl::StatusOr<std::vector<v1::JobEvent>> EventsSince(const std::string& id, int64_t after_seq,
                                                        int limit) override;
  absl::StatusOr<std::vector<v1::ResultRecord>> Results(const std::string& id) override;

  /// FailedPrecondition when another live server already uses this host
  /// name (it published its workers within `window_ms`): two hosts with one
  /// name would re-queue each other's jobs at restart.
  absl::Status CheckHostNameFree(int64_t window_ms);

  const std::string& host() const override { return options_.host; }
  absl::StatusOr<int> RenewLeases() override;
  absl::StatusOr<std::vector<std::string>> ReclaimExpiredLeases(int max_failures) override;
  absl::Status PublishWorkers(const std::vector<HostWorker>& workers) override;
  absl::StatusOr<std::vector<HostWorker>> PeerWorkers(int64_t max_age_ms) override;
  absl::StatusOr<std::map<std::string, int>> PeerRunningByOwner() override;
  absl::Status SetChangeListener(std::function<void(const std::string&)> on_change) override;
  bool LeadsQueue() override;

 protected:
  SqlJobStore(std::shared_ptr<SqlDb> db, StoreOptions options);

 private:
  std::shared_ptr<SqlDb> db_;
  StoreOptions options_;
};

/// The machine's hostname ("localhost" when unknown).
std::string DefaultHostName();

}  // namespace server
}  // namespace sinkscope
