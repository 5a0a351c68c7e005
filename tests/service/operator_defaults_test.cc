// Issue 25 (4, 5, 7): defaults that keep a careless request from hurting the
// host or giving wrong numbers, through a real server and workers: a memory
// budget on every cpu worker by default, corpora read only through a
// tokenizer the catalog declares for the model, a broken tokenizer that does
// not take id jobs down, an unsupported model_type caught at catalog load.
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "service_test_util.h"
#include "tests/common/skip.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;

grpc::Status TrySubmit(v1::AnalysisService::Stub& stub, const v1::SubmitJobRequest& req, v1::Job* job,
                       const std::string& user = "tester") {
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-sinkscope-user", user);
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
  return stub.SubmitJob(&ctx, req, job);
}

v1::ListModelsResponse ListModels(v1::AnalysisService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  v1::ListModelsResponse out;
  EXPECT_TRUE(stub.ListModels(&ctx, v1::ListModelsRequest(), &out).ok());
  return out;
}

/// The host memory the test process may use, read here independently of the
/// server: MemTotal, or the cgroup v2 limit of the root / this cgroup when lower.
int64_t HostMemoryForTest() {
  int64_t total = 0;
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemTotal:") total = kib * 1024;
  }
  std::vector<std::string> files = {"/sys/fs/cgroup/memory.max",
                                    "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {
    if (line.rfind("0::", 0) == 0) files.push_back("/sys/fs/cgroup" + line.substr(3) + "/memory.max");
  }
  for (const std::string& f : files) {
    std::ifstream in(f);
    std::string word;
    if (!(in >> word) || word == "max") continue;
    const int64_t limit = std::stoll(word);
    if (limit > 0 && limit < total) total = limit;
  }
  return total;
}

class OperatorDefaultsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && server_) {
      std::fprintf(stderr, "---- server log tail ----\n%s\n", ReadTail(server_->log_path()).c_str());
    }
  }
  void StartServer(int n_workers, const std::string& catalog, const std::string& extra = "") {
    server_ = std::make_unique<ServerProcess>(dir_.path(),
                                              TestServerConfig(dir_.path(), n_workers, catalog, extra));
    ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  }
  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

