// sinkscope-bench, engine part.
//
// Section 1: one model, one input, variants interleaved round by round
//   (rotating the start so no variant always runs first or right after
//   another): plain forward, activation scan, sink scan.
// Section 1b: cost of each reduction the scan's probes run, per block.
// Section 2: the same forward in eager PyTorch (bench/pytorch_scan.py, a
//   co-process driven over pipes so it interleaves with the C++ variants),
//   numbers checked against the engine's.
// Section 4a: peak RSS of each variant, each in a fresh process.
#include "bench/engine_bench.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/hooks.h"
#include "worker/engine/model.h"
#include "worker/engine/reductions.h"
#include "worker/engine/profile.h"
#include "worker/engine/scan.h"
#include "worker/engine/sinks.h"

namespace sinkscope::bench {
namespace {

using json = nlohmann::json;

ModelConfig MakeConfig(const EngineBenchOptions& o) {
  ModelConfig c;
  c.model_type = "llama";
  c.d_model = o.d_model;
  c.n_layers = o.n_layers;
  c.n_heads = o.n_heads;
  c.n_kv_heads = o.n_heads;
  c.d_head = o.d_model / o.n_heads;
  c.d_ffn = o.d_ffn;
  c.d_vocab = o.d_vocab;
  c.n_ctx = std::max<int64_t>(1024, o.seq_len);
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.rope_layout = RopeLayout::kRotateHalves;
  c.norm_placement = NormPlacement::kPre;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

/// Random Llama weights (std 1/sqrt(fan_in), norm gains ~1, embeddings
/// N(0, 1)); the BOS embedding (id 1) is `spike_value` on one channel and 0
/// elsewhere, so an input starting with BOS carries a massive activation on
/// every block (|h| ~ 5000 against a median |h| ~ 1) and one without BOS none.
Checkpoint MakeCheckpoint(const EngineBenchOptions& o) {
  const ModelConfig c = MakeConfig(o);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  auto randn = [&](std::vector<int64_t> shape, double std) {
    return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)) * std;
  };
  auto gain = [&](int64_t n) { return at::ones({n}) + randn({n}, 0.05); };
  Checkpoint ck;
  ck.config = c;
  ck.format = "bench-random";
  auto& t = ck.tensors;
  at::Tensor embed = randn({c.d_vocab, c.d_model}, 1.0);
  embed[1].zero_();
  embed[1][o.spike_channel] = o.spike_value;
  t["model.embed_tokens.weight"] = embed;
  const double sd = 1.0 / std::sqrt(static_cast<double>(c.d_model));
  const double sf = 1.0 / std::sqrt(static_cast<double>(c.d_ffn));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const int64_t q = c.n_heads * c.d_head;
    t[p + "self_attn.q_proj.weight"] = randn({q, c.d_model}, sd);
    t[p + "self_attn.k_proj.weight"] = randn({q, c.d_model}, sd);
    t[p + "self_attn.v_proj.weight"] = randn({q, c.d_model}, sd);
    t[p + "self_attn.o_proj.weight"] = randn({c.d_model, q}, sd);
    t[p + "mlp.gate_proj.weight"] = randn({c.d_ffn, c.d_model}, sd);
    t[p + "mlp.up_proj.weight"] = randn({c.d_ffn, c.d_model}, sd);
    t[p + "mlp.down_proj.weight"] = randn({c.d_model, c.d_ffn}, sf);
    t[p + "input_layernorm.weight"] = gain(c.d_model);
    t[p + "post_attention_layernorm.weight"] = gain(c.d_model);
  }
  t["model.norm.weight"] = gain(c.d_model);
  t["lm_head.weight"] = randn({c.d_vocab, c.d_model}, sd);
  return ck;
}

/// Input A starts with BOS (planted spike), input B is the same with another
/// first token (no massive activation). Ids never equal 1 elsewhere.
std::map<std::string, std::vector<int64_t>> MakeInputs(int64_t seq_len, int64_t vocab,
                                                       uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x5eed);
  std::uniform_int_distribution<int64_t> id(3, vocab - 1);
  std::vector<int64_t> a(seq_len);
  for (auto& x : a) x = id(rng);
  std::vector<int64_t> b = a;
  a[0] = 1;
  return {{"A", a}, {"B", b}};
}

