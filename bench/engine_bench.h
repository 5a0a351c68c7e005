// Engine-side benchmarks of sinkscope-bench: instrumentation overhead, the
// eager-PyTorch comparison and per-variant peak RSS.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#ifndef SINKSCOPE_BENCH_PYTHON
#define SINKSCOPE_BENCH_PYTHON "build/venv/bin/python"
#endif

namespace sinkscope::bench {

/// The benchmark model and input (Llama-2 shapes scaled down) and how to run.
struct EngineBenchOptions {
  int64_t d_model = 768;
  int64_t n_layers = 12;
  int64_t n_heads = 12;
  int64_t d_ffn = 2048;
  int64_t d_vocab = 32000;
  int64_t seq_len = 512;
  uint64_t seed = 20260305;
  /// Value planted on one channel of the BOS embedding (a "massive activation").
  double spike_value = 5000.0;
  int64_t spike_channel = 123;
  int threads = 1;
  int warmup = 1;
  int iters = 5;
  std::string python = SINKSCOPE_BENCH_PYTHON;  // the project venv (torch 2.11, as the engine)
  std::string pytorch_script;  // bench/pytorch_scan.py
  bool pytorch = true;
  bool memory = true;
  bool breakdown = true;
  std::string self_exe;  // for the fresh-process memory children
};

/// Runs sections 1 (overhead), 1b (breakdown), 2 (PyTorch) and 4a (memory);
/// prints the tables to stdout. Returns a process exit code.
int RunEngineBench(const EngineBenchOptions& opt);

/// `sinkscope-bench mem-child`: loads `model_dir`, resets VmHWM, runs one
/// variant once and prints "RESULT {json}" with the RSS numbers.
/// Variants: load, plain, plain+logits, scan, scan-spike, sinks, probe:N, cache:N.
int RunMemChild(const std::string& model_dir, const std::string& variant, int64_t seq_len,
                uint64_t seed, int threads);

}  // namespace sinkscope::bench
