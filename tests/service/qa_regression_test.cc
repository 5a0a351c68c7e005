// Regression tests of QA findings, through the real server, worker and
// client binaries: idempotency keys, socket ownership, workers that cannot
// start, broken checkpoints, client argument checks, watching ended jobs.
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "tests/common/skip.h"

#include "absl/strings/str_cat.h"
#include "service_test_util.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;
namespace fs = std::filesystem;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// The client's exit code, stdout and stderr.
struct ClientRun {
  int rc = -1;
  std::string out, err;
  double seconds = 0;
};

/// Runs SINKSCOPE_CLIENT_BIN with `args` (killed after `timeout`).
ClientRun RunClient(const std::string& dir, const std::vector<std::string>& args,
                    seconds timeout = seconds(60)) {
  static int n = 0;
  const std::string out_path = absl::StrCat(dir, "/client-", n, ".out");
  const std::string err_path = absl::StrCat(dir, "/client-", n++, ".err");
  std::vector<std::string> argv = {SINKSCOPE_CLIENT_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    unsetenv("SINKSCOPE_SERVER");
    unsetenv("SINKSCOPE_USER");
    unsetenv("SINKSCOPE_TOKEN");
    unsetenv("SINKSCOPE_TLS_CA");
    std::vector<char*> cargs;
    for (std::string& a : argv) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    execv(cargs[0], cargs.data());
    _exit(127);
  }
  ClientRun run;
  int status = 0;
  const auto deadline = start + timeout;
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (WIFEXITED(status)) run.rc = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) run.rc = 128 + WTERMSIG(status);
  run.out = ReadAll(out_path);
  run.err = ReadAll(err_path);
  return run;
}

grpc::Status TrySubmit(v1::AnalysisService::Stub& stub, const v1::SubmitJobRequest& req,
                       v1::Job* job, const std::string& user = "tester") {
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-sinkscope-user", user);
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
  return stub.SubmitJob(&ctx, req, job);
}

v1::ListModelsResponse ListModels(v1::AnalysisService::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  v1::ListModelsResponse out;
  EXPECT_TRUE(stub.ListModels(&ctx, v1::ListModelsRequest(), &out).ok());
  return out;
}

class QaTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && server_) {
      std::fprintf(stderr, "---- server log tail (%s) ----\n%s\n", server_->log_path().c_str(),
                   ReadTail(server_->log_path()).c_str());
    }
  }
  /// Starts a server with `n_workers` on `catalog` (fails the test if it cannot).
  void StartServer(int n_workers, const std::string& catalog, const std::string& extra = "") {
    server_ = std::make_unique<ServerProcess>(
        dir_.path(), TestServerConfig(dir_.path(), n_workers, catalog,
                                      extra.empty() ? R"("metrics_listen": "")"
                                                    : absl::StrCat(R"("metrics_listen": "", )", extra)));
    ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  }
  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

// 1. The same client_request_id with a different request is ALREADY_EXISTS;
// the identical request still returns the same job.
TEST_F(QaTest, RequestIdReusedForADifferentRequestIsAlreadyExists) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog());
  auto stub = server_->NewStub();
  v1::SubmitJobRequest req = ScanRequest({MakeIds(8, 1)});
  req.set_client_request_id("req-42");
  v1::Job first, again, other;
  ASSERT_TRUE(TrySubmit(*stub, req, &first).ok());
  ASSERT_TRUE(TrySubmit(*stub, req, &again).ok());
  EXPECT_EQ(again.id(), first.id());

  v1::SubmitJobRequest different = ScanRequest({MakeIds(9, 2)});
  different.set_client_request_id("req-42");
  grpc::Status s = TrySubmit(*stub, different, &other);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("req-42"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find(first.id()), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("different request"), std::string::npos) << s.error_message();

  // Another job type under the same key.
  v1::SubmitJobRequest sinks = ScanRequest({MakeIds(8, 1)});
  sinks.mutable_request()->mutable_sinks();
  sinks.set_client_request_id("req-42");
  EXPECT_EQ(TrySubmit(*stub, sinks, &other).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  // Another owner may use the same key.
  EXPECT_TRUE(TrySubmit(*stub, different, &other, "bob").ok());
}

