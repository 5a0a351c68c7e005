#include "server/worker_pool.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <condition_variable>
#include <set>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/job_types.h"
#include "server/status_util.h"
#include "server/train_validation.h"
#include "sinkscope/v1/worker.grpc.pb.h"

namespace sinkscope {
namespace server {

struct WorkerPool::Slot {
  int index = 0;
  std::string name;    // "worker-0"
  std::string device;  // "cpu"
  std::string socket_path;
  pid_t pid = -1;  // guarded by WorkerPool::mu_ for reads from other threads
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::WorkerService::Stub> stub;
  grpc::ClientContext* running_ctx = nullptr;  // guarded by WorkerPool::mu_
  std::thread thread;
  int restarts = 0;
  int64_t budget_bytes = 0;      // memory budget (0 = unlimited)
  std::string state = "down";    // guarded by WorkerPool::mu_
  int start_failures = 0;        // consecutive; guarded by WorkerPool::mu_
  std::string last_failure;      // how the last start failed; guarded by mu_
};

namespace {

void Log(const std::string& message) {
  std::fprintf(stderr, "sinkscope-server: %s\n", message.c_str());
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status));
  return absl::StrCat("ended (wait status ", status, ")");
}

/// fork + exec with an empty signal mask and PR_SET_PDEATHSIG, so that a
/// worker never outlives a server that dies (even by SIGKILL).
pid_t SpawnProcess(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, nullptr);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

JobDeadlines DeadlinesForJob(const ServerConfig& config, v1::JobType type, int64_t token_layers) {
  JobDeadlines d;
  d.lease = absl::Milliseconds(config.lease_timeout_ms);
  d.scale = config.progress_timeout_scale;
  d.load = absl::Seconds(900) * config.progress_timeout_scale;
  d.token_layers = token_layers;
  // Longer for jobs whose calibration / detection passes run before the first unit.
  const JobTypeDescriptor* job = FindJobType(type);
  d.progress_base = absl::Seconds(job != nullptr ? job->progress_base_seconds : 120);
  return d;
}

WorkerPool::WorkerPool(JobManager* manager, ServerConfig config, std::string runtime_dir)
    : manager_(manager), config_(std::move(config)), runtime_dir_(std::move(runtime_dir)) {
  for (size_t i = 0; i < config_.worker_devices.size(); ++i) {
    auto slot = std::make_unique<Slot>();
    slot->index = static_cast<int>(i);
    slot->name = absl::StrCat("worker-", i);
    slot->device = config_.worker_devices[i];
    slot->socket_path = absl::StrCat(runtime_dir_, "/w", i, ".sock");
    slot->budget_bytes = WorkerMemoryBudget(config_, i);
    slots_.push_back(std::move(slot));
  }
}

WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::SetState(Slot* slot, const char* state) {
  std::map<std::string, int> counts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot->state == state) return;
    slot->state = state;
    for (const auto& s : slots_) ++counts[s->state];
  }
  if (Metrics* m = manager_->metrics()) m->SetWorkerStates(counts);
}

void WorkerPool::RefreshStatus(Slot* slot) {
  if (!slot->stub) return;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::GetStatusRequest request;
  v1::WorkerStatus status;
  if (!slot->stub->GetStatus(&ctx, request, &status).ok()) return;
  std::set<std::string> models;
  for (const v1::LoadedModel& m : status.loaded_models()) models.insert(m.name());
  manager_->SetWorkerDtypes(slot->name, std::vector<std::string>(status.supported_dtypes().begin(),
                                                                 status.supported_dtypes().end()));
  // A cuda worker without a configured budget enforces one from its device's
  // real capacity: the scheduler plans with the budget the worker reports.
  const int64_t budget = slot->budget_bytes > 0 ? slot->budget_bytes : status.budget_bytes();
  manager_->scheduler()->UpdateWorker(slot->name, budget, std::move(models));
  if (Metrics* m = manager_->metrics()) {
    m->SetWorkerMemory(slot->name, "rss", status.rss_bytes());
    m->SetWorkerMemory(slot->name, "device_models", status.model_bytes());
    m->SetWorkerMemory(slot->name, "budget", budget);
    if (status.device_total_bytes() > 0) {
      m->SetWorkerMemory(slot->name, "device_allocated", status.device_allocated_bytes());
      m->SetWorkerMemory(slot->name, "device_reserved", status.device_reserved_bytes());
      m->SetWorkerMemory(slot->name, "device_total", status.device_total_bytes());
      m->SetWorkerMemory(slot->name, "device_free", status.device_free_bytes());
    }
  }
}