at::Tensor ToTokens(const std::vector<int64_t>& ids) {
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "sinkscope-bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T OrDie(absl::StatusOr<T> v, const std::string& what) {
  if (!v.ok()) Die(absl::StrCat(what, ": ", v.status().ToString()));
  return std::move(v).value();
}

std::unique_ptr<Model> LoadModel(const std::string& dir) {
  Checkpoint ck = OrDie(LoadHfDirectory(dir), "loading " + dir);
  return OrDie(Model::Create(ck, c10::Device(c10::kCPU), at::kFloat), "placing the model");
}

/// The scan's per-block reductions (worker/engine/scan.cc, pass 1) on the
/// first `n_blocks` blocks only, or (cache = true) a TransformerLens-style
/// cache that keeps a copy of every probed tensor.
struct ProbeSink {
  std::vector<at::Tensor> cache;
  double checksum = 0;
};
void AddScanLikeProbes(HookRegistry& hooks, int64_t n_blocks, bool cache, ProbeSink* sink) {
  for (int64_t b = 1; b <= n_blocks; ++b) {
    const BlockId id = BlockId::FromBlock(b);
    for (const std::string& name : {id.resid_hook(), id.output_hook()}) {
      const bool resid = name == id.resid_hook();
      hooks.AddProbe(name, [sink, cache, resid](const std::string&, int64_t, const at::Tensor& t) {
        if (cache) {
          sink->cache.push_back(t.clone());
          return;
        }
        at::Tensor h32 = t.to(at::kFloat);
        at::Tensor flat = h32.reshape({-1});
        auto [vals, idx] = at::topk(flat.abs(), 3);
        sink->checksum += flat.index_select(0, idx)[0].item<float>();
        if (resid) {
          at::Tensor row = h32.abs().select(0, 0);
          const float median = row.reshape({-1}).median().item<float>();
          const float mx = row.max().item<float>();
          at::Tensor hits = (row > std::max(100.0, 1000.0 * median)).nonzero();
          sink->checksum += median + mx + static_cast<double>(hits.size(0));
        }
      });
    }
  }
}

struct Variant {
  std::string name;
  std::string note;
  std::function<double()> run;  // seconds
  std::vector<double> times = {};
  double target = 0;  // max ratio to plain (0: none)
};

double Ratio(const Variant& v, const Variant& base) {
  const double a = Median(v.times), b = Median(base.times);
  return b > 0 ? a / b : 0;
}

void PrintVariantTable(const std::vector<Variant*>& vs, const Variant& base, int64_t tokens,
                       const std::string& base_label) {
  std::printf("  %-34s %9s %9s %9s %10s %9s  %s\n", "variant", "median s", "min s", "max s",
              "tokens/s", "ratio", "target");
  for (const Variant* v : vs) {
    const double med = Median(v->times);
    const double r = Ratio(*v, base);
    std::string target = "-";
    if (v->target > 0) {
      target = absl::StrFormat("<= %.2fx %s", v->target, r <= v->target ? "MET" : "MISSED");
    }
    std::printf("  %-34s %9.3f %9.3f %9.3f %10.1f %8.3fx  %s\n", v->name.c_str(), med,
                Min(v->times), Max(v->times), med > 0 ? tokens / med : 0.0, r, target.c_str());
  }
  std::printf("  (ratio = median time / median time of %s)\n", base_label.c_str());
}

/// Runs every variant `warmup + iters` rounds, interleaved; the start rotates.
void RunInterleaved(std::vector<Variant*>& vs, int warmup, int iters) {
  const int n = static_cast<int>(vs.size());
  for (int r = 0; r < warmup + iters; ++r) {
    std::fprintf(stderr, "  round %d/%d (%s)\n", r + 1, warmup + iters,
                 r < warmup ? "warm-up" : "timed");
    for (int i = 0; i < n; ++i) {
      Variant* v = vs[(i + r) % n];
      const double s = v->run();
      if (r >= warmup) v->times.push_back(s);
    }
  }
}

