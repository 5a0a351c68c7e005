#include "client/render.h"

#include <algorithm>
#include <cmath>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace sinkscope {
namespace client {
namespace {

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

/// `what` with its count, plural-aware: "1 sequence", "3 sequences".
std::string Count(int64_t n, const std::string& what) {
  return absl::StrCat(n, " ", what, n == 1 ? "" : "s");
}

/// Joins at most `max` items and says how many more there were.
std::string JoinCapped(const std::vector<std::string>& items, size_t max,
                       const std::string& sep = ", ") {
  if (items.empty()) return "none";
  if (items.size() <= max) return absl::StrJoin(items, sep);
  std::vector<std::string> head(items.begin(), items.begin() + max);
  return absl::StrCat(absl::StrJoin(head, sep), sep, "... (", items.size() - max, " more)");
}

/// "label:" padded to the summary's key column.
std::string Key(const std::string& label) { return absl::StrFormat("%-22s", label + ":"); }

std::string DescribeSequence(const v1::Sequence& seq) {
  switch (seq.input_case()) {
    case v1::Sequence::kIds: {
      std::vector<std::string> ids;
      for (int id : seq.ids().ids()) ids.push_back(absl::StrCat(id));
      return absl::StrCat("ids [", JoinCapped(ids, 16, " "), "]");
    }
    case v1::Sequence::kText: {
      std::string text = seq.text();
      bool cut = text.size() > 60;
      if (cut) text.resize(60);
      return absl::StrCat("text \"", absl::CHexEscape(text), cut ? "...\"" : "\"");
    }
    default:
      return "(empty)";
  }
}

std::string DescribeParams(const v1::JobRequest& request) {
  if (!request.has_scan()) return "-";
  const v1::ActivationScanRequest& s = request.scan();
  std::vector<std::string> parts;
  if (s.has_top_k()) parts.push_back(absl::StrCat("top_k ", s.top_k()));
  if (s.has_abs_threshold()) parts.push_back(absl::StrFormat("abs_threshold %g", s.abs_threshold()));
  if (s.has_rel_threshold()) parts.push_back(absl::StrFormat("rel_threshold %g", s.rel_threshold()));
  if (s.has_step_fraction()) parts.push_back(absl::StrFormat("step_fraction %g", s.step_fraction()));
  return parts.empty() ? "defaults" : absl::StrJoin(parts, ", ");
}

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
  return out;
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
    absl::StrAppend(&out, Key("Thresholds"),
                    absl::StrFormat("|h| > %g and |h| > %g x median|h|; step fraction %g; top-k %d",
                                    t.abs_threshold(), t.rel_threshold(), t.step_fraction(),
                                    t.top_k()),
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

std::string RenderResults(const std::vector<v1::ResultRecord>& records) {
  std::vector<v1::ScanBlock> blocks;
  const v1::ScanSummary* summary = nullptr;
  int other = 0;
  for (const auto& r : records) {
    if (r.has_scan_block()) {
      blocks.push_back(r.scan_block());
    } else if (r.has_scan_summary()) {
      summary = &r.scan_summary();
    } else {
      ++other;
    }
  }
  std::string out;
  if (!blocks.empty()) {
    absl::StrAppend(&out,
                    "Activation scan per block (post-residual = hook_resid_mid after attn, "
                    "hook_resid_post after mlp;\nentries: signed value (seq,pos,ch))\n\n",
                    RenderScanTable(blocks));
  }
  if (summary != nullptr) {
    if (!out.empty()) out += "\n";
    absl::StrAppend(&out, RenderScanSummary(*summary));
  }
  if (other > 0) {
    absl::StrAppend(&out, Count(other, "record"),
                    " of a kind this client cannot show (use --json)\n");
  }
  return out;
}

std::string FormatTimestamp(const google::protobuf::Timestamp& ts, absl::TimeZone tz) {
  if (ts.seconds() == 0 && ts.nanos() == 0) return "-";
  absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", t, tz);
}

std::string RenderJob(const v1::Job& job, absl::TimeZone tz) {
  std::string out;
  auto row = [&out](const std::string& key, const std::string& value) {
    absl::StrAppend(&out, absl::StrFormat("%-12s", key), value, "\n");
  };
  row("job", job.id());
  row("type", JobTypeName(job.type()));
  row("model", job.request().model());
  row("owner", job.owner());
  std::string state = JobStateName(job.state());
  if (job.state() == v1::JOB_STATE_QUEUED && job.queue_position() > 0) {
    absl::StrAppend(&state, " (position ", job.queue_position(), ")");
  }
  row("state", state);
  if (job.has_error() && (job.error().code() != 0 || !job.error().message().empty())) {
    row("error", absl::StrCat(StatusCodeName(job.error().code()), ": ", job.error().message()));
  }
  row("attempts", absl::StrCat(job.attempts()));
  row("created", FormatTimestamp(job.create_time(), tz));
  row("started", FormatTimestamp(job.start_time(), tz));
  row("ended", FormatTimestamp(job.end_time(), tz));
  const v1::JobRequest& r = job.request();
  row("dtype", DtypeName(r.dtype()));
  row("add_bos", r.has_add_bos() ? (r.add_bos() ? "true" : "false") : "default (true)");
  row("params", DescribeParams(r));
  for (int i = 0; i < r.sequences_size(); ++i) {
    row(i == 0 ? absl::StrCat("inputs (", r.sequences_size(), ")") : "",
        absl::StrCat("[", i, "] ", DescribeSequence(r.sequences(i))));
  }
  if (!job.client_request_id().empty()) row("request id", job.client_request_id());
  row("last event", absl::StrCat(job.last_event_seq()));
  return out;
}

std::string RenderJobsTable(const v1::ListJobsResponse& response, absl::TimeZone tz) {
  if (response.jobs_size() == 0) return "no jobs\n";
  std::vector<std::vector<std::string>> rows = {
      {"id", "type", "model", "state", "created", "owner"}};
  for (const auto& job : response.jobs()) {
    std::string state = JobStateName(job.state());
    if (job.state() == v1::JOB_STATE_QUEUED && job.queue_position() > 0) {
      absl::StrAppend(&state, " (", job.queue_position(), ")");
    }
    rows.push_back({job.id(), JobTypeName(job.type()), job.request().model(), state,
                    FormatTimestamp(job.create_time(), tz), job.owner()});
  }
  std::string out = FormatTable(rows);
  if (!response.next_page_token().empty()) {
    absl::StrAppend(&out, "more: --page-token ", response.next_page_token(), "\n");
  }
  return out;
}

std::string RenderModels(const v1::ListModelsResponse& response) {
  std::vector<std::vector<std::string>> rows = {
      {"name", "format", "dtype", "tokenizer", "vocab", "n_ctx", "layers", "blocks", "d_model",
       "description"}};
  for (const auto& m : response.models()) {
    rows.push_back({m.name(), m.format(), DtypeName(m.default_dtype()),
                    m.has_tokenizer() ? "yes" : "no (ids)", absl::StrCat(m.vocab_size()),
                    absl::StrCat(m.n_ctx()), absl::StrCat(m.n_layers()),
                    absl::StrCat(2 * m.n_layers()), absl::StrCat(m.d_model()),
                    m.description()});
  }
  return FormatTable(rows, {4, 5, 6, 7, 8});
}

bool JobProgress::Apply(const v1::JobEvent& event) {
  last_seq_ = std::max(last_seq_, event.seq());
  const std::string prefix = absl::StrCat("job ", job_id_, ": ");
  permanent_ = false;
  switch (event.event_case()) {
    case v1::JobEvent::kQueued:
      state_ = v1::JOB_STATE_QUEUED;
      status_line_ = absl::StrCat(prefix, "QUEUED");
      if (event.queued().position() > 0) {
        absl::StrAppend(&status_line_, " (position ", event.queued().position(), ")");
      }
      return true;
    case v1::JobEvent::kModelLoading: {
      const auto& m = event.model_loading();
      state_ = v1::JOB_STATE_MODEL_LOADING;
      std::vector<std::string> detail;
      if (m.phase() == "loading" || m.phase().empty()) {
        detail.push_back(absl::StrFormat("%s %.0f%%", m.phase().empty() ? "loading" : m.phase(),
                                         100.0 * m.progress()));
      } else {
        detail.push_back(m.phase());
      }
      if (!m.device().empty()) detail.push_back(m.device());
      status_line_ = absl::StrCat(prefix, "MODEL_LOADING ", m.model(), " (",
                                  absl::StrJoin(detail, ", "), ")");
      return true;
    }
    case v1::JobEvent::kRunning:
      state_ = v1::JOB_STATE_RUNNING;
      status_line_ = absl::StrCat(prefix, "RUNNING");
      if (event.running().units_total() > 0) {
        absl::StrAppend(&status_line_, " ", event.running().units_done(), "/",
                        event.running().units_total(), " blocks");
      }
      return true;
    case v1::JobEvent::kResult:
      // Records of an earlier attempt are superseded by a later one.
      if (event.attempt() < attempt_) return false;
      if (event.attempt() > attempt_) {
        records_.clear();
        attempt_ = event.attempt();
      }
      records_.push_back(event.result());
      return false;
    case v1::JobEvent::kRetrying:
      state_ = v1::JOB_STATE_QUEUED;
      records_.clear();
      attempt_ = std::max(attempt_, event.retrying().failed_attempt() + 1);
      status_line_ = absl::StrCat(prefix, "RETRYING (attempt ", event.retrying().failed_attempt(),
                                  " lost: ", event.retrying().reason(), ")");
      permanent_ = true;
      return true;
    case v1::JobEvent::kCompleted:
      state_ = v1::JOB_STATE_COMPLETED;
      status_line_ = absl::StrCat(prefix, "COMPLETED (",
                                  Count(event.completed().n_records(), "record"), ")");
      permanent_ = true;
      return true;
    case v1::JobEvent::kFailed:
      state_ = v1::JOB_STATE_FAILED;
      failure_.set_code(event.failed().code());
      failure_.set_message(event.failed().message());
      status_line_ = absl::StrCat(prefix, "FAILED ", StatusCodeName(event.failed().code()), ": ",
                                  event.failed().message());
      permanent_ = true;
      return true;
    case v1::JobEvent::kCancelled:
      state_ = v1::JOB_STATE_CANCELLED;
      failure_.set_code(1);  // CANCELLED
      failure_.set_message(event.cancelled().reason());
      status_line_ = absl::StrCat(prefix, "CANCELLED");
      if (!event.cancelled().reason().empty()) {
        absl::StrAppend(&status_line_, " (", event.cancelled().reason(), ")");
      }
      permanent_ = true;
      return true;
    default:
      return false;
  }
}

}  // namespace client
}  // namespace sinkscope
