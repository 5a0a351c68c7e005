#include "worker/train_job.h"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "common/train_recipe_proto.h"
#include "worker/engine/model.h"
#include "worker/engine/tokenizer.h"
#include "worker/engine/train.h"
#include "worker/job_events.h"
#include "worker/profile_job.h"

namespace sinkscope {
namespace worker {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(what, " cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Writes `text` to `path` through a temporary file and a rename.
absl::Status WriteAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

/// Steps N of run_dir/step-N/ holding a trainer_state.json, ascending.
std::vector<int64_t> CheckpointSteps(const std::string& run_dir) {
  std::vector<int64_t> steps;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(run_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() < 6 || name.compare(0, 5, "step-") != 0 || name.size() > 5 + 18 ||
        name.find_first_not_of("0123456789", 5) != std::string::npos) {
      continue;
    }
    if (!fs::is_regular_file(e.path() / "trainer_state.json", ec)) continue;
    steps.push_back(std::stoll(name.substr(5)));
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

}  // namespace

std::string ByteLevelTokenizerJson(int64_t bos_id) {
  // GPT-2's bytes_to_unicode: printable bytes map to themselves, the others
  // to U+0100 + n in byte order.
  std::vector<int> code(256, -1);
  for (int b = 0; b < 256; ++b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) code[b] = b;
  }
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (code[b] < 0) code[b] = 256 + n++;
  }
  auto utf8 = [](int cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[utf8(code[b])] = b;
  nlohmann::ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = nlohmann::ordered_json::array();
  if (bos_id >= 0) {
    j["added_tokens"].push_back({{"id", bos_id}, {"content", "<bos>"}, {"single_word", false},
                                 {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                                 {"special", true}});
  }
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                        {"use_regex", false}};
  if (bos_id >= 0) {
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                    {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                  {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {bos_id}}, {"tokens", {"<bos>"}}}}}}};
  } else {
    j["post_processor"] = nullptr;
  }
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                  {"use_regex", true}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                {"vocab", vocab}, {"merges", nlohmann::ordered_json::array()}};
  return j.dump(1);
}

