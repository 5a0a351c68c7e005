#include "client/commands.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/render.h"
#include "client/render_profile.h"
#include "client/render_train.h"
#include "sinkscope/v1/analysis.grpc.pb.h"

namespace sinkscope {
namespace client {
namespace {

/// Reconnection attempts when an event stream breaks (backoff 1, 2, 4, ... s).
constexpr int kMaxWatchReconnects = 5;

/// One channel to the server and the per-call metadata and deadlines.
class Connection {
 public:
  explicit Connection(const GlobalOptions& global) : global_(global) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (!global.tls_ca.empty()) {
      std::ifstream in(global.tls_ca, std::ios::binary);
      std::stringstream pem;
      pem << in.rdbuf();
      if (!in || pem.str().empty()) {
        std::fprintf(stderr, "sinkscope: cannot read --tls-ca %s\n", global.tls_ca.c_str());
      }
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = pem.str();
      credentials = grpc::SslCredentials(ssl);
    }
    stub_ = v1::AnalysisService::NewStub(grpc::CreateCustomChannel(global.server, credentials, args));
  }

  /// Adds identity metadata and the deadline (`streaming`: the watch deadline).
  void Prepare(grpc::ClientContext* context, bool streaming) const {
    if (!global_.token.empty()) {
      context->AddMetadata("authorization", absl::StrCat("Bearer ", global_.token));
    }
    if (!global_.user.empty()) context->AddMetadata("x-sinkscope-user", global_.user);
    double s = streaming ? global_.wait_timeout_s : global_.timeout_s;
    if (s > 0) {
      context->set_deadline(std::chrono::system_clock::now() +
                            std::chrono::milliseconds(static_cast<int64_t>(s * 1000)));
    }
  }

  v1::AnalysisService::Stub& stub() { return *stub_; }
  const GlobalOptions& global() const { return global_; }

 private:
  const GlobalOptions& global_;
  std::unique_ptr<v1::AnalysisService::Stub> stub_;
};

/// GetJob of `job_id` into `job`; with `include_results`, every result
/// record, read page by page (GetJob page_results), so results of any size
/// the server accepted come back whatever max_get_response_bytes is.
grpc::Status GetJobWithResults(Connection& conn, const std::string& job_id, bool include_results,
                               v1::Job* job) {
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  request.set_include_results(include_results);
  request.set_page_results(include_results);
  std::vector<v1::ResultRecord> records;
  for (;;) {
    grpc::ClientContext context;
    conn.Prepare(&context, /*streaming=*/false);
    v1::Job page;
    grpc::Status status = conn.stub().GetJob(&context, request, &page);
    if (!status.ok()) return status;
    for (auto& r : *page.mutable_results()) records.push_back(std::move(r));
    const int32_t next = page.next_results_offset();
    *job = std::move(page);
    if (next <= request.results_offset()) break;  // 0: the last page
    request.set_results_offset(next);
  }
  job->clear_results();
  for (auto& r : records) *job->add_results() = std::move(r);
  job->set_next_results_offset(0);
  return grpc::Status::OK;
}

/// Prints "sinkscope: <CODE>: <message>" to stderr; returns exit code 1.
int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "sinkscope: %s: %s\n", StatusCodeName(code).c_str(), message.c_str());
  return 1;
}

int Fail(const grpc::Status& status, const GlobalOptions& global) {
  std::string message = status.error_message();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    absl::StrAppend(&message, " (server ", global.server, ")");
  }
  return Fail(static_cast<int>(status.error_code()), message);
}

