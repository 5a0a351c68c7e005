#include "server/job_manager.h"

#include <chrono>
#include <cstdio>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sinkscope {
namespace server {

std::string NewJobId() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}() ^
                             static_cast<uint64_t>(
                                 std::chrono::steady_clock::now().time_since_epoch().count())};
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("j-%016x", rng());
}

JobManager::JobManager(JobStore* store, const ModelCatalog* catalog, Scheduler* scheduler,
                       RequestLimits limits, int max_attempts)
    : store_(store),
      catalog_(catalog),
      scheduler_(scheduler),
      limits_(limits),
      max_attempts_(max_attempts) {}

void JobManager::Notify() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
  }
  cv_.notify_all();
}

absl::StatusOr<v1::Job> JobManager::Submit(const std::string& owner,
                                           const v1::SubmitJobRequest& request) {
  if (draining()) return absl::UnavailableError("server is shutting down; not accepting jobs");
  if (request.client_request_id().size() > limits_.max_client_request_id) {
    return absl::InvalidArgumentError(absl::StrCat("client_request_id is longer than ",
                                                   limits_.max_client_request_id, " characters"));
  }
  absl::Status valid = ValidateJobRequest(request.request(), *catalog_, limits_);
  if (!valid.ok()) return valid;
  NewJob job;
  job.id = NewJobId();
  job.owner = owner;
  job.type = JobTypeOf(request.request());
  job.request = request.request();
  job.client_request_id = request.client_request_id();
  bool created = false;
  absl::StatusOr<v1::Job> stored = store_->CreateJob(job, &created);
  if (!stored.ok()) return stored.status();
  if (created) Notify();
  if (stored->state() == v1::JOB_STATE_QUEUED) {
    absl::StatusOr<int32_t> position = scheduler_->QueuePosition(stored->id());
    if (position.ok()) stored->set_queue_position(*position);
  }
  return stored;
}

absl::StatusOr<v1::Job> JobManager::Get(const std::string& id, bool include_results) {
  if (id.empty()) return absl::InvalidArgumentError("job_id is empty");
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  if (!job.ok()) return job.status();
  if (job->state() == v1::JOB_STATE_QUEUED) {
    absl::StatusOr<int32_t> position = scheduler_->QueuePosition(id);
    if (position.ok()) job->set_queue_position(*position);
  }
  if (include_results && job->state() == v1::JOB_STATE_COMPLETED) {
    absl::StatusOr<std::vector<v1::ResultRecord>> results = store_->Results(id);
    if (!results.ok()) return results.status();
    for (auto& r : *results) *job->add_results() = std::move(r);
  }
  return job;
}

absl::StatusOr<v1::ListJobsResponse> JobManager::List(const v1::ListJobsRequest& request) {
  JobFilter filter;
  filter.owner = request.owner();
  for (int s : request.states()) filter.states.push_back(static_cast<v1::JobState>(s));
  if (request.page_size() < 0) return absl::InvalidArgumentError("page_size must be >= 0");
  filter.limit = request.page_size() == 0 ? 50 : std::min(request.page_size(), 1000);
  if (!request.page_token().empty() &&
      (!absl::SimpleAtoi(request.page_token(), &filter.before_queue_seq) ||
       filter.before_queue_seq <= 0)) {
    return absl::InvalidArgumentError("bad page_token");
  }
  absl::StatusOr<JobPage> page = store_->ListJobs(filter);
  if (!page.ok()) return page.status();
  v1::ListJobsResponse out;
  for (auto& job : page->jobs) *out.add_jobs() = std::move(job);
  if (page->next_before_queue_seq > 0) out.set_next_page_token(absl::StrCat(page->next_before_queue_seq));
  return out;
}