/// A Unix socket file at `path` that nothing listens on (a crashed server's).
void MakeStaleSocket(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  close(fd);
}

// 2. A second server on a live socket refuses to start (and the first keeps
// answering); a stale socket file is replaced; at exit a server removes the
// socket only if it is still its own.
TEST_F(QaTest, SecondServerDoesNotTakeOverTheSocket) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog());
  TempDir other;
  WriteFile(other.path() + "/catalog.json", TestCatalog());
  const std::string config = other.path() + "/server.json";
  WriteFile(config, ServerConfigJson(other.path(), server_->address(), 1, R"("metrics_listen": "")"));
  const std::string log = other.path() + "/server.log";
  const pid_t second = SpawnServer(config, log);
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  while (waitpid(second, &status, WNOHANG) != second) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "second server did not exit";
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_NE(ReadAll(log).find("address in use: another server is listening on " + server_->address()),
            std::string::npos)
      << ReadAll(log);
  auto stub = server_->NewStub();
  EXPECT_GE(ListModels(*stub).models_size(), 1);

  // The first server exits: its socket goes.
  const std::string socket_path = server_->address().substr(5);
  server_->Signal(SIGTERM);
  ASSERT_GE(server_->WaitExit(seconds(60)), 0);
  struct stat st;
  EXPECT_NE(stat(socket_path.c_str(), &st), 0);

  // A stale socket file is replaced.
  MakeStaleSocket(socket_path);
  ASSERT_EQ(stat(socket_path.c_str(), &st), 0);
  ASSERT_TRUE(server_->Start()) << ReadTail(server_->log_path());
  EXPECT_NE(ReadAll(server_->log_path()).find("removed the stale socket"), std::string::npos);
  EXPECT_GE(ListModels(*server_->NewStub()).models_size(), 1);

  // Someone else's socket now at the path survives our exit.
  ASSERT_EQ(unlink(socket_path.c_str()), 0);
  MakeStaleSocket(socket_path);
  struct stat theirs;
  ASSERT_EQ(stat(socket_path.c_str(), &theirs), 0);
  server_->Signal(SIGTERM);
  ASSERT_GE(server_->WaitExit(seconds(60)), 0);
  struct stat after;
  ASSERT_EQ(stat(socket_path.c_str(), &after), 0) << "the server removed a socket not its own";
  EXPECT_EQ(after.st_ino, theirs.st_ino);
}

