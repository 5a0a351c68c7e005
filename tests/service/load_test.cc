// Bounded load test on loopback: N clients (default 16) submit small scans
// and watch each to completion for D seconds (default 60) against a real
// sinkscope-server with 2 cpu workers; reports jobs/s, p50/p99 of
// submit-to-first-event, submit-to-dispatch (first worker event) and
// submit-to-done, and checks that no job was lost or duplicated. Meanwhile
// W watchers (default 1000) keep WatchJob streams open on recent jobs (each
// stream must end OK with its events in order); the server's threads and RSS
// (/proc/PID/status) are sampled and reported.
//
//   build/tests/service/service_load_test --duration-s 60 --clients 16 --watchers 1000
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ops_test_util.h"
#include "service_test_util.h"

using namespace sinkscope;
using namespace sinkscope::testing;
using Clock = std::chrono::steady_clock;

namespace {

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

/// Threads and VmRSS (kB) of process `pid` from /proc/PID/status.
bool ProcStatus(pid_t pid, int64_t* threads, int64_t* rss_kb) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  bool got = false;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key == "Threads:") {
      fields >> *threads;
      got = true;
    } else if (key == "VmRSS:") {
      fields >> *rss_kb;
    }
  }
  return got;
}

}  // namespace

int main(int argc, char** argv) {
  int duration_s = 60, clients = 16, workers = 2, watchers = 1000;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--duration-s") duration_s = std::atoi(argv[i + 1]);
    else if (flag == "--clients") clients = std::atoi(argv[i + 1]);
    else if (flag == "--workers") workers = std::atoi(argv[i + 1]);
    else if (flag == "--watchers") watchers = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--duration-s N] [--clients N] [--workers N] [--watchers N]\n",
                   argv[0]);
      return 2;
    }
  }
  if (Stories260KPath().empty()) {
    const bool in_ci = InCi();
    std::printf("%s: stories260K missing (set SINKSCOPE_SHARED_DIR)\n", in_ci ? "FAIL" : "SKIP");
    return in_ci ? 1 : 77;  // 77: ctest SKIP_RETURN_CODE
  }
  TempDir dir;
  OpsServer server(dir.path(), workers,
                   R"("auth": "token", "metrics_listen": "127.0.0.1:0", )"
                   R"("max_watch_streams_per_user": 2048, "max_watch_streams": 8192)");
  if (!server.Start()) {
    std::fprintf(stderr, "server did not start:\n%s\n", server.log().c_str());
    return 1;
  }
  const std::string admin = server.CreateToken("loadadmin", true);
  std::vector<std::string> tokens;
  for (int c = 0; c < clients; ++c) tokens.push_back(server.CreateToken(absl::StrCat("load", c % 4)));

  int64_t idle_threads = 0, idle_rss_kb = 0;
  ProcStatus(server.pid(), &idle_threads, &idle_rss_kb);
  std::mutex mu;
  std::vector<double> first_event_ms, dispatch_ms, done_ms;
  std::vector<std::string> recent;  // job ids, newest last (watchers pick from here)
  std::map<std::string, std::string> by_request;  // client_request_id -> job id
  std::atomic<int> failures{0}, submitted{0};
  const auto start = Clock::now();
  const auto stop_at = start + std::chrono::seconds(duration_s);
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto stub = server.Stub();
      for (int n = 0; Clock::now() < stop_at; ++n) {
        const std::string rid = absl::StrCat("c", c, "-", n);
        v1::SubmitJobRequest req = ScanRequest({MakeIds(8 + (n % 8), c * 1000 + n)});
        req.set_client_request_id(rid);
        const auto t0 = Clock::now();
        grpc::Status s;
        const v1::Job job = SubmitAs(*stub, tokens[c], req, &s);
        if (!s.ok()) {
          ++failures;
          continue;
        }
        ++submitted;
        {
          std::lock_guard<std::mutex> lock(mu);
          recent.push_back(job.id());
        }
        auto ctx = Ctx(tokens[c], std::chrono::seconds(120));
        v1::WatchJobRequest w;
        w.set_job_id(job.id());
        auto reader = stub->WatchJob(ctx.get(), w);
        v1::JobEvent e;
        double first = -1, dispatch = -1, done = -1;
        bool completed = false;
        while (reader->Read(&e)) {
          const double t = Ms(Clock::now() - t0);
          if (first < 0) first = t;
          if (dispatch < 0 && e.has_model_loading()) dispatch = t;
          if (e.has_completed() || e.has_failed() || e.has_cancelled()) {
            done = t;
            completed = e.has_completed();
          }
        }
        reader->Finish();
        std::lock_guard<std::mutex> lock(mu);
        if (!completed) ++failures;
        if (by_request.count(rid)) ++failures;
        by_request[rid] = job.id();
        first_event_ms.push_back(first);
        dispatch_ms.push_back(dispatch);
        done_ms.push_back(done);
      }
    });
  }
  // Watchers: each keeps one WatchJob stream open on a recent job of its
  // user, again and again, until the end; every stream must end OK with
  // strictly increasing seqs and a terminal event.
  std::atomic<int> open_streams{0}, peak_streams{0}, streams_done{0}, bad_streams{0};
  std::vector<std::thread> watcher_threads;
  for (int w = 0; w < watchers; ++w) {
    watcher_threads.emplace_back([&, w] {
      auto stub = server.Stub();
      for (int n = 0; Clock::now() < stop_at; ++n) {
        std::string id;
        {
          // One of the newest jobs (about one per client is live).
          std::lock_guard<std::mutex> lock(mu);
          const size_t spread = std::min<size_t>(recent.size(), static_cast<size_t>(clients));
          if (spread > 0) id = recent[recent.size() - 1 - static_cast<size_t>(w) % spread];
        }
        if (id.empty()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
          continue;
        }
        // As the admin (one user: the per-user cap is raised above).
        auto ctx = Ctx(admin, std::chrono::seconds(duration_s + 120));
        v1::WatchJobRequest req;
        req.set_job_id(id);
        auto reader = stub->WatchJob(ctx.get(), req);
        const int now_open = ++open_streams;
        for (int peak = peak_streams.load(); now_open > peak && !peak_streams.compare_exchange_weak(peak, now_open);) {
        }
        v1::JobEvent e;
        int64_t last = 0;
        bool ordered = true, terminal = false;
        while (reader->Read(&e)) {
          if (e.seq() <= last) ordered = false;
          last = e.seq();
          terminal = terminal || e.has_completed() || e.has_failed() || e.has_cancelled();
        }
        const grpc::Status st = reader->Finish();
        --open_streams;
        ++streams_done;
        if (!st.ok() || !ordered || !terminal) ++bad_streams;
        // Pace the turnover of streams on jobs that just ended.
        std::this_thread::sleep_for(std::chrono::milliseconds(100 + 10 * (w % 10)));
      }
    });
  }
  // Sampler: the server's threads and RSS while the watchers are open.
  int64_t max_threads = 0, max_rss_kb = 0, threads_at_peak = 0, streams_at_peak = 0;
  std::thread sampler([&] {
    while (Clock::now() < stop_at) {
      int64_t t = 0, r = 0;
      if (ProcStatus(server.pid(), &t, &r)) {
        max_threads = std::max(max_threads, t);
        max_rss_kb = std::max(max_rss_kb, r);
        if (open_streams.load() >= streams_at_peak) {
          streams_at_peak = open_streams.load();
          threads_at_peak = t;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  });
  for (auto& t : threads) t.join();
  for (auto& t : watcher_threads) t.join();
  sampler.join();
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();

  // Every submission is stored once, completed, and nothing else is there.
  std::set<std::string> stored;
  int stored_completed = 0, duplicates = 0;
  {
    auto stub = server.Stub();
    std::string page;
    do {
      auto ctx = Ctx(admin);
      v1::ListJobsRequest req;
      req.set_page_size(1000);
      req.set_page_token(page);
      v1::ListJobsResponse resp;
      if (!stub->ListJobs(ctx.get(), req, &resp).ok()) break;
      for (const v1::Job& j : resp.jobs()) {
        if (!stored.insert(j.id()).second) ++duplicates;
        stored_completed += j.state() == v1::JOB_STATE_COMPLETED;
      }
      page = resp.next_page_token();
    } while (!page.empty());
  }
  std::set<std::string> ids;
  for (const auto& [rid, id] : by_request) ids.insert(id);
  const bool lost = ids.size() != by_request.size() || stored.size() != ids.size() ||
                    stored_completed != static_cast<int>(ids.size()) || duplicates != 0;
  std::printf("[load] %d clients, %d workers, %.1f s: %zu jobs completed, %.1f jobs/s\n", clients,
              workers, elapsed_s, done_ms.size(), done_ms.size() / elapsed_s);
  std::printf("[load] submit->first event   p50 %.1f ms  p99 %.1f ms\n", Percentile(first_event_ms, 0.5),
              Percentile(first_event_ms, 0.99));
  std::printf("[load] submit->dispatch      p50 %.1f ms  p99 %.1f ms\n", Percentile(dispatch_ms, 0.5),
              Percentile(dispatch_ms, 0.99));
  std::printf("[load] submit->done          p50 %.1f ms  p99 %.1f ms\n", Percentile(done_ms, 0.5),
              Percentile(done_ms, 0.99));
  std::printf("[load] stored %zu jobs (%d completed), %zu distinct ids for %zu submissions, "
              "%d duplicates, %d client failures -> %s\n",
              stored.size(), stored_completed, ids.size(), by_request.size(), duplicates,
              failures.load(), lost || failures ? "FAIL" : "no job lost or duplicated");
  std::printf("[load] %d watchers: peak %d concurrent WatchJob streams, %d streams watched, %d bad\n",
              watchers, peak_streams.load(), streams_done.load(), bad_streams.load());
  std::printf("[load] server threads: %lld idle, %lld with %lld streams open, max %lld; "
              "RSS: %.1f MiB idle, max %.1f MiB\n",
              static_cast<long long>(idle_threads), static_cast<long long>(threads_at_peak),
              static_cast<long long>(streams_at_peak), static_cast<long long>(max_threads),
              idle_rss_kb / 1024.0, max_rss_kb / 1024.0);
  server.Stop();
  return lost || failures || bad_streams || done_ms.empty() ? 1 : 0;
}
