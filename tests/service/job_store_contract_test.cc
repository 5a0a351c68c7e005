// One contract for every JobStore backend: the same tests on SQLite (a
// temporary file) and on a real PostgreSQL server started here on loopback
// (tests/common/test_postgres.h). Expected values are planted by the test
// (ids, owners, bytes, attempt counts), never read back from the store
// first. Two stores on one database stand for two hosts.
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/auth.h"
#include "server/sql_job_store.h"
#include "tests/common/skip.h"
#include "tests/common/test_postgres.h"

namespace sinkscope {
namespace server {
namespace {

namespace fs = std::filesystem;

enum class Backend { kSqlite, kPostgres };

/// The PostgreSQL server of this test binary (started on first use).
sinkscope::testing::TestPostgres* Postgres(std::string* why) {
  static std::string* failure = new std::string();
  static sinkscope::testing::TestPostgres* pg = [] {
    return sinkscope::testing::TestPostgres::Start(failure).release();
  }();
  *why = *failure;
  return pg;
}

class PostgresEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    std::string why;
    delete Postgres(&why);
  }
};
const auto* const kPgEnv = ::testing::AddGlobalTestEnvironment(new PostgresEnvironment());

/// A fresh empty database of `backend`: its name for OpenSqlDb, or "" with
/// `*why` set.
std::string FreshDatabase(Backend backend, std::string* why) {
  static std::atomic<int> counter{0};
  const std::string name = absl::StrCat("contract_", getpid(), "_", counter++);
  if (backend == Backend::kSqlite) {
    const std::string dir = absl::StrCat("/tmp/sscontract-", name);
    fs::create_directories(dir);
    return dir + "/jobs.db";
  }
  sinkscope::testing::TestPostgres* pg = Postgres(why);
  if (pg == nullptr) return "";
  std::string url = pg->NewDatabase(name);
  if (url.empty()) *why = "createdb " + name;
  return url;
}

class JobStoreContract : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    std::string why;
    database_ = FreshDatabase(GetParam(), &why);
    if (database_.empty()) {
      SINKSCOPE_SKIP_MISSING(why);
      return;
    }
    store_ = OpenStore("host-a");
    ASSERT_NE(store_, nullptr);
  }
  void TearDown() override {
    store_.reset();
    if (GetParam() == Backend::kSqlite && !database_.empty()) {
      fs::remove_all(fs::path(database_).parent_path());
    }
  }
  std::unique_ptr<SqlJobStore> OpenStore(const std::string& host, int64_t lease_ms = 30000) {
    StoreOptions o;
    o.host = host;
    o.lease_ms = lease_ms;
    auto store = SqlJobStore::Open(database_, o, /*sqlite_sync_full=*/false);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }
  v1::Job Create(JobStore* store, const std::string& id, const std::string& owner = "u",
                 const std::string& client_request_id = "") {
    NewJob job;
    job.id = id;
    job.owner = owner;
    job.type = v1::JOB_TYPE_ACTIVATION_SCAN;
    job.request.set_model("m");
    job.client_request_id = client_request_id;
    bool created = false;
    auto out = store->CreateJob(job, &created);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : v1::Job();
  }
  v1::Job Create(const std::string& id, const std::string& owner = "u") {
    return Create(store_.get(), id, owner);
  }
  static v1::JobEvent Block(int b) {
    v1::JobEvent e;
    e.mutable_result()->mutable_scan_block()->set_block(b);
    return e;
  }

  std::string database_;
  std::unique_ptr<SqlJobStore> store_;
};

TEST_P(JobStoreContract, FifoClaimEventsAndOneCompletion) {
  Create("a");
  Create("b");
  auto queued = store_->ListQueued();
  ASSERT_TRUE(queued.ok()) << queued.status();
  ASSERT_EQ(queued->size(), 2u);
  EXPECT_EQ((*queued)[0].id, "a");
  EXPECT_EQ((*queued)[1].id, "b");
  auto events = store_->EventsSince("b", 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].queued().position(), 2);

  auto claimed = store_->ClaimJob("a", "w0");
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  EXPECT_EQ(claimed->attempts(), 1);
  EXPECT_EQ(claimed->state(), v1::JOB_STATE_MODEL_LOADING);
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->ClaimJob("a", "w1").status()));
  ASSERT_TRUE(store_->AppendEvent("a", 1, Block(7), v1::JOB_STATE_RUNNING).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->AppendEvent("a", 2, Block(8), std::nullopt).status()));
  v1::JobEvent done;
  done.mutable_completed()->set_n_records(1);
  ASSERT_TRUE(store_->FinishJob("a", 1, v1::JOB_STATE_COMPLETED, done).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(
      store_->FinishJob("a", 1, v1::JOB_STATE_COMPLETED, done).status()));
  auto results = store_->Results("a");
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), 1u);
  EXPECT_EQ((*results)[0].scan_block().block(), 7);
  auto job = store_->GetJob("a");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_COMPLETED);
  EXPECT_EQ(job->last_event_seq(), 3);  // Queued, block, Completed
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("zzz").status()));
}