/// Prints `message` as JSON on stdout; returns 0, or 1 when it cannot.
int PrintJson(const google::protobuf::Message& message, bool pretty = true) {
  absl::StatusOr<std::string> json = ToJson(message, pretty);
  if (!json.ok()) return Fail(static_cast<int>(json.status().code()),
                              std::string(json.status().message()));
  std::fwrite(json->data(), 1, json->size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return 0;
}

void PrintText(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

/// The status line on stderr: rewritten in place on a terminal, one line per
/// change otherwise.
class ProgressLine {
 public:
  explicit ProgressLine(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) == 1) {}
  ~ProgressLine() { Finish(); }

  void Show(const std::string& line, bool permanent) {
    if (quiet_) return;
    if (tty_) {
      std::string shown = line;
      winsize ws{};
      if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 &&
          shown.size() >= ws.ws_col) {
        shown.resize(ws.ws_col - 1);
      }
      std::fprintf(stderr, "\r%s\033[K%s", shown.c_str(), permanent ? "\n" : "");
      active_ = !permanent;
    } else if (line != last_) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    last_ = line;
    std::fflush(stderr);
  }

  /// Ends a line left open on the terminal.
  void Finish() {
    if (active_) std::fputc('\n', stderr);
    active_ = false;
    std::fflush(stderr);
  }

  /// Prints a message of its own (e.g. reconnecting) without garbling the line.
  void Note(const std::string& message) {
    Finish();
    std::fprintf(stderr, "%s\n", message.c_str());
  }

 private:
  bool quiet_;
  bool tty_;
  bool active_ = false;
  std::string last_;
};

// Ctrl-C while watching: the job keeps running on the server; say how to get
// back to it. Only async-signal-safe calls in the handler.
char g_interrupt_message[256] = "";

void OnInterrupt(int) {
  ssize_t ignored = write(STDERR_FILENO, g_interrupt_message, std::strlen(g_interrupt_message));
  (void)ignored;
  _exit(130);
}

void ArmInterruptMessage(const std::string& job_id) {
  std::snprintf(g_interrupt_message, sizeof(g_interrupt_message),
                "\nsinkscope: interrupted; job %s continues on the server "
                "(sinkscope watch %s, sinkscope cancel %s)\n",
                job_id.c_str(), job_id.c_str(), job_id.c_str());
  struct sigaction action {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
}

/// Streams a job's events to the progress line until its terminal event,
/// reconnecting (resuming after the last seq) when the stream breaks. Then
/// prints the result: the job with its records as JSON, or the text tables.
int WatchAndPrint(Connection& conn, const std::string& job_id, const WatchOptions& options,
                  const std::string& unit = "blocks") {
  const GlobalOptions& global = conn.global();
  ArmInterruptMessage(job_id);
  JobProgress progress(job_id);
  progress.set_unit(unit);
  progress.set_known_attempt(options.known_attempt);
  ProgressLine line(global.quiet);
  int64_t after_seq = options.after_seq;
  int reconnects = 0;
  while (true) {
    grpc::ClientContext context;
    conn.Prepare(&context, /*streaming=*/true);
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    request.set_after_seq(after_seq);
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader =
        conn.stub().WatchJob(&context, request);
    v1::JobEvent event;
    while (reader->Read(&event)) {
      reconnects = 0;
      after_seq = std::max(after_seq, event.seq());
      // Records of an attempt already known to be superseded (by GetJob's
      // attempt count or a Retrying event) are dropped from the event lines
      // as from the result view.
      if (global.json && options.events && !progress.Superseded(event)) {
        line.Finish();
        if (int rc = PrintJson(event, /*pretty=*/false); rc != 0) return rc;
      }
      if (progress.Apply(event)) line.Show(progress.status_line(), progress.status_is_permanent());
      // A comparison streams its rows: say each as it is done.
      if (!global.json && !global.quiet && event.has_result() && event.result().has_profile_row()) {
        line.Note(RenderProfileRowLine(event.result().profile_row()));
      }
      // A training run: one line per progress record.
      if (!global.json && !global.quiet && event.has_result() && event.result().has_train_step() &&
          !progress.Superseded(event)) {
        line.Note(RenderTrainStepLine(event.result().train_step()));
      }
    }
    grpc::Status status = reader->Finish();
    if (progress.done()) break;
    if (status.ok()) {
      // The server ended the stream normally without a terminal event after
      // after_seq: the job had already ended (its terminal event is at or
      // before after_seq). Take the final state from GetJob; no reconnecting.
      v1::Job job;
      grpc::Status got = GetJobWithResults(conn, job_id, /*include_results=*/true, &job);
      if (!got.ok()) {
        line.Finish();
        return Fail(got, global);
      }
      if (progress.ApplyFinalJob(job)) {
        line.Show(progress.status_line(), true);
        break;
      }
      line.Finish();
      return Fail(static_cast<int>(grpc::StatusCode::UNAVAILABLE),
                  absl::StrCat("event stream of job ", job_id, " ended before the job finished (",
                               JobStateName(job.state()), ")"));
    }
    // A broken stream of a job we have seen: reconnect and resume.
    bool retryable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (retryable && after_seq > 0 && reconnects < kMaxWatchReconnects) {
      int delay_s = 1 << reconnects++;
      line.Note(absl::StrCat("sinkscope: event stream of job ", job_id, " broke (",
                             status.error_message(), "); reconnecting in ", delay_s, " s"));
      std::this_thread::sleep_for(std::chrono::seconds(delay_s));
      continue;
    }
    line.Finish();
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && global.wait_timeout_s > 0) {
      // Our own --wait-timeout ran out, not the job: say so, and how to go on.
      v1::Job job;
      grpc::Status got = GetJobWithResults(conn, job_id, /*include_results=*/false, &job);
      return Fail(static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED),
                  absl::StrCat("--wait-timeout ", absl::StrFormat("%g", global.wait_timeout_s),
                               " s ran out while waiting for job ", job_id, "; the job is ",
                               got.ok() ? absl::StrCat("still ", JobStateName(job.state()))
                                        : std::string("still on"),
                               " on the server (it was not cancelled): follow it with `sinkscope "
                               "watch ",
                               job_id, "`, read it later with `sinkscope get ", job_id,
                               "`, or stop it with `sinkscope cancel ", job_id, "`"));
    }
    return Fail(status, global);
  }
  line.Finish();
  signal(SIGINT, SIG_DFL);

  if (global.json && !options.events) {
    // The job as it ended, with the records of the completing attempt.
    v1::Job job;
    grpc::ClientContext context;
    conn.Prepare(&context, /*streaming=*/false);
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    grpc::Status status = conn.stub().GetJob(&context, request, &job);
    if (!status.ok()) {
      job.set_id(job_id);
      job.set_state(progress.state());
    }
    job.clear_results();
    for (const auto& record : progress.records()) *job.add_results() = record;
    if (int rc = PrintJson(job); rc != 0) return rc;
  } else if (global.csv && progress.state() == v1::JOB_STATE_COMPLETED) {
    PrintText(RenderProfileCsv(progress.records()));
  } else if (!global.json && progress.state() == v1::JOB_STATE_COMPLETED) {
    std::string text = RenderResults(progress.records());
    PrintText(text.empty() ? "no result records\n" : text);
  }

  switch (progress.state()) {
    case v1::JOB_STATE_COMPLETED:
      return 0;
    case v1::JOB_STATE_FAILED:
      return Fail(progress.failure().code(), progress.failure().message());
    default:  // CANCELLED
      return Fail(static_cast<int>(grpc::StatusCode::CANCELLED),
                  progress.failure().message().empty()
                      ? absl::StrCat("job ", job_id, " was cancelled")
                      : absl::StrCat("job ", job_id, ": ", progress.failure().message()));
  }
}

