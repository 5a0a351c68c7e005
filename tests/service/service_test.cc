// Integration tests of the whole service: real sinkscope-server and
// sinkscope-worker processes, real SQLite files in temp dirs, the shared
// stories260K checkpoint. Results are checked against the engine run
// directly in this process.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "tests/common/skip.h"

#include "absl/strings/str_cat.h"
#include "service_test_util.h"
#include "sinkscope/v1/worker.grpc.pb.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;

/// Submits `req` and returns the job (fails the test on error).
v1::Job Submit(v1::AnalysisService::Stub& stub, const v1::SubmitJobRequest& req,
               const std::string& user = "tester") {
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-sinkscope-user", user);
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
  v1::Job job;
  grpc::Status s = stub.SubmitJob(&ctx, req, &job);
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  return job;
}

/// Submits and returns the status (for bad requests).
grpc::Status TrySubmit(v1::AnalysisService::Stub& stub, const v1::SubmitJobRequest& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
  v1::Job job;
  return stub.SubmitJob(&ctx, req, &job);
}

int CountCompleted(const std::vector<v1::JobEvent>& events) {
  int n = 0;
  for (const auto& e : events) n += e.has_completed();
  return n;
}

/// Expected engine results for `seqs` (cached per input).
struct Expected {
  std::vector<BlockRecord> blocks;
  ScanSummary summary;
};
const Expected& ExpectedFor(const std::vector<std::vector<int32_t>>& seqs) {
  static std::mutex mu;
  static std::map<std::vector<std::vector<int32_t>>, Expected> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(seqs);
  if (it != cache.end()) return it->second;
  Expected e;
  std::string error;
  EXPECT_TRUE(EngineScan(seqs, &e.blocks, &e.summary, &error)) << error;
  return cache.emplace(seqs, std::move(e)).first->second;
}

class ServiceTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && server_) {
      std::fprintf(stderr, "---- server log tail (%s) ----\n%s\n", server_->log_path().c_str(),
                   ReadTail(server_->log_path()).c_str());
    }
  }
  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

