#include "server/sql_job_store.h"

#include <unistd.h>

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "server/job_transitions.h"
#include "server/sqlite_job_store.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace server {
namespace {

constexpr const char* kJobColumns =
    "id, owner, type, state, request, attempts, create_us, start_us, end_us, error_code, "
    "error_message, last_seq, client_request_id, queue_seq";

constexpr int64_t kQueued = v1::JOB_STATE_QUEUED;
constexpr int64_t kLoading = v1::JOB_STATE_MODEL_LOADING;
constexpr int64_t kRunning = v1::JOB_STATE_RUNNING;

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void SetTimestamp(int64_t micros, google::protobuf::Timestamp* ts) {
  ts->set_seconds(micros / 1000000);
  ts->set_nanos(static_cast<int32_t>((micros % 1000000) * 1000));
}

absl::StatusOr<v1::Job> JobFromRow(const SqlRows& rows, size_t r) {
  v1::Job job;
  job.set_id(rows.Text(r, 0));
  job.set_owner(rows.Text(r, 1));
  job.set_type(static_cast<v1::JobType>(rows.Int(r, 2)));
  job.set_state(static_cast<v1::JobState>(rows.Int(r, 3)));
  if (!job.mutable_request()->ParseFromString(rows.Text(r, 4))) {
    return absl::DataLossError(absl::StrCat("job ", job.id(), ": stored request is corrupt"));
  }
  job.set_attempts(static_cast<int32_t>(rows.Int(r, 5)));
  SetTimestamp(rows.Int(r, 6), job.mutable_create_time());
  if (rows.Int(r, 7) > 0) SetTimestamp(rows.Int(r, 7), job.mutable_start_time());
  if (rows.Int(r, 8) > 0) SetTimestamp(rows.Int(r, 8), job.mutable_end_time());
  if (job.state() == v1::JOB_STATE_FAILED) {
    job.mutable_error()->set_code(static_cast<int32_t>(rows.Int(r, 9)));
    job.mutable_error()->set_message(rows.Text(r, 10));
  }
  job.set_last_event_seq(rows.Int(r, 11));
  job.set_client_request_id(rows.Text(r, 12));
  return job;
}

absl::StatusOr<std::vector<v1::JobEvent>> EventsFromRows(const SqlRows& rows,
                                                         const std::string& id) {
  std::vector<v1::JobEvent> out;
  out.reserve(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    v1::JobEvent e;
    if (!e.ParseFromString(rows.Text(r, 0))) {
      return absl::DataLossError(absl::StrCat("job ", id, ": stored event is corrupt"));
    }
    out.push_back(std::move(e));
  }
  return out;
}

/// Runs `body` in a transaction, committing when it succeeds; retried (a
/// few times) when the database aborts it (deadlock, serialization).
template <typename Body>
auto Transact(SqlDb& db, Body body, SqlDurability durability = SqlDurability::kDurable)
    -> decltype(body(std::declval<SqlTx&>())) {
  for (int i = 0;; ++i) {
    absl::StatusOr<std::unique_ptr<SqlTx>> tx = db.Begin(durability);
    if (!tx.ok()) return tx.status();
    auto r = body(**tx);
    if (r.ok()) {
      absl::Status c = (*tx)->Commit();
      if (c.ok()) return r;
      r = c;
    }
    if (!absl::IsAborted(r.status()) || i >= 4) return r;
  }
}

/// What the transitions need of a job's row, locked for the transaction.
absl::StatusOr<JobFacts> LockFacts(SqlDb& db, SqlTx& tx, const std::string& id) {
  ASSIGN_OR_RETURN(auto rows, tx.Query(absl::StrCat("SELECT state, attempts, failures FROM jobs "
                                           "WHERE id = $1",
                                           db.ForUpdateSql()),
                              {id}));
  if (rows.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  JobFacts f;
  f.id = id;
  f.state = static_cast<v1::JobState>(rows.Int(0, 0));
  f.attempts = static_cast<int32_t>(rows.Int(0, 1));
  f.failures = static_cast<int32_t>(rows.Int(0, 2));
  return f;
}

absl::StatusOr<v1::Job> ReadJob(SqlTx& tx, const std::string& id) {
  ASSIGN_OR_RETURN(auto rows, tx.Query(absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id = $1"), {id}));
  if (rows.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return JobFromRow(rows, 0);
}

/// Appends `events` with consecutive seqs (one UPDATE of the job's last_seq,
/// under its row lock, for all of them), NOTIFYs, and returns them as stored.
absl::StatusOr<std::vector<v1::JobEvent>> InsertEvents(SqlDb& db, SqlTx& tx, const std::string& id,
                                                       int32_t attempt,
                                                       const std::vector<v1::JobEvent>& events) {
  const int64_t n = static_cast<int64_t>(events.size());
  ASSIGN_OR_RETURN(auto seqs, tx.Query("UPDATE jobs SET last_seq = last_seq + $1 WHERE id = $2 "
                              "RETURNING last_seq",
                              {n, id}));
  if (seqs.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  const int64_t first_seq = seqs.Int(0, 0) - n + 1;
  const int64_t now = NowMicros();
  std::vector<v1::JobEvent> out;
  out.reserve(events.size());
  for (int64_t i = 0; i < n; ++i) {
    v1::JobEvent stored = events[static_cast<size_t>(i)];
    stored.set_job_id(id);
    stored.set_seq(first_seq + i);
    stored.set_attempt(attempt);
    SetTimestamp(now, stored.mutable_time());
    ASSIGN_OR_RETURN(auto ins, tx.Query("INSERT INTO events (job_id, seq, attempt, is_result, time_us, payload) "
                               "VALUES ($1, $2, $3, $4, $5, $6)",
                               {id, first_seq + i, int64_t{attempt}, int64_t{stored.has_result() ? 1 : 0},
                                now, SqlBytes{stored.SerializeAsString()}}));
    (void)ins;
    out.push_back(std::move(stored));
  }
  RETURN_IF_ERROR(db.NotifyOnCommit(tx, kChangeChannel, id));
  return out;
}

absl::StatusOr<v1::JobEvent> InsertEvent(SqlDb& db, SqlTx& tx, const std::string& id,
                                         int32_t attempt, const v1::JobEvent& event) {
  ASSIGN_OR_RETURN(auto stored, InsertEvents(db, tx, id, attempt, {event}));
  return std::move(stored.front());
}

absl::StatusOr<int32_t> QueuePosition(SqlTx& tx, const std::string& id) {
  ASSIGN_OR_RETURN(auto rows, tx.Query("SELECT COUNT(*) FROM jobs WHERE state = $1 AND queue_seq < "
                              "(SELECT queue_seq FROM jobs WHERE id = $2)",
                              {kQueued, id}));
  return static_cast<int32_t>(rows.Int(0, 0)) + 1;
}

absl::Status InsertQueuedEvent(SqlDb& db, SqlTx& tx, const std::string& id, int32_t attempt) {
  ASSIGN_OR_RETURN(auto position, QueuePosition(tx, id));
  v1::JobEvent queued;
  queued.mutable_queued()->set_position(position);
  return InsertEvent(db, tx, id, attempt, queued).status();
}

/// Applies DecideRelease to a locked job.
absl::StatusOr<ReleaseOutcome> ReleaseLocked(SqlDb& db, SqlTx& tx, const JobFacts& facts,
                                             int32_t attempt, const std::string& reason,
                                             bool count_failure, int max_failures) {
  const ReleaseDecision d = DecideRelease(facts, attempt, reason, count_failure, max_failures);
  if (d.outcome == ReleaseOutcome::kAlreadyFinished) return d.outcome;
  RETURN_IF_ERROR(InsertEvent(db, tx, facts.id, attempt, d.event).status());
  if (d.outcome == ReleaseOutcome::kFailed) {
    RETURN_IF_ERROR(tx.Query("UPDATE jobs SET state = $1, failures = $2, end_us = $3, "
                                   "error_code = $4, error_message = $5, lease_expires_us = 0 "
                                   "WHERE id = $6",
                                   {int64_t{v1::JOB_STATE_FAILED}, int64_t{d.failures}, NowMicros(),
                                    int64_t{d.event.failed().code()}, d.event.failed().message(),
                                    facts.id})
                              .status());
    return d.outcome;
  }
  RETURN_IF_ERROR(tx.Query("UPDATE jobs SET state = $1, failures = $2, lease_host = '', "
                                 "lease_expires_us = 0 WHERE id = $3",
                                 {kQueued, int64_t{d.failures}, facts.id})
                            .status());
  RETURN_IF_ERROR(InsertQueuedEvent(db, tx, facts.id, attempt));
  return d.outcome;
}

}  // namespace

std::string DefaultHostName() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

SqlJobStore::SqlJobStore(std::shared_ptr<SqlDb> db, StoreOptions options)
    : db_(std::move(db)), options_(std::move(options)) {
  if (options_.host.empty()) options_.host = DefaultHostName();
  if (options_.lease_ms <= 0) options_.lease_ms = 30000;
}

std::unique_ptr<SqlJobStore> SqlJobStore::Create(std::shared_ptr<SqlDb> db, StoreOptions options) {
  return std::unique_ptr<SqlJobStore>(new SqlJobStore(std::move(db), std::move(options)));
}

absl::StatusOr<std::unique_ptr<SqlJobStore>> SqlJobStore::Open(const std::string& database,
                                                               StoreOptions options,
                                                               bool sqlite_sync_full) {
  absl::StatusOr<std::shared_ptr<SqlDb>> db = OpenSqlDb(database, sqlite_sync_full);
  if (!db.ok()) return db.status();
  return Create(*std::move(db), std::move(options));
}

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path,
                                                                     bool sync_full,
                                                                     StoreOptions options) {
  if (IsPostgresUrl(path)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a SQLite file"));
  }
  absl::StatusOr<std::shared_ptr<SqlDb>> db = OpenSqlDb(path, sync_full);
  if (!db.ok()) return db.status();
  return std::unique_ptr<SqliteJobStore>(new SqliteJobStore(*std::move(db), std::move(options)));
}

absl::StatusOr<v1::Job> SqlJobStore::CreateJob(const NewJob& job, bool* created) {
  SqlDb& db = *db_;
  bool made = false;
  for (int round = 0;; ++round) {
    absl::StatusOr<v1::Job> out = Transact(db, [&](SqlTx& tx) -> absl::StatusOr<v1::Job> {
      made = false;
      if (!job.client_request_id.empty()) {
        ASSIGN_OR_RETURN(auto rows, tx.Query("SELECT id FROM jobs WHERE owner = $1 AND client_request_id = $2",
                                    {job.owner, job.client_request_id}));
        if (!rows.empty()) return ReadJob(tx, rows.Text(0, 0));
      }
      ASSIGN_OR_RETURN(auto next, tx.Query(db.dialect() == SqlDialect::kPostgres
                                      ? "SELECT nextval('jobs_queue_seq')"
                                      : "SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM jobs"));
      const int64_t queue_seq = next.Int(0, 0);
      RETURN_IF_ERROR(
          tx.Query("INSERT INTO jobs (id, queue_seq, owner, type, state, request, create_us, "
                   "client_request_id, priority) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                   {job.id, queue_seq, job.owner, int64_t{job.type}, kQueued,
                    SqlBytes{job.request.SerializeAsString()}, NowMicros(), job.client_request_id,
                    int64_t{job.priority}})
              .status());
      RETURN_IF_ERROR(InsertQueuedEvent(db, tx, job.id, 0));
      made = true;
      return ReadJob(tx, job.id);
    });
    // Another host inserted the same client_request_id meanwhile: read theirs.
    if (absl::IsAlreadyExists(out.status()) && !job.client_request_id.empty() && round == 0) continue;
    if (out.ok() && created) *created = made;
    return out;
  }
}

absl::StatusOr<v1::Job> SqlJobStore::GetJob(const std::string& id) {
  return Transact(*db_, [&](SqlTx& tx) { return ReadJob(tx, id); });
}

absl::StatusOr<JobPage> SqlJobStore::ListJobs(const JobFilter& filter) {
  std::string sql = absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE 1 = 1");
  std::vector<SqlParam> params;
  auto next = [&params](SqlParam p) {
    params.push_back(std::move(p));
    return absl::StrCat("$", params.size());
  };
  if (!filter.owner.empty()) absl::StrAppend(&sql, " AND owner = ", next(filter.owner));
  if (filter.before_queue_seq > 0) {
    absl::StrAppend(&sql, " AND queue_seq < ", next(filter.before_queue_seq));
  }
  if (!filter.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < filter.states.size(); ++i) {
      absl::StrAppend(&sql, i ? ", " : "", next(int64_t{filter.states[i]}));
    }
    sql += ")";
  }
  absl::StrAppend(&sql, " ORDER BY queue_seq DESC LIMIT ", next(int64_t{filter.limit} + 1));
  return Transact(*db_, [&](SqlTx& tx) -> absl::StatusOr<JobPage> {
    ASSIGN_OR_RETURN(auto rows, tx.Query(sql, params));
    JobPage page;
    int64_t last_seq = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      if (static_cast<int>(page.jobs.size()) == filter.limit) {
        page.next_before_queue_seq = last_seq;
        break;
      }
      absl::StatusOr<v1::Job> job = JobFromRow(rows, r);
      if (!job.ok()) return job.status();
      last_seq = rows.Int(r, 13);
      page.jobs.push_back(*std::move(job));
    }
    return page;
  });
}

absl::StatusOr<std::vector<QueuedJob>> SqlJobStore::ListQueued() {
  return Transact(*db_, [&](SqlTx& tx) -> absl::StatusOr<std::vector<QueuedJob>> {
    ASSIGN_OR_RETURN(auto rows, tx.Query("SELECT id, owner, queue_seq, attempts, priority FROM jobs "
                                "WHERE state = $1 ORDER BY queue_seq",
                                {kQueued}));
    std::vector<QueuedJob> out;
    out.reserve(rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      QueuedJob job;
      job.id = rows.Text(r, 0);
      job.owner = rows.Text(r, 1);
      job.queue_seq = rows.Int(r, 2);
      job.attempts = static_cast<int32_t>(rows.Int(r, 3));
      job.priority = static_cast<int32_t>(rows.Int(r, 4));
      out.push_back(std::move(job));
    }
    return out;
  });
}

// Group commit: a claim lost with a power cut leaves the job QUEUED (or
// RUNNING under an expired lease), and it is dispatched again; the job itself
// was made durable when it was accepted.
absl::StatusOr<v1::Job> SqlJobStore::ClaimJob(const std::string& id, const std::string& worker) {
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<v1::Job> {
    // SKIP LOCKED: a row another host is claiming (or changing) right now
    // is not ours to wait for; the scheduler tries its next choice.
    ASSIGN_OR_RETURN(auto rows, tx.Query(absl::StrCat("SELECT state, attempts, failures FROM jobs "
                                             "WHERE id = $1 AND state = $2",
                                             db.SkipLockedSql()),
                                {id, kQueued}));
    if (rows.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " is not queued"));
    }
    JobFacts facts{id, static_cast<v1::JobState>(rows.Int(0, 0)),
                   static_cast<int32_t>(rows.Int(0, 1)), static_cast<int32_t>(rows.Int(0, 2))};
    RETURN_IF_ERROR(CheckClaim(facts));
    RETURN_IF_ERROR(
        tx.Query(absl::StrCat("UPDATE jobs SET state = $1, attempts = attempts + 1, start_us = $2, "
                              "worker = $3, lease_host = $4, lease_expires_us = ",
                              db.NowMicrosSql(), " + $5 WHERE id = $6"),
                 {kLoading, NowMicros(), worker, options_.host, options_.lease_ms * 1000, id})
            .status());
    RETURN_IF_ERROR(db.NotifyOnCommit(tx, kChangeChannel, id));
    return ReadJob(tx, id);
  }, SqlDurability::kGroupCommit);
}

