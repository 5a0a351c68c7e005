// sinkscope: command-line client of the sinkscope AnalysisService.
//
//   sinkscope models
//   sinkscope scan --model stories260K --ids 1,461,401
//   sinkscope scan --model aidreams260K --text "Once upon a time" --text "The end." --json
//   sinkscope jobs --state running
//   sinkscope get j-0123456789abcdef
//   sinkscope watch j-0123456789abcdef
//   sinkscope cancel j-0123456789abcdef
//   sinkscope sinks --model my-llama --text "..." -T 64 --epsilon 0.3
//   sinkscope first-token-probe --model my-llama --batch-size 1024
//   sinkscope perplexity --model stories260K --corpus tinyshakespeare --token-budget 4096
//   sinkscope sink-ablation --model my-llama --corpus tinyshakespeare --heads 2:0,2:2
//
// Exit codes: 0 success; 1 RPC error or failed/cancelled job (the server's
// code and message on stderr as "sinkscope: <CODE>: <message>"); 2 usage error.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>
#include "google/protobuf/util/json_util.h"
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
    std::error_code ec;
    // A directory opens as an ifstream on Linux and reads as empty text.
    if (std::filesystem::is_directory(path, ec)) return false;
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    buffer << in.rdbuf();
  }
  *text = buffer.str();
  if (!text->empty() && text->back() == '\n') text->pop_back();
  if (!text->empty() && text->back() == '\r') text->pop_back();
  return true;
}

/// The input and submission flags every analysis subcommand shares.
struct InputFlags {
  std::string model, dtype, request_id;
  std::vector<std::string> texts, id_lists, files;
  bool no_bos = false, detach = false, events = false;
  CLI::Option* text_opt = nullptr;
  CLI::Option* ids_opt = nullptr;
  CLI::Option* file_opt = nullptr;

  /// `with_sequences`: the command reads input sequences.
  void Add(CLI::App* cmd, bool with_sequences) {
    AddInput(cmd, with_sequences);
    AddSubmission(cmd);
  }

  /// --model and, `with_sequences`, the sequence flags.
  void AddInput(CLI::App* cmd, bool with_sequences) {
    cmd->add_option("-m,--model", model, "Catalog model (see 'sinkscope models')")->required();
    if (with_sequences) {
      text_opt = cmd->add_option("--text", texts, "Input text (repeat for several sequences)")
                     ->allow_extra_args(false);
      ids_opt = cmd->add_option("--ids", id_lists,
                                "Token ids, comma-separated, used verbatim (repeatable)")
                    ->allow_extra_args(false);
      file_opt = cmd->add_option("--file", files, "Text file, one sequence ('-' = stdin; repeatable)")
                     ->allow_extra_args(false);
      cmd->add_flag("--no-bos", no_bos, "Do not prepend BOS to text sequences");
    }
  }

  /// --dtype, --request-id, --detach, --events.
  void AddSubmission(CLI::App* cmd) {
    cmd->add_option("--dtype", dtype, "float32, bfloat16 or float16 (default: model's)");
    cmd->add_option("--request-id", request_id, "Idempotency key: resubmitting returns the job");
    cmd->add_flag("--detach", detach, "Print the job id and exit once queued");
    cmd->add_flag("--events", events, "With --json: print every event as a JSON line");
  }

  /// Whether any --text, --ids or --file was given.
  bool has_sequences() const { return !texts.empty() || !id_lists.empty() || !files.empty(); }

  /// Fills the request's model, sequences (command-line order), BOS and
  /// dtype. Returns "" or a usage error.
  std::string Fill(CLI::App* cmd, sinkscope::client::ScanOptions* options) const {
    options->detach = detach;
    options->watch.events = events;
    options->request.set_client_request_id(request_id);
    v1::JobRequest* request = options->request.mutable_request();
    request->set_model(model);
    size_t next_text = 0, next_ids = 0, next_file = 0;
    for (const CLI::Option* opt : cmd->parse_order()) {
      if (opt == nullptr) continue;
      if (opt == text_opt && next_text < texts.size()) {
        request->add_sequences()->set_text(texts[next_text++]);
      } else if (opt == ids_opt && next_ids < id_lists.size()) {
        const std::string& csv = id_lists[next_ids++];
        auto ids = sinkscope::client::ParseIds(csv);
        if (!ids.ok()) return absl::StrCat("--ids ", csv, ": ", ids.status().message());
        request->add_sequences()->mutable_ids()->mutable_ids()->Add(ids->begin(), ids->end());
      } else if (opt == file_opt && next_file < files.size()) {
        const std::string& path = files[next_file++];
        std::string text;
        if (!ReadTextFile(path, &text)) {
          return absl::StrCat("--file: cannot read ", path, " (not a readable file)");
        }
        if (!sinkscope::client::IsValidUtf8(text)) {
          return absl::StrCat("--file ", path, ": the text is not valid UTF-8");
        }
        request->add_sequences()->set_text(text);
      }
    }
    if (no_bos) request->set_add_bos(false);
    if (!dtype.empty()) {
      auto d = sinkscope::client::ParseDtype(dtype);
      if (!d.ok()) return absl::StrCat("--dtype: ", d.status().message());
      request->set_dtype(*d);
    }
    return "";
  }
};

/// "--flag: message" for a bad list value.
std::string ListError(const std::string& flag, const absl::Status& status) {
  return absl::StrCat(flag, ": ", status.message());
}

/// Flags of an evaluation (perplexity, interventions).
struct EvalFlags {
  std::string corpus;
  int chunk_length = 0;
  int64_t token_budget = 0;
  CLI::Option* chunk_opt = nullptr;
  CLI::Option* budget_opt = nullptr;

