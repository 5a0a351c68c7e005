// sinkscope-run: runs the engine directly, without the server.
//
//   sinkscope-run generate --model PATH [--tokenizer PATH] (--text STR | --ids 1,2,3)
//                 --max-new-tokens N [--json]
//   sinkscope-run forward  --model PATH [--tokenizer PATH] (--text STR | --ids ...) [--json]
//   sinkscope-run scan     --model PATH [--tokenizer PATH] (--text STR | --ids ...) [--json]
//   sinkscope-run hooks    --model PATH
//   sinkscope-run dump     --model PATH (--text STR | --ids ...) --out FILE.safetensors
//                 [--hook NAME]...   every hook (or the named ones) and "logits", float32
//   sinkscope-run tokenize --tokenizer PATH (--text STR | --file PATH...) [--bos]
//                 prints {"ids": [...], ...} per input, one JSON line each
//                 (tokenizer.json, .gguf, .model)
//   sinkscope-run export-tensors --model PATH --out FILE.safetensors [--ids 1,2,3]
//                 [--placed-dtype DTYPE]
//                 the checkpoint as the engine reads it (canonical names, GGUF
//                 dequantized), plus `sinkscope.logits` [T, d_vocab] float32
//                 of a float32 forward pass over --ids; with --placed-dtype, as
//                 the worker loads it (placed on the CPU in DTYPE)
//   sinkscope-run sinks    --model PATH (--text STR | --ids ...) [--window T] [--epsilon E]
//                 [--layers 0,1] [--query-chunk N] [--self-attention]   JSON per head
//   sinkscope-run train    --config RUN.json --corpus TEXT --out DIR [--resume DIR[/step-N]]
//                 [--log-every N] [--threads N] [--json]
//                 trains a decoder (worker/engine/train.h) on a byte-level corpus
//                 (ids = UTF-8 bytes; the recipe's bos_id, e.g. 256, starts each
//                 sequence); RUN.json = {"model": {config.json keys} | "init_from": DIR,
//                 "recipe": {TrainRecipe fields}}; checkpoints DIR/step-N/ (HF
//                 directories + optimiser state); prints loss, lr, tokens/s every N
//                 updates (--json: one JSON line per record)
//   sinkscope-run bench    --model PATH --ids ... [--variants plain,scan,sinks,probe]
//                 [--batch B] [--iters N] [--warmup N] [--threads N] [--reset-hwm]
//                 [--probe-tokens N] [--probe-batch N] [--device cuda --dtype bfloat16]
//     times the plain forward (no logits), the activation scan and the sink
//     scan (eq. 27 on every layer, window = sequence length) in interleaved
//     rounds, and prints JSON: seconds per round and variant, the numbers
//     each computed (for bench/peers.py to compare with its peers) and the
//     process's peak RSS (VmHWM, reset after loading with --reset-hwm), and
//     the load: seconds, VmRSS before it (the runtime's baseline), VmHWM and
//     VmRSS after it (for bench/load_memory.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/device_memory.h"
#include "worker/engine/spikes.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"
#include "worker/engine/sinks.h"
#include "worker/engine/tokenizer.h"
#include "worker/engine/train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

