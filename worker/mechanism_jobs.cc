#include "worker/mechanism_jobs.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "worker/engine/activations.h"
#include "worker/engine/mechanism.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace worker {
namespace {

template <typename Msg>
void SetBlock(const BlockId& id, Msg* out) {
  out->set_block(static_cast<int32_t>(id.block));
  out->set_layer(static_cast<int32_t>(id.layer));
  out->set_sublayer(id.sublayer());
}

// ---- ffn-quadratic ----

FfnQuadraticParams FfnParamsFromProto(const v1::FfnQuadraticRequest& r) {
  FfnQuadraticParams p;
  p.blocks.assign(r.blocks().begin(), r.blocks().end());
  if (r.has_top_channels()) p.top_channels = r.top_channels();
  if (r.has_outlier_factor()) p.outlier_factor = r.outlier_factor();
  if (r.has_sample_channels()) p.sample_channels = r.sample_channels();
  if (r.has_seed()) p.seed = r.seed();
  if (r.has_n_eigenvalues()) p.n_eigenvalues = r.n_eigenvalues();
  if (r.has_top_rows()) p.top_rows = r.top_rows();
  return p;
}

v1::FfnQuadraticBlock ToProto(const FfnQuadraticBlock& b) {
  v1::FfnQuadraticBlock out;
  SetBlock(b.id, &out);
  for (float x : b.frobenius_norms) out.add_frobenius_norms(x);
  out.set_median_frobenius_norm(b.median);
  for (int64_t k : b.outlier_channels) out.add_outlier_channels(static_cast<int32_t>(k));
  for (const FfnChannelSpectrum& s : b.channels) {
    v1::FfnChannelSpectrum* c = out.add_channels();
    c->set_channel(static_cast<int32_t>(s.channel));
    c->set_is_top(s.is_top);
    c->set_frobenius_norm(s.frobenius_norm);
    for (double e : s.eigenvalues) c->add_eigenvalues(e);
    c->set_eigen_ratio(s.eigen_ratio);
    for (float x : s.leading_eigenvector) c->add_leading_eigenvector(x);
    c->set_residual(s.residual);
    for (const FfnRowInfo& r : s.top_rows) {
      v1::FfnRow* row = c->add_top_rows();
      row->set_row(static_cast<int32_t>(r.row));
      row->set_w_down(r.w_down);
      row->set_gate_up_cosine(r.gate_up_cosine);
    }
  }
  for (double x : b.top_cosine) out.add_top_eigenvector_cosine(x);
  out.set_mean_top_eigenvector_cosine(b.mean_top_cosine);
  return out;
}

absl::Status RunFfnQuadraticJob(const JobContext& ctx) {
  const FfnQuadraticParams params = FfnParamsFromProto(ctx.run.request().ffn_quadratic());
  Emitter emitter(ctx);
  v1::ResultRecord summary;
  v1::FfnQuadraticSummary* s = summary.mutable_ffn_quadratic_summary();
  double seconds = 0;
  absl::Status st = RunFfnQuadratic(
      *ctx.cached.model, params,
      [&](const FfnQuadraticBlock& b) {
        v1::ResultRecord r;
        *r.mutable_ffn_quadratic_block() = ToProto(b);
        emitter.Record(r);
        s->add_blocks(static_cast<int32_t>(b.id.block));
        s->add_n_outlier_channels(static_cast<int32_t>(b.outlier_channels.size()));
        seconds += b.seconds;
      },
      emitter.Progress(), ctx.cancel);
  if (!st.ok()) return emitter.Finish(st);
  s->set_outlier_factor(params.outlier_factor);
  s->set_sample_channels(static_cast<int32_t>(params.sample_channels));
  s->set_n_eigenvalues(static_cast<int32_t>(params.n_eigenvalues));
  s->set_seconds_per_block(s->blocks_size() > 0 ? seconds / s->blocks_size() : 0);
  s->set_compute_dtype("float64");
  *s->mutable_provenance() = MakeProvenance(ctx.cached, 0, 0);
  return emitter.FinishWith(summary);
}

// ---- silu-regime ----

void FillStats(const SiluStats& s, v1::SiluStats* out) {
  out->set_n_tokens(s.n);
  out->set_mean_cosine(s.mean_cosine);
  out->set_min_cosine(s.min_cosine);
  out->set_mean_norm_ratio(s.mean_norm_ratio);
}

absl::Status RunSiluRegimeJob(const JobContext& ctx,
                              const std::vector<std::vector<int64_t>>& sequences) {
  const v1::SiluRegimeRequest& r = ctx.run.request().silu_regime();
  SiluRegimeParams params;
  params.blocks.assign(r.blocks().begin(), r.blocks().end());
  if (r.has_abs_threshold()) params.scan.abs_threshold = r.abs_threshold();
  if (r.has_rel_threshold()) params.scan.rel_threshold = r.rel_threshold();
  if (r.has_channel()) params.channel = r.channel();
  Emitter emitter(ctx);
  absl::StatusOr<SiluRegimeResult> res =
      RunSiluRegime(*ctx.cached.model, sequences, params, emitter.Progress(), ctx.cancel);
  if (!res.ok()) return emitter.Finish(res.status());
  v1::ResultRecord summary;
  v1::SiluRegimeSummary* s = summary.mutable_silu_regime_summary();
  for (const SiluRegimeBlock& b : res->blocks) {
    v1::ResultRecord rec;
    v1::SiluRegimeBlock* out = rec.mutable_silu_regime_block();
    SetBlock(b.id, out);
    for (const SiluToken& t : b.tokens) {
      v1::SiluToken* o = out->add_tokens();
      o->set_sequence(static_cast<int32_t>(t.sequence));
      o->set_position(static_cast<int32_t>(t.position));
      o->set_is_spike_token(t.is_spike_token);
      o->set_cosine(t.cosine);
      o->set_norm_ratio(t.norm_ratio);
      o->set_max_abs_output(t.max_abs_output);
    }
    FillStats(b.spike, out->mutable_spike_tokens());
    FillStats(b.other, out->mutable_other_tokens());
    out->set_channel(static_cast<int32_t>(b.channel));
    out->set_lambda_star(b.lambda_star);
    out->set_mean_quadratic_relative_error(b.mean_quadratic_error);
    out->set_max_quadratic_relative_error(b.max_quadratic_error);
    emitter.Record(rec);
    s->add_blocks(static_cast<int32_t>(b.id.block));
  }
  for (const auto& [seq, pos] : res->spike_tokens) {
    v1::SpikeTokenRef* t = s->add_spike_tokens();
    t->set_sequence(static_cast<int32_t>(seq));
    t->set_position(static_cast<int32_t>(pos));
  }
  *s->mutable_provenance() = MakeProvenance(ctx.cached, sequences);
  return emitter.FinishWith(summary);
}

// ---- vo-circuit ----

absl::Status RunVoCircuitJob(const JobContext& ctx) {
  const v1::VoCircuitRequest& r = ctx.run.request().vo_circuit();
  VoCircuitParams params;
  params.token_ids.assign(r.token_ids().begin(), r.token_ids().end());
  if (r.has_vocab_sample()) {
    params.vocab_sample = r.vocab_sample();
  } else {
    params.vocab_sample = std::min<int64_t>(params.vocab_sample, ctx.cached.model->config().d_vocab);
  }
  if (r.has_seed()) params.seed = r.seed();
  if (r.has_step_up_block()) params.step_up_block = r.step_up_block();
  Emitter emitter(ctx);
  absl::StatusOr<VoCircuitResult> res =
      RunVoCircuit(*ctx.cached.model, params, emitter.Progress(), ctx.cancel);
  if (!res.ok()) return emitter.Finish(res.status());
  for (const VoCircuitLayer& l : res->layers) {
    v1::ResultRecord rec;
    v1::VoCircuitLayer* out = rec.mutable_vo_circuit_layer();
    out->set_layer(static_cast<int32_t>(l.layer));
    for (double a : l.token_alignment) out->add_token_alignment(a);
    out->set_sample_mean(l.mean);
    out->set_sample_min(l.min);
    out->set_sample_max(l.max);
    for (double q : l.quantiles) out->add_sample_quantiles(q);
    emitter.Record(rec);
  }
  v1::ResultRecord summary;
  v1::VoCircuitSummary* s = summary.mutable_vo_circuit_summary();
  s->set_step_up_block(static_cast<int32_t>(res->step_up_block));
  for (int64_t id : params.token_ids) s->add_token_ids(static_cast<int32_t>(id));
  s->set_vocab_sample(static_cast<int32_t>(params.vocab_sample));
  *s->mutable_provenance() = MakeProvenance(
      ctx.cached, static_cast<int64_t>(params.token_ids.size()) + params.vocab_sample,
      static_cast<int64_t>(params.token_ids.size()) + params.vocab_sample);
  return emitter.FinishWith(summary);
}

// ---- activations ----

/// Values per ActivationTensor piece (4 MiB of float32).
constexpr int64_t kPieceValues = int64_t{1} << 20;

absl::Status RunActivationsJob(const JobContext& ctx,
                               const std::vector<std::vector<int64_t>>& sequences) {
  const v1::ActivationsRequest& r = ctx.run.request().activations();
  ActivationsParams params;
  params.hooks.assign(r.hooks().begin(), r.hooks().end());
  params.sequences.assign(r.sequences().begin(), r.sequences().end());
  params.slices.positions.assign(r.positions().begin(), r.positions().end());
  params.slices.channels.assign(r.channels().begin(), r.channels().end());
  params.slices.heads.assign(r.heads().begin(), r.heads().end());
  params.max_bytes = kDefaultMaxActivationsBytes;
  Emitter emitter(ctx);
  int32_t n_tensors = 0;
  int64_t n_values = 0;
  absl::StatusOr<int64_t> bytes = RunActivations(
      *ctx.cached.model, sequences, params,
      [&](const HookTensor& t) {
        ++n_tensors;
        const int64_t n = static_cast<int64_t>(t.values.size());
        n_values += n;
        for (int64_t off = 0; off == 0 || off < n; off += kPieceValues) {
          v1::ResultRecord rec;
          v1::ActivationTensor* out = rec.mutable_activation_tensor();
          out->set_hook(t.hook);
          out->set_sequence(static_cast<int32_t>(t.sequence));
          for (int64_t d : t.shape) out->add_shape(d);
          for (const std::string& d : t.dims) out->add_dims(d);
          out->set_offset(off);
          out->set_numel(n);
          const int64_t end = std::min(n, off + kPieceValues);
          out->mutable_values()->Add(t.values.begin() + off, t.values.begin() + end);
          emitter.Record(rec);
          if (n == 0) break;
        }
      },
      emitter.Progress(), ctx.cancel);
  if (!bytes.ok()) return emitter.Finish(bytes.status());
  v1::ResultRecord summary;
  v1::ActivationsSummary* s = summary.mutable_activations_summary();
  s->set_n_tensors(n_tensors);
  s->set_n_values(n_values);
  s->set_bytes(*bytes);
  *s->mutable_provenance() = MakeProvenance(ctx.cached, sequences);
  return emitter.FinishWith(summary);
}

}  // namespace

absl::Status RunMechanismJob(const JobContext& ctx,
                             const std::vector<std::vector<int64_t>>& sequences) {
  switch (ctx.run.request().params_case()) {
    case v1::JobRequest::kFfnQuadratic:
      return RunFfnQuadraticJob(ctx);
    case v1::JobRequest::kSiluRegime:
      return RunSiluRegimeJob(ctx, sequences);
    case v1::JobRequest::kVoCircuit:
      return RunVoCircuitJob(ctx);
    case v1::JobRequest::kActivations:
      return RunActivationsJob(ctx, sequences);
    default:
      return absl::UnimplementedError("not a mechanism job");
  }
}

}  // namespace worker
}  // namespace sinkscope
