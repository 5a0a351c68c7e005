#include "server/scheduler.h"

#include <algorithm>
#include <deque>
#include <numeric>
#include <tuple>
#include <utility>

namespace sinkscope {
namespace server {

namespace {

/// A worker that polled for work recently and runs nothing.
bool IsIdle(const WorkerView& w, absl::Time now) {
  return !w.busy && now - w.last_poll < absl::Seconds(2);
}

}  // namespace

bool FitsBudget(const QueuedJob& job, const WorkerView& worker) {
  return worker.budget_bytes <= 0 || job.need_bytes <= worker.budget_bytes;
}

std::optional<size_t> FifoPolicy::Pick(const std::vector<QueuedJob>& queue,
                                       const SchedulingContext& ctx) {
  auto it = ctx.workers.find(ctx.worker);
  for (size_t i = 0; i < queue.size(); ++i) {
    if (it == ctx.workers.end() || FitsBudget(queue[i], it->second)) return i;
  }
  return std::nullopt;
}

std::vector<size_t> FifoPolicy::Order(const std::vector<QueuedJob>& queue,
                                      const SchedulingContext&) {
  std::vector<size_t> order(queue.size());
  std::iota(order.begin(), order.end(), 0);
  return order;
}

FairSharePolicy::FairSharePolicy(std::map<std::string, double> weights, int max_running_per_user,
                                 bool affinity)
    : weights_(std::move(weights)), max_running_per_user_(max_running_per_user), affinity_(affinity) {}

double FairSharePolicy::Weight(const std::string& user) const {
  auto it = weights_.find(user);
  return it == weights_.end() ? 1.0 : it->second;
}

namespace {

/// Per-user candidate lists, best first (priority desc, then submission).
std::map<std::string, std::deque<size_t>> ByUser(const std::vector<QueuedJob>& queue,
                                                  const std::vector<bool>& eligible) {
  std::map<std::string, std::deque<size_t>> out;
  for (size_t i = 0; i < queue.size(); ++i) {
    if (eligible[i]) out[queue[i].owner].push_back(i);
  }
  for (auto& [user, list] : out) {
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      if (queue[a].priority != queue[b].priority) return queue[a].priority > queue[b].priority;
      return queue[a].queue_seq < queue[b].queue_seq;
    });
  }
  return out;
}

}  // namespace

std::optional<size_t> FairSharePolicy::Pick(const std::vector<QueuedJob>& queue,
                                            const SchedulingContext& ctx) {
  auto self = ctx.workers.find(ctx.worker);
  std::vector<bool> eligible(queue.size(), true);
  for (size_t i = 0; i < queue.size(); ++i) {
    if (self != ctx.workers.end() && !FitsBudget(queue[i], self->second)) eligible[i] = false;
    if (max_running_per_user_ > 0) {
      auto r = ctx.running_by_user.find(queue[i].owner);
      if (r != ctx.running_by_user.end() && r->second >= max_running_per_user_) eligible[i] = false;
    }
  }
  std::map<std::string, std::deque<size_t>> lists = ByUser(queue, eligible);
  while (true) {
    // The user with the smallest running share.
    const std::string* best_user = nullptr;
    std::tuple<double, int64_t, int64_t> best_key;
    for (const auto& [user, list] : lists) {
      if (list.empty()) continue;
      auto r = ctx.running_by_user.find(user);
      const double share = (r == ctx.running_by_user.end() ? 0 : r->second) / Weight(user);
      auto ls = last_served_.find(user);
      std::tuple<double, int64_t, int64_t> key{share, ls == last_served_.end() ? 0 : ls->second,
                                               queue[list.front()].queue_seq};
      if (best_user == nullptr || key < best_key) {
        best_user = &user;
        best_key = key;
      }
    }
    if (best_user == nullptr) return std::nullopt;
    std::deque<size_t>& list = lists[*best_user];
    const size_t pick = list.front();
    const QueuedJob& job = queue[pick];
    if (affinity_ && self != ctx.workers.end() && !job.model.empty() &&
        self->second.models.count(job.model) == 0) {
      bool other_holds = false;
      for (const auto& [name, w] : ctx.workers) {
        if (name != ctx.worker && IsIdle(w, ctx.now) && w.models.count(job.model) &&
            FitsBudget(job, w)) {
          other_holds = true;
        }
      }
      if (other_holds) {  // leave it to that worker
        list.pop_front();
        continue;
      }
    }
    return pick;
  }
}

std::vector<size_t> FairSharePolicy::Order(const std::vector<QueuedJob>& queue,
                                           const SchedulingContext& ctx) {
  std::map<std::string, std::deque<size_t>> lists =
      ByUser(queue, std::vector<bool>(queue.size(), true));
  std::map<std::string, int> running = ctx.running_by_user;
  std::map<std::string, int64_t> served = last_served_;
  int64_t tick = tick_;
  std::vector<size_t> order;
  order.reserve(queue.size());
  while (order.size() < queue.size()) {
    const std::string* best_user = nullptr;
    std::tuple<double, int64_t, int64_t> best_key;
    for (const auto& [user, list] : lists) {
      if (list.empty()) continue;
      std::tuple<double, int64_t, int64_t> key{running[user] / Weight(user), served[user],
                                               queue[list.front()].queue_seq};
      if (best_user == nullptr || key < best_key) {
        best_user = &user;
        best_key = key;
      }
    }
    std::deque<size_t>& list = lists[*best_user];
    order.push_back(list.front());
    list.pop_front();
    ++running[*best_user];
    served[*best_user] = ++tick;
  }
  return order;
}

