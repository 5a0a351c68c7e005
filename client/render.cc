#include "client/render.h"
#include "client/render_internal.h"
#include "client/render_mechanism.h"
#include "client/render_profile.h"
#include "client/render_train.h"

#include <algorithm>
#include <cmath>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job_types.h"

namespace sinkscope {
namespace client {
namespace {

using internal::Count;
using internal::JoinCapped;

/// Shows `value` with magnitude-dependent precision; with a sign when `sign`.
std::string FormatNumber(double value, bool sign) {
  const double a = std::fabs(value);
  if (value == 0) return sign ? "+0" : "0";
  if (!std::isfinite(value)) return absl::StrFormat(sign ? "%+f" : "%f", value);
  if (a >= 1e6 || a < 1e-4) return absl::StrFormat(sign ? "%+.3e" : "%.3e", value);
  if (a >= 1) return absl::StrFormat(sign ? "%+.2f" : "%.2f", value);
  return absl::StrFormat(sign ? "%+.4f" : "%.4f", value);
}

std::string StripPrefix(const std::string& name, const std::string& prefix) {
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

/// "Label:" padded to 22 columns, and at least one space after a longer one.
std::string Key(const std::string& label) { return absl::StrFormat("%-21s ", label + ":"); }

}  // namespace

std::string BlockLabel(int block, int layer, const std::string& sublayer) {
  std::string sub = sublayer;
  if (sub.empty()) sub = block % 2 == 1 ? "attn" : "mlp";
  return absl::StrCat(block, " (layer ", layer, " ", sub, ")");
}

std::string BlockLabel(const v1::BlockRef& ref) {
  return BlockLabel(ref.block(), ref.layer(), ref.sublayer());
}

std::string BlockLabel(const v1::ScanBlock& block) {
  return BlockLabel(block.block(), block.layer(), block.sublayer());
}

std::string StatusCodeName(int code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",         "UNKNOWN",          "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",    "ALREADY_EXISTS",   "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",   "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",      "DATA_LOSS",
      "UNAUTHENTICATED"};
  if (code >= 0 && code <= 16) return kNames[code];
  return absl::StrCat("CODE_", code);
}

std::string JobStateName(v1::JobState state) {
  return StripPrefix(v1::JobState_Name(state), "JOB_STATE_");
}

std::string JobTypeName(v1::JobType type) {
  if (const JobTypeDescriptor* job = FindJobType(type)) return absl::AsciiStrToUpper(job->metrics_label);
  return StripPrefix(v1::JobType_Name(type), "JOB_TYPE_");
}

std::string DtypeName(v1::Dtype dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32: return "float32";
    case v1::DTYPE_BFLOAT16: return "bfloat16";
    case v1::DTYPE_FLOAT16: return "float16";
    default: return "default";
  }
}

std::string FormatValue(double value) { return FormatNumber(value, /*sign=*/true); }

std::string FormatEntry(const v1::ActivationEntry& e) {
  return absl::StrCat(FormatValue(e.value()), " (", e.sequence(), ",", e.position(), ",",
                      e.channel(), ")");
}

std::string FormatTable(const std::vector<std::vector<std::string>>& rows,
                        const std::vector<int>& right_aligned) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (row.size() > width.size()) width.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  auto is_right = [&](size_t c) {
    return std::find(right_aligned.begin(), right_aligned.end(), static_cast<int>(c)) !=
           right_aligned.end();
  };
  auto line = [&](const std::vector<std::string>& row) {
    std::string out;
    for (size_t c = 0; c < width.size(); ++c) {
      const std::string cell = c < row.size() ? row[c] : "";
      if (c > 0) out += "  ";
      std::string pad(width[c] - cell.size(), ' ');
      out += is_right(c) ? pad + cell : cell + pad;
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out;
  for (size_t r = 0; r < rows.size(); ++r) {
    out += line(rows[r]);
    if (r == 0) {
      std::vector<std::string> rule;
      for (size_t w : width) rule.emplace_back(w, '-');
      out += line(rule);
    }
  }
  return out;
}

namespace {

/// True when `s` is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF).
bool IsUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : -1;
    if (n < 0) return false;
    uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1F) : n == 2 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 0x2) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

/// Replaces the base64 of every set bytes field of `m` (Sequence.text) in
/// its JSON `j` by the text itself when it is UTF-8 (a request's text always
/// is: the server refuses any other).
void BytesAsText(const google::protobuf::Message& m, nlohmann::ordered_json* j) {
  if (!j->is_object()) return;  // well-known types print as strings
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    auto it = j->find(f->name());
    if (it == j->end() || f->is_map()) continue;
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_BYTES) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(m, f) && i < static_cast<int>(it->size()); ++i) {
          const std::string v = r->GetRepeatedString(m, f, i);
          if (IsUtf8(v)) (*it)[i] = v;
        }
      } else if (const std::string v = r->GetString(m, f); IsUtf8(v)) {
        *it = v;
      }
    } else if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(m, f) && i < static_cast<int>(it->size()); ++i) {
          BytesAsText(r->GetRepeatedMessage(m, f, i), &(*it)[i]);
        }
      } else {
        BytesAsText(r->GetMessage(m, f), &*it);
      }
    }
  }
}

