#include "server/sql_db.h"

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace server {

// Backends (sqlite_db.cc, pg_db.cc).
absl::StatusOr<std::shared_ptr<SqlDb>> OpenSqliteDb(const std::string& path, bool sync_full);
absl::StatusOr<std::shared_ptr<SqlDb>> OpenPgDb(const std::string& conninfo);

int64_t SqlRows::Int(size_t row, int col) const {
  int64_t v = 0;
  if (!absl::SimpleAtoi(rows_[row][col], &v)) return 0;
  return v;
}

bool IsPostgresUrl(const std::string& database) {
  return absl::StartsWith(database, "postgresql://") || absl::StartsWith(database, "postgres://") ||
         ((absl::StrContains(database, "host=") || absl::StrContains(database, "dbname=")) &&
          absl::StrContains(database, "="));
}

namespace {

/// One schema migration: the statements that take a database from
/// `version - 1` to `version`, per dialect. Never edit a released one; add
/// the next.
struct Migration {
  int version;
  const char* what;
  std::vector<const char*> sqlite;
  std::vector<const char*> postgres;
};

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration>* m = new std::vector<Migration>{
      {1,
       "jobs and their events",
       {
           // IF NOT EXISTS: databases of servers before schema_version existed.
           R"sql(CREATE TABLE IF NOT EXISTS jobs (
             id TEXT PRIMARY KEY,
             queue_seq BIGINT NOT NULL UNIQUE,
             owner TEXT NOT NULL,
             type INTEGER NOT NULL,
             state INTEGER NOT NULL,
             request BLOB NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0,
             failures INTEGER NOT NULL DEFAULT 0,
             create_us BIGINT NOT NULL,
             start_us BIGINT NOT NULL DEFAULT 0,
             end_us BIGINT NOT NULL DEFAULT 0,
             error_code INTEGER NOT NULL DEFAULT 0,
             error_message TEXT NOT NULL DEFAULT '',
             last_seq BIGINT NOT NULL DEFAULT 0,
             result_attempt INTEGER NOT NULL DEFAULT 0,
             client_request_id TEXT NOT NULL DEFAULT '',
             worker TEXT NOT NULL DEFAULT '',
             priority INTEGER NOT NULL DEFAULT 0))sql",
           "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, queue_seq)",
           "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, queue_seq)",
           "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_client_request ON jobs "
           "(owner, client_request_id) WHERE client_request_id <> ''",
           R"sql(CREATE TABLE IF NOT EXISTS events (
             job_id TEXT NOT NULL REFERENCES jobs (id),
             seq BIGINT NOT NULL,
             attempt INTEGER NOT NULL,
             is_result INTEGER NOT NULL,
             time_us BIGINT NOT NULL,
             payload BLOB NOT NULL,
             PRIMARY KEY (job_id, seq)))sql",
       },
       {
           R"sql(CREATE TABLE jobs (
             id TEXT PRIMARY KEY,
             queue_seq BIGINT NOT NULL UNIQUE,
             owner TEXT NOT NULL,
             type INTEGER NOT NULL,
             state INTEGER NOT NULL,
             request BYTEA NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0,
             failures INTEGER NOT NULL DEFAULT 0,
             create_us BIGINT NOT NULL,
             start_us BIGINT NOT NULL DEFAULT 0,
             end_us BIGINT NOT NULL DEFAULT 0,
             error_code INTEGER NOT NULL DEFAULT 0,
             error_message TEXT NOT NULL DEFAULT '',
             last_seq BIGINT NOT NULL DEFAULT 0,
             result_attempt INTEGER NOT NULL DEFAULT 0,
             client_request_id TEXT NOT NULL DEFAULT '',
             worker TEXT NOT NULL DEFAULT '',
             priority INTEGER NOT NULL DEFAULT 0))sql",
           "CREATE SEQUENCE jobs_queue_seq AS BIGINT",
           "CREATE INDEX jobs_by_state ON jobs (state, queue_seq)",
           "CREATE INDEX jobs_by_owner ON jobs (owner, queue_seq)",
           "CREATE UNIQUE INDEX jobs_by_client_request ON jobs (owner, client_request_id) "
           "WHERE client_request_id <> ''",
           R"sql(CREATE TABLE events (
             job_id TEXT NOT NULL REFERENCES jobs (id),
             seq BIGINT NOT NULL,
             attempt INTEGER NOT NULL,
             is_result INTEGER NOT NULL,
             time_us BIGINT NOT NULL,
             payload BYTEA NOT NULL,
             PRIMARY KEY (job_id, seq)))sql",
       }},
      {2,
       "API tokens in the same database; host leases; published workers",
       {
           R"sql(CREATE TABLE IF NOT EXISTS api_tokens (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             user TEXT NOT NULL,
             admin INTEGER NOT NULL DEFAULT 0,
             salt BLOB NOT NULL,
             hash BLOB NOT NULL,
             create_us BIGINT NOT NULL,
             revoke_us BIGINT NOT NULL DEFAULT 0))sql",
           "ALTER TABLE jobs ADD COLUMN lease_host TEXT NOT NULL DEFAULT ''",
           "ALTER TABLE jobs ADD COLUMN lease_expires_us BIGINT NOT NULL DEFAULT 0",
           "CREATE INDEX jobs_by_lease ON jobs (state, lease_expires_us)",
           R"sql(CREATE TABLE host_workers (
             host TEXT NOT NULL,
             worker TEXT NOT NULL,
             budget_bytes BIGINT NOT NULL,
             models TEXT NOT NULL,
             busy INTEGER NOT NULL,
             seen_us BIGINT NOT NULL,
             PRIMARY KEY (host, worker)))sql",
       },
       {
           R"sql(CREATE TABLE api_tokens (
             id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
             "user" TEXT NOT NULL,
             admin INTEGER NOT NULL DEFAULT 0,
             salt BYTEA NOT NULL,
             hash BYTEA NOT NULL,
             create_us BIGINT NOT NULL,
             revoke_us BIGINT NOT NULL DEFAULT 0))sql",
           "ALTER TABLE jobs ADD COLUMN lease_host TEXT NOT NULL DEFAULT ''",
           "ALTER TABLE jobs ADD COLUMN lease_expires_us BIGINT NOT NULL DEFAULT 0",
           "CREATE INDEX jobs_by_lease ON jobs (state, lease_expires_us)",
           R"sql(CREATE TABLE host_workers (
             host TEXT NOT NULL,
             worker TEXT NOT NULL,
             budget_bytes BIGINT NOT NULL,
             models TEXT NOT NULL,
             busy INTEGER NOT NULL,
             seen_us BIGINT NOT NULL,
             PRIMARY KEY (host, worker)))sql",
       }},
  };
  return *m;
}