/// Waits up to 60 s for `pid` to exit; its exit code, or -1 (killed, or
/// still running: the test fails).
int ExitCodeOf(pid_t pid) {
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "process " << pid << " did not exit";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
bool LoopbackPortAnswers(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// Issue 25.1. A second server on a TCP address in use exits 1 naming the
// address before it touches its database (gRPC's SO_REUSEPORT used to let
// both listen and share connections at random); the first keeps serving.
TEST_F(QaTest, SecondServerOnATcpPortInUseExits) {
  SKIP_WITHOUT_SHARED();
  const int port = FreeLoopbackPort();
  const std::string listen = absl::StrCat("127.0.0.1:", port);
  TempDir first, second;
  for (const TempDir* d : {&first, &second}) {
    WriteFile(d->path() + "/catalog.json", TestCatalog());
    WriteFile(d->path() + "/server.json",
              ServerConfigJson(d->path(), listen, 1, R"("metrics_listen": "")"));
  }
  const pid_t a = SpawnServer(first.path() + "/server.json", first.path() + "/server.log");
  const auto deadline = std::chrono::steady_clock::now() + seconds(90);
  while (!LoopbackPortAnswers(port)) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << ReadAll(first.path() + "/server.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const pid_t b = SpawnServer(second.path() + "/server.json", second.path() + "/server.log");
  EXPECT_EQ(ExitCodeOf(b), 1);
  const std::string log = ReadAll(second.path() + "/server.log");
  EXPECT_NE(log.find("address in use: another process (a running sinkscope-server?) listens on " +
                     listen),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("database"), std::string::npos) << "touched its database first:\n" << log;
  EXPECT_FALSE(fs::exists(second.path() + "/jobs.db"));
  EXPECT_TRUE(LoopbackPortAnswers(port));
  kill(a, SIGTERM);
  EXPECT_EQ(ExitCodeOf(a), 0);
}

// Issue 25.2. A second server on a running server's SQLite database exits 1
// naming the file, and re-queues nothing: the first server's running job
// completes once, on its first attempt.
TEST_F(QaTest, SecondServerOnADatabaseInUseExitsWithoutRequeueing) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog(), R"("worker_args": ["--test-unit-delay-ms", "400"])");
  auto stub = server_->NewStub();
  v1::Job job;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(16, 1)}), &job).ok());
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  for (;;) {  // wait until it runs
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_job_id(job.id());
    ASSERT_TRUE(stub->GetJob(&ctx, req, &job).ok());
    if (job.state() == v1::JOB_STATE_RUNNING) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << job.ShortDebugString();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  TempDir other;
  WriteFile(other.path() + "/catalog.json", TestCatalog());
  // Same database (dir_/jobs.db), another address.
  std::string config = ServerConfigJson(dir_.path(), "unix:" + other.path() + "/api.sock", 1,
                                        R"("metrics_listen": "")");
  WriteFile(other.path() + "/server.json", config);
  const pid_t second = SpawnServer(other.path() + "/server.json", other.path() + "/server.log");
  EXPECT_EQ(ExitCodeOf(second), 1);
  const std::string log = ReadAll(other.path() + "/server.log");
  EXPECT_NE(log.find("database " + dir_.path() + "/jobs.db is in use by another running "
                     "sinkscope-server"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("re-queued"), std::string::npos) << log;
  const v1::Job done = WaitTerminal(*stub, job.id(), seconds(120));
  EXPECT_EQ(done.state(), v1::JOB_STATE_COMPLETED) << done.ShortDebugString();
  EXPECT_EQ(done.attempts(), 1);
  // The database holds tokens and results: owner-only.
  struct stat st;
  ASSERT_EQ(stat((dir_.path() + "/jobs.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// Issue 25.7. A metrics address in use is an error at start, not a warning
// (the operator's Prometheus would scrape the other process).
TEST_F(QaTest, BusyMetricsPortStopsTheServer) {
  SKIP_WITHOUT_SHARED();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string metrics = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  WriteFile(dir_.path() + "/server.json",
            TestServerConfig(dir_.path(), 1, TestCatalog(),
                             absl::StrCat(R"("metrics_listen": ")", metrics, "\"")));
  const pid_t pid = SpawnServer(dir_.path() + "/server.json", dir_.path() + "/server.log");
  EXPECT_EQ(ExitCodeOf(pid), 1);
  const std::string log = ReadAll(dir_.path() + "/server.log");
  EXPECT_NE(log.find("change metrics_listen"), std::string::npos) << log;
  close(fd);
}

// Issue 25.3. Results larger than one GetJob answer (max_get_response_bytes)
// are read back page by page: every record, in order, byte for byte as the
// watch stream delivered them; `sinkscope get` prints them all.
TEST_F(QaTest, ResultsLargerThanOneAnswerAreReadInPages) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog(), R"("max_get_response_bytes": 2048)");
  auto stub = server_->NewStub();
  v1::SubmitJobRequest scan = ScanRequest({MakeIds(32, 1), MakeIds(32, 2)});
  scan.mutable_request()->mutable_scan()->set_top_k(32);  // ~1 kB a record
  v1::Job job;
  ASSERT_TRUE(TrySubmit(*stub, scan, &job).ok());
  std::vector<std::string> streamed;
  for (const v1::JobEvent& e : WatchAll(*stub, job.id(), 0, seconds(120))) {
    if (e.has_result()) streamed.push_back(e.result().SerializeAsString());
  }
  ASSERT_GT(streamed.size(), 4u);
  std::vector<std::string> paged;
  int pages = 0;
  v1::GetJobRequest req;
  req.set_job_id(job.id());
  req.set_include_results(true);
  req.set_page_results(true);
  for (;;) {
    grpc::ClientContext ctx;
    v1::Job page;
    grpc::Status s = stub->GetJob(&ctx, req, &page);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_GE(page.results_size(), 1);
    EXPECT_EQ(page.total_results(), static_cast<int>(streamed.size()));
    size_t bytes = 0;
    for (const auto& r : page.results()) bytes += r.ByteSizeLong();
    if (page.results_size() > 1) EXPECT_LE(bytes, 2048u) << "a page over max_get_response_bytes";
    ++pages;
    for (const auto& r : page.results()) paged.push_back(r.SerializeAsString());
    if (page.next_results_offset() == 0) break;
    ASSERT_EQ(page.next_results_offset(), static_cast<int>(paged.size()));
    req.set_results_offset(page.next_results_offset());
  }
  EXPECT_GT(pages, 1);
  EXPECT_EQ(paged, streamed);
  {  // an offset past the end names itself
    grpc::ClientContext ctx;
    v1::Job page;
    req.set_results_offset(static_cast<int32_t>(streamed.size()));
    grpc::Status s = stub->GetJob(&ctx, req, &page);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("results_offset"), std::string::npos) << s.error_message();
  }
  // The CLI reads every page: its --json Job holds every record.
  ClientRun run = RunClient(dir_.path(), {"--server", server_->address(), "--json", "get", job.id()});
  ASSERT_EQ(run.rc, 0) << run.err;
  v1::Job printed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(run.out, &printed).ok()) << run.out;
  ASSERT_EQ(printed.results_size(), static_cast<int>(streamed.size()));
  for (int i = 0; i < printed.results_size(); ++i) {
    EXPECT_EQ(printed.results(i).SerializeAsString(), streamed[i]) << "record " << i;
  }
}

