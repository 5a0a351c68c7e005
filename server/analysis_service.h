// AnalysisService: the public gRPC edge. Thin: authenticates the caller,
// enforces job ownership, calls JobManager, maps absl::Status to grpc::Status
// once, and counts every call in sinkscope_grpc_requests_total.
#pragma once

#include <string>

#include "server/auth.h"
#include "server/job_manager.h"
#include "server/metrics.h"
#include "server/watch_hub.h"
#include "sinkscope/v1/analysis.grpc.pb.h"

namespace sinkscope {
namespace server {

/// gRPC implementation of sinkscope.v1.AnalysisService: unary methods on the
/// synchronous API, WatchJob on the callback API (WatchHub: no thread per
/// stream, capped per user and in total).
///
/// Isolation (auth "token"): a user sees, watches and cancels only their own
/// jobs; another user's job id answers NOT_FOUND exactly like an unknown id
/// (so ids cannot be probed). ListJobs is restricted to the caller's jobs
/// (an `owner` filter naming someone else returns nothing). Admin tokens see
/// everything. Calls without a valid token: UNAUTHENTICATED.
class AnalysisServiceImpl final
    : public v1::AnalysisService::WithCallbackMethod_WatchJob<v1::AnalysisService::Service> {
 public:
  /// `metrics` may be null; `hub` must outlive the gRPC server.
  AnalysisServiceImpl(JobManager* manager, const Authenticator* auth, Metrics* metrics,
                      WatchHub* hub)
      : manager_(manager), auth_(auth), metrics_(metrics), hub_(hub) {}

  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                         v1::Job* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                   const v1::WatchJobRequest* request) override;
  grpc::Status ClearModelUnavailable(grpc::ServerContext* context,
                                     const v1::ClearModelUnavailableRequest* request,
                                     v1::ClearModelUnavailableResponse* response) override;
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
  WatchHub* const hub_;
};

}  // namespace server
}  // namespace sinkscope