absl::Status Migrate(SqlDb& db) {
  absl::StatusOr<std::unique_ptr<SqlTx>> tx = db.Begin();
  if (!tx.ok()) return tx.status();
  const bool pg = db.dialect() == SqlDialect::kPostgres;
  if (pg) {
    // Two hosts starting at once: one migrates, the other waits and sees it done.
    absl::StatusOr<SqlRows> lock = (*tx)->Query("SELECT pg_advisory_xact_lock(7321000)");
    if (!lock.ok()) return lock.status();
  }
  absl::StatusOr<SqlRows> r =
      (*tx)->Query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
  if (!r.ok()) return r.status();
  r = (*tx)->Query("SELECT COALESCE(MAX(version), 0) FROM schema_version");
  if (!r.ok()) return r.status();
  const int64_t have = r->Int(0, 0);
  if (have > CurrentSchemaVersion()) {
    return absl::FailedPreconditionError(
        absl::StrCat("database ", db.name(), " has schema version ", have,
                     ", newer than this server's ", CurrentSchemaVersion(),
                     "; run a newer sinkscope-server"));
  }
  if (!pg && have == 1) {
    // SQLite databases of version 1 from before job priorities.
    r = (*tx)->Query("SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'priority'");
    if (!r.ok()) return r.status();
    if (r->Int(0, 0) == 0) {
      r = (*tx)->Query("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0");
      if (!r.ok()) return r.status();
    }
  }
  for (const Migration& m : Migrations()) {
    if (m.version <= have) continue;
    for (const char* sql : pg ? m.postgres : m.sqlite) {
      r = (*tx)->Query(sql);
      if (!r.ok()) {
        return absl::Status(r.status().code(),
                            absl::StrCat("schema migration ", m.version, " (", m.what, ") of ",
                                         db.name(), ": ", r.status().message()));
      }
    }
    r = (*tx)->Query("INSERT INTO schema_version (version) VALUES ($1)",
                     {int64_t{m.version}});
    if (!r.ok()) return r.status();
  }
  return (*tx)->Commit();
}

}  // namespace

int CurrentSchemaVersion() { return Migrations().back().version; }

absl::StatusOr<std::shared_ptr<SqlDb>> OpenSqlDb(const std::string& database,
                                                 bool sqlite_sync_full) {
  if (database.empty()) return absl::InvalidArgumentError("database is empty");
  absl::StatusOr<std::shared_ptr<SqlDb>> db =
      IsPostgresUrl(database) ? OpenPgDb(database) : OpenSqliteDb(database, sqlite_sync_full);
  if (!db.ok()) return db.status();
  RETURN_IF_ERROR(Migrate(**db));
  return db;
}

}  // namespace server
}  // namespace sinkscope
