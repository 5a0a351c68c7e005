// Text renderers of jobs, job lists and the catalog, and the progress lines
// of a watched job (JobProgress). Declared in client/render.h.
#include "client/render.h"

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/render_internal.h"
#include "common/job_types.h"

namespace sinkscope {
namespace client {
namespace {

using internal::Count;
using internal::JoinCapped;

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
  if (request.params_case() != v1::JobRequest::kScan) {
    const JobTypeDescriptor* job = JobTypeOfRequest(request);
    // Mechanism jobs (and unknown cases) show no parameters here.
    if (job == nullptr || job->mechanism) return "-";
    // The set params message, found by its oneof field number.
    const google::protobuf::FieldDescriptor* field =
        request.GetDescriptor()->FindFieldByNumber(static_cast<int>(request.params_case()));
    if (field == nullptr) return "-";
    absl::StatusOr<std::string> json =
        ToJson(request.GetReflection()->GetMessage(request, field), false);
    if (!json.ok()) return "-";
    std::string text = *json;
    if (text.size() > 400) text = text.substr(0, 400) + "...";
    return text;
  }
  const v1::ActivationScanRequest& s = request.scan();
  std::vector<std::string> parts;
  if (s.has_top_k()) parts.push_back(absl::StrCat("top_k ", s.top_k()));
  if (s.has_abs_threshold()) parts.push_back(absl::StrFormat("abs_threshold %g", s.abs_threshold()));
  if (s.has_rel_threshold()) parts.push_back(absl::StrFormat("rel_threshold %g", s.rel_threshold()));
  if (s.has_step_rule()) parts.push_back(absl::StrCat("step_rule ", s.step_rule()));
  if (s.has_step_fraction()) parts.push_back(absl::StrFormat("step_fraction %g", s.step_fraction()));
  if (s.has_step_share()) parts.push_back(absl::StrFormat("step_share %g", s.step_share()));
  return parts.empty() ? "defaults" : absl::StrJoin(parts, ", ");
}

}  // namespace

std::string FormatTimestamp(const google::protobuf::Timestamp& ts, absl::TimeZone tz) {
  if (ts.seconds() == 0 && ts.nanos() == 0) return "-";
  absl::Time t = absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", t, tz);
}

std::string RenderJob(const v1::Job& job, absl::TimeZone tz, int max_inputs) {
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
  if (!job.waiting_reason().empty()) row("waiting", job.waiting_reason());
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
  const int shown = max_inputs < 0 ? r.sequences_size() : std::min(max_inputs, r.sequences_size());
  for (int i = 0; i < shown; ++i) {
    row(i == 0 ? absl::StrCat("inputs (", r.sequences_size(), ")") : "",
        absl::StrCat("[", i, "] ", DescribeSequence(r.sequences(i))));
  }
  if (shown < r.sequences_size()) {
    row("", absl::StrCat("... ", r.sequences_size() - shown, " more (--all-inputs shows every one)"));
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

namespace {

/// `text` as lines of at most `width` characters (words longer than that
/// are cut), each after `indent` but the first.
std::string WrapText(const std::string& text, size_t width, const std::string& indent) {
  std::string out, line;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    while (word.size() > width) {
      if (!line.empty()) absl::StrAppend(&out, line, "\n", indent);
      line.clear();
      absl::StrAppend(&out, word.substr(0, width), "\n", indent);
      word.remove_prefix(width);
    }
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      absl::StrAppend(&out, line, "\n", indent);
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  absl::StrAppend(&out, line, "\n");
  return out;
}

/// "name  description" lines, the description wrapped to ~100 columns.
std::string DescriptionLines(const std::vector<std::pair<std::string, std::string>>& items) {
  size_t name_width = 0;
  for (const auto& [name, d] : items) name_width = std::max(name_width, name.size());
  name_width = std::min<size_t>(name_width, 40);
  const size_t width = std::max<size_t>(40, 100 - name_width - 2);
  std::string out;
  for (const auto& [name, description] : items) {
    if (description.empty()) continue;
    std::string head = name;
    if (head.size() < name_width) head.resize(name_width, ' ');
    absl::StrAppend(&out, head, "  ",
                    WrapText(description, width, std::string(name_width + 2, ' ')));
  }
  return out;
}

}  // namespace

std::string RenderModels(const v1::ListModelsResponse& response) {
  std::vector<std::vector<std::string>> rows = {
      {"name", "format", "dtype", "tokenizer", "vocab", "n_ctx", "layers", "blocks", "d_model",
       "heads"}};
  std::vector<std::pair<std::string, std::string>> descriptions;
  for (const auto& m : response.models()) {
    rows.push_back({m.name(), m.format(), DtypeName(m.default_dtype()),
                    m.has_tokenizer() ? "yes" : "no (ids)", absl::StrCat(m.vocab_size()),
                    absl::StrCat(m.n_ctx()), absl::StrCat(m.n_layers()),
                    absl::StrCat(2 * m.n_layers()), absl::StrCat(m.d_model()),
                    absl::StrCat(m.n_heads())});
    descriptions.emplace_back(m.name(), m.description());
  }
  std::string out;
  if (!response.workers().problem().empty()) {
    absl::StrAppend(&out, "WARNING: ", response.workers().problem(), "\n\n");
  }
  absl::StrAppend(&out, FormatTable(rows, {4, 5, 6, 7, 8, 9}), "\n", DescriptionLines(descriptions));
  if (response.corpora_size() > 0) {
    std::vector<std::vector<std::string>> corpora = {{"corpus", "bytes", "tokenizer"}};
    std::vector<std::pair<std::string, std::string>> corpus_descriptions;
    for (const auto& c : response.corpora()) {
      corpora.push_back({c.name(), absl::StrCat(c.size_bytes()),
                         c.has_tokenizer() ? "own (for models that declare it)" : "model's"});
      corpus_descriptions.emplace_back(c.name(), c.description());
    }
    absl::StrAppend(&out, "\n", FormatTable(corpora, {1}), "\n", DescriptionLines(corpus_descriptions));
  }
  return out;
}

bool JobProgress::Superseded(const v1::JobEvent& event) const {
  return event.has_result() && event.attempt() < attempt_;
}

bool JobProgress::ApplyFinalJob(const v1::Job& job) {
  const std::string prefix = absl::StrCat("job ", job_id_, ": ");
  switch (job.state()) {
    case v1::JOB_STATE_COMPLETED:
      if (job.results_size() > 0 || records_.empty()) {
        records_.assign(job.results().begin(), job.results().end());
      }
      status_line_ = absl::StrCat(prefix, "COMPLETED (", Count(records_.size(), "record"), ")");
      break;
    case v1::JOB_STATE_FAILED:
      failure_ = job.error();
      status_line_ = absl::StrCat(prefix, "FAILED ", StatusCodeName(job.error().code()), ": ",
                                  job.error().message());
      break;
    case v1::JOB_STATE_CANCELLED:
      failure_.set_code(1);  // CANCELLED
      failure_.set_message(job.error().message());
      status_line_ = absl::StrCat(prefix, "CANCELLED");
      break;
    default:
      return false;
  }
  state_ = job.state();
  permanent_ = true;
  last_seq_ = std::max(last_seq_, job.last_event_seq());
  return true;
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
                        event.running().units_total(), " ", unit_);
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