absl::Status WorkerPool::Start() {
  if (access(config_.worker_binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker binary ", config_.worker_binary, " is not executable"));
  }
  for (auto& slot : slots_) {
    Slot* s = slot.get();
    manager_->scheduler()->UpdateWorker(s->name, s->budget_bytes, std::set<std::string>());
    if (Metrics* m = manager_->metrics()) m->SetWorkerMemory(s->name, "budget", s->budget_bytes);
    SetState(s, "down");
    s->thread = std::thread([this, s] { SlotLoop(s); });
  }
  manager_->SetWorkerHealthSource([this] { return Health(); });
  return absl::OkStatus();
}

v1::WorkerHealth WorkerPool::Health() const {
  v1::WorkerHealth health;
  std::lock_guard<std::mutex> lock(mu_);
  health.set_total(static_cast<int32_t>(slots_.size()));
  const Slot* first_down = nullptr;
  for (const auto& slot : slots_) {
    if (slot->state == "idle" || slot->state == "busy") health.set_up(health.up() + 1);
    if (slot->start_failures >= kDownAfterFailures) {
      health.set_down(health.down() + 1);
      if (first_down == nullptr) first_down = slot.get();
    }
  }
  if (!slots_.empty() && health.down() == health.total()) {
    health.set_problem(absl::StrCat(
        "no worker is running: worker ", first_down->index, " failed to start ",
        first_down->start_failures, " times in a row (", first_down->last_failure,
        "); queued jobs wait until a worker starts; see the server log"));
  }
  return health;
}

void WorkerPool::SleepUnlessStopping(absl::Duration d) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoMilliseconds(d), [&] { return stopping_; });
}

bool WorkerPool::CheckHealth(Slot* slot, absl::Duration timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  ctx.set_wait_for_ready(true);
  v1::HealthRequest request;
  v1::HealthResponse response;
  grpc::Status status = slot->stub->Health(&ctx, request, &response);
  return status.ok() && response.serving();
}

bool WorkerPool::EnsureWorker(Slot* slot) {
  if (slot->pid > 0) {
    int wstatus = 0;
    if (waitpid(slot->pid, &wstatus, WNOHANG) == slot->pid) {
      Log(absl::StrCat(slot->name, " (pid ", slot->pid, ") ", DescribeWaitStatus(wstatus)));
      std::lock_guard<std::mutex> lock(mu_);
      slot->pid = -1;
    }
  }
  if (slot->pid > 0) return true;
  SetState(slot, "starting");

  std::vector<std::string> argv = {config_.worker_binary, "--socket", slot->socket_path,
                                   "--device", slot->device};
  if (config_.worker_threads > 0) {
    argv.push_back("--threads");
    argv.push_back(absl::StrCat(config_.worker_threads));
  }
  if (slot->budget_bytes > 0) {
    argv.push_back("--memory-budget-bytes");
    argv.push_back(absl::StrCat(slot->budget_bytes));
  }
  for (const std::string& a : config_.worker_args) argv.push_back(a);
  unlink(slot->socket_path.c_str());
  const pid_t pid = SpawnProcess(argv);
  if (pid < 0) {
    Log(absl::StrCat(slot->name, ": fork failed: ", std::strerror(errno)));
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot->pid = pid;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Reconnect quickly to a restarted worker.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  slot->channel = grpc::CreateCustomChannel("unix:" + slot->socket_path,
                                            grpc::InsecureChannelCredentials(), args);
  slot->stub = v1::WorkerService::NewStub(slot->channel);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return false;
    }
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      std::string how = WIFEXITED(wstatus) ? absl::StrCat("exit ", WEXITSTATUS(wstatus))
                                           : DescribeWaitStatus(wstatus);
      int failures;
      {
        std::lock_guard<std::mutex> lock(mu_);
        slot->pid = -1;
        failures = ++slot->start_failures;
        slot->last_failure = how;
      }
      Log(absl::StrCat(slot->name, " (pid ", pid, ") failed to start: ", DescribeWaitStatus(wstatus),
                       " (", failures, " time(s) in a row)"));
      SetState(slot, "down");
      return false;
    }
    if (CheckHealth(slot, absl::Milliseconds(500))) {
      Log(absl::StrCat(slot->name, " (pid ", pid, ", ", slot->device, ") ready on unix:",
                       slot->socket_path, slot->restarts > 0 ? absl::StrCat(", restart ", slot->restarts) : ""));
      if (slot->restarts > 0) {
        if (Metrics* m = manager_->metrics()) m->WorkerRestarted();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        slot->start_failures = 0;
        slot->last_failure.clear();
      }
      ++slot->restarts;
      // A fresh process caches nothing.
      manager_->scheduler()->UpdateWorker(slot->name, slot->budget_bytes, std::set<std::string>());
      SetState(slot, "idle");
      RefreshStatus(slot);
      return true;
    }
  }
  Log(absl::StrCat(slot->name, " (pid ", pid, ") did not become healthy in 60 s; killing it"));
  ReapWorker(slot, absl::ZeroDuration(), SIGKILL);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++slot->start_failures;
    slot->last_failure = "not healthy within 60 s";
  }
  SetState(slot, "down");
  return false;
}

