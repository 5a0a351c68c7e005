#include "worker/worker_service.h"

#include <condition_variable>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <mutex>
#include <exception>
#include <fstream>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "common/job_types.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer.h"
#include "worker/analysis_jobs.h"
#include "worker/job_events.h"
#include "worker/profile_job.h"
#include "worker/scan_convert.h"
#include "worker/train_job.h"

namespace sinkscope {
namespace worker {
namespace {

absl::Status RunScan(const JobContext& ctx, const std::vector<std::vector<int64_t>>& sequences) {
  const CachedModel& cached = ctx.cached;
  ScanParams params = ScanParamsFromProto(ctx.run.request().scan());
  if (ctx.run.request().scan().has_step_rule()) {
    RETURN_IF_ERROR(ParseStepRule(ctx.run.request().scan().step_rule()).status());
  }
  RETURN_IF_ERROR(ValidateScanParams(params));
  RETURN_IF_ERROR(cached.model->ValidateTokens(sequences));

  Emitter emitter(ctx);
  absl::StatusOr<ScanSummary> summary = RunActivationScan(
      *cached.model, sequences, params,
      [&](const BlockRecord& record) {
        v1::ResultRecord r;
        *r.mutable_scan_block() = ToProto(record);
        emitter.Record(r);
      },
      emitter.Progress(), ctx.cancel);
  if (!summary.ok()) return emitter.Finish(summary.status());

  v1::ResultRecord r;
  v1::ScanSummary* out = r.mutable_scan_summary();
  *out = ToProto(*summary);
  *out->mutable_thresholds() = ThresholdsToProto(params);
  *out->mutable_provenance() =
      MakeProvenance(cached, summary->n_tokens, static_cast<int64_t>(sequences.size()));
  return emitter.FinishWith(r);
}

absl::Status RunJobUnsafe(ModelCache& cache, const WorkerOptions& options,
                          const v1::RunJobRequest& request, const EventSink& sink,
                          const std::atomic<bool>* cancel) {
  // A training run builds its own model (or starts from a checkpoint): no cache.
  if (request.request().has_train()) return RunTrainJob(cache, options, request, sink, cancel);
  const v1::ResolvedModel& m = request.model();
  ModelKey key{m.name(), m.format(), m.path(), m.tokenizer_path(), m.dtype()};
  // A ModelLoading event; false when the receiver is gone.
  auto send_loading = [&](float progress, const char* phase) {
    v1::WorkerEvent event;
    v1::ModelLoading* loading = event.mutable_model_loading();
    loading->set_model(m.name());
    loading->set_progress(progress);
    loading->set_phase(phase);
    loading->set_device(options.device);
    return sink(event);
  };
  // "loading" only when a load starts (a cache hit sends "cached" alone:
  // one event and one store transaction less per job).
  bool gone = false;
  bool was_cached = false;
  ASSIGN_OR_RETURN(std::shared_ptr<CachedModel> cached,
                   cache.Get(key, &was_cached, request.estimated_weight_bytes(),
                             request.estimated_activation_bytes(),
                             [&] { gone = !send_loading(0, "loading"); }));
  if (gone || !send_loading(1, was_cached ? "cached" : "loaded")) {
    return absl::CancelledError("the server went away");
  }
  if (cancel && cancel->load()) return absl::CancelledError("cancelled");
  const v1::JobRequest& job = request.request();
  const JobTypeDescriptor* type = JobTypeOfRequest(job);
  if (type == nullptr) return absl::UnimplementedError("this worker does not run this job type");
  // Evaluation streams (perplexity, interventions) are chunked and sinks
  // jobs cut or window to T <= n_ctx: their sequences may be longer than
  // the context.
  ASSIGN_OR_RETURN(std::vector<std::vector<int64_t>> sequences,
                   TokenizeSequences(job.sequences(), job.has_add_bos() ? job.add_bos() : true,
                                     *cached, "sequence",
                                     /*check_ctx=*/!type->may_exceed_context));
  // The server's cap counts text at about 4 bytes per token; the real count
  // is known only now.
  if (request.max_total_tokens() > 0) {
    int64_t total = 0;
    for (const auto& seq : sequences) total += static_cast<int64_t>(seq.size());
    if (total > request.max_total_tokens()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "request too large: the sequences hold ", total, " tokens after tokenization, more than ",
          "the server's limit of ", request.max_total_tokens(), " tokens (max_total_tokens)"));
    }
  }
  const JobContext ctx{*cached, options, request, sink, cancel};
  if (type->params_case == v1::JobRequest::kScan) return RunScan(ctx, sequences);
  if (type->params_case == v1::JobRequest::kProfile) {
    // The models of a comparison come from the same cache, one at a time.
    const ModelLoader load = [&](const v1::ResolvedModel& other, int64_t weight_bytes) {
      bool hit = false;
      return cache.Get(ModelKey{other.name(), other.format(), other.path(),
                                other.tokenizer_path(), other.dtype()},
                       &hit, weight_bytes, request.estimated_activation_bytes());
    };
    return RunProfileJob(ctx, sequences, load);
  }
  return RunAnalysisJob(ctx, sequences);
}

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * sysconf(_SC_PAGESIZE);
}

}  // namespace

