// Scheduler: which queued job a free worker takes next.
//
// The SchedulingPolicy seam sees each queued job's owner, priority,
// submission order, model and estimated memory, the claiming worker (its
// budget and loaded models), the other workers and the running jobs per
// user. FifoPolicy is first come, first served; FairSharePolicy is the
// default (see below).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/job_store.h"

namespace sinkscope {
namespace server {

/// What the scheduler needs to know of a job besides the queue row.
struct JobTraits {
  std::string model;
  int64_t need_bytes = 0;  // estimated weights + activations (0 = unknown)
  v1::JobType type = v1::JOB_TYPE_UNSPECIFIED;
};

/// A worker as the scheduler sees it.
struct WorkerView {
  int64_t budget_bytes = 0;          // 0 = unlimited
  std::set<std::string> models;      // catalog names of its cached models
  bool busy = false;                 // running a job
  absl::Time last_poll;              // last time it asked for a job
};

/// Everything a policy may look at besides the queue.
struct SchedulingContext {
  std::string worker;  // the claiming worker ("" when only ordering)
  std::map<std::string, WorkerView> workers;
  std::map<std::string, int> running_by_user;
  absl::Time now;
};

/// True when `job` fits `worker`'s budget.
bool FitsBudget(const QueuedJob& job, const WorkerView& worker);

/// Chooses among queued jobs.
class SchedulingPolicy {
 public:
  virtual ~SchedulingPolicy() = default;
  /// Index into `queue` (FIFO order) of the job `ctx.worker` should run next;
  /// nullopt when none suits it (too big for its budget, user limits, or
  /// better left to another idle worker).
  virtual std::optional<size_t> Pick(const std::vector<QueuedJob>& queue,
                                     const SchedulingContext& ctx) = 0;
  /// The order in which the queue would be dispatched if no job finished
  /// (indices into `queue`), used for queue positions.
  virtual std::vector<size_t> Order(const std::vector<QueuedJob>& queue,
                                    const SchedulingContext& ctx) = 0;
  /// Told after a picked job was claimed.
  virtual void Dispatched(const QueuedJob& job) {}
};

/// First come, first served (by submission order; a re-queued job keeps its
/// original place), skipping jobs too big for the worker.
class FifoPolicy final : public SchedulingPolicy {
 public:
  std::optional<size_t> Pick(const std::vector<QueuedJob>& queue,
                             const SchedulingContext& ctx) override;
  std::vector<size_t> Order(const std::vector<QueuedJob>& queue,
                            const SchedulingContext& ctx) override;
};

/// Fair share across users: the next job goes to the user with the smallest
/// running_jobs / weight (ties: the user served least recently, then the
/// oldest job); within a user, higher priority first, then submission order.
/// Users at `max_running_per_user` (> 0) wait. Model affinity: a worker that
/// does not hold the chosen job's model leaves it to an idle worker that
/// does (and takes the next choice instead).
class FairSharePolicy final : public SchedulingPolicy {
 public:
  FairSharePolicy(std::map<std::string, double> weights, int max_running_per_user,
                  bool affinity = true);
  std::optional<size_t> Pick(const std::vector<QueuedJob>& queue,
                             const SchedulingContext& ctx) override;
  std::vector<size_t> Order(const std::vector<QueuedJob>& queue,
                            const SchedulingContext& ctx) override;
  void Dispatched(const QueuedJob& job) override;

 private:
  double Weight(const std::string& user) const;
  const std::map<std::string, double> weights_;
  const int max_running_per_user_;
  const bool affinity_;
  int64_t tick_ = 0;
  std::map<std::string, int64_t> last_served_;
};

/// Claims jobs from the store in the policy's order. Thread-safe.
class Scheduler {
 public:
  using TraitsFn = std::function<JobTraits(const std::string& job_id)>;
  /// `traits` is asked for jobs the scheduler has not seen (e.g. after a
  /// restart); nullptr = no traits (no model affinity, no budgets).
  Scheduler(JobStore* store, std::unique_ptr<SchedulingPolicy> policy, TraitsFn traits = nullptr);

  /// Records a new job's traits (saves a store read).
  void RememberTraits(const std::string& id, JobTraits traits);
  /// Declares a worker, its budget and its cached models.
  void UpdateWorker(const std::string& worker, int64_t budget_bytes,
                    std::optional<std::set<std::string>> models);

  /// Claims the next job for `worker`; nullopt when nothing suits it.
  absl::StatusOr<std::optional<v1::Job>> ClaimNext(const std::string& worker);
  /// A claimed job left its worker (finished, re-queued or failed).
  void JobEnded(const std::string& id);

  /// 1-based dispatch position of a queued job; 0 when it is not queued.
  absl::StatusOr<int32_t> QueuePosition(const std::string& id);
  /// Every queued job with its 1-based position.
  absl::StatusOr<std::vector<std::pair<QueuedJob, int32_t>>> Positions();
  /// QUEUED jobs by owner.
  absl::StatusOr<std::map<std::string, int>> QueuedByUser();
  /// Dispatched jobs by owner.
  std::map<std::string, int> RunningByUser();

  /// This host's workers as the policy sees them.
  std::map<std::string, WorkerView> LocalWorkers();
  /// Other hosts' workers (named "host/worker") and their running jobs by
  /// owner: policies then see one cluster (model affinity and fair share
  /// across hosts). Replaces the previous peers.
  void SetPeers(std::map<std::string, WorkerView> workers, std::map<std::string, int> running);

 private:
  absl::StatusOr<std::vector<QueuedJob>> LoadQueue();
  SchedulingContext ContextLocked(const std::string& worker);

  JobStore* const store_;
  std::mutex mu_;
  std::unique_ptr<SchedulingPolicy> policy_;
  TraitsFn traits_fn_;
  std::map<std::string, JobTraits> traits_;           // queued job id -> traits
  std::map<std::string, std::string> running_;        // job id -> owner
  std::map<std::string, std::string> running_worker_; // job id -> worker
  std::map<std::string, WorkerView> workers_;
  std::map<std::string, WorkerView> peer_workers_;
  std::map<std::string, int> peer_running_;
};

}  // namespace server
}  // namespace sinkscope
