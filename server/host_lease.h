// HostLeases: this host's part in a queue shared by several hosts. A
// background thread renews the leases of the jobs this host runs, re-queues
// jobs whose host stopped renewing (theirs ran out), and publishes this
// host's workers (budgets, loaded models, idle or busy) while reading the
// other hosts' for the scheduler's model affinity and fair share.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

#include "server/job_store.h"
#include "server/scheduler.h"

namespace sinkscope {
namespace server {

/// Settings of HostLeases.
struct HostLeaseOptions {
  /// The store's lease, milliseconds (renewed every lease_ms / 4).
  int64_t lease_ms = 30000;
  /// Dispatches a job may lose before it FAILS (the server's max_attempts).
  int max_attempts = 3;
  /// Publish and read workers (several hosts: PostgreSQL).
  bool share_workers = false;
};

/// Lease keeper of one host. Thread-safe; Start once, Stop (or destroy) once.
class HostLeases {
 public:
  /// `store` and `scheduler` must outlive this; `on_change` is called after
  /// jobs were re-queued here (wake local waiters).
  HostLeases(JobStore* store, Scheduler* scheduler, HostLeaseOptions options,
             std::function<void()> on_change);
  ~HostLeases();
  void Start();
  void Stop();
  /// One round now (renew, reclaim, publish); for tests and Start's loop.
  void RunOnce();

 private:
  void Loop();
  JobStore* const store_;
  Scheduler* const scheduler_;
  const HostLeaseOptions options_;
  std::function<void()> on_change_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace server
}  // namespace sinkscope
