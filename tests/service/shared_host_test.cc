// Shared-host tests against a real sinkscope-server with real workers:
// API tokens and isolation of every RPC, TLS, fair share, per-user limits,
// memory budgets (refusal and eviction), cancellation latency.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/common/skip.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ops_test_util.h"
#include "service_test_util.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

double ToSeconds(const google::protobuf::Timestamp& t) { return t.seconds() + t.nanos() * 1e-9; }

TEST(AuthTest, EveryRpcNeedsAValidTokenAndJobsAreIsolated) {
  SKIP_WITHOUT_SHARED();
  TempDir dir;
  OpsServer server(dir.path(), 1, R"("auth": "token")");
  ASSERT_TRUE(server.Start()) << server.log();
  const std::string alice = server.CreateToken("alice");
  const std::string bob = server.CreateToken("bob");
  const std::string admin = server.CreateToken("root", /*admin=*/true);
  const std::string carol = server.CreateToken("carol");
  ASSERT_TRUE(absl::StartsWith(alice, "sst_")) << alice;
  EXPECT_NE(alice, bob);
  EXPECT_TRUE(absl::StrContains(server.TokenCommand("revoke --user carol"), "revoked 1"));
  const std::string listing = server.TokenCommand("list");
  EXPECT_TRUE(absl::StrContains(listing, "alice")) << listing;
  EXPECT_FALSE(absl::StrContains(listing, alice.substr(8))) << "list shows a secret";
  {  // The database keeps only salted hashes.
    std::ifstream db(dir.path() + "/jobs.db", std::ios::binary);
    std::stringstream bytes;
    bytes << db.rdbuf();
    EXPECT_FALSE(absl::StrContains(bytes.str(), alice.substr(alice.rfind('_') + 1)));
  }
  auto stub = server.Stub();

  const v1::Job job = SubmitAs(*stub, alice, ScanRequest({MakeIds(6, 1)}));
  ASSERT_FALSE(job.id().empty());
  EXPECT_EQ(job.owner(), "alice");

  // Every RPC with no token, a revoked token, a garbage token, and another
  // user's job id.
  struct Case {
    std::string name, token;
    grpc::StatusCode want_own, want_foreign;
  };
  const std::vector<Case> cases = {
      {"no token", "", grpc::UNAUTHENTICATED, grpc::UNAUTHENTICATED},
      {"revoked token", carol, grpc::UNAUTHENTICATED, grpc::UNAUTHENTICATED},
      {"forged token", alice.substr(0, alice.size() - 4) + "0000", grpc::UNAUTHENTICATED,
       grpc::UNAUTHENTICATED},
      {"other user", bob, grpc::OK, grpc::NOT_FOUND},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    {
      auto ctx = Ctx(c.token);
      v1::Job out;
      EXPECT_EQ(stub->SubmitJob(ctx.get(), ScanRequest({MakeIds(5, 2)}), &out).error_code(),
                c.want_own)
          << "SubmitJob";
    }
    {
      auto ctx = Ctx(c.token);
      v1::ListModelsResponse out;
      EXPECT_EQ(stub->ListModels(ctx.get(), v1::ListModelsRequest(), &out).error_code(), c.want_own)
          << "ListModels";
    }
    {
      auto ctx = Ctx(c.token);
      v1::ListJobsResponse out;
      grpc::Status s = stub->ListJobs(ctx.get(), v1::ListJobsRequest(), &out);
      EXPECT_EQ(s.error_code(), c.want_own) << "ListJobs";
      for (const v1::Job& j : out.jobs()) EXPECT_NE(j.id(), job.id()) << "ListJobs shows alice's job";
    }
    {
      auto ctx = Ctx(c.token);
      v1::ListJobsRequest req;
      req.set_owner("alice");
      v1::ListJobsResponse out;
      grpc::Status s = stub->ListJobs(ctx.get(), req, &out);
      EXPECT_EQ(s.error_code(), c.want_own) << "ListJobs owner=alice";
      EXPECT_EQ(out.jobs_size(), 0);
    }
    {
      auto ctx = Ctx(c.token);
      v1::GetJobRequest req;
      req.set_job_id(job.id());
      v1::Job out;
      grpc::Status s = stub->GetJob(ctx.get(), req, &out);
      EXPECT_EQ(s.error_code(), c.want_foreign) << "GetJob";
      if (c.want_foreign == grpc::NOT_FOUND) {  // same answer as an unknown id
        EXPECT_EQ(s.error_message(), absl::StrCat("job ", job.id(), " not found"));
      }
    }
    {
      auto ctx = Ctx(c.token);
      v1::WatchJobRequest req;
      req.set_job_id(job.id());
      auto reader = stub->WatchJob(ctx.get(), req);
      v1::JobEvent e;
      int n = 0;
      while (reader->Read(&e)) ++n;
      EXPECT_EQ(reader->Finish().error_code(), c.want_foreign) << "WatchJob";
      EXPECT_EQ(n, 0);
    }
    {
      auto ctx = Ctx(c.token);
      v1::CancelJobRequest req;
      req.set_job_id(job.id());
      v1::Job out;
      EXPECT_EQ(stub->CancelJob(ctx.get(), req, &out).error_code(), c.want_foreign) << "CancelJob";
    }
  }
  // The owner and the admin see it; nobody cancelled it.
  const v1::Job done = WaitDone(*stub, alice, job.id(), seconds(60));
  EXPECT_EQ(done.state(), v1::JOB_STATE_COMPLETED);
  {
    auto ctx = Ctx(admin);
    v1::ListJobsResponse out;
    ASSERT_TRUE(stub->ListJobs(ctx.get(), v1::ListJobsRequest(), &out).ok());
    std::set<std::string> owners;
    for (const v1::Job& j : out.jobs()) owners.insert(j.owner());
    EXPECT_TRUE(owners.count("alice") && owners.count("bob"));
  }
  {
    auto ctx = Ctx(admin);
    v1::GetJobRequest req;
    req.set_job_id(job.id());
    v1::Job out;
    EXPECT_TRUE(stub->GetJob(ctx.get(), req, &out).ok());
  }
  // Revoking a live token takes effect at once.
  EXPECT_TRUE(absl::StrContains(server.TokenCommand("revoke --user bob"), "revoked 1"));
  {
    auto ctx = Ctx(bob);
    v1::ListModelsResponse out;
    EXPECT_EQ(stub->ListModels(ctx.get(), v1::ListModelsRequest(), &out).error_code(),
              grpc::UNAUTHENTICATED);
  }
}

