#include "server/job_manager.h"
#include "server/train_validation.h"

#include <sys/stat.h>
#include <unistd.h>
#include <cstring>
#include <cerrno>
#include <filesystem>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "common/status_macros.h"

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

std::string CheckpointStamp(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "";
  std::string stamp = absl::StrCat(st.st_size, ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
  if (!S_ISDIR(st.st_mode)) return stamp;
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) return stamp;
  std::vector<std::string> parts;
  while (dirent* e = readdir(dir)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat f;
    if (stat((path + "/" + name).c_str(), &f) != 0 || !S_ISREG(f.st_mode)) continue;
    parts.push_back(absl::StrCat(name, "=", f.st_size, ":", f.st_mtim.tv_sec, ".", f.st_mtim.tv_nsec));
  }
  closedir(dir);
  std::sort(parts.begin(), parts.end());
  for (const std::string& p : parts) absl::StrAppend(&stamp, "|", p);
  return stamp;
}

JobManager::JobManager(JobStore* store, const ModelCatalog* catalog, Scheduler* scheduler,
                       RequestLimits limits, int max_attempts)
    : store_(store),
      catalog_(catalog),
      scheduler_(scheduler),
      limits_(limits),
      max_attempts_(max_attempts) {}

void JobManager::ReplaceCatalog(std::unique_ptr<ModelCatalog> catalog) {
  const ModelCatalog* next = catalog.get();
  {
    std::lock_guard<std::mutex> lock(catalogs_mu_);
    reloaded_catalogs_.push_back(std::move(catalog));
  }
  {
    std::lock_guard<std::mutex> lock(shapes_mu_);
    shapes_.clear();
  }
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    load_failures_.clear();
  }
  catalog_.store(next);
  NotifyJob("");
}

void JobManager::Notify() { NotifyJob(""); }

void JobManager::NotifyJob(const std::string& id, bool queue_changed) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
    if (queue_changed) ++queue_generation_;
  }
  cv_.notify_all();
  if (queue_changed) queue_cv_.notify_all();
  std::function<void(const std::string&)> listener;
  {
    std::lock_guard<std::mutex> lock(listener_mu_);
    listener = listener_;
  }
  if (listener) listener(id);
}

void JobManager::SetChangeListener(std::function<void(const std::string&)> listener) {
  std::lock_guard<std::mutex> lock(listener_mu_);
  listener_ = std::move(listener);
}

void JobManager::SetEventsListener(
    std::function<void(const std::string&, const std::vector<v1::JobEvent>&)> listener) {
  std::lock_guard<std::mutex> lock(listener_mu_);
  events_listener_ = std::move(listener);
}

void JobManager::OfferEvents(const std::string& id, const std::vector<v1::JobEvent>& events) {
  std::function<void(const std::string&, const std::vector<v1::JobEvent>&)> listener;
  {
    std::lock_guard<std::mutex> lock(listener_mu_);
    listener = events_listener_;
  }
  if (listener) listener(id, events);
}

JobManager::~JobManager() {
  Shutdown();
  if (position_thread_.joinable()) position_thread_.join();
}

void JobManager::Configure(SharedHostOptions options, Metrics* metrics) {
  shared_ = options;
  metrics_ = metrics;
}

void JobManager::StartBackground() {
  position_thread_ = std::thread([this] { PositionLoop(); });
}

namespace {

/// Longest job id echoed in messages (real ids have 18 characters).
constexpr size_t kMaxShownId = 64;

/// `id` for messages: at most kMaxShownId characters.
std::string ShownId(const std::string& id) {
  if (id.size() <= kMaxShownId) return id;
  return absl::StrCat(id.substr(0, kMaxShownId), "... (", id.size(), " characters)");
}

/// NOT_FOUND for an id no job can have (too long to be one of ours).
absl::Status CheckIdLength(const std::string& id) {
  if (id.size() <= kMaxShownId) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("job ", ShownId(id), " not found"));
}

}  // namespace

