#include "server/single_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sinkscope {
namespace server {
namespace {

/// Whether something accepts connections on the Unix socket at `path`:
/// ECONNREFUSED (a stale socket file) and ENOENT are "no".
bool UnixSocketAnswers(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  close(fd);
  if (rc == 0) return true;
  // EAGAIN: a listener with a full backlog is still a listener.
  return err == EAGAIN;
}

}  // namespace

std::string UnixSocketPath(const std::string& listen) {
  if (listen.rfind("unix:", 0) != 0) return "";
  std::string path = listen.substr(5);
  if (path.rfind("//", 0) == 0) path = path.substr(2);  // unix:///abs/path
  return path;
}

absl::Status PrepareUnixSocket(const std::string& path, void (*log)(const std::string&)) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on unix:", path, ": the path exists and is not a socket"));
  }
  if (UnixSocketAnswers(path)) {
    return absl::FailedPreconditionError(
        absl::StrCat("address in use: another server is listening on unix:", path));
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot remove the stale socket unix:", path, ": ", std::strerror(errno)));
  }
  log(absl::StrCat("removed the stale socket unix:", path, " (nothing was listening on it)"));
  return absl::OkStatus();
}

absl::Status CheckTcpListenFree(const std::string& listen) {
  if (listen.rfind("unix:", 0) == 0) return absl::OkStatus();
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", listen, "' is not host:port (e.g. 127.0.0.1:50051)"));
  }
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (port == "0") return absl::OkStatus();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address '", listen, "': ", gai_strerror(rc)));
  }
  absl::Status result = absl::OkStatus();
  for (addrinfo* a = found; a != nullptr && result.ok(); a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;  // e.g. no IPv6 on this host: gRPC skips it too
    const int one = 1;
    // As gRPC binds: SO_REUSEADDR (a closed server's TIME_WAIT connections
    // do not block a restart), but not SO_REUSEPORT (a live listener does).
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (a->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 && errno == EADDRINUSE) {
      result = absl::FailedPreconditionError(absl::StrCat(
          "address in use: another process (a running sinkscope-server?) listens on ", listen,
          "; stop it or give this server another --listen"));
    }
    close(fd);
  }
  freeaddrinfo(found);
  return result;
}

absl::StatusOr<DatabaseLock> DatabaseLock::Acquire(const std::string& path) {
  if (path.empty() || path == ":memory:") return DatabaseLock(-1);
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot open database ", path, ": ", std::strerror(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "database ", path, " is in use by another running sinkscope-server (it holds the "
          "file's lock); stop that server or give this one its own --database"));
    }
    return absl::UnavailableError(
        absl::StrCat("cannot lock database ", path, ": ", std::strerror(err)));
  }
  return DatabaseLock(fd);
}

DatabaseLock& DatabaseLock::operator=(DatabaseLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

DatabaseLock::~DatabaseLock() {
  if (fd_ >= 0) close(fd_);  // closing the last descriptor releases the flock
}

}  // namespace server
}  // namespace sinkscope