TEST(AuthTest, TlsWithASelfSignedCertificate) {
  SKIP_WITHOUT_SHARED();
  TempDir dir;
  int rc = 0;
  RunCommand(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                          "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
                          dir.path(), "/key.pem -out ", dir.path(), "/cert.pem 2>&1"),
             &rc);
  if (rc != 0) { SINKSCOPE_SKIP_MISSING("the openssl command failed; cannot make a test certificate"); }
  OpsServer server(dir.path(), 1,
                   absl::StrCat(R"("auth": "token", "tls_cert": ")", dir.path(),
                                R"(/cert.pem", "tls_key": ")", dir.path(), R"(/key.pem")"));
  ASSERT_TRUE(server.Start()) << server.log();
  EXPECT_TRUE(absl::StrContains(server.log(), ", TLS, auth token"));
  const std::string token = server.CreateToken("alice");
  std::ifstream ca_in(dir.path() + "/cert.pem");
  std::stringstream ca;
  ca << ca_in.rdbuf();
  auto tls = server.Stub(ca.str());
  const v1::Job job = SubmitAs(*tls, token, ScanRequest({MakeIds(5, 3)}));
  ASSERT_FALSE(job.id().empty());
  EXPECT_EQ(WaitDone(*tls, token, job.id(), seconds(60)).state(), v1::JOB_STATE_COMPLETED);
  // Plaintext against the TLS port fails.
  auto plain = server.Stub();
  auto ctx = Ctx(token, seconds(3));
  v1::ListModelsResponse out;
  EXPECT_FALSE(plain->ListModels(ctx.get(), v1::ListModelsRequest(), &out).ok());
  // The client binary's --tls-ca works too.
  const std::string client =
      (std::filesystem::path(SINKSCOPE_SERVER_BIN).parent_path().parent_path() / "client" / "sinkscope")
          .string();
  if (access(client.c_str(), X_OK) != 0) {
    std::printf("[tls] %s not built; skipping the CLI part\n", client.c_str());
  } else {
    int status = 0;
    std::string text = RunCommand(absl::StrCat(client, " --server localhost:", server.port(),
                                               " --tls-ca ", dir.path(), "/cert.pem --token ",
                                               token, " models 2>&1"),
                                  &status);
    EXPECT_EQ(status, 0) << text;
    EXPECT_TRUE(absl::StrContains(text, "stories260K")) << text;
    std::printf("[tls] sinkscope --tls-ca --token models: ok\n");
  }
}