// 3, 4, 9, 10. Client arguments that cannot be sent are usage errors (exit 2)
// naming the flag; no crash, no INTERNAL.
TEST_F(QaTest, ClientRejectsBadArgumentsAsUsageErrors) {
  const std::string d = dir_.path();
  const std::string server = "unix:" + d + "/nothing.sock";
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{"--server", server, "--user", "\xff", "models"}, "--user"},
      {{"--server", server, "--user", "a b", "models"}, "--user"},
      {{"--server", server, "--token", "tok\x01", "models"}, "--token"},
      {{"--server", server, "get", "j-\xff\xfe"}, "id: the value is not valid UTF-8"},
      {{"--server", server, "watch", "j-\xc3"}, "not valid UTF-8"},
      {{"--server", server, "cancel", "\xed\xa0\x80"}, "not valid UTF-8"},
      {{"--server", server, "scan", "--model", "m\xff", "--ids", "1,2"}, "--model"},
      {{"--server", server, "self-attention-profile", "--model", "m", "--ids", "1,2",
        "--delimiter", "\\xff"},
       "--delimiter"},
      {{"--server", server, "scan", "--model", "m", "--ids", "1,,2"}, "--ids"},
      {{"--server", server, "scan", "--model", "m", "--ids", "1,2,"}, "empty element"},
      {{"--server", server, "--tls-ca", "/nonexistent/ca.pem", "models"}, "--tls-ca"},
      {{"--server", "", "models"}, "--server is empty"},
      {{"--server", server, "--timeout", "-1", "models"}, "seconds"},
      {{"--server", server, "bogus"}, "unknown command 'bogus'"},
  };
  for (const Case& c : cases) {
    ClientRun run = RunClient(d, c.args, seconds(30));
    std::string joined;
    for (const auto& a : c.args) absl::StrAppend(&joined, a, " ");
    EXPECT_EQ(run.rc, 2) << joined << "\n" << run.err;
    EXPECT_NE(run.err.find(c.needle), std::string::npos) << joined << "\n" << run.err;
    EXPECT_LT(run.err.size(), 400u) << joined << "\n" << run.err;
    EXPECT_EQ(run.err.find("INTERNAL"), std::string::npos) << run.err;
  }
  ClientRun help = RunClient(d, {"--help"});
  EXPECT_EQ(help.out.find("until auth lands"), std::string::npos);
  // A file with bad UTF-8 is named.
  WriteFile(d + "/bad.txt", "abc\xff");
  ClientRun file = RunClient(d, {"--server", server, "scan", "--model", "m", "--file", d + "/bad.txt"});
  EXPECT_EQ(file.rc, 2);
  EXPECT_NE(file.err.find("--file"), std::string::npos) << file.err;
  // A directory is no text file (it used to read as empty text).
  ClientRun dir = RunClient(d, {"--server", server, "scan", "--model", "m", "--file", d});
  EXPECT_EQ(dir.rc, 2);
  EXPECT_NE(dir.err.find("--file: cannot read " + d + " (not a readable file)"), std::string::npos)
      << dir.err;
}

