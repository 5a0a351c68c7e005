// Metrics end to end: a real sinkscope-server, a real Prometheus (Debian
// package `prometheus`) scraping it with deploy/prometheus/prometheus.yml
// (rewritten to the test's ports and a 1 s scrape interval), and every PromQL
// expression of deploy/grafana/sinkscope-dashboard.json evaluated through
// Prometheus's HTTP API. Skips when the prometheus binary is missing.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/common/skip.h"
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "ops_test_util.h"
#include "service_test_util.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string FindPrometheus() {
  for (const char* p : {"/usr/bin/prometheus", "/usr/local/bin/prometheus", "/bin/prometheus"}) {
    if (access(p, X_OK) == 0) return p;
  }
  return "";
}

void CollectExprs(const nlohmann::json& j, std::vector<std::string>* out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "expr" && it.value().is_string()) {
        out->push_back(it.value().get<std::string>());
      } else {
        CollectExprs(it.value(), out);
      }
    }
  } else if (j.is_array()) {
    for (const auto& v : j) CollectExprs(v, out);
  }
}

/// Runs an instant query; the parsed "data" or null.
nlohmann::json Query(int port, const std::string& promql, std::string* raw = nullptr) {
  int status = 0;
  const std::string body = HttpGet(port, "/api/v1/query?query=" + UrlEncode(promql), &status);
  if (raw) *raw = body;
  if (status != 200) return nullptr;
  try {
    nlohmann::json j = nlohmann::json::parse(body);
    if (j.value("status", "") != "success") return nullptr;
    return j["data"];
  } catch (...) {
    return nullptr;
  }
}

double ScalarOf(const nlohmann::json& data) {
  if (data.is_null() || data["result"].empty()) return -1;
  return std::stod(data["result"][0]["value"][1].get<std::string>());
}