absl::Status JobManager::CheckAccess(const std::string& id, const Caller& caller) {
  RETURN_IF_ERROR(CheckIdLength(id));
  if (caller.admin || id.empty()) return absl::OkStatus();
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  if (!job.ok()) return job.status();
  if (job->owner() != caller.user) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return absl::OkStatus();
}

bool JobManager::OthersWaitedLonger(const std::string& owner, absl::Duration wait) {
  absl::StatusOr<std::vector<QueuedJob>> queued = store_->ListQueued();
  if (!queued.ok()) return false;
  const absl::Time now = absl::Now();
  for (const QueuedJob& q : *queued) {
    if (q.owner == owner) continue;
    absl::StatusOr<v1::Job> job = store_->GetJob(q.id);
    if (!job.ok()) continue;
    const absl::Time created = absl::FromUnixSeconds(job->create_time().seconds()) +
                               absl::Nanoseconds(job->create_time().nanos());
    if (now - created > wait) return true;
  }
  return false;
}

std::string JobManager::UserRunsDir(const std::string& owner) const {
  if (limits_.runs_dir.empty()) return "";
  return absl::StrCat(limits_.runs_dir, "/", UserDirName(owner));
}

std::shared_ptr<const ModelCatalog> JobManager::CatalogFor(const std::string& owner) const {
  const ModelCatalog* base = catalog_.load();
  // The server's catalog outlives the manager's callers (ReplaceCatalog keeps
  // every catalog): a non-owning pointer.
  std::shared_ptr<const ModelCatalog> shared(std::shared_ptr<const ModelCatalog>(), base);
  const std::string dir = owner.empty() ? "" : UserRunsDir(owner);
  if (dir.empty()) return shared;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return shared;
  return std::make_shared<const ModelCatalog>(base->WithRunCheckpoints(dir));
}

absl::StatusOr<MemoryEstimate> JobManager::Estimate(const v1::JobRequest& request,
                                                    const std::string& owner) {
  std::shared_ptr<const ModelCatalog> catalog = CatalogFor(owner);
  if (request.has_train()) {
    absl::StatusOr<ModelConfig> config = TrainModelConfig(request, *catalog);
    if (!config.ok()) return config.status();
    MemoryEstimate e;
    e.weight_bytes = 16 * ParameterCount(*config);  // weights, gradients, two moments
    e.activation_bytes = std::max<int64_t>(0, EstimateTrainBytes(*config, request.train().recipe()) - e.weight_bytes);
    return e;
  }
  const CatalogEntry* entry = catalog->Find(request.model());
  if (entry == nullptr) return absl::NotFoundError(absl::StrCat("unknown model ", request.model()));
  ModelShape shape;
  {
    // By path: two users' checkpoints may share a name RUN@STEP.
    std::lock_guard<std::mutex> lock(shapes_mu_);
    auto it = shapes_.find(entry->path);
    if (it == shapes_.end()) {
      absl::StatusOr<ModelShape> read = ReadModelShape(*entry);
      if (!read.ok()) return read.status();
      it = shapes_.emplace(entry->path, *read).first;
    }
    shape = it->second;
  }
  absl::StatusOr<std::string> dtype = DtypeFromProto(request.dtype());
  if (!dtype.ok()) return dtype.status();
  MemoryEstimate estimate =
      EstimateJobMemory(shape, dtype->empty() ? entry->default_dtype : *dtype, request);
  if (request.has_profile() && request.profile().compare_models_size() > 0) {
    // A comparison holds the job's model while it loads each compared one
    // in turn: the largest of those counts on top (unknown ones count 0).
    int64_t largest = 0;
    for (const std::string& pattern : request.profile().compare_models()) {
      for (const std::string& name : ExpandCheckpoints(*catalog, pattern)) {
        v1::JobRequest other = request;
        other.set_model(name);
        other.mutable_profile()->clear_compare_models();
        absl::StatusOr<MemoryEstimate> e = Estimate(other, owner);
        if (!e.ok()) continue;
        largest = std::max(largest, e->weight_bytes);
        estimate.activation_bytes = std::max(estimate.activation_bytes, e->activation_bytes);
      }
    }
    estimate.weight_bytes += largest;
  }
  return estimate;
}

