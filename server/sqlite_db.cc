// SqlDb on an embedded SQLite database: one connection (WAL mode, busy
// timeout) behind a mutex that each transaction holds.
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cctype>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "server/sql_db.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace server {
namespace {

/// "$12" -> "?12" outside string literals: PostgreSQL placeholders in
/// SQLite's numbered form (same numbers, so the same parameter vector).
std::string ToSqlitePlaceholders(const std::string& sql) {
  std::string out;
  out.reserve(sql.size());
  bool in_string = false;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '\'') in_string = !in_string;
    if (!in_string && c == '$' && i + 1 < sql.size() &&
        std::isdigit(static_cast<unsigned char>(sql[i + 1]))) {
      out += '?';
      continue;
    }
    out += c;
  }
  return out;
}

class SqliteDb;

class SqliteTx final : public SqlTx {
 public:
  SqliteTx(SqliteDb* db, std::unique_lock<std::mutex> lock, bool relaxed)
      : db_(db), lock_(std::move(lock)), relaxed_(relaxed) {}
  ~SqliteTx() override;
  absl::StatusOr<SqlRows> Query(const std::string& sql,
                                const std::vector<SqlParam>& params) override;
  absl::Status Commit() override;
  bool open = false;

 private:
  SqliteDb* db_;
  std::unique_lock<std::mutex> lock_;
  bool relaxed_;
};

class SqliteDb final : public SqlDb {
 public:
  SqliteDb(sqlite3* db, std::string path, bool sync_full)
      : db_(db), name_(absl::StrCat("sqlite ", path)), sync_full_(sync_full) {}
  ~SqliteDb() override {
    for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
    sqlite3_close(db_);
  }
  SqlDialect dialect() const override { return SqlDialect::kSqlite; }
  const std::string& name() const override { return name_; }
  absl::StatusOr<std::unique_ptr<SqlTx>> Begin(SqlDurability durability) override {
    std::unique_lock<std::mutex> lock(mu_);
    // Group commit: synchronous=NORMAL for this transaction only (a PRAGMA
    // that cannot change inside one); the next FULL commit's fsync of the
    // WAL makes it durable too.
    const bool relaxed = sync_full_ && durability == SqlDurability::kGroupCommit;
    if (relaxed) {
      RETURN_IF_ERROR(ExecCached("PRAGMA synchronous=NORMAL"));
    }
    auto tx = std::make_unique<SqliteTx>(this, std::move(lock), relaxed);
    RETURN_IF_ERROR(ExecCached("BEGIN IMMEDIATE"));
    tx->open = true;
    return std::unique_ptr<SqlTx>(std::move(tx));
  }
  std::string NowMicrosSql() const override {
    // julianday('now') has millisecond precision.
    return "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)";
  }
  std::string SkipLockedSql() const override { return ""; }
  std::string ForUpdateSql() const override { return ""; }
  absl::Status NotifyOnCommit(SqlTx&, const std::string&, const std::string&) override {
    return absl::OkStatus();
  }
  absl::Status Listen(const std::string&, std::function<void(const std::string&)>) override {
    return absl::OkStatus();
  }
  bool TryLeadership() override { return true; }

  /// The prepared statement of `sql` (SQLite's '?' placeholders), from a
  /// cache: the server runs a few dozen distinct statements, and parsing
  /// them on every call was about 40% of its CPU time per job. The caller
  /// holds mu_ and resets the statement after use. Error: the prepare error.
  absl::StatusOr<sqlite3_stmt*> Prepared(const std::string& sql) {
    auto it = statements_.find(sql);
    if (it != statements_.end()) return it->second;
    if (statements_.size() >= kMaxStatements) {
      for (auto& [text, stmt] : statements_) sqlite3_finalize(stmt);
      statements_.clear();
    }
    sqlite3_stmt* stmt = nullptr;
    const int rc = sqlite3_prepare_v3(db_, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &stmt,
                                      nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt);
      return Error(rc, sqlite3_errmsg(db_), sql);
    }
    statements_.emplace(sql, stmt);
    return stmt;
  }

  /// One cached statement without parameters or rows: BEGIN, COMMIT,
  /// ROLLBACK, the synchronous PRAGMAs (the caller holds mu_).
  absl::Status ExecCached(const char* sql) {
    absl::StatusOr<sqlite3_stmt*> stmt = Prepared(sql);
    if (!stmt.ok()) return stmt.status();
    int rc;
    while ((rc = sqlite3_step(*stmt)) == SQLITE_ROW) {
    }
    sqlite3_reset(*stmt);
    if (rc == SQLITE_DONE) return absl::OkStatus();
    return Error(sqlite3_extended_errcode(db_), sqlite3_errmsg(db_), sql);
  }

  /// Statements without parameters or rows (the caller holds mu_).
  absl::Status Exec(const char* sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
    if (rc == SQLITE_OK) return absl::OkStatus();
    absl::Status s = Error(rc, err ? err : sqlite3_errmsg(db_), sql);
    sqlite3_free(err);
    return s;
  }
  absl::Status Error(int rc, const std::string& what, const std::string& sql) const {
    const std::string msg = absl::StrCat(name_, ": ", what, " (in: ", sql.substr(0, 120), ")");
    switch (rc & 0xff) {
      case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
          return absl::AlreadyExistsError(msg);
        }
        return absl::InternalError(msg);
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
      case SQLITE_CANTOPEN:
      case SQLITE_IOERR:
      case SQLITE_FULL:
        return absl::UnavailableError(msg);
      case SQLITE_CORRUPT:
      case SQLITE_NOTADB:
        return absl::DataLossError(msg);
      default:
        return absl::InternalError(msg);
    }
  }
  sqlite3* raw() { return db_; }

 private:
  static constexpr size_t kMaxStatements = 512;
  std::mutex mu_;
  sqlite3* db_;
  std::string name_;
  bool sync_full_;
  std::unordered_map<std::string, sqlite3_stmt*> statements_;  // SQLite text -> prepared
};