// Issue 25.4. Without worker_memory_bytes a cpu worker's budget is 0.8 of the
// host's memory (one cpu worker here): a scan the server estimates larger
// than the host is refused at submission naming the estimate and the budget
// (before: accepted, and the kernel's OOM killer would end the worker).
TEST_F(OperatorDefaultsTest, CpuWorkerHasAMemoryBudgetByDefault) {
  SKIP_WITHOUT_SHARED();
  const int64_t host = HostMemoryForTest();
  ASSERT_GT(host, 0);
  // stories260K, scan, T = 512 (its context), 8 heads: the estimate counts
  // 4 bytes x (T (8 d_model + 3 d_ffn + vocab) + 2 heads T^2) per sequence.
  const int64_t per_seq = 4 * (512 * (8 * 64 + 3 * 172 + 512) + 2 * 8 * 512 * 512);
  const int64_t n = host / per_seq + 1;
  if (n > 8192) SINKSCOPE_SKIP_MISSING("host memory too large to exceed with 8192 sequences");
  StartServer(1, TestCatalog(),
              R"("max_sequences": 8192, "max_total_tokens": 4194304, "max_request_bytes": 33554432)");
  v1::SubmitJobRequest req = ScanRequest({}, "stories260K");
  const std::vector<int32_t> ids = MakeIds(512, 1);
  for (int64_t i = 0; i < n; ++i) {
    auto* seq = req.mutable_request()->add_sequences()->mutable_ids();
    for (int32_t id : ids) seq->add_ids(id);
  }
  auto stub = server_->NewStub();
  v1::Job job;
  grpc::Status s = TrySubmit(*stub, req, &job);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  const int64_t budget = static_cast<int64_t>(static_cast<double>(host) * 0.8);
  EXPECT_NE(s.error_message().find(absl::StrCat("budget is ", budget, " bytes")), std::string::npos)
      << s.error_message() << " (expected budget " << budget << ")";
  EXPECT_NE(s.error_message().find("job needs an estimated "), std::string::npos) << s.error_message();
  // A small job still runs.
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 2)}), &job).ok());
  EXPECT_EQ(WaitTerminal(*stub, job.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
}

// Issue 25.4. cpu_memory_fraction sets the share: two cpu workers split it.
TEST_F(OperatorDefaultsTest, CpuMemoryFractionIsSplitAmongCpuWorkers) {
  SKIP_WITHOUT_SHARED();
  const int64_t host = HostMemoryForTest();
  ASSERT_GT(host, 0);
  // 1e-7 of the host (~2.4 kB per worker on 24 GiB): stories260K's weights alone are 1 MB.
  StartServer(2, TestCatalog(), R"("cpu_memory_fraction": 0.0000001)");
  auto stub = server_->NewStub();
  v1::Job job;
  grpc::Status s = TrySubmit(*stub, ScanRequest({MakeIds(8, 3)}), &job);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  const int64_t budget = static_cast<int64_t>(static_cast<double>(host) * 0.0000001 / 2);
  EXPECT_NE(s.error_message().find(absl::StrCat("budget is ", budget, " bytes")), std::string::npos)
      << s.error_message() << " (expected budget " << budget << ")";
}

// Issue 25.5. A model without a tokenizer reads a corpus only through a
// tokenizer the catalog declares compatible with it: stories260K through
// aidreams260K's tok512 (same size, other pieces) is refused naming both;
// declared, it runs.
TEST_F(OperatorDefaultsTest, CorpusIsReadOnlyThroughADeclaredTokenizer) {
  SKIP_WITHOUT_SHARED();
  if (AiDreamsTokenizerPath().empty()) SINKSCOPE_SKIP_MISSING("aidreams260K/tok512.bin not found");
  const std::string corpus = SharedDir() + "/corpora/tinyshakespeare.txt";
  if (!std::ifstream(corpus).good()) SINKSCOPE_SKIP_MISSING("corpora/tinyshakespeare.txt not found");
  const std::string catalog = absl::StrCat(
      R"({"models": [{"name": "stories260K", "format": "llama2c", "path": ")", Stories260KPath(),
      R"("}, {"name": "declared", "format": "llama2c", "path": ")", Stories260KPath(),
      R"(", "compatible_tokenizers": [")", AiDreamsTokenizerPath(), R"("]}], )",
      R"("corpora": [{"name": "shakespeare", "path": ")", corpus, R"(", "tokenizer": ")",
      AiDreamsTokenizerPath(), R"("}]})");
  StartServer(1, catalog);
  auto stub = server_->NewStub();
  auto ppl = [](const std::string& model) {
    v1::SubmitJobRequest req;
    req.mutable_request()->set_model(model);
    v1::EvalCorpus* eval = req.mutable_request()->mutable_perplexity()->mutable_eval();
    eval->set_corpus("shakespeare");
    eval->set_token_budget(200);
    return req;
  };
  v1::Job job;
  grpc::Status s = TrySubmit(*stub, ppl("stories260K"), &job);
  ASSERT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  for (const char* needle : {"model stories260K", "corpus shakespeare", "tok512.bin",
                             "not declared compatible", "--ids"}) {
    EXPECT_NE(s.error_message().find(needle), std::string::npos) << needle << ": " << s.error_message();
  }
  EXPECT_EQ(s.error_message().find(SharedDir()), std::string::npos) << s.error_message();
  ASSERT_TRUE(TrySubmit(*stub, ppl("declared"), &job).ok());
  EXPECT_EQ(WaitTerminal(*stub, job.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
}

// Issue 25.7. A tokenizer that cannot be loaded leaves the model serving
// jobs on token ids; a job with text fails naming the tokenizer (not the
// checkpoint), and the model stays available.
TEST_F(OperatorDefaultsTest, BrokenTokenizerLeavesIdJobsRunning) {
  SKIP_WITHOUT_SHARED();
  const std::string tok = dir_.path() + "/tok.json";
  WriteFile(tok, "{ this is not a tokenizer");
  const std::string catalog = absl::StrCat(
      R"({"models": [{"name": "stories260K", "format": "llama2c", "path": ")", Stories260KPath(),
      R"(", "tokenizer": ")", tok, R"("}]})");
  StartServer(1, catalog);
  auto stub = server_->NewStub();
  v1::Job job;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 4)}), &job).ok());
  v1::Job done = WaitTerminal(*stub, job.id(), seconds(120));
  EXPECT_EQ(done.state(), v1::JOB_STATE_COMPLETED) << done.error().message();
  v1::SubmitJobRequest text = ScanRequest({});
  text.mutable_request()->add_sequences()->set_text("Once upon a time");
  ASSERT_TRUE(TrySubmit(*stub, text, &job).ok());
  done = WaitTerminal(*stub, job.id(), seconds(120));
  ASSERT_EQ(done.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(done.error().code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_NE(done.error().message().find("tokenizer"), std::string::npos) << done.error().message();
  EXPECT_EQ(done.error().message().find("checkpoint"), std::string::npos) << done.error().message();
  EXPECT_EQ(done.error().message().find(dir_.path()), std::string::npos) << done.error().message();
  const v1::ListModelsResponse models = ListModels(*stub);
  for (const v1::ModelInfo& m : models.models()) {
    if (m.name() == "stories260K") EXPECT_TRUE(m.available()) << m.unavailable_reason();
  }
  // Id jobs still run after the failed text job.
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 5)}), &job).ok());
  EXPECT_EQ(WaitTerminal(*stub, job.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
}

// Issue 25.7. A HF model whose model_type the engine does not run is listed
// unavailable from the start, with the reason, and refused at submission.
TEST_F(OperatorDefaultsTest, UnsupportedModelTypeIsUnavailableAtLoad) {
  SKIP_WITHOUT_SHARED();
  const std::string hf = dir_.path() + "/bert";
  std::filesystem::create_directories(hf);
  WriteFile(hf + "/config.json",
            R"({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, )"
            R"("num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100})");
  const std::string catalog = absl::StrCat(
      R"({"models": [{"name": "stories260K", "format": "llama2c", "path": ")", Stories260KPath(),
      R"("}, {"name": "bert", "format": "hf", "path": ")", hf, R"("}]})");
  StartServer(1, catalog);
  auto stub = server_->NewStub();
  bool listed = false;
  const v1::ListModelsResponse models = ListModels(*stub);
  for (const v1::ModelInfo& m : models.models()) {
    if (m.name() != "bert") continue;
    listed = true;
    EXPECT_FALSE(m.available());
    EXPECT_NE(m.unavailable_reason().find("model_type"), std::string::npos) << m.unavailable_reason();
    EXPECT_NE(m.unavailable_reason().find("bert"), std::string::npos) << m.unavailable_reason();
  }
  EXPECT_TRUE(listed);
  v1::Job job;
  grpc::Status s = TrySubmit(*stub, ScanRequest({MakeIds(8, 6)}, "bert"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
}

/// Runs SINKSCOPE_CLIENT_BIN with `args` (shell words); its exit code and stderr.
std::pair<int, std::string> RunClient(const std::string& dir, const std::string& args) {
  const std::string err = dir + "/client.err";
  const int status = std::system(absl::StrCat("env -u SINKSCOPE_SERVER ", SINKSCOPE_CLIENT_BIN, " ",
                                              args, " >", dir, "/client.out 2>", err).c_str());
  std::ifstream in(err);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

// Issue 25.6. A job that needs a spike on a model without one fails with a
// hint naming the flag to type (and the field, for API users).
TEST_F(OperatorDefaultsTest, HintsNameTheFlagToType) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog());
  auto stub = server_->NewStub();
  struct Case {
    const char* what;
    v1::SubmitJobRequest req;
    std::vector<const char*> needles;
  };
  std::vector<Case> cases(3);
  cases[0].what = "silu-regime";
  cases[0].req = ScanRequest({MakeIds(16, 7)});
  cases[0].req.mutable_request()->mutable_silu_regime();
  cases[0].needles = {"--blocks", "silu_regime.blocks"};
  cases[1].what = "vo-circuit";
  cases[1].req = ScanRequest({});
  cases[1].req.mutable_request()->mutable_vo_circuit()->add_token_ids(1);
  cases[1].needles = {"--step-up-block", "vo_circuit.step_up_block"};
  cases[2].what = "spike-similarity";
  cases[2].req = ScanRequest({MakeIds(16, 8)});
  cases[2].req.mutable_request()->mutable_spike_similarity();
  cases[2].needles = {"--abs-threshold", "--rel-threshold"};
  for (const Case& c : cases) {
    v1::Job job;
    grpc::Status s = TrySubmit(*stub, c.req, &job);
    ASSERT_TRUE(s.ok()) << c.what << ": " << s.error_message();
    const v1::Job done = WaitTerminal(*stub, job.id(), seconds(120));
    ASSERT_EQ(done.state(), v1::JOB_STATE_FAILED) << c.what;
    EXPECT_EQ(done.error().code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION)) << c.what;
    for (const char* n : c.needles) {
      EXPECT_NE(done.error().message().find(n), std::string::npos)
          << c.what << ": " << n << " in " << done.error().message();
    }
  }
}