/// True when `m` or a message in it has a set bytes field.
bool HasBytes(const google::protobuf::Message& m) {
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_BYTES) return true;
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE || f->is_map()) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (HasBytes(r->GetRepeatedMessage(m, f, i))) return true;
      }
    } else if (HasBytes(r->GetMessage(m, f))) {
      return true;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot print JSON: ", status.ToString()));
  }
  // Text is shown as text, not as protobuf JSON's base64 of a bytes field
  // (sinkscope.Result.from_json reads either).
  if (!HasBytes(message)) return out;
  try {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(out);
    BytesAsText(message, &j);
    return j.dump(pretty ? 2 : -1);
  } catch (const nlohmann::json::exception&) {
    return out;
  }
}

std::string RenderScanTable(const std::vector<v1::ScanBlock>& blocks) {
  int k = 0;
  for (const auto& b : blocks) k = std::max(k, b.resid_top_size());
  std::vector<std::string> header = {"block"};
  for (int i = 1; i <= k; ++i) header.push_back(absl::StrCat("|resid| top-", i));
  header.insert(header.end(), {"median|h|", "max|h|", "massive", "|output| top-1"});
  std::vector<std::vector<std::string>> rows = {header};
  for (const auto& b : blocks) {
    std::vector<std::string> row = {BlockLabel(b)};
    for (int i = 0; i < k; ++i) {
      row.push_back(i < b.resid_top_size() ? FormatEntry(b.resid_top(i)) : "");
    }
    // One median per sequence: show it, or the range over sequences.
    std::string median = "-";
    if (b.median_abs_size() == 1) {
      median = FormatNumber(b.median_abs(0), false);
    } else if (b.median_abs_size() > 1) {
      auto [lo, hi] = std::minmax_element(b.median_abs().begin(), b.median_abs().end());
      median = absl::StrCat(FormatNumber(*lo, false), "..", FormatNumber(*hi, false));
    }
    row.push_back(median);
    row.push_back(FormatNumber(b.max_abs(), false));
    row.push_back(absl::StrCat(b.n_massive()));
    row.push_back(b.output_top_size() > 0 ? FormatEntry(b.output_top(0)) : "-");
    rows.push_back(std::move(row));
  }
  std::vector<int> right;
  for (int c = 1; c < static_cast<int>(header.size()); ++c) right.push_back(c);
  return FormatTable(rows, right);
}

