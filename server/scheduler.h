// Scheduler: which queued job a free worker takes next.
//
// FIFO today. Fair share per user plugs in as another SchedulingPolicy (it
// sees each queued job's owner and submission order).
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/job_store.h"

namespace sinkscope {
namespace server {

/// Chooses among queued jobs.
class SchedulingPolicy {
 public:
  virtual ~SchedulingPolicy() = default;
  /// Index into `queue` (non-empty, FIFO order) of the job to dispatch next.
  virtual size_t Pick(const std::vector<QueuedJob>& queue) = 0;
  /// The order in which the queue would be dispatched (indices into `queue`),
  /// used for queue positions.
  virtual std::vector<size_t> Order(const std::vector<QueuedJob>& queue) = 0;
};

/// First come, first served (by submission order; a re-queued job keeps its
/// original place).
class FifoPolicy final : public SchedulingPolicy {
 public:
  size_t Pick(const std::vector<QueuedJob>&) override { return 0; }
  std::vector<size_t> Order(const std::vector<QueuedJob>& queue) override;
};

/// Claims jobs from the store in the policy's order. Thread-safe.
class Scheduler {
 public:
  Scheduler(JobStore* store, std::unique_ptr<SchedulingPolicy> policy);

  /// Claims the next job for `worker`; nullopt when nothing is queued.
  absl::StatusOr<std::optional<v1::Job>> ClaimNext(const std::string& worker);

  /// 1-based dispatch position of a queued job; 0 when it is not queued.
  absl::StatusOr<int32_t> QueuePosition(const std::string& id);

 private:
  JobStore* const store_;
  std::mutex mu_;
  std::unique_ptr<SchedulingPolicy> policy_;
};

}  // namespace server
}  // namespace sinkscope
