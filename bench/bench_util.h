// Small helpers of sinkscope-bench: clocks, medians, resident-set sizes,
// child processes and thread pinning. No libtorch, no gRPC.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace sinkscope::bench {

/// Seconds on a monotonic clock.
inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Median of `v` (mean of the two middle values for an even count; 0 when empty).
double Median(std::vector<double> v);
/// Smallest / largest value (0 when empty).
double Min(const std::vector<double>& v);
double Max(const std::vector<double>& v);

/// VmRSS / VmHWM of a process from /proc/<pid>/status, in KiB (-1 when unreadable).
/// pid 0 = this process.
int64_t RssKib(pid_t pid = 0);
int64_t PeakRssKib(pid_t pid = 0);
/// Resets this process's VmHWM to its current RSS (writes 5 to
/// /proc/self/clear_refs, Linux >= 4.0). False when the kernel refuses.
bool ResetPeakRss();
/// Direct children of `pid` (from /proc/<pid>/task/*/children).
std::vector<pid_t> ChildPids(pid_t pid);

/// CPU time (user + system, seconds) that process `pid` has used so far,
/// from /proc/PID/stat; -1 if it cannot be read.
double ProcessCpuSeconds(pid_t pid);

/// Pins intra-op threads: OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
/// MKL_NUM_THREADS for children, at::set_num_threads is the caller's job;
/// this also calls openblas_set_num_threads when the BLAS in the process
/// exports it (OpenBLAS reads its variable before main runs). Returns a
/// description of what was pinned.
std::string PinBlasThreads(int threads);

/// Runs `argv` to completion, capturing stdout (stderr is inherited).
/// Returns the exit status (128 + signal when killed, -1 when it could not start).
int RunCapture(const std::vector<std::string>& argv, std::string* out);

/// A child process spoken to line by line over pipes (stdin / stdout).
class CoProcess {
 public:
  CoProcess() = default;
  ~CoProcess();
  CoProcess(const CoProcess&) = delete;
  CoProcess& operator=(const CoProcess&) = delete;
  bool Start(const std::vector<std::string>& argv);
  /// Sends `line` (newline added) and returns the next stdout line that starts
  /// with `prefix` (other lines are echoed to stderr). Empty on EOF.
  std::string Request(const std::string& line, const std::string& prefix);
  /// Reads lines until one starts with `prefix` (see Request).
  std::string ReadUntil(const std::string& prefix);
  /// Closes stdin and waits; returns the exit status.
  int Finish();
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

/// Runs a shell command and returns its stdout (for machine facts).
std::string Shell(const std::string& command);
/// Trims spaces and newlines at both ends.
std::string Trim(const std::string& s);

/// Directory of the running executable.
std::string SelfDir();
/// Creates a fresh directory /tmp/<prefix>XXXXXX; empty on failure.
std::string MakeTempDir(const std::string& prefix);
/// rm -rf `dir` (only paths under /tmp are accepted).
void RemoveTree(const std::string& dir);

}  // namespace sinkscope::bench