std::string RenderScanSummary(const v1::ScanSummary& s, int max_entries) {
  std::vector<std::string> tokens, channels, entries, up, down;
  for (const auto& t : s.spike_tokens()) {
    tokens.push_back(absl::StrCat("(seq ", t.sequence(), ", pos ", t.position(), ")"));
  }
  for (int c : s.spike_channels()) channels.push_back(absl::StrCat(c));
  for (const auto& e : s.spike_entries()) entries.push_back(FormatEntry(e));
  for (const auto& b : s.step_up_blocks()) up.push_back(absl::StrCat("block ", BlockLabel(b)));
  for (const auto& b : s.step_down_blocks()) down.push_back(absl::StrCat("block ", BlockLabel(b)));

  std::string out;
  absl::StrAppend(&out, Key(absl::StrCat("Spike tokens (", tokens.size(), ")")),
                  JoinCapped(tokens, 20), "\n");
  absl::StrAppend(&out, Key(absl::StrCat("Spike channels (", channels.size(), ")")),
                  JoinCapped(channels, 32), "\n");
  absl::StrAppend(&out, Key(absl::StrCat("Spike entries (", entries.size(), ")")),
                  JoinCapped(entries, static_cast<size_t>(std::max(max_entries, 0))),
                  entries.empty() ? "" : "  [value (seq,pos,ch) at peak block]", "\n");
  absl::StrAppend(&out, Key("Step-up blocks"), JoinCapped(up, 16), "\n");
  absl::StrAppend(&out, Key("Step-down blocks"), JoinCapped(down, 16), "\n");
  absl::StrAppend(&out, Key("Peak |h|"), FormatNumber(s.peak_abs(), false));
  if (s.has_peak_block()) absl::StrAppend(&out, " at block ", BlockLabel(s.peak_block()));
  absl::StrAppend(&out, "\n");
  absl::StrAppend(&out, Key("Spike"), FormatNumber(s.spike_mean_over_sequences(), false),
                  "  [per sequence max |h| over blocks, tokens, channels; mean over sequences]\n");
  if (s.has_thresholds()) {
    const auto& t = s.thresholds();
    // The step rule the scan used (an old server sends none: single block).
    const std::string step =
        t.step_rule() == "share"
            ? absl::StrFormat("step rule share (step share %g)", t.step_share())
            : absl::StrFormat("step rule single-block (step fraction %g)", t.step_fraction());
    absl::StrAppend(&out, Key("Thresholds"),
                    absl::StrFormat("|h| > %g and |h| > %g x median|h|; %s; top-k %d",
                                    t.abs_threshold(), t.rel_threshold(), step, t.top_k()),
                    "\n");
  }
  if (s.has_provenance()) {
    const auto& p = s.provenance();
    absl::StrAppend(&out, Key("Provenance"), "model ", p.model(), " (", p.checkpoint_format(),
                    "), dtype ", p.dtype(), ", device ", p.device(), ", attention ",
                    p.attention_path(), ", code ", p.code_version(), "; ",
                    Count(p.n_tokens(), "token"), " in ", Count(p.n_sequences(), "sequence"),
                    "\n");
  }
  return out;
}

std::string FormatProvenance(const v1::Provenance& p) {
  return absl::StrCat("model ", p.model(), " (", p.checkpoint_format(), "), dtype ", p.dtype(),
                      ", device ", p.device(), ", attention ", p.attention_path(), ", code ",
                      p.code_version(), "; ", Count(p.n_tokens(), "token"), " in ",
                      Count(p.n_sequences(), "sequence"));
}

namespace {

std::string Fixed(double v, int digits = 4) { return absl::StrFormat("%.*f", digits, v); }

std::string HeadLabel(const v1::HeadRef& h) { return absl::StrCat("(", h.layer(), ",", h.head(), ")"); }

std::string Percent(double ratio) { return absl::StrFormat("%.2f%%", 100.0 * ratio); }

std::string JoinInts(const google::protobuf::RepeatedField<int32_t>& v, size_t max = 32) {
  std::vector<std::string> items;
  for (int32_t x : v) items.push_back(absl::StrCat(x));
  return JoinCapped(items, max);
}

void AppendProvenance(std::string* out, bool has, const v1::Provenance& p) {
  if (has) absl::StrAppend(out, Key("Provenance"), FormatProvenance(p), "\n");
}

std::string FormatEval(const v1::EvalUsed& e) {
  return absl::StrCat(e.corpus().empty() ? "request sequences" : absl::StrCat("corpus ", e.corpus()),
                      " (", Count(e.stream_tokens(), "token"), "), chunks of ", e.chunk_length(),
                      ", token budget ", e.token_budget() < 0 ? std::string("all") : absl::StrCat(e.token_budget()));
}

std::string FormatThresholds(const v1::SpikeThresholds& t) {
  return absl::StrFormat("|h| > %g and |h| > %g x median|h|; step fraction %g", t.abs_threshold(),
                         t.rel_threshold(), t.step_fraction());
}

/// Relative change b -> a, signed percent.
std::string RelChange(double before, double after) {
  if (before == 0) return "-";
  return absl::StrFormat("%+.4g%%", 100.0 * (after - before) / before);
}

}  // namespace

