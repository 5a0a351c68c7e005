#include "server/job_transitions.h"

#include "absl/strings/str_cat.h"

namespace sinkscope {
namespace server {

bool IsLiveAttempt(const JobFacts& job, int32_t attempt) {
  return !IsTerminal(job.state) && job.state != v1::JOB_STATE_QUEUED &&
         job.state != v1::JOB_STATE_UNSPECIFIED && job.attempts == attempt;
}

absl::Status CheckClaim(const JobFacts& job) {
  if (job.state == v1::JOB_STATE_QUEUED) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("job ", job.id, " is not queued"));
}

absl::Status CheckAppend(const JobFacts& job, int32_t attempt,
                         std::optional<v1::JobState> new_state) {
  if (!IsLiveAttempt(job, attempt)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job.id, " is ", v1::JobState_Name(job.state), " at attempt ", job.attempts,
        "; refusing an event of attempt ", attempt));
  }
  if (new_state.has_value() && IsTerminal(*new_state)) {
    return absl::InternalError("AppendEvent cannot finish a job");
  }
  if (new_state.has_value() && *new_state == v1::JOB_STATE_QUEUED) {
    return absl::InternalError("AppendEvent cannot re-queue a job (ReleaseLostJob does)");
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> CheckQueuedEvent(const JobFacts& job) {
  if (job.state != v1::JOB_STATE_QUEUED) {
    return absl::FailedPreconditionError(absl::StrCat("job ", job.id, " is not queued"));
  }
  return job.attempts;
}

absl::StatusOr<int32_t> CheckFinish(const JobFacts& job, int32_t attempt, v1::JobState state) {
  if (!IsTerminal(state)) return absl::InternalError("FinishJob needs a terminal state");
  if (IsTerminal(job.state)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job.id, " is already ", v1::JobState_Name(job.state)));
  }
  if (attempt > 0 && job.attempts != attempt) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job.id, " is at attempt ", job.attempts, ", not ", attempt));
  }
  return attempt > 0 ? attempt : job.attempts;
}

ReleaseDecision DecideRelease(const JobFacts& job, int32_t attempt, const std::string& reason,
                              bool count_failure, int max_failures) {
  ReleaseDecision d;
  d.failures = job.failures;
  if (!IsLiveAttempt(job, attempt)) return d;  // kAlreadyFinished
  d.failures = job.failures + (count_failure ? 1 : 0);
  if (count_failure && d.failures >= max_failures) {
    d.outcome = ReleaseOutcome::kFailed;
    d.event.mutable_failed()->set_code(static_cast<int32_t>(absl::StatusCode::kUnavailable));
    d.event.mutable_failed()->set_message(absl::StrCat("the job's worker was lost ", d.failures,
                                                       " times (max_attempts ", max_failures,
                                                       "); last: ", reason));
    return d;
  }
  d.outcome = ReleaseOutcome::kRequeued;
  d.event.mutable_retrying()->set_failed_attempt(attempt);
  d.event.mutable_retrying()->set_reason(reason);
  return d;
}

}  // namespace server
}  // namespace sinkscope
