#include "worker/profile_job.h"

#include <algorithm>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "worker/analysis_convert.h"
#include "worker/analysis_jobs.h"
#include "worker/engine/profile.h"
#include "common/status_macros.h"
#include "worker/scan_convert.h"

namespace sinkscope {
namespace worker {
namespace {

constexpr int kMaxListedPositions = 64;

ProfileParams ProfileParamsFromProto(const v1::ProfileRequest& r) {
  ProfileParams p;
  p.eval = EvalParamsFromProto(r.eval());
  if (r.has_sink_window()) p.sinks.window = r.sink_window();
  if (r.has_epsilon()) p.sinks.epsilon = r.epsilon();
  p.sinks.layers.assign(r.sink_layers().begin(), r.sink_layers().end());
  p.scan = ScanParamsFromProto(r.thresholds());
  return p;
}

int32_t I32(int64_t v) { return static_cast<int32_t>(v); }

/// The row of a profiled model.
v1::ProfileRow ToProfileRow(const ProfileResult& r, const CachedModel& cached) {
  v1::ProfileRow row;
  row.set_model(cached.key.name);
  row.set_perplexity(r.perplexity.perplexity);
  row.set_mean_loss(r.perplexity.mean_loss);
  row.set_n_scored(r.perplexity.n_scored);
  row.set_n_chunks(I32(r.perplexity.chunks.size()));
  const SinkSummary& s = r.sinks;
  row.set_sink_ratio(s.sink_ratio);
  row.set_gu_sink_ratio(s.gu_sink_ratio);
  for (const LayerSinkRecord& layer : s.layers) row.add_layer_sink_ratios(layer.sink_ratio);
  row.set_n_sink_heads(I32(s.n_sink_heads));
  row.set_n_heads(I32(s.n_heads));
  row.set_top_sink_key(I32(r.top_sink_key));
  row.set_top_sink_key_heads(I32(r.top_sink_key_heads));
  row.set_sink_heads_distance(s.sink_heads_distance);
  row.set_other_heads_distance(s.other_heads_distance);
  const ScanSummary& scan = r.scan;
  row.set_spike(scan.spike_mean_over_sequences);
  row.set_peak_abs(scan.peak_abs);
  if (scan.peak_block > 0) *row.mutable_peak_block() = BlockRefOf(scan.peak_block);
  row.set_n_massive(scan.n_massive_entries);
  row.set_n_spike_tokens(static_cast<int64_t>(scan.spike_tokens.size()));
  std::set<int64_t> positions;
  for (const auto& [seq, pos] : scan.spike_tokens) positions.insert(pos);
  for (int64_t pos : positions) {
    if (row.spike_positions_size() >= kMaxListedPositions) break;
    row.add_spike_positions(I32(pos));
  }
  for (int64_t c : scan.spike_channels) row.add_spike_channels(I32(c));
  for (int64_t b : scan.step_up_blocks) *row.add_step_up_blocks() = BlockRefOf(b);
  for (int64_t b : scan.step_down_blocks) *row.add_step_down_blocks() = BlockRefOf(b);
  *row.mutable_provenance() = MakeProvenance(cached, r.perplexity.n_tokens,
                                             static_cast<int64_t>(r.perplexity.chunks.size()));
  return row;
}

v1::ProfileRow FailedRow(const std::string& model, const absl::Status& status) {
  v1::ProfileRow row;
  row.set_model(model);
  row.mutable_failure()->set_code(static_cast<int32_t>(status.code()));
  row.mutable_failure()->set_message(std::string(status.message()).substr(0, 4096));
  return row;
}

/// One model's profile; `used` gets the parameters with the defaults and the
/// stream size (from the first model).
absl::StatusOr<v1::ProfileRow> ProfileOne(const JobContext& ctx,
                                          const std::vector<std::vector<int64_t>>& sequences,
                                          const ProgressFn& progress, v1::ProfileParamsUsed* used) {
  const v1::ProfileRequest& req = ctx.run.request().profile();
  ASSIGN_OR_RETURN(std::shared_ptr<const std::vector<int64_t>> stream,
                   EvalStream(ctx, req.eval(), sequences));
  const ProfileParams params = ProfileParamsFromProto(req);
  ASSIGN_OR_RETURN(ProfileResult result, RunProfile(*ctx.cached.model, *stream, params, nullptr,
                                                    progress, ctx.cancel));
  if (used != nullptr && !used->has_eval()) {
    *used->mutable_eval() =
        EvalUsedToProto(params.eval, req.eval().corpus(), static_cast<int64_t>(stream->size()));
    v1::SinkParamsUsed* sinks = used->mutable_sinks();
    sinks->set_window(I32(result.sinks.window));
    sinks->set_epsilon(params.sinks.epsilon);
    for (const LayerSinkRecord& layer : result.sinks.layers) sinks->add_layers(I32(layer.layer));
    *used->mutable_thresholds() = ThresholdsToProto(params.scan);
  }
  return ToProfileRow(result, ctx.cached);
}

}  // namespace

absl::StatusOr<v1::ProfileRow> ProfileStream(const CachedModel& cached,
                                             const std::vector<int64_t>& stream,
                                             const v1::ProfileRequest& params,
                                             const std::atomic<bool>* cancel) {
  ASSIGN_OR_RETURN(ProfileResult result, RunProfile(*cached.model, stream, ProfileParamsFromProto(params),
                                                    nullptr, nullptr, cancel));
  return ToProfileRow(result, cached);
}

absl::Status RunProfileJob(const JobContext& ctx,
                           const std::vector<std::vector<int64_t>>& sequences,
                           const ModelLoader& load_model) {
  const v1::JobRequest& request = ctx.run.request();
  const int n_models = 1 + ctx.run.compare_models_size();
  Emitter emitter(ctx);
  const ProgressFn progress = emitter.Progress();
  // Progress in chunks of all models: the chunk count of the first model's
  // stream stands for every model's.
  int model_index = 0;
  auto model_progress = [&](int64_t done, int64_t total) {
    if (progress) progress(model_index * total + done, n_models * total);
  };
  v1::ResultRecord summary_record;
  v1::ProfileSummary* summary = summary_record.mutable_profile_summary();
  absl::StatusOr<v1::ProfileRow> first =
      ProfileOne(ctx, sequences, model_progress, summary->mutable_params());
  if (!first.ok()) return emitter.Finish(first.status());
  *summary->mutable_provenance() = first->provenance();
  auto add_row = [&](v1::ProfileRow row) {
    if (row.has_failure()) summary->set_n_failed(summary->n_failed() + 1);
    v1::ResultRecord r;
    *r.mutable_profile_row() = row;
    emitter.Record(r);
    *summary->add_rows() = std::move(row);
  };
  add_row(*std::move(first));
  const bool add_bos = request.has_add_bos() ? request.add_bos() : true;
  for (int i = 0; i < ctx.run.compare_models_size(); ++i) {
    model_index = i + 1;
    if (ctx.cancel != nullptr && ctx.cancel->load()) return emitter.Finish(absl::CancelledError("cancelled"));
    const v1::ResolvedModel& m = ctx.run.compare_models(i);
    const int64_t weight_bytes =
        i < ctx.run.compare_weight_bytes_size() ? ctx.run.compare_weight_bytes(i) : 0;
    absl::StatusOr<v1::ProfileRow> row = [&]() -> absl::StatusOr<v1::ProfileRow> {
      if (!m.unavailable_reason().empty()) return absl::FailedPreconditionError(m.unavailable_reason());
      if (m.format().empty()) {
        return absl::NotFoundError(absl::StrCat("model ", m.name(), " is not in the catalog"));
      }
      ASSIGN_OR_RETURN(std::shared_ptr<CachedModel> cached, load_model(m, weight_bytes));
      ASSIGN_OR_RETURN(std::vector<std::vector<int64_t>> own,
                       TokenizeSequences(request.sequences(), add_bos, *cached, "sequence",
                                         /*check_ctx=*/false));
      const JobContext other{*cached, ctx.options, ctx.run, ctx.sink, ctx.cancel};
      return ProfileOne(other, own, model_progress, nullptr);
    }();
    if (!row.ok() && row.status().code() == absl::StatusCode::kCancelled) {
      return emitter.Finish(row.status());
    }
    add_row(row.ok() ? *std::move(row) : FailedRow(m.name(), row.status()));
  }
  return emitter.FinishWith(summary_record);
}

}  // namespace worker
}  // namespace sinkscope