std::string RenderSinkTable(const std::vector<v1::SinkLayer>& layers) {
  std::vector<std::vector<std::string>> rows = {{"layer", "head", "sink", "max alpha", "key",
                                                 "sink frac", "gu alpha_0", "distance",
                                                 "dist w/o sink", "logit gap"}};
  for (const auto& layer : layers) {
    for (const auto& h : layer.heads()) {
      rows.push_back({absl::StrCat(h.layer()), absl::StrCat(h.head()), h.is_sink_head() ? "*" : "",
                      Fixed(h.max_importance()), absl::StrCat(h.argmax_key()),
                      Fixed(h.sink_fraction(), 2), Fixed(h.gu_first_key_score()),
                      Fixed(h.mean_attention_distance(), 2),
                      Fixed(h.mean_attention_distance_without_sink(), 2),
                      Fixed(h.mean_logit_gap(), 2)});
    }
  }
  std::string out = FormatTable(rows, {0, 1, 3, 4, 5, 6, 7, 8, 9});
  std::vector<std::string> ratios;
  for (const auto& layer : layers) {
    ratios.push_back(absl::StrCat("layer ", layer.layer(), " ", Percent(layer.sink_ratio()), " (",
                                  layer.n_sink_heads(), "/", layer.heads_size(), ")"));
  }
  absl::StrAppend(&out, "Sink ratio per layer: ", JoinCapped(ratios, 64, "; "), "\n");
  return out;
}

std::string RenderSinkSummary(const v1::SinkSummary& s) {
  std::string out;
  absl::StrAppend(&out, Key("Sink ratio (eq. 28)"), Percent(s.sink_ratio()), "  (",
                  s.n_sink_heads(), " of ", s.n_heads(), " heads are sink heads)\n");
  absl::StrAppend(&out, Key("Gu et al. ratio"), Percent(s.gu_sink_ratio()),
                  "  [key 0 only, sum_t A[t,0] / (T - 0)]\n");
  std::vector<std::string> heads;
  for (const auto& h : s.sink_heads()) heads.push_back(HeadLabel(h));
  absl::StrAppend(&out, Key("Sink heads (layer,head)"), JoinCapped(heads, 32), "\n");
  absl::StrAppend(&out, Key("Windows"), s.n_windows(), "\n\n");
  std::vector<std::vector<std::string>> rows = {
      {"", "mean attention distance", "distance without sink", "logit gap"},
      {"sink heads", Fixed(s.sink_heads_distance(), 2), Fixed(s.sink_heads_distance_without_sink(), 2),
       Fixed(s.sink_heads_logit_gap(), 2)},
      {"other heads", Fixed(s.other_heads_distance(), 2),
       Fixed(s.other_heads_distance_without_sink(), 2), Fixed(s.other_heads_logit_gap(), 2)}};
  absl::StrAppend(&out, FormatTable(rows, {1, 2, 3}), "\n");
  if (s.has_params()) {
    const auto& p = s.params();
    absl::StrAppend(&out, Key("Parameters"),
                    absl::StrFormat("T = %d%s, epsilon %g, layers %s", p.window(),
                                    p.windowed() ? " (windowed)" : "", p.epsilon(),
                                    JoinInts(p.layers(), 64)),
                    "\n");
  }
  AppendProvenance(&out, s.has_provenance(), s.provenance());
  return out;
}

