// Helpers for the service integration tests: temp dirs, real server
// processes, clients, and comparisons with the engine.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "sinkscope/v1/analysis.grpc.pb.h"
#include "tests/common/skip.h"
#include "worker/engine/scan.h"

/// Skips (developer machine) or fails (CI=true) the current test when the
/// shared stories260K checkpoint the real-server tests run is missing.
#define SKIP_WITHOUT_SHARED()                                                            \
  if (::sinkscope::testing::Stories260KPath().empty()) {                                 \
    SINKSCOPE_SKIP_MISSING("shared/models/stories260K/stories260K.bin not found (set "  \
                           "SINKSCOPE_SHARED_DIR)");                                    \
  }

namespace sinkscope {
namespace testing {

/// shared/ (env SINKSCOPE_SHARED_DIR, else ../shared); "" when missing.
std::string SharedDir();
/// shared/models/stories260K/stories260K.bin or "" when missing.
std::string Stories260KPath();
/// aidreams260K checkpoint and tokenizer, or "" when missing.
std::string AiDreamsPath();
std::string AiDreamsTokenizerPath();
/// shared/models/bytelm-demo/bytelm-demo.bin (a model with a real spike) or "".
std::string ByteLmDemoPath();

/// A fresh directory under /tmp, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// Writes `text` to `path`.
void WriteFile(const std::string& path, const std::string& text);
/// The last `max_bytes` of a file.
std::string ReadTail(const std::string& path, size_t max_bytes = 6000);

/// Forks SINKSCOPE_SERVER_BIN --config=`config_path` with stdout and stderr
/// in `log_path` (truncated), killed when this process dies; its pid.
pid_t SpawnServer(const std::string& config_path, const std::string& log_path);

/// A real sinkscope-server process (binary path from SINKSCOPE_SERVER_BIN),
/// listening on a Unix socket in `dir`, with its log in dir/server-N.log.
class ServerProcess {
 public:
  /// `config_json` is written to dir/server.json and passed with --config.
  ServerProcess(std::string dir, std::string config_json);
  ~ServerProcess();  // SIGKILL if still running

  /// Starts the process and waits until ListModels answers (up to 90 s).
  /// Returns false (and the log says why) on failure.
  bool Start();
  /// Sends `sig`.
  void Signal(int sig);
  /// Waits for exit; returns the wait status, or -1 on timeout.
  int WaitExit(std::chrono::seconds timeout);
  pid_t pid() const { return pid_; }
  /// Pids of live sinkscope-worker children of the server.
  std::vector<pid_t> WorkerPids() const;
  /// Waits until there are `n` live workers answering (up to `timeout`).
  bool WaitForWorkers(size_t n, std::chrono::seconds timeout) const;
  /// Public API address ("unix:...").
  std::string address() const { return "unix:" + dir_ + "/api.sock"; }
  std::string log_path() const { return log_path_; }
  std::unique_ptr<v1::AnalysisService::Stub> NewStub() const;

 private:
  std::string dir_;
  std::string config_json_;
  std::string log_path_;
  pid_t pid_ = -1;
  int starts_ = 0;
};

/// Config JSON for a test server in `dir` with the given workers and extra
/// JSON members (e.g. "\"drain_timeout_s\": 1").
std::string TestServerConfig(const std::string& dir, int n_workers, const std::string& catalog,
                             const std::string& extra_members = "");
/// The same config JSON listening on `listen` (catalog in dir/catalog.json,
/// not written).
std::string ServerConfigJson(const std::string& dir, const std::string& listen, int n_workers,
                             const std::string& extra_members = "");
/// A catalog JSON (absolute paths) with stories260K and, when present, aidreams260K.
std::string TestCatalog();

/// Deterministic token-id sequence: BOS (1) then `length - 1` ids in [3, 512).
std::vector<int32_t> MakeIds(int length, uint32_t seed);

/// A scan request on stories260K over `sequences`.
v1::SubmitJobRequest ScanRequest(const std::vector<std::vector<int32_t>>& sequences,
                                 const std::string& model = "stories260K");

/// Watches `job_id` from `after_seq` until the stream ends; returns the events.
/// `status` receives the stream's final status.
std::vector<v1::JobEvent> WatchAll(v1::AnalysisService::Stub& stub, const std::string& job_id,
                                   int64_t after_seq, std::chrono::seconds timeout,
                                   grpc::Status* status = nullptr);

/// Polls GetJob until the job is terminal; returns it with its results
/// unless `include_results` is false (jobs larger than max_get_response_bytes).
v1::Job WaitTerminal(v1::AnalysisService::Stub& stub, const std::string& job_id,
                     std::chrono::seconds timeout, bool include_results = true);

/// The scan of the llama2.c checkpoint `model_path` (default stories260K)
/// computed directly by the engine in this process (float32, CPU, `params`).
/// Returns false with `error` set when the engine fails.
bool EngineScan(const std::vector<std::vector<int32_t>>& sequences,
                std::vector<BlockRecord>* blocks, ScanSummary* summary, std::string* error,
                const std::string& model_path = Stories260KPath(),
                const ScanParams& params = ScanParams());

/// Compares a completed job's result records with the engine's: indices,
/// spike tokens, spike channels and step-up / step-down blocks exactly (by
/// value, element by element), values with a 1e-4 relative tolerance; the
/// provenance names `model` (float32, cpu) and the thresholds are `params`.
/// "" when equal, else the first difference.
std::string CompareResults(const v1::Job& job, const std::vector<BlockRecord>& blocks,
                           const ScanSummary& summary, const std::string& model = "stories260K",
                           const ScanParams& params = ScanParams());

}  // namespace testing
}  // namespace sinkscope
