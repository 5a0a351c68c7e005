// Several hosts on one PostgreSQL queue: two real sinkscope-server
// processes, each with its own cpu workers, on a PostgreSQL server this
// test starts on loopback. Expected results come from the engine run in
// this process (EngineScan), never from the service.
#include <signal.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/sql_db.h"
#include "service_test_util.h"
#include "tests/common/skip.h"
#include "tests/common/test_postgres.h"

namespace sinkscope {
namespace testing {
namespace {

constexpr int kLeaseMs = 1500;

/// A temporary directory removed with rm (see TestPostgres: libtorch.so's
/// std::filesystem::remove_all crashes in this binary).
class HostDir {
 public:
  HostDir() {
    char tmpl[] = "/tmp/ssmh-XXXXXX";  // short: Unix socket paths are limited
    path_ = mkdtemp(tmpl) ? tmpl : "";
  }
  ~HostDir() {
    if (!path_.empty()) std::system(("rm -rf '" + path_ + "'").c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class MultiHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Stories260KPath().empty()) {
      SINKSCOPE_SKIP_MISSING("shared stories260K checkpoint");
      return;
    }
    std::string why;
    pg_ = TestPostgres::Start(&why);
    if (pg_ == nullptr) {
      SINKSCOPE_SKIP_MISSING(why);
      return;
    }
    url_ = pg_->NewDatabase("multihost");
    ASSERT_FALSE(url_.empty());
  }
  /// A host: 2 cpu workers, each scan unit slowed by `delay_ms`.
  std::unique_ptr<ServerProcess> StartHost(HostDir& dir, const std::string& host, int delay_ms) {
    auto server = std::make_unique<ServerProcess>(
        dir.path(), TestServerConfig(dir.path(), 2, TestCatalog(),
                                     absl::StrCat(R"("database": ")", url_, R"(", "host_id": ")",
                                                  host, R"(", "lease_ms": )", kLeaseMs,
                                                  R"(, "worker_args": ["--test-unit-delay-ms=)",
                                                  delay_ms, R"("])")));
    EXPECT_TRUE(server->Start()) << ReadTail(server->log_path());
    return server;
  }
  /// Which host ran each job to completion (from the shared database).
  std::map<std::string, std::string> LeaseHosts() {
    std::map<std::string, std::string> out;
    auto db = server::OpenSqlDb(url_);
    if (!db.ok()) return out;
    auto tx = (*db)->Begin();
    if (!tx.ok()) return out;
    auto rows = (*tx)->Query("SELECT id, lease_host FROM jobs");
    if (!rows.ok()) return out;
    for (size_t r = 0; r < rows->size(); ++r) out[rows->Text(r, 0)] = rows->Text(r, 1);
    return out;
  }

  /// A job RUNNING on `host` ("" when none).
  std::string RunningOn(const std::string& host) {
    auto db = server::OpenSqlDb(url_);
    if (!db.ok()) return "";
    auto tx = (*db)->Begin();
    if (!tx.ok()) return "";
    auto rows = (*tx)->Query("SELECT id FROM jobs WHERE lease_host = $1 AND state = $2 "
                             "ORDER BY queue_seq LIMIT 1",
                             {host, int64_t{v1::JOB_STATE_RUNNING}});
    return rows.ok() && !rows->empty() ? rows->Text(0, 0) : "";
  }

  std::unique_ptr<TestPostgres> pg_;
  std::string url_;
};

v1::Job Submit(v1::AnalysisService::Stub& stub, const std::string& user,
               const v1::SubmitJobRequest& req) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-sinkscope-user", user);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::Job job;
  grpc::Status s = stub.SubmitJob(&ctx, req, &job);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return job;
}

int CountCompleted(const std::vector<v1::JobEvent>& events) {
  int n = 0;
  for (const auto& e : events) n += e.has_completed();
  return n;
}

TEST_F(MultiHostTest, FortyJobsFromFourClientsCompleteExactlyOnceAcrossTwoHosts) {
  HostDir da, db;
  auto a = StartHost(da, "host-a", 20);
  auto b = StartHost(db, "host-b", 20);
  ASSERT_TRUE(a && b);
  const std::vector<std::vector<int32_t>> seqs = {MakeIds(24, 1), MakeIds(17, 2)};
  std::vector<BlockRecord> want_blocks;
  ScanSummary want_summary;
  std::string error;
  ASSERT_TRUE(EngineScan(seqs, &want_blocks, &want_summary, &error)) << error;

  std::mutex mu;
  std::vector<std::pair<std::string, int>> jobs;  // id, host index it was submitted to
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      auto sa = a->NewStub();
      auto sb = b->NewStub();
      for (int i = 0; i < 10; ++i) {
        const int host = (c + i) % 2;
        v1::SubmitJobRequest req = ScanRequest(seqs);
        req.set_client_request_id(absl::StrCat("client", c, "-job", i));
        v1::Job job = Submit(host ? *sb : *sa, absl::StrCat("user", c), req);
        std::lock_guard<std::mutex> lock(mu);
        jobs.emplace_back(job.id(), host);
      }
    });
  }
  for (auto& t : clients) t.join();
  ASSERT_EQ(jobs.size(), 40u);
  std::set<std::string> ids;
  auto sa = a->NewStub();
  auto sb = b->NewStub();
  for (const auto& [id, host] : jobs) {
    ids.insert(id);
    // Watched and read on the host it was NOT submitted to.
    v1::AnalysisService::Stub& other = host ? *sa : *sb;
    v1::Job job = WaitTerminal(other, id, std::chrono::seconds(120));
    ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << id << " " << job.error().message();
    EXPECT_EQ(job.attempts(), 1) << id;
    EXPECT_EQ(CompareResults(job, want_blocks, want_summary), "") << id;
    grpc::Status st;
    std::vector<v1::JobEvent> events = WatchAll(other, id, 0, std::chrono::seconds(30), &st);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(CountCompleted(events), 1) << id;
    for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
  }
  EXPECT_EQ(ids.size(), 40u);
  std::map<std::string, int> per_host;
  for (const auto& [id, host] : LeaseHosts()) ++per_host[host];
  std::printf("[ measured ] jobs per host: host-a %d, host-b %d\n", per_host["host-a"],
              per_host["host-b"]);
  EXPECT_EQ(per_host["host-a"] + per_host["host-b"], 40);
  EXPECT_GT(per_host["host-a"], 0);
  EXPECT_GT(per_host["host-b"], 0);
}