std::string WorkerPool::ReapWorker(Slot* slot, absl::Duration grace, int kill_signal) {
  const pid_t pid = slot->pid;
  if (pid <= 0) return absl::StrCat(slot->name, " is not running");
  const absl::Time deadline = absl::Now() + grace;
  int wstatus = 0;
  std::string how;
  while (true) {
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      how = DescribeWaitStatus(wstatus);
      break;
    }
    if (absl::Now() >= deadline) {
      kill(pid, kill_signal);
      if (kill_signal != SIGKILL) {
        // Give it two seconds to stop cleanly, then force it.
        const absl::Time hard = absl::Now() + absl::Seconds(2);
        while (absl::Now() < hard && waitpid(pid, &wstatus, WNOHANG) != pid) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        if (kill(pid, 0) == 0 && waitpid(pid, &wstatus, WNOHANG) != pid) {
          kill(pid, SIGKILL);
          waitpid(pid, &wstatus, 0);
        }
      } else {
        waitpid(pid, &wstatus, 0);
      }
      how = absl::StrCat("stopped by the server (", DescribeWaitStatus(wstatus), ")");
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot->pid = -1;
  }
  SetState(slot, "down");
  unlink(slot->socket_path.c_str());
  return absl::StrCat(slot->name, " (pid ", pid, ") ", how);
}

void WorkerPool::SlotLoop(Slot* slot) {
  absl::Time last_health = absl::Now();
  absl::Time last_status = absl::Now();
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
    }
    if (!EnsureWorker(slot)) {
      // Exponential backoff on consecutive startup failures: 1 s, 2 s, 4 s, ... 60 s.
      int failures;
      {
        std::lock_guard<std::mutex> lock(mu_);
        failures = slot->start_failures;
      }
      const int shift = std::min(std::max(failures - 1, 0), 6);
      const int delay_s = std::min(1 << shift, kMaxStartBackoffS);
      if (failures >= kDownAfterFailures) {
        Log(absl::StrCat(slot->name, " is down after ", failures,
                         " failed starts; next attempt in ", delay_s, " s"));
      }
      SleepUnlessStopping(absl::Seconds(delay_s));
      continue;
    }
    if (manager_->draining()) {
      SleepUnlessStopping(absl::Milliseconds(200));
      continue;
    }
    std::optional<v1::Job> job = manager_->WaitForJob(slot->name, absl::Seconds(1));
    if (!job.has_value()) {
      if (absl::Now() - last_health > absl::Seconds(5)) {
        last_health = absl::Now();
        if (!CheckHealth(slot, absl::Seconds(5))) {
          Log(absl::StrCat(slot->name, " failed its health check; restarting: ",
                           ReapWorker(slot, absl::ZeroDuration(), SIGKILL)));
        } else {
          RefreshStatus(slot);
          last_status = absl::Now();
        }
      }
      continue;
    }
    SetState(slot, "busy");
    const bool changed = RunJob(slot, *job);
    manager_->scheduler()->JobEnded(job->id());
    if (slot->pid > 0) {
      SetState(slot, "idle");
      // A GetStatus round trip after every job cost each small job ~0.3 ms
      // of both processes; the cached models only change with a load, and
      // the memory gauges are refreshed at least every 5 s.
      if (changed || absl::Now() - last_status > absl::Seconds(5)) {
        RefreshStatus(slot);
        last_status = absl::Now();
      }
    }
    last_health = absl::Now();
  }
  if (slot->pid > 0) ReapWorker(slot, absl::ZeroDuration(), SIGTERM);
}

