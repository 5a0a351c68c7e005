// The job state machine, shared by every JobStore backend: which
// transitions are legal, how attempts and failures are counted, and the
// events and messages a transition writes. The stores only read the job's
// row (locked), ask these functions, and write what they decide.
//
//   QUEUED --claim--> MODEL_LOADING --event--> RUNNING
//     ^                    |                      |
//     +------ release (worker or host lost, attempts left) ------+
//   any non-terminal --finish--> COMPLETED | FAILED | CANCELLED (once)
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "server/job_store.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// The stored facts about a job that decide its next transition.
struct JobFacts {
  std::string id;
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  int32_t attempts = 0;  // dispatches so far (the current attempt when claimed)
  int32_t failures = 0;  // lost workers / hosts counted against max_attempts
};

/// True when `attempt` is the job's attempt in progress (claimed, not finished).
bool IsLiveAttempt(const JobFacts& job, int32_t attempt);

/// QUEUED -> MODEL_LOADING. FailedPrecondition "job X is not queued" otherwise.
absl::Status CheckClaim(const JobFacts& job);

/// A non-terminal event of `attempt`, optionally moving to `new_state`:
/// FailedPrecondition when the job is finished or `attempt` is stale;
/// Internal when `new_state` is terminal (FinishJob does that).
absl::Status CheckAppend(const JobFacts& job, int32_t attempt,
                         std::optional<v1::JobState> new_state);

/// A Queued{position} event: FailedPrecondition unless QUEUED. Returns the
/// attempt the event carries (0 on a first run, else the attempt that was
/// lost, as its Retrying event).
absl::StatusOr<int32_t> CheckQueuedEvent(const JobFacts& job);

/// Finishing in `state` by `attempt` (0 = any attempt, to cancel a queued
/// job): Internal unless `state` is terminal; FailedPrecondition when the
/// job is already finished or `attempt` is stale. Returns the attempt the
/// terminal event carries (and, for COMPLETED, whose results count).
absl::StatusOr<int32_t> CheckFinish(const JobFacts& job, int32_t attempt, v1::JobState state);

/// What releasing a lost attempt does.
struct ReleaseDecision {
  ReleaseOutcome outcome = ReleaseOutcome::kAlreadyFinished;
  int32_t failures = 0;   // the job's failure count afterwards
  v1::JobEvent event;     // Retrying (kRequeued) or Failed (kFailed); unset otherwise
};

/// The attempt `attempt` of `job` lost its worker (or host) for `reason`.
/// Not live any more: kAlreadyFinished, nothing to write. With
/// `count_failure`, the failure count grows; at `max_failures` the job
/// FAILS with UNAVAILABLE naming the count and the last reason; otherwise
/// it is re-queued (at its original FIFO place) after a Retrying event.
ReleaseDecision DecideRelease(const JobFacts& job, int32_t attempt, const std::string& reason,
                              bool count_failure, int max_failures);

}  // namespace server
}  // namespace sinkscope
