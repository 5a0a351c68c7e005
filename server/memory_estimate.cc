#include "server/memory_estimate.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/attention_chunks.h"
#include "common/job_types.h"
#include "common/model_config.h"
#include "common/gguf.h"

namespace sinkscope {
namespace server {

int64_t ModelShape::NumParams() const {
  if (n_params > 0) return n_params;
  const int64_t head_dim = n_heads > 0 ? d_model / n_heads : d_model;
  const int64_t kv = n_kv_heads > 0 ? n_kv_heads : n_heads;
  const int64_t attn = d_model * (n_heads * head_dim) * 2 + d_model * (kv * head_dim) * 2;
  const int64_t mlp = 3 * d_model * d_mlp;
  const int64_t per_layer = attn + mlp + 2 * d_model;
  return vocab * d_model * (shared_head ? 1 : 2) + n_layers * per_layer + d_model;
}

absl::StatusOr<ModelShape> ReadModelShape(const CatalogEntry& entry) {
  ModelShape s;
  if (entry.format == "llama2c") {
    std::ifstream in(entry.path, std::ios::binary);
    int32_t h[7];
    if (!in || !in.read(reinterpret_cast<char*>(h), sizeof(h))) {
      return absl::NotFoundError(absl::StrCat("cannot read the header of ", entry.path));
    }
    s.d_model = h[0];
    s.d_mlp = h[1];
    s.n_layers = h[2];
    s.n_heads = h[3];
    s.n_kv_heads = h[4];
    s.vocab = std::abs(h[5]);
    s.shared_head = h[5] > 0;
    s.n_ctx = h[6];
  } else if (entry.format == "gguf") {
    absl::StatusOr<GgufFile> f = ReadGgufFile(entry.path);
    if (!f.ok()) return f.status();
    absl::StatusOr<GgufShape> g = GgufModelShape(*f);
    if (!g.ok()) return absl::InvalidArgumentError(absl::StrCat(entry.path, ": ", g.status().message()));
    s.d_model = g->d_model;
    s.d_mlp = g->d_ffn;
    s.n_layers = g->n_layers;
    s.n_heads = g->n_heads;
    s.n_kv_heads = g->n_kv_heads;
    s.vocab = g->d_vocab;
    s.n_ctx = g->n_ctx;
    s.shared_head = g->tied;
    // The engine loads every tensor of the file (ParseGgufCheckpoint refuses
    // any it does not place): their element count is the model's, biases
    // (qwen2), q/k norms (qwen3) and a head size other than d_model / n_heads
    // included, so the estimate's weights equal the worker's weight_bytes.
    int64_t n = 0;
    for (const GgufTensorInfo& t : f->tensors) n += t.numel();
    s.n_params = n;
  } else {
    std::ifstream in(entry.path + "/config.json");
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", entry.path, "/config.json"));
    std::stringstream text;
    text << in.rdbuf();
    // The engine's parser and family table (common/model_config.h): same
    // shape, same parameter count as the worker will load.
    absl::StatusOr<ModelConfig> config =
        ParseHfConfig(text.str(), absl::StrCat(entry.path, "/config.json"));
    if (config.ok()) {
      s.d_model = config->d_model;
      s.d_mlp = config->d_ffn;
      s.n_layers = config->n_layers;
      s.n_heads = config->n_heads;
      s.n_kv_heads = config->n_kv_heads;
      s.vocab = config->d_vocab;
      s.n_ctx = config->n_ctx;
      s.shared_head = config->tied_embeddings;
      s.n_params = ParameterCount(*config);
      return s;
    }
    try {
      nlohmann::json j = nlohmann::json::parse(text.str());
      s.d_model = j.value("hidden_size", int64_t{0});
      s.d_mlp = j.value("intermediate_size", int64_t{0});
      s.n_layers = j.value("num_hidden_layers", int64_t{0});
      s.n_heads = j.value("num_attention_heads", int64_t{0});
      s.n_kv_heads = j.value("num_key_value_heads", s.n_heads);
      s.vocab = j.value("vocab_size", int64_t{0});
      s.n_ctx = j.value("max_position_embeddings", int64_t{0});
      s.shared_head = j.value("tie_word_embeddings", false);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(entry.path, "/config.json: ", e.what()));
    }
  }
  if (s.d_model <= 0 || s.n_layers <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("model ", entry.name, ": unknown shape"));
  }
  return s;
}