std::optional<absl::Status> WorkerPool::ResolveRunRequest(const v1::Job& job,
                                                          v1::RunJobRequest* out) {
  const v1::JobRequest& request = job.request();
  v1::RunJobRequest& run = *out;
  run.set_job_id(job.id());
  run.set_attempt(job.attempts());
  *run.mutable_request() = request;
  // The catalog as the job's owner sees it (with their training checkpoints).
  const std::shared_ptr<const ModelCatalog> catalog = manager_->CatalogFor(job.owner());
  const CatalogEntry* entry = catalog->Find(request.model());
  absl::StatusOr<std::string> dtype = DtypeFromProto(request.dtype());
  std::optional<absl::Status> early_failure;
  if (request.has_train()) {
    // A training run: its directory, its corpus and (optionally) the model
    // it starts from; the worker does not load a model into its cache.
    run.set_run_dir(absl::StrCat(manager_->UserRunsDir(job.owner()), "/", request.train().run_name()));
    if (!request.model().empty()) {
      if (entry == nullptr) {
        early_failure = absl::NotFoundError(absl::StrCat("model ", request.model(), " left the catalog"));
      } else {
        v1::ResolvedModel* m = run.mutable_model();
        m->set_name(entry->name);
        m->set_format(entry->format);
        m->set_path(entry->path);
        m->set_dtype("float32");
      }
    }
    const CorpusEntry* corpus = catalog->FindCorpus(request.train().corpus());
    if (corpus == nullptr) {
      early_failure = absl::NotFoundError(absl::StrCat("corpus ", request.train().corpus(), " left the catalog"));
    } else {
      v1::ResolvedCorpus* c = run.mutable_corpus();
      c->set_name(corpus->name);
      c->set_path(corpus->path);
      // The tokenizer that reads it ("" = bytes).
      absl::StatusOr<const CatalogEntry*> tokenizer = TrainTokenizer(request, *catalog);
      if (!tokenizer.ok()) {
        early_failure = tokenizer.status();
      } else if (*tokenizer != nullptr) {
        c->set_tokenizer_path((*tokenizer)->tokenizer_path);
      }
    }
  } else if (entry == nullptr) {
    early_failure = absl::NotFoundError(absl::StrCat("model ", request.model(), " left the catalog"));
  } else if (!dtype.ok()) {
    early_failure = dtype.status();
  } else {
    v1::ResolvedModel* m = run.mutable_model();
    m->set_name(entry->name);
    m->set_format(entry->format);
    m->set_path(entry->path);
    m->set_tokenizer_path(entry->tokenizer_path);
    m->set_dtype(dtype->empty() ? entry->default_dtype : *dtype);
    // A catalog corpus (perplexity / intervention jobs) becomes a path here.
    if (const std::string corpus_name = CorpusNameOf(request); !corpus_name.empty()) {
      const CorpusEntry* corpus = manager_->FindCorpus(corpus_name);
      if (corpus == nullptr) {
        early_failure = absl::NotFoundError(absl::StrCat("corpus ", corpus_name, " left the catalog"));
      } else {
        v1::ResolvedCorpus* c = run.mutable_corpus();
        c->set_name(corpus->name);
        c->set_path(corpus->path);
        c->set_tokenizer_path(corpus->tokenizer_path);
      }
    }
  }

  if (!early_failure.has_value() && request.has_profile()) {
    // A comparison's models, resolved now; one the catalog lacks, marks
    // unavailable or that cannot read the corpus goes by name with its
    // reason and gets its failed row.
    std::vector<std::string> names;
    for (const std::string& pattern : request.profile().compare_models()) {
      std::vector<std::string> expanded = ExpandCheckpoints(*catalog, pattern);
      // A pattern no checkpoint matches keeps its place as a failed row.
      if (expanded.empty()) expanded.push_back(pattern);
      names.insert(names.end(), expanded.begin(), expanded.end());
    }
    for (const std::string& name : names) {
      v1::ResolvedModel* m = run.add_compare_models();
      m->set_name(name);
      const CatalogEntry* other = catalog->Find(name);
      const CorpusEntry* corpus = catalog->FindCorpus(request.profile().eval().corpus());
      int64_t weight_bytes = 0;
      if (other == nullptr) {
        m->set_unavailable_reason(absl::StrCat("model ", name, " is not in the catalog"));
      } else if (!other->available) {
        m->set_unavailable_reason(
            absl::StrCat("model ", name, " is not available: ", other->unavailable_reason));
      } else if (absl::Status s = corpus == nullptr ? absl::OkStatus()
                                                    : CheckCorpusTokenizer(*other, *corpus);
                 !s.ok()) {
        m->set_unavailable_reason(std::string(s.message()));
      } else {
        m->set_format(other->format);
        m->set_path(other->path);
        m->set_tokenizer_path(other->tokenizer_path);
        m->set_dtype(dtype->empty() ? other->default_dtype : *dtype);
        v1::JobRequest as_other = request;
        as_other.set_model(name);
        as_other.mutable_profile()->clear_compare_models();
        if (absl::StatusOr<MemoryEstimate> e = manager_->Estimate(as_other, job.owner()); e.ok()) {
          weight_bytes = e->weight_bytes;
        }
      }
      run.add_compare_weight_bytes(weight_bytes);
    }
  }
  run.set_max_total_tokens(config_.max_total_tokens);
  run.set_heartbeat_interval_ms(config_.heartbeat_interval_ms);
  if (!early_failure.has_value()) {
    absl::StatusOr<MemoryEstimate> estimate = manager_->Estimate(request, job.owner());
    if (estimate.ok()) {
      run.set_estimated_weight_bytes(estimate->weight_bytes);
      run.set_estimated_activation_bytes(estimate->activation_bytes);
    }
  }
  return early_failure;
}

