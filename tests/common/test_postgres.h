// A throwaway PostgreSQL server for tests: initdb into a temporary
// directory and pg_ctl start on a free loopback port (socket directory
// inside it too), stopped and removed at destruction. As root, the server
// runs as the `postgres` user (initdb refuses root) through runuser.
//
// Binaries: $SINKSCOPE_TEST_PG_BIN, else the newest /usr/lib/postgresql/*/bin.
#pragma once

#include <memory>
#include <string>

namespace sinkscope::testing {

class TestPostgres {
 public:
  /// Starts a server; nullptr with `*why` set (names what is missing or
  /// failed) when it cannot.
  static std::unique_ptr<TestPostgres> Start(std::string* why);
  ~TestPostgres();
  TestPostgres(const TestPostgres&) = delete;
  TestPostgres& operator=(const TestPostgres&) = delete;

  /// Creates an empty database `name` ([a-z0-9_]) and returns its URI
  /// ("postgresql://postgres@127.0.0.1:PORT/name"); "" on failure.
  std::string NewDatabase(const std::string& name);
  int port() const { return port_; }

 private:
  TestPostgres() = default;
  /// Runs `command` (a shell line) as the server's user; its exit status.
  int RunAs(const std::string& command) const;
  std::string bin_;
  std::string dir_;
  std::string user_;  // "" = the current user
  int port_ = 0;
  bool started_ = false;
};

}  // namespace sinkscope::testing
