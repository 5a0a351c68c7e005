// sinkscope-bench, service part: jobs/s and submit-to-done latency through a
// real sinkscope-server (unix socket, 2 cpu workers, temp SQLite database)
// against calling the engine directly, with 1 and 8 concurrent clients.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sinkscope::bench {

struct ServiceBenchOptions {
  std::string server_bin;   // sinkscope-server
  std::string worker_bin;   // sinkscope-worker
  std::string model_path;   // stories260K.bin
  std::vector<int> clients = {1, 8};
  int jobs_per_client = 8;  // jobs each client runs back to back (per client count)
  int seq_len = 256;        // tokens per job (1 sequence)
  int workers = 2;          // server workers and direct-engine "workers"
  int threads = 1;          // intra-op threads per worker
  std::string self_exe;
};

/// Prints section 3 (+ its RSS) to stdout; returns a process exit code.
int RunServiceBench(const ServiceBenchOptions& opt);

/// `sinkscope-bench direct-child`: the direct-engine side in a fresh process
/// (prints "RESULT {json}").
int RunDirectChild(const ServiceBenchOptions& opt, int clients);

}  // namespace sinkscope::bench
