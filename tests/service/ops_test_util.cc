#include "ops_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "service_test_util.h"

namespace sinkscope {
namespace testing {

OpsServer::OpsServer(std::string dir, int n_workers, std::string extra_members)
    : dir_(std::move(dir)), n_workers_(n_workers) {
  config_path_ = dir_ + "/server.json";
  log_path_ = dir_ + "/server.log";
  WriteFile(dir_ + "/catalog.json", TestCatalog());
  WriteFile(config_path_,
            ServerConfigJson(dir_, "127.0.0.1:0", n_workers,
                             absl::StrCat(R"("metrics_listen": "127.0.0.1:0")",
                                          extra_members.empty() ? "" : ", ", extra_members)));
}

OpsServer::~OpsServer() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string OpsServer::log() const { return ReadTail(log_path_, 1 << 20); }

bool OpsServer::Start() {
  pid_ = SpawnServer(config_path_, log_path_);
  const std::regex listen_re(R"(listening on \S+ \(port (\d+)\))");
  const std::regex metrics_re(R"(metrics on http://[^:]+:(\d+)/metrics)");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    const std::string text = log();
    std::smatch m;
    if (port_ == 0 && std::regex_search(text, m, listen_re)) port_ = std::stoi(m[1]);
    if (metrics_port_ == 0 && std::regex_search(text, m, metrics_re)) metrics_port_ = std::stoi(m[1]);
    size_t ready = 0;
    for (size_t pos = 0; (pos = text.find(") ready on", pos)) != std::string::npos; ++pos) ++ready;
    if (port_ > 0 && ready >= static_cast<size_t>(n_workers_)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

int OpsServer::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

std::string OpsServer::TokenCommand(const std::string& args) const {
  return RunCommand(absl::StrCat(SINKSCOPE_SERVER_BIN, " --config ", config_path_, " token ", args,
                                 " 2>/dev/null"));
}

std::string OpsServer::CreateToken(const std::string& user, bool admin) const {
  std::string out = TokenCommand(absl::StrCat("create --user ", user, admin ? " --admin" : ""));
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::unique_ptr<v1::AnalysisService::Stub> OpsServer::Stub(const std::string& ca_pem) const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  std::string target = this->target();
  if (!ca_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_pem;
    creds = grpc::SslCredentials(ssl);
    target = "localhost:" + std::to_string(port_);
  }
  return v1::AnalysisService::NewStub(grpc::CreateCustomChannel(target, creds, args));
}

std::unique_ptr<v1::WorkerService::Stub> OpsServer::WorkerStub(int i) const {
  return v1::WorkerService::NewStub(grpc::CreateChannel(
      absl::StrCat("unix:", dir_, "/run/w", i, ".sock"), grpc::InsecureChannelCredentials()));
}

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token, std::chrono::seconds deadline) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() + deadline);
  return ctx;
}

std::string RunCommand(const std::string& command, int* status) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  if (status) *status = rc;
  return out;
}

std::string HttpGet(int port, const std::string& path, int* http_status) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t sp = resp.find(' ');
  if (http_status) *http_status = sp == std::string::npos ? 0 : std::atoi(resp.c_str() + sp + 1);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof(buf), "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

v1::Job SubmitAs(v1::AnalysisService::Stub& stub, const std::string& token,
                 const v1::SubmitJobRequest& request, grpc::Status* status) {
  auto ctx = Ctx(token);
  v1::Job job;
  grpc::Status s = stub.SubmitJob(ctx.get(), request, &job);
  if (status) *status = s;
  return job;
}

v1::Job WaitDone(v1::AnalysisService::Stub& stub, const std::string& token, const std::string& id,
                 std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  v1::Job job;
  while (std::chrono::steady_clock::now() < deadline) {
    auto ctx = Ctx(token);
    v1::GetJobRequest req;
    req.set_job_id(id);
    if (stub.GetJob(ctx.get(), req, &job).ok() &&
        (job.state() == v1::JOB_STATE_COMPLETED || job.state() == v1::JOB_STATE_FAILED ||
         job.state() == v1::JOB_STATE_CANCELLED)) {
      return job;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return job;
}

}  // namespace testing
}  // namespace sinkscope
