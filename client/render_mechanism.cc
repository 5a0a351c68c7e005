#include "client/render_mechanism.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/render.h"

namespace sinkscope {
namespace client {
namespace {

std::string Label(int block) {
  return BlockLabel(block, (block - 1) / 2, block % 2 == 0 ? "mlp" : "attn");
}

std::string Num(double v, int digits = 4) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return absl::StrFormat("%.*g", digits, v);
}

std::string Blocks(const google::protobuf::RepeatedField<int32_t>& v) {
  if (v.empty()) return "none";
  return absl::StrJoin(v, ", ");
}

std::string Prov(const v1::Provenance& p) { return absl::StrCat("Provenance:           ", FormatProvenance(p), "\n"); }

std::string FfnBlock(const v1::FfnQuadraticBlock& b) {
  std::string out = absl::StrCat("Block ", BlockLabel(b.block(), b.layer(), b.sublayer()),
                                 ": median ||U_k||_F ", Num(b.median_frobenius_norm()),
                                 ", outlier channels (> factor x median): ",
                                 Blocks(b.outlier_channels()), "\n");
  std::vector<std::vector<std::string>> rows = {
      {"channel", "kind", "||U_k||_F", "lambda_1", "lambda_2", "l1/|l2|", "top rows i: W_down[k,i] cos(gate,up)"}};
  for (const auto& c : b.channels()) {
    std::vector<std::string> r;
    for (int i = 0; i < std::min(3, c.top_rows_size()); ++i) {
      r.push_back(absl::StrCat(c.top_rows(i).row(), ": ", Num(c.top_rows(i).w_down()), " ",
                               Num(c.top_rows(i).gate_up_cosine(), 3)));
    }
    rows.push_back({absl::StrCat(c.channel()), c.is_top() ? "top" : "sample",
                    Num(c.frobenius_norm()), c.eigenvalues_size() > 0 ? Num(c.eigenvalues(0)) : "-",
                    c.eigenvalues_size() > 1 ? Num(c.eigenvalues(1)) : "-", Num(c.eigen_ratio()),
                    absl::StrJoin(r, "; ")});
  }
  // Only top channels carry rows: without one the column would stay empty.
  bool any_rows = false;
  for (const auto& c : b.channels()) any_rows = any_rows || c.top_rows_size() > 0;
  if (!any_rows) {
    for (auto& row : rows) row.pop_back();
  }
  absl::StrAppend(&out, FormatTable(rows, {2, 3, 4, 5}));
  if (b.top_eigenvector_cosine_size() > 1) {
    absl::StrAppend(&out, "mean |cos(s*_a, s*_b)| over top channels: ",
                    Num(b.mean_top_eigenvector_cosine()), "\n");
  }
  return out;
}

std::string SiluBlock(const v1::SiluRegimeBlock& b) {
  std::vector<std::vector<std::string>> rows = {
      {"tokens", "n", "mean cos(x,SiLU x)", "min cos", "mean ||SiLU x||/||x||"}};
  for (const auto* s : {&b.spike_tokens(), &b.other_tokens()}) {
    rows.push_back({s == &b.spike_tokens() ? "spike" : "other", absl::StrCat(s->n_tokens()),
                    Num(s->mean_cosine(), 5), Num(s->min_cosine(), 5), Num(s->mean_norm_ratio(), 5)});
  }
  std::string out = absl::StrCat("Block ", BlockLabel(b.block(), b.layer(), b.sublayer()), "\n",
                                 FormatTable(rows, {1, 2, 3, 4}));
  if (b.channel() >= 0) {
    absl::StrAppend(&out, "quadratic approximation, channel ", b.channel(), ", lambda* ",
                    Num(b.lambda_star()), ": relative error at spike tokens mean ",
                    Num(b.mean_quadratic_relative_error()), ", max ",
                    Num(b.max_quadratic_relative_error()), "\n");
  }
  return out;
}

}  // namespace

std::string RenderAttributionTable(const v1::ScanSummary& s, int max_entries, double min_share) {
  if (s.attributions().empty()) return "";
  std::vector<std::vector<std::string>> rows = {
      {"entry (seq,pos,ch)", "peak", "at block", "embed share", "contributions (block: value share)",
       "step-up", "step-down"}};
  for (int i = 0; i < std::min(max_entries, s.attributions_size()); ++i) {
    const v1::SpikeAttribution& a = s.attributions(i);
    std::vector<std::string> parts;
    for (int j = 0; j < a.contributions_size(); ++j) {
      if (std::fabs(a.shares(j)) < min_share) continue;
      parts.push_back(absl::StrCat(j + 1, ": ", FormatValue(a.contributions(j)), " ",
                                   absl::StrFormat("%+.0f%%", 100.0 * a.shares(j))));
    }
    rows.push_back({absl::StrCat("(", a.sequence(), ",", a.position(), ",", a.channel(), ")"),
                    FormatValue(a.peak_value()), Label(a.peak_block()),
                    absl::StrFormat("%+.1f%%", 100.0 * a.embed_share()), absl::StrJoin(parts, ", "),
                    Blocks(a.step_up_blocks()), Blocks(a.step_down_blocks())});
  }
  return absl::StrCat("Block attribution (resid_peak = embed + sum of block outputs up to the peak; "
                      "blocks with |share| >= ",
                      absl::StrFormat("%.0f%%", 100 * min_share), ")\n", FormatTable(rows, {1}));
}

bool IsMechanismRecord(const v1::ResultRecord& r) {
  switch (r.record_case()) {
    case v1::ResultRecord::kFfnQuadraticBlock:
    case v1::ResultRecord::kFfnQuadraticSummary:
    case v1::ResultRecord::kSiluRegimeBlock:
    case v1::ResultRecord::kSiluRegimeSummary:
    case v1::ResultRecord::kVoCircuitLayer:
    case v1::ResultRecord::kVoCircuitSummary:
    case v1::ResultRecord::kActivationTensor:
    case v1::ResultRecord::kActivationsSummary:
      return true;
    default:
      return false;
  }
}

std::string RenderMechanismResults(const std::vector<v1::ResultRecord>& records) {
  std::string out;
  // One number per cell: a column per requested token (|cos(W_VO h~, s*)|),
  // then the vocabulary sample's distribution; headed at the summary,
  // which names the tokens.
  std::vector<std::vector<std::string>> vo_rows;
  size_t vo_tokens = 0;
  std::vector<std::vector<std::string>> act_rows = {{"hook", "seq", "dims", "shape", "values", "max |v|"}};
  for (const v1::ResultRecord& r : records) {
    switch (r.record_case()) {
      case v1::ResultRecord::kFfnQuadraticBlock:
        absl::StrAppend(&out, FfnBlock(r.ffn_quadratic_block()), "\n");
        break;
      case v1::ResultRecord::kFfnQuadraticSummary: {
        const auto& s = r.ffn_quadratic_summary();
        absl::StrAppend(&out, "FFN quadratic amplifier (paper eq. 16-19; norm gain folded, ",
                        s.compute_dtype(), "): ", s.blocks_size(), " blocks, ",
                        Num(s.seconds_per_block(), 3), " s per block, outlier factor ",
                        Num(s.outlier_factor()), "\n", Prov(s.provenance()));
        break;
      }
      case v1::ResultRecord::kSiluRegimeBlock:
        absl::StrAppend(&out, SiluBlock(r.silu_regime_block()), "\n");
        break;
      case v1::ResultRecord::kSiluRegimeSummary:
        absl::StrAppend(&out, "SiLU regime (paper Fig. 2): x = mlp.hook_pre; blocks ",
                        Blocks(r.silu_regime_summary().blocks()), "; ",
                        r.silu_regime_summary().spike_tokens_size(), " spike tokens\n",
                        Prov(r.silu_regime_summary().provenance()));
        break;
      case v1::ResultRecord::kVoCircuitLayer: {
        const auto& l = r.vo_circuit_layer();
        std::vector<std::string> row = {absl::StrCat(l.layer())};
        for (double a : l.token_alignment()) row.push_back(Num(a, 3));
        vo_tokens = std::max(vo_tokens, static_cast<size_t>(l.token_alignment_size()));
        for (size_t i = l.token_alignment_size(); i < vo_tokens; ++i) row.push_back("-");
        row.push_back(Num(l.sample_mean(), 3));
        row.push_back(Num(l.sample_min(), 3));
        for (int i = 0; i < 3; ++i) {
          row.push_back(i < l.sample_quantiles_size() ? Num(l.sample_quantiles(i), 3) : "-");
        }
        row.push_back(Num(l.sample_max(), 3));
        vo_rows.push_back(std::move(row));
        break;
      }
      case v1::ResultRecord::kVoCircuitSummary: {
        const auto& s = r.vo_circuit_summary();
        std::vector<std::string> header = {"layer"};
        for (size_t i = 0; i < vo_tokens; ++i) {
          header.push_back(i < static_cast<size_t>(s.token_ids_size())
                               ? absl::StrCat("token ", s.token_ids(static_cast<int>(i)))
                               : absl::StrCat("token #", i));
        }
        for (const char* h : {"sample mean", "min", "p10", "p50", "p90", "max"}) header.push_back(h);
        vo_rows.insert(vo_rows.begin(), std::move(header));
        std::vector<int> right;
        for (int c = 0; c < static_cast<int>(vo_rows.front().size()); ++c) right.push_back(c);
        absl::StrAppend(&out, "VO circuit (paper eq. 22): |cos(W_VO h~, s*)| at position 0, s* of block ",
                        Label(s.step_up_block()), ", vocabulary sample ", s.vocab_sample(), "\n",
                        FormatTable(vo_rows, right), Prov(s.provenance()));
        vo_rows.clear();
        break;
      }
      case v1::ResultRecord::kActivationTensor: {
        const auto& t = r.activation_tensor();
        float mx = 0;
        for (float v : t.values()) mx = std::max(mx, std::fabs(v));
        act_rows.push_back({t.hook(), absl::StrCat(t.sequence()), absl::StrJoin(t.dims(), ","),
                            absl::StrJoin(t.shape(), "x"),
                            absl::StrCat(t.offset(), "..", t.offset() + t.values_size(), " of ", t.numel()),
                            Num(mx)});
        break;
      }
      case v1::ResultRecord::kActivationsSummary:
        absl::StrAppend(&out, "Activations (float32; use --json for the values)\n",
                        FormatTable(act_rows), "Total: ", r.activations_summary().n_tensors(),
                        " tensors, ", r.activations_summary().bytes(), " bytes\n",
                        Prov(r.activations_summary().provenance()));
        break;
      default:
        break;
    }
  }
  return out;
}

}  // namespace client
}  // namespace sinkscope