JobTraits JobManager::TraitsOf(const std::string& id) {
  JobTraits traits;
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  if (!job.ok()) return traits;
  traits.model = job->request().model();
  traits.type = job->type();
  absl::StatusOr<MemoryEstimate> est = Estimate(job->request(), job->owner());
  if (est.ok()) traits.need_bytes = est->total();
  return traits;
}

void JobManager::PositionLoop() {
  int64_t seen = -1;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      queue_cv_.wait_for(lock, std::chrono::seconds(5),
                         [&] { return shutdown_ || queue_generation_ != seen; });
      if (shutdown_) return;
      seen = queue_generation_;
    }
    RefreshPositions();
    // Throttle: at most one round of updated Queued events per interval.
    std::unique_lock<std::mutex> lock(mu_);
    queue_cv_.wait_for(lock,
                       std::chrono::milliseconds(std::max(50, shared_.queue_event_interval_ms)),
                       [&] { return shutdown_; });
    if (shutdown_) return;
  }
}

void JobManager::RefreshPositions() {
  absl::StatusOr<std::vector<std::pair<QueuedJob, int32_t>>> positions = scheduler_->Positions();
  if (!positions.ok()) return;
  std::map<std::string, int32_t> now;
  std::map<std::string, int> queued_by_user;
  // Several hosts on one queue: one of them writes the updated Queued events.
  const bool leads = store_->LeadsQueue();
  for (const auto& [job, pos] : *positions) {
    now[job.id] = pos;
    ++queued_by_user[job.owner];
    auto it = last_position_.find(job.id);
    if (it != last_position_.end() && it->second == pos) continue;
    if (it == last_position_.end()) {
      // First sight: compare with the position stored at submission.
      absl::StatusOr<std::vector<v1::JobEvent>> events = store_->EventsSince(job.id, 0, 1);
      if (events.ok() && !events->empty() && events->front().has_queued() &&
          events->front().queued().position() == pos && job.attempts == 0) {
        continue;
      }
      absl::StatusOr<v1::Job> stored = store_->GetJob(job.id);
      if (stored.ok() && job.attempts > 0) {
        // A re-queued job: compare with its latest Queued event, if it is the last event.
        absl::StatusOr<std::vector<v1::JobEvent>> last =
            store_->EventsSince(job.id, stored->last_event_seq() - 1, 1);
        if (last.ok() && !last->empty() && last->front().has_queued() &&
            last->front().queued().position() == pos) {
          continue;
        }
      }
    }
    if (leads && store_->AppendQueuedEvent(job.id, pos).ok()) NotifyJob(job.id, false);
  }
  last_position_ = std::move(now);
  if (metrics_ != nullptr) {
    metrics_->SetQueueDepth(queued_by_user);
    metrics_->SetRunning(scheduler_->RunningByUser());
  }
}