TEST(AuthTest, PlaintextOnANonLoopbackAddressIsRefused) {
  SKIP_WITHOUT_SHARED();
  TempDir dir;
  WriteFile(dir.path() + "/catalog.json", TestCatalog());
  int status = 0;
  const std::string out = RunCommand(
      absl::StrCat(SINKSCOPE_SERVER_BIN, " --listen 0.0.0.0:0 --database ", dir.path(),
                   "/jobs.db --catalog ", dir.path(), "/catalog.json --metrics-listen off 2>&1"),
      &status);
  EXPECT_NE(status, 0);
  EXPECT_TRUE(absl::StrContains(out, "not a loopback address")) << out;
}

TEST(SchedulingTest, FairShareLetsALateUserThrough) {
  SKIP_WITHOUT_SHARED();
  TempDir dir;
  OpsServer server(dir.path(), 2,
                   R"("auth": "token", "queue_event_interval_ms": 200, "worker_args": ["--test-unit-delay-ms", "20"])");
  ASSERT_TRUE(server.Start()) << server.log();
  const std::string a = server.CreateToken("userA");
  const std::string b = server.CreateToken("userB");
  auto stub = server.Stub();
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 50; ++i) jobs.push_back(SubmitAs(*stub, a, ScanRequest({MakeIds(8, 100 + i)})));
  for (int i = 0; i < 5; ++i) jobs.push_back(SubmitAs(*stub, b, ScanRequest({MakeIds(8, 200 + i)})));
  for (const v1::Job& j : jobs) ASSERT_FALSE(j.id().empty());
  // A's last job: its Queued positions follow the queue.
  std::vector<v1::JobEvent> last_a_events;
  std::thread watcher([&] {
    auto ctx = Ctx(a, seconds(180));
    v1::WatchJobRequest req;
    req.set_job_id(jobs[49].id());
    auto reader = stub->WatchJob(ctx.get(), req);
    v1::JobEvent e;
    while (reader->Read(&e)) last_a_events.push_back(e);
    reader->Finish();
  });
  std::vector<v1::Job> done;
  for (size_t i = 0; i < jobs.size(); ++i) {
    done.push_back(WaitDone(*stub, i < 50 ? a : b, jobs[i].id(), seconds(180)));
    ASSERT_EQ(done.back().state(), v1::JOB_STATE_COMPLETED);
  }
  watcher.join();
  // The schedule, by dispatch time.
  std::vector<size_t> order(done.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return ToSeconds(done[x].start_time()) < ToSeconds(done[y].start_time());
  });
  std::string schedule;
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t i = order[k];
    absl::StrAppend(&schedule, k ? " " : "", i < 50 ? "A" : "B", i < 50 ? i + 1 : i - 49);
  }
  std::printf("[fairness] dispatch order: %s\n", schedule.c_str());
  double b_last_end = 0;
  for (size_t i = 50; i < done.size(); ++i) b_last_end = std::max(b_last_end, ToSeconds(done[i].end_time()));
  int a_done_before = 0;
  for (size_t i = 0; i < 50; ++i) a_done_before += ToSeconds(done[i].end_time()) <= b_last_end;
  std::printf("[fairness] B's 5 jobs all finished after %d of A's 50 had finished\n", a_done_before);
  EXPECT_LE(a_done_before, 10) << "B's jobs must finish before A's last 40";
  int queued_events = 0;
  std::string positions;
  for (const v1::JobEvent& e : last_a_events) {
    if (e.has_queued()) {
      ++queued_events;
      absl::StrAppend(&positions, " ", e.queued().position());
    }
  }
  std::printf("[fairness] Queued positions seen by A's last job:%s\n", positions.c_str());
  EXPECT_GE(queued_events, 3);
  ASSERT_FALSE(last_a_events.empty());
  EXPECT_TRUE(last_a_events.back().has_completed());
}

