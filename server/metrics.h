// Prometheus metrics of sinkscope-server (prometheus-cpp core + pull).
//
// Names follow Prometheus conventions (base units, _total counters,
// _seconds / _bytes). Labels are bounded: job types, outcomes, RPC methods
// and codes, worker names, memory kinds, and user names, where only the first
// `max_users` distinct users seen since start get their own value and the
// rest are reported as user="other". No job ids in labels.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/analysis.pb.h"

namespace prometheus {
class Exposer;
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace sinkscope {
namespace server {

/// Thread-safe. A default-constructed Metrics records into a registry that
/// nobody scrapes until Expose() is called.
class Metrics {
 public:
  explicit Metrics(int max_users = 20);
  ~Metrics();

  /// Serves /metrics on `address` ("host:port"; port 0 picks one). Returns
  /// the bound port.
  absl::StatusOr<int> Expose(const std::string& address);

  /// "activation_scan" for JOB_TYPE_ACTIVATION_SCAN, ...
  static std::string TypeLabel(v1::JobType type);

  void JobSubmitted(v1::JobType type, const std::string& user);
  /// outcome: "completed", "failed", "cancelled". `duration_s` < 0 when the
  /// job never ran (no duration observation).
  void JobFinished(v1::JobType type, const std::string& outcome, double duration_s);
  void JobQueueWait(v1::JobType type, double seconds);
  /// Replaces the per-user queue depth and running-job gauges.
  void SetQueueDepth(const std::map<std::string, int>& queued_by_user);
  void SetRunning(const std::map<std::string, int>& running_by_user);
  /// Worker seconds spent on a user's jobs (for per-user share).
  void AddUserWorkerSeconds(const std::string& user, double seconds);
  /// Workers by state: "starting", "idle", "busy", "down".
  void SetWorkerStates(const std::map<std::string, int>& by_state);
  void WorkerRestarted();
  void ModelLoaded(double seconds);
  /// kind: "rss", "device_models", "budget".
  void SetWorkerMemory(const std::string& worker, const std::string& kind, int64_t bytes);
  void TokensProcessed(int64_t n);
  /// A training job made `steps` updates over `tokens` input tokens and wrote
  /// `checkpoints` checkpoints (sinkscope_train_*_total).
  void TrainProgress(int64_t steps, int64_t tokens, int64_t checkpoints);
  void GrpcRequest(const std::string& method, int code);

  /// The user label for `user` (itself or "other").
  std::string UserLabel(const std::string& user);

 private:
  void SetPerUser(prometheus::Family<prometheus::Gauge>* family,
                  std::map<std::string, prometheus::Gauge*>* gauges,
                  const std::map<std::string, int>& by_user);

  const int max_users_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::mutex mu_;
  std::set<std::string> named_users_;

  prometheus::Family<prometheus::Counter>* submitted_;
  prometheus::Family<prometheus::Counter>* finished_;
  prometheus::Family<prometheus::Histogram>* duration_;
  prometheus::Family<prometheus::Histogram>* queue_wait_;
  prometheus::Family<prometheus::Gauge>* queue_depth_;
  prometheus::Family<prometheus::Gauge>* running_;
  prometheus::Family<prometheus::Counter>* user_seconds_;
  prometheus::Family<prometheus::Gauge>* workers_;
  prometheus::Counter* restarts_;
  prometheus::Histogram* model_load_;
  prometheus::Family<prometheus::Gauge>* worker_memory_;
  prometheus::Counter* tokens_;
  prometheus::Counter* train_tokens_;
  prometheus::Counter* train_steps_;
  prometheus::Counter* train_checkpoints_;
  prometheus::Family<prometheus::Counter>* grpc_requests_;
  std::map<std::string, prometheus::Gauge*> depth_gauges_, running_gauges_;
};

}  // namespace server
}  // namespace sinkscope
