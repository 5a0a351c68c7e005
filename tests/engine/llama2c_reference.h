// An independent float64 forward of llama2.c checkpoints for the engine's
// tests: plain loops over the file's float32 arrays, written from the format
// description in shared/README.md and llama2.c's run.c (Karpathy, MIT), with
// no code of worker/engine (not its reader, not libtorch). Its numbers are
// the reference the engine's own numbers are compared with (NLL, perplexity,
// eq. 27 from rotated queries and keys).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sinkscope::testing {

/// A llama2.c .bin file read as float64 (layout: shared/README.md). RoPE
/// rotates adjacent pairs (2i, 2i+1) by pos * 10000^(-2i / head_size);
/// RMSNorm eps 1e-5; SiLU-gated MLP; untied head when vocab_size < 0.
class Llama2cFloat64 {
 public:
  /// Reads `path`; false with `error` set when the file is missing or short.
  bool Load(const std::string& path, std::string* error);

  /// What one forward of ids [T] computes.
  struct Trace {
    std::vector<std::vector<double>> logits;  // [T][vocab]
    std::vector<std::vector<double>> rot_q;   // [layer][T * n_heads * head_size] (pos, head, d)
    std::vector<std::vector<double>> rot_k;   // [layer][T * n_kv_heads * head_size]
  };
  /// One forward pass over `ids` (T <= seq_len; ids in [0, vocab)).
  Trace Forward(const std::vector<int64_t>& ids) const;

  /// Sum over t < T-1 of -log softmax(logits[t])[ids[t+1]] (nats) of one
  /// chunk, context starting at ids[0].
  double NllSum(const std::vector<int64_t>& ids) const;

  int64_t dim = 0, hidden = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab = 0, seq_len = 0;
  int64_t head_size() const { return dim / n_heads; }

 private:
  std::vector<double> emb_, rms_att_, wq_, wk_, wv_, wo_, rms_ffn_, w1_, w2_, w3_, rms_final_, wcls_;
};

}  // namespace sinkscope::testing
