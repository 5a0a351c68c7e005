// A small SQL seam under the durable stores: one dialect-neutral way to run
// parameterised statements in a transaction, implemented on SQLite
// (sqlite_db.cc) and PostgreSQL (libpq, pg_db.cc).
//
// Statements use PostgreSQL placeholders $1..$N everywhere; the SQLite
// backend rewrites them to its numbered ?N form. Values are bound, never
// spliced into SQL text. Integers are 64-bit (BIGINT), bytes are BLOB /
// BYTEA and travel unescaped (binary parameters, decoded results).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope {
namespace server {

/// Bytes for a BLOB / BYTEA parameter (a plain std::string binds as TEXT).
struct SqlBytes {
  std::string data;
};

/// One bound parameter: BIGINT, TEXT or bytes.
using SqlParam = std::variant<int64_t, std::string, SqlBytes>;

/// Rows of a result; every cell as its bytes (integers in decimal text,
/// BYTEA decoded, NULL as "").
class SqlRows {
 public:
  size_t size() const { return rows_.size(); }
  bool empty() const { return rows_.empty(); }
  /// Cell (row, col) as a 64-bit integer (0 for NULL or non-numbers).
  int64_t Int(size_t row, int col) const;
  /// Cell (row, col) as bytes.
  const std::string& Text(size_t row, int col) const { return rows_[row][col]; }
  /// Number of rows an INSERT / UPDATE / DELETE touched.
  int64_t affected() const { return affected_; }

  std::vector<std::vector<std::string>> rows_;
  int64_t affected_ = 0;
};

/// How durable a transaction's commit must be.
enum class SqlDurability {
  /// Survives power loss when it returns (SQLite synchronous=FULL when so
  /// opened; PostgreSQL synchronous_commit as configured).
  kDurable,
  /// Group commit: survives a killed process at once, a power loss only
  /// after the next durable commit (SQLite synchronous=NORMAL in WAL mode;
  /// PostgreSQL SET LOCAL synchronous_commit = off). For progress events,
  /// queue positions, lease renewals: writes that may be lost with a power
  /// cut because the job is re-dispatched.
  kGroupCommit,
};

/// Which server is behind a SqlDb (the few statements that differ).
enum class SqlDialect { kSqlite, kPostgres };

/// An open transaction; rolled back when destroyed without Commit().
class SqlTx {
 public:
  virtual ~SqlTx() = default;
  /// Runs one statement with `params` bound to $1..$N.
  /// Errors: kAlreadyExists for a unique-constraint violation, kAborted for
  /// a serialization failure or deadlock (retry the transaction),
  /// kUnavailable when the server cannot be reached, kInternal otherwise;
  /// the message names the database and the failing statement.
  virtual absl::StatusOr<SqlRows> Query(const std::string& sql,
                                        const std::vector<SqlParam>& params = {}) = 0;
  /// Commits; kUnavailable / kAborted when that fails.
  virtual absl::Status Commit() = 0;
};

/// A database holding the server's tables: the jobs, their events, the
/// hosts and API tokens. Thread-safe; every transaction has its own
/// connection (PostgreSQL) or holds the one connection (SQLite).
class SqlDb {
 public:
  virtual ~SqlDb() = default;
  virtual SqlDialect dialect() const = 0;
  /// The database for messages ("sqlite /path/x.db", "postgresql host:port/db"),
  /// never a password.
  virtual const std::string& name() const = 0;
  /// Starts a transaction (SQLite: BEGIN IMMEDIATE, the whole database;
  /// PostgreSQL: BEGIN, READ COMMITTED, row locks where statements take them).
  virtual absl::StatusOr<std::unique_ptr<SqlTx>> Begin(
      SqlDurability durability = SqlDurability::kDurable) = 0;
  /// SQL expression for the database's current time in microseconds since
  /// the Unix epoch (one clock for every host's leases).
  virtual std::string NowMicrosSql() const = 0;
  /// " FOR UPDATE SKIP LOCKED" on PostgreSQL, "" on SQLite (whose write
  /// transactions already hold the whole database).
  virtual std::string SkipLockedSql() const = 0;
  /// " FOR UPDATE" on PostgreSQL, "" on SQLite.
  virtual std::string ForUpdateSql() const = 0;
  /// Sends a change notification on `channel` with `payload` when `tx`
  /// commits (PostgreSQL NOTIFY; a no-op on SQLite, whose one server
  /// notifies itself).
  virtual absl::Status NotifyOnCommit(SqlTx& tx, const std::string& channel,
                                      const std::string& payload) = 0;
  /// Calls `on_notify(payload)` for every notification on `channel` from
  /// any host, on a background thread, until the database is destroyed;
  /// after a lost connection it reconnects and calls `on_notify("")` (the
  /// caller re-reads what it may have missed). A no-op on SQLite.
  virtual absl::Status Listen(const std::string& channel,
                              std::function<void(const std::string&)> on_notify) = 0;
  /// Tries to become the one host that does once-per-cluster chores (a
  /// session advisory lock on PostgreSQL, held while this database is
  /// open); always true on SQLite.
  virtual bool TryLeadership() = 0;
};

/// True when `database` names a PostgreSQL database (a "postgresql://" or
/// "postgres://" URI, or a libpq "key=value" string with host= or dbname=).
bool IsPostgresUrl(const std::string& database);

/// Opens `database` (a SQLite file path, created when missing, or a
/// PostgreSQL URI) and applies the schema migrations it lacks (the
/// schema_version table records them). `sqlite_sync_full`: PRAGMA
/// synchronous=FULL. FailedPrecondition when the database's schema is newer
/// than this server; Unavailable when it cannot be opened, naming it.
absl::StatusOr<std::shared_ptr<SqlDb>> OpenSqlDb(const std::string& database,
                                                 bool sqlite_sync_full = true);

/// The schema version this server writes (the last migration).
int CurrentSchemaVersion();

}  // namespace server
}  // namespace sinkscope
