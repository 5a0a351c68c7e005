// WorkerService: runs jobs on one device for sinkscope-server.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "sinkscope/v1/worker.grpc.pb.h"
#include "worker/model_cache.h"

namespace sinkscope {
namespace worker {

/// Options of a worker process.
struct WorkerOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  size_t cache_capacity = 2;    // models kept loaded
  /// Memory budget for cached weights + a job's activations (0 = unlimited).
  int64_t memory_budget_bytes = 0;
  /// Test-only: sleep this long after each unit of progress (makes jobs long
  /// enough to kill a worker in the middle of one).
  int64_t test_unit_delay_ms = 0;
  /// Minimum interval between two Running events (the last one always goes).
  int64_t progress_interval_ms = 100;
};

/// Sink for the events of one job (the RunJob stream, or a test double).
/// Returns false when the receiver is gone (the job should stop).
using EventSink = std::function<bool(const v1::WorkerEvent&)>;

/// Runs one job: resolves the model through the cache, tokenizes, runs the
/// analysis and emits ModelLoading, Running and result events through `sink`.
/// Returns the job's outcome; never throws.
absl::Status RunJobToSink(ModelCache& cache, const WorkerOptions& options,
                          const v1::RunJobRequest& request, const EventSink& sink,
                          const std::atomic<bool>* cancel);

/// The gRPC service. One job at a time.
class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(WorkerOptions options);

  grpc::Status RunJob(grpc::ServerContext* context, const v1::RunJobRequest* request,
                      grpc::ServerWriter<v1::WorkerEvent>* writer) override;
  grpc::Status Health(grpc::ServerContext* context, const v1::HealthRequest* request,
                      v1::HealthResponse* response) override;
  grpc::Status GetStatus(grpc::ServerContext* context, const v1::GetStatusRequest* request,
                         v1::WorkerStatus* response) override;

 private:
  const WorkerOptions options_;
  ModelCache cache_;
  std::timed_mutex run_mu_;  // held while a job runs
  std::mutex status_mu_;
  std::string running_job_id_;
  int64_t jobs_run_ = 0;
  std::vector<std::string> supported_dtypes_;  // probed at start
};

/// The forward-pass dtypes ("float32", "bfloat16", "float16") that `device`
/// runs: each is tried on a tiny forward of the model's operations.
std::vector<std::string> ProbeSupportedDtypes(const std::string& device);

}  // namespace worker
}  // namespace sinkscope
