// Training runs as service jobs (issue 26) through a real sinkscope-server
// and sinkscope-worker processes: progress records and the summary, the
// checkpoints as the owner's models RUN@STEP (in analysis jobs, ListModels
// and profile comparisons RUN@*; NOT_FOUND for another user), the losses
// equal to `sinkscope-run train` on the same config and corpus, refusals at
// submission, and the resume after kill -9 of the worker or the server: the
// completing attempt's loss curve equals an uninterrupted run's, bitwise
// (CPU float32, one thread).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "service_test_util.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;

// A tiny byte-level Llama: 2 layers, d_model 32, 2 heads, vocab 257 (BOS 256).
constexpr char kTinyConfig[] =
    R"({"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 257,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
        "bos_token_id": 256, "eos_token_id": 256})";

/// Deterministic text of about `bytes` bytes (a few sentences, shuffled by an LCG).
std::string MakeCorpus(size_t bytes) {
  const char* words[] = {"the ", "king ", "of ", "a ", "sea ", "and ", "my ", "lord ", "shall ",
                         "speak ", "first ", "citizen", ".\n", ", ", "hear ", "me "};
  std::string out;
  uint64_t x = 12345;
  while (out.size() < bytes) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    out += words[(x >> 33) % 16];
  }
  return out;
}

void ReadRecipe(v1::TrainRecipe* r, int64_t steps) {
  r->set_steps(steps);
  r->set_batch_size(4);
  r->set_seq_len(32);
  r->set_seed(3);
  r->set_lr(1e-2);
  r->set_warmup_steps(3);
  r->set_bos_id(256);
  r->set_heldout_fraction(0.1);
  r->set_eval_every(10);
  r->set_eval_sequences(2);
  r->set_checkpoint_every(10);
}

v1::SubmitJobRequest TrainRequest(const std::string& run, int64_t steps) {
  v1::SubmitJobRequest req;
  v1::TrainRequest* t = req.mutable_request()->mutable_train();
  t->set_config_json(kTinyConfig);
  t->set_corpus("text");
  t->set_run_name(run);
  t->set_log_every(1);
  ReadRecipe(t->mutable_recipe(), steps);
  return req;
}

grpc::Status SubmitAs(v1::AnalysisService::Stub& stub, const std::string& user,
                      const v1::SubmitJobRequest& req, v1::Job* job) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-sinkscope-user", user);
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
  return stub.SubmitJob(&ctx, req, job);
}

v1::ListModelsResponse ModelsOf(v1::AnalysisService::Stub& stub, const std::string& user) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-sinkscope-user", user);
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  v1::ListModelsResponse out;
  EXPECT_TRUE(stub.ListModels(&ctx, v1::ListModelsRequest(), &out).ok());
  return out;
}

std::vector<std::string> ModelNames(const v1::ListModelsResponse& models) {
  std::vector<std::string> out;
  for (const v1::ModelInfo& m : models.models()) out.push_back(m.name());
  return out;
}

/// Training losses of the completing attempt's TrainStep records, by step.
std::map<int64_t, double> LossCurve(const v1::Job& job) {
  std::map<int64_t, double> out;
  for (const v1::ResultRecord& r : job.results()) {
    if (r.has_train_step()) out[r.train_step().step()] = r.train_step().loss();
  }
  return out;
}

const v1::TrainSummary* SummaryOf(const v1::Job& job) {
  for (const v1::ResultRecord& r : job.results()) {
    if (r.has_train_summary()) return &r.train_summary();
  }
  return nullptr;
}

class TrainJobsTest : public ::testing::Test {
 protected:
  void StartServer(const std::string& extra_members, int n_workers = 1) {
    WriteFile(dir_.path() + "/text.txt", MakeCorpus(40000));
    WriteFile(dir_.path() + "/small.txt", MakeCorpus(100));
    const std::string catalog = absl::StrCat(
        R"({"models": [], "corpora": [{"name": "text", "path": ")", dir_.path(),
        R"(/text.txt"}, {"name": "small", "path": ")", dir_.path(), R"(/small.txt"}]})");
    server_ = std::make_unique<ServerProcess>(
        dir_.path(), TestServerConfig(dir_.path(), n_workers, catalog, extra_members));
    ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
    stub_ = server_->NewStub();
  }
  void TearDown() override {
    if (HasFailure() && server_) {
      std::fprintf(stderr, "---- server log tail ----\n%s\n", ReadTail(server_->log_path()).c_str());
    }
  }
  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::AnalysisService::Stub> stub_;
};

