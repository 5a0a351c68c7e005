#include "server/analysis_service.h"

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace sinkscope {
namespace server {

grpc::Status AnalysisServiceImpl::Done(const char* method, const absl::Status& status) {
  if (metrics_ != nullptr) metrics_->GrpcRequest(method, static_cast<int>(status.code()));
  return ToGrpcStatus(status);
}

grpc::Status AnalysisServiceImpl::SubmitJob(grpc::ServerContext* context,
                                            const v1::SubmitJobRequest* request,
                                            v1::Job* response) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("SubmitJob", caller.status());
  absl::StatusOr<v1::Job> job = manager_->Submit(caller->user, *request);
  if (!job.ok()) return Done("SubmitJob", job.status());
  *response = *std::move(job);
  return Done("SubmitJob", absl::OkStatus());
}

grpc::Status AnalysisServiceImpl::WatchJob(grpc::ServerContext* context,
                                           const v1::WatchJobRequest* request,
                                           grpc::ServerWriter<v1::JobEvent>* writer) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("WatchJob", caller.status());
  if (absl::Status s = manager_->CheckAccess(request->job_id(), *caller); !s.ok()) {
    return Done("WatchJob", s);
  }
  absl::Status status = manager_->Watch(
      request->job_id(), request->after_seq(),
      [writer](const v1::JobEvent& event) { return writer->Write(event); },
      [context] { return context->IsCancelled(); });
  return Done("WatchJob", status);
}

grpc::Status AnalysisServiceImpl::GetJob(grpc::ServerContext* context,
                                         const v1::GetJobRequest* request, v1::Job* response) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("GetJob", caller.status());
  if (absl::Status s = manager_->CheckAccess(request->job_id(), *caller); !s.ok()) {
    return Done("GetJob", s);
  }
  absl::StatusOr<v1::Job> job = manager_->Get(request->job_id(), request->include_results());
  if (!job.ok()) return Done("GetJob", job.status());
  *response = *std::move(job);
  return Done("GetJob", absl::OkStatus());
}

grpc::Status AnalysisServiceImpl::ListJobs(grpc::ServerContext* context,
                                           const v1::ListJobsRequest* request,
                                           v1::ListJobsResponse* response) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("ListJobs", caller.status());
  v1::ListJobsRequest scoped = *request;
  if (!caller->admin) {
    if (!scoped.owner().empty() && scoped.owner() != caller->user) {
      return Done("ListJobs", absl::OkStatus());  // nothing of someone else's
    }
    scoped.set_owner(caller->user);
  }
  absl::StatusOr<v1::ListJobsResponse> page = manager_->List(scoped);
  if (!page.ok()) return Done("ListJobs", page.status());
  *response = *std::move(page);
  return Done("ListJobs", absl::OkStatus());
}

grpc::Status AnalysisServiceImpl::CancelJob(grpc::ServerContext* context,
                                            const v1::CancelJobRequest* request,
                                            v1::Job* response) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("CancelJob", caller.status());
  if (absl::Status s = manager_->CheckAccess(request->job_id(), *caller); !s.ok()) {
    return Done("CancelJob", s);
  }
  absl::StatusOr<v1::Job> job = manager_->Cancel(request->job_id(), caller->user);
  if (!job.ok()) return Done("CancelJob", job.status());
  *response = *std::move(job);
  return Done("CancelJob", absl::OkStatus());
}

grpc::Status AnalysisServiceImpl::ListModels(grpc::ServerContext* context,
                                             const v1::ListModelsRequest*,
                                             v1::ListModelsResponse* response) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("ListModels", caller.status());
  *response = manager_->ListModels();
  return Done("ListModels", absl::OkStatus());
}

}  // namespace server
}  // namespace sinkscope