/// The run's token stream: the corpus `text` through the catalog tokenizer the
/// server chose (run.corpus().tokenizer_path(); no BOS), else its bytes. The
/// run keeps that tokenizer as *run_tokenizer (RUN/tokenizer.json, .model or
/// .bin; a byte-level tokenizer.json for bytes): RUN@STEP reads text with it.
absl::StatusOr<std::vector<int64_t>> TrainStream(const v1::RunJobRequest& run, const TrainJob& job,
                                                 const std::string& text, std::string* run_tokenizer) {
  std::error_code ec;
  const std::string& tok_path = run.corpus().tokenizer_path();
  if (tok_path.empty()) {
    std::vector<int64_t> stream(text.size());
    for (size_t i = 0; i < text.size(); ++i) stream[i] = static_cast<unsigned char>(text[i]);
    *run_tokenizer = job.out_dir + "/tokenizer.json";
    if (!fs::exists(*run_tokenizer, ec)) {
      RETURN_IF_ERROR(WriteAtomically(*run_tokenizer, ByteLevelTokenizerJson(job.recipe.bos_id)));
    }
    return stream;
  }
  int64_t d_vocab = job.config.d_vocab;
  if (!job.init_from.empty()) {
    ASSIGN_OR_RETURN(std::string cfg, ReadFile(job.init_from + "/config.json", "the starting model's config.json"));
    ASSIGN_OR_RETURN(ModelConfig c, ParseHfConfig(cfg, "config.json"));
    d_vocab = c.d_vocab;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(tok_path, d_vocab);
  if (!tok.ok()) return Annotate(tok.status(), "train: the corpus tokenizer");
  ASSIGN_OR_RETURN(std::vector<int64_t> stream, (*tok)->Encode(text, /*add_bos=*/false));
  const std::string ext = fs::path(tok_path).extension().string();
  *run_tokenizer = job.out_dir + "/tokenizer" + (ext == ".json" || ext == ".model" ? ext : ".bin");
  if (!fs::exists(*run_tokenizer, ec)) {
    ASSIGN_OR_RETURN(std::string bytes, ReadFile(tok_path, "the corpus tokenizer"));
    RETURN_IF_ERROR(WriteAtomically(*run_tokenizer, bytes));
  }
  return stream;
}

/// The last `n_held` tokens of `stream` as training reads sequences: with a
/// BOS id (>= 0), chunks of BOS + chunk_length - 1 tokens (a shorter tail
/// dropped), as train.h's own profiles; else the tokens as they are.
std::vector<int64_t> HeldoutChunks(const std::vector<int64_t>& stream, int64_t n_held, int64_t bos_id,
                                   int64_t chunk_length) {
  const int64_t n = static_cast<int64_t>(stream.size());
  if (bos_id < 0) return std::vector<int64_t>(stream.end() - n_held, stream.end());
  std::vector<int64_t> held;
  const int64_t body = chunk_length - 1;
  for (int64_t at = n - n_held; at + body <= n; at += body) {
    held.push_back(bos_id);
    held.insert(held.end(), stream.begin() + at, stream.begin() + at + body);
  }
  return held;
}

absl::Status RunTrainJob(ModelCache& cache, const WorkerOptions& options,
                         const v1::RunJobRequest& run, const EventSink& sink,
                         const std::atomic<bool>* cancel) {
  const v1::TrainRequest& req = run.request().train();
  const std::string& run_name = req.run_name();
  if (run.run_dir().empty()) return absl::InternalError("train: the server sent no run directory");
  TrainJob job;
  job.recipe = TrainRecipeFromProto(req.recipe());
  job.cancel = cancel;
  job.out_dir = run.run_dir();
  ASSIGN_OR_RETURN(job.device, ParseDevice(options.device));
  if (!run.model().path().empty()) {
    job.init_from = run.model().path();
  } else {
    ASSIGN_OR_RETURN(job.config, ParseHfConfig(req.config_json(), "train.config_json"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(run.corpus().path(), "corpus " + run.corpus().name()));
  std::error_code ec;
  fs::create_directories(job.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("train: cannot create the run directory: ", ec.message()));
  std::string run_tokenizer;
  ASSIGN_OR_RETURN(std::vector<int64_t> stream, TrainStream(run, job, text, &run_tokenizer));
  text.clear();

  bool gone = false;
  auto emit = [&](const v1::WorkerEvent& e) {
    if (!gone && !sink(e)) gone = true;
    return !gone;
  };
  auto checkpoint_name = [&](int64_t step) { return absl::StrCat(run_name, "@", step); };

  // A re-queued job: resume from the run's latest checkpoint and replay the
  // curve up to it.
  int64_t start_step = 0;
  if (absl::StatusOr<std::string> latest = LatestCheckpoint(job.out_dir); latest.ok()) {
    job.resume_from = *latest;
    job.init_from.clear();
    ASSIGN_OR_RETURN(std::string state_text, ReadFile(*latest + "/trainer_state.json", "trainer state"));
    nlohmann::json state = nlohmann::json::parse(state_text, nullptr, false);
    std::vector<double> losses;
    if (!state.is_discarded() && state.contains("losses") && state["losses"].is_array()) {
      losses = state["losses"].get<std::vector<double>>();
    }
    start_step = state.value("step", int64_t{0});
    std::vector<int64_t> written = CheckpointSteps(job.out_dir);
    for (size_t i = 0; i < losses.size() && static_cast<int64_t>(i) < start_step; ++i) {
      v1::WorkerEvent e;
      v1::TrainStep* t = e.mutable_result()->mutable_train_step();
      t->set_step(static_cast<int64_t>(i) + 1);
      t->set_steps(job.recipe.steps);
      t->set_loss(losses[i]);
      t->set_lr(LearningRateAt(job.recipe, static_cast<int64_t>(i)));
      t->set_replayed(true);
      if (std::binary_search(written.begin(), written.end(), t->step())) {
        t->set_checkpoint(checkpoint_name(t->step()));
      }
      if (!emit(e)) return absl::CancelledError("the server went away");
    }
  }

  // Self-profiles: every profile_every-th checkpoint, on the held-out split.
  const int64_t profile_every = req.has_profile_every() ? req.profile_every() : 0;
  const int64_t n_held = static_cast<int64_t>(
      std::floor(static_cast<double>(stream.size()) * job.recipe.heldout_fraction));
  int64_t n_checkpoints = static_cast<int64_t>(CheckpointSteps(job.out_dir).size());
  auto profile_checkpoint = [&](int64_t step, const std::string& dir) -> absl::Status {
    int64_t n_ctx = 0;
    {
      ASSIGN_OR_RETURN(std::string cfg_text, ReadFile(dir + "/config.json", "checkpoint config"));
      ASSIGN_OR_RETURN(ModelConfig cfg, ParseHfConfig(cfg_text, "config.json"));
      n_ctx = cfg.n_ctx;
    }
    v1::ProfileRequest params = req.profile();
    params.mutable_eval()->clear_corpus();
    if (!params.eval().has_chunk_length()) params.mutable_eval()->set_chunk_length(std::min<int64_t>(128, n_ctx));
    if (!params.eval().has_token_budget()) params.mutable_eval()->set_token_budget(8192);
    if (!params.has_sink_window()) {
      params.set_sink_window(static_cast<int32_t>(std::min<int64_t>(64, params.eval().chunk_length())));
    }
    const std::vector<int64_t> held =
        HeldoutChunks(stream, n_held, job.recipe.bos_id, params.eval().chunk_length());
    bool hit = false;
    absl::StatusOr<std::shared_ptr<CachedModel>> cached =
        cache.Get(ModelKey{checkpoint_name(step), "hf", dir, run_tokenizer, "float32"}, &hit, 0, 0);
    v1::WorkerEvent e;
    if (!cached.ok()) {
      v1::ProfileRow* row = e.mutable_result()->mutable_profile_row();
      row->set_model(checkpoint_name(step));
      row->mutable_failure()->set_code(static_cast<int32_t>(cached.status().code()));
      row->mutable_failure()->set_message(std::string(cached.status().message()).substr(0, 4096));
    } else {
      absl::StatusOr<v1::ProfileRow> row = ProfileStream(**cached, held, params, cancel);
      if (row.ok()) {
        *e.mutable_result()->mutable_profile_row() = *std::move(row);
      } else {
        if (row.status().code() == absl::StatusCode::kCancelled) return row.status();
        v1::ProfileRow* failed = e.mutable_result()->mutable_profile_row();
        failed->set_model(checkpoint_name(step));
        failed->mutable_failure()->set_code(static_cast<int32_t>(row.status().code()));
        failed->mutable_failure()->set_message(std::string(row.status().message()).substr(0, 4096));
      }
    }
    if (!emit(e)) return absl::CancelledError("the server went away");
    return absl::OkStatus();
  };

  const int64_t log_every =
      req.has_log_every() ? req.log_every() : std::max<int64_t>(1, job.recipe.steps / 100);
  const int64_t tokens_per_step = job.recipe.batch_size * job.recipe.seq_len;
  std::optional<double> last_heldout;
  double last_loss = 0;
  int64_t tokens = 0;
  double elapsed = 0;
  auto on_progress = [&](const TrainProgress& p) -> absl::Status {
    tokens = (p.step - start_step) * tokens_per_step;
    last_loss = p.loss;
    elapsed = p.elapsed_s;
    if (p.heldout_loss) last_heldout = p.heldout_loss;
    v1::WorkerEvent running;
    running.mutable_running()->set_units_done(p.step);
    running.mutable_running()->set_units_total(p.steps);
    const bool record = p.step % log_every == 0 || p.step == p.steps || p.heldout_loss.has_value() ||
                        !p.checkpoint.empty();
    if (record) {
      v1::WorkerEvent e;
      v1::TrainStep* t = e.mutable_result()->mutable_train_step();
      t->set_step(p.step);
      t->set_steps(p.steps);
      t->set_loss(p.loss);
      t->set_lr(p.lr);
      t->set_grad_norm(p.grad_norm);
      t->set_tokens_per_s(p.tokens_per_s);
      t->set_elapsed_s(p.elapsed_s);
      const int64_t done = p.step - start_step;
      t->set_eta_s(done > 0 ? p.elapsed_s / done * (p.steps - p.step) : 0);
      if (p.heldout_loss) t->set_heldout_loss(*p.heldout_loss);
      if (!p.checkpoint.empty()) t->set_checkpoint(checkpoint_name(p.step));
      t->set_tokens(tokens);
      if (!emit(e)) return absl::CancelledError("the server went away");
    }
    if (!emit(running)) return absl::CancelledError("the server went away");
    if (!p.checkpoint.empty()) {
      ++n_checkpoints;
      if (profile_every > 0 && n_held >= 2 && n_checkpoints % profile_every == 0) {
        RETURN_IF_ERROR(profile_checkpoint(p.step, p.checkpoint));
      }
    }
    if (options.test_unit_delay_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(options.test_unit_delay_ms));
    }
    return absl::OkStatus();
  };
  absl::StatusOr<TrainSummary> summary = Train(job, stream, on_progress);
  if (!summary.ok()) {
    if (gone) return absl::CancelledError("the server went away");
    return summary.status();
  }
  v1::WorkerEvent e;
  v1::TrainSummary* s = e.mutable_result()->mutable_train_summary();
  s->set_run_name(run_name);
  s->set_step(summary->step);
  s->set_resumed_from_step(summary->start_step);
  s->set_final_loss(summary->losses.empty() ? last_loss : summary->losses.back());
  if (last_heldout) s->set_final_heldout_loss(*last_heldout);
  if (!summary->last_checkpoint.empty()) s->set_last_checkpoint(checkpoint_name(summary->step));
  for (int64_t step : CheckpointSteps(job.out_dir)) s->add_checkpoints(checkpoint_name(step));
  s->set_n_params(summary->n_params);
  s->set_recipe_json(TrainRecipeJson(job.recipe));
  s->set_tokens(tokens);
  s->set_tokens_per_s(elapsed > 0 ? tokens / elapsed : 0);
  s->set_corpus(run.corpus().name());
  s->set_device(options.device);
  s->set_code_version(CodeVersion());
  if (!emit(e)) return absl::CancelledError("the server went away");
  return absl::OkStatus();
}

}  // namespace worker
}  // namespace sinkscope
