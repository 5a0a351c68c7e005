// Server configuration: a JSON file, overridden by command-line flags.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope {
namespace server {

/// Everything sinkscope-server needs to start. JSON keys are the field names.
struct ServerConfig {
  /// Public address: "host:port" or "unix:/path/to.sock".
  std::string listen = "127.0.0.1:50051";
  /// SQLite database file (created when missing).
  std::string database = "sinkscope.db";
  /// One worker process per entry, bound to that device ("cpu", "cuda:0").
  std::vector<std::string> worker_devices = {"cpu"};
  /// Model catalog JSON file.
  std::string catalog = "deploy/catalog.json";
  /// sinkscope-worker binary ("" = next to the server binary).
  std::string worker_binary;
  /// Directory for the workers' Unix sockets ("" = a fresh /tmp/sinkscope-XXXXXX).
  std::string runtime_dir;
  /// Dispatches of a job lost with its worker before it FAILS.
  int max_attempts = 3;
  /// On SIGTERM, how long running jobs may take to finish before they are
  /// put back in the queue.
  int drain_timeout_s = 30;
  /// Largest request accepted, bytes (gRPC max receive message size).
  int64_t max_request_bytes = 16 << 20;
  /// Most sequences in one job.
  int max_sequences = 1024;
  /// Most tokens in one job (text counts one token per byte, an upper bound).
  int64_t max_total_tokens = 1 << 20;
  /// Extra arguments for every worker (e.g. test-only flags).
  std::vector<std::string> worker_args;
  /// Intra-op threads per worker (0 = libtorch default).
  int worker_threads = 0;
  /// SQLite synchronous=FULL (durable against power loss) instead of NORMAL.
  bool sync_full = true;
};

/// Splits "cpu,cpu,cuda:0" into devices; InvalidArgument on an empty item.
absl::StatusOr<std::vector<std::string>> ParseWorkerDevices(const std::string& list);

/// Reads `path` (JSON object with ServerConfig's field names; "workers" may
/// be a string "cpu,cpu" or an array) on top of `base`. Relative paths in it
/// are resolved against the file's directory. Unknown keys are errors.
absl::StatusOr<ServerConfig> LoadServerConfigFile(const std::string& path, ServerConfig base);

/// Checks ranges (max_attempts >= 1, at least one worker, ...).
absl::Status ValidateServerConfig(const ServerConfig& config);

/// `path` made absolute against `base_dir` when it is relative; "" stays "".
std::string ResolvePath(const std::string& base_dir, const std::string& path);

/// Directory part of `path` ("." when none).
std::string DirName(const std::string& path);

}  // namespace server
}  // namespace sinkscope