absl::StatusOr<v1::Job> JobManager::Submit(const std::string& owner,
                                           const v1::SubmitJobRequest& request) {
  if (draining()) return absl::UnavailableError("server is shutting down; not accepting jobs");
  if (request.client_request_id().size() > limits_.max_client_request_id) {
    return absl::InvalidArgumentError(absl::StrCat("client_request_id is longer than ",
                                                   limits_.max_client_request_id, " characters"));
  }
  // One catalog for the whole check: the server's, with the owner's checkpoints.
  std::shared_ptr<const ModelCatalog> owner_catalog = CatalogFor(owner);
  const ModelCatalog& catalog = *owner_catalog;
  if (const CatalogEntry* entry = catalog.Find(request.request().model());
      entry != nullptr && entry->available) {
    if (std::string reason = UnavailableReason(*entry); !reason.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model ", entry->name, " is not available on this server: ", reason));
    }
  }
  absl::Status valid = ValidateJobRequest(request.request(), catalog, limits_, owner);
  if (!valid.ok()) return valid;
  {
    // A dtype the workers' devices cannot run is refused here, not found
    // by a worker (where it used to look like a broken checkpoint).
    absl::StatusOr<std::string> dtype = DtypeFromProto(request.request().dtype());
    const CatalogEntry* entry = catalog.Find(request.request().model());
    if (dtype.ok() && entry != nullptr) {
      RETURN_IF_ERROR(CheckDtypeRunnable(dtype->empty() ? entry->default_dtype : *dtype));
    }
  }
  if (const std::string problem = WorkerHealth().problem(); !problem.empty()) {
    return absl::UnavailableError(problem);
  }
  if (request.priority() < -100 || request.priority() > 100) {
    return absl::InvalidArgumentError("priority must be in -100..100");
  }
  JobTraits traits;
  traits.model = request.request().model();
  traits.type = JobTypeOf(request.request());
  absl::StatusOr<MemoryEstimate> estimate = Estimate(request.request(), owner);
  if (estimate.ok()) {
    traits.need_bytes = estimate->total();
    if (shared_.max_worker_budget > 0 && estimate->total() > shared_.max_worker_budget) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "job needs an estimated ", estimate->total(), " bytes (", HumanBytes(estimate->total()),
          ": weights ", HumanBytes(estimate->weight_bytes), " + activations ",
          HumanBytes(estimate->activation_bytes), ") but the largest worker memory budget is ",
          shared_.max_worker_budget, " bytes (", HumanBytes(shared_.max_worker_budget),
          "); send fewer or shorter sequences, or a smaller dtype"));
    }
  }
  std::unique_lock<std::mutex> submit_lock(submit_mu_);
  {
    absl::StatusOr<std::map<std::string, int>> queued = scheduler_->QueuedByUser();
    if (!queued.ok()) return queued.status();
    auto it = queued->find(owner);
    if (it != queued->end() && it->second >= shared_.max_queued_per_user) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "user ", owner, " already has ", it->second, " queued jobs (limit ",
          shared_.max_queued_per_user, "); wait for some to finish"));
    }
  }
  NewJob job;
  job.id = NewJobId();
  job.owner = owner;
  job.type = JobTypeOf(request.request());
  job.request = request.request();
  job.client_request_id = request.client_request_id();
  job.priority = request.priority();
  bool created = false;
  std::string new_run_dir;  // a training job's run directory, made here
  if (request.request().has_train()) {
    // mkdir is the run name's claim: of two submissions of one name, one wins.
    const std::string user_dir = UserRunsDir(owner);
    std::error_code ec;
    std::filesystem::create_directories(user_dir, ec);
    const std::string dir = absl::StrCat(user_dir, "/", request.request().train().run_name());
    if (mkdir(dir.c_str(), 0755) != 0) {
      if (errno == EEXIST) {
        return absl::AlreadyExistsError(absl::StrCat(
            "train: you already have a run named ", request.request().train().run_name(),
            "; choose another run_name"));
      }
      return absl::InternalError(absl::StrCat("cannot create the run's directory: ", std::strerror(errno)));
    }
    new_run_dir = dir;
  }
  absl::StatusOr<v1::Job> stored = store_->CreateJob(job, &created);
  submit_lock.unlock();
  if (!new_run_dir.empty() && (!stored.ok() || !created)) rmdir(new_run_dir.c_str());
  if (!stored.ok()) return stored.status();
  if (!created && !google::protobuf::util::MessageDifferencer::Equals(stored->request(),
                                                                     request.request())) {
    // The same idempotency key for another request: a client bug, never a retry.
    return absl::AlreadyExistsError(absl::StrCat(
        "client_request_id \"", request.client_request_id(), "\" was already used for job ",
        stored->id(), " with a different request (", v1::JobType_Name(stored->type()), " on model ",
        stored->request().model(), "); use a new client_request_id for a new job"));
  }
  if (created) {
    scheduler_->RememberTraits(stored->id(), traits);
    if (metrics_ != nullptr) metrics_->JobSubmitted(stored->type(), owner);
    NotifyJob(stored->id());
  }
  if (stored->state() == v1::JOB_STATE_QUEUED) {
    absl::StatusOr<int32_t> position = scheduler_->QueuePosition(stored->id());
    if (position.ok()) stored->set_queue_position(*position);
  }
  return stored;
}

