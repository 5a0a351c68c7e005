// sinkscope-server: the public AnalysisService, a durable job store and a
// pool of sinkscope-worker processes.
//
//   sinkscope-server --config deploy/server.json
//   sinkscope-server --listen 127.0.0.1:50051 --database jobs.db --workers cpu,cpu
//                    --catalog deploy/catalog.json
//
// SIGTERM / SIGINT: stop accepting jobs, let running jobs finish for up to
// drain_timeout_s, put the others back in the queue (durably), exit 0.
//
// API tokens (stored hashed in the database's api_tokens table):
//   sinkscope-server --config server.json token create --user alice [--admin]
//   sinkscope-server --database jobs.db token list
//   sinkscope-server --database jobs.db token revoke --id 3   (or --user alice)
// (--config or --database is required: the token goes to the server's database.)
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include "absl/synchronization/mutex.h"
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "server/analysis_service.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/catalog.h"
#include "server/config.h"
#include "server/job_manager.h"
#include "server/scheduler.h"
#include "server/host_lease.h"
#include "server/single_server.h"
#include "server/sql_job_store.h"
#include "server/watch_hub.h"
#include "server/worker_pool.h"

namespace {

using sinkscope::server::ServerConfig;

void Log(const std::string& message);

/// Logs a catalog's entries (with paths: clients only see the reasons) and
/// its warnings.
void LogCatalog(const sinkscope::server::ModelCatalog& catalog) {
  using sinkscope::server::CatalogEntry;
  using sinkscope::server::CorpusEntry;
  for (const std::string& w : catalog.warnings()) Log(absl::StrCat("catalog: ", w));
  for (const CatalogEntry& e : catalog.entries()) {
    Log(absl::StrCat("model ", e.name, " (", e.format, ", ", e.path, ")",
                     e.available ? "" : absl::StrCat(" UNAVAILABLE: ", e.unavailable_reason)));
  }
  for (const CorpusEntry& c : catalog.corpora()) {
    Log(absl::StrCat("corpus ", c.name, " (", c.path, ")",
                     c.available ? "" : absl::StrCat(" UNAVAILABLE: ", c.unavailable_reason)));
  }
}

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

std::string ReadWholeFile(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  *ok = static_cast<bool>(in);
  return s.str();
}

std::string FormatTime(int64_t micros) {
  if (micros == 0) return "-";
  std::time_t t = static_cast<std::time_t>(micros / 1000000);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

/// `token create|revoke|list` on the configured database.
int RunTokenCommand(const ServerConfig& config, const std::string& command, const std::string& user,
                    bool admin, int64_t id) {
  using namespace sinkscope::server;
  absl::StatusOr<std::unique_ptr<TokenStore>> tokens = TokenStore::Open(config.database);
  if (!tokens.ok()) {
    Log(absl::StrCat("database ", config.database, ": ", tokens.status().ToString()));
    return 1;
  }
  std::fprintf(stderr, "sinkscope-server: tokens of database %s\n", config.database.c_str());
  if (command == "create") {
    TokenInfo info;
    absl::StatusOr<std::string> token = (*tokens)->Create(user, admin, &info);
    if (!token.ok()) {
      Log(token.status().ToString());
      return 1;
    }
    std::printf("%s\n", token->c_str());
    std::fprintf(stderr,
                 "token %lld for user %s%s created; it is shown only once. Clients send it as "
                 "\"authorization: Bearer <token>\" (sinkscope --token or SINKSCOPE_TOKEN).\n",
                 static_cast<long long>(info.id), user.c_str(), admin ? " (admin)" : "");
    return 0;
  }
  if (command == "revoke") {
    if (id > 0) {
      absl::Status s = (*tokens)->Revoke(id);
      if (!s.ok()) {
        Log(s.ToString());
        return 1;
      }
      std::printf("revoked token %lld\n", static_cast<long long>(id));
      return 0;
    }
    if (user.empty()) {
      Log("token revoke: give --id N or --user NAME");
      return 2;
    }
    absl::StatusOr<int> n = (*tokens)->RevokeUser(user);
    if (!n.ok()) {
      Log(n.status().ToString());
      return 1;
    }
    std::printf("revoked %d token(s) of %s\n", *n, user.c_str());
    return 0;
  }
  absl::StatusOr<std::vector<TokenInfo>> list = (*tokens)->List();
  if (!list.ok()) {
    Log(list.status().ToString());
    return 1;
  }
  std::printf("%-6s %-24s %-6s %-21s %s\n", "ID", "USER", "ADMIN", "CREATED", "REVOKED");
  for (const TokenInfo& t : *list) {
    std::printf("%-6lld %-24s %-6s %-21s %s\n", static_cast<long long>(t.id), t.user.c_str(),
                t.admin ? "yes" : "no", FormatTime(t.create_us).c_str(),
                FormatTime(t.revoke_us).c_str());
  }
  return 0;
}

int Run(const ServerConfig& config) {
  using namespace sinkscope::server;
  // A second server must not take over a running one's socket.
  // Nor share a TCP port or a SQLite database with one: both are checked
  // before any job is touched.
  const std::string socket_path = UnixSocketPath(config.listen);
  if (absl::Status s = socket_path.empty() ? CheckTcpListenFree(config.listen)
                                           : PrepareUnixSocket(socket_path, Log);
      !s.ok()) {
    Log(std::string(s.message()));
    return 1;
  }
  absl::StatusOr<DatabaseLock> db_lock =
      IsPostgresUrl(config.database) ? DatabaseLock::Acquire("") : DatabaseLock::Acquire(config.database);
  if (!db_lock.ok()) {
    Log(std::string(db_lock.status().message()));
    return 1;
  }
  const std::string auth_mode = EffectiveAuthMode(config);
  Metrics metrics(config.metrics_max_users);
  if (!config.metrics_listen.empty()) {
    absl::StatusOr<int> port = metrics.Expose(config.metrics_listen);
    if (port.ok()) {
      const std::string host = config.metrics_listen.substr(0, config.metrics_listen.rfind(':'));
      Log(absl::StrCat("metrics on http://", host, ":", *port, "/metrics"));
    } else {
      // The operator asked for /metrics: a server the monitoring cannot see
      // (or another server's metrics scraped as this one's) is refused.
      Log(absl::StrCat(port.status().message(),
                       "; free the port or change metrics_listen (--metrics-listen off runs without /metrics)"));
      return 1;
    }
  }
  // One database for jobs, events, hosts and tokens (migrated here).
  absl::StatusOr<std::shared_ptr<SqlDb>> db = OpenSqlDb(config.database, config.sync_full);
  if (!db.ok()) {
    Log(absl::StrCat("database ", config.database, ": ", db.status().ToString()));
    return 1;
  }
  std::unique_ptr<TokenStore> tokens;
  if (auth_mode == "token") tokens = std::make_unique<TokenStore>(*db);
  Authenticator authenticator(auth_mode, tokens.get());
  absl::StatusOr<ModelCatalog> catalog = ModelCatalog::LoadFile(config.catalog);
  if (!catalog.ok()) {
    Log(catalog.status().ToString());
    return 1;
  }
  LogCatalog(*catalog);
  StoreOptions store_options;
  store_options.host = config.host_id;
  store_options.lease_ms = config.lease_ms;
  std::unique_ptr<SqlJobStore> store_owner = SqlJobStore::Create(*db, store_options);
  std::unique_ptr<SqlJobStore>* store = &store_owner;
  const bool several_hosts = (*db)->dialect() == SqlDialect::kPostgres;
  Log(absl::StrCat("database ", (*db)->name(), ", schema version ", CurrentSchemaVersion(),
                   ", host ", (*store)->host(), several_hosts ? " (one queue shared by hosts)" : ""));
  if (several_hosts) {
    // Workers are published every <= 500 ms; a host that restarts after a
    // crash has been silent longer than this.
    if (absl::Status s = (*store)->CheckHostNameFree(1500); !s.ok()) {
      Log(s.ToString());
      return 1;
    }
  }
  absl::StatusOr<std::vector<std::string>> requeued =
      (*store)->RequeueInterrupted("server restarted while the job was running");
  if (!requeued.ok()) {
    Log(absl::StrCat("database ", config.database, ": ", requeued.status().ToString()));
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
  limits.max_text_bytes = config.max_text_bytes;
  limits.max_job_token_layers = config.max_job_token_layers;
  limits.max_result_bytes = config.max_result_bytes;
  limits.max_train_tokens = config.max_train_tokens;
  limits.user_max_train_tokens = config.user_max_train_tokens;
  {
    // Training runs live beside the database unless configured.
    std::string runs = config.runs_dir;
    if (runs.empty()) {
      runs = IsPostgresUrl(config.database)
                 ? ResolvePath(".", "runs")
                 : std::filesystem::path(config.database).parent_path().append("runs").string();
    }
    limits.runs_dir = runs;
    Log(absl::StrCat("training runs directory: ", runs));
  }
  JobManager* manager_ptr = nullptr;
  Scheduler scheduler(
      store->get(),
      std::make_unique<FairSharePolicy>(config.user_weights, config.max_running_per_user),
      [&manager_ptr](const std::string& id) {
        return manager_ptr != nullptr ? manager_ptr->TraitsOf(id) : JobTraits();
      });
  JobManager manager(store->get(), &*catalog, &scheduler, limits, config.max_attempts);
  SharedHostOptions shared;
  shared.max_queued_per_user = config.max_queued_per_user;
  shared.queue_event_interval_ms = config.queue_event_interval_ms;
  shared.max_get_response_bytes = config.max_get_response_bytes;
  for (size_t i = 0; i < config.worker_devices.size(); ++i) {
    const int64_t budget = WorkerMemoryBudget(config, i);
    Log(absl::StrCat("worker-", i, " (", config.worker_devices[i], ") memory budget: ",
                     budget > 0 ? HumanBytes(budget)
                     : config.worker_devices[i] == "cpu" ? std::string("unlimited")
                                                         : std::string("90% of the device")));
    if (budget == 0) {
      shared.max_worker_budget = 0;
      break;
    }
    shared.max_worker_budget = std::max(shared.max_worker_budget, budget);
  }
  manager.Configure(shared, &metrics);
  manager_ptr = &manager;
  // Changes by other hosts (PostgreSQL NOTIFY) wake this host's watchers
  // and idle workers; the relay stops before the manager goes away.
  struct ChangeRelay {
    std::mutex mu;
    JobManager* manager = nullptr;
    void Fire() {
      std::lock_guard<std::mutex> lock(mu);
      if (manager != nullptr) manager->Notify();
    }
  };
  auto relay = std::make_shared<ChangeRelay>();
  relay->manager = &manager;
  struct RelayGuard {
    std::shared_ptr<ChangeRelay> relay;
    ~RelayGuard() {
      std::lock_guard<std::mutex> lock(relay->mu);
      relay->manager = nullptr;
    }
  } relay_guard{relay};
  if (absl::Status s = (*store)->SetChangeListener([relay](const std::string&) { relay->Fire(); });
      !s.ok()) {
    Log(s.ToString());
    return 1;
  }
  manager.StartBackground();
  WorkerPool pool(&manager, config, runtime_dir);
  if (absl::Status s = pool.Start(); !s.ok()) {
    Log(s.ToString());
    return 1;
  }
  HostLeaseOptions lease_options;
  lease_options.lease_ms = config.lease_ms;
  lease_options.max_attempts = config.max_attempts;
  lease_options.share_workers = several_hosts;
  HostLeases leases(store->get(), &scheduler, lease_options, [relay] { relay->Fire(); });
  leases.Start();

  // WatchJob streams: callback API, no thread each; capped per user and in all.
  WatchLimits watch_limits;
  watch_limits.per_user = config.max_watch_streams_per_user;
  watch_limits.total = config.max_watch_streams;
  WatchHub hub(store->get(), watch_limits,
               [&metrics](int code) { metrics.GrpcRequest("WatchJob", code); });
  manager.SetEventsListener([&hub](const std::string& id, const std::vector<sinkscope::v1::JobEvent>& events) {
    hub.Offer(id, events);
  });
  manager.SetChangeListener([&hub](const std::string& id) {
    if (id.empty()) {
      hub.AllChanged();
    } else {
      hub.JobChanged(id);
    }
  });
  AnalysisServiceImpl service(&manager, &authenticator, &metrics, &hub);
  grpc::ServerBuilder builder;
  int port = 0;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!config.tls_cert.empty()) {
    bool cert_ok = false, key_ok = false;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    pair.cert_chain = ReadWholeFile(config.tls_cert, &cert_ok);
    pair.private_key = ReadWholeFile(config.tls_key, &key_ok);
    if (!cert_ok || !key_ok || pair.cert_chain.empty() || pair.private_key.empty()) {
      Log(absl::StrCat("cannot read tls_cert ", config.tls_cert, " / tls_key ", config.tls_key));
      pool.Stop();
      return 1;
    }
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back(pair);
    credentials = grpc::SslServerCredentials(ssl);
  }
  // gRPC unlinks a Unix socket path when it binds and again when it shuts
  // down. Bind a private name next to the public path and rename it into
  // place once listening: gRPC's unlinks then only touch the private name,
  // and at exit we unlink the public path only if it is still ours.
  std::string bind_address = config.listen;
  std::string bind_path;
  if (!socket_path.empty()) {
    bind_path = absl::StrCat(socket_path, ".", getpid(), ".tmp");
    if (bind_path.size() < sizeof(sockaddr_un::sun_path)) {
      bind_address = "unix:" + bind_path;
    } else {
      bind_path.clear();
    }
  }
  // No SO_REUSEPORT: a second server on this address fails to bind
  // instead of sharing its connections at random.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(bind_address, credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_request_bytes));
  builder.SetMaxSendMessageSize(64 << 20);
  // Metrics seam: a prometheus-cpp Exposer and counters hook in here.
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || (config.listen.rfind("unix:", 0) != 0 && port == 0)) {
    Log(absl::StrCat("cannot listen on ", config.listen));
    pool.Stop();
    if (!bind_path.empty()) unlink(bind_path.c_str());
    return 1;
  }
  ino_t socket_inode = 0;
  dev_t socket_dev = 0;
  if (!socket_path.empty()) {
    if (!bind_path.empty() && rename(bind_path.c_str(), socket_path.c_str()) != 0) {
      Log(absl::StrCat("cannot move the socket into place at unix:", socket_path, ": ",
                       std::strerror(errno)));
      server->Shutdown();
      pool.Stop();
      unlink(bind_path.c_str());
      return 1;
    }
    struct stat st;
    if (stat(socket_path.c_str(), &st) == 0) {
      socket_inode = st.st_ino;
      socket_dev = st.st_dev;
    }
  }
  Log(absl::StrCat("listening on ", config.listen,
                   config.listen.rfind("unix:", 0) == 0 ? "" : absl::StrCat(" (port ", port, ")"),
                   config.tls_cert.empty() ? ", plaintext" : ", TLS", ", auth ", auth_mode, " (",
                   config.worker_devices.size(), " worker(s), database ", (*db)->name(), ")"));

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    // SIGHUP: read the catalog again. A file that cannot be read or parsed
    // keeps the current catalog; single bad entries are listed unavailable.
    absl::StatusOr<ModelCatalog> reloaded = ModelCatalog::LoadFile(config.catalog);
    if (!reloaded.ok()) {
      Log(absl::StrCat("SIGHUP: catalog not reloaded, still serving the previous one: ",
                       reloaded.status().ToString()));
      continue;
    }
    Log(absl::StrCat("SIGHUP: catalog ", config.catalog, " reloaded"));
    LogCatalog(*reloaded);
    manager.ReplaceCatalog(std::make_unique<ModelCatalog>(*std::move(reloaded)));
  }
  Log(absl::StrCat("signal ", sig, ": draining (up to ", config.drain_timeout_s, " s)"));