absl::StatusOr<std::vector<v1::JobEvent>> SqlJobStore::AppendEvents(
    const std::string& id, int32_t attempt, const std::vector<v1::JobEvent>& events,
    std::optional<v1::JobState> new_state) {
  if (events.empty()) return absl::InternalError("AppendEvents needs at least one event");
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<std::vector<v1::JobEvent>> {
    ASSIGN_OR_RETURN(auto facts, LockFacts(db, tx, id));
    RETURN_IF_ERROR(CheckAppend(facts, attempt, new_state));
    ASSIGN_OR_RETURN(auto stored, InsertEvents(db, tx, id, attempt, events));
    if (new_state.has_value() && *new_state != facts.state) {
      RETURN_IF_ERROR(
          tx.Query("UPDATE jobs SET state = $1 WHERE id = $2", {int64_t{*new_state}, id}).status());
    }
    return stored;
  }, SqlDurability::kGroupCommit);
}

absl::StatusOr<v1::JobEvent> SqlJobStore::AppendQueuedEvent(const std::string& id,
                                                            int32_t position) {
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<v1::JobEvent> {
    ASSIGN_OR_RETURN(auto facts, LockFacts(db, tx, id));
    ASSIGN_OR_RETURN(auto attempt, CheckQueuedEvent(facts));
    v1::JobEvent event;
    event.mutable_queued()->set_position(position);
    return InsertEvent(db, tx, id, attempt, event);
  }, SqlDurability::kGroupCommit);
}

