#include "server/sqlite_job_store.h"

#include <sqlite3.h>

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sinkscope {
namespace server {
namespace {

constexpr int kSchemaVersion = 1;

// Plain SQL shared by SQLite and PostgreSQL (no SQLite-only syntax besides
// the PRAGMAs in Open).
constexpr const char* kSchema[] = {
    R"sql(CREATE TABLE IF NOT EXISTS jobs (
      id TEXT PRIMARY KEY,
      queue_seq INTEGER NOT NULL UNIQUE,
      owner TEXT NOT NULL,
      type INTEGER NOT NULL,
      state INTEGER NOT NULL,
      request BLOB NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0,
      failures INTEGER NOT NULL DEFAULT 0,
      create_us INTEGER NOT NULL,
      start_us INTEGER NOT NULL DEFAULT 0,
      end_us INTEGER NOT NULL DEFAULT 0,
      error_code INTEGER NOT NULL DEFAULT 0,
      error_message TEXT NOT NULL DEFAULT '',
      last_seq INTEGER NOT NULL DEFAULT 0,
      result_attempt INTEGER NOT NULL DEFAULT 0,
      client_request_id TEXT NOT NULL DEFAULT '',
      worker TEXT NOT NULL DEFAULT '',
      priority INTEGER NOT NULL DEFAULT 0)
    )sql",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, queue_seq)",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, queue_seq)",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_client_request ON jobs (owner, client_request_id) "
    "WHERE client_request_id <> ''",
    R"sql(CREATE TABLE IF NOT EXISTS events (
      job_id TEXT NOT NULL REFERENCES jobs (id),
      seq INTEGER NOT NULL,
      attempt INTEGER NOT NULL,
      is_result INTEGER NOT NULL,
      time_us INTEGER NOT NULL,
      payload BLOB NOT NULL,
      PRIMARY KEY (job_id, seq))
    )sql",
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
};

constexpr const char* kJobColumns =
    "id, owner, type, state, request, attempts, create_us, start_us, end_us, error_code, "
    "error_message, last_seq, client_request_id, queue_seq";

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void SetTimestamp(int64_t micros, google::protobuf::Timestamp* ts) {
  ts->set_seconds(micros / 1000000);
  ts->set_nanos(static_cast<int32_t>((micros % 1000000) * 1000));
}

/// RAII prepared statement with typed binds and columns.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  absl::Status prepare_status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  /// Steps once: true for a row, false when done; errors as Status.
  absl::StatusOr<bool> Step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return absl::InternalError(absl::StrCat("sqlite step: ", sqlite3_errmsg(db_)));
  }
  absl::Status Run() {
    absl::StatusOr<bool> r = Step();
    return r.ok() ? absl::OkStatus() : r.status();
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(stmt_, col))
             : std::string();
  }
  std::string Blob(int col) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col))
             : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

#define STORE_RETURN_IF_ERROR(expr) \
  do {                              \
    absl::Status _s = (expr);       \
    if (!_s.ok()) return _s;        \
  } while (0)

/// BEGIN IMMEDIATE ... COMMIT, rolled back unless Commit() succeeded.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    char* err = nullptr;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, &err) != SQLITE_OK) {
      status_ = absl::UnavailableError(absl::StrCat("sqlite begin: ", err ? err : "?"));
      sqlite3_free(err);
    } else {
      open_ = true;
    }
  }
  ~Transaction() {
    if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  const absl::Status& status() const { return status_; }
  absl::Status Commit() {
    char* err = nullptr;
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, &err) != SQLITE_OK) {
      absl::Status s = absl::UnavailableError(absl::StrCat("sqlite commit: ", err ? err : "?"));
      sqlite3_free(err);
      return s;
    }
    open_ = false;
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  bool open_ = false;
  absl::Status status_;
};

