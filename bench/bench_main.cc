// sinkscope-bench: one command, one table of ratios measured side by side.
//
//   sinkscope-bench                 # everything: sections 1, 1b, 2, 3, 4
//   sinkscope-bench engine          # 1, 1b, 2, 4a (no server needed)
//   sinkscope-bench service         # 3 (+ its RSS)
//   common flags: --threads N (default 1) --iters N (5) --warmup N (1)
// Internal subcommands (fresh processes for per-variant peak RSS):
//   sinkscope-bench mem-child ..., sinkscope-bench direct-child ...
#include <unistd.h>

#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "bench/bench_util.h"
#include "bench/engine_bench.h"
#include "bench/service_bench.h"

#ifndef SINKSCOPE_BENCH_SOURCE_DIR
#define SINKSCOPE_BENCH_SOURCE_DIR "."
#endif
#ifndef SINKSCOPE_BENCH_BINARY_DIR
#define SINKSCOPE_BENCH_BINARY_DIR "."
#endif
#ifndef SINKSCOPE_BENCH_SHARED_DIR
#define SINKSCOPE_BENCH_SHARED_DIR "../shared"
#endif

namespace {

using namespace sinkscope::bench;

void PrintMachine(int threads) {
  const std::string cpu = Trim(Shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"));
  const std::string blas =
      Trim(Shell("update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | "
                 "sed -n 's/^Value: //p'"));
  const std::string load = Trim(Shell("cut -d' ' -f1-3 /proc/loadavg"));
  std::printf("machine: %s, %ld online cores, load average %s\n", cpu.c_str(),
              sysconf(_SC_NPROCESSORS_ONLN), load.c_str());
  std::printf("BLAS: libblas.so.3 -> %s\n", blas.empty() ? "(unknown)" : blas.c_str());
  std::printf("threads: %d intra-op thread(s) in every process measured\n", threads);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sinkscope-bench: overhead of sinkscope's instrumentation, engine vs eager "
               "PyTorch, service overhead, peak RSS"};
  app.require_subcommand(0, 1);
  EngineBenchOptions eo;
  ServiceBenchOptions so;
  eo.pytorch_script = std::string(SINKSCOPE_BENCH_SOURCE_DIR) + "/pytorch_scan.py";
  so.server_bin = std::string(SINKSCOPE_BENCH_BINARY_DIR) + "/../server/sinkscope-server";
  so.worker_bin = std::string(SINKSCOPE_BENCH_BINARY_DIR) + "/../worker/sinkscope-worker";
  so.model_path = std::string(SINKSCOPE_BENCH_SHARED_DIR) + "/models/stories260K/stories260K.bin";
  bool skip_service = false, skip_engine = false, no_pytorch = false, no_memory = false;
  auto add_engine = [&](CLI::App* a) {
    a->add_option("--threads", eo.threads, "Intra-op threads everywhere (default 1)");
    a->add_option("--iters", eo.iters, "Timed rounds (default 5)");
    a->add_option("--warmup", eo.warmup, "Warm-up rounds (default 1)");
    a->add_option("--seq-len", eo.seq_len, "Tokens of the input (default 512)");
    a->add_option("--layers", eo.n_layers, "Layers (default 12)");
    a->add_option("--d-model", eo.d_model, "Hidden size (default 768)");
    a->add_option("--heads", eo.n_heads, "Heads (default 12)");
    a->add_option("--d-ffn", eo.d_ffn, "FFN size (default 2048)");
    a->add_option("--vocab", eo.d_vocab, "Vocabulary (default 32000)");
    a->add_option("--python", eo.python, "Python with torch (default: the project venv)");
    a->add_option("--pytorch-script", eo.pytorch_script, "bench/pytorch_scan.py");
    a->add_flag("--no-pytorch", no_pytorch, "Skip the PyTorch comparison");
    a->add_flag("--no-memory", no_memory, "Skip the fresh-process RSS runs");
  };
  auto add_service = [&](CLI::App* a) {
    a->add_option("--server-bin", so.server_bin, "sinkscope-server binary");
    a->add_option("--worker-bin", so.worker_bin, "sinkscope-worker binary");
    a->add_option("--service-model", so.model_path, "stories260K.bin");
    a->add_option("--jobs-per-client", so.jobs_per_client, "Jobs per client (default 8)");
    a->add_option("--job-tokens", so.seq_len, "Tokens per job (default 256)");
  };
  add_engine(&app);
  add_service(&app);
  app.add_flag("--skip-service", skip_service, "Skip section 3");
  CLI::App* all = app.add_subcommand("all", "Everything (the default)");
  add_engine(all);
  add_service(all);
  all->add_flag("--skip-service", skip_service, "Skip section 3");
  CLI::App* engine = app.add_subcommand("engine", "Sections 1, 1b, 2, 4a");
  add_engine(engine);
  CLI::App* service = app.add_subcommand("service", "Section 3");
  add_service(service);
  service->add_option("--threads", eo.threads, "Intra-op threads per worker (default 1)");
  service->add_option("--clients", so.clients, "Client counts to run (default 1 8)");
  service->add_option("--workers", so.workers, "cpu workers (and direct-engine models), default 2");

  std::string mem_dir, mem_variant;
  CLI::App* mem = app.add_subcommand("mem-child", "internal: one variant, fresh process");
  mem->add_option("--model-dir", mem_dir)->required();
  mem->add_option("--variant", mem_variant)->required();
  mem->add_option("--seq-len", eo.seq_len);
  mem->add_option("--seed", eo.seed);
  mem->add_option("--threads", eo.threads);
  int direct_clients = 1;
  CLI::App* direct = app.add_subcommand("direct-child", "internal: direct-engine jobs");
  add_service(direct);
  direct->add_option("--clients", direct_clients);
  direct->add_option("--workers", so.workers);
  direct->add_option("--threads", eo.threads);
  CLI11_PARSE(app, argc, argv);

  eo.self_exe = so.self_exe = SelfDir() + "/sinkscope-bench";
  eo.pytorch = !no_pytorch;
  eo.memory = !no_memory;
  so.threads = eo.threads;
  if (*mem) return RunMemChild(mem_dir, mem_variant, eo.seq_len, eo.seed, eo.threads);
  if (*direct) return RunDirectChild(so, direct_clients);
  if (*engine) skip_service = true;
  if (*service) skip_engine = true;

  std::printf("sinkscope-bench (sinkscope %s)\n", SINKSCOPE_CODE_VERSION);
  PrintMachine(eo.threads);
  std::fflush(stdout);
  int rc = 0;
  if (!skip_engine) rc |= RunEngineBench(eo);
  if (!skip_service) rc |= RunServiceBench(so);
  return rc;
}