absl::StatusOr<std::vector<v1::JobEvent>> SqlJobStore::FinishJob(
    const std::string& id, int32_t attempt, v1::JobState state,
    const std::vector<v1::JobEvent>& preceding, const v1::JobEvent& event) {
  if (!IsTerminal(state)) return absl::InternalError("FinishJob needs a terminal state");
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<std::vector<v1::JobEvent>> {
    ASSIGN_OR_RETURN(auto facts, LockFacts(db, tx, id));
    ASSIGN_OR_RETURN(auto event_attempt, CheckFinish(facts, attempt, state));
    std::vector<v1::JobEvent> all = preceding;
    all.push_back(event);
    ASSIGN_OR_RETURN(auto stored, InsertEvents(db, tx, id, event_attempt, all));
    RETURN_IF_ERROR(
        tx.Query("UPDATE jobs SET state = $1, end_us = $2, error_code = $3, error_message = $4, "
                 "result_attempt = $5, lease_expires_us = 0 WHERE id = $6",
                 {int64_t{state}, NowMicros(),
                  int64_t{event.has_failed() ? event.failed().code() : 0},
                  event.has_failed() ? event.failed().message() : std::string(),
                  int64_t{state == v1::JOB_STATE_COMPLETED ? event_attempt : 0}, id})
            .status());
    return stored;
  });
}