std::string RenderFirstTokenProbe(const v1::FirstTokenProbeResult& r) {
  std::string out;
  absl::StrAppend(&out, Key("Tokens probed"), r.n_tokens(), "\n");
  absl::StrAppend(&out, Key("Spike at position 0"), r.n_spike_at_first(), " (",
                  Percent(r.ratio_at_first()), ")\n");
  absl::StrAppend(&out, Key("Spike in control"), r.n_spike_in_control(), " (",
                  Percent(r.ratio_in_control()), ")  [after the prefix]\n");
  absl::StrAppend(&out, Key("Not spiking at 0"), JoinInts(r.not_spiking_at_first()),
                  r.n_tokens() - r.n_spike_at_first() > r.not_spiking_at_first_size()
                      ? absl::StrCat("  (", r.n_tokens() - r.n_spike_at_first(), " in all)")
                      : "",
                  "\n");
  absl::StrAppend(&out, Key("Spiking in control"), JoinInts(r.spiking_in_control()),
                  r.n_spike_in_control() > r.spiking_in_control_size()
                      ? absl::StrCat("  (", r.n_spike_in_control(), " in all)")
                      : "",
                  "\n");
  std::vector<std::string> bins;
  for (int b = 1; b < r.first_spike_block_histogram_size(); ++b) {
    if (r.first_spike_block_histogram(b) > 0) {
      bins.push_back(absl::StrCat("block ", BlockLabel(b, (b - 1) / 2, ""), ": ",
                                  r.first_spike_block_histogram(b)));
    }
  }
  absl::StrAppend(&out, Key("First spike at"), JoinCapped(bins, 64, "; "), "\n");
  absl::StrAppend(&out, Key("Timing"),
                  absl::StrFormat("%.3f s total, %.3f s in forward passes", r.total_seconds(),
                                  r.forward_seconds()),
                  "\n");
  if (r.has_params()) {
    const auto& p = r.params();
    absl::StrAppend(
        &out, Key("Parameters"),
        p.token_ids().empty() ? absl::StrCat("range [", p.range_begin(), ", ", p.range_end(), ")")
                              : absl::StrCat("tokens ", JoinInts(p.token_ids(), 16)),
        ", prefix [", JoinInts(p.prefix(), 16), "], ",
        absl::StrFormat("|h| > %g and > %g x median|h|, batch %d", p.abs_threshold(),
                        p.rel_threshold(), p.batch_size()),
        "\n");
  }
  AppendProvenance(&out, r.has_provenance(), r.provenance());
  return out;
}

std::string RenderSpikeSimilarity(const v1::SpikeSimilaritySummary& s) {
  std::string out;
  std::vector<std::string> tokens;
  for (int i = 0; i < s.spike_tokens_size(); ++i) {
    const auto& t = s.spike_tokens(i);
    tokens.push_back(absl::StrCat("(seq ", t.sequence(), ", pos ", t.position(),
                                  i < s.token_ids_size() ? absl::StrCat(", id ", s.token_ids(i)) : "",
                                  ")"));
  }
  absl::StrAppend(&out, Key(absl::StrCat("Spike tokens (", tokens.size(), ")")),
                  JoinCapped(tokens, 16), "\n");
  if (s.has_step_up_block()) {
    absl::StrAppend(&out, Key("Step-up block"), "block ", BlockLabel(s.step_up_block()), "\n");
  }
  absl::StrAppend(&out, "\nPairwise cosine of the spike tokens' hidden states (eq. 25):\n");
  std::vector<std::vector<std::string>> rows = {{"where", "hook", "mean off-diag", "min off-diag"}};
  auto add = [&](const std::string& where, bool has, const v1::CosineMatrix& m) {
    if (!has) return;
    rows.push_back({where, m.hook(), Fixed(m.mean_off_diagonal(), 6), Fixed(m.min_off_diagonal(), 6)});
  };
  add("before step-up", s.has_before(), s.before());
  add("after step-up", s.has_after(), s.after());
  add("after next norm", s.has_normalized(), s.normalized());
  absl::StrAppend(&out, FormatTable(rows, {2, 3}));
  if (s.has_after() && s.after().n() > 1 && s.after().n() <= 8) {
    absl::StrAppend(&out, "\nCosine after the step-up block:\n");
    const int n = s.after().n();
    for (int i = 0; i < n; ++i) {
      std::vector<std::string> row;
      for (int j = 0; j < n && i * n + j < s.after().values_size(); ++j) {
        row.push_back(Fixed(s.after().values(i * n + j), 4));
      }
      absl::StrAppend(&out, "  ", absl::StrJoin(row, "  "), "\n");
    }
  }
  if (s.has_thresholds()) absl::StrAppend(&out, "\n", Key("Thresholds"), FormatThresholds(s.thresholds()), "\n");
  AppendProvenance(&out, s.has_provenance(), s.provenance());
  return out;
}

