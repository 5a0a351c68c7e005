// sinkscope: command-line client of the sinkscope AnalysisService.
//
//   sinkscope models
//   sinkscope scan --model stories260K --ids 1,461,401
//   sinkscope scan --model aidreams260K --text "Once upon a time" --text "The end." --json
//   sinkscope jobs --state running
//   sinkscope get j-0123456789abcdef
//   sinkscope watch j-0123456789abcdef
//   sinkscope cancel j-0123456789abcdef
//
// Exit codes: 0 success; 1 RPC error or failed/cancelled job (the server's
// code and message on stderr as "sinkscope: <CODE>: <message>"); 2 usage error.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/strings/str_cat.h"
#include "client/commands.h"

namespace {

using sinkscope::client::GlobalOptions;
namespace v1 = sinkscope::v1;

constexpr int kUsageError = 2;

int Usage(const std::string& message) {
  std::fprintf(stderr, "sinkscope: %s\nRun with --help for more information.\n",
               message.c_str());
  return kUsageError;
}

/// Reads a whole file ("-" = stdin), dropping one trailing newline.
bool ReadTextFile(const std::string& path, std::string* text) {
  std::ostringstream buffer;
  if (path == "-") {
    buffer << std::cin.rdbuf();
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    buffer << in.rdbuf();
  }
  *text = buffer.str();
  if (!text->empty() && text->back() == '\n') text->pop_back();
  if (!text->empty() && text->back() == '\r') text->pop_back();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sinkscope: find massive activations and attention sinks in transformer LMs",
               "sinkscope"};
  app.require_subcommand(1);
  // Global options may also follow the subcommand.
  app.fallthrough();

  GlobalOptions global;
  app.add_option("--server", global.server, "Server address: host:port or unix:/path")
      ->envname("SINKSCOPE_SERVER")
      ->capture_default_str();
  app.add_option("--token", global.token, "Bearer token, sent as 'authorization' metadata")
      ->envname("SINKSCOPE_TOKEN");
  app.add_option("--user", global.user,
                 "Caller name, sent as 'x-sinkscope-user' metadata (until auth lands)")
      ->envname("SINKSCOPE_USER");
  app.add_flag("--json", global.json,
               "Print results as protobuf JSON with the .proto field names");
  app.add_flag("-q,--quiet", global.quiet, "No progress on stderr");
  app.add_option("--timeout", global.timeout_s,
                 "Deadline of each request in seconds (0 = none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--wait-timeout", global.wait_timeout_s,
                 "Deadline for watching a job in seconds (0 = none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);

  // scan
  CLI::App* scan = app.add_subcommand("scan", "Run a massive-activation scan and show it");
  std::string model, dtype, request_id;
  std::vector<std::string> texts, id_lists, files;
  bool no_bos = false, detach = false, events = false;
  int top_k = 0;
  double abs_threshold = 0, rel_threshold = 0, step_fraction = 0;
  scan->add_option("-m,--model", model, "Catalog model (see 'sinkscope models')")->required();
  CLI::Option* text_opt =
      scan->add_option("--text", texts, "Input text (repeat for several sequences)")
          ->allow_extra_args(false);
  CLI::Option* ids_opt =
      scan->add_option("--ids", id_lists,
                       "Token ids, comma-separated, used verbatim (repeatable)")
          ->allow_extra_args(false);
  CLI::Option* file_opt =
      scan->add_option("--file", files, "Text file, one sequence ('-' = stdin; repeatable)")
          ->allow_extra_args(false);
  scan->add_flag("--no-bos", no_bos, "Do not prepend BOS to text sequences");
  CLI::Option* top_k_opt =
      scan->add_option("--top-k", top_k, "Entries kept per block (server default 3)")
          ->check(CLI::Range(1, 64));
  CLI::Option* abs_opt = scan->add_option("--abs-threshold", abs_threshold,
                                          "Massive if |h| > X (server default 100)");
  CLI::Option* rel_opt = scan->add_option(
      "--rel-threshold", rel_threshold, "... and |h| > X * median|h| (server default 1000)");
  CLI::Option* step_opt = scan->add_option(
      "--step-fraction", step_fraction,
      "Step-up/down block: output >= X of the peak (server default 0.5)");
  scan->add_option("--dtype", dtype, "float32, bfloat16 or float16 (default: model's)");
  scan->add_option("--request-id", request_id, "Idempotency key: resubmitting returns the job");
  scan->add_flag("--detach", detach, "Print the job id and exit once queued");
  scan->add_flag("--events", events, "With --json: print every event as a JSON line");

  // watch
  CLI::App* watch = app.add_subcommand("watch", "Follow a job's events and show its result");
  std::string watch_id;
  int64_t after_seq = 0;
  watch->add_option("id", watch_id, "Job id")->required();
  watch->add_option("--after-seq", after_seq, "Replay only events after this seq");
  watch->add_flag("--events", events, "With --json: print every event as a JSON line");

  // get
  CLI::App* get = app.add_subcommand("get", "Show a job (and its results once completed)");
  std::string get_id;
  bool no_results = false;
  get->add_option("id", get_id, "Job id")->required();
  get->add_flag("--no-results", no_results, "Do not fetch result records");

  // jobs
  CLI::App* jobs = app.add_subcommand("jobs", "List jobs, newest first");
  std::string owner, page_token;
  std::vector<std::string> states;
  int limit = 0;
  jobs->add_option("--owner", owner, "Only this owner's jobs");
  jobs->add_option("--state", states, "Only jobs in this state (repeatable)")
      ->allow_extra_args(false);
  jobs->add_option("--limit", limit, "At most this many jobs (server default 50)")
      ->check(CLI::Range(1, 1000));
  jobs->add_option("--page-token", page_token, "Continue a previous listing");

  // cancel
  CLI::App* cancel = app.add_subcommand("cancel", "Cancel a job");
  std::string cancel_id;
  cancel->add_option("id", cancel_id, "Job id")->required();

  // models
  CLI::App* models = app.add_subcommand("models", "List the server's model catalog");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kUsageError;
  }