  manager.BeginDrain();
  if (!pool.WaitIdle(absl::Now() + absl::Seconds(config.drain_timeout_s))) {
    Log("drain deadline reached: putting running jobs back in the queue");
    pool.AbortRunning();
    pool.WaitIdle(absl::Now() + absl::Seconds(10));
  }
  manager.Shutdown();
  hub.Shutdown();  // every WatchJob ends with UNAVAILABLE (and where to resume)
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  manager.SetChangeListener(nullptr);
  manager.SetEventsListener(nullptr);
  pool.Stop();
  leases.Stop();
  if (!socket_path.empty()) {
    // Only our own socket: another server may have replaced it meanwhile.
    struct stat st;
    if (stat(socket_path.c_str(), &st) == 0 && st.st_ino == socket_inode &&
        st.st_dev == socket_dev && socket_inode != 0) {
      unlink(socket_path.c_str());
    } else if (socket_inode != 0) {
      Log(absl::StrCat("unix:", socket_path, " is no longer our socket; leaving it"));
    }
  }
  if (own_runtime_dir) {
    std::error_code ec;
    std::filesystem::remove_all(runtime_dir, ec);
  }
  Log("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG: every absl::Mutex lock inside
  // gRPC would update a global lock graph, and a reported cycle aborts the
  // process. Release behaviour (bench/RESULTS.md, 2026-12-03).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Signals are taken by sigwait in the main thread; block them before any
  // thread starts (children get an empty mask before exec).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  CLI::App app{"sinkscope-server: massive-activation and attention-sink analyses as a service"};
  std::string config_file, listen, database, workers, catalog, worker_binary, runtime_dir;
  int max_attempts = 0, drain_timeout_s = -1, worker_threads = -1;
  std::vector<std::string> worker_args;
  std::string auth, metrics_listen, tls_cert, tls_key;
  app.add_option("--config", config_file, "JSON config file (flags override it)");
  app.add_option("--auth", auth, "auto (default), none or token");
  app.add_option("--metrics-listen", metrics_listen,
                 "Prometheus /metrics address (default 127.0.0.1:9464; \"off\" = none)");
  bool allow_remote_metrics = false;
  app.add_flag("--allow-remote-metrics", allow_remote_metrics,
               "Serve /metrics on a non-loopback --metrics-listen address (no authentication)");
  app.add_option("--tls-cert", tls_cert, "PEM certificate chain: TLS on the public port");
  app.add_option("--tls-key", tls_key, "PEM private key of --tls-cert");
  app.add_option("--listen", listen, "Address: host:port or unix:/path (default 127.0.0.1:50051)");
  app.add_option("--database", database,
                 "SQLite file (default sinkscope.db) or postgresql://user@host:port/db");
  std::string host_id;
  int64_t lease_ms = 0;
  app.add_option("--host-id", host_id, "This host's name in job leases (default: hostname)");
  app.add_option("--lease-ms", lease_ms, "Job lease, milliseconds (default 30000)");
  app.add_option("--workers", workers, "Worker devices, comma-separated, e.g. cpu,cpu");
  app.add_option("--catalog", catalog, "Model catalog JSON (default deploy/catalog.json)");
  app.add_option("--worker-binary", worker_binary, "sinkscope-worker binary");
  app.add_option("--runtime-dir", runtime_dir, "Directory for worker sockets");
  std::string runs_dir;
  app.add_option("--runs-dir", runs_dir, "Directory of the users' training runs (default: runs/ beside the database)");
  app.add_option("--max-attempts", max_attempts, "Dispatches of a job whose worker dies (default 3)");
  app.add_option("--drain-timeout", drain_timeout_s, "Seconds running jobs may finish on SIGTERM");
  app.add_option("--worker-threads", worker_threads, "Intra-op threads per worker (0 = default)");
  app.add_option("--worker-arg", worker_args, "Extra argument for every worker (repeatable)")
      ->allow_extra_args(false);
  std::string token_user;
  bool token_admin = false;
  int64_t token_id = 0;
  CLI::App* token = app.add_subcommand("token", "Manage API tokens (in the server's database)");
  token->require_subcommand(1);
  token->fallthrough();
  CLI::App* token_create = token->add_subcommand("create", "Create a token and print it once");
  token_create->add_option("--user", token_user, "User the token stands for")->required();
  token_create->add_flag("--admin", token_admin, "Admin token: sees and cancels every job");
  token_create->fallthrough();
  CLI::App* token_revoke = token->add_subcommand("revoke", "Revoke a token (--id) or a user's tokens");
  token_revoke->add_option("--id", token_id, "Token id (see token list)");
  token_revoke->add_option("--user", token_user, "Revoke every token of this user");
  token_revoke->fallthrough();
  CLI::App* token_list = token->add_subcommand("list", "List tokens (never their secrets)");
  token_list->fallthrough();
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
  if (!host_id.empty()) config.host_id = host_id;
  if (lease_ms != 0) config.lease_ms = lease_ms;
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
  if (!runs_dir.empty()) config.runs_dir = sinkscope::server::ResolvePath(".", runs_dir);
  if (max_attempts != 0) config.max_attempts = max_attempts;
  if (drain_timeout_s >= 0) config.drain_timeout_s = drain_timeout_s;
  if (worker_threads >= 0) config.worker_threads = worker_threads;
  for (const std::string& a : worker_args) config.worker_args.push_back(a);
  if (!auth.empty()) config.auth = auth;
  if (!metrics_listen.empty()) config.metrics_listen = metrics_listen == "off" ? "" : metrics_listen;
  if (!tls_cert.empty()) config.tls_cert = tls_cert;
  if (!tls_key.empty()) config.tls_key = tls_key;
  if (allow_remote_metrics) config.allow_remote_metrics = true;
  // One database path whatever the current directory.
  if (!sinkscope::server::IsPostgresUrl(config.database)) {
    config.database = sinkscope::server::ResolvePath(".", config.database);
  }
  if (token->parsed()) {
    if (config_file.empty() && database.empty()) {
      Log("token: name the server's database: --config FILE (the server's config) or "
          "--database FILE (without them the token would go to ./sinkscope.db, which the "
          "server may not use)");
      return 2;
    }
    const std::string command = token_create->parsed() ? "create"
                                : token_revoke->parsed() ? "revoke" : "list";
    return RunTokenCommand(config, command, token_user, token_admin, token_id);
  }
  if (config.worker_binary.empty()) config.worker_binary = DefaultWorkerBinary();
  if (absl::Status s = sinkscope::server::ValidateServerConfig(config); !s.ok()) {
    Log(s.ToString());
    return 2;
  }
  return Run(config);
}