/// The items of `text`: comma-separated, each comma-separated element
/// holding one or more whitespace-separated items. An empty element (two
/// commas in a row, a leading or trailing comma) is an error.
absl::StatusOr<std::vector<std::string>> SplitItems(const std::string& text) {
  std::vector<std::string> items;
  if (absl::StripAsciiWhitespace(text).empty()) return items;
  for (absl::string_view element : absl::StrSplit(text, ',')) {
    if (absl::StripAsciiWhitespace(element).empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "empty element in '", text.substr(0, 64), text.size() > 64 ? "..." : "",
          "' (two commas in a row, or a leading or trailing comma)"));
    }
    for (absl::string_view item : absl::StrSplit(element, absl::ByAnyChar(" \t\n\r"),
                                                 absl::SkipEmpty())) {
      items.emplace_back(item);
    }
  }
  return items;
}

/// The items of `text` (see SplitItems), each read by `parse` (false:
/// "'<item>' is not <what>"); `none` is the error for no items.
template <typename T, typename Parse>
absl::StatusOr<std::vector<T>> ParseList(const std::string& text, Parse parse, const char* what,
                                         const char* none) {
  absl::StatusOr<std::vector<std::string>> items = SplitItems(text);
  if (!items.ok()) return items.status();
  std::vector<T> out;
  for (const std::string& item : *items) {
    T v = 0;
    if (!parse(item, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("'", item, "' is not ", what));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(none);
  return out;
}

bool ReadInt32(absl::string_view item, int32_t* v) { return absl::SimpleAtoi(item, v); }
bool ReadFloat(absl::string_view item, float* v) { return absl::SimpleAtof(item, v); }

}  // namespace

bool IsValidUtf8(const std::string& text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

std::string CheckGlobalOptions(const GlobalOptions& global) {
  if (global.server.empty()) {
    return "--server is empty: give host:port or unix:/path (or unset SINKSCOPE_SERVER)";
  }
  if (!IsValidUtf8(global.server)) return "--server is not valid UTF-8";
  // gRPC metadata values must be printable ASCII; the server takes 1..64
  // characters without spaces as a user name.
  auto printable = [](const std::string& v) {
    for (char c : v) {
      if (c <= 0x20 || c >= 0x7f) return false;
    }
    return true;
  };
  if (!global.user.empty()) {
    if (global.user.size() > 64) return "--user must have at most 64 characters";
    if (!printable(global.user)) {
      return "--user must be printable ASCII without spaces (letters, digits, punctuation)";
    }
  }
  if (!global.token.empty()) {
    if (global.token.size() > 1024) return "--token is longer than 1024 characters";
    if (!printable(global.token)) {
      return "--token must be printable ASCII without spaces (as printed by "
             "'sinkscope-server token create')";
    }
  }
  if (!global.tls_ca.empty()) {
    std::ifstream in(global.tls_ca, std::ios::binary);
    std::stringstream pem;
    pem << in.rdbuf();
    if (!in || pem.str().empty()) {
      return absl::StrCat("--tls-ca: cannot read the CA file ", global.tls_ca);
    }
  }
  return "";
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& csv) {
  return ParseList<int32_t>(csv, ReadInt32, "a token id", "no token ids given");
}

absl::StatusOr<std::vector<int32_t>> ParseIntList(const std::string& csv) {
  return ParseList<int32_t>(csv, ReadInt32, "an integer", "no values given");
}

absl::StatusOr<std::vector<std::pair<int32_t, int32_t>>> ParseHeads(const std::string& csv) {
  std::vector<std::pair<int32_t, int32_t>> out;
  absl::StatusOr<std::vector<std::string>> items = SplitItems(csv);
  if (!items.ok()) return items.status();
  for (const std::string& item : *items) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, absl::ByAnyChar(":."));
    int32_t layer = 0, head = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &layer) ||
        !absl::SimpleAtoi(parts[1], &head)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", item, "' is not a layer:head pair (e.g. 2:0)"));
    }
    out.emplace_back(layer, head);
  }
  if (out.empty()) return absl::InvalidArgumentError("no heads given");
  return out;
}

