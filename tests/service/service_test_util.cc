#include "service_test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <ftw.h>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"

namespace sinkscope {
namespace testing {

namespace fs = std::filesystem;

std::string SharedDir() {
  // The environment at test time wins over the build's default (CMake cache).
  const char* env = std::getenv("SINKSCOPE_SHARED_DIR");
  const char* fallback = std::getenv("SINKSCOPE_DEFAULT_SHARED_DIR");
  std::string dir = env && *env ? env : fallback && *fallback ? fallback : "../shared";
  return fs::is_directory(dir) ? fs::absolute(dir).string() : "";
}

std::string Stories260KPath() {
  std::string dir = SharedDir();
  std::string path = dir + "/models/stories260K/stories260K.bin";
  return !dir.empty() && fs::exists(path) ? path : "";
}

std::string AiDreamsPath() {
  std::string dir = SharedDir();
  std::string path = dir + "/models/aidreams260K/aidreams260K.bin";
  return !dir.empty() && fs::exists(path) ? path : "";
}

std::string ByteLmDemoPath() {
  std::string dir = SharedDir();
  std::string path = dir + "/models/bytelm-demo/bytelm-demo.bin";
  return !dir.empty() && fs::exists(path) ? path : "";
}

std::string AiDreamsTokenizerPath() {
  std::string dir = SharedDir();
  std::string path = dir + "/models/aidreams260K/tok512.bin";
  return !dir.empty() && fs::exists(path) ? path : "";
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/sst-XXXXXX";  // short: Unix socket paths are limited
  path_ = mkdtemp(tmpl) ? tmpl : "/tmp";
}

TempDir::~TempDir() {
  if (path_ != "/tmp" && !std::getenv("SINKSCOPE_KEEP_TEST_DIRS")) {
    // nftw, not std::filesystem::remove_all: libtorch.so of the torch wheel
    // exports its own std::filesystem, whose remove_all crashes (null call)
    // in test binaries that link it.
    nftw(
        path_.c_str(),
        [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p) == 0 ? 0 : 0; },
        16, FTW_DEPTH | FTW_PHYS);
  }
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::string ReadTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  return text.size() > max_bytes ? text.substr(text.size() - max_bytes) : text;
}

pid_t SpawnServer(const std::string& config_path, const std::string& log_path) {
  const std::string bin = SINKSCOPE_SERVER_BIN;
  const std::string config_flag = "--config=" + config_path;
  const pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    execl(bin.c_str(), bin.c_str(), config_flag.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

ServerProcess::ServerProcess(std::string dir, std::string config_json)
    : dir_(std::move(dir)), config_json_(std::move(config_json)) {}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

bool ServerProcess::Start() {
  const std::string config_path = dir_ + "/server.json";
  WriteFile(config_path, config_json_);
  log_path_ = absl::StrCat(dir_, "/server-", starts_++, ".log");
  pid_ = SpawnServer(config_path, log_path_);
  auto stub = NewStub();
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(90);
  while (std::chrono::system_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    ctx.set_wait_for_ready(true);
    v1::ListModelsRequest req;
    v1::ListModelsResponse resp;
    if (stub->ListModels(&ctx, req, &resp).ok()) return true;
  }
  return false;
}

void ServerProcess::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int ServerProcess::WaitExit(std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (pid_ <= 0) return -1;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::vector<pid_t> ServerProcess::WorkerPids() const {
  std::vector<pid_t> out;
  if (pid_ <= 0) return out;
  DIR* proc = opendir("/proc");
  if (!proc) return out;
  while (dirent* e = readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...
    const size_t close = line.rfind(')');
    const size_t open = line.find('(');
    if (close == std::string::npos || open == std::string::npos) continue;
    const std::string comm = line.substr(open + 1, close - open - 1);
    std::istringstream rest(line.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == pid_ && comm.rfind("sinkscope-work", 0) == 0 && state != 'Z') out.push_back(pid);
  }
  closedir(proc);
  return out;
}

bool ServerProcess::WaitForWorkers(size_t n, std::chrono::seconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (WorkerPids().size() == n) {
      // Ready means its socket answers; the server logs "ready" per worker.
      std::string log = ReadTail(log_path_, 1 << 20);
      size_t ready = 0;
      for (size_t pos = 0; (pos = log.find(") ready on", pos)) != std::string::npos; ++pos) ++ready;
      if (ready >= n) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::unique_ptr<v1::AnalysisService::Stub> ServerProcess::NewStub() const {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 300);
  return v1::AnalysisService::NewStub(
      grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), args));
}

std::string TestCatalog() {
  std::string models = absl::StrCat(R"({"name": "stories260K", "format": "llama2c", "path": ")",
                                    Stories260KPath(), R"(", "default_dtype": "float32"})");
  if (!AiDreamsPath().empty() && !AiDreamsTokenizerPath().empty()) {
    absl::StrAppend(&models, R"(, {"name": "aidreams260K", "format": "llama2c", "path": ")",
                    AiDreamsPath(), R"(", "tokenizer": ")", AiDreamsTokenizerPath(), R"("})");
  }
  return absl::StrCat(R"({"models": [)", models, "]}");
}