int DtypeBytes(const std::string& dtype) { return dtype == "float32" || dtype.empty() ? 4 : 2; }

int64_t AttentionStatisticsElements(int64_t batch, int64_t heads, int64_t T) {
  // Eight chunk-sized buffers live at once (scores in the model dtype and in
  // float32, softmax, its rounded copy, the pattern without each row's
  // largest entry, the masked scores, logsumexp's exponentials, one spare),
  // each at most kAttentionChunkElements and at most the whole [batch, head,
  // T, T]; 64 float32 per [batch, head, pos] for the float64 accumulators and
  // the sink statistics' temporaries.
  return 8 * std::min(kAttentionChunkElements, batch * heads * T * T) + 64 * batch * heads * T;
}

MemoryEstimate EstimateJobMemory(const ModelShape& shape, const std::string& dtype,
                                 const v1::JobRequest& request) {
  MemoryEstimate out;
  out.weight_bytes = shape.NumParams() * DtypeBytes(dtype);
  std::map<int64_t, int64_t> batch_by_length;  // T -> B
  const bool add_bos = request.has_add_bos() ? request.add_bos() : true;
  for (const v1::Sequence& seq : request.sequences()) {
    int64_t t = seq.has_ids() ? seq.ids().ids_size()
                              : static_cast<int64_t>(seq.text().size()) + (add_bos ? 1 : 0);
    if (request.has_sinks()) {
      // Cut to the window T, or split into windows of T batched together.
      const int64_t T = request.sinks().has_window() ? request.sinks().window() : 64;
      if (T > 0 && request.sinks().windowed() && t > T) {
        batch_by_length[std::min(T, shape.n_ctx > 0 ? shape.n_ctx : T)] += t / T;
        if (t % T >= 2) ++batch_by_length[t % T];
        continue;
      }
      if (T > 0) t = std::min(t, T);
    }
    if (shape.n_ctx > 0) t = std::min(t, shape.n_ctx);
    ++batch_by_length[std::max<int64_t>(t, 1)];
  }
  const int64_t heads = std::max<int64_t>(shape.n_heads, 1);
  const JobTypeDescriptor* job = JobTypeOfRequest(request);
  if (job != nullptr && job->reads_corpus()) {
    // An evaluation stream (the corpus or the sequences concatenated) runs
    // one chunk per forward pass.
    const v1::EvalCorpus& eval = *job->eval_corpus(request);
    int64_t chunk = eval.has_chunk_length() ? eval.chunk_length() : 128;
    if (shape.n_ctx > 0) chunk = std::min(chunk, shape.n_ctx);
    batch_by_length.clear();
    batch_by_length[std::max<int64_t>(chunk, 1)] = 1;
  }
  // Eager attention materializes the patterns (unknown job: the larger bound).
  const bool patterns = job == nullptr || job->needs_attention_patterns;
  const bool chunked =
      job != nullptr && job->memory_estimate == MemoryEstimateKind::kAttentionStatistics;
  int64_t worst = 0;
  for (const auto& [t, b] : batch_by_length) {
    const int64_t bt = b * t;
    int64_t elems = bt * (8 * shape.d_model + 3 * shape.d_mlp + shape.vocab);
    if (chunked) {
      elems += AttentionStatisticsElements(b, heads, t);
    } else {
      elems += b * heads * t * t * (patterns ? 5 : 2);
    }
    worst = std::max(worst, elems * 4);
  }
  out.activation_bytes = worst;
  if (job != nullptr && job->memory_estimate == MemoryEstimateKind::kForwardFfnFold) {
    // One block's folded FFN weights in float64 plus one row chunk of the
    // Frobenius computation (worker/engine/mechanism.h: memory bound).
    const int64_t chunk = 1024;
    out.activation_bytes += 8 * (3 * shape.d_model * shape.d_mlp + 3 * chunk * shape.d_mlp +
                                 shape.d_model * chunk);
  }
  return out;
}

std::string HumanBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / (1 << 30));
  if (bytes >= (int64_t{1} << 20)) return absl::StrFormat("%.2f MiB", b / (1 << 20));
  if (bytes >= (int64_t{1} << 10)) return absl::StrFormat("%.1f KiB", b / (1 << 10));
  return absl::StrCat(bytes, " B");
}

}  // namespace server
}  // namespace sinkscope