absl::StatusOr<v1::Job> JobFromRow(const Stmt& s) {
  v1::Job job;
  job.set_id(s.Text(0));
  job.set_owner(s.Text(1));
  job.set_type(static_cast<v1::JobType>(s.Int(2)));
  job.set_state(static_cast<v1::JobState>(s.Int(3)));
  if (!job.mutable_request()->ParseFromString(s.Blob(4))) {
    return absl::DataLossError(absl::StrCat("job ", job.id(), ": stored request is corrupt"));
  }
  job.set_attempts(static_cast<int32_t>(s.Int(5)));
  SetTimestamp(s.Int(6), job.mutable_create_time());
  if (s.Int(7) > 0) SetTimestamp(s.Int(7), job.mutable_start_time());
  if (s.Int(8) > 0) SetTimestamp(s.Int(8), job.mutable_end_time());
  if (job.state() == v1::JOB_STATE_FAILED) {
    job.mutable_error()->set_code(static_cast<int32_t>(s.Int(9)));
    job.mutable_error()->set_message(s.Text(10));
  }
  job.set_last_event_seq(s.Int(11));
  job.set_client_request_id(s.Text(12));
  return job;
}

/// Whether `attempt` is the job's attempt in progress (claimed, not finished).
bool IsLiveAttempt(const v1::Job& job, int32_t attempt) {
  return !IsTerminal(job.state()) && job.state() != v1::JOB_STATE_QUEUED &&
         job.attempts() == attempt;
}

/// The events of job `id` that `s` selects (the payload in column 0), in order.
absl::StatusOr<std::vector<v1::JobEvent>> ReadEvents(Stmt& s, const std::string& id) {
  std::vector<v1::JobEvent> out;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    v1::JobEvent e;
    if (!e.ParseFromString(s.Blob(0))) {
      return absl::DataLossError(absl::StrCat("job ", id, ": stored event is corrupt"));
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path,
                                                                     bool sync_full) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("cannot open database ", path, ": ", msg));
  }
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db));
  sqlite3_busy_timeout(db, 5000);
  STORE_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  STORE_RETURN_IF_ERROR(store->Exec(sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
  store->sync_full_ = sync_full;
  STORE_RETURN_IF_ERROR(store->Exec("PRAGMA foreign_keys=ON"));
  for (const char* sql : kSchema) STORE_RETURN_IF_ERROR(store->Exec(sql));
  {
    // Databases created before job priorities: add the column.
    Stmt cols(db, "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'priority'");
    STORE_RETURN_IF_ERROR(cols.prepare_status());
    absl::StatusOr<bool> row = cols.Step();
    if (!row.ok()) return row.status();
    if (cols.Int(0) == 0) {
      STORE_RETURN_IF_ERROR(
          store->Exec("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0"));
    }
  }
  {
    Stmt s(db, "SELECT version FROM schema_version");
    STORE_RETURN_IF_ERROR(s.prepare_status());
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) {
      Stmt ins(db, "INSERT INTO schema_version (version) VALUES (?)");
      ins.Bind(1, int64_t{kSchemaVersion});
      STORE_RETURN_IF_ERROR(ins.Run());
    } else if (s.Int(0) != kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "database ", path, " has schema version ", s.Int(0), ", this server needs ", kSchemaVersion));
    }
  }
  return store;
}

SqliteJobStore::~SqliteJobStore() { sqlite3_close(db_); }

absl::Status SqliteJobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s = absl::InternalError(absl::StrCat("sqlite: ", err ? err : "?", " in: ", sql));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> SqliteJobStore::GetJobLocked(const std::string& id) {
  Stmt s(db_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id = ?"));
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, id);
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return JobFromRow(s);
}

absl::StatusOr<int32_t> SqliteJobStore::QueuePositionLocked(int64_t queue_seq) {
  Stmt s(db_, "SELECT COUNT(*) FROM jobs WHERE state = ? AND queue_seq < ?");
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, int64_t{v1::JOB_STATE_QUEUED}).Bind(2, queue_seq);
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  return static_cast<int32_t>(s.Int(0)) + 1;
}