// 3, 10. Server side: odd metadata and oversized ids get clean statuses.
TEST_F(QaTest, ServerAnswersOddMetadataAndLongIdsCleanly) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog());
  auto stub = server_->NewStub();
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-sinkscope-user", "a b");
    v1::ListModelsResponse out;
    EXPECT_EQ(stub->ListModels(&ctx, v1::ListModelsRequest(), &out).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::GetJobRequest get;
    get.set_job_id(std::string(100000, 'x'));
    v1::Job job;
    grpc::Status s = stub->GetJob(&ctx, get, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_LT(s.error_message().size(), 200u);
  }
  // spike-similarity --step-up-block -1 reaches the server and is refused.
  ClientRun run = RunClient(dir_.path(), {"--server", server_->address(), "spike-similarity",
                                          "--model", "stories260K", "--ids", "1,5,9",
                                          "--step-up-block", "-1"});
  EXPECT_EQ(run.rc, 1) << run.err;
  EXPECT_NE(run.err.find("INVALID_ARGUMENT"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("step_up_block"), std::string::npos) << run.err;
  // perplexity of one token: the message says so.
  run = RunClient(dir_.path(), {"--server", server_->address(), "perplexity", "--model",
                                "stories260K", "--ids", "1"});
  EXPECT_EQ(run.rc, 1) << run.err;
  EXPECT_NE(run.err.find("the corpus has 1 token; at least 2 are needed"), std::string::npos)
      << run.err;
}

// 5. Watching a finished job after its last event ends at once with the
// job's final state; no reconnecting.
TEST_F(QaTest, WatchFinishedJobAfterItsLastEventEndsAtOnce) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog());
  auto stub = server_->NewStub();
  v1::Job job;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(6, 3)}), &job).ok());
  ASSERT_EQ(WaitTerminal(*stub, job.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
  ClientRun run = RunClient(dir_.path(), {"--server", server_->address(), "--user", "tester",
                                          "watch", job.id(), "--after-seq", "999999"},
                            seconds(60));
  EXPECT_EQ(run.rc, 0) << run.err;
  EXPECT_LT(run.seconds, 10.0);
  EXPECT_EQ(run.err.find("reconnecting"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("COMPLETED"), std::string::npos) << run.err;
  EXPECT_NE(run.out.find("block"), std::string::npos) << run.out;
}

// 5b. `sinkscope watch` rides out a server restart: the stream breaks when
// the server is killed, the client reconnects (resuming after the last seq)
// to the restarted server on the same socket and database, which re-queues
// the interrupted job, and the watch ends with the job's completion.
TEST_F(QaTest, WatchReconnectsAcrossAServerRestart) {
  SKIP_WITHOUT_SHARED();
  // 10 blocks x 300 ms: the job is still running when the server is killed.
  StartServer(1, TestCatalog(), R"("worker_args": ["--test-unit-delay-ms=300"])");
  auto stub = server_->NewStub();
  v1::Job job;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(8, 5)}), &job).ok());
  ClientRun run;
  std::thread watcher([&] {
    run = RunClient(dir_.path(), {"--server", server_->address(), "--user", "tester", "watch",
                                  job.id()},
                    seconds(150));
  });
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  v1::Job seen;
  while (std::chrono::steady_clock::now() < deadline) {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_job_id(job.id());
    if (stub->GetJob(&ctx, req, &seen).ok() && seen.state() == v1::JOB_STATE_RUNNING) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(seen.state(), v1::JOB_STATE_RUNNING);
  std::this_thread::sleep_for(std::chrono::milliseconds(900));  // a few progress events
  server_->Signal(SIGKILL);
  const int status = server_->WaitExit(seconds(10));
  EXPECT_TRUE(WIFSIGNALED(status)) << "wait status " << status;
  const bool restarted = server_->Start();
  watcher.join();
  ASSERT_TRUE(restarted) << ReadTail(server_->log_path());
  EXPECT_EQ(run.rc, 0) << run.err;
  EXPECT_NE(run.err.find("reconnecting"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("COMPLETED"), std::string::npos) << run.err;
  EXPECT_NE(run.out.find("block"), std::string::npos) << run.out;
  const v1::Job done = WaitTerminal(*server_->NewStub(), job.id(), seconds(60));
  EXPECT_EQ(done.state(), v1::JOB_STATE_COMPLETED);
  EXPECT_GE(done.attempts(), 2);  // the interrupted attempt and the one that completed
}

// 6. A worker that can never start backs off, is marked down, and SubmitJob,
// GetJob and ListModels say so; queued jobs stay queued.
TEST_F(QaTest, WorkerThatCannotStartIsReportedDown) {
  SKIP_WITHOUT_SHARED();
  StartServer(1, TestCatalog(), R"("worker_args": ["--bogus-flag"])");
  auto stub = server_->NewStub();
  v1::Job queued;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(6, 4)}), &queued).ok());
  const auto start = std::chrono::steady_clock::now();
  v1::ListModelsResponse models;
  while (std::chrono::steady_clock::now() < start + seconds(60)) {
    models = ListModels(*stub);
    if (!models.workers().problem().empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_FALSE(models.workers().problem().empty());
  EXPECT_EQ(models.workers().down(), 1);
  EXPECT_EQ(models.workers().up(), 0);
  EXPECT_NE(models.workers().problem().find("worker 0 failed to start"), std::string::npos)
      << models.workers().problem();
  EXPECT_NE(models.workers().problem().find("exit 109"), std::string::npos)
      << models.workers().problem();
  v1::Job refused;
  grpc::Status s = TrySubmit(*stub, ScanRequest({MakeIds(6, 5)}), &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(s.error_message().find("no worker is running"), std::string::npos) << s.error_message();
  {
    grpc::ClientContext ctx;
    v1::GetJobRequest get;
    get.set_job_id(queued.id());
    v1::Job job;
    ASSERT_TRUE(stub->GetJob(&ctx, get, &job).ok());
    EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
    EXPECT_NE(job.waiting_reason().find("no worker is running"), std::string::npos);
  }
  // Backoff: over 8 more seconds, at most a few more attempts (not ~8).
  auto count = [&] {
    const std::string log = ReadAll(server_->log_path());
    size_t n = 0;
    for (size_t pos = 0; (pos = log.find("failed to start:", pos)) != std::string::npos; ++pos) ++n;
    return n;
  };
  const size_t before = count();
  std::this_thread::sleep_for(seconds(8));
  EXPECT_LE(count() - before, 2u);
}

// 8. A checkpoint that cannot be loaded fails the job with
// FAILED_PRECONDITION (no server paths), marks the model unavailable until
// the file changes.
TEST_F(QaTest, BrokenCheckpointMarksTheModelUnavailable) {
  SKIP_WITHOUT_SHARED();
  // stories260K's header, then too few weights.
  const std::string broken = dir_.path() + "/broken.bin";
  {
    std::string head = ReadAll(Stories260KPath()).substr(0, 28 + 4096);
    WriteFile(broken, head);
  }
  const std::string catalog = absl::StrCat(
      R"({"models": [{"name": "stories260K", "format": "llama2c", "path": ")", Stories260KPath(),
      R"("}, {"name": "broken", "format": "llama2c", "path": ")", broken, R"("}]})");
  StartServer(1, catalog);
  auto stub = server_->NewStub();
  v1::Job job;
  ASSERT_TRUE(TrySubmit(*stub, ScanRequest({MakeIds(6, 6)}, "broken"), &job).ok());
  const v1::Job failed = WaitTerminal(*stub, job.id(), seconds(120));
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.error().code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION))
      << failed.error().message();
  EXPECT_NE(failed.error().message().find("broken"), std::string::npos);
  EXPECT_EQ(failed.error().message().find(dir_.path()), std::string::npos) << failed.error().message();

  // Now refused at submission, and listed as unavailable.
  v1::Job refused;
  grpc::Status s = TrySubmit(*stub, ScanRequest({MakeIds(6, 7)}, "broken"), &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_EQ(s.error_message().find(dir_.path()), std::string::npos) << s.error_message();
  bool listed = false;
  const v1::ListModelsResponse models = ListModels(*stub);
  for (const v1::ModelInfo& m : models.models()) {
    if (m.name() != "broken") continue;
    listed = true;
    EXPECT_FALSE(m.available());
    EXPECT_FALSE(m.unavailable_reason().empty());
    EXPECT_EQ(m.unavailable_reason().find(dir_.path()), std::string::npos);
  }
  EXPECT_TRUE(listed);
  // The file changes: accepted again.
  WriteFile(broken, ReadAll(Stories260KPath()));
  v1::Job retried;
  s = TrySubmit(*stub, ScanRequest({MakeIds(6, 8)}, "broken"), &retried);
  EXPECT_TRUE(s.ok()) << s.error_message();
  if (s.ok()) {
    EXPECT_EQ(WaitTerminal(*stub, retried.id(), seconds(120)).state(), v1::JOB_STATE_COMPLETED);
  }
}

