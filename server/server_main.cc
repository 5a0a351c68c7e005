// sinkscope-server: the public AnalysisService, a durable job store and a
// pool of sinkscope-worker processes.
//
//   sinkscope-server --config deploy/server.json
//   sinkscope-server --listen 127.0.0.1:50051 --database jobs.db --workers cpu,cpu
//                    --catalog deploy/catalog.json
//
// SIGTERM / SIGINT: stop accepting jobs, let running jobs finish for up to
// drain_timeout_s, put the others back in the queue (durably), exit 0.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "server/analysis_service.h"
#include "server/catalog.h"
#include "server/config.h"
#include "server/job_manager.h"
#include "server/scheduler.h"
#include "server/sqlite_job_store.h"
#include "server/worker_pool.h"

namespace {

using sinkscope::server::ServerConfig;

void Log(const std::string& message) {
  std::fprintf(stderr, "sinkscope-server: %s\n", message.c_str());
}

/// sinkscope-worker next to this binary, or in the build tree's worker/.
std::string DefaultWorkerBinary() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "sinkscope-worker";
  for (const auto& candidate : {self.parent_path() / "sinkscope-worker",
                                self.parent_path().parent_path() / "worker" / "sinkscope-worker"}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return (self.parent_path() / "sinkscope-worker").string();
}

int Run(const ServerConfig& config) {
  using namespace sinkscope::server;
  absl::StatusOr<ModelCatalog> catalog = ModelCatalog::LoadFile(config.catalog);
  if (!catalog.ok()) {
    Log(catalog.status().ToString());
    return 1;
  }
  for (const CatalogEntry& e : catalog->entries()) {
    Log(absl::StrCat("model ", e.name, " (", e.format, ")",
                     e.available ? "" : absl::StrCat(" UNAVAILABLE: ", e.unavailable_reason)));
  }
  absl::StatusOr<std::unique_ptr<SqliteJobStore>> store =
      SqliteJobStore::Open(config.database, config.sync_full);
  if (!store.ok()) {
    Log(store.status().ToString());
    return 1;
  }
  absl::StatusOr<std::vector<std::string>> requeued =
      (*store)->RequeueInterrupted("server restarted while the job was running");
  if (!requeued.ok()) {
    Log(requeued.status().ToString());
    return 1;
  }
  if (!requeued->empty()) Log(absl::StrCat("re-queued ", requeued->size(), " interrupted job(s)"));

  std::string runtime_dir = config.runtime_dir;
  bool own_runtime_dir = false;
  if (runtime_dir.empty()) {
    char tmpl[] = "/tmp/sinkscope-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      Log("cannot create a runtime directory in /tmp");
      return 1;
    }
    runtime_dir = tmpl;
    own_runtime_dir = true;
  } else {
    mkdir(runtime_dir.c_str(), 0700);
  }

  RequestLimits limits;
  limits.max_sequences = config.max_sequences;
  limits.max_total_tokens = config.max_total_tokens;
  Scheduler scheduler(store->get(), std::make_unique<FifoPolicy>());
  JobManager manager(store->get(), &*catalog, &scheduler, limits, config.max_attempts);
  WorkerPool pool(&manager, config, runtime_dir);
  if (absl::Status s = pool.Start(); !s.ok()) {
    Log(s.ToString());
    return 1;
  }

  AnalysisServiceImpl service(&manager);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_request_bytes));
  builder.SetMaxSendMessageSize(64 << 20);
  // Metrics seam: a prometheus-cpp Exposer and counters hook in here.
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || (config.listen.rfind("unix:", 0) != 0 && port == 0)) {
    Log(absl::StrCat("cannot listen on ", config.listen));
    pool.Stop();
    return 1;
  }
  Log(absl::StrCat("listening on ", config.listen, " (", config.worker_devices.size(),
                   " worker(s), database ", config.database, ")"));

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  int sig = 0;
  sigwait(&signals, &sig);
  Log(absl::StrCat("signal ", sig, ": draining (up to ", config.drain_timeout_s, " s)"));

  manager.BeginDrain();
  if (!pool.WaitIdle(absl::Now() + absl::Seconds(config.drain_timeout_s))) {
    Log("drain deadline reached: putting running jobs back in the queue");
    pool.AbortRunning();
    pool.WaitIdle(absl::Now() + absl::Seconds(10));
  }
  manager.Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  pool.Stop();
  if (own_runtime_dir) {
    std::error_code ec;
    std::filesystem::remove_all(runtime_dir, ec);
  }
  Log("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Signals are taken by sigwait in the main thread; block them before any
  // thread starts (children get an empty mask before exec).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  CLI::App app{"sinkscope-server: massive-activation and attention-sink analyses as a service"};
  std::string config_file, listen, database, workers, catalog, worker_binary, runtime_dir;
  int max_attempts = 0, drain_timeout_s = -1, worker_threads = -1;
  std::vector<std::string> worker_args;
  app.add_option("--config", config_file, "JSON config file (flags override it)");
  app.add_option("--listen", listen, "Address: host:port or unix:/path (default 127.0.0.1:50051)");
  app.add_option("--database", database, "SQLite database file (default sinkscope.db)");
  app.add_option("--workers", workers, "Worker devices, comma-separated, e.g. cpu,cpu");
  app.add_option("--catalog", catalog, "Model catalog JSON (default deploy/catalog.json)");
  app.add_option("--worker-binary", worker_binary, "sinkscope-worker binary");
  app.add_option("--runtime-dir", runtime_dir, "Directory for worker sockets");
  app.add_option("--max-attempts", max_attempts, "Dispatches of a job whose worker dies (default 3)");
  app.add_option("--drain-timeout", drain_timeout_s, "Seconds running jobs may finish on SIGTERM");
  app.add_option("--worker-threads", worker_threads, "Intra-op threads per worker (0 = default)");
  app.add_option("--worker-arg", worker_args, "Extra argument for every worker (repeatable)")
      ->allow_extra_args(false);
  CLI11_PARSE(app, argc, argv);

  ServerConfig config;
  if (!config_file.empty()) {
    absl::StatusOr<ServerConfig> loaded = sinkscope::server::LoadServerConfigFile(config_file, config);
    if (!loaded.ok()) {
      Log(loaded.status().ToString());
      return 2;
    }
    config = *loaded;
  }
  if (!listen.empty()) config.listen = listen;
  if (!database.empty()) config.database = database;
  if (!workers.empty()) {
    absl::StatusOr<std::vector<std::string>> devices = sinkscope::server::ParseWorkerDevices(workers);
    if (!devices.ok()) {
      Log(devices.status().ToString());
      return 2;
    }
    config.worker_devices = *devices;
  }
  if (!catalog.empty()) config.catalog = catalog;
  if (!worker_binary.empty()) config.worker_binary = worker_binary;
  if (!runtime_dir.empty()) config.runtime_dir = runtime_dir;
  if (max_attempts != 0) config.max_attempts = max_attempts;
  if (drain_timeout_s >= 0) config.drain_timeout_s = drain_timeout_s;
  if (worker_threads >= 0) config.worker_threads = worker_threads;
  for (const std::string& a : worker_args) config.worker_args.push_back(a);
  if (config.worker_binary.empty()) config.worker_binary = DefaultWorkerBinary();
  if (absl::Status s = sinkscope::server::ValidateServerConfig(config); !s.ok()) {
    Log(s.ToString());
    return 2;
  }
  return Run(config);
}
