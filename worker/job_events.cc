#include "worker/job_events.h"

#include <thread>

#include "worker/engine/model.h"

#ifndef SINKSCOPE_CODE_VERSION
#define SINKSCOPE_CODE_VERSION "unknown"
#endif

namespace sinkscope {
namespace worker {

void Emitter::Emit(const v1::WorkerEvent& event) {
  if (!gone_ && !ctx_.sink(event)) gone_ = true;
}

void Emitter::Record(const v1::ResultRecord& record) {
  v1::WorkerEvent event;
  *event.mutable_result() = record;
  Emit(event);
}

ProgressFn Emitter::Progress() {
  return [this](int64_t done, int64_t total) {
    const Clock::time_point now = Clock::now();
    if (done >= total ||
        now - last_ >= std::chrono::milliseconds(ctx_.options.progress_interval_ms)) {
      last_ = now;
      v1::WorkerEvent event;
      event.mutable_running()->set_units_done(done);
      event.mutable_running()->set_units_total(total);
      Emit(event);
    }
    if (ctx_.options.test_unit_delay_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ctx_.options.test_unit_delay_ms));
    }
  };
}

absl::Status Emitter::Finish(const absl::Status& status) const {
  if (gone_) return absl::CancelledError("the server went away");
  return status;
}

absl::Status Emitter::FinishWith(const v1::ResultRecord& summary) {
  Record(summary);
  return Finish(absl::OkStatus());
}

const char* CodeVersion() { return SINKSCOPE_CODE_VERSION; }

v1::Provenance MakeProvenance(const CachedModel& cached, int64_t n_tokens, int64_t n_sequences) {
  v1::Provenance p;
  p.set_model(cached.key.name);
  p.set_checkpoint_format(cached.checkpoint_format);
  p.set_dtype(DtypeName(cached.model->dtype()));
  p.set_device(cached.model->device().str());
  p.set_attention_path(cached.model->fast_attention_path());
  p.set_code_version(CodeVersion());
  p.set_n_tokens(n_tokens);
  p.set_n_sequences(static_cast<int32_t>(n_sequences));
  return p;
}

v1::Provenance MakeProvenance(const CachedModel& cached,
                              const std::vector<std::vector<int64_t>>& sequences) {
  int64_t n_tokens = 0;
  for (const auto& s : sequences) n_tokens += static_cast<int64_t>(s.size());
  return MakeProvenance(cached, n_tokens, static_cast<int64_t>(sequences.size()));
}

}  // namespace worker
}  // namespace sinkscope