absl::StatusOr<ReleaseOutcome> SqlJobStore::ReleaseLostJob(const std::string& id, int32_t attempt,
                                                           const std::string& reason,
                                                           bool count_failure, int max_failures) {
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<ReleaseOutcome> {
    ASSIGN_OR_RETURN(auto facts, LockFacts(db, tx, id));
    return ReleaseLocked(db, tx, facts, attempt, reason, count_failure, max_failures);
  });
}

absl::StatusOr<std::vector<std::string>> SqlJobStore::RequeueInterrupted(
    const std::string& reason) {
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<std::vector<std::string>> {
    // Ours (or from before leases); another host's live lease is its business.
    ASSIGN_OR_RETURN(auto rows, tx.Query(absl::StrCat("SELECT id, state, attempts, failures FROM jobs "
                                             "WHERE state IN ($1, $2) AND (lease_host = $3 OR "
                                             "lease_host = '' OR lease_expires_us < ",
                                             db.NowMicrosSql(), ") ORDER BY queue_seq",
                                             db.SkipLockedSql()),
                                {kLoading, kRunning, options_.host}));
    std::vector<std::string> ids;
    for (size_t r = 0; r < rows.size(); ++r) {
      JobFacts facts{rows.Text(r, 0), static_cast<v1::JobState>(rows.Int(r, 1)),
                     static_cast<int32_t>(rows.Int(r, 2)), static_cast<int32_t>(rows.Int(r, 3))};
      ASSIGN_OR_RETURN(auto outcome, ReleaseLocked(db, tx, facts, facts.attempts, reason, false, 0));
      if (outcome == ReleaseOutcome::kRequeued) ids.push_back(facts.id);
    }
    return ids;
  });
}