TEST_F(TrainJobsTest, RunStreamsProgressAndItsCheckpointsAreTheOwnersModels) {
  StartServer(R"("runs_dir": ")" + dir_.path() + R"(/runs")");
  v1::SubmitJobRequest train = TrainRequest("tiny", 30);
  // Every checkpoint profiles itself on the held-out split.
  v1::TrainRequest* t = train.mutable_request()->mutable_train();
  t->set_profile_every(1);
  t->mutable_profile()->mutable_eval()->set_token_budget(256);
  t->mutable_profile()->mutable_eval()->set_chunk_length(64);
  t->mutable_profile()->set_sink_window(32);
  v1::Job job;
  grpc::Status s = SubmitAs(*stub_, "alice", train, &job);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(job.type(), v1::JOB_TYPE_TRAIN);
  const v1::Job done = WaitTerminal(*stub_, job.id(), seconds(240));
  ASSERT_EQ(done.state(), v1::JOB_STATE_COMPLETED) << done.error().message();

  // One record per update (log_every 1), held-out losses and checkpoints at 10, 20, 30.
  std::vector<int64_t> steps, evals;
  std::vector<std::string> checkpoints;
  for (const v1::ResultRecord& r : done.results()) {
    if (!r.has_train_step()) continue;
    const v1::TrainStep& t = r.train_step();
    steps.push_back(t.step());
    EXPECT_FALSE(t.replayed());
    EXPECT_EQ(t.steps(), 30);
    EXPECT_TRUE(std::isfinite(t.loss()) && t.loss() > 0);
    EXPECT_GT(t.tokens_per_s(), 0);
    EXPECT_EQ(t.tokens(), t.step() * 4 * 32);
    if (t.has_heldout_loss()) evals.push_back(t.step());
    if (!t.checkpoint().empty()) checkpoints.push_back(t.checkpoint());
  }
  ASSERT_EQ(steps.size(), 30u);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(steps[i], i + 1);
  EXPECT_EQ(evals, (std::vector<int64_t>{10, 20, 30}));
  EXPECT_EQ(checkpoints, (std::vector<std::string>{"tiny@10", "tiny@20", "tiny@30"}));
  const v1::TrainSummary* summary = SummaryOf(done);
  ASSERT_NE(summary, nullptr);
  EXPECT_EQ(summary->step(), 30);
  EXPECT_EQ(summary->resumed_from_step(), 0);
  EXPECT_EQ(summary->last_checkpoint(), "tiny@30");
  EXPECT_EQ(summary->checkpoints_size(), 3);
  const std::map<int64_t, double> curve = LossCurve(done);
  EXPECT_LT(curve.at(30), curve.at(1)) << "the loss must fall";

  // The same run by `sinkscope-run train` (the engine directly): the same losses.
  {
    nlohmann::json run_json = {{"model", nlohmann::json::parse(kTinyConfig)},
                               {"recipe", {{"steps", 30}, {"batch_size", 4}, {"seq_len", 32}, {"seed", 3},
                                           {"lr", 1e-2}, {"warmup_steps", 3}, {"bos_id", 256},
                                           {"heldout_fraction", 0.1}, {"eval_every", 10},
                                           {"eval_sequences", 2}, {"checkpoint_every", 10}}}};
    WriteFile(dir_.path() + "/run.json", run_json.dump());
    const std::string cmd = absl::StrCat(SINKSCOPE_RUN_BIN, " train --config ", dir_.path(),
                                         "/run.json --corpus ", dir_.path(), "/text.txt --out ",
                                         dir_.path(), "/direct --json --log-every 1 --threads 1 > ",
                                         dir_.path(), "/direct.jsonl 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadTail(dir_.path() + "/direct.jsonl");
    std::ifstream in(dir_.path() + "/direct.jsonl");
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("loss")) continue;
      ++n;
      EXPECT_EQ(j["loss"].get<double>(), curve.at(j["step"].get<int64_t>())) << "step " << j["step"];
    }
    EXPECT_EQ(n, 30);
  }

  // The self-profiles: one row per checkpoint, each as the profile job gives
  // for that checkpoint on the held-out split (its last 4000 bytes) read as
  // training reads sequences: chunks of BOS + 63 bytes.
  std::vector<v1::ProfileRow> self_rows;
  for (const v1::ResultRecord& r : done.results()) {
    if (r.has_profile_row()) self_rows.push_back(r.profile_row());
  }
  ASSERT_EQ(self_rows.size(), 3u);
  EXPECT_EQ(self_rows[0].model(), "tiny@10");
  EXPECT_EQ(self_rows[2].model(), "tiny@30");
  {
    const std::string corpus = MakeCorpus(40000);
    v1::SubmitJobRequest held;
    held.mutable_request()->set_model("tiny@30");
    const size_t held_at = corpus.size() - corpus.size() / 10;
    for (size_t at = held_at; at + 63 <= corpus.size(); at += 63) {
      held.mutable_request()->add_sequences()->set_text(corpus.substr(at, 63));  // + BOS
    }
    v1::ProfileRequest* hp = held.mutable_request()->mutable_profile();
    hp->mutable_eval()->set_token_budget(256);
    hp->mutable_eval()->set_chunk_length(64);
    hp->set_sink_window(32);
    v1::Job held_job;
    s = SubmitAs(*stub_, "alice", held, &held_job);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const v1::Job held_done = WaitTerminal(*stub_, held_job.id(), seconds(120));
    ASSERT_EQ(held_done.state(), v1::JOB_STATE_COMPLETED) << held_done.error().message();
    const v1::ProfileRow& want = held_done.results(0).profile_row();
    const v1::ProfileRow& got = self_rows[2];
    EXPECT_FALSE(got.has_failure()) << got.failure().message();
    EXPECT_EQ(got.n_scored(), want.n_scored());
    EXPECT_EQ(got.n_chunks(), want.n_chunks());
    EXPECT_EQ(got.perplexity(), want.perplexity());
    EXPECT_EQ(got.sink_ratio(), want.sink_ratio());
    EXPECT_EQ(got.spike(), want.spike());
  }

  // The checkpoints are alice's models, not bob's.
  const std::vector<std::string> alice = ModelNames(ModelsOf(*stub_, "alice"));
  for (const char* name : {"tiny@10", "tiny@20", "tiny@30"}) {
    EXPECT_NE(std::find(alice.begin(), alice.end(), name), alice.end()) << name;
  }
  const v1::ListModelsResponse alice_models = ModelsOf(*stub_, "alice");
  for (const v1::ModelInfo& m : alice_models.models()) {
    if (m.name() == "tiny@30") {
      EXPECT_TRUE(m.available()) << m.unavailable_reason();
      EXPECT_TRUE(m.has_tokenizer());
      EXPECT_EQ(m.vocab_size(), 257);
      EXPECT_EQ(m.n_layers(), 2);
    }
  }
  const std::vector<std::string> bob = ModelNames(ModelsOf(*stub_, "bob"));
  EXPECT_EQ(std::find(bob.begin(), bob.end(), "tiny@30"), bob.end());

  // An analysis job on a checkpoint: alice's runs, bob's is NOT_FOUND.
  v1::SubmitJobRequest scan = ScanRequest({{256, 70, 105, 114, 115, 116}}, "tiny@30");
  v1::Job scan_job;
  s = SubmitAs(*stub_, "bob", scan, &scan_job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  s = SubmitAs(*stub_, "alice", scan, &scan_job);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(WaitTerminal(*stub_, scan_job.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);

  // A profile of every checkpoint (RUN@*) on the corpus, through the run's tokenizer.
  v1::SubmitJobRequest profile;
  profile.mutable_request()->set_model("tiny@10");
  v1::ProfileRequest* p = profile.mutable_request()->mutable_profile();
  p->mutable_eval()->set_corpus("text");
  p->mutable_eval()->set_token_budget(256);
  p->mutable_eval()->set_chunk_length(64);
  p->set_sink_window(32);
  p->add_compare_models("tiny@*");
  v1::Job prof_job;
  s = SubmitAs(*stub_, "alice", profile, &prof_job);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const v1::Job prof = WaitTerminal(*stub_, prof_job.id(), seconds(120));
  ASSERT_EQ(prof.state(), v1::JOB_STATE_COMPLETED) << prof.error().message();
  std::vector<std::string> rows;
  for (const v1::ResultRecord& r : prof.results()) {
    if (r.has_profile_row()) {
      rows.push_back(r.profile_row().model());
      EXPECT_FALSE(r.profile_row().has_failure()) << r.profile_row().failure().message();
    }
  }
  EXPECT_EQ(rows, (std::vector<std::string>{"tiny@10", "tiny@10", "tiny@20", "tiny@30"}));
  s = SubmitAs(*stub_, "bob", profile, &prof_job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
}

TEST_F(TrainJobsTest, BadRequestsAreRefusedAtSubmissionNamingTheProblem) {
  StartServer(R"("runs_dir": ")" + dir_.path() + R"(/runs", "max_train_tokens": 1000000,
                 "user_max_train_tokens": {"carol": 1000})");
  struct Case {
    std::string what;
    std::function<void(v1::SubmitJobRequest*)> change;
    grpc::StatusCode code;
    std::string in_message;
    std::string user = "alice";
  };
  auto config_with = [](const std::string& key, const nlohmann::json& value) {
    nlohmann::json c = nlohmann::json::parse(kTinyConfig);
    c[key] = value;
    return c.dump();
  };
  const std::vector<Case> cases = {
      {"unknown config key", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_config_json(config_with("hiden_size", 32));
       }, grpc::StatusCode::INVALID_ARGUMENT, "unknown key \"hiden_size\""},
      {"kv heads that do not divide the heads", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_config_json(config_with("num_key_value_heads", 3));
       }, grpc::StatusCode::INVALID_ARGUMENT, "train.config_json: n_heads (2) must be a multiple of n_kv_heads (3)"},
      {"a non-positive width", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_config_json(config_with("intermediate_size", 0));
       }, grpc::StatusCode::INVALID_ARGUMENT, "train.config_json"},
      {"a vocabulary that is not byte-level", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_config_json(config_with("vocab_size", 512));
       }, grpc::StatusCode::INVALID_ARGUMENT, "vocab_size = 512"},
      {"config json that is no object", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_config_json("[1, 2]");
       }, grpc::StatusCode::INVALID_ARGUMENT, "JSON object"},
      {"seq_len over the context", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->mutable_recipe()->set_seq_len(65);
       }, grpc::StatusCode::INVALID_ARGUMENT, "train.recipe.seq_len"},
      {"a negative learning rate", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->mutable_recipe()->set_lr(-1);
       }, grpc::StatusCode::INVALID_ARGUMENT, "train.recipe.lr"},
      {"no steps", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->mutable_recipe()->clear_steps();
       }, grpc::StatusCode::INVALID_ARGUMENT, "train.recipe.steps"},
      {"a corpus smaller than one batch", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_corpus("small");
       }, grpc::StatusCode::INVALID_ARGUMENT, "fewer than one batch"},
      {"an unknown corpus", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_corpus("nope");
       }, grpc::StatusCode::NOT_FOUND, "corpus \"nope\""},
      {"tokens over the server's limit", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->mutable_recipe()->set_steps(10000);
       }, grpc::StatusCode::RESOURCE_EXHAUSTED, "max_train_tokens"},
      {"tokens over the user's own limit", [&](v1::SubmitJobRequest*) {},
       grpc::StatusCode::RESOURCE_EXHAUSTED, "user carol of 1000 tokens", "carol"},
      {"a run name with a slash", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_run_name("../x");
       }, grpc::StatusCode::INVALID_ARGUMENT, "train.run_name"},
      {"a run name with @", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->mutable_train()->set_run_name("a@1");
       }, grpc::StatusCode::INVALID_ARGUMENT, "train.run_name"},
      {"sequences", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->add_sequences()->set_text("hello");
       }, grpc::StatusCode::INVALID_ARGUMENT, "give no sequences"},
      {"bfloat16", [&](v1::SubmitJobRequest* r) { r->mutable_request()->set_dtype(v1::DTYPE_BFLOAT16); },
       grpc::StatusCode::INVALID_ARGUMENT, "float32"},
      {"an unknown starting model", [&](v1::SubmitJobRequest* r) {
         r->mutable_request()->set_model("nope");
         r->mutable_request()->mutable_train()->clear_config_json();
       }, grpc::StatusCode::NOT_FOUND, "not in the catalog"},
  };
  for (const Case& c : cases) {
    v1::SubmitJobRequest req = TrainRequest("bad", 20);
    c.change(&req);
    v1::Job job;
    grpc::Status s = SubmitAs(*stub_, c.user, req, &job);
    EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.in_message), std::string::npos)
        << c.what << ": \"" << s.error_message() << "\" lacks \"" << c.in_message << "\"";
  }
  // A run name is one run per user: the second submission clashes (another
  // user may take the name).
  v1::Job first, second;
  ASSERT_TRUE(SubmitAs(*stub_, "alice", TrainRequest("dup", 5), &first).ok());
  grpc::Status s = SubmitAs(*stub_, "alice", TrainRequest("dup", 5), &second);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("dup"), std::string::npos) << s.error_message();
  EXPECT_TRUE(SubmitAs(*stub_, "bob", TrainRequest("dup", 5), &second).ok());
  EXPECT_EQ(WaitTerminal(*stub_, first.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
  EXPECT_EQ(WaitTerminal(*stub_, second.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
}

/// Waits (watching) until the job's records reach a checkpoint at step >= 10
/// and then `more` further updates of the same attempt.
bool WaitPastCheckpoint(v1::AnalysisService::Stub& stub, const std::string& id, int more) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(120));
  v1::WatchJobRequest req;
  req.set_job_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  v1::JobEvent e;
  int64_t checkpoint = 0;
  while (reader->Read(&e)) {
    if (!e.has_result() || !e.result().has_train_step()) continue;
    const v1::TrainStep& t = e.result().train_step();
    if (more < 0 && t.step() >= 10 + more) {  // `-k`: k updates before the first checkpoint (10)
      ctx.TryCancel();
      return true;
    }
    if (!t.checkpoint().empty() && checkpoint == 0) checkpoint = t.step();
    if (checkpoint > 0 && t.step() >= checkpoint + more) {
      ctx.TryCancel();
      return true;
    }
  }
  return false;
}

// kill -9 of the worker, then of the server, in the middle of a run: the
// re-queued job resumes from the run's latest checkpoint, and the completing
// attempt's records give the uninterrupted run's losses, bitwise.
TEST_F(TrainJobsTest, KilledWorkerAndServerResumeWithTheUninterruptedCurve) {
  StartServer(R"("runs_dir": ")" + dir_.path() +
              R"(/runs", "worker_args": ["--test-unit-delay-ms", "60"], "max_attempts": 4)");
  v1::Job ref, crash;
  ASSERT_TRUE(SubmitAs(*stub_, "alice", TrainRequest("ref", 40), &ref).ok());
  const v1::Job ref_done = WaitTerminal(*stub_, ref.id(), seconds(240));
  ASSERT_EQ(ref_done.state(), v1::JOB_STATE_COMPLETED) << ref_done.error().message();
  const std::map<int64_t, double> want = LossCurve(ref_done);
  ASSERT_EQ(want.size(), 40u);

  ASSERT_TRUE(SubmitAs(*stub_, "alice", TrainRequest("crash", 40), &crash).ok());
  // 1) The worker, a few updates after the checkpoint at step 10.
  ASSERT_TRUE(WaitPastCheckpoint(*stub_, crash.id(), 3));
  std::vector<pid_t> workers = server_->WorkerPids();
  ASSERT_EQ(workers.size(), 1u);
  ASSERT_EQ(kill(workers[0], SIGKILL), 0);
  // 2) The server (its worker goes with it), after the resumed attempt passed a later checkpoint.
  ASSERT_TRUE(server_->WaitForWorkers(1, seconds(60)));
  ASSERT_TRUE(WaitPastCheckpoint(*stub_, crash.id(), 13));
  server_->Signal(SIGKILL);
  server_->WaitExit(seconds(30));
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  stub_ = server_->NewStub();

  const v1::Job done = WaitTerminal(*stub_, crash.id(), seconds(240));
  ASSERT_EQ(done.state(), v1::JOB_STATE_COMPLETED) << done.error().message();
  EXPECT_GE(done.attempts(), 3);
  const v1::TrainSummary* summary = SummaryOf(done);
  ASSERT_NE(summary, nullptr);
  EXPECT_GE(summary->resumed_from_step(), 20);
  const std::map<int64_t, double> got = LossCurve(done);
  ASSERT_EQ(got.size(), 40u);
  for (const auto& [step, loss] : want) {
    EXPECT_EQ(got.at(step), loss) << "step " << step << " (bitwise: CPU float32, one thread)";
  }
  int replayed = 0;
  for (const v1::ResultRecord& r : done.results()) replayed += r.has_train_step() && r.train_step().replayed();
  EXPECT_EQ(replayed, summary->resumed_from_step());
}

