// SqlDb on PostgreSQL through libpq: a small pool of connections (one per
// concurrent transaction), parameterised statements (PQexecParams, bytes as
// binary parameters), NOTIFY inside transactions, and a LISTEN thread.
#include <libpq-fe.h>
#include <poll.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/sql_db.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace server {
namespace {

constexpr int kMaxConnections = 16;
constexpr Oid kByteaOid = 17;

/// "postgresql host:port/dbname" for messages (never a password).
std::string DescribeConn(PGconn* c) {
  const char* host = PQhost(c);
  const char* port = PQport(c);
  const char* db = PQdb(c);
  return absl::StrCat("postgresql ", host ? host : "?", ":", port ? port : "?", "/", db ? db : "?");
}

std::string DecodeBytea(const char* text, int len) {
  size_t n = 0;
  unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(text), &n);
  if (raw == nullptr) return std::string(text, static_cast<size_t>(len));
  std::string out(reinterpret_cast<char*>(raw), n);
  PQfreemem(raw);
  return out;
}

class PgDb;

class PgTx final : public SqlTx {
 public:
  PgTx(PgDb* db, PGconn* conn) : db_(db), conn_(conn) {}
  ~PgTx() override;
  absl::StatusOr<SqlRows> Query(const std::string& sql,
                                const std::vector<SqlParam>& params) override;
  absl::Status Commit() override;

 private:
  PgDb* db_;
  PGconn* conn_;
  bool open_ = true;
};

class PgDb final : public SqlDb {
 public:
  explicit PgDb(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~PgDb() override {
    stop_ = true;
    if (listener_.joinable()) listener_.join();
    for (PGconn* c : idle_) PQfinish(c);
    if (leader_ != nullptr) PQfinish(leader_);
  }
  SqlDialect dialect() const override { return SqlDialect::kPostgres; }
  const std::string& name() const override { return name_; }

  /// A new connection; Unavailable naming the server when it fails.
  absl::StatusOr<PGconn*> Connect() {
    PGconn* c = PQconnectdb(conninfo_.c_str());
    if (c == nullptr || PQstatus(c) != CONNECTION_OK) {
      std::string msg = c ? PQerrorMessage(c) : "out of memory";
      while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
      const std::string who = c ? DescribeConn(c) : "postgresql";
      if (c) PQfinish(c);
      return absl::UnavailableError(absl::StrCat("cannot connect to ", who, ": ", msg));
    }
    // Quiet NOTICEs (e.g. "relation already exists, skipping").
    PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);
    return c;
  }
  absl::Status Init() {
    absl::StatusOr<PGconn*> c = Connect();
    if (!c.ok()) return c.status();
    name_ = DescribeConn(*c);
    idle_.push_back(*c);
    total_ = 1;
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<SqlTx>> Begin(SqlDurability durability) override {
    PGconn* conn = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !idle_.empty() || total_ < kMaxConnections; });
      if (!idle_.empty()) {
        conn = idle_.back();
        idle_.pop_back();
      } else {
        ++total_;
      }
    }
    if (conn != nullptr && PQstatus(conn) != CONNECTION_OK) {
      PQreset(conn);
      if (PQstatus(conn) != CONNECTION_OK) {
        PQfinish(conn);
        conn = nullptr;
      }
    }
    if (conn == nullptr) {
      absl::StatusOr<PGconn*> c = Connect();
      if (!c.ok()) {
        Drop(nullptr);
        return c.status();
      }
      conn = *c;
    }
    auto tx = std::make_unique<PgTx>(this, conn);
    absl::StatusOr<SqlRows> r = tx->Query("BEGIN", {});
    if (!r.ok()) return r.status();
    if (durability == SqlDurability::kGroupCommit) {
      r = tx->Query("SET LOCAL synchronous_commit = off", {});
      if (!r.ok()) return r.status();
    }
    return std::unique_ptr<SqlTx>(std::move(tx));
  }
  /// Returns a connection to the pool (nullptr / broken: forget it).
  void Release(PGconn* conn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (conn != nullptr && PQstatus(conn) == CONNECTION_OK &&
          PQtransactionStatus(conn) == PQTRANS_IDLE) {
        idle_.push_back(conn);
        conn = nullptr;
      } else {
        --total_;
      }
    }
    if (conn != nullptr) PQfinish(conn);
    cv_.notify_one();
  }
  void Drop(PGconn* conn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --total_;
    }
    if (conn != nullptr) PQfinish(conn);
    cv_.notify_one();
  }

  std::string NowMicrosSql() const override {
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)";
  }
  std::string SkipLockedSql() const override { return " FOR UPDATE SKIP LOCKED"; }
  std::string ForUpdateSql() const override { return " FOR UPDATE"; }
  absl::Status NotifyOnCommit(SqlTx& tx, const std::string& channel,
                              const std::string& payload) override {
    absl::StatusOr<SqlRows> r = tx.Query("SELECT pg_notify($1, $2)", {channel, payload});
    return r.status();
  }
  absl::Status Listen(const std::string& channel,
                      std::function<void(const std::string&)> on_notify) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (listener_.joinable()) return absl::FailedPreconditionError("already listening");
    listener_ = std::thread([this, channel, on_notify = std::move(on_notify)] {
      ListenLoop(channel, on_notify);
    });
    return absl::OkStatus();
  }
  bool TryLeadership() override {
    std::lock_guard<std::mutex> lock(leader_mu_);
    if (leader_ != nullptr && PQstatus(leader_) != CONNECTION_OK) {
      PQfinish(leader_);
      leader_ = nullptr;
      leading_ = false;
    }
    if (leading_) return true;
    if (leader_ == nullptr) {
      absl::StatusOr<PGconn*> c = Connect();
      if (!c.ok()) return false;
      leader_ = *c;
    }
    PGresult* r = PQexec(leader_, "SELECT pg_try_advisory_lock(7321001)");
    leading_ = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
               std::strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    return leading_;
  }

 private:
  void ListenLoop(const std::string& channel,
                  const std::function<void(const std::string&)>& on_notify) {
    PGconn* conn = nullptr;
    bool first = true;
    while (!stop_) {
      if (conn == nullptr) {
        absl::StatusOr<PGconn*> c = Connect();
        if (!c.ok()) {
          std::fprintf(stderr, "sinkscope-server: LISTEN %s: %s\n", channel.c_str(),
                       c.status().ToString().c_str());
          for (int i = 0; i < 10 && !stop_; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
          continue;
        }
        conn = *c;
        char* ident = PQescapeIdentifier(conn, channel.data(), channel.size());
        PGresult* r = PQexec(conn, absl::StrCat("LISTEN ", ident).c_str());
        PQfreemem(ident);
        const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok) {
          PQfinish(conn);
          conn = nullptr;
          continue;
        }
        if (!first) on_notify("");  // we may have missed some: re-read
        first = false;
      }
      // Wait for the socket, waking up now and then only to see stop_.
      pollfd pfd{PQsocket(conn), POLLIN, 0};
      const int n = poll(&pfd, 1, 200);
      if (n < 0) continue;
      if (n > 0 && !PQconsumeInput(conn)) {
        PQfinish(conn);
        conn = nullptr;
        continue;
      }
      while (PGnotify* note = PQnotifies(conn)) {
        on_notify(note->extra ? note->extra : "");
        PQfreemem(note);
      }
      if (PQstatus(conn) != CONNECTION_OK) {
        PQfinish(conn);
        conn = nullptr;
      }
    }
    if (conn != nullptr) PQfinish(conn);
  }

  const std::string conninfo_;
  std::string name_ = "postgresql";
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<PGconn*> idle_;
  int total_ = 0;  // connections out + idle
  std::atomic<bool> stop_{false};
  std::thread listener_;
  std::mutex leader_mu_;
  PGconn* leader_ = nullptr;
  bool leading_ = false;
};