bool WorkerPool::RunJob(Slot* slot, const v1::Job& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++running_jobs_;
  }
  const v1::JobRequest& request = job.request();
  v1::RunJobRequest run;
  std::optional<absl::Status> early_failure = ResolveRunRequest(job, &run);
  const CatalogEntry* entry = manager_->FindModel(request.model());

  std::optional<v1::JobFinished> finished;
  std::string watchdog_reason;  // set when the watchdog killed the worker
  int64_t result_bytes = 0;
  bool results_too_large = false;
  bool store_rejected = false;
  int64_t n_tokens = 0;
  int64_t train_tokens = 0;  // a training job's tokens of this attempt, counted so far
  std::string yield_reason;  // set when a training job yields its worker
  std::optional<absl::Time> load_started;
  bool model_loaded = false;  // a "loaded" or "cached" ModelLoading event came
  int n_records = 0;
  // The worker's models or memory changed (a load): ask for its status.
  bool refresh_status = false;
  // Records that came in one batch with a successful JobFinished: stored
  // with the completion (or on their own if the job does not complete).
  std::vector<v1::JobEvent> deferred;
  grpc::Status rpc_status;
  if (!early_failure.has_value()) {
    grpc::ClientContext ctx;
    bool abort_now = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot->running_ctx = &ctx;
      abort_now = aborting_;
    }
    if (!manager_->SetRunning(job.id(), [&ctx] { ctx.TryCancel(); })) abort_now = true;
    if (abort_now) ctx.TryCancel();
    std::unique_ptr<grpc::ClientReader<v1::WorkerEvent>> reader = slot->stub->RunJob(&ctx, run);
    // The job's lease: every event (heartbeats included) renews it; the
    // watchdog kills a worker that stops renewing (SIGSTOP, a hung process),
    // or whose units stop advancing past the job's progress deadline.
    const JobDeadlines deadlines = DeadlinesFor(job);
    std::mutex lease_mu;
    std::condition_variable lease_cv;
    absl::Time last_event = absl::Now(), last_progress = absl::Now();
    const absl::Time lease_start = absl::Now();
    int64_t lease_units = -1, lease_units_total = 0;
    bool loading = true, lease_done = false;
    auto renew = [&](std::optional<int64_t> units_done, int64_t units_total, bool loaded) {
      std::lock_guard<std::mutex> lock(lease_mu);
      last_event = absl::Now();
      if (loaded && loading) {
        loading = false;
        last_progress = last_event;
      }
      if (units_done.has_value() && *units_done > lease_units) {
        lease_units = *units_done;
        lease_units_total = units_total;
        last_progress = last_event;
      }
    };
    std::thread watchdog([&] {
      std::unique_lock<std::mutex> lock(lease_mu);
      while (!lease_done) {
        lease_cv.wait_for(lock, std::chrono::milliseconds(100));
        if (lease_done) break;
        const absl::Time now = absl::Now();
        std::string why;
        if (now - last_event > deadlines.lease) {
          why = absl::StrCat("lease expired: ", slot->name, " sent no event or heartbeat for ",
                             absl::FormatDuration(absl::Trunc(now - last_event, absl::Milliseconds(100))),
                             " (lease deadline ", absl::FormatDuration(deadlines.lease), ")");
        } else if (loading && now - lease_start > deadlines.load) {
          why = absl::StrCat("model load did not finish within its deadline of ",
                             absl::FormatDuration(deadlines.load));
        } else if (!loading && now - last_progress > deadlines.Progress(lease_units_total)) {
          why = absl::StrCat("no progress for ",
                             absl::FormatDuration(absl::Trunc(now - last_progress, absl::Seconds(1))),
                             " at unit ", std::max<int64_t>(lease_units, 0), "/", lease_units_total,
                             " (progress deadline ",
                             absl::FormatDuration(absl::Trunc(deadlines.Progress(lease_units_total), absl::Seconds(1))),
                             " for this ", v1::JobType_Name(job.type()), " job of ",
                             deadlines.token_layers, " token-layers)");
        }
        if (why.empty()) continue;
        pid_t pid;
        {
          std::lock_guard<std::mutex> pool_lock(mu_);
          pid = slot->pid;
        }
        Log(absl::StrCat(job.id(), " attempt ", job.attempts(), ": watchdog: ", why,
                         "; killing ", slot->name, " (pid ", pid, ")"));
        watchdog_reason = absl::StrCat("watchdog: ", why, "; killed ", slot->name);
        if (pid > 0) kill(pid, SIGKILL);
        ctx.TryCancel();
        break;
      }
    });
    auto stop_watchdog = [&] {
      {
        std::lock_guard<std::mutex> lock(lease_mu);
        lease_done = true;
      }
      lease_cv.notify_all();
      if (watchdog.joinable()) watchdog.join();
    };
    // One stored job event per worker event; a WorkerEventBatch's events
    // are stored together (one transaction, one notification).
    std::vector<v1::JobEvent> to_store;
    std::optional<v1::JobState> new_state;
    // Turns one (non-batch) worker event into a job event to store; false
    // when the job must stop (its results grew past the limit).
    auto take = [&](const v1::WorkerEvent& event) -> bool {
      if (event.has_heartbeat()) {
        renew(event.heartbeat().units_done(), event.heartbeat().units_total(), false);
        return true;  // renews the lease; never stored
      }
      renew(event.has_running() ? std::optional<int64_t>(event.running().units_done())
                                : std::nullopt,
            event.running().units_total(),
            event.has_model_loading() && event.model_loading().phase() != "loading");
      v1::JobEvent job_event;
      switch (event.event_case()) {
        case v1::WorkerEvent::kModelLoading:
          *job_event.mutable_model_loading() = event.model_loading();
          if (event.model_loading().phase() != "loading") model_loaded = true;
          if (event.model_loading().phase() == "loading") {
            load_started = absl::Now();
          } else if (event.model_loading().phase() == "loaded" && load_started.has_value()) {
            if (Metrics* m = manager_->metrics()) {
              m->ModelLoaded(absl::ToDoubleSeconds(absl::Now() - *load_started));
            }
          }
          if (event.model_loading().phase() == "loaded") refresh_status = true;
          break;
        case v1::WorkerEvent::kRunning:
          *job_event.mutable_running() = event.running();
          new_state = v1::JOB_STATE_RUNNING;
          break;
        case v1::WorkerEvent::kResult:
          result_bytes += static_cast<int64_t>(event.result().ByteSizeLong());
          if (result_bytes > config_.max_result_bytes) {
            results_too_large = true;
            return false;
          }
          renew(lease_units + 1, lease_units_total, false);  // a record is progress too
          *job_event.mutable_result() = event.result();
          new_state = v1::JOB_STATE_RUNNING;
          ++n_records;
          if (event.result().has_scan_summary()) {
            n_tokens = event.result().scan_summary().provenance().n_tokens();
          }
          if (event.result().has_train_step() && !event.result().train_step().replayed()) {
            const v1::TrainStep& t = event.result().train_step();
            const int64_t bt = std::max<int64_t>(
                1, request.train().recipe().batch_size() * request.train().recipe().seq_len());
            if (Metrics* m = manager_->metrics()) {
              m->TrainProgress((t.tokens() - train_tokens) / bt, t.tokens() - train_tokens,
                               t.checkpoint().empty() ? 0 : 1);
            }
            train_tokens = t.tokens();
            // Fairness: a long run yields its worker at a checkpoint when
            // another user's job has waited too long (it resumes from there).
            if (!t.checkpoint().empty() && t.step() < t.steps() && config_.train_yield_after_s > 0 &&
                yield_reason.empty() &&
                manager_->OthersWaitedLonger(job.owner(), absl::Seconds(config_.train_yield_after_s))) {
              yield_reason = absl::StrCat(
                  "yielded its worker at checkpoint ", t.checkpoint(), ": another user's job waited more than ",
                  config_.train_yield_after_s, " s (train_yield_after_s); resumes from that checkpoint");
            }
          }
          break;
        case v1::WorkerEvent::kFinished:
          finished = event.finished();
          return true;
        default:  // a batch inside a batch, or an unknown event: ignored
          return true;
      }
      to_store.push_back(std::move(job_event));
      return true;
    };
    v1::WorkerEvent event;
    while (reader->Read(&event)) {
      to_store.clear();
      new_state.reset();
      bool go_on = true;
      if (event.has_batch()) {
        for (const v1::WorkerEvent& e : event.batch().events()) {
          if (!(go_on = take(e))) break;
        }
      } else {
        go_on = take(event);
      }
      if (!go_on) {
        ctx.TryCancel();
        break;
      }
      if (to_store.empty()) continue;
      if (finished.has_value() && finished->code() == 0) {
        // The worker's last batch ended with its JobFinished: these records
        // are stored with COMPLETED, in its (durable) transaction.
        deferred = std::move(to_store);
        to_store.clear();
        continue;
      }
      absl::Status stored = manager_->RecordEvents(job, to_store, new_state);
      if (!stored.ok()) {
        Log(absl::StrCat(job.id(), ": not recording worker event: ", stored.ToString()));
        store_rejected = true;
        ctx.TryCancel();
        break;
      }
      if (!yield_reason.empty()) {
        ctx.TryCancel();
        break;
      }
    }
    rpc_status = reader->Finish();
    stop_watchdog();
    (void)model_loaded;
    manager_->ClearRunning(job.id());
    std::lock_guard<std::mutex> lock(mu_);
    slot->running_ctx = nullptr;
  }

  bool aborting;
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborting = aborting_;
  }
  const std::string cancelled_by = manager_->CancelRequester(job.id());
  auto finish_cancelled = [&] {
    v1::JobEvent e;
    e.mutable_cancelled()->set_reason(absl::StrCat("cancelled by ", cancelled_by));
    absl::Status s = manager_->Finish(job, v1::JOB_STATE_CANCELLED, e);
    if (!s.ok()) Log(absl::StrCat(job.id(), ": ", s.ToString()));
  };
  auto finish_failed = [&](int code, const std::string& message) {
    v1::JobEvent e;
    e.mutable_failed()->set_code(code);
    e.mutable_failed()->set_message(TruncateMessage(message));
    absl::Status s = manager_->Finish(job, v1::JOB_STATE_FAILED, e);
    if (!s.ok()) Log(absl::StrCat(job.id(), ": ", s.ToString()));
  };
  auto release = [&](const std::string& reason, bool count_failure) {
    absl::StatusOr<ReleaseOutcome> r = manager_->Release(job, reason, count_failure);
    if (!r.ok()) {
      Log(absl::StrCat(job.id(), ": re-queueing: ", r.status().ToString()));
    } else {
      Log(absl::StrCat(job.id(), " attempt ", job.attempts(), ": ", reason, " -> ",
                       *r == ReleaseOutcome::kRequeued ? "re-queued"
                       : *r == ReleaseOutcome::kFailed ? "failed" : "already finished"));
    }
  };

  const bool completes = !early_failure.has_value() && !results_too_large && !store_rejected &&
                         !(!watchdog_reason.empty() && cancelled_by.empty() && !aborting) &&
                         finished.has_value() && finished->code() == 0;
  if (!deferred.empty() && !completes) {
    absl::Status s = manager_->RecordEvents(job, deferred, v1::JOB_STATE_RUNNING);
    if (!s.ok()) Log(absl::StrCat(job.id(), ": not recording worker events: ", s.ToString()));
    deferred.clear();
  }
  if (early_failure.has_value()) {
    finish_failed(static_cast<int>(early_failure->code()), std::string(early_failure->message()));
  } else if (results_too_large) {
    finish_failed(static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED),
                  absl::StrCat("the job's results exceed ", config_.max_result_bytes,
                               " bytes (max_result_bytes); ask for less (fewer sequences, "
                               "layers or probed tokens)"));
  } else if (!watchdog_reason.empty() && cancelled_by.empty() && !aborting) {
    const std::string how = ReapWorker(slot, absl::Seconds(2), SIGKILL);
    release(absl::StrCat(watchdog_reason, " (", how, ")"), /*count_failure=*/true);
  } else if (store_rejected) {
    // The job was finished elsewhere (cancelled while being claimed, ...).
    if (!cancelled_by.empty()) finish_cancelled();
  } else if (!yield_reason.empty() && cancelled_by.empty() && !aborting) {
    release(yield_reason, /*count_failure=*/false);
  } else if (finished.has_value()) {
    if (finished->code() == 0) {
      v1::JobEvent e;
      e.mutable_completed()->set_n_records(n_records);
      if (n_tokens == 0) {  // job types without a scan summary: count the ids
        for (const v1::Sequence& seq : request.sequences()) {
          n_tokens += seq.has_ids() ? seq.ids().ids_size() : 0;
        }
      }
      if (Metrics* m = manager_->metrics()) m->TokensProcessed(n_tokens);
      absl::Status s = manager_->Finish(job, v1::JOB_STATE_COMPLETED, e, deferred);
      if (!s.ok()) Log(absl::StrCat(job.id(), ": recording completion: ", s.ToString()));
    } else if (finished->code() == static_cast<int>(grpc::StatusCode::CANCELLED)) {
      if (!cancelled_by.empty()) {
        finish_cancelled();
      } else {
        release(absl::StrCat(slot->name, " stopped the job: ", finished->message()), !aborting);
      }
    } else {
      if (finished->checkpoint_error() && entry != nullptr) {
        // The checkpoint (or tokenizer) file cannot be read: refuse further
        // jobs on it until its file changes or an admin clears the mark
        // (the worker's message holds no paths). Any other failure (dtype,
        // device, memory, a parameter found late) is this job's alone.
        Log(absl::StrCat(job.id(), ": model ", entry->name, " (", entry->path,
                         ") failed to load; marking it unavailable: ", finished->message()));
        manager_->MarkModelLoadFailed(entry->name, finished->message());
      }
      finish_failed(finished->code(), finished->message());
    }
  } else if (!cancelled_by.empty()) {
    finish_cancelled();
  } else if (aborting) {
    release("server shutting down", /*count_failure=*/false);
  } else {
    // The stream broke without a JobFinished: the worker is gone or wedged.
    const std::string how = ReapWorker(slot, absl::Seconds(2), SIGKILL);
    release(absl::StrCat(how, "; stream: ", rpc_status.error_message()), /*count_failure=*/true);
  }
  manager_->ForgetCancel(job.id());
  {
    std::lock_guard<std::mutex> lock(mu_);
    --running_jobs_;
  }
  cv_.notify_all();
  return refresh_status || !finished.has_value() || finished->code() != 0;
}

bool WorkerPool::WaitIdle(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoMilliseconds(std::max(absl::ZeroDuration(), deadline - absl::Now())),
                      [&] { return running_jobs_ == 0; });
}

void WorkerPool::AbortRunning() {
  std::lock_guard<std::mutex> lock(mu_);
  aborting_ = true;
  for (auto& slot : slots_) {
    if (slot->running_ctx != nullptr) slot->running_ctx->TryCancel();
  }
}

void WorkerPool::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      // Already stopped (or stopping): threads are joined below only once.
    }
    stopping_ = true;
    aborting_ = true;
    for (auto& slot : slots_) {
      if (slot->running_ctx != nullptr) slot->running_ctx->TryCancel();
    }
  }
  cv_.notify_all();
  manager_->Shutdown();
  manager_->SetWorkerHealthSource(nullptr);  // the pool may go away after this
  for (auto& slot : slots_) {
    if (slot->thread.joinable()) slot->thread.join();
  }
}

std::vector<pid_t> WorkerPool::WorkerPids() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<pid_t> out;
  for (const auto& slot : slots_) out.push_back(slot->pid);
  return out;
}

}  // namespace server
}  // namespace sinkscope