SqliteTx::~SqliteTx() {
  if (open) db_->ExecCached("ROLLBACK").IgnoreError();
  if (relaxed_) db_->ExecCached("PRAGMA synchronous=FULL").IgnoreError();
}

absl::Status SqliteTx::Commit() {
  absl::Status s = db_->ExecCached("COMMIT");
  if (s.ok()) open = false;
  return s;
}

absl::StatusOr<SqlRows> SqliteTx::Query(const std::string& sql,
                                        const std::vector<SqlParam>& params) {
  sqlite3* db = db_->raw();
  absl::StatusOr<sqlite3_stmt*> prepared = db_->Prepared(ToSqlitePlaceholders(sql));
  if (!prepared.ok()) return prepared.status();
  sqlite3_stmt* stmt = *prepared;
  int rc;
  struct Reset {  // back to the cache: reset, bindings cleared
    sqlite3_stmt* s;
    ~Reset() {
      sqlite3_reset(s);
      sqlite3_clear_bindings(s);
    }
  } reset{stmt};
  for (size_t i = 0; i < params.size(); ++i) {
    const int idx = static_cast<int>(i) + 1;
    if (const int64_t* v = std::get_if<int64_t>(&params[i])) {
      rc = sqlite3_bind_int64(stmt, idx, *v);
    } else if (const std::string* t = std::get_if<std::string>(&params[i])) {
      rc = sqlite3_bind_text(stmt, idx, t->data(), static_cast<int>(t->size()), SQLITE_TRANSIENT);
    } else {
      const std::string& b = std::get<SqlBytes>(params[i]).data;
      rc = sqlite3_bind_blob(stmt, idx, b.data(), static_cast<int>(b.size()), SQLITE_TRANSIENT);
    }
    if (rc != SQLITE_OK) return db_->Error(rc, sqlite3_errmsg(db), sql);
  }
  SqlRows out;
  while (true) {
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return db_->Error(sqlite3_extended_errcode(db), sqlite3_errmsg(db), sql);
    const int n = sqlite3_column_count(stmt);
    std::vector<std::string> row(static_cast<size_t>(n));
    for (int c = 0; c < n; ++c) {
      switch (sqlite3_column_type(stmt, c)) {
        case SQLITE_INTEGER: row[c] = absl::StrCat(sqlite3_column_int64(stmt, c)); break;
        case SQLITE_FLOAT: row[c] = absl::StrCat(sqlite3_column_double(stmt, c)); break;
        case SQLITE_NULL: break;
        default: {
          const void* p = sqlite3_column_blob(stmt, c);
          if (p != nullptr) {
            row[c].assign(static_cast<const char*>(p), sqlite3_column_bytes(stmt, c));
          }
        }
      }
    }
    out.rows_.push_back(std::move(row));
  }
  out.affected_ = sqlite3_changes(db);
  return out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<SqlDb>> OpenSqliteDb(const std::string& path, bool sync_full) {
  // It holds API token hashes and every result: owner-only from the start
  // (SQLite would create it, and its -wal / -shm files, with the umask's 0644;
  // it gives those the database file's mode).
  if (path != ":memory:" && path.rfind("file:", 0) != 0) {
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &raw,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = raw ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close(raw);
    return absl::UnavailableError(absl::StrCat("cannot open database ", path, ": ", msg));
  }
  sqlite3_extended_result_codes(raw, 1);
  auto db = std::make_shared<SqliteDb>(raw, path, sync_full);
  sqlite3_busy_timeout(raw, 5000);
  for (const char* pragma : {"PRAGMA journal_mode=WAL",
                             sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                             "PRAGMA foreign_keys=ON"}) {
    if (absl::Status s = db->Exec(pragma); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("cannot open database ", path, ": ", s.message()));
    }
  }
  return std::shared_ptr<SqlDb>(std::move(db));
}

}  // namespace server
}  // namespace sinkscope