// A long run on the only worker yields it at a checkpoint once another
// user's job has waited longer than train_yield_after_s: that job runs, and
// the run resumes from the checkpoint and still gives the uninterrupted curve.
TEST_F(TrainJobsTest, LongRunYieldsItsWorkerToAnotherUsersWaitingJob) {
  StartServer(R"("runs_dir": ")" + dir_.path() +
              R"(/runs", "worker_args": ["--test-unit-delay-ms", "60"], "train_yield_after_s": 0.5)");
  v1::Job long_run, short_run;
  ASSERT_TRUE(SubmitAs(*stub_, "alice", TrainRequest("long", 60), &long_run).ok());
  ASSERT_TRUE(WaitPastCheckpoint(*stub_, long_run.id(), -8));  // running, before its first checkpoint
  ASSERT_TRUE(SubmitAs(*stub_, "bob", TrainRequest("short", 5), &short_run).ok());
  const v1::Job short_done = WaitTerminal(*stub_, short_run.id(), seconds(240));
  ASSERT_EQ(short_done.state(), v1::JOB_STATE_COMPLETED) << short_done.error().message();
  const v1::Job long_done = WaitTerminal(*stub_, long_run.id(), seconds(240));
  ASSERT_EQ(long_done.state(), v1::JOB_STATE_COMPLETED) << long_done.error().message();
  EXPECT_LT(short_done.end_time().seconds() * 1e9 + short_done.end_time().nanos(),
            long_done.end_time().seconds() * 1e9 + long_done.end_time().nanos());
  EXPECT_GE(long_done.attempts(), 2);
  const v1::TrainSummary* summary = SummaryOf(long_done);
  ASSERT_NE(summary, nullptr);
  EXPECT_GT(summary->resumed_from_step(), 0);
  // The reason is in the job's Retrying event.
  bool yielded = false;
  for (const v1::JobEvent& e : WatchAll(*stub_, long_run.id(), 0, seconds(30))) {
    if (e.has_retrying() && e.retrying().reason().find("yielded its worker") != std::string::npos) yielded = true;
  }
  EXPECT_TRUE(yielded);
  // Yielding changes nothing in the curve: the same run without a yield.
  v1::Job ref;
  ASSERT_TRUE(SubmitAs(*stub_, "alice", TrainRequest("long-ref", 60), &ref).ok());
  const v1::Job ref_done = WaitTerminal(*stub_, ref.id(), seconds(240));
  ASSERT_EQ(ref_done.state(), v1::JOB_STATE_COMPLETED);
  EXPECT_EQ(LossCurve(long_done), LossCurve(ref_done));
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