absl::StatusOr<std::vector<float>> ParseFloats(const std::string& text) {
  return ParseList<float>(text, ReadFloat, "a number", "no values given");
}

absl::StatusOr<std::string> Unescape(const std::string& text) {
  std::string out, error;
  if (!absl::CUnescape(text, &out, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("bad escape in '", text, "': ", error));
  }
  return out;
}

absl::StatusOr<v1::Dtype> ParseDtype(const std::string& name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "f32" || n == "fp32") return v1::DTYPE_FLOAT32;
  if (n == "bfloat16" || n == "bf16") return v1::DTYPE_BFLOAT16;
  if (n == "float16" || n == "f16" || n == "fp16" || n == "half") return v1::DTYPE_FLOAT16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "' (float32, bfloat16 or float16)"));
}

absl::StatusOr<v1::JobState> ParseJobState(const std::string& name) {
  std::string n = absl::AsciiStrToUpper(name);
  if (n.rfind("JOB_STATE_", 0) != 0) n = "JOB_STATE_" + n;
  v1::JobState state;
  if (!v1::JobState_Parse(n, &state) || state == v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown job state '", name,
        "' (queued, model_loading, running, completed, failed, cancelled)"));
  }
  return state;
}

int RunScan(const GlobalOptions& global, const ScanOptions& options) {
  Connection conn(global);
  v1::Job job;
  grpc::ClientContext context;
  conn.Prepare(&context, /*streaming=*/false);
  grpc::Status status = conn.stub().SubmitJob(&context, options.request, &job);
  if (!status.ok()) return Fail(status, global);
  if (options.detach) {
    if (global.json) return PrintJson(job);
    PrintText(absl::StrCat(job.id(), "\n"));
    return 0;
  }
  return WatchAndPrint(conn, job.id(), options.watch, ProgressUnit(job.type()));
}