absl::StatusOr<v1::JobEvent> SqliteJobStore::InsertEventLocked(const std::string& id,
                                                              int32_t attempt,
                                                              const v1::JobEvent& event) {
  Stmt last(db_, "SELECT last_seq FROM jobs WHERE id = ?");
  STORE_RETURN_IF_ERROR(last.prepare_status());
  last.Bind(1, id);
  absl::StatusOr<bool> row = last.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  const int64_t seq = last.Int(0) + 1;
  const int64_t now = NowMicros();
  v1::JobEvent stored = event;
  stored.set_job_id(id);
  stored.set_seq(seq);
  stored.set_attempt(attempt);
  SetTimestamp(now, stored.mutable_time());
  Stmt ins(db_,
           "INSERT INTO events (job_id, seq, attempt, is_result, time_us, payload) "
           "VALUES (?, ?, ?, ?, ?, ?)");
  STORE_RETURN_IF_ERROR(ins.prepare_status());
  ins.Bind(1, id).Bind(2, seq).Bind(3, int64_t{attempt}).Bind(4, int64_t{stored.has_result()});
  ins.Bind(5, now).BindBlob(6, stored.SerializeAsString());
  STORE_RETURN_IF_ERROR(ins.Run());
  Stmt upd(db_, "UPDATE jobs SET last_seq = ? WHERE id = ?");
  STORE_RETURN_IF_ERROR(upd.prepare_status());
  upd.Bind(1, seq).Bind(2, id);
  STORE_RETURN_IF_ERROR(upd.Run());
  return stored;
}

absl::Status SqliteJobStore::InsertQueuedEventLocked(const std::string& id, int32_t attempt,
                                                     int64_t queue_seq) {
  absl::StatusOr<int32_t> position = QueuePositionLocked(queue_seq);
  if (!position.ok()) return position.status();
  v1::JobEvent queued;
  queued.mutable_queued()->set_position(*position);
  absl::StatusOr<v1::JobEvent> ev = InsertEventLocked(id, attempt, queued);
  return ev.ok() ? absl::OkStatus() : ev.status();
}

absl::StatusOr<v1::Job> SqliteJobStore::CreateJob(const NewJob& job, bool* created) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  STORE_RETURN_IF_ERROR(tx.status());
  if (!job.client_request_id.empty()) {
    Stmt s(db_, "SELECT id FROM jobs WHERE owner = ? AND client_request_id = ?");
    STORE_RETURN_IF_ERROR(s.prepare_status());
    s.Bind(1, job.owner).Bind(2, job.client_request_id);
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (*row) {
      if (created) *created = false;
      return GetJobLocked(s.Text(0));
    }
  }
  Stmt next(db_, "SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM jobs");
  STORE_RETURN_IF_ERROR(next.prepare_status());
  absl::StatusOr<bool> row = next.Step();
  if (!row.ok()) return row.status();
  const int64_t queue_seq = next.Int(0);
  Stmt ins(db_,
           "INSERT INTO jobs (id, queue_seq, owner, type, state, request, create_us, "
           "client_request_id, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
  STORE_RETURN_IF_ERROR(ins.prepare_status());
  ins.Bind(1, job.id).Bind(2, queue_seq).Bind(3, job.owner).Bind(4, int64_t{job.type});
  ins.Bind(5, int64_t{v1::JOB_STATE_QUEUED}).BindBlob(6, job.request.SerializeAsString());
  ins.Bind(7, NowMicros()).Bind(8, job.client_request_id).Bind(9, int64_t{job.priority});
  STORE_RETURN_IF_ERROR(ins.Run());
  STORE_RETURN_IF_ERROR(InsertQueuedEventLocked(job.id, 0, queue_seq));
  absl::StatusOr<v1::Job> out = GetJobLocked(job.id);
  if (!out.ok()) return out.status();
  STORE_RETURN_IF_ERROR(tx.Commit());
  if (created) *created = true;
  return out;
}

absl::StatusOr<v1::Job> SqliteJobStore::GetJob(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return GetJobLocked(id);
}