std::string RenderSelfAttentionTable(const std::vector<v1::SelfAttentionLayer>& layers) {
  std::vector<std::vector<std::string>> rows = {
      {"layer", "first A[t,t]", "delimiter A[t,t]", "other A[t,t]", "tokens (first/delim/other)"}};
  for (const auto& l : layers) {
    std::vector<std::string> row = {absl::StrCat(l.layer())};
    std::vector<std::string> counts;
    for (int g = 0; g < 3; ++g) {
      if (g < l.groups_size()) {
        row.push_back(l.groups(g).count() > 0 ? Fixed(l.groups(g).mean()) : "-");
        counts.push_back(absl::StrCat(l.groups(g).count()));
      } else {
        row.push_back("-");
      }
    }
    row.push_back(absl::StrJoin(counts, "/"));
    rows.push_back(std::move(row));
  }
  return FormatTable(rows, {0, 1, 2, 3});
}

std::string RenderSelfAttentionSummary(const v1::SelfAttentionSummary& s) {
  std::string out;
  absl::StrAppend(&out, Key("Layers profiled"), JoinInts(s.layers(), 64), "\n");
  absl::StrAppend(&out, Key("Delimiter ids"), JoinInts(s.delimiter_ids(), 32), "\n");
  for (const auto& d : s.resolved_delimiters()) {
    absl::StrAppend(&out, Key(absl::StrCat("  \"", absl::CHexEscape(d.text()), "\"")),
                    JoinInts(d.ids(), 16), "\n");
  }
  AppendProvenance(&out, s.has_provenance(), s.provenance());
  return out;
}

std::string RenderPerplexityChunks(const std::vector<v1::PerplexityChunk>& chunks) {
  std::string out;
  for (const auto& c : chunks) {
    absl::StrAppend(&out, absl::StrFormat("chunk %4d  tokens %d..%d  scored %d  loss %.6f  ppl %.4f\n",
                                          c.index(), c.first_token(), c.first_token() + c.n_scored(),
                                          c.n_scored(), c.mean_loss(), c.perplexity()));
  }
  return out;
}

std::string RenderPerplexitySummary(const v1::PerplexitySummary& s) {
  std::string out;
  absl::StrAppend(&out, Key("Perplexity"), absl::StrFormat("%.6f", s.perplexity()),
                  absl::StrFormat("  (mean loss %.6f nats over %d scored tokens, %d chunks)",
                                  s.mean_loss(), s.n_scored(), s.n_chunks()),
                  "\n");
  if (s.has_eval()) absl::StrAppend(&out, Key("Evaluation"), FormatEval(s.eval()), "\n");
  AppendProvenance(&out, s.has_provenance(), s.provenance());
  return out;
}

std::string RenderInterventionChunks(const std::vector<v1::InterventionChunk>& chunks) {
  std::vector<std::vector<std::string>> rows = {
      {"chunk", "first token", "scored", "baseline ppl", "intervened ppl", "change", "KL mean"}};
  for (const auto& c : chunks) {
    rows.push_back({absl::StrCat(c.index()), absl::StrCat(c.first_token()), absl::StrCat(c.n_scored()),
                    Fixed(c.baseline_perplexity()), Fixed(c.intervened_perplexity()),
                    RelChange(c.baseline_perplexity(), c.intervened_perplexity()),
                    absl::StrFormat("%.4g", c.kl_mean())});
  }
  return FormatTable(rows, {0, 1, 2, 3, 4, 5, 6});
}