PgTx::~PgTx() {
  if (open_) {
    PGresult* r = PQexec(conn_, "ROLLBACK");
    PQclear(r);
  }
  db_->Release(conn_);
}

absl::Status PgTx::Commit() {
  absl::StatusOr<SqlRows> r = Query("COMMIT", {});
  if (!r.ok()) return r.status();
  open_ = false;
  return absl::OkStatus();
}

absl::StatusOr<SqlRows> PgTx::Query(const std::string& sql, const std::vector<SqlParam>& params) {
  std::vector<std::string> text(params.size());
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size());
  std::vector<int> formats(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (const int64_t* v = std::get_if<int64_t>(&params[i])) {
      text[i] = absl::StrCat(*v);
    } else if (const std::string* t = std::get_if<std::string>(&params[i])) {
      text[i] = *t;
    } else {
      text[i] = std::get<SqlBytes>(params[i]).data;
      formats[i] = 1;  // binary: bytes as they are
    }
    values[i] = text[i].data();
    lengths[i] = static_cast<int>(text[i].size());
  }
  PGresult* res = PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr,
                               values.data(), lengths.data(), formats.data(), 0);
  struct Clear {
    PGresult* r;
    ~Clear() { PQclear(r); }
  } clear{res};
  const ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    std::string msg = res ? PQresultErrorMessage(res) : PQerrorMessage(conn_);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    const std::string sqlstate = state ? state : "";
    const std::string full =
        absl::StrCat(db_->name(), ": ", msg, " (in: ", sql.substr(0, 120), ")");
    if (PQstatus(conn_) != CONNECTION_OK || absl::StartsWith(sqlstate, "08") ||
        absl::StartsWith(sqlstate, "57P")) {
      return absl::UnavailableError(full);
    }
    if (sqlstate == "23505") return absl::AlreadyExistsError(full);
    if (sqlstate == "40001" || sqlstate == "40P01") return absl::AbortedError(full);
    return absl::InternalError(full);
  }
  SqlRows out;
  const int rows = PQntuples(res);
  const int cols = PQnfields(res);
  out.rows_.resize(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    out.rows_[r].resize(static_cast<size_t>(cols));
    for (int c = 0; c < cols; ++c) {
      if (PQgetisnull(res, r, c)) continue;
      const char* v = PQgetvalue(res, r, c);
      const int len = PQgetlength(res, r, c);
      out.rows_[r][c] = PQftype(res, c) == kByteaOid ? DecodeBytea(v, len)
                                                     : std::string(v, static_cast<size_t>(len));
    }
  }
  const char* affected = PQcmdTuples(res);
  out.affected_ = (affected && *affected) ? std::atoll(affected) : 0;
  return out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<SqlDb>> OpenPgDb(const std::string& conninfo) {
  auto db = std::make_shared<PgDb>(conninfo);
  RETURN_IF_ERROR(db->Init());
  return std::shared_ptr<SqlDb>(std::move(db));
}

}  // namespace server
}  // namespace sinkscope