absl::StatusOr<v1::Job> JobManager::Cancel(const std::string& id, const std::string& who) {
  if (id.empty()) return absl::InvalidArgumentError("job_id is empty");
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  if (!job.ok()) return job.status();
  if (job->state() == v1::JOB_STATE_CANCELLED) return job;
  if (IsTerminal(job->state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is already ", v1::JobState_Name(job->state())));
  }
  const std::string reason = absl::StrCat("cancelled by ", who);
  {
    // The cancel function runs under mu_: ClearRunning (same lock) happens
    // before the RPC context it cancels is destroyed.
    std::lock_guard<std::mutex> lock(mu_);
    cancel_requested_[id] = who;
    auto it = running_.find(id);
    if (it != running_.end()) it->second();
  }
  if (job->state() == v1::JOB_STATE_QUEUED) {
    v1::JobEvent event;
    event.mutable_cancelled()->set_reason(reason);
    absl::StatusOr<v1::JobEvent> stored = store_->FinishJob(id, 0, v1::JOB_STATE_CANCELLED, event);
    // FailedPrecondition: it finished or was claimed meanwhile; a claimed
    // job sees the cancel request when it registers as running.
    if (!stored.ok() && !absl::IsFailedPrecondition(stored.status())) return stored.status();
    if (stored.ok()) ForgetCancel(id);
    Notify();
  }
  return store_->GetJob(id);
}

absl::Status JobManager::Watch(const std::string& id, int64_t after_seq,
                               const std::function<bool(const v1::JobEvent&)>& write,
                               const std::function<bool()>& client_gone) {
  if (id.empty()) return absl::InvalidArgumentError("job_id is empty");
  if (after_seq < 0) return absl::InvalidArgumentError("after_seq must be >= 0");
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  if (!job.ok()) return job.status();
  int64_t seq = after_seq;
  constexpr int kBatch = 256;
  while (true) {
    int64_t generation;
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation = generation_;
    }
    absl::StatusOr<std::vector<v1::JobEvent>> events = store_->EventsSince(id, seq, kBatch);
    if (!events.ok()) return events.status();
    for (const v1::JobEvent& e : *events) {
      if (!write(e)) return absl::CancelledError("watcher went away");
      seq = e.seq();
      if (IsTerminalEvent(e)) return absl::OkStatus();
    }
    if (static_cast<int>(events->size()) == kBatch) continue;
    if (events->empty()) {
      // A terminal job whose terminal event is before after_seq: done.
      absl::StatusOr<v1::Job> now = store_->GetJob(id);
      if (!now.ok()) return now.status();
      if (IsTerminal(now->state()) && now->last_event_seq() <= seq) return absl::OkStatus();
    }
    if (client_gone()) return absl::CancelledError("watcher went away");
    std::unique_lock<std::mutex> lock(mu_);
    if (shutdown_) {
      return absl::UnavailableError(
          absl::StrCat("server is shutting down; watch again with after_seq=", seq));
    }
    cv_.wait_for(lock, std::chrono::milliseconds(250),
                 [&] { return generation_ != generation || shutdown_; });
  }
}

v1::ListModelsResponse JobManager::ListModels() const {
  v1::ListModelsResponse out;
  for (const CatalogEntry& e : catalog_->entries()) *out.add_models() = e.ToModelInfo();
  return out;
}

std::optional<v1::Job> JobManager::WaitForJob(const std::string& worker, absl::Duration timeout) {
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(timeout);
  while (true) {
    int64_t generation;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (draining_ || shutdown_) return std::nullopt;
      generation = generation_;
    }
    absl::StatusOr<std::optional<v1::Job>> job = scheduler_->ClaimNext(worker);
    if (!job.ok()) {
      std::fprintf(stderr, "sinkscope-server: claiming a job: %s\n", job.status().ToString().c_str());
    } else if (job->has_value()) {
      Notify();  // state changed, positions moved
      return **job;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_until(lock, deadline,
                        [&] { return generation_ != generation || draining_ || shutdown_; })) {
      return std::nullopt;
    }
  }
}

absl::Status JobManager::RecordEvent(const v1::Job& job, const v1::JobEvent& event,
                                     std::optional<v1::JobState> new_state) {
  absl::StatusOr<v1::JobEvent> stored =
      store_->AppendEvent(job.id(), job.attempts(), event, new_state);
  if (stored.ok()) Notify();
  return stored.status();
}

absl::Status JobManager::Finish(const v1::Job& job, v1::JobState state, const v1::JobEvent& event) {
  absl::StatusOr<v1::JobEvent> stored = store_->FinishJob(job.id(), job.attempts(), state, event);
  Notify();
  return stored.status();
}

absl::StatusOr<ReleaseOutcome> JobManager::Release(const v1::Job& job, const std::string& reason,
                                                   bool count_failure) {
  absl::StatusOr<ReleaseOutcome> r =
      store_->ReleaseLostJob(job.id(), job.attempts(), reason, count_failure, max_attempts_);
  Notify();
  return r;
}

bool JobManager::SetRunning(const std::string& id, std::function<void()> cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  running_[id] = std::move(cancel);
  return cancel_requested_.count(id) == 0;
}

void JobManager::ClearRunning(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  running_.erase(id);
}

void JobManager::ForgetCancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_requested_.erase(id);
}

std::string JobManager::CancelRequester(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cancel_requested_.find(id);
  return it == cancel_requested_.end() ? std::string() : it->second;
}

void JobManager::BeginDrain() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  cv_.notify_all();
}

bool JobManager::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return draining_;
}

void JobManager::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    shutdown_ = true;
  }
  cv_.notify_all();
}

}  // namespace server
}  // namespace sinkscope