std::string ServerConfigJson(const std::string& dir, const std::string& listen, int n_workers,
                             const std::string& extra_members) {
  std::string workers;
  for (int i = 0; i < n_workers; ++i) absl::StrAppend(&workers, i ? "," : "", "cpu");
  return absl::StrCat(R"({"listen": ")", listen, R"(", "database": ")", dir,
                      R"(/jobs.db", "workers": ")", workers, R"(", "catalog": ")", dir,
                      R"(/catalog.json", "worker_binary": ")", SINKSCOPE_WORKER_BIN,
                      R"(", "runtime_dir": ")", dir, R"(/run", "worker_threads": 1, "sync_full": false)",
                      // Servers of tests run side by side: none takes the
                      // default metrics port (a busy one stops a server).
                      extra_members.find("\"metrics_listen\"") == std::string::npos
                          ? R"(, "metrics_listen": "")"
                          : "",
                      extra_members.empty() ? "" : ", ", extra_members, "}");
}

std::string TestServerConfig(const std::string& dir, int n_workers, const std::string& catalog,
                             const std::string& extra_members) {
  WriteFile(dir + "/catalog.json", catalog);
  return ServerConfigJson(dir, "unix:" + dir + "/api.sock", n_workers, extra_members);
}

std::vector<int32_t> MakeIds(int length, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(3, 511);
  std::vector<int32_t> ids = {1};
  while (static_cast<int>(ids.size()) < length) ids.push_back(dist(rng));
  return ids;
}

v1::SubmitJobRequest ScanRequest(const std::vector<std::vector<int32_t>>& sequences,
                                 const std::string& model) {
  v1::SubmitJobRequest req;
  v1::JobRequest* r = req.mutable_request();
  r->set_model(model);
  for (const auto& seq : sequences) {
    auto* ids = r->add_sequences()->mutable_ids();
    for (int32_t id : seq) ids->add_ids(id);
  }
  r->mutable_scan();  // defaults
  return req;
}

std::vector<v1::JobEvent> WatchAll(v1::AnalysisService::Stub& stub, const std::string& job_id,
                                   int64_t after_seq, std::chrono::seconds timeout,
                                   grpc::Status* status) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::WatchJobRequest req;
  req.set_job_id(job_id);
  req.set_after_seq(after_seq);
  auto reader = stub.WatchJob(&ctx, req);
  std::vector<v1::JobEvent> out;
  v1::JobEvent e;
  while (reader->Read(&e)) out.push_back(e);
  grpc::Status s = reader->Finish();
  if (status) *status = s;
  return out;
}

