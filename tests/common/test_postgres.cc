#include "tests/common/test_postgres.h"

#include <arpa/inet.h>
#include <glob.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <vector>

namespace sinkscope::testing {
namespace {

std::string FindBinDir() {
  if (const char* env = std::getenv("SINKSCOPE_TEST_PG_BIN"); env != nullptr && *env) return env;
  glob_t g;
  std::vector<std::string> dirs;
  if (glob("/usr/lib/postgresql/*/bin/initdb", 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      dirs.push_back(std::filesystem::path(g.gl_pathv[i]).parent_path().string());
    }
  }
  globfree(&g);
  if (dirs.empty()) return "";
  std::sort(dirs.begin(), dirs.end(), [](const std::string& a, const std::string& b) {
    return std::atoi(a.c_str() + 19) < std::atoi(b.c_str() + 19);  // /usr/lib/postgresql/N
  });
  return dirs.back();
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

}  // namespace

int TestPostgres::RunAs(const std::string& command) const {
  const std::string line =
      user_.empty() ? command : "runuser -u " + user_ + " -- sh -c " + Quote(command);
  const int rc = std::system(line.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::unique_ptr<TestPostgres> TestPostgres::Start(std::string* why) {
  std::unique_ptr<TestPostgres> pg(new TestPostgres());
  pg->bin_ = FindBinDir();
  if (pg->bin_.empty() || access((pg->bin_ + "/initdb").c_str(), X_OK) != 0) {
    *why = "PostgreSQL server binaries (initdb, pg_ctl; Debian package postgresql; or set "
           "SINKSCOPE_TEST_PG_BIN)";
    return nullptr;
  }
  char tmpl[] = "/tmp/sspg-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    *why = "a temporary directory in /tmp";
    return nullptr;
  }
  pg->dir_ = tmpl;
  if (geteuid() == 0) {
    // initdb refuses to run as root: the server runs as `postgres`.
    const passwd* pw = getpwnam("postgres");
    if (pw == nullptr) {
      *why = "a non-root user `postgres` to run the test server as root (Debian's postgresql "
             "package creates it)";
      return nullptr;
    }
    pg->user_ = "postgres";
    if (chown(pg->dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      *why = "chown of " + pg->dir_ + " to postgres";
      return nullptr;
    }
  }
  chmod(pg->dir_.c_str(), 0700);
  const std::string data = pg->dir_ + "/data";
  if (pg->RunAs(pg->bin_ + "/initdb -D " + data +
                " -A trust -U postgres -E UTF8 --no-sync >" + pg->dir_ + "/initdb.log 2>&1") != 0) {
    *why = "initdb failed (see " + pg->dir_ + "/initdb.log)";
    pg->dir_.clear();  // keep the log
    return nullptr;
  }
  for (int tries = 0; tries < 5 && !pg->started_; ++tries) {
    pg->port_ = FreePort();
    const std::string opts = "-c listen_addresses=127.0.0.1 -p " + std::to_string(pg->port_) +
                             " -k " + pg->dir_ +
                             " -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                             "-c max_connections=200";
    pg->started_ = pg->RunAs(pg->bin_ + "/pg_ctl -D " + data + " -l " + pg->dir_ +
                             "/server.log -w -t 60 -o \"" + opts + "\" start >/dev/null 2>&1") == 0;
  }
  if (!pg->started_) {
    *why = "pg_ctl start failed (see " + pg->dir_ + "/server.log)";
    pg->dir_.clear();
    return nullptr;
  }
  return pg;
}

TestPostgres::~TestPostgres() {
  if (started_) {
    RunAs(bin_ + "/pg_ctl -D " + dir_ + "/data -m immediate -w stop >/dev/null 2>&1");
  }
  // rm, not std::filesystem::remove_all: in test binaries that link the
  // torch wheel, libtorch.so exports its own std::filesystem, which crashes.
  if (!dir_.empty()) std::system(("rm -rf " + Quote(dir_)).c_str());
}

std::string TestPostgres::NewDatabase(const std::string& name) {
  if (RunAs(bin_ + "/createdb -h 127.0.0.1 -p " + std::to_string(port_) + " -U postgres " + name +
            " >/dev/null 2>&1") != 0) {
    return "";
  }
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" + name;
}

}  // namespace sinkscope::testing