TEST_P(JobStoreContract, LostWorkerRequeuesThenFailsAtMaxAttempts) {
  Create("a");
  for (int attempt = 1; attempt <= 2; ++attempt) {
    ASSERT_TRUE(store_->ClaimJob("a", "w0").ok());
    ASSERT_TRUE(store_->AppendEvent("a", attempt, Block(attempt), v1::JOB_STATE_RUNNING).ok());
    auto r = store_->ReleaseLostJob("a", attempt, "killed by signal 9", true, 3);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, ReleaseOutcome::kRequeued);
  }
  ASSERT_TRUE(store_->ClaimJob("a", "w0").ok());
  auto r = store_->ReleaseLostJob("a", 3, "killed by signal 9", true, 3);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, ReleaseOutcome::kFailed);
  auto stale = store_->ReleaseLostJob("a", 3, "again", true, 3);
  ASSERT_TRUE(stale.ok());
  EXPECT_EQ(*stale, ReleaseOutcome::kAlreadyFinished);
  auto job = store_->GetJob("a");
  EXPECT_EQ(job->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job->error().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_NE(job->error().message().find("lost 3 times"), std::string::npos) << job->error().message();
  EXPECT_TRUE(store_->Results("a")->empty());
  // Events in order: Queued, (block, Retrying, Queued) x2, Failed.
  auto events = store_->EventsSince("a", 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 8u);
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].seq(), static_cast<int64_t>(i + 1));
  EXPECT_EQ((*events)[2].retrying().failed_attempt(), 1);
  EXPECT_EQ((*events)[5].retrying().failed_attempt(), 2);
  EXPECT_TRUE((*events)[7].has_failed());
}

TEST_P(JobStoreContract, BytesRoundTripExactly) {
  NewJob job;
  job.id = "bytes";
  job.owner = "u";
  job.type = v1::JOB_TYPE_ACTIVATION_SCAN;
  job.request.set_model("m");
  // NULs, bytes >= 0x80 that are not UTF-8, and a quote: BLOB / BYTEA, not text.
  const std::string planted("a\0b\xff\xfe'\\x00", 9);
  job.request.add_sequences()->set_text(planted);
  ASSERT_TRUE(store_->CreateJob(job, nullptr).ok());
  auto got = store_->GetJob("bytes");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->request().sequences_size(), 1);
  EXPECT_EQ(got->request().sequences(0).text(), planted);
}

TEST_P(JobStoreContract, ClientRequestIdIsIdempotentPerOwner) {
  v1::Job first = Create(store_.get(), "a", "alice", "key-1");
  bool created = true;
  NewJob again;
  again.id = "b";
  again.owner = "alice";
  again.type = v1::JOB_TYPE_ACTIVATION_SCAN;
  again.client_request_id = "key-1";
  auto second = store_->CreateJob(again, &created);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(created);
  EXPECT_EQ(second->id(), "a");
  // Another owner may use the same key.
  v1::Job other = Create(store_.get(), "c", "bob", "key-1");
  EXPECT_EQ(other.id(), "c");
}

TEST_P(JobStoreContract, ListJobsFiltersAndPages) {
  for (int i = 0; i < 5; ++i) Create(absl::StrCat("j", i), i % 2 ? "bob" : "alice");
  JobFilter f;
  f.owner = "alice";
  f.limit = 2;
  auto page = store_->ListJobs(f);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->jobs.size(), 2u);
  EXPECT_EQ(page->jobs[0].id(), "j4");
  EXPECT_EQ(page->jobs[1].id(), "j2");
  f.before_queue_seq = page->next_before_queue_seq;
  auto rest = store_->ListJobs(f);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->jobs.size(), 1u);
  EXPECT_EQ(rest->jobs[0].id(), "j0");
  EXPECT_EQ(rest->next_before_queue_seq, 0);
  ASSERT_TRUE(store_->ClaimJob("j1", "w").ok());
  JobFilter running;
  running.states = {v1::JOB_STATE_MODEL_LOADING};
  auto r = store_->ListJobs(running);
  ASSERT_EQ(r->jobs.size(), 1u);
  EXPECT_EQ(r->jobs[0].id(), "j1");
}

