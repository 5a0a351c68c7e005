// One server per listen address and per SQLite database, checked before the
// server touches a job: a second server on the same port would share
// connections at random (gRPC sets SO_REUSEPORT), and a second one on the
// same database would re-queue, and so run twice, the first one's jobs.
#ifndef SINKSCOPE_SERVER_SINGLE_SERVER_H_
#define SINKSCOPE_SERVER_SINGLE_SERVER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sinkscope {
namespace server {

/// The filesystem path of a "unix:" listen address ("" for other addresses;
/// "unix:///abs" and "unix:/abs" both give "/abs").
std::string UnixSocketPath(const std::string& listen);

/// Before listening on unix:`path`: FAILED_PRECONDITION when another server
/// answers there or the path is not a socket; removes a stale socket file
/// (nothing listening). `log` receives what was removed.
absl::Status PrepareUnixSocket(const std::string& path, void (*log)(const std::string&));

/// Before listening on a TCP `listen` address ("host:port", "[v6]:port";
/// port 0 and "unix:" addresses pass): binds a probe socket without
/// SO_REUSEPORT on every address the host resolves to and closes it.
/// FAILED_PRECONDITION "address in use" naming the address when another
/// process (a running sinkscope-server, say) listens there;
/// INVALID_ARGUMENT when the address cannot be parsed or resolved.
absl::Status CheckTcpListenFree(const std::string& listen);

/// An exclusive advisory lock (flock) on a SQLite database file, held for
/// the lifetime of the object: one server per database. Independent of
/// SQLite's own POSIX locks, so the server's connection and its token
/// commands work as before. Movable, not copyable.
class DatabaseLock {
 public:
  /// Creates `path` (mode 0600) when missing and locks it without waiting.
  /// FAILED_PRECONDITION naming the file when another server holds it;
  /// UNAVAILABLE when it cannot be opened. ":memory:" and "" lock nothing.
  static absl::StatusOr<DatabaseLock> Acquire(const std::string& path);

  DatabaseLock(DatabaseLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  DatabaseLock& operator=(DatabaseLock&& other) noexcept;
  DatabaseLock(const DatabaseLock&) = delete;
  DatabaseLock& operator=(const DatabaseLock&) = delete;
  ~DatabaseLock();

 private:
  explicit DatabaseLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace server
}  // namespace sinkscope

#endif  // SINKSCOPE_SERVER_SINGLE_SERVER_H_
