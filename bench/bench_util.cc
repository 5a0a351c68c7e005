#include "bench/bench_util.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

extern char** environ;

namespace sinkscope::bench {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
double Min(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}
double Max(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}

namespace {
int64_t StatusField(pid_t pid, const char* key) {
  const std::string path = pid == 0 ? "/proc/self/status" : "/proc/" + std::to_string(pid) + "/status";
  std::ifstream in(path);
  std::string line;
  const size_t klen = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, klen, key) == 0 && line.size() > klen && line[klen] == ':') {
      return std::strtoll(line.c_str() + klen + 1, nullptr, 10);
    }
  }
  return -1;
}
}  // namespace

int64_t RssKib(pid_t pid) { return StatusField(pid, "VmRSS"); }
int64_t PeakRssKib(pid_t pid) { return StatusField(pid, "VmHWM"); }

bool ResetPeakRss() {
  int fd = open("/proc/self/clear_refs", O_WRONLY);
  if (fd < 0) return false;
  const bool ok = write(fd, "5", 1) == 1;
  close(fd);
  return ok;
}

double ProcessCpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return -1;
  // Fields after the command name (which may hold spaces) in parentheses.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::vector<pid_t> ChildPids(pid_t pid) {
  std::vector<pid_t> out;
  std::error_code ec;
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& task : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream in(task.path() / "children");
    pid_t child;
    while (in >> child) out.push_back(child);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string PinBlasThreads(int threads) {
  const std::string n = std::to_string(threads);
  setenv("OMP_NUM_THREADS", n.c_str(), 1);
  setenv("OPENBLAS_NUM_THREADS", n.c_str(), 1);
  setenv("MKL_NUM_THREADS", n.c_str(), 1);
  std::string what = "OMP/OPENBLAS/MKL_NUM_THREADS=" + n;
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    fn(threads);
    what += ", openblas_set_num_threads(" + n + ")";
  }
  return what;
}

namespace {
std::vector<char*> CArgs(const std::vector<std::string>& argv) {
  std::vector<char*> a;
  for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  return a;
}
int WaitStatus(pid_t pid) {
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}
}  // namespace

int RunCapture(const std::vector<std::string>& argv, std::string* out) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  pid_t pid = -1;
  std::vector<char*> args = CArgs(argv);
  const int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return -1;
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0 && out) out->append(buf, n);
  }
  close(fds[0]);
  return WaitStatus(pid);
}

CoProcess::~CoProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    Finish();
  }
}

bool CoProcess::Start(const std::vector<std::string>& argv) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) return false;
  if (pipe2(out, O_CLOEXEC) != 0) return false;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::vector<char*> args = CArgs(argv);
  const int rc = posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  if (rc != 0) {
    close(in[1]);
    close(out[0]);
    pid_ = -1;
    return false;
  }
  to_ = fdopen(in[1], "w");
  from_ = fdopen(out[0], "r");
  return true;
}

std::string CoProcess::ReadUntil(const std::string& prefix) {
  if (!from_) return "";
  std::string line;
  char buf[1 << 16];
  while (true) {
    line.clear();
    while (true) {
      if (!fgets(buf, sizeof buf, from_)) return "";
      line += buf;
      if (!line.empty() && line.back() == '\n') break;
    }
    line.pop_back();
    if (line.compare(0, prefix.size(), prefix) == 0) return line.substr(prefix.size());
    std::fprintf(stderr, "  [child] %s\n", line.c_str());
  }
}

std::string CoProcess::Request(const std::string& line, const std::string& prefix) {
  if (!to_) return "";
  std::fprintf(to_, "%s\n", line.c_str());
  std::fflush(to_);
  return ReadUntil(prefix);
}

int CoProcess::Finish() {
  if (pid_ <= 0) return -1;
  if (to_) fclose(to_);
  to_ = nullptr;
  const int st = WaitStatus(pid_);
  if (from_) fclose(from_);
  from_ = nullptr;
  pid_ = -1;
  return st;
}

std::string Shell(const std::string& command) {
  std::string out;
  RunCapture({"/bin/sh", "-c", command}, &out);
  return out;
}

std::string Trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  const size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

std::string SelfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : p.parent_path().string();
}

std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl;
}

void RemoveTree(const std::string& dir) {
  if (dir.rfind("/tmp/", 0) != 0 || dir.size() < 8) return;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace sinkscope::bench