TEST_P(JobStoreContract, RestartRequeuesOnlyThisHostsJobs) {
  std::unique_ptr<SqlJobStore> b = OpenStore("host-b");
  Create("a");
  Create("b");
  ASSERT_TRUE(store_->ClaimJob("a", "w0").ok());
  ASSERT_TRUE(b->ClaimJob("b", "w0").ok());
  // Host b restarts: job a is host a's (live lease), left alone.
  auto ids = b->RequeueInterrupted("server restarted");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, std::vector<std::string>{"b"});
  EXPECT_EQ(store_->GetJob("a")->state(), v1::JOB_STATE_MODEL_LOADING);
  EXPECT_EQ(store_->GetJob("b")->state(), v1::JOB_STATE_QUEUED);
  // Host a restarts.
  store_ = OpenStore("host-a");
  ids = store_->RequeueInterrupted("server restarted");
  EXPECT_EQ(*ids, std::vector<std::string>{"a"});
  auto queued = store_->ListQueued();
  ASSERT_EQ(queued->size(), 2u);
  EXPECT_EQ((*queued)[0].id, "a");  // keeps its FIFO place
}

TEST_P(JobStoreContract, ExpiredLeaseIsReclaimedByAnotherHostAndRenewedOneIsNot) {
  std::unique_ptr<SqlJobStore> dying = OpenStore("host-dying", /*lease_ms=*/300);
  std::unique_ptr<SqlJobStore> alive = OpenStore("host-alive", /*lease_ms=*/1500);
  Create("lost");
  Create("kept");
  ASSERT_TRUE(dying->ClaimJob("lost", "w0").ok());
  ASSERT_TRUE(alive->ClaimJob("kept", "w0").ok());
  ASSERT_TRUE(dying->AppendEvent("lost", 1, Block(1), v1::JOB_STATE_RUNNING).ok());
  // host-dying never renews; host-alive renews every 100 ms.
  for (int i = 0; i < 8; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto n = alive->RenewLeases();
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, 1);
  }
  auto ids = alive->ReclaimExpiredLeases(3);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, std::vector<std::string>{"lost"});
  auto job = store_->GetJob("lost");
  EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(store_->GetJob("kept")->state(), v1::JOB_STATE_MODEL_LOADING);
  auto events = store_->EventsSince("lost", 2, 10);  // after Queued, block
  ASSERT_EQ(events->size(), 2u);
  ASSERT_TRUE((*events)[0].has_retrying());
  EXPECT_NE((*events)[0].retrying().reason().find("host-dying"), std::string::npos)
      << (*events)[0].retrying().reason();
  EXPECT_TRUE((*events)[1].has_queued());
  // The dead host's late writes are refused (stale attempt).
  EXPECT_TRUE(absl::IsFailedPrecondition(dying->AppendEvent("lost", 1, Block(2), std::nullopt).status()));
  // The next claim is attempt 2 on the live host.
  auto again = alive->ClaimJob("lost", "w1");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->attempts(), 2);
}