TEST(MetricsPrometheusTest, DashboardQueriesReturnDataAndCountersAgree) {
  if (Stories260KPath().empty()) { SINKSCOPE_SKIP_MISSING("stories260K missing (SINKSCOPE_SHARED_DIR)"); }
  const std::string prometheus = FindPrometheus();
  if (prometheus.empty()) {
    SINKSCOPE_SKIP_MISSING("the prometheus binary is missing (Debian package `prometheus`, see "
                           "scripts/setup-debian.sh)");
  }
  TempDir dir;
  OpsServer server(dir.path(), 2,
                   R"("auth": "token", "worker_memory_bytes": 500000000, "queue_event_interval_ms": 200, )"
                   // 20 ms per unit: the victim below (20 units) is still
                   // queued or running when its cancel arrives.
                   R"("worker_args": ["--test-unit-delay-ms=20"])");
  ASSERT_TRUE(server.Start()) << server.log();
  ASSERT_GT(server.metrics_port(), 0) << server.log();

  // Prometheus with the deploy/ scrape config, rewritten to this test.
  std::string config = ReadAll(std::string(SINKSCOPE_SOURCE_DIR) + "/deploy/prometheus/prometheus.yml");
  ASSERT_FALSE(config.empty());
  config = absl::StrReplaceAll(config, {{"127.0.0.1:9464", absl::StrCat("127.0.0.1:", server.metrics_port())},
                                        {"15s", "1s"}});
  WriteFile(dir.path() + "/prometheus.yml", config);
  const int prom_port = FreePort();
  const pid_t prom = fork();
  if (prom == 0) {
    int fd = open((dir.path() + "/prometheus.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const std::string cfg = "--config.file=" + dir.path() + "/prometheus.yml";
    const std::string tsdb = "--storage.tsdb.path=" + dir.path() + "/tsdb";
    const std::string web = absl::StrCat("--web.listen-address=127.0.0.1:", prom_port);
    execl(prometheus.c_str(), prometheus.c_str(), cfg.c_str(), tsdb.c_str(), web.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
  } reaper{prom};
  bool ready = false;
  for (int i = 0; i < 300 && !ready; ++i) {
    int status = 0;
    HttpGet(prom_port, "/-/ready", &status);
    ready = status == 200;
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(ready) << ReadAll(dir.path() + "/prometheus.log");

  // A handful of jobs: 6 completed (2 users), 1 cancelled, 2 unauthenticated calls.
  const std::string alice = server.CreateToken("alice");
  const std::string bob = server.CreateToken("bob");
  auto stub = server.Stub();
  int64_t tokens = 0;
  int victim_ran = 0;  // a job cancelled while running has a duration too
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 6; ++i) {
    const int len = 6 + i;
    tokens += len;
    jobs.push_back(SubmitAs(*stub, i % 2 ? bob : alice, ScanRequest({MakeIds(len, 40 + i)})));
    ASSERT_FALSE(jobs.back().id().empty());
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_EQ(WaitDone(*stub, i % 2 ? bob : alice, jobs[i].id(), seconds(60)).state(),
              v1::JOB_STATE_COMPLETED);
  }
  {
    // Cancel a job while it is still queued: fill both workers first? Simpler:
    // submit and cancel at once; it is cancelled queued or running.
    const v1::Job victim = SubmitAs(*stub, alice, ScanRequest({MakeIds(64, 99), MakeIds(63, 98)}));
    auto ctx = Ctx(alice);
    v1::CancelJobRequest req;
    req.set_job_id(victim.id());
    v1::Job out;
    ASSERT_TRUE(stub->CancelJob(ctx.get(), req, &out).ok());
    const v1::Job done = WaitDone(*stub, alice, victim.id(), seconds(60));
    ASSERT_EQ(done.state(), v1::JOB_STATE_CANCELLED) << v1::JobState_Name(done.state());
    victim_ran = done.has_start_time() ? 1 : 0;
  }
  for (int i = 0; i < 2; ++i) {
    auto ctx = Ctx("");
    v1::ListModelsResponse out;
    EXPECT_EQ(stub->ListModels(ctx.get(), v1::ListModelsRequest(), &out).error_code(),
              grpc::UNAUTHENTICATED);
  }

  // Wait until Prometheus has scraped the final counts.
  const auto deadline = std::chrono::steady_clock::now() + seconds(30);
  while (std::chrono::steady_clock::now() < deadline &&
         ScalarOf(Query(prom_port, "sum(sinkscope_jobs_finished_total)")) != 7) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  std::this_thread::sleep_for(seconds(3));  // a few more samples for rate()

  // The counters agree with what the test did.
  const std::map<std::string, double> expected = {
      {"sum(sinkscope_jobs_submitted_total)", 7},
      {"sum(sinkscope_jobs_finished_total{outcome=\"completed\"})", 6},
      {"sum(sinkscope_jobs_finished_total{outcome=\"cancelled\"})", 1},
      {"sum(sinkscope_jobs_finished_total{type=\"activation_scan\"})", 7},
      {"sum(sinkscope_tokens_processed_total)", static_cast<double>(tokens)},
      {"sum(sinkscope_grpc_requests_total{method=\"SubmitJob\",code=\"OK\"})", 7},
      {"sum(sinkscope_grpc_requests_total{method=\"ListModels\",code=\"UNAUTHENTICATED\"})", 2},
      {"sum(sinkscope_grpc_requests_total{method=\"CancelJob\",code=\"OK\"})", 1},
      {"sum(sinkscope_job_duration_seconds_count)", 6 + victim_ran},
      {"sum(sinkscope_workers)", 2},
      {"sum(sinkscope_worker_restarts_total)", 0},
      {"sum(sinkscope_queue_depth)", 0},
      {"count(sinkscope_worker_memory_bytes{kind=\"budget\"} == 500000000)", 2},
  };
  for (const auto& [promql, want] : expected) {
    std::string raw;
    EXPECT_EQ(ScalarOf(Query(prom_port, promql, &raw)), want) << promql << "\n" << raw;
  }
  EXPECT_GE(ScalarOf(Query(prom_port, "sum(sinkscope_job_queue_wait_seconds_count)")), 6);
  EXPECT_GE(ScalarOf(Query(prom_port, "sum(sinkscope_model_load_seconds_count)")), 1);
  EXPECT_GT(ScalarOf(Query(prom_port, "min(sinkscope_worker_memory_bytes{kind=\"rss\"})")), 0);
  // No job ids in any label.
  {
    std::string raw;
    Query(prom_port, "count by (__name__) ({__name__=~\"sinkscope_.*\"})", &raw);
    int status = 0;
    const std::string exposition = HttpGet(server.metrics_port(), "/metrics", &status);
    EXPECT_EQ(status, 200);
    EXPECT_EQ(exposition.find("j-"), std::string::npos) << "a job id in the metrics";
  }

  // Every expression of the dashboard returns data.
  const nlohmann::json dashboard = nlohmann::json::parse(
      ReadAll(std::string(SINKSCOPE_SOURCE_DIR) + "/deploy/grafana/sinkscope-dashboard.json"));
  std::vector<std::string> exprs;
  CollectExprs(dashboard, &exprs);
  ASSERT_GE(exprs.size(), 10u);
  for (const std::string& e : exprs) {
    const std::string promql = absl::StrReplaceAll(e, {{"$__rate_interval", "1m"}});
    std::string raw;
    const nlohmann::json data = Query(prom_port, promql, &raw);
    ASSERT_FALSE(data.is_null()) << promql << "\n" << raw;
    EXPECT_FALSE(data["result"].empty()) << "no data for dashboard query: " << promql;
    std::printf("[dashboard] %zu series  %s\n", data["result"].size(), promql.c_str());
  }
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