void FairSharePolicy::Dispatched(const QueuedJob& job) { last_served_[job.owner] = ++tick_; }

Scheduler::Scheduler(JobStore* store, std::unique_ptr<SchedulingPolicy> policy, TraitsFn traits)
    : store_(store), policy_(std::move(policy)), traits_fn_(std::move(traits)) {}

void Scheduler::RememberTraits(const std::string& id, JobTraits traits) {
  std::lock_guard<std::mutex> lock(mu_);
  traits_[id] = std::move(traits);
}

void Scheduler::UpdateWorker(const std::string& worker, int64_t budget_bytes,
                             std::optional<std::set<std::string>> models) {
  std::lock_guard<std::mutex> lock(mu_);
  WorkerView& w = workers_[worker];
  w.budget_bytes = budget_bytes;
  if (models.has_value()) w.models = *std::move(models);
}

absl::StatusOr<std::vector<QueuedJob>> Scheduler::LoadQueue() {
  absl::StatusOr<std::vector<QueuedJob>> queue = store_->ListQueued();
  if (!queue.ok()) return queue.status();
  for (QueuedJob& job : *queue) {
    auto it = traits_.find(job.id);
    if (it == traits_.end()) {
      if (!traits_fn_) continue;
      it = traits_.emplace(job.id, traits_fn_(job.id)).first;
    }
    job.model = it->second.model;
    job.need_bytes = it->second.need_bytes;
  }
  return queue;
}

SchedulingContext Scheduler::ContextLocked(const std::string& worker) {
  SchedulingContext ctx;
  ctx.worker = worker;
  ctx.workers = workers_;
  for (const auto& [name, w] : peer_workers_) ctx.workers.emplace(name, w);
  for (const auto& [id, owner] : running_) ++ctx.running_by_user[owner];
  for (const auto& [owner, n] : peer_running_) ctx.running_by_user[owner] += n;
  ctx.now = absl::Now();
  return ctx;
}

absl::StatusOr<std::optional<v1::Job>> Scheduler::ClaimNext(const std::string& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  WorkerView& self = workers_[worker];
  self.busy = false;
  self.last_poll = absl::Now();
  absl::StatusOr<std::vector<QueuedJob>> queue = LoadQueue();
  if (!queue.ok()) return queue.status();
  SchedulingContext ctx = ContextLocked(worker);
  while (!queue->empty()) {
    const std::optional<size_t> pick = policy_->Pick(*queue, ctx);
    if (!pick.has_value()) break;
    const QueuedJob picked = (*queue)[*pick];
    absl::StatusOr<v1::Job> job = store_->ClaimJob(picked.id, worker);
    if (job.ok()) {
      policy_->Dispatched(picked);
      running_[picked.id] = picked.owner;
      running_worker_[picked.id] = worker;
      traits_.erase(picked.id);
      workers_[worker].busy = true;
      return std::optional<v1::Job>(*std::move(job));
    }
    if (!absl::IsFailedPrecondition(job.status())) return job.status();
    traits_.erase(picked.id);
    queue->erase(queue->begin() + *pick);  // cancelled meanwhile
  }
  return std::optional<v1::Job>();
}

void Scheduler::JobEnded(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  running_.erase(id);
  auto it = running_worker_.find(id);
  if (it != running_worker_.end()) {
    workers_[it->second].busy = false;
    running_worker_.erase(it);
  }
}

absl::StatusOr<int32_t> Scheduler::QueuePosition(const std::string& id) {
  absl::StatusOr<std::vector<std::pair<QueuedJob, int32_t>>> all = Positions();
  if (!all.ok()) return all.status();
  for (const auto& [job, pos] : *all) {
    if (job.id == id) return pos;
  }
  return 0;
}

absl::StatusOr<std::vector<std::pair<QueuedJob, int32_t>>> Scheduler::Positions() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::vector<QueuedJob>> queue = LoadQueue();
  if (!queue.ok()) return queue.status();
  // Forget traits of jobs that left the queue without a claim (cancelled).
  if (traits_.size() > queue->size()) {
    std::set<std::string> ids;
    for (const QueuedJob& j : *queue) ids.insert(j.id);
    for (auto it = traits_.begin(); it != traits_.end();) {
      it = ids.count(it->first) ? std::next(it) : traits_.erase(it);
    }
  }
  std::vector<size_t> order = policy_->Order(*queue, ContextLocked(""));
  std::vector<std::pair<QueuedJob, int32_t>> out;
  out.reserve(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    out.emplace_back((*queue)[order[i]], static_cast<int32_t>(i + 1));
  }
  return out;
}

absl::StatusOr<std::map<std::string, int>> Scheduler::QueuedByUser() {
  absl::StatusOr<std::vector<QueuedJob>> queue = store_->ListQueued();
  if (!queue.ok()) return queue.status();
  std::map<std::string, int> out;
  for (const QueuedJob& j : *queue) ++out[j.owner];
  return out;
}

std::map<std::string, int> Scheduler::RunningByUser() {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, int> out;
  for (const auto& [id, owner] : running_) ++out[owner];
  return out;
}

std::map<std::string, WorkerView> Scheduler::LocalWorkers() {
  std::lock_guard<std::mutex> lock(mu_);
  return workers_;
}

void Scheduler::SetPeers(std::map<std::string, WorkerView> workers,
                         std::map<std::string, int> running) {
  std::lock_guard<std::mutex> lock(mu_);
  peer_workers_ = std::move(workers);
  peer_running_ = std::move(running);
}

}  // namespace server
}  // namespace sinkscope