TEST_F(MultiHostTest, KilledHostsJobsFinishOnTheOtherAndItsWatcherReconnects) {
  HostDir da, db;
  auto a = StartHost(da, "host-a", 300);
  ASSERT_TRUE(a);
  const std::vector<std::vector<int32_t>> seqs = {MakeIds(20, 7)};
  std::vector<BlockRecord> want_blocks;
  ScanSummary want_summary;
  std::string error;
  ASSERT_TRUE(EngineScan(seqs, &want_blocks, &want_summary, &error)) << error;
  auto b = StartHost(db, "host-b", 300);
  ASSERT_TRUE(b);
  auto sa = a->NewStub();
  auto sb = b->NewStub();
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(Submit(*sa, "alice", ScanRequest(seqs)).id());
  // A job that host a is running (from the shared database).
  std::string watched;
  for (int tries = 0; tries < 600 && watched.empty(); ++tries) {
    watched = RunningOn("host-a");
    if (watched.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(watched.empty()) << "no job ran on host a";
  grpc::ClientContext ctx;
  v1::WatchJobRequest wreq;
  wreq.set_job_id(watched);
  auto reader = sa->WatchJob(&ctx, wreq);
  std::vector<v1::JobEvent> seen;
  v1::JobEvent e;
  bool killed = false;
  std::chrono::steady_clock::time_point kill_time;
  while (reader->Read(&e)) {
    seen.push_back(e);
    if (!killed && e.has_result()) {
      ASSERT_EQ(LeaseHosts()[watched], "host-a");
      a->Signal(SIGKILL);  // the server; its workers die with it (PDEATHSIG)
      kill_time = std::chrono::steady_clock::now();
      killed = true;
    }
  }
  reader->Finish();
  ASSERT_TRUE(killed) << "the watched job never ran on host a";
  ASSERT_FALSE(seen.empty());
  // Reconnect to host b from the last event seen.
  grpc::Status st;
  std::vector<v1::JobEvent> rest =
      WatchAll(*sb, watched, seen.back().seq(), std::chrono::seconds(120), &st);
  EXPECT_TRUE(st.ok()) << st.error_message();
  std::printf("[ measured ] SIGKILL of host-a to the watched job's completion on host-b: %.2f s "
              "(lease %d ms)\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - kill_time).count(),
              kLeaseMs);
  std::vector<v1::JobEvent> all = seen;
  all.insert(all.end(), rest.begin(), rest.end());
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].seq(), static_cast<int64_t>(i + 1));
  ASSERT_FALSE(all.empty());
  EXPECT_TRUE(all.back().has_completed());
  bool retried = false;
  for (const auto& ev : all) {
    if (ev.has_retrying()) {
      retried = true;
      EXPECT_NE(ev.retrying().reason().find("host-a"), std::string::npos) << ev.retrying().reason();
    }
  }
  EXPECT_TRUE(retried);
  // The whole history read again on host b is the same, event for event.
  std::vector<v1::JobEvent> replay = WatchAll(*sb, watched, 0, std::chrono::seconds(30), &st);
  ASSERT_EQ(replay.size(), all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(replay[i].SerializeAsString(), all[i].SerializeAsString()) << "event " << i + 1;
  }
  // Every job completes exactly once; those host a held finish on host b.
  for (const std::string& id : ids) {
    v1::Job job = WaitTerminal(*sb, id, std::chrono::seconds(120));
    ASSERT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << id << " " << job.error().message();
    EXPECT_EQ(CompareResults(job, want_blocks, want_summary), "") << id;
    EXPECT_EQ(CountCompleted(WatchAll(*sb, id, 0, std::chrono::seconds(30))), 1) << id;
  }
  EXPECT_EQ(LeaseHosts()[watched], "host-b");
  v1::Job w = WaitTerminal(*sb, watched, std::chrono::seconds(5));
  EXPECT_EQ(w.attempts(), 2);
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
