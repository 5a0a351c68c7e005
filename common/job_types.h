// The job-type table: one descriptor per `JobRequest.params` oneof case, with
// the traits that server (validation, memory estimate, deadlines, metrics),
// worker (tokenization, dispatch) and client (names, progress units) used to
// re-derive in their own switches. No libtorch: server, worker and client
// link it (sinkscope_job_types). Adding a job type adds one row here; the
// per-job parameter validation and runner stay with their code.

#pragma once

#include <string_view>
#include <vector>

#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {

/// Whether a job reads `JobRequest.sequences`.
enum class SequenceInput {
  kRequired,   ///< at least one sequence (INVALID_ARGUMENT "no input" otherwise)
  kForbidden,  ///< none: the job's own parameters are its input
  kOptional,   ///< a catalog corpus or sequences (evaluation jobs)
};

/// Which activation-memory bound server/memory_estimate.cc applies.
enum class MemoryEstimateKind {
  kForward,         ///< one forward pass per distinct sequence length
  kForwardFfnFold,  ///< that plus one block's folded FFN weights in float64
                    ///< and a Frobenius row chunk (worker/engine/mechanism.h)
  kAttentionStatistics,  ///< a forward pass plus the O(T) attention statistics:
                         ///< query chunks (common/attention_chunks.h) and
                         ///< [batch, head, T] accumulators, no [T, T] pattern
};

/// Traits of one job type. Every field is a constant of the type, never of a
/// request (per-request checks stay in the job's validation function).
struct JobTypeDescriptor {
  /// The `JobRequest.params` oneof case of this job (never PARAMS_NOT_SET).
  v1::JobRequest::ParamsCase params_case;
  /// The JobType recorded for it (Job.type, ListJobs filter, metrics).
  v1::JobType type;
  /// The client command and display name, e.g. "scan", "first-token-probe".
  const char* cli_name;
  /// Metrics label: the JobType name, lower case, without "JOB_TYPE_"
  /// (e.g. "activation_scan"); part of the Prometheus series, keep stable.
  const char* metrics_label;
  /// Whether `sequences` are required, forbidden or optional.
  SequenceInput sequences;
  /// Server message for sequences given to a kForbidden job (INVALID_ARGUMENT);
  /// empty for the other kinds.
  const char* sequences_forbidden_message;
  /// Fewest token ids a sequence given as ids must hold (>= 1).
  int min_ids_per_sequence;
  /// Whether sequences may be longer than the model context n_ctx: the job
  /// cuts them into chunks (evaluation streams) or windows (sinks). Else a
  /// sequence over n_ctx tokens is refused (server and worker).
  bool may_exceed_context;
  /// Whether the job streams one result record per evaluation chunk (as it
  /// runs) before its summary.
  bool streams_per_chunk;
  /// Whether the forward pass materializes attention patterns (eager
  /// attention: B * heads * T^2 floats more in the memory estimate).
  bool needs_attention_patterns;
  /// The job's evaluation corpus (EvalCorpus inside its parameters), or
  /// nullptr for jobs that read no corpus. Non-null iff the job may read a
  /// catalog corpus; the request must hold this case.
  const v1::EvalCorpus* (*eval_corpus)(const v1::JobRequest& request);
  /// Which activation-memory estimate applies.
  MemoryEstimateKind memory_estimate;
  /// Whether the worker runs it among the mechanism jobs (worker/mechanism_jobs.cc);
  /// else worker/analysis_jobs.cc (or the scan runner).
  bool mechanism;
  /// Progress deadline base in seconds before the first unit (server/worker_pool.cc):
  /// 300 for jobs with calibration / detection passes before it, else 120.
  int progress_base_seconds;
  /// The unit of its progress counts, as the client shows it ("blocks", ...).
  const char* progress_unit;

  /// Whether the job may read a catalog corpus (eval_corpus != nullptr).
  bool reads_corpus() const { return eval_corpus != nullptr; }
};

/// All job types, in `JobRequest.params` field-number order.
const std::vector<JobTypeDescriptor>& JobTypes();

/// The descriptor of a params case; nullptr for PARAMS_NOT_SET or a case
/// without a row (a newer proto than this table).
const JobTypeDescriptor* FindJobType(v1::JobRequest::ParamsCase params_case);

/// The descriptor of a JobType; nullptr for UNSPECIFIED or an unknown value.
const JobTypeDescriptor* FindJobType(v1::JobType type);

/// The descriptor whose cli_name is `name`; nullptr when none.
const JobTypeDescriptor* FindJobTypeByName(std::string_view name);

/// The descriptor of `request`'s params; nullptr when none is set.
inline const JobTypeDescriptor* JobTypeOfRequest(const v1::JobRequest& request) {
  return FindJobType(request.params_case());
}

}  // namespace sinkscope