TEST_P(JobStoreContract, TwoHostsClaimEveryJobExactlyOnce) {
  constexpr int kJobs = 60;
  for (int i = 0; i < kJobs; ++i) Create(absl::StrCat("j", i), absl::StrCat("u", i % 4));
  std::unique_ptr<SqlJobStore> b = OpenStore("host-b");
  std::mutex mu;
  std::map<std::string, int> claims;
  std::atomic<int> errors{0};
  auto claimer = [&](SqlJobStore* store, const std::string& worker) {
    while (true) {
      auto queue = store->ListQueued();
      if (!queue.ok()) {
        ++errors;
        return;
      }
      if (queue->empty()) return;
      for (const QueuedJob& q : *queue) {
        auto job = store->ClaimJob(q.id, worker);
        if (job.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          ++claims[q.id];
          break;
        }
        if (!absl::IsFailedPrecondition(job.status())) ++errors;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back(claimer, store_.get(), absl::StrCat("a", t));
    threads.emplace_back(claimer, b.get(), absl::StrCat("b", t));
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  ASSERT_EQ(claims.size(), static_cast<size_t>(kJobs));
  for (int i = 0; i < kJobs; ++i) EXPECT_EQ(claims[absl::StrCat("j", i)], 1) << "j" << i;
}

TEST_P(JobStoreContract, ConcurrentEventsGetContiguousSeqs) {
  Create("a");
  ASSERT_TRUE(store_->ClaimJob("a", "w").ok());
  std::unique_ptr<SqlJobStore> b = OpenStore("host-a");  // a second connection
  constexpr int kPerThread = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      SqlJobStore* s = t % 2 ? b.get() : store_.get();
      for (int i = 0; i < kPerThread; ++i) {
        EXPECT_TRUE(s->AppendEvent("a", 1, Block(t * 1000 + i), std::nullopt).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  auto events = store_->EventsSince("a", 0, 1000);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u + 4 * kPerThread);
  std::map<int, int> last_of_thread;
  for (size_t i = 0; i < events->size(); ++i) {
    EXPECT_EQ((*events)[i].seq(), static_cast<int64_t>(i + 1));
    if (i == 0) continue;
    const int block = (*events)[i].result().scan_block().block();
    // Each writer's events keep its order.
    auto it = last_of_thread.find(block / 1000);
    if (it != last_of_thread.end()) {
      EXPECT_LT(it->second, block % 1000);
    }
    last_of_thread[block / 1000] = block % 1000;
  }
}

// A worker's batch (AppendEvents): one transaction, consecutive seqs in the
// batch's order even while another connection appends single events, the
// job's state moved once, and a stale attempt stores none of the batch.
TEST_P(JobStoreContract, BatchedEventsAreContiguousAndAllOrNothing) {
  Create("a");
  ASSERT_TRUE(store_->ClaimJob("a", "w").ok());
  std::unique_ptr<SqlJobStore> b = OpenStore("host-a");  // a second connection
  constexpr int kBatches = 20, kPerBatch = 7;
  std::thread singles([&] {
    for (int i = 0; i < kBatches; ++i) {
      EXPECT_TRUE(b->AppendEvent("a", 1, Block(900000 + i), std::nullopt).ok());
    }
  });
  for (int i = 0; i < kBatches; ++i) {
    std::vector<v1::JobEvent> batch;
    for (int k = 0; k < kPerBatch; ++k) batch.push_back(Block(i * 100 + k));
    auto stored = store_->AppendEvents("a", 1, batch, v1::JOB_STATE_RUNNING);
    ASSERT_TRUE(stored.ok()) << stored.status();
    ASSERT_EQ(stored->size(), static_cast<size_t>(kPerBatch));
    for (int k = 0; k < kPerBatch; ++k) {
      EXPECT_EQ((*stored)[k].seq(), (*stored)[0].seq() + k);
      EXPECT_EQ((*stored)[k].result().scan_block().block(), i * 100 + k);
      EXPECT_EQ((*stored)[k].attempt(), 1);
      EXPECT_EQ((*stored)[k].job_id(), "a");
    }
  }
  singles.join();
  EXPECT_EQ(store_->GetJob("a")->state(), v1::JOB_STATE_RUNNING);
  auto events = store_->EventsSince("a", 0, 1000);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u + kBatches * (kPerBatch + 1));
  // Read back in seq order: each batch's records sit together and in order.
  int batch_records = 0;
  for (size_t i = 0; i < events->size(); ++i) {
    EXPECT_EQ((*events)[i].seq(), static_cast<int64_t>(i + 1));
    if (i == 0) continue;
    const int block = (*events)[i].result().scan_block().block();
    if (block >= 900000) continue;
    if (block % 100 != 0) {
      EXPECT_EQ((*events)[i - 1].result().scan_block().block(), block - 1) << "seq " << i + 1;
    }
    ++batch_records;
  }
  EXPECT_EQ(batch_records, kBatches * kPerBatch);
  // A stale writer's batch: refused whole.
  const int64_t last = events->back().seq();
  std::vector<v1::JobEvent> stale = {Block(1), Block(2), Block(3)};
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->AppendEvents("a", 2, stale, std::nullopt).status()));
  auto after = store_->EventsSince("a", last, 1000);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->empty());
  EXPECT_EQ(store_->GetJob("a")->last_event_seq(), last);
  // The last batch stored with the completion: records, then COMPLETED, one
  // commit; a stale attempt's completion stores neither.
  v1::JobEvent done;
  done.mutable_completed()->set_n_records(kBatches * kPerBatch + 2);
  const std::vector<v1::JobEvent> tail = {Block(7001), Block(7002)};
  EXPECT_TRUE(absl::IsFailedPrecondition(
      store_->FinishJob("a", 2, v1::JOB_STATE_COMPLETED, tail, done).status()));
  EXPECT_EQ(store_->GetJob("a")->last_event_seq(), last);
  auto finished = store_->FinishJob("a", 1, v1::JOB_STATE_COMPLETED, tail, done);
  ASSERT_TRUE(finished.ok()) << finished.status();
  ASSERT_EQ(finished->size(), 3u);
  EXPECT_EQ(finished->back().seq(), last + 3);
  auto end = store_->EventsSince("a", last, 1000);
  ASSERT_TRUE(end.ok());
  ASSERT_EQ(end->size(), 3u);
  EXPECT_EQ((*end)[0].result().scan_block().block(), 7001);
  EXPECT_EQ((*end)[1].result().scan_block().block(), 7002);
  EXPECT_TRUE((*end)[2].has_completed());
  EXPECT_EQ(store_->GetJob("a")->state(), v1::JOB_STATE_COMPLETED);
  auto results = store_->Results("a");
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), static_cast<size_t>(kBatches + kBatches * kPerBatch + 2));
  EXPECT_EQ(results->back().scan_block().block(), 7002);
}

