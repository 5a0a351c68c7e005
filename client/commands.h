// The sinkscope client's commands: one function per subcommand, each making
// the RPCs and printing through client/render.h. Results go to stdout,
// progress and errors to stderr. Each returns the process exit code:
// 0 success, 1 RPC failure or failed/cancelled job (after printing
// "sinkscope: <CODE>: <message>" to stderr).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace client {

/// Options shared by every command.
struct GlobalOptions {
  /// host:port or unix:/path.
  std::string server = "127.0.0.1:50051";
  /// Sent as "authorization: Bearer <token>" when not empty.
  std::string token;
  /// PEM CA certificate(s): connect with TLS, verifying the server against
  /// them ("" = plaintext).
  std::string tls_ca;
  /// Sent as "x-sinkscope-user" when not empty: the caller's identity when
  /// the server's auth mode is "none" (ignored with tokens).
  std::string user;
  /// Print the result as protobuf JSON (proto field names) on stdout.
  bool json = false;
  /// Print profile rows as CSV on stdout (render_profile.h).
  bool csv = false;
  /// No progress on stderr.
  bool quiet = false;
  /// Deadline of each unary RPC, seconds (<= 0: none).
  double timeout_s = 30;
  /// Deadline of an event stream (watching a job), seconds (<= 0: none).
  double wait_timeout_s = 0;
};

/// Watch-time options of `scan` and `watch`.
struct WatchOptions {
  /// Print each event as one JSON line while watching (with --json).
  bool events = false;
  /// Resume after this event seq.
  int64_t after_seq = 0;
  /// The job's attempt count when watching began (from GetJob): result
  /// records of earlier attempts are superseded. With --events they are not
  /// printed (as in the result view); records printed live for an attempt
  /// that is lost later are followed by a Retrying event naming that
  /// attempt: its records are superseded.
  int32_t known_attempt = 0;
};

/// A submission of any job type (`sinkscope scan`, `sinks`, `profile`, ...):
/// the request is complete (model, sequences, params). The name is the first
/// command's.
struct ScanOptions {
  v1::SubmitJobRequest request;
  /// Print the job and exit once it is queued.
  bool detach = false;
  WatchOptions watch;
};

/// Submits `options.request` (any job type) and watches it; prints the
/// result with the renderer of its records.
int RunScan(const GlobalOptions& global, const ScanOptions& options);
int RunWatch(const GlobalOptions& global, const std::string& job_id, const WatchOptions& options);
/// `all_inputs`: every input sequence, not the first 8.
int RunGet(const GlobalOptions& global, const std::string& job_id, bool include_results,
           bool all_inputs = false);
int RunJobs(const GlobalOptions& global, const v1::ListJobsRequest& request);
int RunCancel(const GlobalOptions& global, const std::string& job_id);
/// Your QUEUED / MODEL_LOADING / RUNNING jobs (position of each queued one)
/// and the whole queue's counts (ListJobsResponse.queue: no other names).
int RunQueue(const GlobalOptions& global);
/// Cancels every QUEUED, MODEL_LOADING or RUNNING job of the caller
/// (ListJobs owner "@me", every page); prints each and the count.
int RunCancelAllMine(const GlobalOptions& global);
int RunModels(const GlobalOptions& global);
/// `models clear NAME` (admin): AnalysisService.ClearModelUnavailable.
int RunClearModel(const GlobalOptions& global, const std::string& model);

/// Strict UTF-8 check (no overlong forms, surrogates or code points > U+10FFFF).
bool IsValidUtf8(const std::string& text);
/// Checks the global options before any RPC: --server not empty, --user and
/// --token valid gRPC metadata (printable ASCII, sane length), --tls-ca
/// readable. Returns "" or the usage error.
std::string CheckGlobalOptions(const GlobalOptions& global);

/// Parses "1,461, 401" into token ids; INVALID_ARGUMENT names the bad item.
/// Items are separated by commas and/or whitespace; an empty element (two
/// commas in a row, a leading or trailing comma) is an error.
absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& csv);
/// Parses "0,1, 5" into integers (any sign); INVALID_ARGUMENT names the bad item.
absl::StatusOr<std::vector<int32_t>> ParseIntList(const std::string& csv);
/// Parses "2:0,2:2,3:1" (layer:head pairs; "." also separates).
absl::StatusOr<std::vector<std::pair<int32_t, int32_t>>> ParseHeads(const std::string& csv);
/// Parses floats separated by commas or whitespace.
absl::StatusOr<std::vector<float>> ParseFloats(const std::string& text);
/// C escapes of a command-line string: "\n" -> newline, "\t", "\\", "\x2e".
absl::StatusOr<std::string> Unescape(const std::string& text);
/// Parses "float32" / "f32" / "bfloat16" / "bf16" / "float16" / "f16" / "fp16".
absl::StatusOr<v1::Dtype> ParseDtype(const std::string& name);
/// Parses "queued", "running", "JOB_STATE_FAILED", ... (case-insensitive).
absl::StatusOr<v1::JobState> ParseJobState(const std::string& name);

}  // namespace client
}  // namespace sinkscope