absl::StatusOr<JobPage> SqliteJobStore::ListJobs(const JobFilter& filter) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string sql = absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE 1 = 1");
  if (!filter.owner.empty()) sql += " AND owner = ?";
  if (filter.before_queue_seq > 0) sql += " AND queue_seq < ?";
  if (!filter.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < filter.states.size(); ++i) sql += i ? ", ?" : "?";
    sql += ")";
  }
  sql += " ORDER BY queue_seq DESC LIMIT ?";
  Stmt s(db_, sql);
  STORE_RETURN_IF_ERROR(s.prepare_status());
  int i = 1;
  if (!filter.owner.empty()) s.Bind(i++, filter.owner);
  if (filter.before_queue_seq > 0) s.Bind(i++, filter.before_queue_seq);
  for (v1::JobState st : filter.states) s.Bind(i++, int64_t{st});
  s.Bind(i++, int64_t{filter.limit} + 1);
  JobPage page;
  int64_t last_seq = 0;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    if (static_cast<int>(page.jobs.size()) == filter.limit) {
      page.next_before_queue_seq = last_seq;
      break;
    }
    absl::StatusOr<v1::Job> job = JobFromRow(s);
    if (!job.ok()) return job.status();
    last_seq = s.Int(13);
    page.jobs.push_back(*std::move(job));
  }
  return page;
}

absl::StatusOr<std::vector<QueuedJob>> SqliteJobStore::ListQueued() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_,
         "SELECT id, owner, queue_seq, attempts, priority FROM jobs WHERE state = ? "
         "ORDER BY queue_seq");
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, int64_t{v1::JOB_STATE_QUEUED});
  std::vector<QueuedJob> out;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    QueuedJob job;
    job.id = s.Text(0);
    job.owner = s.Text(1);
    job.queue_seq = s.Int(2);
    job.attempts = static_cast<int32_t>(s.Int(3));
    job.priority = static_cast<int32_t>(s.Int(4));
    out.push_back(std::move(job));
  }
  return out;
}

absl::StatusOr<v1::Job> SqliteJobStore::ClaimJob(const std::string& id, const std::string& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  STORE_RETURN_IF_ERROR(tx.status());
  Stmt s(db_,
         "UPDATE jobs SET state = ?, attempts = attempts + 1, start_us = ?, worker = ? "
         "WHERE id = ? AND state = ?");
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, int64_t{v1::JOB_STATE_MODEL_LOADING}).Bind(2, NowMicros()).Bind(3, worker);
  s.Bind(4, id).Bind(5, int64_t{v1::JOB_STATE_QUEUED});
  STORE_RETURN_IF_ERROR(s.Run());
  if (sqlite3_changes(db_) != 1) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " is not queued"));
  }
  absl::StatusOr<v1::Job> job = GetJobLocked(id);
  if (!job.ok()) return job.status();
  STORE_RETURN_IF_ERROR(tx.Commit());
  return job;
}

absl::Status SqliteJobStore::RelaxSyncLocked(bool relaxed) {
  if (!sync_full_ || relaxed == relaxed_) return absl::OkStatus();
  absl::Status s = Exec(relaxed ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL");
  if (s.ok()) relaxed_ = relaxed;
  return s;
}

absl::StatusOr<v1::JobEvent> SqliteJobStore::AppendEvent(const std::string& id, int32_t attempt,
                                                        const v1::JobEvent& event,
                                                        std::optional<v1::JobState> new_state) {
  std::lock_guard<std::mutex> lock(mu_);
  STORE_RETURN_IF_ERROR(RelaxSyncLocked(true));
  struct Restore {
    SqliteJobStore* s;
    ~Restore() { (void)s->RelaxSyncLocked(false); }
  } restore{this};
  Transaction tx(db_);
  STORE_RETURN_IF_ERROR(tx.status());
  absl::StatusOr<v1::Job> job = GetJobLocked(id);
  if (!job.ok()) return job.status();
  if (!IsLiveAttempt(*job, attempt)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " is ", v1::JobState_Name(job->state()), " at attempt ", job->attempts(),
        "; refusing an event of attempt ", attempt));
  }
  absl::StatusOr<v1::JobEvent> stored = InsertEventLocked(id, attempt, event);
  if (!stored.ok()) return stored.status();
  if (new_state.has_value() && *new_state != job->state()) {
    if (IsTerminal(*new_state)) return absl::InternalError("AppendEvent cannot finish a job");
    Stmt s(db_, "UPDATE jobs SET state = ? WHERE id = ?");
    STORE_RETURN_IF_ERROR(s.prepare_status());
    s.Bind(1, int64_t{*new_state}).Bind(2, id);
    STORE_RETURN_IF_ERROR(s.Run());
  }
  STORE_RETURN_IF_ERROR(tx.Commit());
  return stored;
}

