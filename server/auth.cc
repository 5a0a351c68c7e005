#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include <chrono>

#include <grpcpp/server_context.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sinkscope {
namespace server {
namespace {

constexpr char kPrefix[] = "sst_";

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::StatusOr<std::string> RandomBytes(int n) {
  std::string out(static_cast<size_t>(n), '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), n) != 1) {
    return absl::InternalError("RAND_bytes failed");
  }
  return out;
}

/// SHA-256(salt || secret) through EVP, raw bytes.
absl::StatusOr<std::string> SaltedHash(const std::string& salt, const std::string& secret) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr) return absl::InternalError("EVP_MD_CTX_new failed");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const bool ok = EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, salt.data(), salt.size()) == 1 &&
                  EVP_DigestUpdate(ctx, secret.data(), secret.size()) == 1 &&
                  EVP_DigestFinal_ex(ctx, md, &len) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok) return absl::InternalError("SHA-256 failed");
  return std::string(reinterpret_cast<char*>(md), len);
}

absl::Status SqlError(sqlite3* db, const std::string& what) {
  return absl::InternalError(absl::StrCat("token store: ", what, ": ", sqlite3_errmsg(db)));
}

struct Stmt {
  Stmt(sqlite3* db, const char* sql) { rc = sqlite3_prepare_v2(db, sql, -1, &s, nullptr); }
  ~Stmt() { sqlite3_finalize(s); }
  sqlite3_stmt* s = nullptr;
  int rc;
};

std::string Col(sqlite3_stmt* s, int i) {
  const unsigned char* p = sqlite3_column_text(s, i);
  return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(s, i)) : "";
}

}  // namespace