int RunWatch(const GlobalOptions& global, const std::string& job_id,
             const WatchOptions& options) {
  Connection conn(global);
  // The job's type names the progress unit; watching works without it.
  std::string unit = "units";
  {
    v1::Job job;
    grpc::ClientContext context;
    conn.Prepare(&context, /*streaming=*/false);
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    grpc::Status status = conn.stub().GetJob(&context, request, &job);
    if (status.ok()) {
      unit = ProgressUnit(job.type());
    } else if (status.error_code() == grpc::StatusCode::NOT_FOUND ||
               status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
               status.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
               status.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
      return Fail(status, global);
    }
    // The attempt running now (or that ended the job): records of earlier
    // ones are superseded.
    WatchOptions with_attempt = options;
    with_attempt.known_attempt = status.ok() ? job.attempts() : 0;
    return WatchAndPrint(conn, job_id, with_attempt, unit);
  }
}

int RunGet(const GlobalOptions& global, const std::string& job_id, bool include_results,
           bool all_inputs) {
  Connection conn(global);
  v1::Job job;
  grpc::Status status = GetJobWithResults(conn, job_id, include_results, &job);
  if (!status.ok()) return Fail(status, global);
  if (global.json) return PrintJson(job);
  if (global.csv) {
    PrintText(RenderProfileCsv({job.results().begin(), job.results().end()}));
    return 0;
  }
  std::string text = RenderJob(job, absl::LocalTimeZone(), all_inputs ? -1 : 8);
  if (job.results_size() > 0) {
    std::vector<v1::ResultRecord> records(job.results().begin(), job.results().end());
    absl::StrAppend(&text, "\n", RenderResults(records));
  }
  PrintText(text);
  return 0;
}

int RunJobs(const GlobalOptions& global, const v1::ListJobsRequest& request) {
  Connection conn(global);
  v1::ListJobsResponse response;
  grpc::ClientContext context;
  conn.Prepare(&context, /*streaming=*/false);
  grpc::Status status = conn.stub().ListJobs(&context, request, &response);
  if (!status.ok()) return Fail(status, global);
  if (global.json) return PrintJson(response);
  PrintText(RenderJobsTable(response));
  return 0;
}

int RunCancel(const GlobalOptions& global, const std::string& job_id) {
  Connection conn(global);
  v1::Job job;
  grpc::ClientContext context;
  conn.Prepare(&context, /*streaming=*/false);
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  grpc::Status status = conn.stub().CancelJob(&context, request, &job);
  if (!status.ok()) return Fail(status, global);
  if (global.json) return PrintJson(job);
  if (job.state() == v1::JOB_STATE_CANCELLED) {
    PrintText(absl::StrCat("job ", job.id(), ": CANCELLED\n"));
  } else {
    PrintText(absl::StrCat("job ", job.id(), ": cancellation requested (now ",
                           JobStateName(job.state()), "; sinkscope watch ", job.id(),
                           " to see it end)\n"));
  }
  return 0;
}

int RunQueue(const GlobalOptions& global) {
  Connection conn(global);
  v1::ListJobsRequest list;
  list.set_owner("@me");
  list.set_page_size(1000);
  for (v1::JobState s : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_MODEL_LOADING, v1::JOB_STATE_RUNNING}) {
    list.add_states(s);
  }
  grpc::ClientContext context;
  conn.Prepare(&context, /*streaming=*/false);
  v1::ListJobsResponse page;
  grpc::Status status = conn.stub().ListJobs(&context, list, &page);
  if (!status.ok()) return Fail(status, global);
  if (global.json) return PrintJson(page);
  std::string out;
  if (page.jobs_size() > 0) {
    std::vector<std::vector<std::string>> rows = {{"id", "type", "model", "state", "position"}};
    for (const v1::Job& j : page.jobs()) {
      rows.push_back({j.id(), JobTypeName(j.type()), j.request().model(), JobStateName(j.state()),
                      j.state() == v1::JOB_STATE_QUEUED && j.queue_position() > 0
                          ? absl::StrCat(j.queue_position())
                          : std::string("-")});
    }
    absl::StrAppend(&out, FormatTable(rows, {4}), "\n");
  } else {
    absl::StrAppend(&out, "no queued or running jobs of yours\n\n");
  }
  const v1::QueueOverview& q = page.queue();
  absl::StrAppend(&out, "Queue:  ", q.queued(), " queued (", q.my_queued(), " yours; ", q.users_waiting(),
                  " user(s) waiting), ", q.running(), " running on this host (", q.my_running(),
                  " yours)\n");
  PrintText(out);
  return 0;
}