absl::StatusOr<std::vector<v1::JobEvent>> SqlJobStore::EventsSince(const std::string& id,
                                                                   int64_t after_seq, int limit) {
  return Transact(*db_, [&](SqlTx& tx) -> absl::StatusOr<std::vector<v1::JobEvent>> {
    ASSIGN_OR_RETURN(auto rows, tx.Query("SELECT payload FROM events WHERE job_id = $1 AND seq > $2 "
                                "ORDER BY seq LIMIT $3",
                                {id, after_seq, int64_t{limit}}));
    return EventsFromRows(rows, id);
  });
}

absl::StatusOr<std::vector<v1::ResultRecord>> SqlJobStore::Results(const std::string& id) {
  return Transact(*db_, [&](SqlTx& tx) -> absl::StatusOr<std::vector<v1::ResultRecord>> {
    ASSIGN_OR_RETURN(auto rows, tx.Query("SELECT e.payload FROM events e JOIN jobs j ON j.id = e.job_id "
                                "WHERE e.job_id = $1 AND e.is_result = 1 AND j.result_attempt > 0 "
                                "AND e.attempt = j.result_attempt ORDER BY e.seq",
                                {id}));
    ASSIGN_OR_RETURN(auto events, EventsFromRows(rows, id));
    std::vector<v1::ResultRecord> out;
    out.reserve(events.size());
    for (v1::JobEvent& e : events) out.push_back(std::move(*e.mutable_result()));
    return out;
  });
}