// Two workers; eight scans submitted concurrently from four client threads
// all complete, and each result equals the engine's, computed here.
TEST_F(ServiceTest, ConcurrentScansMatchEngine) {
  SKIP_WITHOUT_SHARED();
  server_ = std::make_unique<ServerProcess>(dir_.path(),
                                            TestServerConfig(dir_.path(), 2, TestCatalog()));
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());

  std::vector<std::vector<std::vector<int32_t>>> inputs;
  for (int i = 0; i < 8; ++i) {
    // Mixed lengths; jobs 0 mod 3 have two equal-length sequences (one batch).
    std::vector<std::vector<int32_t>> seqs = {MakeIds(8 + 5 * i, 100 + i)};
    if (i % 3 == 0) seqs.push_back(MakeIds(8 + 5 * i, 200 + i));
    if (i % 2 == 1) seqs.push_back(MakeIds(3 + i, 300 + i));
    inputs.push_back(seqs);
  }
  std::vector<v1::Job> done(8);
  std::vector<std::vector<v1::JobEvent>> streams(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto stub = server_->NewStub();
      std::vector<std::string> ids;
      for (int k = 0; k < 2; ++k) ids.push_back(Submit(*stub, ScanRequest(inputs[2 * t + k]), absl::StrCat("user", t)).id());
      for (int k = 0; k < 2; ++k) {
        grpc::Status status;
        streams[2 * t + k] = WatchAll(*stub, ids[k], 0, seconds(120), &status);
        EXPECT_TRUE(status.ok()) << status.error_message();
        done[2 * t + k] = WaitTerminal(*stub, ids[k], seconds(60));
      }
    });
  }
  for (auto& th : threads) th.join();

  std::set<std::string> workers_seen;
  for (int i = 0; i < 8; ++i) {
    SCOPED_TRACE(absl::StrCat("job ", i, " ", done[i].id()));
    const Expected& want = ExpectedFor(inputs[i]);
    EXPECT_EQ(CompareResults(done[i], want.blocks, want.summary), "");
    EXPECT_EQ(done[i].owner(), absl::StrCat("user", i / 2));
    EXPECT_EQ(done[i].attempts(), 1);
    // The live stream: Queued first, Completed last, seqs 1..n.
    const auto& ev = streams[i];
    ASSERT_FALSE(ev.empty());
    EXPECT_TRUE(ev.front().has_queued());
    EXPECT_TRUE(ev.back().has_completed());
    EXPECT_EQ(CountCompleted(ev), 1);
    for (size_t k = 0; k < ev.size(); ++k) EXPECT_EQ(ev[k].seq(), static_cast<int64_t>(k + 1));
    int n_blocks = 0;
    for (const auto& e : ev) n_blocks += e.has_result() && e.result().has_scan_block();
    EXPECT_EQ(n_blocks, 10);  // stories260K: 5 layers = 10 blocks
  }
  // ListJobs sees all eight, newest first.
  auto stub = server_->NewStub();
  grpc::ClientContext ctx;
  v1::ListJobsRequest list;
  list.set_page_size(5);
  v1::ListJobsResponse page;
  ASSERT_TRUE(stub->ListJobs(&ctx, list, &page).ok());
  EXPECT_EQ(page.jobs_size(), 5);
  EXPECT_FALSE(page.next_page_token().empty());
  grpc::ClientContext ctx2;
  list.set_page_token(page.next_page_token());
  v1::ListJobsResponse page2;
  ASSERT_TRUE(stub->ListJobs(&ctx2, list, &page2).ok());
  EXPECT_EQ(page2.jobs_size(), 3);
  EXPECT_TRUE(page2.next_page_token().empty());

  server_->Signal(SIGTERM);
  int status = server_->WaitExit(seconds(30));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// kill -9 of the worker in the middle of a job: the job still completes
