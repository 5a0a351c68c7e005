#include "worker/scan_convert.h"

#include "worker/engine/scan.h"

namespace sinkscope {
namespace worker {
namespace {

void FillEntry(const ActivationEntry& e, v1::ActivationEntry* out) {
  out->set_value(e.value);
  out->set_sequence(static_cast<int32_t>(e.sequence));
  out->set_position(static_cast<int32_t>(e.position));
  out->set_channel(static_cast<int32_t>(e.channel));
}

void FillBlockRef(int64_t block, v1::BlockRef* out) {
  BlockId id = BlockId::FromBlock(block);
  out->set_block(static_cast<int32_t>(id.block));
  out->set_layer(static_cast<int32_t>(id.layer));
  out->set_sublayer(id.sublayer());
}

}  // namespace

v1::ScanBlock ToProto(const BlockRecord& record) {
  v1::ScanBlock out;
  out.set_block(static_cast<int32_t>(record.id.block));
  out.set_layer(static_cast<int32_t>(record.id.layer));
  out.set_sublayer(record.id.sublayer());
  out.set_resid_hook(record.id.resid_hook());
  out.set_output_hook(record.id.output_hook());
  for (const auto& e : record.resid_top) FillEntry(e, out.add_resid_top());
  for (const auto& e : record.output_top) FillEntry(e, out.add_output_top());
  for (float m : record.resid_median_abs) out.add_median_abs(m);
  out.set_max_abs(record.resid_max_abs);
  out.set_n_massive(record.n_massive);
  return out;
}

v1::ScanSummary ToProto(const ScanSummary& summary) {
  v1::ScanSummary out;
  for (const auto& [seq, pos] : summary.spike_tokens) {
    v1::SpikeToken* t = out.add_spike_tokens();
    t->set_sequence(static_cast<int32_t>(seq));
    t->set_position(static_cast<int32_t>(pos));
  }
  for (int64_t c : summary.spike_channels) out.add_spike_channels(static_cast<int32_t>(c));
  for (const auto& e : summary.spike_entries) FillEntry(e, out.add_spike_entries());
  for (int64_t b : summary.step_up_blocks) FillBlockRef(b, out.add_step_up_blocks());
  for (int64_t b : summary.step_down_blocks) FillBlockRef(b, out.add_step_down_blocks());
  out.set_peak_abs(summary.peak_abs);
  if (summary.peak_block > 0) FillBlockRef(summary.peak_block, out.mutable_peak_block());
  out.set_spike_mean_over_sequences(summary.spike_mean_over_sequences);
  out.mutable_provenance()->set_n_tokens(summary.n_tokens);
  for (const SpikeAttribution& a : summary.attributions) {
    v1::SpikeAttribution* o = out.add_attributions();
    o->set_sequence(static_cast<int32_t>(a.entry.sequence));
    o->set_position(static_cast<int32_t>(a.entry.position));
    o->set_channel(static_cast<int32_t>(a.entry.channel));
    o->set_peak_value(a.entry.value);
    o->set_peak_block(static_cast<int32_t>(a.peak_block));
    const float peak = a.entry.value;
    o->set_embed(a.embed);
    o->set_embed_share(peak != 0 ? a.embed / peak : 0.f);
    for (float c : a.contributions) {
      o->add_contributions(c);
      o->add_shares(peak != 0 ? c / peak : 0.f);
    }
    o->set_sum_to_peak(a.sum_to_peak);
    for (int64_t b : a.step_up_blocks) o->add_step_up_blocks(static_cast<int32_t>(b));
    for (int64_t b : a.step_down_blocks) o->add_step_down_blocks(static_cast<int32_t>(b));
  }
  return out;
}

ScanParams ScanParamsFromProto(const v1::ActivationScanRequest& request) {
  ScanParams p;
  if (request.has_top_k()) p.top_k = request.top_k();
  if (request.has_abs_threshold()) p.abs_threshold = request.abs_threshold();
  if (request.has_rel_threshold()) p.rel_threshold = request.rel_threshold();
  if (request.has_step_fraction()) p.step_fraction = request.step_fraction();
  if (request.has_step_share()) p.step_share = request.step_share();
  if (request.has_step_rule()) {
    // Validated by the server; an unknown name falls back to the default here.
    absl::StatusOr<ScanParams::StepRule> rule = ParseStepRule(request.step_rule());
    if (rule.ok()) p.step_rule = *rule;
  }
  return p;
}

v1::ScanThresholds ThresholdsToProto(const ScanParams& params) {
  v1::ScanThresholds out;
  out.set_top_k(static_cast<int32_t>(params.top_k));
  out.set_abs_threshold(params.abs_threshold);
  out.set_rel_threshold(params.rel_threshold);
  out.set_step_fraction(params.step_fraction);
  out.set_step_rule(StepRuleName(params.step_rule));
  out.set_step_share(params.step_share);
  return out;
}

}  // namespace worker
}  // namespace sinkscope
