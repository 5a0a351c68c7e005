#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <exception>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_types.h"

namespace sinkscope {
namespace server {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

namespace {

const char* kStates[] = {"starting", "idle", "busy", "down"};

Histogram::BucketBoundaries DurationBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
}

const char* kGrpcCodes[] = {"OK",
                            "CANCELLED",
                            "UNKNOWN",
                            "INVALID_ARGUMENT",
                            "DEADLINE_EXCEEDED",
                            "NOT_FOUND",
                            "ALREADY_EXISTS",
                            "PERMISSION_DENIED",
                            "RESOURCE_EXHAUSTED",
                            "FAILED_PRECONDITION",
                            "ABORTED",
                            "OUT_OF_RANGE",
                            "UNIMPLEMENTED",
                            "INTERNAL",
                            "UNAVAILABLE",
                            "DATA_LOSS",
                            "UNAUTHENTICATED"};

}  // namespace

Metrics::Metrics(int max_users)
    : max_users_(max_users), registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  submitted_ = &BuildCounter().Name("sinkscope_jobs_submitted_total")
                    .Help("Jobs accepted by SubmitJob (new jobs, not idempotent repeats)")
                    .Register(r);
  finished_ = &BuildCounter().Name("sinkscope_jobs_finished_total")
                   .Help("Jobs that reached a terminal state, by type and outcome")
                   .Register(r);
  duration_ = &BuildHistogram().Name("sinkscope_job_duration_seconds")
                   .Help("Time from dispatch to a terminal state of jobs that ran, by type")
                   .Register(r);
  queue_wait_ = &BuildHistogram().Name("sinkscope_job_queue_wait_seconds")
                     .Help("Time from submission (or re-queueing) to dispatch, by type")
                     .Register(r);
  queue_depth_ = &BuildGauge().Name("sinkscope_queue_depth")
                      .Help("QUEUED jobs by user (first metrics_max_users users by name, rest \"other\")")
                      .Register(r);
  running_ = &BuildGauge().Name("sinkscope_user_running_jobs")
                  .Help("Dispatched jobs by user (first metrics_max_users users, rest \"other\")")
                  .Register(r);
  user_seconds_ = &BuildCounter().Name("sinkscope_user_worker_seconds_total")
                       .Help("Worker seconds spent on each user's jobs (fair-share view)")
                       .Register(r);
  workers_ = &BuildGauge().Name("sinkscope_workers").Help("Worker processes by state").Register(r);
  restarts_ = &BuildCounter().Name("sinkscope_worker_restarts_total")
                   .Help("Worker processes restarted after exiting or failing a health check")
                   .Register(r)
                   .Add({});
  model_load_ = &BuildHistogram().Name("sinkscope_model_load_seconds")
                     .Help("Time a worker took to load a model that was not cached")
                     .Register(r)
                     .Add({}, DurationBuckets());
  worker_memory_ = &BuildGauge().Name("sinkscope_worker_memory_bytes")
                        .Help("Worker memory: kind=rss (process RSS), device_models (weights of cached "
                              "models on the device), budget (enforced, 0 = unlimited), and on cuda "
                              "workers device_allocated / device_reserved (caching allocator), "
                              "device_total / device_free (driver)")
                        .Register(r);
  tokens_ = &BuildCounter().Name("sinkscope_tokens_processed_total")
                 .Help("Input tokens of completed jobs")
                 .Register(r)
                 .Add({});
  train_tokens_ = &BuildCounter().Name("sinkscope_train_tokens_total")
                       .Help("Tokens trained by training jobs (input tokens of the updates made)")
                       .Register(r)
                       .Add({});
  train_steps_ = &BuildCounter().Name("sinkscope_train_steps_total")
                      .Help("Optimiser updates made by training jobs")
                      .Register(r)
                      .Add({});
  train_checkpoints_ = &BuildCounter().Name("sinkscope_train_checkpoints_total")
                            .Help("Checkpoints written by training jobs")
                            .Register(r)
                            .Add({});
  grpc_requests_ = &BuildCounter().Name("sinkscope_grpc_requests_total")
                        .Help("AnalysisService calls by method and gRPC status code")
                        .Register(r);
  for (const char* s : kStates) workers_->Add({{"state", s}}).Set(0);
  // Series that exist before the first job, so that dashboards show zeros.
  submitted_->Add({});
  queue_depth_->Add({{"user", "other"}}).Set(0);
  depth_gauges_["other"] = &queue_depth_->Add({{"user", "other"}});
  running_gauges_["other"] = &running_->Add({{"user", "other"}});
  running_gauges_["other"]->Set(0);
}

