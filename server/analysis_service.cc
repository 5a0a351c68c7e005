#include "server/analysis_service.h"

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace sinkscope {
namespace server {

absl::StatusOr<std::string> CallerIdentity(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kUserMetadataKey);
  if (it == metadata.end()) return std::string("anonymous");
  std::string user(it->second.data(), it->second.size());
  if (user.empty() || user.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat(kUserMetadataKey, " must have 1 to 64 characters"));
  }
  for (char c : user) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat(kUserMetadataKey, " must be printable ASCII without spaces"));
    }
  }
  return user;
}

grpc::Status AnalysisServiceImpl::SubmitJob(grpc::ServerContext* context,
                                            const v1::SubmitJobRequest* request,
                                            v1::Job* response) {
  absl::StatusOr<std::string> owner = CallerIdentity(*context);
  if (!owner.ok()) return ToGrpcStatus(owner.status());
  absl::StatusOr<v1::Job> job = manager_->Submit(*owner, *request);
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status AnalysisServiceImpl::WatchJob(grpc::ServerContext* context,
                                           const v1::WatchJobRequest* request,
                                           grpc::ServerWriter<v1::JobEvent>* writer) {
  absl::Status status = manager_->Watch(
      request->job_id(), request->after_seq(),
      [writer](const v1::JobEvent& event) { return writer->Write(event); },
      [context] { return context->IsCancelled(); });
  return ToGrpcStatus(status);
}

grpc::Status AnalysisServiceImpl::GetJob(grpc::ServerContext*, const v1::GetJobRequest* request,
                                         v1::Job* response) {
  absl::StatusOr<v1::Job> job = manager_->Get(request->job_id(), request->include_results());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status AnalysisServiceImpl::ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* request,
                                           v1::ListJobsResponse* response) {
  absl::StatusOr<v1::ListJobsResponse> page = manager_->List(*request);
  if (!page.ok()) return ToGrpcStatus(page.status());
  *response = *std::move(page);
  return grpc::Status::OK;
}

grpc::Status AnalysisServiceImpl::CancelJob(grpc::ServerContext* context,
                                            const v1::CancelJobRequest* request,
                                            v1::Job* response) {
  absl::StatusOr<std::string> who = CallerIdentity(*context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  absl::StatusOr<v1::Job> job = manager_->Cancel(request->job_id(), *who);
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status AnalysisServiceImpl::ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                                             v1::ListModelsResponse* response) {
  *response = manager_->ListModels();
  return grpc::Status::OK;
}

}  // namespace server
}  // namespace sinkscope
