// AnalysisService: the public gRPC edge. Thin: reads the caller's identity,
// calls JobManager, maps absl::Status to grpc::Status once.
#pragma once

#include <string>

#include "server/job_manager.h"
#include "sinkscope/v1/analysis.grpc.pb.h"

namespace sinkscope {
namespace server {

/// Metadata key naming the caller until authentication lands.
inline constexpr char kUserMetadataKey[] = "x-sinkscope-user";

/// gRPC implementation of sinkscope.v1.AnalysisService (synchronous API).
class AnalysisServiceImpl final : public v1::AnalysisService::Service {
 public:
  explicit AnalysisServiceImpl(JobManager* manager) : manager_(manager) {}

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
  JobManager* const manager_;
};

/// The caller's user name from metadata ("anonymous" when absent). Only
/// printable ASCII, at most 64 characters; InvalidArgument otherwise.
absl::StatusOr<std::string> CallerIdentity(const grpc::ServerContext& context);

}  // namespace server
}  // namespace sinkscope