absl::StatusOr<v1::Job> JobManager::Get(const std::string& id, bool include_results,
                                        bool page_results, int32_t results_offset) {
  if (id.empty()) return absl::InvalidArgumentError("job_id is empty");
  RETURN_IF_ERROR(CheckIdLength(id));
  if (results_offset != 0 && !page_results) {
    return absl::InvalidArgumentError("results_offset is only read with page_results");
  }
  absl::StatusOr<v1::Job> job = store_->GetJob(id);
  if (!job.ok()) return job.status();
  if (job->state() == v1::JOB_STATE_QUEUED) {
    absl::StatusOr<int32_t> position = scheduler_->QueuePosition(id);
    if (position.ok()) job->set_queue_position(*position);
    if (std::string problem = WorkerHealth().problem(); !problem.empty()) {
      job->set_waiting_reason(problem);
    }
  }
  if (include_results && job->state() == v1::JOB_STATE_COMPLETED) {
    absl::StatusOr<std::vector<v1::ResultRecord>> results = store_->Results(id);
    if (!results.ok()) return results.status();
    const int32_t total = static_cast<int32_t>(results->size());
    job->set_total_results(total);
    if (results_offset < 0 || (results_offset > 0 && results_offset >= total)) {
      return absl::InvalidArgumentError(absl::StrCat("results_offset ", results_offset,
                                                     " is outside the job's ", total, " records"));
    }
    const int64_t cap = shared_.max_get_response_bytes;
    int64_t bytes = 0;
    int32_t end = results_offset;
    for (; end < total; ++end) {
      const int64_t next = static_cast<int64_t>((*results)[end].ByteSizeLong());
      if (cap > 0 && bytes + next > cap && (end > results_offset || !page_results)) break;
      bytes += next;
    }
    if (end < total && !page_results) {
      for (int32_t i = end; i < total; ++i) bytes += static_cast<int64_t>((*results)[i].ByteSizeLong());
      return absl::ResourceExhaustedError(absl::StrCat(
          "job ", id, " has ", total, " result records of ", bytes,
          " bytes, more than one GetJob answers (", cap,
          " bytes, max_get_response_bytes); page them (GetJob page_results, as sinkscope get "
          "and the Python client do) or stream them with WatchJob (sinkscope watch ", id, ")"));
    }
    for (int32_t i = results_offset; i < end; ++i) *job->add_results() = std::move((*results)[i]);
    if (page_results && end < total) job->set_next_results_offset(end);
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

absl::StatusOr<v1::QueueOverview> JobManager::QueueOverviewFor(const std::string& user) {
  absl::StatusOr<std::map<std::string, int>> queued = scheduler_->QueuedByUser();
  if (!queued.ok()) return queued.status();
  v1::QueueOverview out;
  for (const auto& [owner, n] : *queued) {
    out.set_queued(out.queued() + n);
    if (owner == user) out.set_my_queued(n);
    if (n > 0) out.set_users_waiting(out.users_waiting() + 1);
  }
  for (const auto& [owner, n] : scheduler_->RunningByUser()) {
    out.set_running(out.running() + n);
    if (owner == user) out.set_my_running(n);
  }
  return out;
}

absl::StatusOr<v1::Job> JobManager::Cancel(const std::string& id, const std::string& who) {
  if (id.empty()) return absl::InvalidArgumentError("job_id is empty");
  RETURN_IF_ERROR(CheckIdLength(id));
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
    if (stored.ok()) {
      ForgetCancel(id);
      if (metrics_ != nullptr) metrics_->JobFinished(job->type(), "cancelled", -1);
    }
    NotifyJob(id);
  }
  return store_->GetJob(id);
}

absl::Status JobManager::Watch(const std::string& id, int64_t after_seq,
                               const std::function<bool(const v1::JobEvent&)>& write,
                               const std::function<bool()>& client_gone) {
  if (id.empty()) return absl::InvalidArgumentError("job_id is empty");
  RETURN_IF_ERROR(CheckIdLength(id));
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

v1::ListModelsResponse JobManager::ListModels(const std::string& user) const {
  v1::ListModelsResponse out;
  std::shared_ptr<const ModelCatalog> user_catalog = CatalogFor(user);
  const ModelCatalog& catalog = *user_catalog;
  for (const CatalogEntry& e : catalog.entries()) {
    std::string reason = UnavailableReason(e);
    if (reason.empty() || !e.available) {
      *out.add_models() = e.ToModelInfo();
    } else {
      CatalogEntry marked = e;
      marked.available = false;
      marked.unavailable_reason = std::move(reason);
      *out.add_models() = marked.ToModelInfo();
    }
  }
  for (const CorpusEntry& c : catalog.corpora()) *out.add_corpora() = c.ToCorpusInfo();
  *out.mutable_workers() = WorkerHealth();
  return out;
}

void JobManager::SetWorkerHealthSource(std::function<v1::WorkerHealth()> source) {
  std::lock_guard<std::mutex> lock(health_mu_);
  worker_health_ = std::move(source);
}

v1::WorkerHealth JobManager::WorkerHealth() const {
  std::function<v1::WorkerHealth()> source;
  {
    std::lock_guard<std::mutex> lock(health_mu_);
    source = worker_health_;
  }
  return source ? source() : v1::WorkerHealth();
}

void JobManager::MarkModelLoadFailed(const std::string& name, const std::string& reason) {
  const CatalogEntry* entry = catalog_.load()->Find(name);
  if (entry == nullptr) return;
  std::lock_guard<std::mutex> lock(health_mu_);
  load_failures_[name] = LoadFailure{reason, CheckpointStamp(entry->path)};
}

std::string JobManager::UnavailableReason(const CatalogEntry& entry) const {
  if (!entry.available) return entry.unavailable_reason;
  std::lock_guard<std::mutex> lock(health_mu_);
  auto it = load_failures_.find(entry.name);
  if (it == load_failures_.end()) return "";
  if (CheckpointStamp(entry.path) != it->second.stamp) {
    load_failures_.erase(it);  // the file changed: try it again
    return "";
  }
  return absl::StrCat(it->second.reason, " (until its checkpoint file changes)");
}

absl::StatusOr<std::string> JobManager::ClearModelUnavailable(const std::string& name) {
  const CatalogEntry* entry = catalog_.load()->Find(name);
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("model \"", name.substr(0, 128), "\" is not in the catalog; see ListModels"));
  }
  std::lock_guard<std::mutex> lock(health_mu_);
  auto it = load_failures_.find(entry->name);
  if (it == load_failures_.end()) return std::string();
  std::string reason = it->second.reason;
  load_failures_.erase(it);
  return reason;
}

