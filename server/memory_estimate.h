// Memory a job needs on a worker, estimated before it runs (server side, no
// torch): the model's weights in the job's dtype plus the activations of one
// batch (sequences of equal length are batched).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/catalog.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// Shape of a catalog model, read from the llama2.c header or config.json.
struct ModelShape {
  int64_t d_model = 0, d_mlp = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab = 0, n_ctx = 0;
  bool shared_head = true;
  /// Exact parameter count from the family table (ParameterCount) when the
  /// config parsed; 0 = estimate from the fields above (llama2.c headers).
  int64_t n_params = 0;
  /// Parameter count: n_params, else computed from the shape.
  int64_t NumParams() const;
};

/// Reads the shape of `entry`'s checkpoint.
absl::StatusOr<ModelShape> ReadModelShape(const CatalogEntry& entry);

/// A job's estimated need.
struct MemoryEstimate {
  int64_t weight_bytes = 0;
  int64_t activation_bytes = 0;
  int64_t total() const { return weight_bytes + activation_bytes; }
};

/// Bytes per element of "float32" / "bfloat16" / "float16".
int DtypeBytes(const std::string& dtype);

/// Weights: NumParams x dtype size, the figure the worker's model cache
/// charges (Model::weight_bytes: the same element count, ParameterCount for HF
/// and llama2.c, every GGUF tensor's) and, since a load is placed at its target
/// (LoadTarget: one copy per weight, file pages returned chunk by chunk), also
/// the load's peak above the runtime's baseline, within a few MiB. Activations, for the largest batch
/// (B sequences of T tokens; text counts one token per byte + BOS, an upper
/// bound), float32: a scan keeps ~8 [B, T, d_model] tensors live plus the MLP
/// hidden [B, T, d_mlp] (x3: gate, up, act), the logits [B, T, vocab] and the
/// eager attention scores of one layer [B, heads, T, T] (x2); the attention
/// statistics (sinks, self-attention profile: MemoryEstimateKind::
/// kAttentionStatistics) are charged AttentionStatisticsElements instead, O(T);
/// any other job type reads attention patterns and is charged 3 more
/// [B, heads, T, T].
MemoryEstimate EstimateJobMemory(const ModelShape& shape, const std::string& dtype,
                                 const v1::JobRequest& request);

/// float32 elements the O(T) attention statistics of one layer need for B
/// sequences of T tokens and `heads` query heads, beyond the forward pass:
/// their query chunks (common/attention_chunks.h) and [B, heads, T]
/// accumulators (worker/engine/attention.h).
int64_t AttentionStatisticsElements(int64_t batch, int64_t heads, int64_t T);

/// "1.2 MiB"-style rendering.
std::string HumanBytes(int64_t bytes);

}  // namespace server
}  // namespace sinkscope
