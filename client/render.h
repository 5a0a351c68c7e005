// Text and JSON renderers of the sinkscope client. Pure functions of proto
// messages (no RPCs), so that they can be tested without a server.
//
// Vocabulary follows the paper: blocks are numbered 1..2L (odd = attention,
// even = MLP) and always shown with their layer and sublayer, e.g.
// "4 (layer 1 mlp)". Activation entries are shown signed, with where they
// are: "+1234.56 (0,0,23)" = value (sequence, position, channel).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <google/protobuf/message.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace client {

/// "4 (layer 1 mlp)". An empty sublayer is derived from the block's parity.
std::string BlockLabel(int block, int layer, const std::string& sublayer);
std::string BlockLabel(const v1::BlockRef& ref);
std::string BlockLabel(const v1::ScanBlock& block);

/// Name of a gRPC status code number, e.g. 3 -> "INVALID_ARGUMENT"
/// ("CODE_<n>" for numbers outside 0..16).
std::string StatusCodeName(int code);

/// "QUEUED", "RUNNING", ... (the enum name without its JOB_STATE_ prefix).
std::string JobStateName(v1::JobState state);
/// "ACTIVATION_SCAN", ... (without the JOB_TYPE_ prefix).
std::string JobTypeName(v1::JobType type);
/// "float32", "bfloat16", "float16", or "default".
std::string DtypeName(v1::Dtype dtype);

/// A signed value with a sign and magnitude-dependent precision: "+1234.56",
/// "-0.0123", "+1.234e+07".
std::string FormatValue(double value);
/// "+1234.56 (0,0,23)": value (sequence, position, channel).
std::string FormatEntry(const v1::ActivationEntry& entry);

/// Joins rows into a left-aligned table whose columns are two spaces apart;
/// columns listed in `right_aligned` are right-aligned. Row 0 is the header,
/// followed by a rule of dashes.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows,
                        const std::vector<int>& right_aligned = {});

/// Protobuf JSON mapping with the .proto field names (preserve_proto_field_names)
/// and default-valued fields printed, so that scripts see every field; bytes
/// fields holding UTF-8 (Sequence.text) as text, not base64.
absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message,
                                   bool pretty = true);

/// Per-block table of an activation scan: block, hooks' top-k |post-residual|
/// entries, median |h|, max |h|, massive-entry count and the top block-output
/// entry. `top_k` columns are shown (at least as many as the widest record).
std::string RenderScanTable(const std::vector<v1::ScanBlock>& blocks);

/// Spike tokens and channels, step-up / step-down blocks, peak, the paper's
/// "spike" number, thresholds used and provenance. `max_entries` spike entries
/// are listed (the rest are counted).
std::string RenderScanSummary(const v1::ScanSummary& summary, int max_entries = 10);

/// "model stories260K (llama2c), dtype float32, device cpu, attention sdpa,
/// code 0.1; 40 tokens in 2 sequences".
std::string FormatProvenance(const v1::Provenance& provenance);

/// Sinks: one row per (layer, head): max alpha_k (eq. 27) and its key, the
/// fraction of sequences in which the head sinks, "*" for a sink head, the
/// Gu et al. score, attention distance with / without the sink, logit gap;
/// with each layer's sink ratio.
std::string RenderSinkTable(const std::vector<v1::SinkLayer>& layers);
/// Sinks summary: sink ratio (eq. 28), the sink heads, sink heads against
/// the other heads, parameters and provenance.
std::string RenderSinkSummary(const v1::SinkSummary& summary);
/// First-token probe: counts and ratios (Table 2), exceptions, the block
/// where spikes first appear, timing, parameters and provenance.
std::string RenderFirstTokenProbe(const v1::FirstTokenProbeResult& result);
/// Spike similarity: spike tokens, step-up block, the three cosine matrices
/// (mean / min off-diagonal; the matrices themselves when small).
std::string RenderSpikeSimilarity(const v1::SpikeSimilaritySummary& summary);
/// Self-attention profile: per layer, mean A[t,t] of first / delimiter /
/// other tokens.
std::string RenderSelfAttentionTable(const std::vector<v1::SelfAttentionLayer>& layers);
std::string RenderSelfAttentionSummary(const v1::SelfAttentionSummary& summary);
/// Perplexity: one line per chunk, then the total.
std::string RenderPerplexityChunks(const std::vector<v1::PerplexityChunk>& chunks);
std::string RenderPerplexitySummary(const v1::PerplexitySummary& summary);
/// Interventions: per chunk baseline vs intervened perplexity and KL; then
/// the summary (perplexities, KL by position class, the resolved
/// interventions, per-head effects, residual shifts).
std::string RenderInterventionChunks(const std::vector<v1::InterventionChunk>& chunks);
std::string RenderInterventionSummary(const v1::InterventionSummary& summary);