// 8. Unavailable reasons of the catalog do not show server paths.
TEST_F(QaTest, CatalogReasonsHoldNoPaths) {
  SKIP_WITHOUT_SHARED();
  const std::string catalog = absl::StrCat(
      R"({"models": [{"name": "stories260K", "format": "llama2c", "path": ")", Stories260KPath(),
      R"("}, {"name": "nope", "format": "llama2c", "path": ")", dir_.path(), R"(/nope.bin"}]})");
  StartServer(1, catalog);
  auto stub = server_->NewStub();
  const v1::ListModelsResponse models = ListModels(*stub);
  for (const v1::ModelInfo& m : models.models()) {
    EXPECT_EQ(m.description().find(dir_.path()), std::string::npos) << m.description();
    EXPECT_EQ(m.unavailable_reason().find(dir_.path()), std::string::npos);
    if (m.name() == "nope") EXPECT_FALSE(m.available());
  }
  v1::Job job;
  grpc::Status s = TrySubmit(*stub, ScanRequest({MakeIds(6, 9)}, "nope"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(s.error_message().find(dir_.path()), std::string::npos) << s.error_message();
  // The server log names the path.
  EXPECT_NE(ReadAll(server_->log_path()).find(dir_.path() + "/nope.bin"), std::string::npos);
}

// 13. Text over the token cap is refused at submission (text counts its
// bytes + 2 tokens, an upper bound), with the code of every "too large".
TEST_F(QaTest, TextOverTheTokenCapIsRefusedAtSubmission) {
  SKIP_WITHOUT_SHARED();
  if (AiDreamsPath().empty() || AiDreamsTokenizerPath().empty()) {
    SINKSCOPE_SKIP_MISSING("aidreams260K (a model with a tokenizer) not found");
  }
  StartServer(1, TestCatalog(), R"("max_total_tokens": 200)");
  auto stub = server_->NewStub();
  // 700 bytes: up to 702 tokens > 200.
  std::string text;
  for (int i = 0; i < 350; ++i) absl::StrAppend(&text, std::string(1, static_cast<char>('a' + i % 26)), " ");
  v1::SubmitJobRequest req;
  req.mutable_request()->set_model("aidreams260K");
  req.mutable_request()->add_sequences()->set_text(text);
  req.mutable_request()->mutable_perplexity();
  v1::Job job;
  grpc::Status s = TrySubmit(*stub, req, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("max_total_tokens"), std::string::npos) << s.error_message();
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
