// Helpers for the shared-host tests (auth, TLS, scheduling, memory, metrics,
// load): a real sinkscope-server on loopback TCP with a chosen config, API
// tokens made with `sinkscope-server token create`, and a tiny HTTP client.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "sinkscope/v1/analysis.grpc.pb.h"
#include "sinkscope/v1/worker.grpc.pb.h"

namespace sinkscope {
namespace testing {

/// A sinkscope-server process with its config in dir/server.json.
class OpsServer {
 public:
  /// `members`: JSON members of the config besides the defaults (listen
  /// 127.0.0.1:0, database, catalog, worker binary, runtime dir, workers).
  OpsServer(std::string dir, int n_workers, std::string extra_members = "");
  ~OpsServer();
  /// Starts it and waits until it listens and its workers are ready.
  bool Start();
  /// SIGTERM and wait.
  int Stop();
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  const std::string& dir() const { return dir_; }
  std::string log() const;
  /// `sinkscope-server token ...` on this server's database; stdout.
  std::string TokenCommand(const std::string& args) const;
  /// A new token for `user`.
  std::string CreateToken(const std::string& user, bool admin = false) const;
  /// A stub over plaintext (or TLS with `ca_pem` verified as "localhost").
  std::unique_ptr<v1::AnalysisService::Stub> Stub(const std::string& ca_pem = "") const;
  /// A stub of worker `i`'s WorkerService (its Unix socket).
  std::unique_ptr<v1::WorkerService::Stub> WorkerStub(int i) const;

 private:
  std::string dir_, config_path_, log_path_;
  pid_t pid_ = -1;
  int port_ = 0, metrics_port_ = 0, n_workers_;
};

/// A client context with `authorization: Bearer token` (none when empty)
/// and a deadline.
std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token,
                                         std::chrono::seconds deadline = std::chrono::seconds(30));

/// Runs a shell command; returns stdout; *status gets the exit status.
std::string RunCommand(const std::string& command, int* status = nullptr);

/// HTTP GET http://127.0.0.1:port/path (HTTP/1.0); the body, or "" on error.
std::string HttpGet(int port, const std::string& path, int* http_status = nullptr);
/// Percent-encodes a URL query value.
std::string UrlEncode(const std::string& s);
/// A free TCP port on 127.0.0.1 (bind to 0, close).
int FreePort();

/// Submits as `token`; returns the job (status in *status).
v1::Job SubmitAs(v1::AnalysisService::Stub& stub, const std::string& token,
                 const v1::SubmitJobRequest& request, grpc::Status* status = nullptr);
/// Polls GetJob as `token` until terminal.
v1::Job WaitDone(v1::AnalysisService::Stub& stub, const std::string& token, const std::string& id,
                 std::chrono::seconds timeout);

}  // namespace testing
}  // namespace sinkscope