absl::StatusOr<v1::JobEvent> SqliteJobStore::AppendQueuedEvent(const std::string& id,
                                                              int32_t position) {
  std::lock_guard<std::mutex> lock(mu_);
  STORE_RETURN_IF_ERROR(RelaxSyncLocked(true));
  struct Restore {
    SqliteJobStore* s;
    ~Restore() { (void)s->RelaxSyncLocked(false); }
  } restore{this};
  Transaction tx(db_);
  STORE_RETURN_IF_ERROR(tx.status());
  absl::StatusOr<v1::Job> job = GetJobLocked(id);
  if (!job.ok()) return job.status();
  if (job->state() != v1::JOB_STATE_QUEUED) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " is not queued"));
  }
  v1::JobEvent event;
  event.mutable_queued()->set_position(position);
  // Events written while queued carry attempt 0 on a first run, else the
  // attempt that was lost (as its Retrying event).
  absl::StatusOr<v1::JobEvent> stored = InsertEventLocked(id, job->attempts(), event);
  if (!stored.ok()) return stored.status();
  STORE_RETURN_IF_ERROR(tx.Commit());
  return stored;
}

absl::StatusOr<v1::JobEvent> SqliteJobStore::FinishJob(const std::string& id, int32_t attempt,
                                                      v1::JobState state,
                                                      const v1::JobEvent& event) {
  if (!IsTerminal(state)) return absl::InternalError("FinishJob needs a terminal state");
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  STORE_RETURN_IF_ERROR(tx.status());
  absl::StatusOr<v1::Job> job = GetJobLocked(id);
  if (!job.ok()) return job.status();
  if (IsTerminal(job->state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is already ", v1::JobState_Name(job->state())));
  }
  if (attempt > 0 && job->attempts() != attempt) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " is at attempt ",
                                                      job->attempts(), ", not ", attempt));
  }
  const int32_t event_attempt = attempt > 0 ? attempt : job->attempts();
  absl::StatusOr<v1::JobEvent> stored = InsertEventLocked(id, event_attempt, event);
  if (!stored.ok()) return stored.status();
  Stmt s(db_,
         "UPDATE jobs SET state = ?, end_us = ?, error_code = ?, error_message = ?, "
         "result_attempt = ? WHERE id = ?");
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, int64_t{state}).Bind(2, NowMicros());
  s.Bind(3, int64_t{event.has_failed() ? event.failed().code() : 0});
  s.Bind(4, event.has_failed() ? event.failed().message() : std::string());
  s.Bind(5, int64_t{state == v1::JOB_STATE_COMPLETED ? event_attempt : 0}).Bind(6, id);
  STORE_RETURN_IF_ERROR(s.Run());
  STORE_RETURN_IF_ERROR(tx.Commit());
  return stored;
}