// with the same result, and the worker is back.
TEST_F(ServiceTest, WorkerKilledMidJobIsRestartedAndJobCompletes) {
  SKIP_WITHOUT_SHARED();
  server_ = std::make_unique<ServerProcess>(
      dir_.path(), TestServerConfig(dir_.path(), 1, TestCatalog(),
                                    R"("worker_args": ["--test-unit-delay-ms=100"])"));
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  ASSERT_TRUE(server_->WaitForWorkers(1, seconds(60)));
  const std::vector<pid_t> before = server_->WorkerPids();
  ASSERT_EQ(before.size(), 1u);

  // Two lengths = two batches = 20 units of >= 100 ms.
  const std::vector<std::vector<int32_t>> seqs = {MakeIds(40, 7), MakeIds(25, 8)};
  auto stub = server_->NewStub();
  const v1::Job job = Submit(*stub, ScanRequest(seqs));

  // Watch until the job is clearly running, then kill its worker.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
    v1::WatchJobRequest req;
    req.set_job_id(job.id());
    auto reader = stub->WatchJob(&ctx, req);
    v1::JobEvent e;
    bool killed = false;
    while (reader->Read(&e)) {
      if (e.has_running() && e.running().units_done() >= 4) {
        ASSERT_EQ(kill(before[0], SIGKILL), 0);
        killed = true;
        break;
      }
    }
    ASSERT_TRUE(killed) << "job never got running";
    ctx.TryCancel();
  }
  const v1::Job finished = WaitTerminal(*stub, job.id(), seconds(90));
  const Expected& want = ExpectedFor(seqs);
  EXPECT_EQ(CompareResults(finished, want.blocks, want.summary), "");
  EXPECT_EQ(finished.attempts(), 2);

  // The stream tells what happened: a Retrying event naming the signal.
  grpc::Status status;
  const auto events = WatchAll(*stub, job.id(), 0, seconds(30), &status);
  ASSERT_TRUE(status.ok());
  bool retrying = false;
  for (const auto& e : events) {
    if (e.has_retrying()) {
      retrying = true;
      EXPECT_EQ(e.retrying().failed_attempt(), 1);
      EXPECT_NE(e.retrying().reason().find("signal 9"), std::string::npos) << e.retrying().reason();
    }
  }
  EXPECT_TRUE(retrying);
  EXPECT_EQ(CountCompleted(events), 1);

  // The worker is back (a new process) and runs the next job.
  ASSERT_TRUE(server_->WaitForWorkers(1, seconds(30)));
  const std::vector<pid_t> after = server_->WorkerPids();
  ASSERT_EQ(after.size(), 1u);
  EXPECT_NE(after[0], before[0]);
  const std::vector<std::vector<int32_t>> small = {MakeIds(5, 9)};
  const v1::Job next = WaitTerminal(*stub, Submit(*stub, ScanRequest(small)).id(), seconds(60));
  const Expected& want_small = ExpectedFor(small);
  EXPECT_EQ(CompareResults(next, want_small.blocks, want_small.summary), "");

  // The new worker's status: its model stays loaded between jobs.
  auto worker = v1::WorkerService::NewStub(grpc::CreateChannel(
      "unix:" + dir_.path() + "/run/w0.sock", grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  v1::WorkerStatus ws;
  ASSERT_TRUE(worker->GetStatus(&ctx, v1::GetStatusRequest(), &ws).ok());
  EXPECT_EQ(ws.pid(), after[0]);
  EXPECT_EQ(ws.device(), "cpu");
  EXPECT_TRUE(ws.running_job_id().empty());
  ASSERT_EQ(ws.loaded_models_size(), 1);
  EXPECT_EQ(ws.loaded_models(0).name(), "stories260K");
  EXPECT_EQ(ws.loaded_models(0).uses(), 2);  // the re-run and the next job
  EXPECT_GT(ws.rss_bytes(), 0);
}

// SIGTERM, then SIGKILL, of the server with jobs queued and running; each
// restart on the same database completes every job exactly once.
TEST_F(ServiceTest, ServerRestartsLoseNoJobAndCompleteNoneTwice) {
  SKIP_WITHOUT_SHARED();
  const std::string config = TestServerConfig(
      dir_.path(), 1, TestCatalog(),
      R"("worker_args": ["--test-unit-delay-ms=150"], "drain_timeout_s": 1)");
  server_ = std::make_unique<ServerProcess>(dir_.path(), config);
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());

  std::vector<std::vector<std::vector<int32_t>>> inputs;
  std::vector<std::string> ids;
  auto submit_batch = [&](int n, uint32_t seed) {
    auto stub = server_->NewStub();
    for (int i = 0; i < n; ++i) {
      inputs.push_back({MakeIds(12 + i, seed + i)});
      ids.push_back(Submit(*stub, ScanRequest(inputs.back())).id());
    }
  };
  auto wait_running = [&] {
    auto stub = server_->NewStub();
    const auto deadline = std::chrono::steady_clock::now() + seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      grpc::ClientContext ctx;
      v1::ListJobsRequest req;
      req.add_states(v1::JOB_STATE_RUNNING);
      v1::ListJobsResponse resp;
      if (stub->ListJobs(&ctx, req, &resp).ok() && resp.jobs_size() > 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };

  // 1) SIGTERM with one job running (10 units x 150 ms > 1 s drain) and three queued.
  submit_batch(4, 1000);
  ASSERT_TRUE(wait_running());
  server_->Signal(SIGTERM);
  int status = server_->WaitExit(seconds(30));
  ASSERT_TRUE(WIFEXITED(status)) << "wait status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  {
    const std::string log = ReadTail(server_->log_path());
    EXPECT_NE(log.find("server shutting down -> re-queued"), std::string::npos) << log;
    EXPECT_NE(log.find("stopped"), std::string::npos) << log;
  }

  // 2) Restart; add jobs; SIGKILL while one runs.
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  submit_batch(3, 2000);
  ASSERT_TRUE(wait_running());
  server_->Signal(SIGKILL);
  status = server_->WaitExit(seconds(10));
  ASSERT_TRUE(WIFSIGNALED(status));

  // 3) Restart again: everything completes, once.
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  EXPECT_NE(ReadTail(server_->log_path()).find("re-queued 1 interrupted job"), std::string::npos);
  auto stub = server_->NewStub();
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("job ", i, " ", ids[i]));
    const v1::Job job = WaitTerminal(*stub, ids[i], seconds(90));
    const Expected& want = ExpectedFor(inputs[i]);
    EXPECT_EQ(CompareResults(job, want.blocks, want.summary), "");
    grpc::Status s;
    const auto events = WatchAll(*stub, ids[i], 0, seconds(30), &s);
    EXPECT_TRUE(s.ok());
    EXPECT_EQ(CountCompleted(events), 1);
  }
  grpc::ClientContext ctx;
  v1::ListJobsRequest req;
  v1::ListJobsResponse resp;
  ASSERT_TRUE(stub->ListJobs(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), static_cast<int>(ids.size()));
}