TEST(SchedulingTest, PerUserQueueLimitAndPriority) {
  SKIP_WITHOUT_SHARED();
  TempDir dir;
  OpsServer server(dir.path(), 1,
                   R"("auth": "token", "max_queued_per_user": 3, "worker_args": ["--test-unit-delay-ms", "100"])");
  ASSERT_TRUE(server.Start()) << server.log();
  const std::string a = server.CreateToken("userA");
  auto stub = server.Stub();
  // A long job occupies the worker.
  const v1::Job blocker = SubmitAs(*stub, a, ScanRequest({MakeIds(8, 1)}));
  ASSERT_FALSE(blocker.id().empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  v1::SubmitJobRequest low = ScanRequest({MakeIds(8, 2)});
  v1::SubmitJobRequest high = ScanRequest({MakeIds(8, 3)});
  high.set_priority(10);
  const v1::Job j_low = SubmitAs(*stub, a, low);
  const v1::Job j_mid = SubmitAs(*stub, a, ScanRequest({MakeIds(8, 4)}));
  const v1::Job j_high = SubmitAs(*stub, a, high);
  ASSERT_FALSE(j_high.id().empty());
  EXPECT_EQ(j_high.queue_position(), 1) << "priority 10 goes first among the user's jobs";
  grpc::Status s;
  SubmitAs(*stub, a, ScanRequest({MakeIds(8, 5)}), &s);
  EXPECT_EQ(s.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "(limit 3)")) << s.error_message();
  std::printf("[limits] 4th queued job refused: %s\n", s.error_message().c_str());
  const v1::Job d_high = WaitDone(*stub, a, j_high.id(), seconds(60));
  const v1::Job d_low = WaitDone(*stub, a, j_low.id(), seconds(60));
  WaitDone(*stub, a, j_mid.id(), seconds(60));
  EXPECT_LT(ToSeconds(d_high.start_time()), ToSeconds(d_low.start_time()));
}

TEST(MemoryTest, JobLargerThanEveryBudgetIsRefusedWithTheNumbers) {
  SKIP_WITHOUT_SHARED();
  TempDir dir;
  OpsServer server(dir.path(), 1, R"("worker_memory_bytes": 100000)");
  ASSERT_TRUE(server.Start()) << server.log();
  auto stub = server.Stub();
  grpc::Status s;
  SubmitAs(*stub, "", ScanRequest({MakeIds(8, 1)}), &s);
  EXPECT_EQ(s.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "estimated")) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "budget is 100000 bytes")) << s.error_message();
  std::printf("[memory] refused: %s\n", s.error_message().c_str());
}

TEST(MemoryTest, TwoModelsThatDoNotFitTogetherAreServedByEviction) {
  SKIP_WITHOUT_SHARED();
  if (AiDreamsPath().empty()) { SINKSCOPE_SKIP_MISSING("aidreams260K missing; needs two models"); }
  TempDir dir;
  // One 260K-parameter float32 model (~1.04 MB) + activations fit in 1.6 MB; two do not.
  OpsServer server(dir.path(), 1, R"("worker_memory_bytes": 1600000)");
  ASSERT_TRUE(server.Start()) << server.log();
  auto stub = server.Stub();
  std::vector<std::string> phases;
  for (const std::string model : {"stories260K", "aidreams260K", "stories260K", "aidreams260K"}) {
    const v1::Job job = SubmitAs(*stub, "", ScanRequest({MakeIds(8, 7)}, model));
    ASSERT_FALSE(job.id().empty());
    ASSERT_EQ(WaitDone(*stub, "", job.id(), seconds(60)).state(), v1::JOB_STATE_COMPLETED);
    for (const v1::JobEvent& e : WatchAll(*stub, job.id(), 0, seconds(30))) {
      if (e.has_model_loading() && e.model_loading().progress() == 1) {
        phases.push_back(model + ":" + e.model_loading().phase());
      }
    }
    auto w = server.WorkerStub(0);
    grpc::ClientContext ctx;
    v1::WorkerStatus status;
    ASSERT_TRUE(w->GetStatus(&ctx, v1::GetStatusRequest(), &status).ok());
    ASSERT_EQ(status.loaded_models_size(), 1) << status.ShortDebugString();
    EXPECT_EQ(status.loaded_models(0).name(), model);
    EXPECT_LE(status.model_bytes(), 1600000);
  }
  std::string joined;
  for (const auto& p : phases) absl::StrAppend(&joined, " ", p);
  std::printf("[memory] model phases:%s\n", joined.c_str());
  EXPECT_EQ(joined, " stories260K:loaded aidreams260K:loaded stories260K:loaded aidreams260K:loaded");
  EXPECT_TRUE(absl::StrContains(server.log(), "evicting model stories260K"));
}