std::string RenderInterventionSummary(const v1::InterventionSummary& s) {
  std::string out;
  absl::StrAppend(&out, Key("Perplexity"),
                  absl::StrFormat("baseline %.6f -> intervened %.6f (%s) over %d scored tokens",
                                  s.baseline_perplexity(), s.intervened_perplexity(),
                                  RelChange(s.baseline_perplexity(), s.intervened_perplexity()),
                                  s.n_scored()),
                  "\n");
  if (s.has_kl()) {
    const auto& k = s.kl();
    absl::StrAppend(&out, Key("KL(base || interv.)"),
                    // Class "spike" holds the positions the interventions
                    // wrote or ablated, whether or not a spike was found.
                    absl::StrFormat("all %.4g; intervened positions %.4g (%d); next position %.4g "
                                    "(%d); rest %.4g (%d) nats",
                                    k.all(), k.spike(), k.n_spike(), k.after_spike(),
                                    k.n_after_spike(), k.rest(), k.n_rest()),
                    "\n");
  }
  for (int i = 0; i < s.interventions_size(); ++i) {
    const auto& iv = s.interventions(i);
    std::string text;
    if (iv.has_substitution()) {
      const auto& sub = iv.substitution();
      text = absl::StrCat("substitute ", sub.mode(), " at block ",
                          sub.has_block() ? BlockLabel(sub.block()) : "?",
                          sub.channels_only() ? absl::StrCat(", channels ", JoinInts(sub.channels(), 16))
                                              : ", whole state",
                          ", positions ",
                          sub.positions().empty() ? std::string("spike tokens") : JoinInts(sub.positions(), 16),
                          ", |values| ", sub.values_size());
      if (sub.values_size() > 0) {
        double norm = 0;
        for (float v : sub.values()) norm += static_cast<double>(v) * v;
        absl::StrAppend(&text, absl::StrFormat(" (norm %.4g)", std::sqrt(norm)));
      }
    } else if (iv.has_ablation()) {
      const auto& a = iv.ablation();
      std::vector<std::string> heads;
      for (const auto& h : a.heads()) heads.push_back(HeadLabel(h));
      text = absl::StrCat("ablate (", a.method(), ") heads ", JoinCapped(heads, 24),
                          ", sink positions ", JoinInts(a.sink_positions(), 16));
    }
    absl::StrAppend(&out, Key(absl::StrCat("Intervention ", i)), text, "\n");
  }
  if (s.head_effects_size() > 0) {
    std::vector<std::vector<std::string>> rows = {
        {"head", "|z| base", "|z| interv.", "distance base", "distance interv."}};
    for (const auto& e : s.head_effects()) {
      rows.push_back({absl::StrCat("(", e.layer(), ",", e.head(), ")"), Fixed(e.z_norm_baseline()),
                      Fixed(e.z_norm_intervened()), Fixed(e.distance_baseline(), 2),
                      Fixed(e.distance_intervened(), 2)});
    }
    absl::StrAppend(&out, "\nPer ablated head:\n", FormatTable(rows, {1, 2, 3, 4}));
  }
  if (s.residual_shifts_size() > 0) {
    std::vector<std::vector<std::string>> rows = {{"block", "rel. shift spike", "rel. shift rest"}};
    for (const auto& r : s.residual_shifts()) {
      rows.push_back({BlockLabel(r.block()), absl::StrFormat("%.4g", r.relative_change_spike()),
                      absl::StrFormat("%.4g", r.relative_change_rest())});
    }
    absl::StrAppend(&out, "\nResidual shift ||h_int - h_base|| / ||h_base||:\n",
                    FormatTable(rows, {1, 2}));
  }
  out += "\n";
  if (s.has_eval()) absl::StrAppend(&out, Key("Evaluation"), FormatEval(s.eval()), "\n");
  if (s.has_thresholds()) absl::StrAppend(&out, Key("Thresholds"), FormatThresholds(s.thresholds()), "\n");
  absl::StrAppend(&out, Key("Calibration"),
                  s.n_calibration_sequences() > 0 ? Count(s.n_calibration_sequences(), "sequence")
                                                  : std::string("the evaluation chunks"),
                  "\n");
  AppendProvenance(&out, s.has_provenance(), s.provenance());
  return out;
}