Metrics::~Metrics() = default;

absl::StatusOr<int> Metrics::Expose(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports[0];
}

std::string Metrics::TypeLabel(v1::JobType type) {
  if (const JobTypeDescriptor* job = FindJobType(type)) return job->metrics_label;
  // UNSPECIFIED, or a value this table lacks.
  std::string name = v1::JobType_Name(type);
  if (name.empty()) return "unknown";
  if (absl::StartsWith(name, "JOB_TYPE_")) name = name.substr(9);
  return absl::AsciiStrToLower(name);
}

std::string Metrics::UserLabel(const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  if (named_users_.count(user)) return user;
  if (user != "other" && static_cast<int>(named_users_.size()) < max_users_) {
    named_users_.insert(user);
    return user;
  }
  return "other";
}

void Metrics::JobSubmitted(v1::JobType type, const std::string& user) {
  submitted_->Add({}).Increment();
}

void Metrics::JobFinished(v1::JobType type, const std::string& outcome, double duration_s) {
  const std::string t = TypeLabel(type);
  finished_->Add({{"type", t}, {"outcome", outcome}}).Increment();
  if (duration_s >= 0) duration_->Add({{"type", t}}, DurationBuckets()).Observe(duration_s);
}

void Metrics::JobQueueWait(v1::JobType type, double seconds) {
  queue_wait_->Add({{"type", TypeLabel(type)}}, DurationBuckets()).Observe(std::max(0.0, seconds));
}

void Metrics::SetPerUser(prometheus::Family<prometheus::Gauge>* family,
                         std::map<std::string, prometheus::Gauge*>* gauges,
                         const std::map<std::string, int>& by_user) {
  std::map<std::string, int> by_label;
  by_label["other"] = 0;
  for (const auto& [user, n] : by_user) by_label[UserLabel(user)] += n;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [label, gauge] : *gauges) {
    if (!by_label.count(label)) gauge->Set(0);
  }
  for (const auto& [label, n] : by_label) {
    auto it = gauges->find(label);
    if (it == gauges->end()) it = gauges->emplace(label, &family->Add({{"user", label}})).first;
    it->second->Set(n);
  }
}

void Metrics::SetQueueDepth(const std::map<std::string, int>& queued_by_user) {
  SetPerUser(queue_depth_, &depth_gauges_, queued_by_user);
}

void Metrics::SetRunning(const std::map<std::string, int>& running_by_user) {
  SetPerUser(running_, &running_gauges_, running_by_user);
}

void Metrics::AddUserWorkerSeconds(const std::string& user, double seconds) {
  user_seconds_->Add({{"user", UserLabel(user)}}).Increment(std::max(0.0, seconds));
}

void Metrics::SetWorkerStates(const std::map<std::string, int>& by_state) {
  for (const char* s : kStates) {
    auto it = by_state.find(s);
    workers_->Add({{"state", s}}).Set(it == by_state.end() ? 0 : it->second);
  }
}

void Metrics::WorkerRestarted() { restarts_->Increment(); }

void Metrics::ModelLoaded(double seconds) { model_load_->Observe(seconds); }

void Metrics::SetWorkerMemory(const std::string& worker, const std::string& kind, int64_t bytes) {
  worker_memory_->Add({{"worker", worker}, {"kind", kind}}).Set(static_cast<double>(bytes));
}

void Metrics::TrainProgress(int64_t steps, int64_t tokens, int64_t checkpoints) {
  if (steps > 0) train_steps_->Increment(static_cast<double>(steps));
  if (tokens > 0) train_tokens_->Increment(static_cast<double>(tokens));
  if (checkpoints > 0) train_checkpoints_->Increment(static_cast<double>(checkpoints));
}

void Metrics::TokensProcessed(int64_t n) {
  if (n > 0) tokens_->Increment(static_cast<double>(n));
}

void Metrics::GrpcRequest(const std::string& method, int code) {
  const char* name = code >= 0 && code < 17 ? kGrpcCodes[code] : "UNKNOWN";
  grpc_requests_->Add({{"method", method}, {"code", name}}).Increment();
}

}  // namespace server
}  // namespace sinkscope