TEST(CancelTest, CancellingALongJobFreesTheWorkerWithinOneLayer) {
  SKIP_WITHOUT_SHARED();
  TempDir dir;
  constexpr int kUnitDelayMs = 100;  // one unit = one block; a layer = 2 blocks
  OpsServer server(dir.path(), 1,
                   absl::StrCat(R"("worker_args": ["--test-unit-delay-ms", ")", kUnitDelayMs, R"("])"));
  ASSERT_TRUE(server.Start()) << server.log();
  auto stub = server.Stub();
  // Three lengths: 3 batches x 10 blocks = 30 units, ~3 s.
  const v1::Job job = SubmitAs(*stub, "", ScanRequest({MakeIds(20, 1), MakeIds(30, 2), MakeIds(40, 3)}));
  ASSERT_FALSE(job.id().empty());
  // Wait until it computes.
  auto ctx = Ctx("", seconds(60));
  v1::WatchJobRequest req;
  req.set_job_id(job.id());
  auto reader = stub->WatchJob(ctx.get(), req);
  v1::JobEvent e;
  while (reader->Read(&e)) {
    if (e.has_running() && e.running().units_done() >= 3) break;
  }
  const auto t0 = Clock::now();
  const auto t0_sys = std::chrono::system_clock::now();
  {
    auto c = Ctx("");
    v1::CancelJobRequest creq;
    creq.set_job_id(job.id());
    v1::Job out;
    ASSERT_TRUE(stub->CancelJob(c.get(), creq, &out).ok());
  }
  double cancelled_ms = -1;
  while (reader->Read(&e)) {
    if (e.has_cancelled()) {
      cancelled_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      break;
    }
  }
  reader->Finish();
  ASSERT_GE(cancelled_ms, 0) << "no Cancelled event";
  // The worker is free when it starts the next job: its ModelLoading event
  // is sent by the worker once the cancelled job has unwound.
  const v1::Job next = SubmitAs(*stub, "", ScanRequest({MakeIds(5, 9)}));
  const v1::Job next_done = WaitDone(*stub, "", next.id(), seconds(30));
  ASSERT_EQ(next_done.state(), v1::JOB_STATE_COMPLETED);
  double free_ms = -1;
  for (const v1::JobEvent& ev : WatchAll(*stub, next.id(), 0, seconds(30))) {
    if (ev.has_model_loading()) {
      free_ms = (ToSeconds(ev.time()) -
                 std::chrono::duration<double>(t0_sys.time_since_epoch()).count()) * 1000;
      break;
    }
  }
  std::printf("[cancel] CancelJob -> Cancelled event: %.0f ms; -> worker starts the next job: %.0f ms "
              "(one layer = 2 blocks = %d ms of test delay + compute)\n",
              cancelled_ms, free_ms, 2 * kUnitDelayMs);
  EXPECT_LT(cancelled_ms, 2 * kUnitDelayMs + 150);
  EXPECT_GE(free_ms, 0);
  EXPECT_LT(free_ms, 2 * kUnitDelayMs + 150) << "the worker stays busy longer than one layer";
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