/// Per-op cost of the scan's reductions on one real [1, T, d_model] tensor:
/// the ATen ops scan.cc used to run, and what it runs now on CPU float32.
void PrintBreakdown(const Model& model, const std::vector<int64_t>& input, double plain_s,
                    double scan_s) {
  const int64_t L = model.config().n_layers;
  at::Tensor resid;
  HookRegistry hooks;
  const BlockId mid = BlockId::FromBlock(L + (L % 2 == 0 ? 0 : 1));  // an MLP block mid-model
  hooks.AddProbe(mid.resid_hook(), [&](const std::string&, int64_t, const at::Tensor& t) {
    resid = t.clone();
  });
  ForwardOptions fo;
  fo.compute_logits = false;
  OrDie(model.Forward(ToTokens(input), hooks, fo), "forward");
  const int reps = 30;
  struct Op {
    std::string name;
    int per_block;  // how many times scan.cc runs it per block (resid + output probe)
    std::function<double()> fn;
  };
  at::Tensor flat = resid.reshape({-1}).contiguous();
  at::Tensor absd = flat.abs();
  const std::vector<Op> before = {
      {"abs() of [T*d]", 3, [&] { return static_cast<double>(flat.abs().numel()); }},
      {"topk(|h|, 3)", 2, [&] { return std::get<0>(at::topk(absd, 3))[0].item<double>(); }},
      {"index_select + cpu (signed top-k)", 2,
       [&] {
         return flat.index_select(0, std::get<1>(at::topk(absd, 3))).cpu()[0].item<double>();
       }},
      {"median(|h|).item()", 1, [&] { return absd.median().item<double>(); }},
      {"max(|h|).item()", 1, [&] { return absd.max().item<double>(); }},
      {"(|h| > thr).nonzero()", 1,
       [&] { return static_cast<double>((absd > 100.0).nonzero().size(0)); }},
  };
  const std::vector<Op> now = {
      {"abs() of [T*d]", 1, [&] { return static_cast<double>(flat.abs().numel()); }},
      {"fused top-3 by |h| (one pass)", 2,
       [&] {
         std::vector<std::pair<float, int64_t>> best;
         TopKAbsCpu(flat, 3, &best);
         return best.empty() ? 0.0 : static_cast<double>(best[0].first);
       }},
      {"radix-select median(|h|)", 1, [&] { return static_cast<double>(MedianAbs(absd)); }},
      {"max(|h|).item()", 1, [&] { return absd.max().item<double>(); }},
      {"(|h| > thr).nonzero()", 1,
       [&] { return static_cast<double>((absd > 100.0).nonzero().size(0)); }},
  };
  std::printf("\n[1b] Where the scan's time goes: the per-block reductions of worker/engine/"
              "scan.cc,\n     timed on one real post-residual [1, %lld, %lld] tensor, %d reps each, "
              "x %lld blocks\n",
              static_cast<long long>(resid.size(1)), static_cast<long long>(resid.size(2)), reps,
              static_cast<long long>(2 * L));
  std::printf("  %-44s %10s %9s %14s\n", "op", "ms / call", "calls/blk", "ms / forward");
  volatile double sink = 0;
  auto table = [&](const char* title, const std::vector<Op>& ops) {
    std::printf("  %s\n", title);
    double total = 0, topk_ms = 0;
    for (const Op& op : ops) {
      sink = sink + op.fn();  // warm
      const double t0 = Now();
      for (int i = 0; i < reps; ++i) sink = sink + op.fn();
      double ms = (Now() - t0) * 1e3 / reps;
      if (op.name.rfind("topk", 0) == 0) topk_ms = ms;
      // Timed together with its topk; report the difference.
      if (op.name.rfind("index_select", 0) == 0) ms = std::max(0.0, ms - topk_ms);
      const double per_fwd = ms * op.per_block * 2 * L;
      total += per_fwd;
      std::printf("    %-42s %10.3f %9d %14.1f\n", op.name.c_str(), ms, op.per_block, per_fwd);
    }
    std::printf("    %-42s %10s %9s %14.1f\n", "sum", "", "", total);
  };
  table("before (ATen ops; at::median = full copy + nth_element, single-threaded):", before);
  table("now (scan.cc CPU float32 fast path):", now);
  std::printf("  measured: activation scan (1 pass) - plain forward = %.1f ms per forward\n",
              (scan_s - plain_s) * 1e3);
}