int RunCancelAllMine(const GlobalOptions& global) {
  Connection conn(global);
  v1::ListJobsRequest list;
  list.set_owner("@me");
  list.set_page_size(1000);
  for (v1::JobState s : {v1::JOB_STATE_QUEUED, v1::JOB_STATE_MODEL_LOADING, v1::JOB_STATE_RUNNING}) {
    list.add_states(s);
  }
  std::vector<std::string> ids;
  for (;;) {
    grpc::ClientContext context;
    conn.Prepare(&context, /*streaming=*/false);
    v1::ListJobsResponse page;
    grpc::Status status = conn.stub().ListJobs(&context, list, &page);
    if (!status.ok()) return Fail(status, global);
    for (const v1::Job& j : page.jobs()) ids.push_back(j.id());
    if (page.next_page_token().empty()) break;
    list.set_page_token(page.next_page_token());
  }
  int cancelled = 0, failed = 0;
  for (const std::string& id : ids) {
    grpc::ClientContext context;
    conn.Prepare(&context, /*streaming=*/false);
    v1::CancelJobRequest request;
    request.set_job_id(id);
    v1::Job job;
    grpc::Status status = conn.stub().CancelJob(&context, request, &job);
    if (status.ok()) {
      ++cancelled;
      if (!global.json) {
        PrintText(absl::StrCat("job ", id, ": ",
                               job.state() == v1::JOB_STATE_CANCELLED
                                   ? std::string("CANCELLED")
                                   : absl::StrCat("cancellation requested (now ",
                                                  JobStateName(job.state()), ")"),
                               "\n"));
      }
    } else if (status.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
      // FAILED_PRECONDITION: it ended meanwhile; anything else is reported.
      ++failed;
      std::fprintf(stderr, "sinkscope: job %s: %s: %s\n", id.c_str(),
                   StatusCodeName(static_cast<int>(status.error_code())).c_str(),
                   status.error_message().c_str());
    }
  }
  if (global.json) {
    PrintText(absl::StrCat("{\"cancelled\": ", cancelled, ", \"failed\": ", failed, "}\n"));
  } else {
    PrintText(absl::StrCat(cancelled, " job(s) of yours cancelled", ids.empty() ? " (none queued or running)" : "",
                           "\n"));
  }
  return failed == 0 ? 0 : 1;
}

int RunModels(const GlobalOptions& global) {
  Connection conn(global);
  v1::ListModelsResponse response;
  grpc::ClientContext context;
  conn.Prepare(&context, /*streaming=*/false);
  grpc::Status status = conn.stub().ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) return Fail(status, global);
  if (global.json) return PrintJson(response);
  PrintText(RenderModels(response));
  return 0;
}

int RunClearModel(const GlobalOptions& global, const std::string& model) {
  Connection conn(global);
  v1::ClearModelUnavailableRequest request;
  request.set_model(model);
  v1::ClearModelUnavailableResponse response;
  grpc::ClientContext context;
  conn.Prepare(&context, /*streaming=*/false);
  grpc::Status status = conn.stub().ClearModelUnavailable(&context, request, &response);
  if (!status.ok()) return Fail(status, global);
  if (global.json) return PrintJson(response);
  PrintText(response.was_marked()
                ? absl::StrCat("model ", model, ": cleared the unavailable mark (",
                               response.previous_reason(), ")\n")
                : absl::StrCat("model ", model, " was not marked unavailable\n"));
  return 0;
}

}  // namespace client
}  // namespace sinkscope