absl::Status ValidateUserName(const std::string& user) {
  if (user.empty() || user.size() > 64) {
    return absl::InvalidArgumentError("user name must have 1 to 64 characters");
  }
  for (char c : user) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' &&
        c != '@') {
      return absl::InvalidArgumentError(
          absl::StrCat("user name \"", user, "\" may only use letters, digits and . _ - @"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Open(const std::string& database) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(database.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("cannot open database ", database, ": ", msg));
  }
  std::unique_ptr<TokenStore> store(new TokenStore(db));
  sqlite3_busy_timeout(db, 5000);
  const char* schema =
      "PRAGMA journal_mode=WAL;"
      "CREATE TABLE IF NOT EXISTS api_tokens ("
      " id INTEGER PRIMARY KEY AUTOINCREMENT,"
      " user TEXT NOT NULL,"
      " admin INTEGER NOT NULL DEFAULT 0,"
      " salt BLOB NOT NULL,"
      " hash BLOB NOT NULL,"
      " create_us INTEGER NOT NULL,"
      " revoke_us INTEGER NOT NULL DEFAULT 0)";
  char* err = nullptr;
  if (sqlite3_exec(db, schema, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s = absl::InternalError(absl::StrCat("token store schema: ", err ? err : "?"));
    sqlite3_free(err);
    return s;
  }
  return store;
}

TokenStore::~TokenStore() { sqlite3_close(db_); }

absl::StatusOr<std::string> TokenStore::Create(const std::string& user, bool admin,
                                               TokenInfo* info) {
  if (absl::Status s = ValidateUserName(user); !s.ok()) return s;
  absl::StatusOr<std::string> secret_raw = RandomBytes(32);
  if (!secret_raw.ok()) return secret_raw.status();
  absl::StatusOr<std::string> salt = RandomBytes(16);
  if (!salt.ok()) return salt.status();
  const std::string secret = absl::BytesToHexString(*secret_raw);
  absl::StatusOr<std::string> hash = SaltedHash(*salt, secret);
  if (!hash.ok()) return hash.status();
  std::lock_guard<std::mutex> lock(mu_);
  Stmt ins(db_, "INSERT INTO api_tokens (user, admin, salt, hash, create_us) VALUES (?, ?, ?, ?, ?)");
  if (ins.rc != SQLITE_OK) return SqlError(db_, "prepare");
  const int64_t now = NowMicros();
  sqlite3_bind_text(ins.s, 1, user.data(), static_cast<int>(user.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(ins.s, 2, admin ? 1 : 0);
  sqlite3_bind_blob(ins.s, 3, salt->data(), static_cast<int>(salt->size()), SQLITE_TRANSIENT);
  sqlite3_bind_blob(ins.s, 4, hash->data(), static_cast<int>(hash->size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(ins.s, 5, now);
  if (sqlite3_step(ins.s) != SQLITE_DONE) return SqlError(db_, "insert");
  const int64_t id = sqlite3_last_insert_rowid(db_);
  if (info) *info = TokenInfo{id, user, admin, now, 0};
  return absl::StrCat(kPrefix, id, "_", secret);
}

absl::Status TokenStore::Revoke(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt sel(db_, "SELECT revoke_us FROM api_tokens WHERE id = ?");
  if (sel.rc != SQLITE_OK) return SqlError(db_, "prepare");
  sqlite3_bind_int64(sel.s, 1, id);
  if (sqlite3_step(sel.s) != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("no token ", id));
  Stmt upd(db_, "UPDATE api_tokens SET revoke_us = ? WHERE id = ? AND revoke_us = 0");
  if (upd.rc != SQLITE_OK) return SqlError(db_, "prepare");
  sqlite3_bind_int64(upd.s, 1, NowMicros());
  sqlite3_bind_int64(upd.s, 2, id);
  if (sqlite3_step(upd.s) != SQLITE_DONE) return SqlError(db_, "update");
  return absl::OkStatus();
}

absl::StatusOr<int> TokenStore::RevokeUser(const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt upd(db_, "UPDATE api_tokens SET revoke_us = ? WHERE user = ? AND revoke_us = 0");
  if (upd.rc != SQLITE_OK) return SqlError(db_, "prepare");
  sqlite3_bind_int64(upd.s, 1, NowMicros());
  sqlite3_bind_text(upd.s, 2, user.data(), static_cast<int>(user.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(upd.s) != SQLITE_DONE) return SqlError(db_, "update");
  return sqlite3_changes(db_);
}

absl::StatusOr<std::vector<TokenInfo>> TokenStore::List() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt sel(db_, "SELECT id, user, admin, create_us, revoke_us FROM api_tokens ORDER BY id");
  if (sel.rc != SQLITE_OK) return SqlError(db_, "prepare");
  std::vector<TokenInfo> out;
  int rc;
  while ((rc = sqlite3_step(sel.s)) == SQLITE_ROW) {
    out.push_back(TokenInfo{sqlite3_column_int64(sel.s, 0), Col(sel.s, 1),
                            sqlite3_column_int64(sel.s, 2) != 0, sqlite3_column_int64(sel.s, 3),
                            sqlite3_column_int64(sel.s, 4)});
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "select");
  return out;
}

absl::StatusOr<Caller> TokenStore::Verify(const std::string& token) {
  const absl::Status bad = absl::UnauthenticatedError("invalid or revoked API token");
  if (!absl::StartsWith(token, kPrefix)) return bad;
  std::vector<std::string> parts = absl::StrSplit(token.substr(sizeof(kPrefix) - 1), '_');
  int64_t id = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &id) || parts[1].size() != 64) return bad;
  std::string salt, hash, user;
  bool admin = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Stmt sel(db_, "SELECT user, admin, salt, hash, revoke_us FROM api_tokens WHERE id = ?");
    if (sel.rc != SQLITE_OK) return SqlError(db_, "prepare");
    sqlite3_bind_int64(sel.s, 1, id);
    const int rc = sqlite3_step(sel.s);
    if (rc == SQLITE_DONE) return bad;
    if (rc != SQLITE_ROW) return SqlError(db_, "select");
    if (sqlite3_column_int64(sel.s, 4) != 0) return bad;
    user = Col(sel.s, 0);
    admin = sqlite3_column_int64(sel.s, 1) != 0;
    salt.assign(static_cast<const char*>(sqlite3_column_blob(sel.s, 2)), sqlite3_column_bytes(sel.s, 2));
    hash.assign(static_cast<const char*>(sqlite3_column_blob(sel.s, 3)), sqlite3_column_bytes(sel.s, 3));
  }
  absl::StatusOr<std::string> got = SaltedHash(salt, parts[1]);
  if (!got.ok()) return got.status();
  if (got->size() != hash.size() || CRYPTO_memcmp(got->data(), hash.data(), hash.size()) != 0) {
    return bad;
  }
  return Caller{user, admin};
}

absl::StatusOr<Caller> Authenticator::Authenticate(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  if (mode_ == "none") {
    auto it = metadata.find(kUserMetadataKey);
    if (it == metadata.end()) return Caller{"anonymous", true};
    std::string user(it->second.data(), it->second.size());
    if (user.empty() || user.size() > 64) {
      return absl::InvalidArgumentError(absl::StrCat(kUserMetadataKey, " must have 1 to 64 characters"));
    }
    for (char c : user) {
      if (c <= 0x20 || c >= 0x7f) {
        return absl::InvalidArgumentError(
            absl::StrCat(kUserMetadataKey, " must be printable ASCII without spaces"));
      }
    }
    return Caller{user, true};
  }
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing API token (metadata \"authorization: Bearer <token>\")");
  }
  std::string value(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(value, kBearer)) {
    return absl::UnauthenticatedError("authorization metadata must be \"Bearer <token>\"");
  }
  return tokens_->Verify(std::string(absl::StripAsciiWhitespace(value.substr(kBearer.size()))));
}

}  // namespace server
}  // namespace sinkscope
