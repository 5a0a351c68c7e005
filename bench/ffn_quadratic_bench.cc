// ffn-quadratic at Llama-2-7B layer sizes on random weights (not a test):
// time per layer of ||U_k||_F for every k (worker/engine/mechanism.h, row
// chunks), of the Lanczos spectrum of a few S_k, peak memory, and the
// projection for 32 layers.
//   build/bench/sinkscope-ffn-bench --layers 1 --d-model 4096 --d-ffn 11008 [--device cuda] [--float32]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>

#include "CLI/CLI.hpp"
#include "worker/engine/mechanism.h"

using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  CLI::App app{"ffn-quadratic benchmark on random weights"};
  int64_t layers = 1, d_model = 4096, d_ffn = 11008, chunk = 1024, channels = 2, threads = 0;
  std::string device = "cpu";
  bool f32 = false;
  app.add_option("--layers", layers);
  app.add_option("--d-model", d_model);
  app.add_option("--d-ffn", d_ffn);
  app.add_option("--row-chunk", chunk);
  app.add_option("--channels", channels, "S_k spectra per layer (Lanczos, 10 eigenvalues)");
  app.add_option("--device", device);
  app.add_option("--threads", threads, "intra-op threads (0 = libtorch default)");
  app.add_flag("--float32", f32, "float32 arithmetic (the job uses float64)");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  const c10::Device dev(device);
  const auto opts = at::TensorOptions().dtype(f32 ? at::kFloat : at::kDouble).device(dev);
  auto sync = [&] {
    if (dev.is_cuda()) at::zeros({1}, opts).cpu();
  };
  std::printf("d_model %ld, d_ffn %ld, %s on %s, row chunk %ld, %d threads\n", d_model, d_ffn,
              f32 ? "float32" : "float64", device.c_str(), chunk, at::get_num_threads());
  double frob_total = 0, eig_total = 0;
  for (int64_t l = 0; l < layers; ++l) {
    sinkscope::FfnWeights w;
    w.gate = at::randn({d_ffn, d_model}, opts) * 0.02;
    w.up = at::randn({d_ffn, d_model}, opts) * 0.02;
    w.down = at::randn({d_model, d_ffn}, opts) * 0.02;
    sync();
    auto t0 = Clock::now();
    at::Tensor norms = sinkscope::FfnFrobeniusNorms(w, chunk);
    sync();
    auto t1 = Clock::now();
    double eig = 0;
    if (!f32) {
      for (int64_t c = 0; c < channels; ++c) {
        sinkscope::Eigenpairs e = sinkscope::LeadingEigenpairs(w, c, 10);
        (void)e;
      }
      sync();
      eig = std::chrono::duration<double>(Clock::now() - t1).count();
    }
    const double frob = std::chrono::duration<double>(t1 - t0).count();
    frob_total += frob;
    eig_total += eig;
    std::printf("layer %ld: ||U_k||_F for %ld channels %.2f s; %ld spectra (Lanczos) %.2f s; max norm %.4g\n",
                l, d_model, frob, f32 ? 0 : channels, eig, norms.max().item<double>());
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  const double per_layer = (frob_total + eig_total) / layers;
  const int bytes = f32 ? 4 : 8;
  const double bound = static_cast<double>(bytes) *
                       (3.0 * d_model * d_ffn + 3.0 * chunk * d_ffn + d_model * chunk) / (1 << 30);
  std::printf("per layer %.2f s (norms %.2f s + spectra %.2f s); projection for 32 layers: %.1f s\n",
              per_layer, frob_total / layers, eig_total / layers, 32 * per_layer);
  std::printf("peak RSS %.2f GiB; memory bound of one block (weights + one chunk) %.2f GiB\n",
              ru.ru_maxrss / 1048576.0, bound);
  return 0;
}
