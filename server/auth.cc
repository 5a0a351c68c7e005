#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <chrono>

#include <grpcpp/server_context.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

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
  absl::StatusOr<std::shared_ptr<SqlDb>> db = OpenSqlDb(database);
  if (!db.ok()) return db.status();
  return std::make_unique<TokenStore>(*std::move(db));
}

namespace {

/// Runs `body` in one transaction of `db`, committing when it succeeds.
template <typename Body>
auto InTx(SqlDb& db, Body body) -> decltype(body(std::declval<SqlTx&>())) {
  absl::StatusOr<std::unique_ptr<SqlTx>> tx = db.Begin();
  if (!tx.ok()) return tx.status();
  auto r = body(**tx);
  if (!r.ok()) return r;
  if (absl::Status c = (*tx)->Commit(); !c.ok()) return c;
  return r;
}

}  // namespace

absl::StatusOr<std::string> TokenStore::Create(const std::string& user, bool admin,
                                               TokenInfo* info) {
  RETURN_IF_ERROR(ValidateUserName(user));
  absl::StatusOr<std::string> secret_raw = RandomBytes(32);
  if (!secret_raw.ok()) return secret_raw.status();
  absl::StatusOr<std::string> salt = RandomBytes(16);
  if (!salt.ok()) return salt.status();
  const std::string secret = absl::BytesToHexString(*secret_raw);
  absl::StatusOr<std::string> hash = SaltedHash(*salt, secret);
  if (!hash.ok()) return hash.status();
  const int64_t now = NowMicros();
  absl::StatusOr<int64_t> id = InTx(*db_, [&](SqlTx& tx) -> absl::StatusOr<int64_t> {
    absl::StatusOr<SqlRows> r = tx.Query(
        "INSERT INTO api_tokens (\"user\", admin, salt, hash, create_us) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        {user, int64_t{admin ? 1 : 0}, SqlBytes{*salt}, SqlBytes{*hash}, now});
    if (!r.ok()) return r.status();
    if (r->empty()) return absl::InternalError("token store: insert returned no id");
    return r->Int(0, 0);
  });
  if (!id.ok()) return id.status();
  if (info) *info = TokenInfo{*id, user, admin, now, 0};
  return absl::StrCat(kPrefix, *id, "_", secret);
}

absl::Status TokenStore::Revoke(int64_t id) {
  absl::StatusOr<bool> r = InTx(*db_, [&](SqlTx& tx) -> absl::StatusOr<bool> {
    absl::StatusOr<SqlRows> sel = tx.Query("SELECT revoke_us FROM api_tokens WHERE id = $1", {id});
    if (!sel.ok()) return sel.status();
    if (sel->empty()) return absl::NotFoundError(absl::StrCat("no token ", id));
    absl::StatusOr<SqlRows> upd = tx.Query(
        "UPDATE api_tokens SET revoke_us = $1 WHERE id = $2 AND revoke_us = 0", {NowMicros(), id});
    if (!upd.ok()) return upd.status();
    return true;
  });
  return r.status();
}

absl::StatusOr<int> TokenStore::RevokeUser(const std::string& user) {
  return InTx(*db_, [&](SqlTx& tx) -> absl::StatusOr<int> {
    absl::StatusOr<SqlRows> upd = tx.Query(
        "UPDATE api_tokens SET revoke_us = $1 WHERE \"user\" = $2 AND revoke_us = 0",
        {NowMicros(), user});
    if (!upd.ok()) return upd.status();
    return static_cast<int>(upd->affected());
  });
}

absl::StatusOr<std::vector<TokenInfo>> TokenStore::List() {
  return InTx(*db_, [&](SqlTx& tx) -> absl::StatusOr<std::vector<TokenInfo>> {
    absl::StatusOr<SqlRows> sel = tx.Query(
        "SELECT id, \"user\", admin, create_us, revoke_us FROM api_tokens ORDER BY id");
    if (!sel.ok()) return sel.status();
    std::vector<TokenInfo> out;
    for (size_t r = 0; r < sel->size(); ++r) {
      out.push_back(TokenInfo{sel->Int(r, 0), sel->Text(r, 1), sel->Int(r, 2) != 0,
                              sel->Int(r, 3), sel->Int(r, 4)});
    }
    return out;
  });
}

absl::StatusOr<Caller> TokenStore::Verify(const std::string& token) {
  const absl::Status bad = absl::UnauthenticatedError("invalid or revoked API token");
  if (!absl::StartsWith(token, kPrefix)) return bad;
  std::vector<std::string> parts = absl::StrSplit(token.substr(sizeof(kPrefix) - 1), '_');
  int64_t id = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &id) || parts[1].size() != 64) return bad;
  absl::StatusOr<SqlRows> sel = InTx(*db_, [&](SqlTx& tx) {
    return tx.Query("SELECT \"user\", admin, salt, hash, revoke_us FROM api_tokens WHERE id = $1",
                    {id});
  });
  if (!sel.ok()) return sel.status();
  if (sel->empty() || sel->Int(0, 4) != 0) return bad;
  const std::string& user = sel->Text(0, 0);
  const bool admin = sel->Int(0, 1) != 0;
  const std::string& salt = sel->Text(0, 2);
  const std::string& hash = sel->Text(0, 3);
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