absl::StatusOr<int> SqlJobStore::RenewLeases() {
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<int> {
    ASSIGN_OR_RETURN(auto r, tx.Query(absl::StrCat("UPDATE jobs SET lease_expires_us = ", db.NowMicrosSql(),
                                          " + $1 WHERE lease_host = $2 AND state IN ($3, $4)"),
                             {options_.lease_ms * 1000, options_.host, kLoading, kRunning}));
    return static_cast<int>(r.affected());
  }, SqlDurability::kGroupCommit);
}

absl::StatusOr<std::vector<std::string>> SqlJobStore::ReclaimExpiredLeases(int max_failures) {
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<std::vector<std::string>> {
    ASSIGN_OR_RETURN(auto rows,
                 tx.Query(absl::StrCat("SELECT id, state, attempts, failures, lease_host, ",
                                       db.NowMicrosSql(), " - lease_expires_us FROM jobs "
                                       "WHERE state IN ($1, $2) AND lease_host <> '' AND "
                                       "lease_expires_us < ", db.NowMicrosSql(),
                                       " ORDER BY queue_seq LIMIT 64", db.SkipLockedSql()),
                          {kLoading, kRunning}));
    std::vector<std::string> ids;
    for (size_t r = 0; r < rows.size(); ++r) {
      JobFacts facts{rows.Text(r, 0), static_cast<v1::JobState>(rows.Int(r, 1)),
                     static_cast<int32_t>(rows.Int(r, 2)), static_cast<int32_t>(rows.Int(r, 3))};
      const std::string reason =
          absl::StrCat("host ", rows.Text(r, 4), " stopped renewing its lease (expired ",
                       rows.Int(r, 5) / 1000, " ms ago)");
      ASSIGN_OR_RETURN(auto outcome, ReleaseLocked(db, tx, facts, facts.attempts, reason, true, max_failures));
      if (outcome != ReleaseOutcome::kAlreadyFinished) ids.push_back(facts.id);
    }
    return ids;
  });
}