  sinkscope::client::WatchOptions watch_options;
  watch_options.events = events;

  if (scan->parsed()) {
    sinkscope::client::ScanOptions options;
    options.detach = detach;
    options.watch = watch_options;
    options.request.set_client_request_id(request_id);
    v1::JobRequest* request = options.request.mutable_request();
    request->set_model(model);
    // Sequences in command-line order, whatever their kind.
    size_t next_text = 0, next_ids = 0, next_file = 0;
    for (const CLI::Option* opt : scan->parse_order()) {
      if (opt == text_opt && next_text < texts.size()) {
        request->add_sequences()->set_text(texts[next_text++]);
      } else if (opt == ids_opt && next_ids < id_lists.size()) {
        const std::string& csv = id_lists[next_ids++];
        auto ids = sinkscope::client::ParseIds(csv);
        if (!ids.ok()) return Usage(absl::StrCat("--ids ", csv, ": ", ids.status().message()));
        auto* seq = request->add_sequences()->mutable_ids();
        seq->mutable_ids()->Add(ids->begin(), ids->end());
      } else if (opt == file_opt && next_file < files.size()) {
        const std::string& path = files[next_file++];
        std::string text;
        if (!ReadTextFile(path, &text)) return Usage(absl::StrCat("--file: cannot read ", path));
        request->add_sequences()->set_text(text);
      }
    }
    if (request->sequences_size() == 0) return Usage("scan needs --text, --ids or --file");
    if (no_bos) request->set_add_bos(false);
    if (!dtype.empty()) {
      auto d = sinkscope::client::ParseDtype(dtype);
      if (!d.ok()) return Usage(absl::StrCat("--dtype: ", d.status().message()));
      request->set_dtype(*d);
    }
    v1::ActivationScanRequest* params = request->mutable_scan();
    if (top_k_opt->count() > 0) params->set_top_k(top_k);
    if (abs_opt->count() > 0) params->set_abs_threshold(abs_threshold);
    if (rel_opt->count() > 0) params->set_rel_threshold(rel_threshold);
    if (step_opt->count() > 0) params->set_step_fraction(step_fraction);
    return sinkscope::client::RunScan(global, options);
  }
  if (watch->parsed()) {
    watch_options.after_seq = after_seq;
    return sinkscope::client::RunWatch(global, watch_id, watch_options);
  }
  if (get->parsed()) return sinkscope::client::RunGet(global, get_id, !no_results);
  if (jobs->parsed()) {
    v1::ListJobsRequest request;
    request.set_owner(owner);
    request.set_page_size(limit);
    request.set_page_token(page_token);
    for (const std::string& s : states) {
      auto state = sinkscope::client::ParseJobState(s);
      if (!state.ok()) return Usage(absl::StrCat("--state: ", state.status().message()));
      request.add_states(*state);
    }
    return sinkscope::client::RunJobs(global, request);
  }
  if (cancel->parsed()) return sinkscope::client::RunCancel(global, cancel_id);
  if (models->parsed()) return sinkscope::client::RunModels(global);
  return Usage("no command");
}
