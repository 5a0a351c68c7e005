// AnalysisService: the public gRPC edge. Thin: authenticates the caller,
// enforces job ownership, calls JobManager, maps absl::Status to grpc::Status
// once, and counts every call in sinkscope_grpc_requests_total.
#pragma once

#include <string>

#include "server/auth.h"
#include "server/job_manager.h"
#include "server/metrics.h"
#include "sinkscope/v1/analysis.grpc.pb.h"

namespace sinkscope {
namespace server {

/// gRPC implementation of sinkscope.v1.AnalysisService (synchronous API).
///
/// Isolation (auth "token"): a user sees, watches and cancels only their own
/// jobs; another user's job id answers NOT_FOUND exactly like an unknown id
/// (so ids cannot be probed). ListJobs is restricted to the caller's jobs
/// (an `owner` filter naming someone else returns nothing). Admin tokens see
/// everything. Calls without a valid token: UNAUTHENTICATED.
class AnalysisServiceImpl final : public v1::AnalysisService::Service {
 public:
  /// `metrics` may be null.
  AnalysisServiceImpl(JobManager* manager, const Authenticator* auth, Metrics* metrics)
      : manager_(manager), auth_(auth), metrics_(metrics) {}

  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                         v1::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;

 private:
  grpc::Status Done(const char* method, const absl::Status& status);
  JobManager* const manager_;
  const Authenticator* const auth_;
  Metrics* const metrics_;
};

}  // namespace server
}  // namespace sinkscope