void JobManager::SetWorkerDtypes(const std::string& worker, std::vector<std::string> dtypes) {
  std::lock_guard<std::mutex> lock(health_mu_);
  worker_dtypes_[worker] = std::move(dtypes);
}

absl::Status JobManager::CheckDtypeRunnable(const std::string& dtype) const {
  std::lock_guard<std::mutex> lock(health_mu_);
  if (worker_dtypes_.empty()) return absl::OkStatus();
  std::set<std::string> all;
  for (const auto& [worker, dtypes] : worker_dtypes_) {
    for (const std::string& d : dtypes) {
      if (d == dtype) return absl::OkStatus();
      all.insert(d);
    }
  }
  std::string names;
  for (const std::string& d : all) absl::StrAppend(&names, names.empty() ? "" : ", ", d);
  return absl::InvalidArgumentError(absl::StrCat(
      "dtype ", dtype, " cannot run on this server's workers (their devices run ",
      names.empty() ? "no dtype" : names, "); choose one of those"));
}

std::optional<v1::Job> JobManager::WaitForJob(const std::string& worker, absl::Duration timeout) {
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(timeout);
  while (true) {
    int64_t generation;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (draining_ || shutdown_) return std::nullopt;
      generation = queue_generation_;
    }
    absl::StatusOr<std::optional<v1::Job>> job = scheduler_->ClaimNext(worker);
    if (!job.ok()) {
      std::fprintf(stderr, "sinkscope-server: claiming a job: %s\n", job.status().ToString().c_str());
    } else if (job->has_value()) {
      NotifyJob((**job).id());  // state changed, positions moved
      if (metrics_ != nullptr) {
        const v1::Job& j = **job;
        const double wait = (j.start_time().seconds() - j.create_time().seconds()) +
                            (j.start_time().nanos() - j.create_time().nanos()) * 1e-9;
        metrics_->JobQueueWait(j.type(), wait);
      }
      return **job;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (!queue_cv_.wait_until(
            lock, deadline,
            [&] { return queue_generation_ != generation || draining_ || shutdown_; })) {
      return std::nullopt;
    }
  }
}

