// sinkscope-worker: serves WorkerService on a Unix-domain socket for
// sinkscope-server, computing on one device.
//
//   sinkscope-worker --socket /run/sinkscope/w0.sock --device cpu
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include "absl/synchronization/mutex.h"
#include <grpcpp/grpcpp.h>

#include "worker/engine/model.h"
#include "worker/worker_service.h"

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

}  // namespace

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG: every absl::Mutex lock inside
  // gRPC would update a global lock graph, and a reported cycle aborts the
  // process. Release behaviour (bench/RESULTS.md, 2026-12-03).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"sinkscope-worker: runs sinkscope analyses for sinkscope-server"};
  std::string socket_path;
  sinkscope::worker::WorkerOptions options;
  int threads = 0;
  bool exit_with_parent = true;
  app.add_option("--socket", socket_path, "Unix-domain socket to listen on")->required();
  app.add_option("--device", options.device, "Device: cpu, cuda, cuda:N")->capture_default_str();
  app.add_option("--cache-capacity", options.cache_capacity, "Models kept loaded")
      ->capture_default_str();
  app.add_option("--memory-budget-bytes", options.memory_budget_bytes,
                 "Memory budget for cached models + a job's activations (0 = unlimited)");
  app.add_option("--threads", threads, "Intra-op threads (0 = libtorch default)")
      ->capture_default_str();
  app.add_option("--test-unit-delay-ms", options.test_unit_delay_ms,
                 "Test only: sleep after each unit of progress");
  app.add_flag("!--no-exit-with-parent", exit_with_parent,
               "Keep running when the parent process exits");
  CLI11_PARSE(app, argc, argv);

  if (auto device = sinkscope::ParseDevice(options.device); !device.ok()) {
    std::fprintf(stderr, "sinkscope-worker: --device %s: %s\n", options.device.c_str(),
                 std::string(device.status().message()).c_str());
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);

  unlink(socket_path.c_str());
  sinkscope::worker::WorkerServiceImpl service(options);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "sinkscope-worker: cannot listen on unix:%s\n", socket_path.c_str());
    return 1;
  }
  chmod(socket_path.c_str(), 0600);
  std::fprintf(stderr, "sinkscope-worker: pid %d serving on unix:%s (device %s)\n", getpid(),
               socket_path.c_str(), options.device.c_str());

  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  const pid_t parent = getppid();
  while (!g_stop.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (exit_with_parent && getppid() != parent) {
      std::fprintf(stderr, "sinkscope-worker: parent %d exited; stopping\n", parent);
      break;
    }
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  unlink(socket_path.c_str());
  return 0;
}