// Bad requests get the right status and a message naming the problem; the
// server stays healthy.
TEST_F(ServiceTest, BadRequestsGetClearStatuses) {
  SKIP_WITHOUT_SHARED();
  server_ = std::make_unique<ServerProcess>(
      dir_.path(), TestServerConfig(dir_.path(), 1, TestCatalog(), R"("max_sequences": 16)"));
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  auto stub = server_->NewStub();
  const std::vector<std::vector<int32_t>> good = {MakeIds(6, 1)};

  struct Case {
    std::string name;
    v1::SubmitJobRequest request;
    grpc::StatusCode code;
    std::string message_part;
  };
  std::vector<Case> cases;
  {
    auto r = ScanRequest(good, "no-such-model");
    cases.push_back({"unknown model", r, grpc::StatusCode::NOT_FOUND, "no-such-model"});
  }
  {
    auto r = ScanRequest({});
    cases.push_back({"no sequences", r, grpc::StatusCode::INVALID_ARGUMENT, "at least one sequence"});
  }
  {
    auto r = ScanRequest(good);
    r.mutable_request()->add_sequences();
    cases.push_back({"unset sequence", r, grpc::StatusCode::INVALID_ARGUMENT, "sequence 1"});
  }
  {
    auto r = ScanRequest({{}});
    cases.push_back({"empty ids", r, grpc::StatusCode::INVALID_ARGUMENT, "sequence 0"});
  }
  {
    auto r = ScanRequest({{1, 5, 512}});
    cases.push_back({"id too large", r, grpc::StatusCode::INVALID_ARGUMENT, "token id 512"});
  }
  {
    auto r = ScanRequest({{1, -3}});
    cases.push_back({"negative id", r, grpc::StatusCode::INVALID_ARGUMENT, "token id -3"});
  }
  {
    auto r = ScanRequest({MakeIds(513, 3)});
    cases.push_back({"too long", r, grpc::StatusCode::INVALID_ARGUMENT, "context"});
  }
  for (int k : {0, 65, -1}) {
    auto r = ScanRequest(good);
    r.mutable_request()->mutable_scan()->set_top_k(k);
    cases.push_back({absl::StrCat("top_k ", k), r, grpc::StatusCode::INVALID_ARGUMENT, "top_k"});
  }
  {
    auto r = ScanRequest(good);
    r.mutable_request()->mutable_scan()->set_abs_threshold(-1);
    cases.push_back({"negative abs", r, grpc::StatusCode::INVALID_ARGUMENT, "abs_threshold"});
  }
  {
    auto r = ScanRequest(good);
    r.mutable_request()->mutable_scan()->set_rel_threshold(-5);
    cases.push_back({"negative rel", r, grpc::StatusCode::INVALID_ARGUMENT, "rel_threshold"});
  }
  {
    auto r = ScanRequest(good);
    r.mutable_request()->mutable_scan()->set_step_fraction(0);
    cases.push_back({"step 0", r, grpc::StatusCode::INVALID_ARGUMENT, "step_fraction"});
  }
  {
    auto r = ScanRequest(good);
    r.mutable_request()->clear_scan();
    cases.push_back({"no params", r, grpc::StatusCode::INVALID_ARGUMENT, "params"});
  }
  {
    auto r = ScanRequest({});
    r.mutable_request()->add_sequences()->set_text("Once upon a time");
    cases.push_back({"text without tokenizer", r, grpc::StatusCode::INVALID_ARGUMENT, "no tokenizer"});
  }
  {
    std::vector<std::vector<int32_t>> many(17, MakeIds(4, 1));
    cases.push_back({"too many sequences", ScanRequest(many), grpc::StatusCode::RESOURCE_EXHAUSTED, "too many"});
  }
  {
    auto r = ScanRequest(good);
    r.mutable_request()->set_dtype(static_cast<v1::Dtype>(42));
    cases.push_back({"bad dtype", r, grpc::StatusCode::INVALID_ARGUMENT, "dtype"});
  }
  {
    auto r = ScanRequest({});
    r.mutable_request()->add_sequences()->set_text(std::string(17 << 20, 'a'));
    cases.push_back({"oversized", r, grpc::StatusCode::RESOURCE_EXHAUSTED, ""});
  }
  const bool have_aidreams = !AiDreamsPath().empty();
  if (have_aidreams) {
    auto r = ScanRequest({}, "aidreams260K");
    r.mutable_request()->add_sequences()->set_text("I dreamed \xC3\x28 of \xFF");
    cases.push_back({"invalid UTF-8", r, grpc::StatusCode::INVALID_ARGUMENT, "UTF-8"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    grpc::Status s = TrySubmit(*stub, c.request);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_NE(s.error_message().find(c.message_part), std::string::npos) << s.error_message();
    EXPECT_LE(s.error_message().size(), 2048u);
  }

  // Unknown job ids.
  {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_job_id("j-0000000000000000");
    v1::Job job;
    EXPECT_EQ(stub->GetJob(&ctx, req, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::CancelJobRequest req;
    req.set_job_id("j-nope");
    v1::Job job;
    EXPECT_EQ(stub->CancelJob(&ctx, req, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::Status s;
    WatchAll(*stub, "j-nope", 0, seconds(10), &s);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  }

  // A text longer than the context is found by the worker: FAILED, INVALID_ARGUMENT.
  if (have_aidreams) {
    auto r = ScanRequest({}, "aidreams260K");
    std::string text;
    for (int i = 0; i < 60; ++i) text += "I dreamed of a gentle hum. ";
    r.mutable_request()->add_sequences()->set_text(text);
    const v1::Job failed = WaitTerminal(*stub, Submit(*stub, r).id(), seconds(60));
    EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
    EXPECT_EQ(failed.error().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT))
        << failed.error().message();
    // And a good text job completes.
    auto ok = ScanRequest({}, "aidreams260K");
    ok.mutable_request()->add_sequences()->set_text("I dreamed");
    const v1::Job done = WaitTerminal(*stub, Submit(*stub, ok).id(), seconds(60));
    EXPECT_EQ(done.state(), v1::JOB_STATE_COMPLETED) << done.error().message();
  }

  // Still healthy: a good job completes with the engine's result.
  const v1::Job job = WaitTerminal(*stub, Submit(*stub, ScanRequest(good)).id(), seconds(60));
  const Expected& want = ExpectedFor(good);
  EXPECT_EQ(CompareResults(job, want.blocks, want.summary), "");
}

// The worker batches records computed within 10 ms of each other, never
// longer: on a job whose units take 100 ms each, the block records are
// stored one unit apart while it runs (not all at its end), in block order.
TEST_F(ServiceTest, RecordsOfASlowJobAreStoredAsTheyAreComputed) {
  SKIP_WITHOUT_SHARED();
  server_ = std::make_unique<ServerProcess>(
      dir_.path(), TestServerConfig(dir_.path(), 1, TestCatalog(),
                                    R"("worker_args": ["--test-unit-delay-ms=100"])"));
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  auto stub = server_->NewStub();
  const v1::Job job = Submit(*stub, ScanRequest({MakeIds(12, 3)}));
  grpc::Status status;
  const auto events = WatchAll(*stub, job.id(), 0, seconds(60), &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<double> block_times;
  std::vector<int> blocks;
  for (const auto& e : events) {
    if (e.has_result() && e.result().has_scan_block()) {
      block_times.push_back(e.time().seconds() + e.time().nanos() * 1e-9);
      blocks.push_back(e.result().scan_block().block());
    }
  }
  ASSERT_EQ(blocks.size(), 10u);  // stories260K: 5 layers = blocks 1..10
  for (size_t i = 0; i < blocks.size(); ++i) EXPECT_EQ(blocks[i], static_cast<int>(i + 1));
  // 100 ms per unit: consecutive records at least 50 ms apart (a batch
  // held to the end of the job would store them in the same millisecond).
  for (size_t i = 1; i < block_times.size(); ++i) {
    EXPECT_GE(block_times[i] - block_times[i - 1], 0.05) << "blocks " << i << " and " << i + 1;
  }
}

// A late watcher gets every event; after_seq resumes; cancel works for
// queued and running jobs; client_request_id makes submission idempotent.
TEST_F(ServiceTest, LateWatcherCancelAndIdempotentSubmit) {
  SKIP_WITHOUT_SHARED();
  server_ = std::make_unique<ServerProcess>(
      dir_.path(), TestServerConfig(dir_.path(), 1, TestCatalog(),
                                    R"("worker_args": ["--test-unit-delay-ms=50"])"));
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  auto stub = server_->NewStub();

  const std::vector<std::vector<int32_t>> seqs = {MakeIds(10, 42)};
  v1::SubmitJobRequest req = ScanRequest(seqs);
  req.set_client_request_id("req-1");
  const v1::Job job = Submit(*stub, req);
  const v1::Job again = Submit(*stub, req);
  EXPECT_EQ(again.id(), job.id());

  // Early watcher, concurrently.
  std::vector<v1::JobEvent> early;
  std::thread watcher([&] { early = WatchAll(*stub, job.id(), 0, seconds(60)); });
  // Queue two more and cancel the last while queued.
  const v1::Job running_victim = Submit(*stub, ScanRequest({MakeIds(30, 5)}));
  const v1::Job queued_victim = Submit(*stub, ScanRequest({MakeIds(9, 6)}));
  EXPECT_EQ(queued_victim.state(), v1::JOB_STATE_QUEUED);
  EXPECT_GE(queued_victim.queue_position(), 2);
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-sinkscope-user", "alice");
    v1::CancelJobRequest c;
    c.set_job_id(queued_victim.id());
    v1::Job out;
    ASSERT_TRUE(stub->CancelJob(&ctx, c, &out).ok());
    EXPECT_EQ(out.state(), v1::JOB_STATE_CANCELLED);
  }
  watcher.join();
  const v1::Job done = WaitTerminal(*stub, job.id(), seconds(60));
  ASSERT_EQ(done.state(), v1::JOB_STATE_COMPLETED);

  const auto late = WatchAll(*stub, job.id(), 0, seconds(30));
  ASSERT_EQ(late.size(), early.size());
  for (size_t i = 0; i < late.size(); ++i) {
    EXPECT_EQ(late[i].SerializeAsString(), early[i].SerializeAsString()) << "event " << i;
  }
  ASSERT_GE(late.size(), 14u);  // queued, loading x2, >=1 running, 10 blocks, summary, completed
  EXPECT_TRUE(late.front().has_queued());
  EXPECT_TRUE(late.back().has_completed());
  EXPECT_EQ(late.back().seq(), done.last_event_seq());
  const auto tail = WatchAll(*stub, job.id(), late.size() - 3, seconds(30));
  ASSERT_EQ(tail.size(), 3u);
  EXPECT_EQ(tail[0].seq(), static_cast<int64_t>(late.size() - 2));

  // Cancel the running job.
  {
    const auto deadline = std::chrono::steady_clock::now() + seconds(30);
    v1::Job j;
    while (std::chrono::steady_clock::now() < deadline) {
      grpc::ClientContext ctx;
      v1::GetJobRequest g;
      g.set_job_id(running_victim.id());
      ASSERT_TRUE(stub->GetJob(&ctx, g, &j).ok());
      if (j.state() == v1::JOB_STATE_RUNNING) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_EQ(j.state(), v1::JOB_STATE_RUNNING);
    grpc::ClientContext ctx;
    v1::CancelJobRequest c;
    c.set_job_id(running_victim.id());
    v1::Job out;
    ASSERT_TRUE(stub->CancelJob(&ctx, c, &out).ok());
    const v1::Job cancelled = WaitTerminal(*stub, running_victim.id(), seconds(30));
    EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
    grpc::ClientContext ctx2;
    v1::CancelJobRequest c2;
    c2.set_job_id(job.id());
    EXPECT_EQ(stub->CancelJob(&ctx2, c2, &out).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // The worker is free again after the cancel.
  const v1::Job after = WaitTerminal(*stub, Submit(*stub, ScanRequest({MakeIds(4, 77)})).id(), seconds(60));
  EXPECT_EQ(after.state(), v1::JOB_STATE_COMPLETED) << after.error().message();
}

// The scan through the service on a model that does spike: shared/'s
// bytelm-demo on the text shared/README.md names, with its published values
// from an independent float64 numpy forward (position-0 spike on channel 251:
// -85.81 after block 2, of which block 2 adds -85.07; per-block max |h| and
// medians; perplexity 3.326), at the thresholds that call it massive
// (abs 50, rel 20). The whole result must also equal the engine's in this
// process value by value (spike tokens, channels, step-up / step-down blocks).
TEST_F(ServiceTest, ByteLmDemoScanThroughServiceMatchesPublishedFloat64Values) {
  SKIP_WITHOUT_SHARED();
  if (ByteLmDemoPath().empty()) {
    SINKSCOPE_SKIP_MISSING("shared/models/bytelm-demo/bytelm-demo.bin not found");
  }
  const std::string catalog = absl::StrCat(
      R"({"models": [{"name": "bytelm-demo", "format": "llama2c", "path": ")", ByteLmDemoPath(),
      R"(", "default_dtype": "float32"}]})");
  server_ = std::make_unique<ServerProcess>(dir_.path(), TestServerConfig(dir_.path(), 1, catalog));
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  auto stub = server_->NewStub();
  const std::string text =
      "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.";
  std::vector<int32_t> ids = {256};  // BOS, then one id per UTF-8 byte
  for (unsigned char c : text) ids.push_back(c);
  ASSERT_EQ(ids.size(), 81u);

  ScanParams params;
  params.abs_threshold = 50;
  params.rel_threshold = 20;
  v1::SubmitJobRequest scan = ScanRequest({ids}, "bytelm-demo");
  scan.mutable_request()->mutable_scan()->set_abs_threshold(params.abs_threshold);
  scan.mutable_request()->mutable_scan()->set_rel_threshold(params.rel_threshold);
  v1::SubmitJobRequest ppl;
  ppl.mutable_request()->set_model("bytelm-demo");
  auto* seq = ppl.mutable_request()->add_sequences()->mutable_ids();
  for (int32_t id : ids) seq->add_ids(id);
  ppl.mutable_request()->mutable_perplexity()->mutable_eval()->set_chunk_length(81);
  const std::string scan_id = Submit(*stub, scan).id();
  const std::string ppl_id = Submit(*stub, ppl).id();
  const v1::Job job = WaitTerminal(*stub, scan_id, seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.error().message();
  ASSERT_EQ(job.results_size(), 13);

  // Published (shared/README.md): max |h| (2 decimals) and median |h|
  // (3 decimals) of the post-residual after blocks 1..12.
  const double max_abs[12] = {5.15,   85.81,  93.06,  111.42, 119.74, 125.23,
                              129.98, 151.43, 165.58, 171.87, 184.93, 193.16};
  const double median_abs[12] = {0.324, 1.162, 1.576, 1.904, 2.190, 2.532,
                                 2.806, 3.031, 3.325, 3.786, 4.112, 6.961};
  for (int b = 0; b < 12; ++b) {
    SCOPED_TRACE(absl::StrCat("block ", b + 1));
    const v1::ScanBlock& g = job.results(b).scan_block();
    EXPECT_EQ(g.block(), b + 1);
    EXPECT_NEAR(g.max_abs(), max_abs[b], 0.006);
    ASSERT_EQ(g.median_abs_size(), 1);
    EXPECT_NEAR(g.median_abs(0), median_abs[b], 0.0006);
  }
  // Block 2 (layer 0 MLP) is where the spike appears: its largest entry.
  const v1::ScanBlock& b2 = job.results(1).scan_block();
  ASSERT_GE(b2.resid_top_size(), 1);
  EXPECT_EQ(b2.resid_top(0).position(), 0);
  EXPECT_EQ(b2.resid_top(0).channel(), 251);
  EXPECT_NEAR(b2.resid_top(0).value(), -85.81, 0.006);
  ASSERT_GE(b2.output_top_size(), 1);
  EXPECT_EQ(b2.output_top(0).position(), 0);
  EXPECT_EQ(b2.output_top(0).channel(), 251);
  EXPECT_NEAR(b2.output_top(0).value(), -85.07, 0.006);
  EXPECT_GT(b2.n_massive(), 0);
  EXPECT_EQ(job.results(0).scan_block().n_massive(), 0);  // 5.15 < 50

  const v1::ScanSummary& s = job.results(12).scan_summary();
  EXPECT_NEAR(s.peak_abs(), 193.16, 0.006);
  EXPECT_EQ(s.peak_block().block(), 12);
  bool token0 = false;
  for (const v1::SpikeToken& t : s.spike_tokens()) token0 |= t.sequence() == 0 && t.position() == 0;
  EXPECT_TRUE(token0) << s.ShortDebugString();
  EXPECT_NE(std::find(s.spike_channels().begin(), s.spike_channels().end(), 251),
            s.spike_channels().end());
  ASSERT_GT(s.step_up_blocks_size(), 0);
  EXPECT_EQ(s.step_up_blocks(0).block(), 2);  // the first step-up block

  // Every value, list and index equals the engine's, computed here.
  std::vector<BlockRecord> blocks;
  ScanSummary summary;
  std::string error;
  ASSERT_TRUE(EngineScan({ids}, &blocks, &summary, &error, ByteLmDemoPath(), params)) << error;
  EXPECT_FALSE(summary.spike_tokens.empty());
  EXPECT_EQ(CompareResults(job, blocks, summary, "bytelm-demo", params), "");

  // Perplexity of the 80 next bytes (published: 3.326).
  const v1::Job pj = WaitTerminal(*stub, ppl_id, seconds(120));
  ASSERT_EQ(pj.state(), v1::JOB_STATE_COMPLETED) << pj.error().message();
  const v1::PerplexitySummary& ps = pj.results(pj.results_size() - 1).perplexity_summary();
  EXPECT_EQ(ps.n_scored(), 80);
  EXPECT_NEAR(ps.perplexity(), 3.326, 0.0006);
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