absl::Status JobManager::RecordEvent(const v1::Job& job, const v1::JobEvent& event,
                                     std::optional<v1::JobState> new_state) {
  return RecordEvents(job, {event}, new_state);
}

absl::Status JobManager::RecordEvents(const v1::Job& job, const std::vector<v1::JobEvent>& events,
                                      std::optional<v1::JobState> new_state) {
  absl::StatusOr<std::vector<v1::JobEvent>> stored =
      store_->AppendEvents(job.id(), job.attempts(), events, new_state);
  if (stored.ok()) {
    OfferEvents(job.id(), *stored);
    NotifyJob(job.id(), /*queue_changed=*/false);
  }
  return stored.status();
}

namespace {

double SecondsSinceStart(const v1::Job& job) {
  if (!job.has_start_time()) return -1;
  const absl::Time start = absl::FromUnixSeconds(job.start_time().seconds()) +
                           absl::Nanoseconds(job.start_time().nanos());
  return absl::ToDoubleSeconds(absl::Now() - start);
}

const char* OutcomeLabel(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_COMPLETED: return "completed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "failed";
  }
}

}  // namespace

absl::Status JobManager::Finish(const v1::Job& job, v1::JobState state, const v1::JobEvent& event,
                                const std::vector<v1::JobEvent>& preceding) {
  absl::StatusOr<std::vector<v1::JobEvent>> stored =
      store_->FinishJob(job.id(), job.attempts(), state, preceding, event);
  if (stored.ok()) OfferEvents(job.id(), *stored);
  if (stored.ok() && metrics_ != nullptr) {
    const double seconds = SecondsSinceStart(job);
    metrics_->JobFinished(job.type(), OutcomeLabel(state), seconds);
    if (seconds > 0) metrics_->AddUserWorkerSeconds(job.owner(), seconds);
  }
  NotifyJob(job.id());
  return stored.status();
}

absl::StatusOr<ReleaseOutcome> JobManager::Release(const v1::Job& job, const std::string& reason,
                                                   bool count_failure) {
  absl::StatusOr<ReleaseOutcome> r =
      store_->ReleaseLostJob(job.id(), job.attempts(), reason, count_failure, max_attempts_);
  if (r.ok() && metrics_ != nullptr) {
    const double seconds = SecondsSinceStart(job);
    if (seconds > 0) metrics_->AddUserWorkerSeconds(job.owner(), seconds);
    if (*r == ReleaseOutcome::kFailed) metrics_->JobFinished(job.type(), "failed", seconds);
  }
  NotifyJob(job.id());
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
  queue_cv_.notify_all();
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
  queue_cv_.notify_all();
}

}  // namespace server
}  // namespace sinkscope