absl::Status SqlJobStore::PublishWorkers(const std::vector<HostWorker>& workers) {
  SqlDb& db = *db_;
  absl::StatusOr<bool> r = Transact(db, [&](SqlTx& tx) -> absl::StatusOr<bool> {
    RETURN_IF_ERROR(
        tx.Query("DELETE FROM host_workers WHERE host = $1", {options_.host}).status());
    for (const HostWorker& w : workers) {
      RETURN_IF_ERROR(
          tx.Query(absl::StrCat("INSERT INTO host_workers (host, worker, budget_bytes, models, busy, "
                                "seen_us) VALUES ($1, $2, $3, $4, $5, ",
                                db.NowMicrosSql(), ")"),
                   {options_.host, w.worker, w.budget_bytes, absl::StrJoin(w.models, "\n"),
                    int64_t{w.busy ? 1 : 0}})
              .status());
    }
    return true;
  }, SqlDurability::kGroupCommit);
  return r.status();
}

absl::Status SqlJobStore::CheckHostNameFree(int64_t window_ms) {
  SqlDb& db = *db_;
  absl::StatusOr<int64_t> age = Transact(db, [&](SqlTx& tx) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(auto rows, tx.Query(absl::StrCat("SELECT ", db.NowMicrosSql(), " - MAX(seen_us) FROM "
                                             "host_workers WHERE host = $1 HAVING COUNT(*) > 0"),
                                {options_.host}));
    return rows.empty() ? int64_t{-1} : rows.Int(0, 0) / 1000;
  });
  if (!age.ok()) return age.status();
  if (*age >= 0 && *age < window_ms) {
    return absl::FailedPreconditionError(absl::StrCat(
        "another server with host_id \"", options_.host, "\" published its workers ", *age,
        " ms ago in ", db.name(), "; give every host its own host_id"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<HostWorker>> SqlJobStore::PeerWorkers(int64_t max_age_ms) {
  SqlDb& db = *db_;
  return Transact(db, [&](SqlTx& tx) -> absl::StatusOr<std::vector<HostWorker>> {
    ASSIGN_OR_RETURN(auto rows, tx.Query(absl::StrCat("SELECT host, worker, budget_bytes, models, busy, "
                                             "seen_us FROM host_workers WHERE host <> $1 AND "
                                             "seen_us > ",
                                             db.NowMicrosSql(), " - $2 ORDER BY host, worker"),
                                {options_.host, max_age_ms * 1000}));
    std::vector<HostWorker> out;
    for (size_t r = 0; r < rows.size(); ++r) {
      HostWorker w;
      w.host = rows.Text(r, 0);
      w.worker = rows.Text(r, 1);
      w.budget_bytes = rows.Int(r, 2);
      for (absl::string_view m : absl::StrSplit(rows.Text(r, 3), '\n', absl::SkipEmpty())) {
        w.models.insert(std::string(m));
      }
      w.busy = rows.Int(r, 4) != 0;
      w.seen_us = rows.Int(r, 5);
      out.push_back(std::move(w));
    }
    return out;
  });
}

absl::StatusOr<std::map<std::string, int>> SqlJobStore::PeerRunningByOwner() {
  return Transact(*db_, [&](SqlTx& tx) -> absl::StatusOr<std::map<std::string, int>> {
    ASSIGN_OR_RETURN(auto rows, tx.Query("SELECT owner, COUNT(*) FROM jobs WHERE state IN ($1, $2) AND "
                                "lease_host <> $3 GROUP BY owner",
                                {kLoading, kRunning, options_.host}));
    std::map<std::string, int> out;
    for (size_t r = 0; r < rows.size(); ++r) out[rows.Text(r, 0)] = static_cast<int>(rows.Int(r, 1));
    return out;
  });
}

absl::Status SqlJobStore::SetChangeListener(std::function<void(const std::string&)> on_change) {
  return db_->Listen(kChangeChannel, std::move(on_change));
}

bool SqlJobStore::LeadsQueue() { return db_->TryLeadership(); }

}  // namespace server
}  // namespace sinkscope
