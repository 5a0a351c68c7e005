// sinkscope-bench, section 3: the cost of the service around the engine.
//
// A real sinkscope-server (unix socket, `workers` cpu workers with `threads`
// intra-op threads each, a fresh SQLite database with the server's default
// durability) runs activation scans of stories260K; C client threads each
// submit a job, watch it to its terminal event, and submit the next. The
// direct side runs the same jobs with RunActivationScan in a fresh process
// holding `workers` models, C threads sharing them through a queue (the same
// parallelism as the server's worker pool). Server and direct runs alternate
// (2 rounds per client count) so a busy machine affects both alike.
#include "bench/service_bench.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "sinkscope/v1/analysis.grpc.pb.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"

extern char** environ;

namespace sinkscope::bench {
namespace {

using json = nlohmann::json;

std::vector<int64_t> JobTokens(int seq_len, int64_t vocab, int job) {
  std::mt19937_64 rng(1000 + job);
  std::uniform_int_distribution<int64_t> id(3, vocab - 1);
  std::vector<int64_t> ids(seq_len);
  for (auto& x : ids) x = id(rng);
  ids[0] = 1;  // BOS
  return ids;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = p * (v.size() - 1);
  const size_t i = static_cast<size_t>(pos);
  const double f = pos - i;
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

/// Where one job's latency went, seconds from the client's SubmitJob call
/// (server event times are the server's store times: same host, same clock).
struct JobPhases {
  double submitted = 0;      // SubmitJob returned
  double first_worker = 0;   // the first event a worker sent was stored (model_loading)
  double first_result = 0;   // the first result record was stored
  double last_result = 0;    // the last result record was stored
  double completed = 0;      // COMPLETED was stored
  double received = 0;       // the client read COMPLETED
  int events = 0;            // events the client read
};

double WallNow() {
  return absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
}

double EventTime(const v1::JobEvent& ev) {
  return ev.time().seconds() + ev.time().nanos() * 1e-9;
}

struct RunStats {
  std::vector<double> latency_s;
  double wall_s = 0;
  int failed = 0;
  std::string first_error;
  int64_t peak_kib = 0;  // direct: the process; server: server + workers
  std::string peak_detail;
  std::vector<JobPhases> phases;  // server side only
  double server_cpu_s = 0;        // server side: CPU of the server process
  double worker_cpu_s = 0;        // server side: CPU of its worker processes
};

json StatsJson(const RunStats& s) {
  return {{"latency_s", s.latency_s}, {"wall_s", s.wall_s},     {"failed", s.failed},
          {"first_error", s.first_error}, {"peak_kib", s.peak_kib}};
}

RunStats StatsFromJson(const json& j) {
  RunStats s;
  s.latency_s = j.at("latency_s").get<std::vector<double>>();
  s.wall_s = j.at("wall_s").get<double>();
  s.failed = j.at("failed").get<int>();
  s.first_error = j.at("first_error").get<std::string>();
  s.peak_kib = j.at("peak_kib").get<int64_t>();
  return s;
}

// ---------------------------------------------------------------- server side

class Server {
 public:
  Server(const ServiceBenchOptions& opt, std::string dir) : opt_(opt), dir_(std::move(dir)) {}
  ~Server() { Stop(); }

  std::string address() const { return "unix:" + dir_ + "/api.sock"; }
  pid_t pid() const { return pid_; }
  std::string log() const { return dir_ + "/server.log"; }

  bool Start(std::string* why) {
    {
      json entry = json::object();
      entry["name"] = "stories260K";
      entry["format"] = "llama2c";
      entry["path"] = opt_.model_path;
      entry["default_dtype"] = "float32";
      entry["description"] = "bench";
      json cat = json::object();
      cat["models"] = json::array({entry});
      std::ofstream(dir_ + "/catalog.json") << cat.dump(2);
    }
    std::string workers;
    for (int i = 0; i < opt_.workers; ++i) workers += i ? ",cpu" : "cpu";
    std::vector<std::string> argv = {opt_.server_bin,
                                     "--listen", address(),
                                     "--database", dir_ + "/jobs.db",
                                     "--workers", workers,
                                     "--catalog", dir_ + "/catalog.json",
                                     "--worker-binary", opt_.worker_bin,
                                     "--runtime-dir", dir_ + "/run",
                                     "--worker-threads", std::to_string(opt_.threads)};
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log().c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    // The server takes SIGTERM with sigwait: give it an empty signal mask.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    const int rc = posix_spawn(&pid_, args[0], &fa, &attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      *why = absl::StrCat("cannot start ", opt_.server_bin, ": ", strerror(rc));
      pid_ = -1;
      return false;
    }
    channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
    auto stub = v1::AnalysisService::NewStub(channel_);
    const double deadline = Now() + 90;
    while (Now() < deadline) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        *why = "the server exited at start; see its log:\n" + Tail(log());
        return false;
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::ListModelsResponse resp;
      if (stub->ListModels(&ctx, v1::ListModelsRequest(), &resp).ok() &&
          resp.models_size() > 0) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    *why = "the server did not answer ListModels within 90 s; log:\n" + Tail(log());
    return false;
  }

  /// VmHWM of the server and its worker children (KiB), with a breakdown.
  int64_t PeakKib(std::string* detail) const {
    if (pid_ <= 0) return -1;
    int64_t total = PeakRssKib(pid_);
    *detail = absl::StrCat("server ", total / 1024, " MiB");
    for (pid_t c : ChildPids(pid_)) {
      const int64_t k = PeakRssKib(c);
      if (k > 0) {
        total += k;
        absl::StrAppend(detail, " + worker ", k / 1024, " MiB");
      }
    }
    return total;
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  static std::string Tail(const std::string& path) {
    std::ifstream in(path);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return s.size() > 3000 ? s.substr(s.size() - 3000) : s;
  }

 private:
  const ServiceBenchOptions& opt_;
  std::string dir_;
  pid_t pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
};

/// One job through the public API: submit, watch to the terminal event.
/// Returns "" on COMPLETED, else why not. `phases` (optional) gets the
/// job's timeline.
std::string ServerJob(v1::AnalysisService::Stub& stub, const std::vector<int64_t>& ids,
                      JobPhases* phases = nullptr) {
  const double t0 = WallNow();
  v1::SubmitJobRequest req;
  v1::JobRequest* r = req.mutable_request();
  r->set_model("stories260K");
  v1::TokenIds* t = r->add_sequences()->mutable_ids();
  for (int64_t id : ids) t->add_ids(static_cast<int32_t>(id));
  r->mutable_scan();  // defaults: top-3, 100 / 1000x median
  v1::Job job;
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-sinkscope-user", "bench");
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    grpc::Status s = stub.SubmitJob(&ctx, req, &job);
    if (!s.ok()) return absl::StrCat("SubmitJob: ", s.error_message());
  }
  JobPhases ph;
  ph.submitted = WallNow() - t0;
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-sinkscope-user", "bench");
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
  v1::WatchJobRequest w;
  w.set_job_id(job.id());
  auto reader = stub.WatchJob(&ctx, w);
  v1::JobEvent ev;
  std::string result = "stream ended without a terminal event";
  while (reader->Read(&ev)) {
    ++ph.events;
    const double at = EventTime(ev) - t0;
    if (ev.has_model_loading() && ph.first_worker == 0) ph.first_worker = at;
    if (ev.has_result()) {
      if (ph.first_result == 0) ph.first_result = at;
      ph.last_result = at;
    }
    if (ev.has_completed()) {
      ph.completed = at;
      ph.received = WallNow() - t0;
      if (phases != nullptr) *phases = ph;
      result = "";
      break;
    }
    if (ev.has_failed()) {
      result = absl::StrCat("FAILED: ", ev.failed().message());
      break;
    }
    if (ev.has_cancelled()) {
      result = "CANCELLED";
      break;
    }
  }
  ctx.TryCancel();
  reader->Finish();
  return result;
}

RunStats RunServerClients(const ServiceBenchOptions& opt, const std::string& address,
                          int clients, int job_offset, int jobs_per_client) {
  RunStats out;
  std::mutex mu;
  std::vector<std::thread> threads;
  const double t0 = Now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
      auto stub = v1::AnalysisService::NewStub(channel);
      for (int j = 0; j < jobs_per_client; ++j) {
        const auto ids = JobTokens(opt.seq_len, 512, job_offset + c * 1000 + j);
        const double s = Now();
        JobPhases ph;
        const std::string err = ServerJob(*stub, ids, &ph);
        const double lat = Now() - s;
        std::lock_guard<std::mutex> lock(mu);
        if (err.empty()) {
          out.latency_s.push_back(lat);
          out.phases.push_back(ph);
        } else {
          if (out.failed++ == 0) out.first_error = err;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  out.wall_s = Now() - t0;
  return out;
}

// ---------------------------------------------------------------- direct side

RunStats RunDirect(const ServiceBenchOptions& opt, int clients) {
  RunStats out;
  absl::StatusOr<Checkpoint> ck = LoadCheckpoint(opt.model_path);
  if (!ck.ok()) {
    out.failed = 1;
    out.first_error = ck.status().ToString();
    return out;
  }
  std::vector<std::unique_ptr<Model>> models;
  for (int i = 0; i < opt.workers; ++i) {
    auto m = Model::Create(*ck, c10::Device(c10::kCPU), at::kFloat);
    if (!m.ok()) {
      out.failed = 1;
      out.first_error = m.status().ToString();
      return out;
    }
    models.push_back(std::move(*m));
  }
  const int64_t vocab = models[0]->config().d_vocab;
  ck->tensors.clear();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Model*> free_models;
  for (auto& m : models) free_models.push_back(m.get());
  auto job = [&](const std::vector<int64_t>& ids) -> std::string {
    Model* m;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return !free_models.empty(); });
      m = free_models.back();
      free_models.pop_back();
    }
    auto r = RunActivationScan(*m, {ids}, ScanParams(), nullptr, nullptr);
    {
      std::lock_guard<std::mutex> lock(mu);
      free_models.push_back(m);
    }
    cv.notify_one();
    return r.ok() ? "" : r.status().ToString();
  };
  // Warm-up: one job per model, concurrently.
  {
    std::vector<std::thread> w;
    for (int i = 0; i < opt.workers; ++i) {
      w.emplace_back([&, i] { job(JobTokens(opt.seq_len, vocab, 99999 + i)); });
    }
    for (auto& t : w) t.join();
  }
  std::mutex out_mu;
  std::vector<std::thread> threads;
  const double t0 = Now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int j = 0; j < opt.jobs_per_client; ++j) {
        const auto ids = JobTokens(opt.seq_len, vocab, c * 1000 + j);
        const double s = Now();
        const std::string err = job(ids);
        const double lat = Now() - s;
        std::lock_guard<std::mutex> lock(out_mu);
        if (err.empty()) {
          out.latency_s.push_back(lat);
        } else if (out.failed++ == 0) {
          out.first_error = err;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  out.wall_s = Now() - t0;
  out.peak_kib = PeakRssKib();
  return out;
}

void Merge(RunStats& into, const RunStats& more) {
  into.latency_s.insert(into.latency_s.end(), more.latency_s.begin(), more.latency_s.end());
  into.phases.insert(into.phases.end(), more.phases.begin(), more.phases.end());
  into.server_cpu_s += more.server_cpu_s;
  into.worker_cpu_s += more.worker_cpu_s;
  into.wall_s += more.wall_s;
  if (into.failed == 0 && more.failed > 0) into.first_error = more.first_error;
  into.failed += more.failed;
  if (more.peak_kib > into.peak_kib) {
    into.peak_kib = more.peak_kib;
    into.peak_detail = more.peak_detail;
  }
}

}  // namespace

int RunDirectChild(const ServiceBenchOptions& opt, int clients) {
  at::set_num_threads(opt.threads);
  PinBlasThreads(opt.threads);
  RunStats s = RunDirect(opt, clients);
  std::printf("RESULT %s\n", StatsJson(s).dump().c_str());
  return 0;
}

int RunServiceBench(const ServiceBenchOptions& opt) {
  std::printf("\n[3] Service overhead: stories260K activation scans (1 sequence x %d tokens "
              "per job), %d cpu workers x %d thread(s); server on a unix socket with a fresh "
              "SQLite database (synchronous=FULL, the default); direct = RunActivationScan on %d "
              "in-process models; server and direct runs alternate, 2 rounds each\n",
              opt.seq_len, opt.workers, opt.threads, opt.workers);
  std::fflush(stdout);
  for (const std::string& bin : {opt.server_bin, opt.worker_bin, opt.model_path}) {
    if (access(bin.c_str(), R_OK) != 0) {
      std::printf("  TODO/SKIPPED: %s is missing (build sinkscope-server and sinkscope-worker, "
                  "or pass --server-bin / --worker-bin / --service-model)\n",
                  bin.c_str());
      return 0;
    }
  }
  PinBlasThreads(opt.threads);
  const std::string dir = MakeTempDir("sinkscope-bench-svc-");
  Server server(opt, dir);
  std::string why;
  if (!server.Start(&why)) {
    std::printf("  FAILED to start the server: %s\n", why.c_str());
    RemoveTree(dir);
    return 1;
  }
  // Warm-up: enough concurrent jobs that every worker loads the model and
  // runs a few scans (not a full round: that doubled the bench's time).
  {
    RunStats warm = RunServerClients(opt, server.address(), 2 * opt.workers, 500000,
                                     std::min(opt.jobs_per_client, 5));
    if (warm.failed > 0) {
      std::printf("  FAILED: warm-up job: %s\n", warm.first_error.c_str());
      server.Stop();
      std::printf("  server log:\n%s\n", Server::Tail(server.log()).c_str());
      RemoveTree(dir);
      return 1;
    }
  }
  struct Row {
    int clients;
    RunStats server, direct;
  };
  std::vector<Row> rows;
  for (int c : opt.clients) {
    Row row{c, {}, {}};
    for (int round = 0; round < 2; ++round) {
      std::fprintf(stderr, "  service: %d client(s), round %d: server\n", c, round + 1);
      auto cpu = [&](double* workers) {
        *workers = 0;
        for (pid_t w : ChildPids(server.pid())) *workers += std::max(0.0, ProcessCpuSeconds(w));
        return ProcessCpuSeconds(server.pid());
      };
      double w0 = 0, w1 = 0;
      const double s0 = cpu(&w0);
      RunStats run = RunServerClients(opt, server.address(), c, round * 100000, opt.jobs_per_client);
      const double s1 = cpu(&w1);
      run.server_cpu_s = s1 - s0;
      run.worker_cpu_s = w1 - w0;
      Merge(row.server, run);
      std::fprintf(stderr, "  service: %d client(s), round %d: direct\n", c, round + 1);
      std::string out;
      const int rc = RunCapture({opt.self_exe, "direct-child", "--clients", std::to_string(c),
                                 "--threads", std::to_string(opt.threads), "--service-model",
                                 opt.model_path, "--jobs-per-client",
                                 std::to_string(opt.jobs_per_client), "--job-tokens",
                                 std::to_string(opt.seq_len), "--workers",
                                 std::to_string(opt.workers)},
                                &out);
      const size_t at = out.find("RESULT ");
      if (rc != 0 || at == std::string::npos) {
        row.direct.failed++;
        row.direct.first_error = absl::StrCat("direct-child exited ", rc);
      } else {
        Merge(row.direct, StatsFromJson(json::parse(out.substr(at + 7))));
      }
    }
    rows.push_back(std::move(row));
  }
  std::string peak_detail;
  const int64_t server_peak = server.PeakKib(&peak_detail);
  server.Stop();

  std::printf("  %-8s %-7s %6s %8s %9s %9s %9s %9s %9s\n", "clients", "path", "jobs", "failed",
              "jobs/s", "p50 ms", "p90 ms", "max ms", "jobs/s x");
  for (const Row& r : rows) {
    const double srv_rate = r.server.wall_s > 0 ? r.server.latency_s.size() / r.server.wall_s : 0;
    const double dir_rate = r.direct.wall_s > 0 ? r.direct.latency_s.size() / r.direct.wall_s : 0;
    auto line = [&](const char* path, const RunStats& s, double rate, double rel) {
      std::printf("  %-8d %-7s %6zu %8d %9.1f %9.2f %9.2f %9.2f %8.3fx\n", r.clients, path,
                  s.latency_s.size(), s.failed, rate, Percentile(s.latency_s, 0.5) * 1e3,
                  Percentile(s.latency_s, 0.9) * 1e3, Max(s.latency_s) * 1e3, rel);
      if (s.failed) std::printf("           first failure: %s\n", s.first_error.c_str());
    };
    line("direct", r.direct, dir_rate, 1.0);
    line("server", r.server, srv_rate, dir_rate > 0 ? srv_rate / dir_rate : 0);
    std::printf("  %-8s server/direct: p50 latency %.2fx, throughput %.3fx\n", "",
                Percentile(r.server.latency_s, 0.5) /
                    std::max(1e-9, Percentile(r.direct.latency_s, 0.5)),
                dir_rate > 0 ? srv_rate / dir_rate : 0);
  }
  // Where the server path's time goes (medians over its jobs): what the
  // engine does is first_result -> last_result plus a block or two before.
  for (const Row& r : rows) {
    if (r.server.phases.empty()) continue;
    auto med = [&](auto f) {
      std::vector<double> v;
      for (const JobPhases& p : r.server.phases) v.push_back(f(p));
      return Percentile(v, 0.5) * 1e3;
    };
    std::printf("  %-8d timeline (ms from SubmitJob, p50): submit returned %.2f, first worker "
                "event stored %.2f, first result %.2f, last result %.2f, COMPLETED stored %.2f, "
                "read by the client %.2f; %.0f events\n",
                r.clients, med([](const JobPhases& p) { return p.submitted; }),
                med([](const JobPhases& p) { return p.first_worker; }),
                med([](const JobPhases& p) { return p.first_result; }),
                med([](const JobPhases& p) { return p.last_result; }),
                med([](const JobPhases& p) { return p.completed; }),
                med([](const JobPhases& p) { return p.received; }),
                med([](const JobPhases& p) { return p.events / 1e3; }));
    const double n = static_cast<double>(r.server.latency_s.size());
    std::printf("  %-8d CPU per job: server %.2f ms, workers %.2f ms\n", r.clients,
                r.server.server_cpu_s / n * 1e3, r.server.worker_cpu_s / n * 1e3);
  }
  int64_t direct_peak = 0;
  for (const Row& r : rows) direct_peak = std::max(direct_peak, r.direct.peak_kib);
  std::printf("\n[4b] Peak RSS of the service path: %.1f MiB in total (%s); direct engine "
              "process with %d models: %.1f MiB\n",
              server_peak / 1024.0, peak_detail.c_str(), opt.workers, direct_peak / 1024.0);
  RemoveTree(dir);
  return 0;
}

}  // namespace sinkscope::bench
