// Server configuration: a JSON file, overridden by command-line flags.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope {
namespace server {

/// Everything sinkscope-server needs to start. JSON keys are the field names.
struct ServerConfig {
  /// Public address: "host:port" or "unix:/path/to.sock".
  std::string listen = "127.0.0.1:50051";
  /// The jobs' and tokens' database: a SQLite file (created when missing;
  /// one host) or a PostgreSQL URI "postgresql://user@host:port/db" (several
  /// hosts on one queue; schema migrations are applied at start).
  std::string database = "sinkscope.db";
  /// This host's name in job leases ("" = the machine's hostname). Hosts on
  /// one PostgreSQL database need distinct names.
  std::string host_id;
  /// Lease of a dispatched job, milliseconds: its host renews it every
  /// lease_ms / 4; when a host dies, other hosts re-queue its jobs once
  /// their leases run out.
  int64_t lease_ms = 30000;
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

  // --- Shared host: identity, transport, scheduling, memory, metrics --------

  /// "token" (API tokens, `authorization: Bearer ...`), "none" (dev: the
  /// caller names itself with x-sinkscope-user, no isolation) or "auto"
  /// (default: "none" on loopback / unix sockets, "token" otherwise).
  std::string auth = "auto";
  /// PEM certificate chain and private key: TLS on the public port when both are set.
  std::string tls_cert;
  std::string tls_key;
  /// Allow plaintext (or auth "none") on a non-loopback address.
  bool allow_insecure_remote = false;
  /// Prometheus /metrics address ("" = no metrics endpoint).
  std::string metrics_listen = "127.0.0.1:9464";
  /// Users with their own label value in per-user metrics (first seen first);
  /// later users are reported as "other".
  int metrics_max_users = 20;
  /// Fair-share weights by user (default 1).
  std::map<std::string, double> user_weights;
  /// Most QUEUED jobs per user (SubmitJob answers RESOURCE_EXHAUSTED beyond).
  int max_queued_per_user = 1000;
  /// Most running jobs per user (0 = no limit).
  int max_running_per_user = 0;
  /// Memory budget per worker, bytes (0 = unlimited); one entry per worker,
  /// or a single entry for all. GPU memory for cuda workers, host memory
  /// (weights + activations, not the runtime's baseline) for cpu workers.
  /// Unset: each cpu worker gets cpu_memory_fraction of the host's memory,
  /// shared among the cpu workers; a cuda worker 90% of its device.
  std::vector<int64_t> worker_memory_bytes;
  /// Share of the host's memory (MemTotal, or the cgroup's limit when lower)
  /// the cpu workers' default budgets add up to (0 = unlimited).
  double cpu_memory_fraction = 0.8;
  /// Minimum interval between two updated Queued events of one job.
  int queue_event_interval_ms = 1000;

  // --- Hardening: leases, request bounds, streams ---------------------------

  /// Serve /metrics on a non-loopback metrics_listen address (refused otherwise).
  bool allow_remote_metrics = false;
  /// A worker renews a running job's lease with a Heartbeat this often.
  int heartbeat_interval_ms = 1000;
  /// A running job whose worker sent nothing (no event, no heartbeat) for this
  /// long has lost its lease: the worker is killed, the job re-dispatched.
  int lease_timeout_ms = 10000;
  /// Multiplies every progress deadline (the longest a job may go without its
  /// units advancing, per job type and scaled by its work; see README Limits).
  double progress_timeout_scale = 1.0;
  /// Most work of one job, in token-layers (tokens through one layer,
  /// counting every forward pass the job type makes), estimated at submission.
  int64_t max_job_token_layers = int64_t{1} << 28;
  /// Most bytes of text in one job (each text counts its bytes + 2 tokens).
  int64_t max_text_bytes = 1 << 20;
  /// Most bytes of result records one job may produce (it FAILS beyond).
  int64_t max_result_bytes = 32 << 20;
  /// Most bytes of results one GetJob(include_results) answers.
  int64_t max_get_response_bytes = 8 << 20;
  /// Most concurrent WatchJob streams per user, and in all.
  int max_watch_streams_per_user = 256;
  int max_watch_streams = 4096;

  // --- Training runs (issue 26) ----------------------------------------------

  /// The users' training runs: checkpoints in <runs_dir>/<user>/<run>/step-N/
  /// ("" = "runs" beside the SQLite database, or in the current directory).
  std::string runs_dir;
  /// Most tokens one training job may train (steps x batch_size x seq_len),
  /// for every user without an entry in user_max_train_tokens.
  int64_t max_train_tokens = int64_t{1} << 30;
  /// Per-user values of max_train_tokens.
  std::map<std::string, int64_t> user_max_train_tokens;
  /// A running training job yields its worker at its next checkpoint when a
  /// job of another user has been queued longer than this, seconds (it goes
  /// back to the queue and resumes from that checkpoint); 0 = never.
  double train_yield_after_s = 600;
};

/// True for "unix:...", 127.0.0.0/8, "localhost" and [::1] addresses.
bool IsLoopbackAddress(const std::string& listen);

/// The effective auth mode ("token" or "none") of `config`.
std::string EffectiveAuthMode(const ServerConfig& config);

/// The host memory this process may use, bytes: MemTotal of /proc/meminfo,
/// or the cgroup's memory limit (v2 memory.max, v1 memory.limit_in_bytes)
/// when that is lower; 0 when neither can be read.
int64_t HostMemoryBytes();

/// Budget of worker `index` (0 = unlimited): its worker_memory_bytes entry
/// when configured, else for a cpu worker `host_memory_bytes` x
/// cpu_memory_fraction / (number of cpu workers), else 0 (a cuda worker
/// derives its own from the device). `host_memory_bytes` < 0 reads
/// HostMemoryBytes().
int64_t WorkerMemoryBudget(const ServerConfig& config, size_t index, int64_t host_memory_bytes = -1);

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