TEST_P(JobStoreContract, PublishedWorkersAndRunningAreSeenByTheOtherHost) {
  std::unique_ptr<SqlJobStore> b = OpenStore("host-b");
  HostWorker w;
  w.worker = "w0";
  w.budget_bytes = 123456789;
  w.models = {"stories260K", "tiny-llama"};
  ASSERT_TRUE(store_->PublishWorkers({w}).ok());
  auto seen = b->PeerWorkers(5000);
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_EQ(seen->size(), 1u);
  EXPECT_EQ((*seen)[0].host, "host-a");
  EXPECT_EQ((*seen)[0].worker, "w0");
  EXPECT_EQ((*seen)[0].budget_bytes, 123456789);
  EXPECT_EQ((*seen)[0].models, (std::set<std::string>{"stories260K", "tiny-llama"}));
  EXPECT_TRUE(store_->PeerWorkers(5000)->empty());  // not its own
  Create("x", "carol");
  ASSERT_TRUE(store_->ClaimJob("x", "w0").ok());
  auto running = b->PeerRunningByOwner();
  ASSERT_TRUE(running.ok());
  EXPECT_EQ(*running, (std::map<std::string, int>{{"carol", 1}}));
}

TEST_P(JobStoreContract, ALiveHostNameIsRefusedToASecondServer) {
  HostWorker w;
  w.worker = "w0";
  ASSERT_TRUE(store_->PublishWorkers({w}).ok());
  std::unique_ptr<SqlJobStore> twin = OpenStore("host-a");
  absl::Status s = twin->CheckHostNameFree(60000);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("host-a"), std::string::npos) << s;
  EXPECT_TRUE(OpenStore("host-c")->CheckHostNameFree(60000).ok());
}

TEST_P(JobStoreContract, SchemaIsVersionedAndNewerSchemasAreRefused) {
  auto db = OpenSqlDb(database_, false);  // reopening applies nothing new
  ASSERT_TRUE(db.ok()) << db.status();
  {
    auto tx = (*db)->Begin();
    ASSERT_TRUE(tx.ok());
    auto rows = (*tx)->Query("SELECT MAX(version), COUNT(*) FROM schema_version");
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(rows->Int(0, 0), 2);
    EXPECT_EQ(rows->Int(0, 1), 2);  // migrations 1 and 2, once each
    ASSERT_TRUE((*tx)->Query("INSERT INTO schema_version (version) VALUES ($1)", {int64_t{99}}).ok());
    ASSERT_TRUE((*tx)->Commit().ok());
  }
  auto newer = OpenSqlDb(database_, false);
  ASSERT_FALSE(newer.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(newer.status())) << newer.status();
  EXPECT_NE(newer.status().message().find("schema version 99"), std::string::npos);
}