  void Add(CLI::App* cmd) {
    cmd->add_option("--corpus", corpus,
                    "Catalog corpus (see 'sinkscope models'); else --text/--ids/--file, "
                    "concatenated into one stream");
    chunk_opt = cmd->add_option("--chunk-length", chunk_length,
                                "Tokens per chunk, context reset at each (server default 128)");
    budget_opt = cmd->add_option("--token-budget", token_budget,
                                 "Tokens fed at most (default: the whole stream)");
  }
  void Fill(v1::EvalCorpus* eval) const {
    eval->set_corpus(corpus);
    if (chunk_opt->count() > 0) eval->set_chunk_length(chunk_length);
    if (budget_opt->count() > 0) eval->set_token_budget(token_budget);
  }
};

/// Flags of one constant substitution.
struct SubstitutionFlags {
  std::string mode, channels, positions, constant, constant_file;
  int block = 0;
  bool channels_only = false;

  void Add(CLI::App* cmd) {
    cmd->add_option("--mode", mode, "mean (default), constant or zero");
    cmd->add_option("--block", block,
                    "Paper block (1..2L) whose post-residual is replaced (0 = detected step-up block)");
    cmd->add_flag("--channels-only", channels_only, "Replace only the spike channels");
    cmd->add_option("--channels", channels, "Channels replaced (with --channels-only), comma-separated");
    cmd->add_option("--positions", positions, "Positions replaced in each chunk (default: spike tokens)");
    cmd->add_option("--constant", constant, "Mode constant: the vector, comma-separated");
    cmd->add_option("--constant-file", constant_file, "Mode constant: a file of numbers");
  }
  std::string Fill(v1::ConstantSubstitution* s) const {
    s->set_mode(mode);
    s->set_block(block);
    s->set_channels_only(channels_only);
    if (!channels.empty()) {
      auto v = sinkscope::client::ParseIntList(channels);
      if (!v.ok()) return ListError("--channels", v.status());
      s->mutable_channels()->Add(v->begin(), v->end());
    }
    if (!positions.empty()) {
      auto v = sinkscope::client::ParseIntList(positions);
      if (!v.ok()) return ListError("--positions", v.status());
      s->mutable_positions()->Add(v->begin(), v->end());
    }
    std::string values = constant;
    if (!constant_file.empty() && !ReadTextFile(constant_file, &values)) {
      return absl::StrCat("--constant-file: cannot read ", constant_file);
    }
    if (!values.empty()) {
      auto v = sinkscope::client::ParseFloats(values);
      if (!v.ok()) return ListError("--constant", v.status());
      s->mutable_constant()->Add(v->begin(), v->end());
    }
    return "";
  }
};

/// Flags of one sink ablation.
struct AblationFlags {
  std::string method, heads, sink_positions;

  void Add(CLI::App* cmd, const std::string& prefix = "") {
    cmd->add_option("--" + prefix + "method", method, "mask (default), zero-prob or zero-value");
    cmd->add_option("--" + prefix + "heads", heads,
                    "layer:head pairs, e.g. 2:0,2:2 (default: the detected sink heads)");
    cmd->add_option("--" + prefix + "sink-positions", sink_positions, "Sink key positions (default 0)");
  }
  std::string Fill(v1::SinkAblation* a, const std::string& prefix = "") const {
    a->set_method(method);
    if (!heads.empty()) {
      auto v = sinkscope::client::ParseHeads(heads);
      if (!v.ok()) return ListError("--" + prefix + "heads", v.status());
      for (auto [l, h] : *v) {
        v1::HeadRef* ref = a->add_heads();
        ref->set_layer(l);
        ref->set_head(h);
      }
    }
    if (!sink_positions.empty()) {
      auto v = sinkscope::client::ParseIntList(sink_positions);
      if (!v.ok()) return ListError("--" + prefix + "sink-positions", v.status());
      a->mutable_sink_positions()->Add(v->begin(), v->end());
    }
    return "";
  }
};

/// Shared flags of the intervention front-ends.
struct ExperimentFlags {
  double abs_threshold = 0, rel_threshold = 0, step_fraction = 0;
  CLI::Option* abs_opt = nullptr;
  CLI::Option* rel_opt = nullptr;
  CLI::Option* step_opt = nullptr;
  std::vector<std::string> calibration_ids, calibration_texts;