absl::Status RunJobToSink(ModelCache& cache, const WorkerOptions& options,
                          const v1::RunJobRequest& request, const EventSink& sink,
                          const std::atomic<bool>* cancel) {
  try {
    return RunJobUnsafe(cache, options, request, sink, cancel);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("job ", request.job_id(), ": exception: ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat("job ", request.job_id(), ": unknown exception"));
  }
}

std::vector<std::string> ProbeSupportedDtypes(const std::string& device_name) {
  std::vector<std::string> out;
  absl::StatusOr<c10::Device> device = ParseDevice(device_name);
  if (!device.ok()) return out;
  for (const char* name : {"float32", "bfloat16", "float16"}) {
    absl::StatusOr<c10::ScalarType> dtype = ParseDtype(name);
    if (!dtype.ok()) continue;
    try {
      // The operations of a forward pass (model.cc): linear, RMSNorm,
      // rotary mix, scaled scores with a causal mask, softmax, SiLU gate,
      // log-softmax of the logits.
      const auto opts = at::TensorOptions().dtype(*dtype).device(*device);
      at::Tensor x = at::randn({1, 4, 8}, opts);
      at::Tensor w = at::randn({8, 8}, opts);
      at::Tensor h = at::linear(x, w, {});
      h = h * at::rsqrt(h.pow(2).mean(-1, true) + 1e-5);
      h = h * at::cos(h) + at::sin(h);
      at::Tensor scores = at::matmul(h, h.transpose(-1, -2)) * 0.5;
      scores = scores.masked_fill(at::ones({4, 4}, opts.dtype(at::kBool)).triu(1), -INFINITY);
      at::Tensor a = at::softmax(scores, -1);
      h = at::silu(at::matmul(a, h)) * h;
      at::Tensor lp = at::log_softmax(h.to(at::kFloat), -1);
      if (!std::isfinite(lp.sum().item<float>())) continue;
      out.push_back(name);
    } catch (const c10::Error&) {
    } catch (const std::exception&) {
    }
  }
  return out;
}

WorkerServiceImpl::WorkerServiceImpl(WorkerOptions options)
    : options_(std::move(options)), cache_(options_.device, options_.cache_capacity) {
  cache_.set_budget_bytes(options_.memory_budget_bytes);
  supported_dtypes_ = ProbeSupportedDtypes(options_.device);
}

grpc::Status WorkerServiceImpl::RunJob(grpc::ServerContext* context,
                                       const v1::RunJobRequest* request,
                                       grpc::ServerWriter<v1::WorkerEvent>* writer) {
  // A cancelled job may still be unwinding (it stops at the next hook point):
  // wait for it a little before refusing.
  std::unique_lock<std::timed_mutex> run_lock(run_mu_, std::defer_lock);
  if (!run_lock.try_lock_for(std::chrono::seconds(30))) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "worker is busy with another job");
  }
  {
    std::lock_guard<std::mutex> lock(status_mu_);
    running_job_id_ = request->job_id();
  }
  // The server cancels the RPC to cancel the job (or goes away): poll for
  // it. The same thread renews the job's lease with a Heartbeat every
  // heartbeat interval, also while the engine is inside a long layer; a
  // stopped or hung process sends none and the server's watchdog kills it.
  std::atomic<bool> cancel{false};
  std::atomic<bool> done{false};
  // The watcher sleeps on done_cv so that it ends at once with the job (a
  // plain 20 ms sleep made every job wait up to 20 ms more for the join).
  std::mutex done_mu;
  std::condition_variable done_cv;
  std::atomic<int64_t> units_done{0}, units_total{0};
  std::mutex write_mu;  // one writer at a time on the stream
  // Result and progress events are coalesced into one WorkerEventBatch for
  // up to kBatchWindow (a small job's records then cost one message and one
  // store transaction instead of one each); the watcher sends a batch that
  // has waited that long, any other event and the end of the job send it
  // first, and a batch never grows past kBatchMaxBytes (a larger event
  // travels alone).
  using Clock = std::chrono::steady_clock;
  constexpr auto kBatchWindow = std::chrono::milliseconds(10);
  constexpr size_t kBatchMaxBytes = 1 << 20;
  std::vector<v1::WorkerEvent> pending;  // guarded by write_mu
  size_t pending_bytes = 0;
  Clock::time_point pending_since;
  bool receiver_ok = true;  // false once a Write failed (the server went away)
  auto flush_locked = [&]() -> bool {
    if (pending.empty()) return receiver_ok;
    v1::WorkerEvent out;
    if (pending.size() == 1) {
      out = std::move(pending.front());
    } else {
      v1::WorkerEventBatch* batch = out.mutable_batch();
      for (v1::WorkerEvent& e : pending) *batch->add_events() = std::move(e);
    }
    pending.clear();
    pending_bytes = 0;
    if (!writer->Write(out)) receiver_ok = false;
    return receiver_ok;
  };
  const auto heartbeat_every = std::chrono::milliseconds(
      request->heartbeat_interval_ms() > 0 ? request->heartbeat_interval_ms() : 1000);
  std::thread watcher([&] {
    auto next_beat = Clock::now() + heartbeat_every;
    while (!done.load()) {
      if (context->IsCancelled()) {
        cancel.store(true);
        return;
      }
      if (Clock::now() >= next_beat) {
        next_beat = Clock::now() + heartbeat_every;
        v1::WorkerEvent beat;
        beat.mutable_heartbeat()->set_units_done(units_done.load());
        beat.mutable_heartbeat()->set_units_total(units_total.load());
        std::lock_guard<std::mutex> lock(write_mu);
        if (!done.load()) writer->Write(beat);
      }
      {
        std::lock_guard<std::mutex> lock(write_mu);
        if (!done.load() && !pending.empty() && Clock::now() - pending_since >= kBatchWindow) {
          flush_locked();  // a batch that waited its window
        }
      }
      std::unique_lock<std::mutex> lock(done_mu);
      done_cv.wait_for(lock, kBatchWindow, [&] { return done.load(); });
    }
  });
  EventSink sink = [&](const v1::WorkerEvent& event) {
    if (event.has_running()) {
      units_done.store(event.running().units_done());
      units_total.store(event.running().units_total());
    }
    std::lock_guard<std::mutex> lock(write_mu);
    if (event.has_result() || event.has_running()) {
      const size_t bytes = event.ByteSizeLong();
      if (!pending.empty() && pending_bytes + bytes > kBatchMaxBytes && !flush_locked()) {
        return false;
      }
      if (pending.empty()) pending_since = Clock::now();
      pending.push_back(event);
      pending_bytes += bytes;
      if (pending_bytes >= kBatchMaxBytes || Clock::now() - pending_since >= kBatchWindow) {
        return flush_locked();
      }
      return receiver_ok;
    }
    if (!flush_locked()) return false;
    return writer->Write(event);
  };
  absl::Status status = RunJobToSink(cache_, options_, *request, sink, &cancel);
  {
    std::lock_guard<std::mutex> lock(done_mu);
    done = true;
  }
  done_cv.notify_all();
  watcher.join();
  if (cancel.load() && !status.ok()) status = absl::CancelledError("cancelled");

  // The last batch (if any) ends with the JobFinished: one message, and the
  // server stores it with the job's terminal event in one commit.
  v1::WorkerEvent finished;
  finished.mutable_finished()->set_code(static_cast<int32_t>(status.code()));
  finished.mutable_finished()->set_message(std::string(status.message()));
  finished.mutable_finished()->set_checkpoint_error(!status.ok() && IsCheckpointError(status));
  {
    std::lock_guard<std::mutex> lock(write_mu);
    if (pending.empty()) {
      writer->Write(finished);
    } else {
      pending.push_back(std::move(finished));
      flush_locked();  // two or more events: a batch
    }
  }
  {
    std::lock_guard<std::mutex> lock(status_mu_);
    running_job_id_.clear();
    ++jobs_run_;
  }
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Health(grpc::ServerContext*, const v1::HealthRequest*,
                                       v1::HealthResponse* response) {
  response->set_serving(true);
  response->set_pid(getpid());
  response->set_device(options_.device);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::GetStatus(grpc::ServerContext*, const v1::GetStatusRequest*,
                                          v1::WorkerStatus* response) {
  response->set_pid(getpid());
  response->set_device(options_.device);
  int64_t model_bytes = 0;
  for (const CachedModelInfo& info : cache_.Snapshot()) {
    v1::LoadedModel* m = response->add_loaded_models();
    m->set_name(info.name);
    m->set_path(info.path);
    m->set_dtype(info.dtype);
    m->set_weight_bytes(info.weight_bytes);
    m->set_n_params(info.n_params);
    m->set_uses(info.uses);
    model_bytes += info.weight_bytes;
  }
  response->set_model_bytes(model_bytes);
  response->set_rss_bytes(ResidentBytes());
  const DeviceMemory dm = cache_.device_memory();
  response->set_device_allocated_bytes(dm.allocated_bytes);
  response->set_device_reserved_bytes(dm.reserved_bytes);
  response->set_device_total_bytes(dm.total_bytes);
  response->set_device_free_bytes(dm.free_bytes);
  response->set_budget_bytes(cache_.effective_budget_bytes());
  response->set_code_version(CodeVersion());
  for (const std::string& d : supported_dtypes_) response->add_supported_dtypes(d);
  std::lock_guard<std::mutex> lock(status_mu_);
  response->set_running_job_id(running_job_id_);
  response->set_jobs_run(jobs_run_);
  return grpc::Status::OK;
}

}  // namespace worker
}  // namespace sinkscope