std::string ProgressUnit(v1::JobType type) {
  const JobTypeDescriptor* job = FindJobType(type);
  return job != nullptr ? job->progress_unit : "units";
}

std::string RenderResults(const std::vector<v1::ResultRecord>& records) {
  std::vector<v1::ScanBlock> blocks;
  std::vector<v1::SinkLayer> sink_layers;
  std::vector<v1::SelfAttentionLayer> sa_layers;
  std::vector<v1::PerplexityChunk> ppl_chunks;
  std::vector<v1::InterventionChunk> iv_chunks;
  std::vector<std::string> summaries;
  std::vector<v1::ResultRecord> mechanism, profile, train;
  int other = 0;
  for (const auto& r : records) {
    switch (r.record_case()) {
      case v1::ResultRecord::kScanBlock: blocks.push_back(r.scan_block()); break;
      case v1::ResultRecord::kScanSummary:
        summaries.push_back(RenderScanSummary(r.scan_summary()));
        summaries.push_back(RenderAttributionTable(r.scan_summary()));
        break;
      case v1::ResultRecord::kSinkLayer: sink_layers.push_back(r.sink_layer()); break;
      case v1::ResultRecord::kSinkSummary: summaries.push_back(RenderSinkSummary(r.sink_summary())); break;
      case v1::ResultRecord::kFirstTokenProbe:
        summaries.push_back(RenderFirstTokenProbe(r.first_token_probe()));
        break;
      case v1::ResultRecord::kSpikeSimilarity:
        summaries.push_back(RenderSpikeSimilarity(r.spike_similarity()));
        break;
      case v1::ResultRecord::kSelfAttentionLayer: sa_layers.push_back(r.self_attention_layer()); break;
      case v1::ResultRecord::kSelfAttentionSummary:
        summaries.push_back(RenderSelfAttentionSummary(r.self_attention_summary()));
        break;
      case v1::ResultRecord::kPerplexityChunk: ppl_chunks.push_back(r.perplexity_chunk()); break;
      case v1::ResultRecord::kPerplexitySummary:
        summaries.push_back(RenderPerplexitySummary(r.perplexity_summary()));
        break;
      case v1::ResultRecord::kInterventionChunk: iv_chunks.push_back(r.intervention_chunk()); break;
      case v1::ResultRecord::kInterventionSummary:
        summaries.push_back(RenderInterventionSummary(r.intervention_summary()));
        break;
      default:
        if (IsMechanismRecord(r)) {
          mechanism.push_back(r);
        } else if (IsProfileRecord(r)) {
          profile.push_back(r);
        } else if (IsTrainRecord(r)) {
          train.push_back(r);
        } else {
          ++other;
        }
        break;
    }
  }
  std::string out;
  auto section = [&out](const std::string& text) {
    if (text.empty()) return;
    if (!out.empty()) out += "\n";
    out += text;
  };
  if (!blocks.empty()) {
    section(absl::StrCat("Activation scan per block (post-residual = hook_resid_mid after attn, "
                         "hook_resid_post after mlp;\nentries: signed value (seq,pos,ch))\n\n",
                         RenderScanTable(blocks)));
  }
  if (!sink_layers.empty()) {
    section(absl::StrCat("Attention sinks per layer and head (eq. 27: max_k alpha_k over keys "
                         "k < T/2; * = sink head)\n\n",
                         RenderSinkTable(sink_layers)));
  }
  if (!sa_layers.empty()) {
    section(absl::StrCat("Self-attention A[t,t] by token group, mean over heads (section 3.1.3)\n\n",
                         RenderSelfAttentionTable(sa_layers)));
  }
  if (!ppl_chunks.empty()) section(RenderPerplexityChunks(ppl_chunks));
  if (!iv_chunks.empty()) section(RenderInterventionChunks(iv_chunks));
  for (const std::string& s : summaries) section(s);
  section(RenderMechanismResults(mechanism));
  section(RenderProfileResults(profile));
  if (!train.empty()) section(RenderTrainResults(train));
  if (other > 0) {
    section(absl::StrCat(Count(other, "record"), " of a kind this client cannot show (use --json)\n"));
  }
  return out;
}

}  // namespace client
}  // namespace sinkscope
