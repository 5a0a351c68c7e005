// Identities on a shared host: API tokens stored hashed in the server's
// database (the SQLite file or the PostgreSQL database of the jobs), and the per-request authentication of AnalysisService.
//
// A token is "sst_<id>_<secret>": <id> names its row, <secret> is 32 random
// bytes in hex. The row keeps a random 16-byte salt and SHA-256(salt ||
// secret) (OpenSSL EVP), never the secret; verification compares in constant
// time. A token is shown once, by `sinkscope-server token create`.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/sql_db.h"


namespace grpc {
class ServerContextBase;
}

namespace sinkscope {
namespace server {

/// Who is calling.
struct Caller {
  std::string user;
  /// Admins see, watch and cancel every job.
  bool admin = false;
};

/// A stored token, without its secret.
struct TokenInfo {
  int64_t id = 0;
  std::string user;
  bool admin = false;
  int64_t create_us = 0;
  int64_t revoke_us = 0;  // 0 = valid
};

/// Tokens in the `api_tokens` table of the server's database. Thread-safe.
class TokenStore {
 public:
  /// Opens `database` (a SQLite file, created when missing, or a
  /// PostgreSQL URI) and applies its schema migrations.
  static absl::StatusOr<std::unique_ptr<TokenStore>> Open(const std::string& database);
  /// Tokens in `db` (already migrated; shared with the job store).
  explicit TokenStore(std::shared_ptr<SqlDb> db) : db_(std::move(db)) {}

  /// Creates a token for `user`; returns the token (shown once).
  absl::StatusOr<std::string> Create(const std::string& user, bool admin, TokenInfo* info = nullptr);
  /// Revokes token `id`. NotFound when unknown; OK when already revoked.
  absl::Status Revoke(int64_t id);
  /// Revokes every valid token of `user`; returns how many.
  absl::StatusOr<int> RevokeUser(const std::string& user);
  /// All tokens, oldest first.
  absl::StatusOr<std::vector<TokenInfo>> List();
  /// The caller a token stands for; Unauthenticated when it is malformed,
  /// unknown, revoked or wrong.
  absl::StatusOr<Caller> Verify(const std::string& token);

 private:
  std::shared_ptr<SqlDb> db_;
};

/// A user name for tokens: 1..64 of [A-Za-z0-9._@-].
absl::Status ValidateUserName(const std::string& user);

/// Metadata key naming the caller in auth mode "none".
inline constexpr char kUserMetadataKey[] = "x-sinkscope-user";

/// Authenticates AnalysisService calls.
class Authenticator {
 public:
  /// `mode` "token" (needs `tokens`) or "none".
  Authenticator(std::string mode, TokenStore* tokens) : mode_(std::move(mode)), tokens_(tokens) {}
  /// "token": the `authorization: Bearer <token>` metadata, UNAUTHENTICATED
  /// when missing or invalid. "none": x-sinkscope-user (default
  /// "anonymous"), treated as an admin (no isolation; dev and loopback only).
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContextBase& context) const;
  const std::string& mode() const { return mode_; }

 private:
  const std::string mode_;
  TokenStore* const tokens_;
};

}  // namespace server
}  // namespace sinkscope