/// Every record kind of every job type, grouped: per-unit table, then the
/// summary.
std::string RenderResults(const std::vector<v1::ResultRecord>& records);

/// The unit of a job type's Running progress: "blocks" (scan), "tokens"
/// (first-token probe), "units" otherwise.
std::string ProgressUnit(v1::JobType type);

/// Key/value view of one job (for `sinkscope get`), without its results:
/// at most `max_inputs` input sequences, then how many more (< 0 = all).
std::string RenderJob(const v1::Job& job, absl::TimeZone tz = absl::LocalTimeZone(),
                      int max_inputs = 8);

/// Table of jobs: id, type, model, state, created, owner.
std::string RenderJobsTable(const v1::ListJobsResponse& response,
                            absl::TimeZone tz = absl::LocalTimeZone());

/// Table of catalog models and corpora (lines of at most ~100 characters:
/// descriptions wrapped below the tables).
std::string RenderModels(const v1::ListModelsResponse& response);

/// "2026-03-08 10:28:23" in `tz`; "-" when unset.
std::string FormatTimestamp(const google::protobuf::Timestamp& ts, absl::TimeZone tz);

/// Folds a job's event stream into what the client shows: a one-line status,
/// the result records of the latest attempt, and the terminal outcome.
class JobProgress {
 public:
  explicit JobProgress(std::string job_id) : job_id_(std::move(job_id)) {}

  /// Unit named in RUNNING lines (default "blocks").
  void set_unit(std::string unit) { unit_ = std::move(unit); }
  /// The job's attempt count known before its events (GetJob): result
  /// records of earlier attempts are superseded.
  void set_known_attempt(int32_t attempt) { attempt_ = std::max(attempt_, attempt); }
  /// Whether `event` is a result record of a superseded attempt (one that
  /// Apply ignores); the --events view drops those too.
  bool Superseded(const v1::JobEvent& event) const;
  /// Takes the terminal state (and, when COMPLETED, the records) from the
  /// job itself, for a watch that began after the job's terminal event.
  /// False when `job` is not terminal.
  bool ApplyFinalJob(const v1::Job& job);

  /// Applies one event. Returns true when the status line changed (result
  /// records do not change it).
  bool Apply(const v1::JobEvent& event);

  /// "job j-..: QUEUED (position 2)", "job j-..: MODEL_LOADING stories260K
  /// (loading 40%, cpu)", "job j-..: RUNNING 7/10 blocks", ...
  const std::string& status_line() const { return status_line_; }
  /// Whether the last status change should stay on screen (retries, end).
  bool status_is_permanent() const { return permanent_; }

  /// Seq of the last event applied (resume point for WatchJob.after_seq).
  int64_t last_seq() const { return last_seq_; }
  /// True once COMPLETED, FAILED or CANCELLED was seen.
  bool done() const { return state_ == v1::JOB_STATE_COMPLETED ||
                             state_ == v1::JOB_STATE_FAILED ||
                             state_ == v1::JOB_STATE_CANCELLED; }
  v1::JobState state() const { return state_; }
  /// Failure (code, message) of a FAILED job; reason of a CANCELLED one in
  /// failure().message().
  const v1::Failure& failure() const { return failure_; }
  /// Result records of the latest attempt, in stream order.
  const std::vector<v1::ResultRecord>& records() const { return records_; }

 private:
  std::string job_id_;
  std::string unit_ = "blocks";
  std::string status_line_;
  bool permanent_ = false;
  int64_t last_seq_ = 0;
  int32_t attempt_ = 0;
  v1::JobState state_ = v1::JOB_STATE_UNSPECIFIED;
  v1::Failure failure_;
  std::vector<v1::ResultRecord> records_;
};

}  // namespace client
}  // namespace sinkscope