namespace sinkscope {
namespace {

struct CommonArgs {
  std::string model, tokenizer, text, ids, device = "cpu", dtype = "float32";
  bool json = false;
  int threads = 0;
};

void AddCommon(CLI::App* app, CommonArgs& a, bool needs_input) {
  app->add_option("--model", a.model, "llama2.c .bin file or Hugging Face directory")->required();
  app->add_option("--tokenizer", a.tokenizer,
                  "tokenizer.bin (llama2.c), tokenizer.model, tokenizer.json or .gguf (default: "
                  "the model's own, when it has one)");
  if (needs_input) {
    auto* text = app->add_option("--text", a.text, "prompt text (needs --tokenizer)");
    auto* ids = app->add_option("--ids", a.ids, "comma-separated token ids (BOS not added), or @FILE holding them");
    text->excludes(ids);
  }
  app->add_option("--device", a.device, "cpu | cuda | cuda:N");
  app->add_option("--dtype", a.dtype, "float32 | bfloat16 | float16");
  app->add_option("--threads", a.threads, "intra-op threads (0 = libtorch default)");
  app->add_flag("--json", a.json, "print JSON");
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "sinkscope-run: %s\n", s.ToString().c_str());
  return 1;
}

struct Loaded {
  Checkpoint ckpt;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

absl::StatusOr<Loaded> Load(const CommonArgs& a) {
  if (a.threads > 0) at::set_num_threads(a.threads);
  Loaded out;
  auto device = ParseDevice(a.device);
  if (!device.ok()) return device.status();
  auto dtype = ParseDtype(a.dtype);
  if (!dtype.ok()) return dtype.status();
  // Placed at load: one copy per weight, peak = the weights + one chunk.
  auto ckpt = LoadCheckpoint(a.model, LoadTarget{*device, *dtype});
  if (!ckpt.ok()) return ckpt.status();
  out.ckpt = std::move(*ckpt);
  auto model = Model::Create(out.ckpt, *device, *dtype);
  if (!model.ok()) return model.status();
  out.model = std::move(*model);
  out.ckpt.tensors.clear();
  const std::string tok_path = a.tokenizer.empty() ? FindModelTokenizer(a.model) : a.tokenizer;
  if (!tok_path.empty()) {
    auto tok = LoadTokenizer(tok_path, out.model->config().d_vocab);
    if (!tok.ok() && a.tokenizer.empty() && absl::IsUnimplemented(tok.status())) {
      // The model directory's own tokenizer is of a kind the engine cannot
      // run (e.g. WordLevel): token ids still work; --text is refused.
      std::fprintf(stderr, "sinkscope-run: no tokenizer: %s\n", tok.status().ToString().c_str());
      return out;
    }
    if (!tok.ok()) return tok.status();
    absl::Status fits = CheckTokenizerVocab(**tok, out.model->config().d_vocab,
                                            /*allow_padding=*/true, "tokenizer " + tok_path);
    if (!fits.ok()) return fits;
    out.tokenizer = std::move(*tok);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> Input(const CommonArgs& a, const Loaded& m) {
  if (!a.ids.empty()) {
    std::string list = a.ids;
    if (list[0] == '@') {  // @FILE: the ids are in FILE (a long sequence exceeds argv's limits)
      std::ifstream f(list.substr(1));
      if (!f) return absl::NotFoundError(absl::StrCat("--ids: cannot read ", list.substr(1)));
      std::stringstream ss;
      ss << f.rdbuf();
      list = ss.str();
    }
    std::vector<int64_t> ids;
    for (absl::string_view part : absl::StrSplit(list, absl::ByAnyChar(",\n \t"), absl::SkipWhitespace())) {
      int64_t v;
      if (!absl::SimpleAtoi(part, &v)) {
        return absl::InvalidArgumentError(absl::StrCat("--ids: '", part, "' is not an integer"));
      }
      ids.push_back(v);
    }
    return ids;
  }
  if (!m.tokenizer) return absl::InvalidArgumentError("--text needs --tokenizer");
  return m.tokenizer->Encode(a.text, /*add_bos=*/true);
}

nlohmann::json Provenance(const CommonArgs& a, const Loaded& m) {
  return {{"model", a.model},
          {"format", m.ckpt.format},
          {"dtype", DtypeName(m.model->dtype())},
          {"device", m.model->device().str()},
          {"summary", m.model->config().Summary()},
          {"code_version", SINKSCOPE_CODE_VERSION}};
}

int Generate(const CommonArgs& a, int64_t max_new) {
  auto m = Load(a);
  if (!m.ok()) return Fail(m.status());
  auto prompt = Input(a, *m);
  if (!prompt.ok()) return Fail(prompt.status());
  auto gen = m->model->GenerateGreedy(*prompt, max_new);
  if (!gen.ok()) return Fail(gen.status());
  std::string text;
  if (m->tokenizer) {
    std::vector<int64_t> all = *prompt;
    all.insert(all.end(), gen->begin(), gen->end());
    text = m->tokenizer->Decode(all);
  }
  if (a.json) {
    nlohmann::json j = {{"prompt_ids", *prompt}, {"generated_ids", *gen}};
    if (m->tokenizer) j["text"] = text;
    j["provenance"] = Provenance(a, *m);
    std::cout << j.dump() << "\n";
  } else {
    for (size_t i = 0; i < gen->size(); ++i) std::cout << (i ? " " : "") << (*gen)[i];
    std::cout << "\n";
    if (m->tokenizer) std::cout << text << "\n";
  }
  return 0;
}

int Forward(const CommonArgs& a) {
  auto m = Load(a);
  if (!m.ok()) return Fail(m.status());
  auto ids = Input(a, *m);
  if (!ids.ok()) return Fail(ids.status());
  // Per hook: L2 norm of the whole tensor (float32) and max |value|.
  std::vector<std::pair<std::string, std::pair<double, double>>> norms;
  HookRegistry hooks;
  for (const std::string& name : m->model->HookNames()) {
    hooks.AddProbe(name, [&norms](const std::string& n, int64_t, const at::Tensor& t) {
      at::Tensor t32 = t.to(at::kFloat);
      at::Tensor finite = t32.masked_fill(t32.isinf(), 0);  // masked scores are -inf
      norms.push_back({n, {finite.norm().item<double>(), finite.abs().max().item<double>()}});
    });
  }
  at::Tensor tokens = at::tensor(*ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  auto logits = m->model->Forward(tokens, hooks);
  if (!logits.ok()) return Fail(logits.status());
  if (a.json) {
    nlohmann::json hooks_json = nlohmann::json::array();
    for (const auto& [n, v] : norms) {
      hooks_json.push_back({{"hook", n}, {"norm", v.first}, {"max_abs", v.second}});
    }
    std::cout << nlohmann::json{{"ids", *ids}, {"hooks", hooks_json},
                                {"provenance", Provenance(a, *m)}}
                     .dump()
              << "\n";
  } else {
    for (const auto& [n, v] : norms) std::printf("%-36s norm %12.4f  max|x| %10.4f\n", n.c_str(), v.first, v.second);
  }
  return 0;
}

// Writes the hook tensors of one forward pass ([1, ...] as the hook sees them,
// float32, masked attention scores stay -inf) and the returned logits
// [1, pos, d_vocab] as a .safetensors file, for reference comparisons.
int Dump(const CommonArgs& a, const std::string& out, const std::vector<std::string>& names) {
  auto m = Load(a);
  if (!m.ok()) return Fail(m.status());
  auto ids = Input(a, *m);
  if (!ids.ok()) return Fail(ids.status());
  std::map<std::string, at::Tensor> tensors;
  HookRegistry hooks;
  const std::vector<std::string> wanted = names.empty() ? m->model->HookNames() : names;
  for (const std::string& name : wanted) {
    hooks.AddProbe(name, [&tensors](const std::string& n, int64_t, const at::Tensor& t) {
      tensors[n] = t.detach().to(at::kCPU, at::kFloat).contiguous().clone();
    });
  }
  at::Tensor tokens = at::tensor(*ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  auto logits = m->model->Forward(tokens, hooks);
  if (!logits.ok()) return Fail(logits.status());
  tensors["logits"] = logits->to(at::kCPU, at::kFloat).contiguous();
  absl::Status st = WriteSafetensors(out, tensors);
  if (!st.ok()) return Fail(st);
  std::cout << nlohmann::json{{"out", out}, {"tensors", tensors.size()},
                              {"provenance", Provenance(a, *m)}}
                   .dump()
            << "\n";
  return 0;
}

int Scan(const CommonArgs& a, const ScanParams& params) {
  auto m = Load(a);
  if (!m.ok()) return Fail(m.status());
  auto ids = Input(a, *m);
  if (!ids.ok()) return Fail(ids.status());
  auto summary = RunActivationScan(*m->model, {*ids}, params, nullptr, nullptr);
  if (!summary.ok()) return Fail(summary.status());
  nlohmann::json blocks = nlohmann::json::array();
  auto entry = [](const ActivationEntry& e) {
    return nlohmann::json{{"value", e.value}, {"sequence", e.sequence}, {"position", e.position},
                          {"channel", e.channel}};
  };
  for (const BlockRecord& b : summary->blocks) {
    nlohmann::json rt = nlohmann::json::array(), ot = nlohmann::json::array();
    for (const auto& e : b.resid_top) rt.push_back(entry(e));
    for (const auto& e : b.output_top) ot.push_back(entry(e));
    blocks.push_back({{"block", b.id.block}, {"layer", b.id.layer}, {"sublayer", b.id.sublayer()},
                      {"resid_top", rt}, {"output_top", ot},
                      {"resid_median_abs", b.resid_median_abs}, {"n_massive", b.n_massive}});
    if (!a.json) {
      std::printf("block %3lld  layer %2lld %-4s  top|resid| %10.3f  median %8.4f  massive %lld\n",
                  (long long)b.id.block, (long long)b.id.layer, b.id.sublayer().c_str(),
                  b.resid_top.empty() ? 0.0 : std::fabs(b.resid_top[0].value),
                  b.resid_median_abs.empty() ? 0.0 : b.resid_median_abs[0],
                  (long long)b.n_massive);
    }
  }
  if (a.json) {
    nlohmann::json entries = nlohmann::json::array();
    for (const auto& e : summary->spike_entries) entries.push_back(entry(e));
    std::cout << nlohmann::json{{"blocks", blocks},
                                {"spike_channels", summary->spike_channels},
                                {"spike_tokens", summary->spike_tokens},
                                {"spike_entries", entries},
                                {"step_up_blocks", summary->step_up_blocks},
                                {"step_down_blocks", summary->step_down_blocks},
                                {"peak_abs", summary->peak_abs},
                                {"peak_block", summary->peak_block},
                                {"provenance", Provenance(a, *m)}}
                     .dump()
              << "\n";
  } else {
    std::printf("spike channels: %zu, spike tokens: %zu, peak |h| %.3f at block %lld\n",
                summary->spike_channels.size(), summary->spike_tokens.size(),
                summary->peak_abs, (long long)summary->peak_block);
  }
  return 0;
}

int Tokenize(const std::string& path, const std::string& text, const std::vector<std::string>& files,
             bool bos) {
  auto tok = LoadTokenizer(path, 0);
  if (!tok.ok()) return Fail(tok.status());
  // One JSON line per input: --text, or each --file in order.
  std::vector<std::string> inputs;
  if (files.empty()) inputs.push_back(text);
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return Fail(absl::NotFoundError("cannot open " + file));
    std::stringstream ss;
    ss << in.rdbuf();
    inputs.push_back(ss.str());
  }
  for (const std::string& input : inputs) {
    auto ids = (*tok)->Encode(input, bos);
    if (!ids.ok()) return Fail(ids.status());
    std::cout << nlohmann::json{{"ids", *ids}, {"kind", (*tok)->kind()},
                                {"vocab_size", (*tok)->vocab_size()}}
                     .dump()
              << "\n";
  }
  return 0;
}

int ExportTensors(const CommonArgs& a, const std::string& out_path, const std::string& placed_dtype) {
  absl::StatusOr<Checkpoint> ckpt;
  if (placed_dtype.empty()) {
    ckpt = LoadCheckpoint(a.model);
  } else {  // as the worker loads it: placed on the CPU in that dtype
    auto dtype = ParseDtype(placed_dtype);
    if (!dtype.ok()) return Fail(dtype.status());
    ckpt = LoadCheckpoint(a.model, LoadTarget{c10::Device(c10::kCPU), *dtype});
  }
  if (!ckpt.ok()) return Fail(ckpt.status());
  std::map<std::string, at::Tensor> tensors = ckpt->tensors;
  if (!a.ids.empty()) {
    Loaded l;
    auto model = Model::Create(*ckpt, c10::Device(c10::kCPU), at::kFloat);
    if (!model.ok()) return Fail(model.status());
    l.model = std::move(*model);
    auto ids = Input(a, l);
    if (!ids.ok()) return Fail(ids.status());
    HookRegistry hooks;
    at::Tensor tokens = at::tensor(*ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
    auto logits = l.model->Forward(tokens, hooks);
    if (!logits.ok()) return Fail(logits.status());
    tensors["sinkscope.logits"] = logits->to(at::kFloat).reshape({tokens.size(1), -1}).contiguous();
  }
  for (auto& [n, t] : tensors) t = t.contiguous();
  absl::Status st = WriteSafetensors(out_path, tensors);
  if (!st.ok()) return Fail(st);
  std::cout << nlohmann::json{{"format", ckpt->format}, {"dequantized_from", ckpt->dequantized_from},
                              {"summary", ckpt->config.Summary()}, {"tensors", tensors.size()}}
                   .dump()
            << "\n";
  return 0;
}

/// VmHWM or VmRSS of this process from /proc/self/status, bytes (-1 if unreadable).
int64_t ProcStatusBytes(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::atoll(line.c_str() + key.size() + 1) * 1024;
  }
  return -1;
}

/// `sinks`: the sink analysis of one sequence (window = its length) and, with
/// --self-attention, the self-attention profile of the same layers, as JSON.
int Sinks(const CommonArgs& a, SinkParams params, bool self_attention) {
  auto m = Load(a);
  if (!m.ok()) return Fail(m.status());
  auto ids = Input(a, *m);
  if (!ids.ok()) return Fail(ids.status());
  if (params.window <= 0) params.window = static_cast<int64_t>(ids->size());
  auto r = RunSinkAnalysis(*m->model, {*ids}, params, nullptr, nullptr);
  if (!r.ok()) return Fail(r.status());
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerSinkRecord& l : r->layers) {
    nlohmann::json heads = nlohmann::json::array();
    for (const HeadSinkStats& h : l.heads) {
      heads.push_back({{"head", h.head},
                       {"max_importance", h.max_importance},
                       {"argmax_key", h.argmax_key},
                       {"is_sink_head", h.is_sink_head},
                       {"gu_first_key_score", h.gu_first_key_score},
                       {"mean_attention_distance", h.mean_attention_distance},
                       {"mean_attention_distance_without_sink",
                        h.mean_attention_distance_without_sink},
                       {"mean_logit_gap", h.mean_logit_gap}});
    }
    layers.push_back({{"layer", l.layer}, {"sink_ratio", l.sink_ratio}, {"heads", heads}});
  }
  nlohmann::json out = {{"window", r->window}, {"sink_ratio", r->sink_ratio},
                        {"gu_sink_ratio", r->gu_sink_ratio}, {"layers", layers},
                        {"provenance", Provenance(a, *m)}};
  if (self_attention) {
    SelfAttentionParams sp;
    sp.layers = params.layers;
    if (sp.layers.empty()) {
      for (int64_t l = 0; l < m->model->config().n_layers; ++l) sp.layers.push_back(l);
    }
    sp.query_chunk = params.query_chunk;
    std::vector<int64_t> cut(ids->begin(), ids->begin() + r->window);
    auto prof = RunSelfAttentionProfile(*m->model, {cut}, sp, nullptr, nullptr);
    if (!prof.ok()) return Fail(prof.status());
    nlohmann::json sa = nlohmann::json::array();
    for (const SelfAttentionLayer& l : prof->layers) {
      sa.push_back({{"layer", l.layer}, {"per_token", l.per_token[0]}});
    }
    out["self_attention"] = sa;
  }
  std::cout << out.dump() << "\n";
  return 0;
}

struct BenchArgs {
  std::string variants = "plain,scan,sinks";
  int iters = 3, warmup = 1;
  bool reset_hwm = false;
  int64_t batch = 1;          // copies of the sequence per forward pass
  int64_t probe_tokens = 0;   // first-token probe over ids [0, N) (0 = d_vocab)
  int64_t probe_batch = 512;  // sequences per forward pass of the probe
};

int Bench(const CommonArgs& a, const BenchArgs& b) {
  const int64_t rss_before_load = ProcStatusBytes("VmRSS");  // the runtime's baseline
  const auto load_t0 = std::chrono::steady_clock::now();
  auto m = Load(a);
  if (!m.ok()) return Fail(m.status());
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_t0).count();
  const int64_t hwm_after_load = ProcStatusBytes("VmHWM");
  const int64_t rss_after_load = ProcStatusBytes("VmRSS");
  auto ids = Input(a, *m);
  if (!ids.ok()) return Fail(ids.status());
  const std::vector<std::vector<int64_t>> seqs(static_cast<size_t>(b.batch), *ids);
  const int64_t T = static_cast<int64_t>(ids->size());
  const c10::Device device = m->model->device();
  std::vector<std::string> variants = absl::StrSplit(b.variants, ',', absl::SkipWhitespace());
  for (const std::string& v : variants) {
    if (v != "plain" && v != "scan" && v != "sinks" && v != "probe") {
      return Fail(absl::InvalidArgumentError(absl::StrCat("--variants: unknown variant '", v,
                                                          "' (plain, scan, sinks, probe)")));
    }
  }
  if (b.reset_hwm) {
    std::ofstream("/proc/self/clear_refs") << "5";  // resets VmHWM to VmRSS (Linux >= 4.0)
  }
  const int64_t rss_loaded = ProcStatusBytes("VmRSS");
  ScanParams scan_params;
  SinkParams sink_params;
  sink_params.window = T;
  at::Tensor tokens = at::tensor(*ids, at::TensorOptions().dtype(at::kLong))
                          .view({1, -1})
                          .expand({b.batch, T})
                          .contiguous()
                          .to(device);
  FirstTokenParams probe_params;
  probe_params.range_begin = 0;
  probe_params.range_end = b.probe_tokens > 0 ? b.probe_tokens : m->model->config().d_vocab;
  probe_params.batch_size = b.probe_batch;
  FirstTokenResult probe_result;
  nlohmann::json seconds = nlohmann::json::object();
  nlohmann::json peak_device = nlohmann::json::object();
  nlohmann::json scan_json, sinks_json;
  ScanSummary scan_summary;
  SinkSummary sink_summary;
  for (int round = 0; round < b.warmup + b.iters; ++round) {
    for (size_t i = 0; i < variants.size(); ++i) {
      const std::string& v = variants[(i + round) % variants.size()];  // rotating start
      SynchronizeDevice(device);
      ResetPeakDeviceMemory(device);
      const auto t0 = std::chrono::steady_clock::now();
      absl::Status st;
      if (v == "probe") {
        auto r = RunFirstTokenProbe(*m->model, probe_params, nullptr, nullptr);
        st = r.status();
        if (r.ok()) probe_result = std::move(*r);
      } else if (v == "plain") {
        st = m->model->RunHooks(tokens, HookRegistry(), nullptr);
      } else if (v == "scan") {
        auto r = RunActivationScan(*m->model, seqs, scan_params, nullptr, nullptr);
        st = r.status();
        if (r.ok()) scan_summary = std::move(*r);
      } else {
        auto r = RunSinkAnalysis(*m->model, seqs, sink_params, nullptr, nullptr);
        st = r.status();
        if (r.ok()) sink_summary = std::move(*r);
      }
      SynchronizeDevice(device);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!st.ok()) return Fail(st);
      if (round >= b.warmup) seconds[v].push_back(s);
      if (device.is_cuda()) peak_device[v] = QueryDeviceMemory(device).peak_allocated_bytes;
    }
  }
  const DeviceMemory dm = QueryDeviceMemory(device);
  nlohmann::json out = {{"seconds", seconds}, {"tokens", T}, {"batch", b.batch},
                        {"n_params", m->model->n_params()},
                        {"weight_bytes", m->model->weight_bytes()},
                        {"load_seconds", load_seconds},
                        {"rss_before_load_bytes", rss_before_load},
                        {"rss_after_load_bytes", rss_after_load},
                        {"vm_hwm_after_load_bytes", hwm_after_load},
                        {"device_peak_allocated_bytes", peak_device},
                        {"device_total_bytes", dm.total_bytes},
                        {"rss_loaded_bytes", rss_loaded},
                        {"vm_hwm_bytes", ProcStatusBytes("VmHWM")},
                        {"provenance", Provenance(a, *m)}};
  if (std::find(variants.begin(), variants.end(), "scan") != variants.end()) {
    nlohmann::json blocks = nlohmann::json::array();
    for (const BlockRecord& r : scan_summary.blocks) {
      nlohmann::json rt = nlohmann::json::array(), ot = nlohmann::json::array();
      for (const auto& e : r.resid_top) rt.push_back(std::fabs(e.value));
      for (const auto& e : r.output_top) ot.push_back(std::fabs(e.value));
      blocks.push_back({{"block", r.id.block}, {"resid_top_abs", rt}, {"output_top_abs", ot},
                        {"resid_median_abs", r.resid_median_abs.empty() ? 0.0 : r.resid_median_abs[0]}});
    }
    out["scan"] = {{"blocks", blocks}, {"peak_abs", scan_summary.peak_abs}};
  }
  if (std::find(variants.begin(), variants.end(), "sinks") != variants.end()) {
    nlohmann::json layers = nlohmann::json::array();
    for (const LayerSinkRecord& l : sink_summary.layers) {
      nlohmann::json heads = nlohmann::json::array();
      for (const HeadSinkStats& h : l.heads) heads.push_back(h.max_importance);
      layers.push_back(heads);
    }
    out["sinks"] = {{"max_importance", layers}, {"sink_ratio", sink_summary.sink_ratio}};
  }
  if (std::find(variants.begin(), variants.end(), "probe") != variants.end()) {
    out["probe"] = {{"n_tokens", probe_result.n_tokens},
                    {"n_spike_at_first", probe_result.n_spike_at_first},
                    {"n_spike_in_control", probe_result.n_spike_in_control},
                    {"forward_seconds", probe_result.forward_seconds},
                    {"total_seconds", probe_result.total_seconds}};
  }
  std::cout << out.dump() << "\n";
  return 0;
}

// A profile's row as JSON (the paper's columns; profile.h).
nlohmann::json ProfileRowJson(const ProfileResult& r) {
  return {{"perplexity", r.perplexity.perplexity},
          {"mean_loss", r.perplexity.mean_loss},
          {"sink_ratio", r.sinks.sink_ratio},
          {"n_sink_heads", r.sinks.n_sink_heads},
          {"n_heads", r.sinks.n_heads},
          {"top_sink_key", r.top_sink_key},
          {"spike", r.scan.spike_mean_over_sequences},
          {"peak_abs", r.scan.peak_abs},
          {"peak_block", r.scan.peak_block},
          {"n_massive_entries", r.scan.n_massive_entries},
          {"spike_channels", r.scan.spike_channels},
          {"step_up_blocks", r.scan.step_up_blocks},
          {"step_down_blocks", r.scan.step_down_blocks},
          {"sink_heads_distance", r.sinks.sink_heads_distance},
          {"other_heads_distance", r.sinks.other_heads_distance}};
}

struct TrainArgs {
  std::string config, corpus, out, resume, device = "cpu";
  int64_t log_every = 10;
  int threads = 0;
  bool json = false;
};

// `train`: reads RUN.json and the corpus, trains, prints progress records.
int TrainCmd(const TrainArgs& a) {
  if (a.threads > 0) at::set_num_threads(a.threads);
  if (a.log_every <= 0) return Fail(absl::InvalidArgumentError("--log-every must be positive"));
  std::ifstream cf(a.config, std::ios::binary);
  if (!cf) return Fail(absl::NotFoundError(absl::StrCat("--config: cannot read ", a.config)));
  std::stringstream css;
  css << cf.rdbuf();
  nlohmann::json run = nlohmann::json::parse(css.str(), nullptr, false);
  if (run.is_discarded() || !run.is_object()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(a.config, ": must be a JSON object")));
  }
  for (auto it = run.begin(); it != run.end(); ++it) {
    if (it.key() != "model" && it.key() != "init_from" && it.key() != "recipe" &&
        it.key() != "tokenizer") {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          a.config, ": unknown field '", it.key(), "' (known: model, init_from, recipe, tokenizer)")));
    }
  }
  std::string tokenizer_path;  // "" = bytes
  if (run.contains("tokenizer")) {
    if (!run["tokenizer"].is_string()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          a.config, ": tokenizer must be \"bytes\" or the path of a tokenizer file")));
    }
    if (run["tokenizer"] != "bytes") tokenizer_path = run["tokenizer"].get<std::string>();
  }
  if (!run.contains("recipe") || !run["recipe"].is_object()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(a.config, ": field 'recipe' (an object) is required")));
  }
  TrainJob job;
  auto recipe = ParseTrainRecipe(run["recipe"].dump(), a.config + ": recipe");
  if (!recipe.ok()) return Fail(recipe.status());
  job.recipe = *recipe;
  const bool has_model = run.contains("model"), has_init = run.contains("init_from");
  if (!a.resume.empty()) {
    job.resume_from = a.resume;
    // A run directory (no trainer_state.json of its own): its latest checkpoint.
    if (!std::ifstream(a.resume + "/trainer_state.json")) {
      auto latest = LatestCheckpoint(a.resume);
      if (!latest.ok()) return Fail(latest.status());
      job.resume_from = *latest;
    }
  } else if (has_model == has_init) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        a.config, ": give exactly one of 'model' (config.json keys) and 'init_from' (a HF directory)")));
  } else if (has_init) {
    if (!run["init_from"].is_string()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(a.config, ": init_from must be a path string")));
    }
    job.init_from = run["init_from"].get<std::string>();
  } else {
    auto cfg = ParseHfConfig(run["model"].dump(), a.config + ": model");
    if (!cfg.ok()) return Fail(cfg.status());
    job.config = *cfg;
  }
  auto device = ParseDevice(a.device);
  if (!device.ok()) return Fail(device.status());
  job.device = *device;
  job.out_dir = a.out;
  std::ifstream tf(a.corpus, std::ios::binary);
  if (!tf) return Fail(absl::NotFoundError(absl::StrCat("--corpus: cannot read ", a.corpus)));
  std::stringstream tss;
  tss << tf.rdbuf();
  const std::string text = tss.str();
  std::vector<int64_t> stream;
  if (tokenizer_path.empty()) {
    stream.resize(text.size());
    for (size_t i = 0; i < text.size(); ++i) stream[i] = static_cast<unsigned char>(text[i]);
  } else {
    // The corpus through a tokenizer (no BOS: the recipe's bos_id starts each sequence).
    int64_t d_vocab = job.config.d_vocab;
    const std::string from = !job.resume_from.empty() ? job.resume_from : job.init_from;
    if (!from.empty()) {
      std::ifstream hf(from + "/config.json", std::ios::binary);
      std::stringstream hss;
      hss << hf.rdbuf();
      auto cfg = ParseHfConfig(hss.str(), from + "/config.json");
      if (!cfg.ok()) return Fail(cfg.status());
      d_vocab = cfg->d_vocab;
    }
    auto tok = LoadTokenizer(tokenizer_path, d_vocab);
    if (!tok.ok()) return Fail(tok.status());
    auto ids = (*tok)->Encode(text, /*add_bos=*/false);
    if (!ids.ok()) return Fail(ids.status());
    stream = *std::move(ids);
  }
  if (!a.json) {
    std::printf("train: %zu corpus tokens (%s), %s; %s\n", stream.size(),
                tokenizer_path.empty() ? "bytes" : tokenizer_path.c_str(),
                job.resume_from.empty() ? "fresh run" : ("resuming " + job.resume_from).c_str(),
                TrainRecipeJson(job.recipe).c_str());
  }
  auto on_progress = [&](const TrainProgress& p) -> absl::Status {
    if (p.step % a.log_every != 0 && p.step != p.steps && !p.heldout_loss && p.checkpoint.empty()) {
      return absl::OkStatus();
    }
    if (a.json) {
      nlohmann::json j = {{"step", p.step}, {"steps", p.steps}, {"loss", p.loss}, {"lr", p.lr},
                          {"grad_norm", p.grad_norm}, {"tokens_per_s", p.tokens_per_s},
                          {"elapsed_s", p.elapsed_s}};
      if (p.heldout_loss) j["heldout_loss"] = *p.heldout_loss;
      if (!p.checkpoint.empty()) j["checkpoint"] = p.checkpoint;
      if (p.profile) j["profile"] = ProfileRowJson(*p.profile);
      std::cout << j.dump() << std::endl;
    } else {
      const double eta = p.step > 0 ? p.elapsed_s / p.step * (p.steps - p.step) : 0;
      std::printf("step %6lld/%lld  loss %.4f  lr %.3g  |g| %.3f  %8.0f tok/s  %6.1f s (ETA %.0f s)",
                  static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss, p.lr,
                  p.grad_norm, p.tokens_per_s, p.elapsed_s, eta);
      if (p.heldout_loss) std::printf("  held-out %.4f", *p.heldout_loss);
      if (!p.checkpoint.empty()) std::printf("  -> %s", p.checkpoint.c_str());
      std::printf("\n");
      if (p.profile) {
        const ProfileResult& r = *p.profile;
        std::printf("  profile: PPL %.3f  sink ratio %.1f%% (%lld/%lld sink heads, top key %lld)  "
                    "spike %.2f (peak block %lld)  massive %lld  step-up [%s]  spike channels [%s]\n",
                    r.perplexity.perplexity, 100 * r.sinks.sink_ratio,
                    static_cast<long long>(r.sinks.n_sink_heads), static_cast<long long>(r.sinks.n_heads),
                    static_cast<long long>(r.top_sink_key), r.scan.spike_mean_over_sequences,
                    static_cast<long long>(r.scan.peak_block),
                    static_cast<long long>(r.scan.n_massive_entries),
                    absl::StrJoin(r.scan.step_up_blocks, ",").c_str(),
                    absl::StrJoin(r.scan.spike_channels, ",").c_str());
      }
      std::fflush(stdout);
    }
    return absl::OkStatus();
  };
  auto summary = Train(job, stream, on_progress);
  if (!summary.ok()) return Fail(summary.status());
  if (!a.json) {
    std::printf("done: %lld updates (%lld parameters), last checkpoint %s\n",
                static_cast<long long>(summary->step), static_cast<long long>(summary->n_params),
                summary->last_checkpoint.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace sinkscope

int main(int argc, char** argv) {
  using namespace sinkscope;
  CLI::App app{"sinkscope-run: run the sinkscope engine directly"};
  app.require_subcommand(1);
  CommonArgs gen_args, fwd_args, scan_args, hook_args, bench_args, dump_args;
  BenchArgs bench;
  std::string dump_out;
  std::vector<std::string> dump_hooks;
  int64_t max_new = 16;
  ScanParams params;
  auto* gen = app.add_subcommand("generate", "greedy decoding");
  AddCommon(gen, gen_args, true);
  gen->add_option("--max-new-tokens", max_new, "tokens to generate")->check(CLI::NonNegativeNumber);
  auto* fwd = app.add_subcommand("forward", "one forward pass; per-hook norms");
  AddCommon(fwd, fwd_args, true);
  auto* scan = app.add_subcommand("scan", "activation scan of one sequence");
  AddCommon(scan, scan_args, true);
  scan->add_option("--top-k", params.top_k);
  scan->add_option("--abs-threshold", params.abs_threshold);
  scan->add_option("--rel-threshold", params.rel_threshold);
  scan->add_option("--step-fraction", params.step_fraction);
  auto* hooks = app.add_subcommand("hooks", "list the model's hook names");
  AddCommon(hooks, hook_args, false);
  auto* dump = app.add_subcommand("dump", "write hook tensors and logits to a .safetensors file");
  AddCommon(dump, dump_args, true);
  dump->add_option("--out", dump_out, "output .safetensors path")->required();
  dump->add_option("--hook", dump_hooks, "hook name (repeatable; default: every hook)");
  std::string tok_path, tok_text;
  std::vector<std::string> tok_files;
  bool tok_bos = false;
  auto* tokenize = app.add_subcommand("tokenize", "encode text; prints the ids as JSON");
  tokenize->add_option("--tokenizer", tok_path, "tokenizer.json, .gguf, .model or llama2.c .bin")->required();
  auto* tt = tokenize->add_option("--text", tok_text, "UTF-8 text");
  tokenize->add_option("--file", tok_files, "files of UTF-8 text (repeatable; one JSON line each)")
      ->excludes(tt);
  tokenize->add_flag("--bos", tok_bos, "prepend BOS");
  CommonArgs exp_args;
  std::string exp_out;
  auto* exp = app.add_subcommand("export-tensors", "write the loaded checkpoint (and logits) as safetensors");
  exp->add_option("--model", exp_args.model, "checkpoint")->required();
  exp->add_option("--out", exp_out, "output .safetensors")->required();
  exp->add_option("--ids", exp_args.ids, "token ids for a float32 forward pass (logits saved)");
  std::string exp_placed;
  exp->add_option("--placed-dtype", exp_placed,
                  "load as the worker does, placed on the CPU in this dtype (float32 | bfloat16 | "
                  "float16), and export the placed tensors (default: the file's, unplaced)");
  CommonArgs sinks_args;
  SinkParams sink_params;
  sink_params.window = 0;
  bool sinks_self_attention = false;
  auto* sinks = app.add_subcommand("sinks", "sink analysis of one sequence, as JSON");
  AddCommon(sinks, sinks_args, true);
  sinks->add_option("--window", sink_params.window, "tokens analysed (default: the sequence)");
  sinks->add_option("--epsilon", sink_params.epsilon, "sink-head threshold");
  sinks->add_option("--layers", sink_params.layers, "layers (default: all)")->delimiter(',');
  sinks->add_option("--query-chunk", sink_params.query_chunk,
                    "query rows per chunk (default: sized to the chunk budget)");
  sinks->add_flag("--self-attention", sinks_self_attention,
                  "also the self-attention profile A[t,t] of the same layers");
  auto* bench_cmd = app.add_subcommand("bench", "time plain forward, activation scan, sink scan");
  AddCommon(bench_cmd, bench_args, true);
  bench_cmd->add_option("--variants", bench.variants, "comma-separated: plain, scan, sinks");
  bench_cmd->add_option("--iters", bench.iters, "timed rounds")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--warmup", bench.warmup, "discarded rounds")->check(CLI::NonNegativeNumber);
  bench_cmd->add_flag("--reset-hwm", bench.reset_hwm, "reset VmHWM after loading the model");
  bench_cmd->add_option("--batch", bench.batch, "copies of the sequence per pass")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--probe-tokens", bench.probe_tokens, "probe variant: ids [0, N) (0 = vocab)");
  bench_cmd->add_option("--probe-batch", bench.probe_batch, "probe variant: sequences per pass")
      ->check(CLI::PositiveNumber);
  TrainArgs train_args;
  auto* train_cmd = app.add_subcommand("train", "train a decoder on a corpus, bytes or tokenised (train.h)");
  train_cmd->add_option("--config", train_args.config,
                        "RUN.json: {\"model\": {config.json keys} | \"init_from\": DIR, \"recipe\": {...}, "
                        "\"tokenizer\": \"bytes\" (default) | a tokenizer.json / .model / llama2c .bin path}")
      ->required();
  train_cmd->add_option("--corpus", train_args.corpus, "UTF-8 text file (token ids = its bytes unless RUN.json names a tokenizer)")->required();
  train_cmd->add_option("--out", train_args.out, "output directory (checkpoints OUT/step-N/)")->required();
  train_cmd->add_option("--resume", train_args.resume,
                        "continue from OUT/step-N of an earlier run, or from the latest complete "
                        "checkpoint of the run directory OUT");
  train_cmd->add_option("--log-every", train_args.log_every, "print a record every N updates");
  train_cmd->add_option("--device", train_args.device, "cpu | cuda | cuda:N");
  train_cmd->add_option("--threads", train_args.threads, "intra-op threads (0 = libtorch default)");
  train_cmd->add_flag("--json", train_args.json, "one JSON line per record");
  CLI11_PARSE(app, argc, argv);
  try {
    if (*gen) return Generate(gen_args, max_new);
    if (*fwd) return Forward(fwd_args);
    if (*scan) return Scan(scan_args, params);
    if (*dump) return Dump(dump_args, dump_out, dump_hooks);
    if (*tokenize) return Tokenize(tok_path, tok_text, tok_files, tok_bos);
    if (*exp) return ExportTensors(exp_args, exp_out, exp_placed);
    if (*bench_cmd) return Bench(bench_args, bench);
    if (*train_cmd) return TrainCmd(train_args);
    if (*sinks) return Sinks(sinks_args, sink_params, sinks_self_attention);
    if (*hooks) {
      auto ckpt = LoadCheckpoint(hook_args.model);
      if (!ckpt.ok()) return Fail(ckpt.status());
      auto model = Model::Create(*ckpt, c10::Device(c10::kCPU), at::kFloat);
      if (!model.ok()) return Fail(model.status());
      for (const auto& n : (*model)->HookNames()) std::cout << n << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sinkscope-run: %s\n", e.what());
    return 1;
  }
  return 0;
}
