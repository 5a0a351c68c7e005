#include "worker/analysis_convert.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "worker/engine/scan.h"

namespace sinkscope {
namespace worker {
namespace {

int32_t I32(int64_t v) { return static_cast<int32_t>(v); }

v1::CosineMatrix CosineToProto(const CosineMatrix& m) {
  v1::CosineMatrix out;
  out.set_hook(m.hook);
  int64_t n = 0;
  while (n * n < static_cast<int64_t>(m.values.size())) ++n;
  out.set_n(I32(n));
  for (double v : m.values) out.add_values(v);
  out.set_mean_off_diagonal(m.mean_off_diagonal);
  out.set_min_off_diagonal(m.min_off_diagonal);
  return out;
}

void FillHead(int64_t layer, int64_t head, v1::HeadRef* out) {
  out->set_layer(I32(layer));
  out->set_head(I32(head));
}

/// The spike rule's thresholds set in request `r` (SpikeSimilarityRequest,
/// InterventionRequest), over the defaults in `p`.
template <typename Request>
void ReadSpikeThresholds(const Request& r, ScanParams* p) {
  if (r.has_abs_threshold()) p->abs_threshold = r.abs_threshold();
  if (r.has_rel_threshold()) p->rel_threshold = r.rel_threshold();
  if (r.has_step_fraction()) p->step_fraction = r.step_fraction();
}

v1::SpikeThresholds SpikeThresholdsToProto(const ScanParams& p) {
  v1::SpikeThresholds out;
  out.set_abs_threshold(p.abs_threshold);
  out.set_rel_threshold(p.rel_threshold);
  out.set_step_fraction(p.step_fraction);
  return out;
}

}  // namespace

v1::BlockRef BlockRefOf(int64_t block) {
  v1::BlockRef out;
  BlockId id = BlockId::FromBlock(block);
  out.set_block(I32(id.block));
  out.set_layer(I32(id.layer));
  out.set_sublayer(id.sublayer());
  return out;
}

// ---- sinks ----

SinkParams SinkParamsFromProto(const v1::SinksRequest& r) {
  SinkParams p;
  if (r.has_window()) p.window = r.window();
  p.windowed = r.windowed();
  if (r.has_epsilon()) p.epsilon = r.epsilon();
  p.layers.assign(r.layers().begin(), r.layers().end());
  return p;
}

v1::SinkLayer ToProto(const LayerSinkRecord& record) {
  v1::SinkLayer out;
  out.set_layer(I32(record.layer));
  int32_t n_sink = 0;
  for (const HeadSinkStats& h : record.heads) {
    v1::HeadSinkStats* o = out.add_heads();
    o->set_layer(I32(h.layer));
    o->set_head(I32(h.head));
    o->set_max_importance(h.max_importance);
    o->set_argmax_key(I32(h.argmax_key));
    o->set_sink_fraction(h.sink_fraction);
    o->set_is_sink_head(h.is_sink_head);
    o->set_gu_first_key_score(h.gu_first_key_score);
    o->set_gu_sink_fraction(h.gu_sink_fraction);
    o->set_mean_attention_distance(h.mean_attention_distance);
    o->set_mean_attention_distance_without_sink(h.mean_attention_distance_without_sink);
    o->set_mean_logit_gap(h.mean_logit_gap);
    n_sink += h.is_sink_head;
  }
  out.set_sink_ratio(record.sink_ratio);
  out.set_n_sink_heads(n_sink);
  return out;
}

v1::SinkSummary ToProto(const SinkSummary& s, const SinkParams& params) {
  v1::SinkSummary out;
  out.set_sink_ratio(s.sink_ratio);
  out.set_gu_sink_ratio(s.gu_sink_ratio);
  out.set_n_sink_heads(I32(s.n_sink_heads));
  out.set_n_heads(I32(s.n_heads));
  for (const LayerSinkRecord& layer : s.layers) {
    for (const HeadSinkStats& h : layer.heads) {
      if (h.is_sink_head) FillHead(h.layer, h.head, out.add_sink_heads());
    }
  }
  out.set_n_windows(s.n_sequences);
  out.set_sink_heads_distance(s.sink_heads_distance);
  out.set_other_heads_distance(s.other_heads_distance);
  out.set_sink_heads_distance_without_sink(s.sink_heads_distance_without_sink);
  out.set_other_heads_distance_without_sink(s.other_heads_distance_without_sink);
  out.set_sink_heads_logit_gap(s.sink_heads_logit_gap);
  out.set_other_heads_logit_gap(s.other_heads_logit_gap);
  v1::SinkParamsUsed* p = out.mutable_params();
  p->set_window(I32(s.window));  // the T actually used: min(requested, longest sequence)
  p->set_windowed(params.windowed);
  p->set_epsilon(params.epsilon);
  for (const LayerSinkRecord& layer : s.layers) p->add_layers(I32(layer.layer));
  return out;
}

// ---- first-token probe ----

FirstTokenParams FirstTokenParamsFromProto(const v1::FirstTokenProbeRequest& r) {
  FirstTokenParams p;
  p.token_ids.assign(r.token_ids().begin(), r.token_ids().end());
  if (r.has_range_begin()) p.range_begin = r.range_begin();
  if (r.has_range_end()) p.range_end = r.range_end();
  p.prefix.assign(r.prefix().begin(), r.prefix().end());
  if (r.has_abs_threshold()) p.abs_threshold = r.abs_threshold();
  if (r.has_rel_threshold()) p.rel_threshold = r.rel_threshold();
  if (r.has_batch_size()) p.batch_size = r.batch_size();
  if (r.has_max_listed_exceptions()) p.max_listed_exceptions = r.max_listed_exceptions();
  return p;
}

v1::FirstTokenProbeResult ToProto(const FirstTokenResult& r, const FirstTokenParams& params) {
  v1::FirstTokenProbeResult out;
  out.set_n_tokens(r.n_tokens);
  out.set_n_spike_at_first(r.n_spike_at_first);
  out.set_n_spike_in_control(r.n_spike_in_control);
  out.set_ratio_at_first(r.ratio_at_first);
  out.set_ratio_in_control(r.ratio_in_control);
  for (int64_t id : r.not_spiking_at_first) out.add_not_spiking_at_first(I32(id));
  for (int64_t id : r.spiking_in_control) out.add_spiking_in_control(I32(id));
  for (int64_t n : r.first_spike_block_histogram) out.add_first_spike_block_histogram(n);
  out.set_forward_seconds(r.forward_seconds);
  out.set_total_seconds(r.total_seconds);
  v1::FirstTokenParamsUsed* p = out.mutable_params();
  for (int64_t id : params.token_ids) p->add_token_ids(I32(id));
  if (params.token_ids.empty()) {
    p->set_range_begin(I32(params.range_begin));
    p->set_range_end(I32(params.range_end));
  }
  for (int64_t id : params.prefix) p->add_prefix(I32(id));
  p->set_abs_threshold(params.abs_threshold);
  p->set_rel_threshold(params.rel_threshold);
  p->set_batch_size(I32(params.batch_size));
  return out;
}

// ---- spike similarity ----

SpikeSimilarityParams SpikeSimilarityParamsFromProto(const v1::SpikeSimilarityRequest& r) {
  SpikeSimilarityParams p;
  ReadSpikeThresholds(r, &p.scan);
  p.step_up_block = r.step_up_block();
  return p;
}

v1::SpikeSimilaritySummary ToProto(const SpikeSimilarityResult& r,
                                   const SpikeSimilarityParams& params) {
  v1::SpikeSimilaritySummary out;
  for (const auto& [seq, pos] : r.spike_tokens) {
    v1::SpikeToken* t = out.add_spike_tokens();
    t->set_sequence(I32(seq));
    t->set_position(I32(pos));
  }
  for (int64_t id : r.token_ids) out.add_token_ids(I32(id));
  if (r.step_up_block > 0) *out.mutable_step_up_block() = BlockRefOf(r.step_up_block);
  *out.mutable_before() = CosineToProto(r.before);
  *out.mutable_after() = CosineToProto(r.after);
  if (!r.normalized.hook.empty()) *out.mutable_normalized() = CosineToProto(r.normalized);
  *out.mutable_thresholds() = SpikeThresholdsToProto(params.scan);
  return out;
}

// ---- self-attention profile ----

v1::SelfAttentionLayer ToProto(const SelfAttentionLayer& layer) {
  v1::SelfAttentionLayer out;
  out.set_layer(I32(layer.layer));
  for (TokenGroup g : {TokenGroup::kFirst, TokenGroup::kDelimiter, TokenGroup::kOther}) {
    const int i = static_cast<int>(g);
    v1::GroupSelfAttention* o = out.add_groups();
    o->set_group(TokenGroupName(g));
    o->set_mean(layer.group_mean[i]);
    o->set_count(layer.group_count[i]);
  }
  for (size_t h = 0; h < layer.per_head_group_mean.size(); ++h) {
    v1::HeadSelfAttention* o = out.add_heads();
    o->set_head(I32(static_cast<int64_t>(h)));
    o->set_first(layer.per_head_group_mean[h][0]);
    o->set_delimiter(layer.per_head_group_mean[h][1]);
    o->set_other(layer.per_head_group_mean[h][2]);
  }
  for (const auto& seq : layer.per_token) {
    v1::SequenceValues* o = out.add_per_token();
    o->mutable_values()->Add(seq.begin(), seq.end());
  }
  return out;
}

// ---- perplexity and interventions ----

EvalParams EvalParamsFromProto(const v1::EvalCorpus& eval) {
  EvalParams p;
  if (eval.has_chunk_length()) p.chunk_length = eval.chunk_length();
  if (eval.has_token_budget()) p.token_budget = eval.token_budget();
  return p;
}

v1::EvalUsed EvalUsedToProto(const EvalParams& params, const std::string& corpus,
                             int64_t stream_tokens) {
  v1::EvalUsed out;
  out.set_corpus(corpus);
  out.set_chunk_length(I32(params.chunk_length));
  out.set_token_budget(params.token_budget);
  out.set_stream_tokens(stream_tokens);
  return out;
}

v1::PerplexityChunk ToPerplexityChunk(const ChunkRecord& c) {
  v1::PerplexityChunk out;
  out.set_index(I32(c.index));
  out.set_first_token(c.first_token);
  out.set_n_scored(c.n_scored);
  out.set_nll_sum(c.nll_sum);
  out.set_mean_loss(c.mean_loss);
  out.set_perplexity(c.perplexity);
  return out;
}

v1::PerplexitySummary ToProto(const PerplexityResult& r) {
  v1::PerplexitySummary out;
  out.set_n_scored(r.n_scored);
  out.set_n_tokens(r.n_tokens);
  out.set_n_chunks(I32(static_cast<int64_t>(r.chunks.size())));
  out.set_mean_loss(r.mean_loss);
  out.set_perplexity(r.perplexity);
  return out;
}

v1::InterventionChunk ToInterventionChunk(const ChunkRecord& c) {
  v1::InterventionChunk out;
  out.set_index(I32(c.index));
  out.set_first_token(c.first_token);
  out.set_n_scored(c.n_scored);
  out.set_baseline_mean_loss(c.mean_loss);
  out.set_baseline_perplexity(c.perplexity);
  out.set_intervened_mean_loss(c.intervened_mean_loss);
  out.set_intervened_perplexity(c.intervened_perplexity);
  out.set_kl_mean(c.kl_mean);
  return out;
}

absl::StatusOr<ExperimentParams> ExperimentParamsFromProto(const v1::InterventionRequest& r,
                                                           v1::JobType type) {
  ExperimentParams p;
  p.eval = EvalParamsFromProto(r.eval());
  ReadSpikeThresholds(r, &p.thresholds);
  for (int i = 0; i < r.interventions_size(); ++i) {
    const v1::InterventionSpec& spec = r.interventions(i);
    const std::string where = absl::StrCat("interventions[", i, "]: ");
    InterventionSpec s;
    if (spec.has_substitution()) {
      const v1::ConstantSubstitution& in = spec.substitution();
      s.kind = InterventionSpec::Kind::kSubstitution;
      if (!in.mode().empty()) {
        absl::StatusOr<SubstitutionSpec::Mode> mode = ParseSubstitutionMode(in.mode());
        if (!mode.ok()) return absl::InvalidArgumentError(where + std::string(mode.status().message()));
        s.substitution.mode = *mode;
      }
      s.substitution.block = in.block();
      s.substitution.channels_only = in.channels_only();
      s.substitution.channels.assign(in.channels().begin(), in.channels().end());
      s.substitution.positions.assign(in.positions().begin(), in.positions().end());
      s.substitution.constant.assign(in.constant().begin(), in.constant().end());
    } else if (spec.has_ablation()) {
      const v1::SinkAblation& in = spec.ablation();
      s.kind = InterventionSpec::Kind::kAblation;
      if (!in.method().empty()) {
        absl::StatusOr<AblationSpec::Method> method = ParseAblationMethod(in.method());
        if (!method.ok()) {
          return absl::InvalidArgumentError(where + std::string(method.status().message()));
        }
        s.ablation.method = *method;
      }
      for (const v1::HeadRef& h : in.heads()) s.ablation.heads.emplace_back(h.layer(), h.head());
      if (!in.sink_positions().empty()) {
        s.ablation.sink_positions.assign(in.sink_positions().begin(), in.sink_positions().end());
      }
    } else {
      return absl::InvalidArgumentError(where + "set substitution or ablation");
    }
    p.interventions.push_back(std::move(s));
  }
  if (p.interventions.empty()) {
    InterventionSpec s;
    s.kind = type == v1::JOB_TYPE_SINK_ABLATION ? InterventionSpec::Kind::kAblation
                                                : InterventionSpec::Kind::kSubstitution;
    p.interventions.push_back(s);
  }
  return p;
}

v1::InterventionSummary ToProto(const ExperimentResult& r, const ExperimentParams& params) {
  v1::InterventionSummary out;
  out.set_n_scored(r.n_scored);
  out.set_n_chunks(I32(static_cast<int64_t>(r.chunks.size())));
  out.set_baseline_loss(r.baseline_loss);
  out.set_baseline_perplexity(r.baseline_perplexity);
  out.set_intervened_loss(r.intervened_loss);
  out.set_intervened_perplexity(r.intervened_perplexity);
  v1::KlByClass* kl = out.mutable_kl();
  kl->set_spike(r.kl.spike);
  kl->set_after_spike(r.kl.after_spike);
  kl->set_rest(r.kl.rest);
  kl->set_all(r.kl.all);
  kl->set_n_spike(r.kl.n_spike);
  kl->set_n_after_spike(r.kl.n_after_spike);
  kl->set_n_rest(r.kl.n_rest);

  // Ablations append their heads to r.ablated_heads in order; explicit ones
  // contribute their own count, detected ones (identical detections) share
  // the remainder.
  size_t explicit_heads = 0, n_detected = 0;
  for (const InterventionSpec& s : params.interventions) {
    if (s.kind != InterventionSpec::Kind::kAblation) continue;
    if (s.ablation.heads.empty()) {
      ++n_detected;
    } else {
      explicit_heads += s.ablation.heads.size();
    }
  }
  const size_t per_detected =
      n_detected > 0 && r.ablated_heads.size() >= explicit_heads
          ? (r.ablated_heads.size() - explicit_heads) / n_detected
          : 0;
  size_t sub_index = 0, head_offset = 0;
  for (const InterventionSpec& s : params.interventions) {
    v1::ResolvedIntervention* o = out.add_interventions();
    if (s.kind == InterventionSpec::Kind::kSubstitution) {
      v1::ResolvedSubstitution* sub = o->mutable_substitution();
      sub->set_mode(SubstitutionModeName(s.substitution.mode));
      sub->set_channels_only(s.substitution.channels_only);
      for (int64_t p : s.substitution.positions) sub->add_positions(I32(p));
      if (sub_index < r.substitution_blocks.size()) {
        *sub->mutable_block() = BlockRefOf(r.substitution_blocks[sub_index]);
      }
      if (sub_index < r.substitution_channels.size()) {
        for (int64_t c : r.substitution_channels[sub_index]) sub->add_channels(I32(c));
      }
      if (sub_index < r.substitution_values.size()) {
        sub->mutable_values()->Add(r.substitution_values[sub_index].begin(),
                                   r.substitution_values[sub_index].end());
      }
      ++sub_index;
    } else {
      v1::ResolvedAblation* abl = o->mutable_ablation();
      abl->set_method(AblationMethodName(s.ablation.method));
      const size_t n = s.ablation.heads.empty() ? per_detected : s.ablation.heads.size();
      for (size_t i = 0; i < n && head_offset < r.ablated_heads.size(); ++i, ++head_offset) {
        FillHead(r.ablated_heads[head_offset].first, r.ablated_heads[head_offset].second,
                 abl->add_heads());
      }
      for (int64_t p : s.ablation.sink_positions) abl->add_sink_positions(I32(p));
    }
  }
  for (const HeadAblationEffect& e : r.head_effects) {
    v1::HeadAblationEffect* o = out.add_head_effects();
    o->set_layer(I32(e.layer));
    o->set_head(I32(e.head));
    o->set_z_norm_baseline(e.z_norm_baseline);
    o->set_z_norm_intervened(e.z_norm_intervened);
    o->set_distance_baseline(e.distance_baseline);
    o->set_distance_intervened(e.distance_intervened);
  }
  for (const ResidualShift& s : r.residual_shifts) {
    v1::ResidualShift* o = out.add_residual_shifts();
    *o->mutable_block() = BlockRefOf(s.block);
    o->set_relative_change_spike(s.relative_change_spike);
    o->set_relative_change_rest(s.relative_change_rest);
  }
  *out.mutable_thresholds() = SpikeThresholdsToProto(params.thresholds);
  out.set_n_calibration_sequences(I32(static_cast<int64_t>(params.calibration.size())));
  return out;
}

}  // namespace worker
}  // namespace sinkscope
