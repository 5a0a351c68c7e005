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

grpc::ServerWriteReactor<v1::JobEvent>* AnalysisServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  Metrics* metrics = metrics_;
  auto on_done = [metrics](int code) {
    if (metrics != nullptr) metrics->GrpcRequest("WatchJob", code);
  };
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return WatchHub::Failed(ToGrpcStatus(caller.status()), on_done);
  const std::string& id = request->job_id();
  if (id.empty()) {
    return WatchHub::Failed(ToGrpcStatus(absl::InvalidArgumentError("job_id is empty")), on_done);
  }
  if (request->after_seq() < 0) {
    return WatchHub::Failed(ToGrpcStatus(absl::InvalidArgumentError("after_seq must be >= 0")),
                            on_done);
  }
  if (absl::Status s = manager_->CheckAccess(id, *caller); !s.ok()) {
    return WatchHub::Failed(ToGrpcStatus(s), on_done);
  }
  // NOT_FOUND for an unknown id (admins skip the ownership lookup).
  if (absl::StatusOr<v1::Job> job = manager_->Get(id, false); !job.ok()) {
    return WatchHub::Failed(ToGrpcStatus(job.status()), on_done);
  }
  return hub_->Open(caller->user, id, request->after_seq());
}

grpc::Status AnalysisServiceImpl::ClearModelUnavailable(
    grpc::ServerContext* context, const v1::ClearModelUnavailableRequest* request,
    v1::ClearModelUnavailableResponse* response) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("ClearModelUnavailable", caller.status());
  if (!caller->admin) {
    return Done("ClearModelUnavailable",
                absl::PermissionDeniedError("ClearModelUnavailable needs an admin token"));
  }
  absl::StatusOr<std::string> reason = manager_->ClearModelUnavailable(request->model());
  if (!reason.ok()) return Done("ClearModelUnavailable", reason.status());
  response->set_was_marked(!reason->empty());
  response->set_previous_reason(*reason);
  const v1::ListModelsResponse models = manager_->ListModels();
  for (const v1::ModelInfo& m : models.models()) {
    if (m.name() == request->model()) *response->mutable_model() = m;
  }
  return Done("ClearModelUnavailable", absl::OkStatus());
}

grpc::Status AnalysisServiceImpl::GetJob(grpc::ServerContext* context,
                                         const v1::GetJobRequest* request, v1::Job* response) {
  absl::StatusOr<Caller> caller = auth_->Authenticate(*context);
  if (!caller.ok()) return Done("GetJob", caller.status());
  if (absl::Status s = manager_->CheckAccess(request->job_id(), *caller); !s.ok()) {
    return Done("GetJob", s);
  }
  absl::StatusOr<v1::Job> job = manager_->Get(request->job_id(), request->include_results(),
                                                 request->page_results(), request->results_offset());
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
  if (scoped.owner() == "@me") scoped.set_owner(caller->user);
  if (!caller->admin) {
    if (!scoped.owner().empty() && scoped.owner() != caller->user) {
      return Done("ListJobs", absl::OkStatus());  // nothing of someone else's (nor the queue)
    }
    scoped.set_owner(caller->user);
  }
  absl::StatusOr<v1::ListJobsResponse> page = manager_->List(scoped);
  if (!page.ok()) return Done("ListJobs", page.status());
  *response = *std::move(page);
  absl::StatusOr<v1::QueueOverview> queue = manager_->QueueOverviewFor(caller->user);
  if (queue.ok()) *response->mutable_queue() = *std::move(queue);
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
  *response = manager_->ListModels(caller->user);  // with the caller's own checkpoints
  return Done("ListModels", absl::OkStatus());
}

}  // namespace server
}  // namespace sinkscope