/// Max relative difference between the engine's and PyTorch's block stats.
struct Compare {
  double resid = 0, output = 0, median = 0;
  int64_t blocks = 0;
  std::string worst;
};
Compare CompareStats(const ScanSummary& cpp, const json& py) {
  Compare c;
  auto rel = [](double a, double b) {
    return std::fabs(a - b) / std::max(std::fabs(b), 1e-6);
  };
  double worst = -1;
  for (const json& pb : py.at("blocks")) {
    const int64_t b = pb.at("block").get<int64_t>();
    const BlockRecord& rec = cpp.blocks.at(b - 1);
    for (int i = 0; i < 3; ++i) {
      const double pr = pb.at("resid_top3").at(i).get<double>();
      const double po = pb.at("out_top3").at(i).get<double>();
      const double er = rel(std::fabs(rec.resid_top.at(i).value), pr);
      const double eo = rel(std::fabs(rec.output_top.at(i).value), po);
      c.resid = std::max(c.resid, er);
      c.output = std::max(c.output, eo);
      if (std::max(er, eo) > worst) {
        worst = std::max(er, eo);
        c.worst = absl::StrFormat("block %d top-%d: engine %.6g / %.6g, pytorch %.6g / %.6g", b,
                                  i + 1, std::fabs(rec.resid_top.at(i).value),
                                  std::fabs(rec.output_top.at(i).value), pr, po);
      }
    }
    c.median = std::max(c.median, rel(rec.resid_median_abs.at(0), pb.at("median").get<double>()));
    ++c.blocks;
  }
  return c;
}

json ParseResult(const std::string& s, const std::string& what) {
  if (s.empty()) Die(what + ": no answer from the child process");
  try {
    return json::parse(s);
  } catch (const std::exception& e) {
    Die(what + ": bad JSON from the child: " + e.what());
  }
}

}  // namespace

int RunMemChild(const std::string& model_dir, const std::string& variant, int64_t seq_len,
                uint64_t seed, int threads) {
  at::set_num_threads(threads);
  PinBlasThreads(threads);
  std::unique_ptr<Model> model = LoadModel(model_dir);
  auto inputs = MakeInputs(seq_len, model->config().d_vocab, seed);
  at::Tensor tokA = ToTokens(inputs["A"]), tokB = ToTokens(inputs["B"]);
  const int64_t rss_load = RssKib();
  const bool reset = ResetPeakRss();
  const double t0 = Now();
  ForwardOptions fo;
  fo.compute_logits = false;
  std::string extra;
  if (variant == "load") {
  } else if (variant == "plain" || variant == "plain+logits") {
    fo.compute_logits = variant == "plain+logits";
    OrDie(model->Forward(tokB, HookRegistry(), fo), "forward");
  } else if (variant == "scan" || variant == "scan-spike") {
    ScanSummary s = OrDie(
        RunActivationScan(*model, {inputs[variant == "scan" ? "B" : "A"]}, ScanParams(), nullptr,
                          nullptr),
        "scan");
    extra = absl::StrCat(s.spike_entries.size(), " spike entries");
  } else if (variant == "sinks") {
    SinkParams p;
    p.window = seq_len;
    OrDie(RunSinkAnalysis(*model, {inputs["A"]}, p, nullptr, nullptr), "sinks");
  } else if (variant.rfind("probe:", 0) == 0 || variant.rfind("cache:", 0) == 0) {
    const int64_t n = std::min<int64_t>(std::stoll(variant.substr(6)), model->config().n_blocks());
    ProbeSink sink;
    HookRegistry hooks;
    AddScanLikeProbes(hooks, n, variant[0] == 'c', &sink);
    OrDie(model->Forward(tokB, hooks, fo), "forward");
    extra = absl::StrCat(sink.cache.size(), " tensors cached");
  } else {
    Die("unknown mem-child variant " + variant);
  }
  const double secs = Now() - t0;
  json r = {{"variant", variant},     {"rss_after_load_kib", rss_load},
            {"peak_kib", PeakRssKib()}, {"hwm_reset", reset},
            {"seconds", secs},        {"note", extra}};
  std::printf("RESULT %s\n", r.dump().c_str());
  return 0;
}