TEST_P(JobStoreContract, TokensLiveInTheSameDatabase) {
  TokenStore tokens(store_->shared_db());
  TokenInfo info;
  auto token = tokens.Create("alice", false, &info);
  ASSERT_TRUE(token.ok()) << token.status();
  auto caller = tokens.Verify(*token);
  ASSERT_TRUE(caller.ok()) << caller.status();
  EXPECT_EQ(caller->user, "alice");
  EXPECT_FALSE(caller->admin);
  // Another connection (another host) sees the same token.
  auto other = TokenStore::Open(database_);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE((*other)->Verify(*token).ok());
  ASSERT_TRUE(tokens.Revoke(info.id).ok());
  EXPECT_TRUE(absl::IsUnauthenticated((*other)->Verify(*token).status()));
  auto n = (*other)->RevokeUser("alice");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0);  // already revoked
  EXPECT_TRUE(absl::IsNotFound(tokens.Revoke(info.id + 1000)));
}

INSTANTIATE_TEST_SUITE_P(Backends, JobStoreContract,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
                         });

// --- PostgreSQL only: what several hosts need beyond the contract ---------

TEST(PostgresHosts, NotifyReachesTheOtherHostAndOneHostLeads) {
  std::string why;
  const std::string url = FreshDatabase(Backend::kPostgres, &why);
  if (url.empty()) {
    SINKSCOPE_SKIP_MISSING(why);
    return;
  }
  auto a = SqlJobStore::Open(url, StoreOptions{"host-a", 30000});
  auto b = SqlJobStore::Open(url, StoreOptions{"host-b", 30000});
  ASSERT_TRUE(a.ok() && b.ok());
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> heard;
  ASSERT_TRUE((*b)->SetChangeListener([&](const std::string& id) {
    std::lock_guard<std::mutex> lock(mu);
    heard.push_back(id);
    cv.notify_all();
  }).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // LISTEN is up
  NewJob job;
  job.id = "notified";
  job.owner = "u";
  job.type = v1::JOB_TYPE_ACTIVATION_SCAN;
  ASSERT_TRUE((*a)->CreateJob(job, nullptr).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return !heard.empty(); }));
    if (!heard.empty()) {
      EXPECT_EQ(heard[0], "notified");
    }
  }
  EXPECT_NE((*a)->LeadsQueue(), (*b)->LeadsQueue());
}

TEST(SqliteMigration, AVersionOneDatabaseIsUpgradedInPlace) {
  char tmpl[] = "/tmp/ssmig-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string path = dir + "/old.db";
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
  // The schema of the server before migrations (version 1, no priority column).
  const char* old_schema =
      "CREATE TABLE jobs (id TEXT PRIMARY KEY, queue_seq INTEGER NOT NULL UNIQUE, owner TEXT NOT "
      "NULL, type INTEGER NOT NULL, state INTEGER NOT NULL, request BLOB NOT NULL, attempts "
      "INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, create_us INTEGER NOT "
      "NULL, start_us INTEGER NOT NULL DEFAULT 0, end_us INTEGER NOT NULL DEFAULT 0, error_code "
      "INTEGER NOT NULL DEFAULT 0, error_message TEXT NOT NULL DEFAULT '', last_seq INTEGER NOT "
      "NULL DEFAULT 0, result_attempt INTEGER NOT NULL DEFAULT 0, client_request_id TEXT NOT NULL "
      "DEFAULT '', worker TEXT NOT NULL DEFAULT '');"
      "CREATE TABLE events (job_id TEXT NOT NULL REFERENCES jobs (id), seq INTEGER NOT NULL, "
      "attempt INTEGER NOT NULL, is_result INTEGER NOT NULL, time_us INTEGER NOT NULL, payload "
      "BLOB NOT NULL, PRIMARY KEY (job_id, seq));"
      "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);"
      "INSERT INTO jobs (id, queue_seq, owner, type, state, request, create_us, attempts, "
      "last_seq) VALUES ('old', 1, 'u', 1, 3, x'', 1700000000000000, 1, 0);";
  ASSERT_EQ(sqlite3_exec(raw, old_schema, nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(raw);
  auto store = SqlJobStore::Open(path, StoreOptions{"h", 30000}, false);
  ASSERT_TRUE(store.ok()) << store.status();
  auto job = (*store)->GetJob("old");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job->create_time().seconds(), 1700000000);
  // Interrupted before leases existed: requeued by the first host that starts.
  auto ids = (*store)->RequeueInterrupted("upgraded");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, std::vector<std::string>{"old"});
  fs::remove_all(dir);
}

}  // namespace
}  // namespace server
}  // namespace sinkscope