// Issue 25.7. --wait-timeout ending says what timed out, that the job goes
// on, and how to follow it (before: a bare DEADLINE_EXCEEDED).
TEST_F(OperatorDefaultsTest, WaitTimeoutSaysTheJobGoesOn) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog(), R"("worker_args": ["--test-unit-delay-ms", "1500"])");
  const auto [rc, err] = RunClient(
      dir_.path(), absl::StrCat("--server ", server_->address(), " --wait-timeout 1 scan ",
                                "--model stories260K --ids 1,2,3,4"));
  EXPECT_EQ(rc, 1) << err;
  for (const char* n : {"DEADLINE_EXCEEDED", "--wait-timeout 1 s ran out", "sinkscope watch j-",
                        "not cancelled"}) {
    EXPECT_NE(err.find(n), std::string::npos) << n << " in " << err;
  }
}

// Issue 25.8. `cancel --all-mine` cancels the caller's queued and running
// jobs, and nobody else's.
TEST_F(OperatorDefaultsTest, CancelAllMineCancelsOnlyTheCallersJobs) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog(), R"("worker_args": ["--test-unit-delay-ms", "1000"])");
  auto stub = server_->NewStub();
  std::vector<std::string> mine;
  for (int i = 0; i < 3; ++i) {
    v1::Job job;
    ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 20 + i)}), &job, "alice").ok());
    mine.push_back(job.id());
  }
  v1::Job other;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 30)}), &other, "bob").ok());
  const auto [rc, err] = RunClient(
      dir_.path(), absl::StrCat("--server ", server_->address(), " --user alice cancel --all-mine"));
  EXPECT_EQ(rc, 0) << err;
  std::ifstream out(dir_.path() + "/client.out");
  std::string printed((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  EXPECT_NE(printed.find("3 job(s) of yours cancelled"), std::string::npos) << printed;
  for (const std::string& id : mine) {
    EXPECT_EQ(WaitTerminal(*stub, id, seconds(60), false).state(), v1::JOB_STATE_CANCELLED) << id;
  }
  EXPECT_EQ(WaitTerminal(*stub, other.id(), seconds(120), false).state(), v1::JOB_STATE_COMPLETED);
}

// Issue 25.8. SIGHUP reloads the catalog without a restart: a new model is
// served, a bad entry is listed unavailable with its reason and the rest
// stay served; a file that does not parse keeps the previous catalog.
TEST_F(OperatorDefaultsTest, SighupReloadsTheCatalog) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog());
  auto stub = server_->NewStub();
  WriteFile(dir_.path() + "/catalog.json",
            absl::StrCat(R"({"models": [{"name": "stories260K", "format": "llama2c", "path": ")",
                         Stories260KPath(), R"("}, {"name": "again", "format": "llama2c", "path": ")",
                         Stories260KPath(), R"("}, {"name": "bad", "format": "onnx", "path": "x"}]})"));
  server_->Signal(SIGHUP);
  bool reloaded = false;
  for (int i = 0; i < 100 && !reloaded; ++i) {
    const v1::ListModelsResponse models = ListModels(*stub);
    for (const v1::ModelInfo& m : models.models()) reloaded = reloaded || m.name() == "again";
    if (!reloaded) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(reloaded) << ReadTail(server_->log_path());
  const v1::ListModelsResponse models = ListModels(*stub);
  bool bad_listed = false;
  for (const v1::ModelInfo& m : models.models()) {
    if (m.name() != "bad") continue;
    bad_listed = true;
    EXPECT_FALSE(m.available());
    EXPECT_NE(m.unavailable_reason().find("format must be"), std::string::npos) << m.unavailable_reason();
  }
  EXPECT_TRUE(bad_listed);
  v1::Job job;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 40)}, "again"), &job).ok());
  EXPECT_EQ(WaitTerminal(*stub, job.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
  grpc::Status s = TrySubmit(*stub, ScanRequest({MakeIds(8, 41)}, "bad"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  // A catalog that does not parse: the previous one stays.
  WriteFile(dir_.path() + "/catalog.json", "{not json");
  server_->Signal(SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 42)}, "again"), &job).ok());
  EXPECT_EQ(WaitTerminal(*stub, job.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
  EXPECT_NE(ReadTail(server_->log_path()).find("catalog not reloaded"), std::string::npos);
}

// Issue 25.8. A non-admin's queue view: own jobs with positions and the
// queue's counts, no other user's name.
TEST_F(OperatorDefaultsTest, QueueViewShowsCountsWithoutNames) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog(), R"("worker_args": ["--test-unit-delay-ms", "2000"])");
  auto stub = server_->NewStub();
  v1::Job job;
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 50 + i)}), &job, "bob").ok());
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 52)}), &job, "alice").ok());
  const auto [rc, err] =
      RunClient(dir_.path(), absl::StrCat("--server ", server_->address(), " --user alice queue"));
  EXPECT_EQ(rc, 0) << err;
  std::ifstream out(dir_.path() + "/client.out");
  std::string printed((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  EXPECT_NE(printed.find(job.id()), std::string::npos) << printed;
  EXPECT_NE(printed.find("(1 yours; 2 user(s) waiting)"), std::string::npos) << printed;
  EXPECT_EQ(printed.find("bob"), std::string::npos) << printed;
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