int RunEngineBench(const EngineBenchOptions& opt) {
  at::set_num_threads(opt.threads);
  const std::string pinned = PinBlasThreads(opt.threads);
  const std::string tmp = MakeTempDir("sinkscope-bench-");
  if (tmp.empty()) Die("cannot create a temp dir");
  const std::string model_dir = tmp + "/model";
  std::filesystem::create_directories(model_dir);
  auto inputs = MakeInputs(opt.seq_len, opt.d_vocab, opt.seed);
  {
    Checkpoint ck = MakeCheckpoint(opt);
    absl::Status s = WriteSafetensors(model_dir + "/model.safetensors", ck.tensors);
    if (s.ok()) s = WriteHfConfig(model_dir + "/config.json", ck.config);
    if (!s.ok()) Die(s.ToString());
    std::ofstream(tmp + "/inputs.json") << json(inputs).dump();
  }
  std::unique_ptr<Model> model = LoadModel(model_dir);
  const int64_t T = opt.seq_len;
  std::printf("model: random weights, %s\n", model->config().Summary().c_str());
  std::printf("       %.1fM parameters (%.0f MiB float32), attention path without probes: %s\n",
              model->n_params() / 1e6, model->weight_bytes() / 1048576.0,
              model->fast_attention_path().c_str());
  std::printf("input: 1 sequence x %lld tokens; A = BOS first (planted massive activation, "
              "|h| = %.0f on channel %lld), B = same ids without BOS (no massive activation)\n",
              static_cast<long long>(T), opt.spike_value, static_cast<long long>(opt.spike_channel));
  std::printf("threads: at::set_num_threads(%d), %s; PyTorch: torch.set_num_threads(%d) + same "
              "env\n",
              opt.threads, pinned.c_str(), opt.threads);
  std::fflush(stdout);

  // ---- engine correctness of the bench itself: the scan must see the plant ----
  const ScanSummary scanA =
      OrDie(RunActivationScan(*model, {inputs["A"]}, ScanParams(), nullptr, nullptr), "scan A");
  const ScanSummary scanB =
      OrDie(RunActivationScan(*model, {inputs["B"]}, ScanParams(), nullptr, nullptr), "scan B");
  std::printf("scan check: input A -> %zu spike entries (peak |h| %.0f at block %lld), "
              "input B -> %zu (A also traces the step-up/down entries, B does not)\n",
              scanA.spike_entries.size(), scanA.peak_abs, static_cast<long long>(scanA.peak_block),
              scanB.spike_entries.size());

  // ---- the PyTorch co-process ----
  CoProcess py;
  bool have_py = false;
  json py_info;
  if (opt.pytorch) {
    have_py = py.Start({opt.python, opt.pytorch_script, "--model-dir", model_dir, "--inputs",
                        tmp + "/inputs.json", "--threads", std::to_string(opt.threads), "--serve"});
    if (have_py) {
      const std::string ready = py.ReadUntil("READY ");
      if (ready.empty()) {
        have_py = false;
        py.Finish();
      } else {
        py_info = json::parse(ready);
      }
    }
    if (!have_py) {
      std::printf("PyTorch: not available (%s %s failed); run scripts/setup-python.sh\n",
                  opt.python.c_str(), opt.pytorch_script.c_str());
    }
  }

  // ---- section 1 (+2): interleaved variants ----
  auto forward = [&](const std::string& in, bool logits) {
    return [&, in, logits] {
      ForwardOptions fo;
      fo.compute_logits = logits;
      at::Tensor tok = ToTokens(inputs[in]);
      const double t0 = Now();
      OrDie(model->Forward(tok, HookRegistry(), fo), "forward");
      return Now() - t0;
    };
  };
  auto scan = [&](const std::string& in) {
    return [&, in] {
      const double t0 = Now();
      OrDie(RunActivationScan(*model, {inputs[in]}, ScanParams(), nullptr, nullptr), "scan");
      return Now() - t0;
    };
  };
  auto sinks = [&] {
    SinkParams p;
    p.window = T;
    const double t0 = Now();
    OrDie(RunSinkAnalysis(*model, {inputs["A"]}, p, nullptr, nullptr), "sinks");
    return Now() - t0;
  };
  // The profile job's pass (worker/engine/profile.h): NLL + scan + sink
  // statistics of the first 64 tokens, one chunk of T tokens.
  auto profile = [&](const std::string& in) {
    return [&, in] {
      ProfileParams p;
      p.eval.chunk_length = T;
      const double t0 = Now();
      OrDie(RunProfile(*model, inputs[in], p, nullptr, nullptr), "profile");
      return Now() - t0;
    };
  };
  auto pyrun = [&](const std::string& mode) {
    return [&, mode] {
      json r = ParseResult(py.Request("time " + mode + " B", "RESULT "), "pytorch " + mode);
      return r.at("seconds").get<double>();
    };
  };
  Variant plain{"plain forward (no probes)", "", forward("B", false)};
  Variant plain_logits{"plain forward + logits", "", forward("B", true)};
  Variant scan1{"activation scan, input B (1 pass)", "", scan("B"), {}, 1.15};
  Variant scan2{"activation scan, input A (spikes)", "", scan("A")};
  Variant sinkv{"sink scan, all layers, T = " + std::to_string(T), "", sinks, {}, 1.5};
  Variant prof{"profile, input A (PPL + scan + sinks T=64)", "", profile("A")};
  // The perplexity job's pass: forward + logits + next-token NLL.
  Variant ppl{"perplexity, input A (forward + logits + NLL)", "", [&] {
                EvalParams p;
                p.chunk_length = T;
                const double t0 = Now();
                OrDie(RunPerplexity(*model, inputs["A"], p, nullptr, nullptr), "perplexity");
                return Now() - t0;
              }};
  Variant py_plain{"pytorch plain forward", "", pyrun("plain")};
  Variant py_sort{"pytorch hooks, sort+median (locuslab)", "", pyrun("hooks-sort")};
  Variant py_topk{"pytorch hooks, topk+median", "", pyrun("hooks-topk")};
  std::vector<Variant*> all = {&plain, &plain_logits, &scan1, &scan2, &sinkv, &ppl, &prof};
  if (have_py) {
    all.push_back(&py_plain);
    all.push_back(&py_sort);
    all.push_back(&py_topk);
  }
  std::fprintf(stderr, "sinkscope-bench: %zu variants x (%d warm-up + %d timed) rounds\n",
               all.size(), opt.warmup, opt.iters);
  RunInterleaved(all, opt.warmup, opt.iters);

  std::printf("\n[1] Instrumentation overhead: same model, same input, variants interleaved in "
              "each of %d timed rounds (after %d warm-up), median\n",
              opt.iters, opt.warmup);
  std::vector<Variant*> s1 = {&plain, &plain_logits, &scan1, &scan2, &sinkv, &ppl, &prof};
  PrintVariantTable(s1, plain, T, "plain forward (no probes, no logits: scans skip the unembed too)");
  std::printf("  profile vs the perplexity job's pass (forward + logits + NLL): %.3fx (target "
              "<= 1.20x); vs plain forward + logits %.3fx\n",
              Ratio(prof, ppl), Ratio(prof, plain_logits));
  std::fflush(stdout);

  if (opt.breakdown) {
    PrintBreakdown(*model, inputs["B"], Median(plain.times), Median(scan1.times));
  }

  if (have_py) {
    std::printf("\n[2] Against eager PyTorch %s (same libtorch, same weights, same input B, same "
                "threads)\n",
                py_info.value("torch", std::string("?")).c_str());
    for (const std::string in : {"A", "B"}) {
      json st = ParseResult(py.Request("stats " + in, "RESULT "), "pytorch stats");
      const Compare c = CompareStats(in == "A" ? scanA : scanB, st);
      const double worst = std::max({c.resid, c.output, c.median});
      std::printf("  numbers, input %s: %lld blocks, max rel. diff top-3 resid %.2e, top-3 "
                  "output %.2e, median %.2e -> %s (tolerance 1e-3)\n",
                  in.c_str(), static_cast<long long>(c.blocks), c.resid, c.output, c.median,
                  worst <= 1e-3 ? "SAME" : "DIFFERENT");
      if (worst > 1e-3) std::printf("    worst: %s\n", c.worst.c_str());
    }
    std::vector<Variant*> s2 = {&plain, &scan1, &py_plain, &py_sort, &py_topk};
    PrintVariantTable(s2, plain, T, "the engine's plain forward");
    std::printf("  engine scan vs pytorch (locuslab-style hooks): %.2fx the tokens/s; "
                "pytorch plain vs engine plain: %.2fx the time\n",
                Median(py_sort.times) / Median(scan1.times), Ratio(py_plain, plain));
    py.Request("quit", "BYE");
    py.Finish();
  }
  std::fflush(stdout);

  if (opt.memory) {
    std::printf("\n[4a] Peak RSS, each variant in a fresh process (VmHWM reset after the model "
                "is loaded, then one run)\n");
    std::printf("  %-34s %12s %12s %12s  %s\n", "variant", "RSS loaded", "peak RSS", "peak-loaded",
                "note");
    const std::vector<std::string> variants = {
        "load",    "plain",   "plain+logits", "scan",    "scan-spike", "sinks",  "probe:0",
        "probe:6", "probe:12", "probe:24",    "cache:6", "cache:12",   "cache:24"};
    auto row = [](const std::string& name, int64_t loaded, int64_t peak, const std::string& note) {
      std::printf("  %-34s %9.1f MiB %9.1f MiB %9.1f MiB  %s\n", name.c_str(), loaded / 1024.0,
                  peak / 1024.0, (peak - loaded) / 1024.0, note.c_str());
      std::fflush(stdout);
    };
    for (const std::string& v : variants) {
      std::string out;
      const int rc = RunCapture({opt.self_exe, "mem-child", "--model-dir", model_dir, "--variant",
                                 v, "--seq-len", std::to_string(T), "--seed",
                                 std::to_string(opt.seed), "--threads",
                                 std::to_string(opt.threads)},
                                &out);
      const size_t at = out.find("RESULT ");
      if (rc != 0 || at == std::string::npos) {
        std::printf("  %-34s failed (exit %d)\n", v.c_str(), rc);
        continue;
      }
      json r = json::parse(out.substr(at + 7, out.find('\n', at) - at - 7));
      std::string label = v;
      if (v.rfind("probe:", 0) == 0) label = "scan reductions on " + v.substr(6) + " blocks";
      if (v.rfind("cache:", 0) == 0) label = "cache (clone) of " + v.substr(6) + " blocks";
      std::string note = r.value("note", "");
      if (!r.value("hwm_reset", false)) note += " (VmHWM reset refused: peak includes loading)";
      row(label, r.at("rss_after_load_kib").get<int64_t>(), r.at("peak_kib").get<int64_t>(), note);
    }
    if (have_py || opt.pytorch) {
      for (const std::string mode : {"plain", "hooks-sort"}) {
        std::string out;
        const int rc = RunCapture({opt.python, opt.pytorch_script, "--model-dir", model_dir,
                                   "--inputs", tmp + "/inputs.json", "--threads",
                                   std::to_string(opt.threads), "--mem", mode},
                                  &out);
        const size_t at = out.find("RESULT ");
        if (rc != 0 || at == std::string::npos) {
          std::printf("  %-34s failed (exit %d)\n", ("pytorch " + mode).c_str(), rc);
          continue;
        }
        json r = json::parse(out.substr(at + 7, out.find('\n', at) - at - 7));
        row("pytorch " + mode, r.at("rss_after_load_kib").get<int64_t>(),
            r.at("peak_kib").get<int64_t>(), "");
      }
    }
    std::printf("  (activations of one [1, %lld, %lld] float32 hidden state: %.1f MiB)\n",
                static_cast<long long>(T), static_cast<long long>(opt.d_model),
                T * opt.d_model * 4 / 1048576.0);
  }
  RemoveTree(tmp);
  return 0;
}

}  // namespace sinkscope::bench
