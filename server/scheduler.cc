#include "server/scheduler.h"

#include <numeric>
#include <utility>

namespace sinkscope {
namespace server {

std::vector<size_t> FifoPolicy::Order(const std::vector<QueuedJob>& queue) {
  std::vector<size_t> order(queue.size());
  std::iota(order.begin(), order.end(), 0);
  return order;
}

Scheduler::Scheduler(JobStore* store, std::unique_ptr<SchedulingPolicy> policy)
    : store_(store), policy_(std::move(policy)) {}

absl::StatusOr<std::optional<v1::Job>> Scheduler::ClaimNext(const std::string& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::vector<QueuedJob>> queue = store_->ListQueued();
  if (!queue.ok()) return queue.status();
  while (!queue->empty()) {
    const size_t pick = policy_->Pick(*queue);
    absl::StatusOr<v1::Job> job = store_->ClaimJob((*queue)[pick].id, worker);
    if (job.ok()) return std::optional<v1::Job>(*std::move(job));
    if (!absl::IsFailedPrecondition(job.status())) return job.status();
    queue->erase(queue->begin() + pick);  // cancelled meanwhile
  }
  return std::optional<v1::Job>();
}

absl::StatusOr<int32_t> Scheduler::QueuePosition(const std::string& id) {
  absl::StatusOr<std::vector<QueuedJob>> queue = store_->ListQueued();
  if (!queue.ok()) return queue.status();
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<size_t> order = policy_->Order(*queue);
  for (size_t i = 0; i < order.size(); ++i) {
    if ((*queue)[order[i]].id == id) return static_cast<int32_t>(i + 1);
  }
  return 0;
}

}  // namespace server
}  // namespace sinkscope