absl::StatusOr<ReleaseOutcome> SqliteJobStore::ReleaseLostJob(const std::string& id,
                                                             int32_t attempt,
                                                             const std::string& reason,
                                                             bool count_failure,
                                                             int max_failures) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  STORE_RETURN_IF_ERROR(tx.status());
  absl::StatusOr<v1::Job> job = GetJobLocked(id);
  if (!job.ok()) return job.status();
  if (!IsLiveAttempt(*job, attempt)) {
    return ReleaseOutcome::kAlreadyFinished;
  }
  Stmt f(db_, "SELECT failures, queue_seq FROM jobs WHERE id = ?");
  STORE_RETURN_IF_ERROR(f.prepare_status());
  f.Bind(1, id);
  absl::StatusOr<bool> row = f.Step();
  if (!row.ok()) return row.status();
  const int64_t failures = f.Int(0) + (count_failure ? 1 : 0);
  const int64_t queue_seq = f.Int(1);
  if (count_failure && failures >= max_failures) {
    v1::JobEvent failed;
    failed.mutable_failed()->set_code(static_cast<int32_t>(absl::StatusCode::kUnavailable));
    failed.mutable_failed()->set_message(
        absl::StrCat("the job's worker was lost ", failures, " times (max_attempts ",
                     max_failures, "); last: ", reason));
    absl::StatusOr<v1::JobEvent> ev = InsertEventLocked(id, attempt, failed);
    if (!ev.ok()) return ev.status();
    Stmt s(db_,
           "UPDATE jobs SET state = ?, failures = ?, end_us = ?, error_code = ?, "
           "error_message = ? WHERE id = ?");
    STORE_RETURN_IF_ERROR(s.prepare_status());
    s.Bind(1, int64_t{v1::JOB_STATE_FAILED}).Bind(2, failures).Bind(3, NowMicros());
    s.Bind(4, int64_t{failed.failed().code()}).Bind(5, failed.failed().message()).Bind(6, id);
    STORE_RETURN_IF_ERROR(s.Run());
    STORE_RETURN_IF_ERROR(tx.Commit());
    return ReleaseOutcome::kFailed;
  }
  v1::JobEvent retrying;
  retrying.mutable_retrying()->set_failed_attempt(attempt);
  retrying.mutable_retrying()->set_reason(reason);
  absl::StatusOr<v1::JobEvent> ev = InsertEventLocked(id, attempt, retrying);
  if (!ev.ok()) return ev.status();
  Stmt s(db_, "UPDATE jobs SET state = ?, failures = ? WHERE id = ?");
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, int64_t{v1::JOB_STATE_QUEUED}).Bind(2, failures).Bind(3, id);
  STORE_RETURN_IF_ERROR(s.Run());
  STORE_RETURN_IF_ERROR(InsertQueuedEventLocked(id, attempt, queue_seq));
  STORE_RETURN_IF_ERROR(tx.Commit());
  return ReleaseOutcome::kRequeued;
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::RequeueInterrupted(
    const std::string& reason) {
  std::vector<std::pair<std::string, int32_t>> interrupted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Stmt s(db_, "SELECT id, attempts FROM jobs WHERE state IN (?, ?) ORDER BY queue_seq");
    STORE_RETURN_IF_ERROR(s.prepare_status());
    s.Bind(1, int64_t{v1::JOB_STATE_MODEL_LOADING}).Bind(2, int64_t{v1::JOB_STATE_RUNNING});
    while (true) {
      absl::StatusOr<bool> row = s.Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      interrupted.emplace_back(s.Text(0), static_cast<int32_t>(s.Int(1)));
    }
  }
  std::vector<std::string> ids;
  for (const auto& [id, attempt] : interrupted) {
    absl::StatusOr<ReleaseOutcome> r = ReleaseLostJob(id, attempt, reason, false, 0);
    if (!r.ok()) return r.status();
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::vector<v1::JobEvent>> SqliteJobStore::EventsSince(const std::string& id,
                                                                     int64_t after_seq,
                                                                     int limit) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT payload FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?");
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, id).Bind(2, after_seq).Bind(3, int64_t{limit});
  return ReadEvents(s, id);
}

absl::StatusOr<std::vector<v1::ResultRecord>> SqliteJobStore::Results(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_,
         "SELECT e.payload FROM events e JOIN jobs j ON j.id = e.job_id "
         "WHERE e.job_id = ? AND e.is_result = 1 AND j.result_attempt > 0 "
         "AND e.attempt = j.result_attempt ORDER BY e.seq");
  STORE_RETURN_IF_ERROR(s.prepare_status());
  s.Bind(1, id);
  absl::StatusOr<std::vector<v1::JobEvent>> events = ReadEvents(s, id);
  if (!events.ok()) return events.status();
  std::vector<v1::ResultRecord> out;
  out.reserve(events->size());
  for (v1::JobEvent& e : *events) out.push_back(std::move(*e.mutable_result()));
  return out;
}

}  // namespace server
}  // namespace sinkscope