  void Add(CLI::App* cmd) {
    abs_opt = cmd->add_option("--abs-threshold", abs_threshold, "Spike if |h| > X (default 100)");
    rel_opt = cmd->add_option("--rel-threshold", rel_threshold,
                              "... and |h| > X * median|h| (default 1000)");
    step_opt = cmd->add_option("--step-fraction", step_fraction,
                               "Step-up block rule (default 0.5)");
    cmd->add_option("--calibration-ids", calibration_ids,
                    "Calibration sequence for mode mean, token ids (repeatable)")
        ->allow_extra_args(false);
    cmd->add_option("--calibration-text", calibration_texts,
                    "Calibration sequence for mode mean, text (repeatable)")
        ->allow_extra_args(false);
  }
  std::string Fill(v1::InterventionRequest* r) const {
    if (abs_opt->count() > 0) r->set_abs_threshold(abs_threshold);
    if (rel_opt->count() > 0) r->set_rel_threshold(rel_threshold);
    if (step_opt->count() > 0) r->set_step_fraction(step_fraction);
    for (const std::string& csv : calibration_ids) {
      auto ids = sinkscope::client::ParseIds(csv);
      if (!ids.ok()) return ListError("--calibration-ids", ids.status());
      r->add_calibration()->mutable_ids()->mutable_ids()->Add(ids->begin(), ids->end());
    }
    for (const std::string& t : calibration_texts) r->add_calibration()->set_text(t);
    return "";
  }
};

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
  app.add_option("--tls-ca", global.tls_ca, "PEM CA file: use TLS and verify the server with it")
      ->envname("SINKSCOPE_TLS_CA");
  app.add_option("--user", global.user,
                 "Caller name, sent as 'x-sinkscope-user' metadata: your identity when the "
                 "server runs with auth \"none\" (ignored with tokens)")
      ->envname("SINKSCOPE_USER");
  app.add_flag("--json", global.json,
               "Print results as protobuf JSON with the .proto field names");
  app.add_flag("--csv", global.csv, "Print profile rows as CSV (profile, get)");
  app.add_flag("-q,--quiet", global.quiet, "No progress on stderr");
  // Seconds >= 0, at most a year (CLI::NonNegativeNumber would print the
  // whole double range in its message).
  const CLI::Validator seconds(
      [](std::string& value) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(value, v) || !(v >= 0 && v <= 31536000)) {
          return "must be a number of seconds from 0 (none) to 31536000, got " + value;
        }
        return "";
      },
      "SECONDS", "seconds");
  app.add_option("--timeout", global.timeout_s,
                 "Deadline of each request in seconds (0 = none)")
      ->capture_default_str()
      ->check(seconds);
  app.add_option("--wait-timeout", global.wait_timeout_s,
                 "Deadline for watching a job in seconds (0 = none)")
      ->capture_default_str()
      ->check(seconds);

  // scan
  CLI::App* scan = app.add_subcommand("scan", "Run a massive-activation scan and show it");
  InputFlags scan_in;
  scan_in.AddInput(scan, true);
  int top_k = 0;
  double abs_threshold = 0, rel_threshold = 0, step_fraction = 0;
  CLI::Option* top_k_opt =
      scan->add_option("--top-k", top_k, "Entries kept per block (server default 3)")
          ->check(CLI::Range(1, 64));
  CLI::Option* abs_opt = scan->add_option("--abs-threshold", abs_threshold,
                                          "Massive if |h| > X (server default 100)");
  CLI::Option* rel_opt = scan->add_option(
      "--rel-threshold", rel_threshold, "... and |h| > X * median|h| (server default 1000)");
  CLI::Option* step_opt = scan->add_option(
      "--step-fraction", step_fraction,
      "single-block rule: output >= X of the peak (server default 0.5)");
  std::string step_rule;
  double step_share = 0;
  CLI::Option* rule_opt = scan->add_option(
      "--step-rule", step_rule,
      "share (default: every block contributing >= --step-share of the peak) or single-block");
  CLI::Option* share_opt = scan->add_option(
      "--step-share", step_share, "share rule: contribution >= X x |peak| (server default 0.1)");
  scan_in.AddSubmission(scan);

  // ---- mechanism jobs (paper section 3) ----
  // ffn-quadratic
  CLI::App* ffnq = app.add_subcommand(
      "ffn-quadratic", "||U_k||_F and the spectrum of S_k of every MLP block (paper eq. 16-19)");
  InputFlags ffnq_in;
  ffnq_in.Add(ffnq, false);
  std::string ffnq_blocks;
  int ffnq_top = 0, ffnq_sample = 0, ffnq_neig = 0, ffnq_rows = 0;
  double ffnq_factor = 0;
  ffnq->add_option("--blocks", ffnq_blocks, "MLP blocks (even numbers), comma-separated (default all)");
  CLI::Option* ffnq_top_opt =
      ffnq->add_option("--top-channels", ffnq_top, "Top channels per block (default: > 10x median)");
  CLI::Option* ffnq_factor_opt =
      ffnq->add_option("--outlier-factor", ffnq_factor, "Outlier: ||U_k|| > X x median (default 10)");
  CLI::Option* ffnq_sample_opt =
      ffnq->add_option("--sample-channels", ffnq_sample, "Ordinary channels sampled (default 4)");
  CLI::Option* ffnq_neig_opt =
      ffnq->add_option("--eigenvalues", ffnq_neig, "Eigenvalues per channel (default 10)");
  CLI::Option* ffnq_rows_opt =
      ffnq->add_option("--top-rows", ffnq_rows, "Rows by |W_down[k,i]| per top channel (default 8)");
  // silu-regime
  CLI::App* silu = app.add_subcommand(
      "silu-regime", "cos(x, SiLU(x)) and norm ratio per token in MLP blocks (paper Fig. 2)");
  InputFlags silu_in;
  silu_in.Add(silu, true);
  std::string silu_blocks;
  int silu_channel = 0;
  silu->add_option("--blocks", silu_blocks, "MLP blocks (default: detected step-up/down blocks)");
  CLI::Option* silu_ch_opt =
      silu->add_option("--channel", silu_channel, "Channel k of the quadratic approximation");
  // vo-circuit
  CLI::App* vo = app.add_subcommand(
      "vo-circuit", "Alignment of W_VO h~ with s* at position 0 (paper eq. 22)");
  InputFlags vo_in;
  vo_in.Add(vo, false);
  std::string vo_tokens;
  int vo_sample = 0, vo_block = 0;
  vo->add_option("--tokens", vo_tokens, "Token ids placed at position 0, comma-separated");
  CLI::Option* vo_sample_opt =
      vo->add_option("--vocab-sample", vo_sample, "Vocabulary sample (default 256)");
  CLI::Option* vo_block_opt =
      vo->add_option("--step-up-block", vo_block, "MLP step-up block of s* (default detected)");
  // activations
  CLI::App* acts = app.add_subcommand(
      "activations", "Hook tensors on demand, sliced (like run_with_cache)");
  InputFlags acts_in;
  acts_in.Add(acts, true);
  std::vector<std::string> act_hooks;
  std::string act_seqs, act_pos, act_ch, act_heads;
  acts->add_option("--hook", act_hooks, "Hook name, e.g. blocks.1.hook_resid_post (repeatable)")
      ->required()
      ->allow_extra_args(false);
  acts->add_option("--sequences", act_seqs, "Sequence indices (default all)");
  acts->add_option("--positions", act_pos, "Positions (default all)");
  acts->add_option("--channels", act_ch, "Channels / d_head / key positions (default all)");
  acts->add_option("--heads", act_heads, "Heads of per-head hooks (default all)");

  // watch
  CLI::App* watch = app.add_subcommand("watch", "Follow a job's events and show its result");
  std::string watch_id;
  int64_t after_seq = 0;
  bool watch_events = false;
  watch->add_option("id", watch_id, "Job id")->required();
  watch->add_option("--after-seq", after_seq, "Replay only events after this seq");
  watch->add_flag("--events", watch_events, "With --json: print every event as a JSON line");

  // get
  CLI::App* get = app.add_subcommand("get", "Show a job (and its results once completed)");
  std::string get_id;
  bool no_results = false;
  get->add_option("id", get_id, "Job id")->required();
  get->add_flag("--no-results", no_results, "Do not fetch result records");
  bool all_inputs = false;
  get->add_flag("--all-inputs", all_inputs, "Show every input sequence (default: the first 8)");

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

  // queue
  CLI::App* queue = app.add_subcommand(
      "queue", "Your queued and running jobs with their positions, and the queue's counts (no names)");

  // cancel
  CLI::App* cancel = app.add_subcommand("cancel", "Cancel a job, or all of yours (--all-mine)");
  std::string cancel_id;
  bool cancel_all_mine = false;
  CLI::Option* cancel_id_opt = cancel->add_option("id", cancel_id, "Job id");
  CLI::Option* cancel_all_opt = cancel->add_flag(
      "--all-mine", cancel_all_mine, "Cancel every queued or running job of yours (admins too: only yours)");
  cancel_id_opt->excludes(cancel_all_opt);
  cancel->require_option(1);

  // models
  CLI::App* models = app.add_subcommand("models", "List the server's model catalog and corpora");
  CLI::App* models_clear = models->add_subcommand(
      "clear", "Admin: clear a model's unavailable mark (after a checkpoint error)");
  std::string clear_model;
  models_clear->add_option("model", clear_model, "Catalog model name")->required();

  // sinks
  CLI::App* sinks = app.add_subcommand(
      "sinks", "Attention-sink scan: sink ratio per layer and head (paper eq. 27-28)");
  InputFlags sinks_in;
  sinks_in.Add(sinks, true);
  int window = 0;
  double epsilon = 0;
  bool windowed = false;
  std::string sinks_layers;
  CLI::Option* window_opt =
      sinks->add_option("-T,--window", window, "Tokens per sequence T (server default 64)");
  sinks->add_flag("--windowed", windowed, "Split long sequences into windows of T");
  CLI::Option* eps_opt =
      sinks->add_option("--epsilon", epsilon, "Sink-head threshold (server default 0.3)");
  sinks->add_option("--layers", sinks_layers, "Layers, comma-separated (default all)");

  // first-token-probe
  CLI::App* probe = app.add_subcommand(
      "first-token-probe",
      "Which tokens become spike tokens at position 0 (paper Table 2, eq. 22)");
  InputFlags probe_in;
  probe_in.Add(probe, false);
  std::string probe_tokens, probe_prefix;
  int range_begin = 0, range_end = 0, batch_size = 0, max_exceptions = 0;
  double probe_abs = 0, probe_rel = 0;
  probe->add_option("--tokens", probe_tokens, "Token ids probed, comma-separated (default: a range)");
  CLI::Option* rb_opt = probe->add_option("--range-begin", range_begin, "First id of the range (default 0)");
  CLI::Option* re_opt =
      probe->add_option("--range-end", range_end, "End of the range, exclusive (default vocab size)");
  probe->add_option("--prefix", probe_prefix, "Control prefix ids (default: BOS)");
  CLI::Option* pabs_opt = probe->add_option("--abs-threshold", probe_abs, "Spike if |h| > X (default 100)");
  CLI::Option* prel_opt =
      probe->add_option("--rel-threshold", probe_rel, "... and |h| > X * median|h| (default 1000)");
  CLI::Option* bs_opt =
      probe->add_option("--batch-size", batch_size, "Tokens per forward pass (default 512)");
  CLI::Option* mx_opt = probe->add_option("--max-exceptions", max_exceptions,
                                          "Exceptions listed (default 256)");

  // spike-similarity
  CLI::App* similarity = app.add_subcommand(
      "spike-similarity", "Cosine of spike tokens around the step-up block (paper Fig. 5, eq. 25)");
  InputFlags sim_in;
  sim_in.Add(similarity, true);
  double sim_abs = 0, sim_rel = 0, sim_step = 0;
  int step_up_block = 0;
  CLI::Option* sabs_opt = similarity->add_option("--abs-threshold", sim_abs, "Spike if |h| > X (default 100)");
  CLI::Option* srel_opt =
      similarity->add_option("--rel-threshold", sim_rel, "... and |h| > X * median|h| (default 1000)");
  CLI::Option* sstep_opt =
      similarity->add_option("--step-fraction", sim_step, "Step-up block rule (default 0.5)");
  CLI::Option* sblock_opt = similarity->add_option("--step-up-block", step_up_block,
                                                   "Paper block to use (default: detected)");

  // self-attention-profile
  CLI::App* selfattn = app.add_subcommand(
      "self-attention-profile",
      "A[t,t] of first, delimiter and other tokens in early layers (paper section 3.1.3)");
  InputFlags sa_in;
  sa_in.Add(selfattn, true);
  std::string sa_layers, delimiter_ids;
  std::vector<std::string> delimiters;
  selfattn->add_option("--layers", sa_layers, "Layers (default: up to the step-up block's layer)");
  selfattn->add_option("--delimiter-ids", delimiter_ids, "Delimiter token ids, comma-separated");
  selfattn->add_option("--delimiter", delimiters,
                       "Delimiter as text, C escapes allowed: '.' or '\\n' (repeatable; models "
                       "with a tokenizer)")
      ->allow_extra_args(false);

  // perplexity
  CLI::App* perplexity = app.add_subcommand(
      "perplexity", "Perplexity of a catalog corpus or of the given text / ids, per chunk");
  InputFlags ppl_in;
  ppl_in.Add(perplexity, true);
  EvalFlags ppl_eval;
  ppl_eval.Add(perplexity);

  // profile (the paper's table row; --compare for several models)
  CLI::App* profile = app.add_subcommand(
      "profile",
      "The paper's table row (Tables 3-8): perplexity, sink ratio, spike, step-up blocks in one "
      "pass over a corpus; --compare adds rows for more models");
  InputFlags prof_in;
  prof_in.Add(profile, true);
  EvalFlags prof_eval;
  prof_eval.Add(profile);
  int prof_window = 0;
  double prof_eps = 0, prof_abs = 0, prof_rel = 0, prof_share = 0;
  std::string prof_layers, prof_rule;
  std::vector<std::string> prof_compare;
  CLI::Option* pwin_opt = profile->add_option(
      "--sink-window", prof_window, "Sink window T: tokens at the start of every chunk (default 64)");
  CLI::Option* peps_opt =
      profile->add_option("--epsilon", prof_eps, "Sink-head threshold (default 0.3)");
  profile->add_option("--sink-layers", prof_layers, "Layers of the sink ratio (default: all)");
  CLI::Option* pabs2_opt =
      profile->add_option("--abs-threshold", prof_abs, "Massive if |h| > X (default 100)");
  CLI::Option* prel2_opt = profile->add_option("--rel-threshold", prof_rel,
                                               "... and |h| > X * median|h| (default 1000)");
  profile->add_option("--step-rule", prof_rule, "share (default) or single-block");
  CLI::Option* pshare_opt =
      profile->add_option("--step-share", prof_share, "Step-up share of the peak (default 0.1)");
  profile
      ->add_option("--compare", prof_compare,
                   "Another catalog model, profiled after --model on the same corpus with the "
                   "same parameters (repeatable; one row each)")
      ->allow_extra_args(false);

  // train (issue 26): a training run as a job
  CLI::App* train = app.add_subcommand(
      "train",
      "Train a decoder on a catalog corpus (bytes or a catalog tokenizer) as a job; its checkpoints become your "
      "models RUN@STEP");
  std::string train_config, train_corpus, train_name, train_model, train_request_id, train_precision,
      train_tokenizer;
  int64_t train_steps = 0, train_batch = 0, train_seq = 0, train_warmup = 0, train_eval = 0,
          train_ckpt = 0, train_log = 0;
  uint64_t train_seed = 0;
  double train_lr = 0;
  bool train_detach = false, train_events = false;
  train->add_option("--config", train_config,
                    "JSON file: a config.json object, or {\"model\": {config.json keys}, \"recipe\": "
                    "{TrainRecipe fields}} as examples/train/bytelm-tiny.json");
  train->add_option("--corpus", train_corpus, "Catalog corpus (see 'sinkscope models')")->required();
  train->add_option("--name", train_name, "Run name: checkpoints are models NAME@STEP")->required();
  train->add_option("-m,--model", train_model, "Start from this catalog model's weights (format hf)");
  train->add_option("--tokenizer", train_tokenizer,
                    "Read the corpus through this catalog model's tokenizer (default: the -m model's, else bytes)");
  CLI::Option* tsteps = train->add_option("--steps", train_steps, "Optimiser updates");
  CLI::Option* tbatch = train->add_option("--batch-size", train_batch, "Sequences per update");
  CLI::Option* tseq = train->add_option("--seq-len", train_seq, "Tokens per sequence");
  CLI::Option* tseed = train->add_option("--seed", train_seed, "Init and data order");
  CLI::Option* tlr = train->add_option("--lr", train_lr, "Peak learning rate");
  CLI::Option* twarm = train->add_option("--warmup-steps", train_warmup, "Linear warmup updates");
  CLI::Option* teval = train->add_option("--eval-every", train_eval, "Held-out loss every N updates");
  CLI::Option* tckpt = train->add_option("--checkpoint-every", train_ckpt, "Checkpoint every N updates");
  CLI::Option* tlog = train->add_option("--log-every", train_log, "A progress record every N updates");
  std::vector<std::string> train_no_decay;
  train->add_option("--no-weight-decay", train_no_decay,
                    "Tensors whose name contains this get no weight decay (repeatable; e.g. embed_tokens)");
  train->add_option("--precision", train_precision,
                    "float32 (default) or bfloat16: mixed precision (bf16 matmuls, float32 weights and optimiser)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  int64_t train_profile_every = 0, train_profile_budget = 0;
  CLI::Option* tprof = train->add_option(
      "--profile-every", train_profile_every,
      "Every N-th checkpoint profiles itself on the held-out split (the profile row)");
  CLI::Option* tprof_budget = train->add_option("--profile-token-budget", train_profile_budget,
                                                "Held-out tokens of each self-profile (default 8192)");
  train->add_option("--request-id", train_request_id, "Idempotency key: resubmitting returns the job");
  train->add_flag("--detach", train_detach, "Print the job id and exit once queued");
  train->add_flag("--events", train_events, "With --json: print every event as a JSON line");

  // constant-substitution
  CLI::App* substitution = app.add_subcommand(
      "constant-substitution",
      "Replace massive activations by a constant (mean / constant / zero), measure PPL and KL "
      "(paper finding 6)");
  InputFlags sub_in;
  sub_in.Add(substitution, true);
  EvalFlags sub_eval;
  sub_eval.Add(substitution);
  SubstitutionFlags sub_flags;
  sub_flags.Add(substitution);
  ExperimentFlags sub_exp;
  sub_exp.Add(substitution);
  AblationFlags sub_also;  // composed after the substitution
  bool sub_also_ablate = false;
  substitution->add_flag("--also-ablate", sub_also_ablate,
                         "Compose: also ablate sinks (see --ablate-method/--ablate-heads)");
  sub_also.Add(substitution, "ablate-");

  // sink-ablation
  CLI::App* ablation = app.add_subcommand(
      "sink-ablation",
      "Remove attention to the sink in chosen heads (mask / zero-prob / zero-value), measure PPL "
      "and KL (paper finding 6)");
  InputFlags abl_in;
  abl_in.Add(ablation, true);
  EvalFlags abl_eval;
  abl_eval.Add(ablation);
  AblationFlags abl_flags;
  abl_flags.Add(ablation);
  ExperimentFlags abl_exp;
  abl_exp.Add(ablation);
  std::string abl_also_mode;
  int abl_also_block = 0;
  ablation->add_option("--also-substitute", abl_also_mode,
                       "Compose: also substitute massive activations first (mean, constant or zero)");
  ablation->add_option("--substitute-block", abl_also_block,
                       "Block of --also-substitute (default: detected step-up block)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // "A subcommand is required" for `sinkscope bogus`: name the word instead.
    if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr && app.get_subcommands().empty()) {
      for (const std::string& word : app.remaining()) {
        if (!word.empty() && word[0] != '-') {
          std::string names;
          for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
            absl::StrAppend(&names, names.empty() ? "" : ", ", sub->get_name());
          }
          return Usage(absl::StrCat("unknown command '", word.substr(0, 64), "' (commands: ",
                                    names, ")"));
        }
      }
    }
    int rc = app.exit(e);
    return rc == 0 ? 0 : kUsageError;
  }

  // Strings go into protobuf string fields and metadata: check them here, so
  // that a bad byte is a usage error naming the flag, not an INTERNAL error
  // (invalid UTF-8) or a crash (invalid metadata).
  std::vector<const CLI::App*> scopes = {&app};
  for (const CLI::App* sub : app.get_subcommands()) scopes.push_back(sub);
  for (const CLI::App* scope : scopes) {
    for (const CLI::Option* opt : scope->get_options()) {
      for (const std::string& value : opt->results()) {
        if (!sinkscope::client::IsValidUtf8(value)) {
          return Usage(absl::StrCat(opt->get_name(), ": the value is not valid UTF-8"));
        }
      }
    }
  }
  if (std::string error = sinkscope::client::CheckGlobalOptions(global); !error.empty()) {
    return Usage(error);
  }

  if (scan->parsed()) {
    // Checked before Fill: a missing input is reported before a bad --dtype.
    if (!scan_in.has_sequences()) return Usage("scan needs --text, --ids or --file");
    sinkscope::client::ScanOptions options;
    if (std::string error = scan_in.Fill(scan, &options); !error.empty()) return Usage(error);
    v1::JobRequest* request = options.request.mutable_request();
    v1::ActivationScanRequest* params = request->mutable_scan();
    if (top_k_opt->count() > 0) params->set_top_k(top_k);
    if (abs_opt->count() > 0) params->set_abs_threshold(abs_threshold);
    if (rel_opt->count() > 0) params->set_rel_threshold(rel_threshold);
    if (step_opt->count() > 0) params->set_step_fraction(step_fraction);
    if (rule_opt->count() > 0) params->set_step_rule(step_rule);
    if (share_opt->count() > 0) params->set_step_share(step_share);
    return sinkscope::client::RunScan(global, options);
  }
  if (watch->parsed()) {
    sinkscope::client::WatchOptions watch_options;
    watch_options.events = watch_events;
    watch_options.after_seq = after_seq;
    return sinkscope::client::RunWatch(global, watch_id, watch_options);
  }
  if (get->parsed()) return sinkscope::client::RunGet(global, get_id, !no_results, all_inputs);
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
  if (queue->parsed()) return sinkscope::client::RunQueue(global);
  if (cancel->parsed() && cancel_all_mine) return sinkscope::client::RunCancelAllMine(global);
  if (cancel->parsed()) return sinkscope::client::RunCancel(global, cancel_id);
  if (models_clear->parsed()) return sinkscope::client::RunClearModel(global, clear_model);
  if (models->parsed()) return sinkscope::client::RunModels(global);

  sinkscope::client::ScanOptions options;
  v1::JobRequest* request = options.request.mutable_request();
  auto int_list = [](const std::string& flag, const std::string& csv,
                     google::protobuf::RepeatedField<int32_t>* out) -> std::string {
    if (csv.empty()) return "";
    auto v = sinkscope::client::ParseIntList(csv);
    if (!v.ok()) return ListError(flag, v.status());
    out->Add(v->begin(), v->end());
    return "";
  };
  std::string error;
  if (ffnq->parsed()) {
    if (!(error = ffnq_in.Fill(ffnq, &options)).empty()) return Usage(error);
    v1::FfnQuadraticRequest* p = request->mutable_ffn_quadratic();
    if (!(error = int_list("--blocks", ffnq_blocks, p->mutable_blocks())).empty()) return Usage(error);
    if (ffnq_top_opt->count() > 0) p->set_top_channels(ffnq_top);
    if (ffnq_factor_opt->count() > 0) p->set_outlier_factor(ffnq_factor);
    if (ffnq_sample_opt->count() > 0) p->set_sample_channels(ffnq_sample);
    if (ffnq_neig_opt->count() > 0) p->set_n_eigenvalues(ffnq_neig);
    if (ffnq_rows_opt->count() > 0) p->set_top_rows(ffnq_rows);
    return sinkscope::client::RunScan(global, options);
  }
  if (silu->parsed()) {
    if (!(error = silu_in.Fill(silu, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0) return Usage("silu-regime needs --text, --ids or --file");
    v1::SiluRegimeRequest* p = request->mutable_silu_regime();
    if (!(error = int_list("--blocks", silu_blocks, p->mutable_blocks())).empty()) return Usage(error);
    if (silu_ch_opt->count() > 0) p->set_channel(silu_channel);
    return sinkscope::client::RunScan(global, options);
  }
  if (vo->parsed()) {
    if (!(error = vo_in.Fill(vo, &options)).empty()) return Usage(error);
    v1::VoCircuitRequest* p = request->mutable_vo_circuit();
    if (!(error = int_list("--tokens", vo_tokens, p->mutable_token_ids())).empty()) return Usage(error);
    if (vo_sample_opt->count() > 0) p->set_vocab_sample(vo_sample);
    if (vo_block_opt->count() > 0) p->set_step_up_block(vo_block);
    return sinkscope::client::RunScan(global, options);
  }
  if (acts->parsed()) {
    if (!(error = acts_in.Fill(acts, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0) return Usage("activations needs --text, --ids or --file");
    v1::ActivationsRequest* p = request->mutable_activations();
    for (const std::string& h : act_hooks) p->add_hooks(h);
    if (!(error = int_list("--sequences", act_seqs, p->mutable_sequences())).empty()) return Usage(error);
    if (!(error = int_list("--positions", act_pos, p->mutable_positions())).empty()) return Usage(error);
    if (!(error = int_list("--channels", act_ch, p->mutable_channels())).empty()) return Usage(error);
    if (!(error = int_list("--heads", act_heads, p->mutable_heads())).empty()) return Usage(error);
    return sinkscope::client::RunScan(global, options);
  }
  if (sinks->parsed()) {
    if (!(error = sinks_in.Fill(sinks, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0) return Usage("sinks needs --text, --ids or --file");
    v1::SinksRequest* p = request->mutable_sinks();
    if (window_opt->count() > 0) p->set_window(window);
    p->set_windowed(windowed);
    if (eps_opt->count() > 0) p->set_epsilon(epsilon);
    if (!(error = int_list("--layers", sinks_layers, p->mutable_layers())).empty()) return Usage(error);
    return sinkscope::client::RunScan(global, options);
  }
  if (probe->parsed()) {
    if (!(error = probe_in.Fill(probe, &options)).empty()) return Usage(error);
    v1::FirstTokenProbeRequest* p = request->mutable_first_token_probe();
    if (!(error = int_list("--tokens", probe_tokens, p->mutable_token_ids())).empty()) return Usage(error);
    if (!(error = int_list("--prefix", probe_prefix, p->mutable_prefix())).empty()) return Usage(error);
    if (rb_opt->count() > 0) p->set_range_begin(range_begin);
    if (re_opt->count() > 0) p->set_range_end(range_end);
    if (pabs_opt->count() > 0) p->set_abs_threshold(probe_abs);
    if (prel_opt->count() > 0) p->set_rel_threshold(probe_rel);
    if (bs_opt->count() > 0) p->set_batch_size(batch_size);
    if (mx_opt->count() > 0) p->set_max_listed_exceptions(max_exceptions);
    return sinkscope::client::RunScan(global, options);
  }
  if (similarity->parsed()) {
    if (!(error = sim_in.Fill(similarity, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0) return Usage("spike-similarity needs --text, --ids or --file");
    v1::SpikeSimilarityRequest* p = request->mutable_spike_similarity();
    if (sabs_opt->count() > 0) p->set_abs_threshold(sim_abs);
    if (srel_opt->count() > 0) p->set_rel_threshold(sim_rel);
    if (sstep_opt->count() > 0) p->set_step_fraction(sim_step);
    // Sent as given: the server refuses a block the model lacks (e.g. -1).
    if (sblock_opt->count() > 0) p->set_step_up_block(step_up_block);
    return sinkscope::client::RunScan(global, options);
  }
  if (selfattn->parsed()) {
    if (!(error = sa_in.Fill(selfattn, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0) {
      return Usage("self-attention-profile needs --text, --ids or --file");
    }
    v1::SelfAttentionProfileRequest* p = request->mutable_self_attention_profile();
    if (!(error = int_list("--layers", sa_layers, p->mutable_layers())).empty()) return Usage(error);
    if (!(error = int_list("--delimiter-ids", delimiter_ids, p->mutable_delimiter_ids())).empty()) {
      return Usage(error);
    }
    for (const std::string& d : delimiters) {
      auto text = sinkscope::client::Unescape(d);
      if (!text.ok()) return Usage(ListError("--delimiter", text.status()));
      if (!sinkscope::client::IsValidUtf8(*text)) {
        return Usage("--delimiter: the text (after escapes) is not valid UTF-8");
      }
      p->add_delimiters(*text);
    }
    return sinkscope::client::RunScan(global, options);
  }
  if (perplexity->parsed()) {
    if (!(error = ppl_in.Fill(perplexity, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0 && ppl_eval.corpus.empty()) {
      return Usage("perplexity needs --corpus, or --text, --ids or --file");
    }
    ppl_eval.Fill(request->mutable_perplexity()->mutable_eval());
    return sinkscope::client::RunScan(global, options);
  }
  if (profile->parsed()) {
    if (!(error = prof_in.Fill(profile, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0 && prof_eval.corpus.empty()) {
      return Usage("profile needs --corpus, or --text, --ids or --file");
    }
    v1::ProfileRequest* p = request->mutable_profile();
    prof_eval.Fill(p->mutable_eval());
    if (pwin_opt->count() > 0) p->set_sink_window(prof_window);
    if (peps_opt->count() > 0) p->set_epsilon(prof_eps);
    if (!(error = int_list("--sink-layers", prof_layers, p->mutable_sink_layers())).empty()) {
      return Usage(error);
    }
    if (pabs2_opt->count() > 0) p->mutable_thresholds()->set_abs_threshold(prof_abs);
    if (prel2_opt->count() > 0) p->mutable_thresholds()->set_rel_threshold(prof_rel);
    if (!prof_rule.empty()) p->mutable_thresholds()->set_step_rule(prof_rule);
    if (pshare_opt->count() > 0) p->mutable_thresholds()->set_step_share(prof_share);
    for (const std::string& m : prof_compare) p->add_compare_models(m);
    return sinkscope::client::RunScan(global, options);
  }
  if (train->parsed()) {
    options.detach = train_detach;
    options.watch.events = train_events;
    options.request.set_client_request_id(train_request_id);
    request->set_model(train_model);
    v1::TrainRequest* t = request->mutable_train();
    t->set_corpus(train_corpus);
    t->set_run_name(train_name);
    t->set_tokenizer(train_tokenizer);
    if (!train_config.empty()) {
      std::string text;
      if (!ReadTextFile(train_config, &text)) return Usage(absl::StrCat("--config: cannot read ", train_config));
      nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded() || !j.is_object()) return Usage(absl::StrCat("--config ", train_config, ": not a JSON object"));
      if (j.contains("model") || j.contains("recipe")) {
        for (const auto& item : j.items()) {
          if (item.key() != "model" && item.key() != "recipe") {
            return Usage(absl::StrCat("--config ", train_config, ": unknown field '", item.key(),
                                      "' (known: model, recipe)"));
          }
        }
        if (j.contains("model")) t->set_config_json(j["model"].dump());
        if (j.contains("recipe")) {
          auto parsed = google::protobuf::util::JsonStringToMessage(j["recipe"].dump(), t->mutable_recipe());
          if (!parsed.ok()) {
            return Usage(absl::StrCat("--config ", train_config, ": recipe: ", parsed.ToString()));
          }
        }
      } else {
        t->set_config_json(text);
      }
    } else if (train_model.empty()) {
      return Usage("train needs --config (the architecture) or --model (a catalog model to start from)");
    }
    v1::TrainRecipe* r = t->mutable_recipe();
    if (tsteps->count() > 0) r->set_steps(train_steps);
    if (tbatch->count() > 0) r->set_batch_size(train_batch);
    if (tseq->count() > 0) r->set_seq_len(train_seq);
    if (tseed->count() > 0) r->set_seed(train_seed);
    if (tlr->count() > 0) r->set_lr(train_lr);
    if (twarm->count() > 0) r->set_warmup_steps(train_warmup);
    if (teval->count() > 0) r->set_eval_every(train_eval);
    if (tckpt->count() > 0) r->set_checkpoint_every(train_ckpt);
    if (!train_precision.empty()) r->set_precision(train_precision);
    for (const std::string& n : train_no_decay) r->add_no_weight_decay(n);
    if (tlog->count() > 0) t->set_log_every(train_log);
    if (tprof->count() > 0) t->set_profile_every(train_profile_every);
    if (tprof_budget->count() > 0) t->mutable_profile()->mutable_eval()->set_token_budget(train_profile_budget);
    return sinkscope::client::RunScan(global, options);
  }
  if (substitution->parsed()) {
    if (!(error = sub_in.Fill(substitution, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0 && sub_eval.corpus.empty()) {
      return Usage("constant-substitution needs --corpus, or --text, --ids or --file");
    }
    v1::InterventionRequest* p = request->mutable_constant_substitution();
    sub_eval.Fill(p->mutable_eval());
    if (!(error = sub_flags.Fill(p->add_interventions()->mutable_substitution())).empty()) {
      return Usage(error);
    }
    if (sub_also_ablate &&
        !(error = sub_also.Fill(p->add_interventions()->mutable_ablation(), "ablate-")).empty()) {
      return Usage(error);
    }
    if (!(error = sub_exp.Fill(p)).empty()) return Usage(error);
    return sinkscope::client::RunScan(global, options);
  }
  if (ablation->parsed()) {
    if (!(error = abl_in.Fill(ablation, &options)).empty()) return Usage(error);
    if (request->sequences_size() == 0 && abl_eval.corpus.empty()) {
      return Usage("sink-ablation needs --corpus, or --text, --ids or --file");
    }
    v1::InterventionRequest* p = request->mutable_sink_ablation();
    abl_eval.Fill(p->mutable_eval());
    if (!abl_also_mode.empty()) {
      v1::ConstantSubstitution* s = p->add_interventions()->mutable_substitution();
      s->set_mode(abl_also_mode);
      s->set_block(abl_also_block);
    }
    if (!(error = abl_flags.Fill(p->add_interventions()->mutable_ablation())).empty()) {
      return Usage(error);
    }
    if (!(error = abl_exp.Fill(p)).empty()) return Usage(error);
    return sinkscope::client::RunScan(global, options);
  }
  return Usage("no command");
}
