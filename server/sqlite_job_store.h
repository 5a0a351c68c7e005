// The single-host job store: SqlJobStore on an embedded SQLite file (WAL
// mode, busy timeout, synchronous FULL by default). Kept as its own name
// for callers that always want SQLite (tests, tools).
#pragma once

#include <memory>
#include <string>

#include "server/sql_job_store.h"

namespace sinkscope {
namespace server {

/// SQLite-backed JobStore.
class SqliteJobStore final : public SqlJobStore {
 public:
  /// Opens (creating if needed) the database at `path` and applies its
  /// schema migrations. `sync_full`: PRAGMA synchronous=FULL (else NORMAL,
  /// still safe against process crashes in WAL mode).
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path,
                                                              bool sync_full = true,
                                                              StoreOptions options = {});

 private:
  using SqlJobStore::SqlJobStore;
};

}  // namespace server
}  // namespace sinkscope