v1::Job WaitTerminal(v1::AnalysisService::Stub& stub, const std::string& job_id,
                     std::chrono::seconds timeout, bool include_results) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  v1::Job job;
  while (std::chrono::steady_clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ctx.set_wait_for_ready(true);
    v1::GetJobRequest req;
    req.set_job_id(job_id);
    req.set_include_results(include_results);
    if (stub.GetJob(&ctx, req, &job).ok()) {
      const auto s = job.state();
      if (s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED) {
        return job;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return job;
}

bool EngineScan(const std::vector<std::vector<int32_t>>& sequences,
                std::vector<BlockRecord>* blocks, ScanSummary* summary, std::string* error,
                const std::string& model_path, const ScanParams& params) {
  at::set_num_threads(1);  // as the test workers (worker_threads 1)
  auto ckpt = LoadCheckpoint(model_path);
  if (!ckpt.ok()) {
    *error = ckpt.status().ToString();
    return false;
  }
  auto model = Model::Create(*ckpt, c10::Device(c10::kCPU), c10::kFloat);
  if (!model.ok()) {
    *error = model.status().ToString();
    return false;
  }
  std::vector<std::vector<int64_t>> ids;
  for (const auto& s : sequences) ids.emplace_back(s.begin(), s.end());
  blocks->clear();
  auto result = RunActivationScan(
      **model, ids, params, [&](const BlockRecord& r) { blocks->push_back(r); },
      [](int64_t, int64_t) {});
  if (!result.ok()) {
    *error = result.status().ToString();
    return false;
  }
  *summary = *result;
  return true;
}

namespace {

bool Near(double a, double b) { return std::fabs(a - b) <= 1e-4 * std::max(1.0, std::fabs(b)); }

std::string CompareEntries(const std::string& what,
                           const google::protobuf::RepeatedPtrField<v1::ActivationEntry>& got,
                           const std::vector<ActivationEntry>& want) {
  if (got.size() != static_cast<int>(want.size())) {
    return absl::StrCat(what, ": ", got.size(), " entries, engine ", want.size());
  }
  for (size_t i = 0; i < want.size(); ++i) {
    const auto& g = got[static_cast<int>(i)];
    const auto& w = want[i];
    if (g.sequence() != w.sequence || g.position() != w.position || g.channel() != w.channel ||
        !Near(g.value(), w.value)) {
      return absl::StrCat(what, "[", i, "]: got (", g.value(), " @ ", g.sequence(), ",",
                          g.position(), ",", g.channel(), ") engine (", w.value, " @ ", w.sequence,
                          ",", w.position, ",", w.channel, ")");
    }
  }
  return "";
}

/// "" when the job's block references list exactly the blocks `want`.
std::string CompareBlockRefs(const std::string& what,
                             const google::protobuf::RepeatedPtrField<v1::BlockRef>& got,
                             const std::vector<int64_t>& want) {
  std::vector<int64_t> g;
  for (const v1::BlockRef& b : got) g.push_back(b.block());
  if (g != want) {
    return absl::StrCat(what, ": blocks [", absl::StrJoin(g, ","), "], engine [",
                        absl::StrJoin(want, ","), "]");
  }
  return "";
}

}  // namespace

std::string CompareResults(const v1::Job& job, const std::vector<BlockRecord>& blocks,
                           const ScanSummary& summary, const std::string& model,
                           const ScanParams& params) {
  if (job.state() != v1::JOB_STATE_COMPLETED) {
    return absl::StrCat("job ", job.id(), " is ", v1::JobState_Name(job.state()), ": ",
                        job.error().message());
  }
  if (job.results_size() != static_cast<int>(blocks.size()) + 1) {
    return absl::StrCat(job.results_size(), " result records, expected ", blocks.size() + 1);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const v1::ResultRecord& r = job.results(static_cast<int>(i));
    if (!r.has_scan_block()) return absl::StrCat("record ", i, " is not a ScanBlock");
    const v1::ScanBlock& g = r.scan_block();
    const BlockRecord& w = blocks[i];
    const std::string where = absl::StrCat("block ", w.id.block);
    if (g.block() != w.id.block || g.layer() != w.id.layer || g.sublayer() != w.id.sublayer() ||
        g.resid_hook() != w.id.resid_hook() || g.output_hook() != w.id.output_hook()) {
      return absl::StrCat(where, ": got block ", g.block(), " layer ", g.layer(), " ",
                          g.sublayer(), " ", g.resid_hook(), " ", g.output_hook());
    }
    if (std::string d = CompareEntries(where + " resid_top", g.resid_top(), w.resid_top); !d.empty()) return d;
    if (std::string d = CompareEntries(where + " output_top", g.output_top(), w.output_top); !d.empty()) return d;
    if (g.median_abs_size() != static_cast<int>(w.resid_median_abs.size())) return where + ": median count";
    for (size_t k = 0; k < w.resid_median_abs.size(); ++k) {
      if (!Near(g.median_abs(static_cast<int>(k)), w.resid_median_abs[k])) return where + ": median_abs";
    }
    if (!Near(g.max_abs(), w.resid_max_abs)) return where + ": max_abs";
    if (g.n_massive() != w.n_massive) return where + ": n_massive";
  }
  const v1::ResultRecord& last = job.results(job.results_size() - 1);
  if (!last.has_scan_summary()) return "last record is not a ScanSummary";
  const v1::ScanSummary& s = last.scan_summary();
  if (!Near(s.peak_abs(), summary.peak_abs)) return "summary peak_abs";
  if (s.peak_block().block() != summary.peak_block) return "summary peak_block";
  if (!Near(s.spike_mean_over_sequences(), summary.spike_mean_over_sequences)) return "summary spike mean";
  std::vector<std::pair<int64_t, int64_t>> tokens;
  for (const v1::SpikeToken& t : s.spike_tokens()) tokens.emplace_back(t.sequence(), t.position());
  if (tokens != summary.spike_tokens) {
    std::string g, w;
    for (const auto& [q, p] : tokens) absl::StrAppend(&g, " (", q, ",", p, ")");
    for (const auto& [q, p] : summary.spike_tokens) absl::StrAppend(&w, " (", q, ",", p, ")");
    return absl::StrCat("summary spike tokens:", g, "; engine:", w);
  }
  const std::vector<int64_t> channels(s.spike_channels().begin(), s.spike_channels().end());
  if (channels != summary.spike_channels) {
    return absl::StrCat("summary spike channels: [", absl::StrJoin(channels, ","), "], engine [",
                        absl::StrJoin(summary.spike_channels, ","), "]");
  }
  if (std::string d = CompareEntries("summary spike_entries", s.spike_entries(), summary.spike_entries); !d.empty()) return d;
  if (std::string d = CompareBlockRefs("summary step-up", s.step_up_blocks(), summary.step_up_blocks); !d.empty()) return d;
  if (std::string d = CompareBlockRefs("summary step-down", s.step_down_blocks(), summary.step_down_blocks); !d.empty()) return d;
  if (s.provenance().n_tokens() != summary.n_tokens) return "summary n_tokens";
  if (s.provenance().model() != model || s.provenance().dtype() != "float32" ||
      s.provenance().device() != "cpu" || s.provenance().code_version().empty()) {
    return absl::StrCat("provenance: ", s.provenance().ShortDebugString());
  }
  if (s.thresholds().top_k() != params.top_k || s.thresholds().abs_threshold() != params.abs_threshold ||
      s.thresholds().rel_threshold() != params.rel_threshold ||
      s.thresholds().step_fraction() != params.step_fraction) {
    return absl::StrCat("thresholds: ", s.thresholds().ShortDebugString());
  }
  return "";
}

}  // namespace testing
}  // namespace sinkscope
