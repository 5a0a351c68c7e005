// Checkpoint readers: llama2.c `.bin`, Hugging Face safetensors directories
// (one file or index + shards) and GGUF files (dequantised tensor by tensor).
//
// Both produce a ModelConfig and a map of CPU tensors under the canonical
// (HF Llama) names below, in the file's dtype. Safetensors data are memory-
// mapped, not read: the tensors alias the mapping, which they keep alive.
//
// Canonical names (l = 0..n_layers-1):
//   model.embed_tokens.weight                   [d_vocab, d_model]
//   model.embed_positions.weight                [n_ctx, d_model]  (learned positions, GPT-2)
//   every norm has .bias too when norm_kind is LayerNorm (GPT-2); o_proj.bias
//   when o_bias; mlp.*.bias when mlp_bias; no gate_proj when the MLP is not gated;
//   q_norm/k_norm are [n_heads*d_head] / [n_kv_heads*d_head] when qk_norm_full_width.
// Files of other families use their own names (family table); the loaders
// validate those, then CanonicalizeTensors renames them to these.
//   model.layers.l.input_layernorm.weight       [d_model]  pre-attn norm (kPre, kSandwich)
//   model.layers.l.self_attn.{q,k,v}_proj.weight [n_heads*d_head | n_kv_heads*d_head, d_model]
//   model.layers.l.self_attn.{q,k,v}_proj.bias   (qkv_bias only)
//   model.layers.l.self_attn.{q,k}_norm.weight   [d_head]   (qk_norm only)
//   model.layers.l.self_attn.o_proj.weight      [d_model, n_heads*d_head]
//   model.layers.l.post_attention_layernorm.weight [d_model]
//        kPre: the pre-MLP norm (Llama); kSandwich/kPost: norm of the attention output
//   model.layers.l.pre_feedforward_layernorm.weight  [d_model]  (kSandwich only)
//   model.layers.l.post_feedforward_layernorm.weight [d_model]  (kSandwich, kPost)
//   model.layers.l.mlp.{gate,up}_proj.weight    [d_ffn, d_model]
//   model.layers.l.mlp.down_proj.weight         [d_model, d_ffn]
//   model.norm.weight                           [d_model]
//   lm_head.weight                              [d_vocab, d_model] (absent when tied)
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"
#include "worker/engine/config.h"
#include "worker/engine/file_mapping.h"

namespace sinkscope {

/// Where the loaders place the weights: the device and dtype the model will run
/// in (Model::Create's). With a target, a load copies each tensor once, from the
/// file's pages into its final tensor, chunk by chunk, and returns each chunk's
/// file pages to the kernel as it goes: peak memory is the weights plus one
/// chunk, on cuda the host holds one chunk at a time.
struct LoadTarget {
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;
};

/// A loaded checkpoint: config + named tensors.
struct Checkpoint {
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;
  std::string format;  // "llama2c", "hf-safetensors", "gguf" (+ what was dequantized)
  std::string path;
  /// GGUF: the quantized ggml types dequantized to float32 at load, with
  /// tensor counts, e.g. "Q8_0 (14 tensors)"; "" when none.
  std::string dequantized_from;
  /// True when the tensors were placed at load (a LoadTarget): each is an
  /// owned, contiguous tensor of the target's dtype on its device, aliasing no
  /// file, and Model::Create adopts it without a copy. False: CPU tensors in
  /// the file's dtype (HF, llama2.c: aliasing a mapping) or float32 (GGUF).
  bool placed = false;
};

/// Reads a llama2.c checkpoint (layout in shared/README.md; negative vocab_size
/// = separate output head). RoPE layout is kAdjacentPairs. Errors name the file
/// and the problem: truncated file, non-positive header field, size mismatch.
absl::StatusOr<Checkpoint> LoadLlama2c(const std::string& path);
/// The same, placed at `target` (see LoadTarget): the floats alias the mapped
/// file until each is copied into its final tensor.
absl::StatusOr<Checkpoint> LoadLlama2c(const std::string& path, const LoadTarget& target);

/// Parses a whole llama2.c checkpoint held in memory (`size` bytes at `data`);
/// the tensors are copies. `source` names it in messages. Used by LoadLlama2c,
/// tests and the fuzzer.
absl::StatusOr<Checkpoint> ParseLlama2c(const uint8_t* data, size_t size,
                                        const std::string& source);

/// Reads a HF directory: config.json + model.safetensors or
/// model.safetensors.index.json shards; F32/F16/BF16 tensors, mmapped.
/// Names as the Hub publishes them are accepted (StoredTensorName: GPT-2's bare
/// names; mask / RoPE buffers and Gemma 3's vision tower skipped unread).
/// RoPE layout kRotateHalves. Errors name the file, tensor and problem.
absl::StatusOr<Checkpoint> LoadHfDirectory(const std::string& dir);
/// The same, placed at `target` (see LoadTarget): names and shapes are checked
/// before any weight byte is read; finiteness is checked chunk by chunk as the
/// bytes are copied into their final tensors.
absl::StatusOr<Checkpoint> LoadHfDirectory(const std::string& dir, const LoadTarget& target);

/// Reads a GGUF checkpoint (llama.cpp; architectures llama, qwen2, qwen3):
/// metadata `<arch>.*` -> ModelConfig, tensor names (token_embd, blk.N.attn_q,
/// ..., output_norm, output) -> the canonical names above, ggml dims reversed
/// into torch shapes, llama's W_Q/W_K row permutation (convert_hf_to_gguf.py)
/// undone. F32/F16/BF16 kept; Q8_0, Q4_0, Q4_K dequantized to float32 (the
/// format string and `dequantized_from` say so). Errors name the file, the
/// tensor and the problem: bad magic or version, truncated data, a quant type
/// not supported (named), an unknown tensor name, missing metadata.
absl::StatusOr<Checkpoint> LoadGguf(const std::string& path);
/// The same, placed at `target` (see LoadTarget): tensor by tensor, each is
/// dequantized (or copied) and then cast into its final tensor before the next
/// is read; at most one tensor's float32 copy exists besides the weights.
absl::StatusOr<Checkpoint> LoadGguf(const std::string& path, const LoadTarget& target);
/// The same over a whole file held in memory; tensors are copies. With a
/// `target` they are placed there; with `mapping` (the mapping `data` lies in)
/// each tensor's file pages are returned to the kernel once it is read.
absl::StatusOr<Checkpoint> ParseGgufCheckpoint(const uint8_t* data, size_t size,
                                               const std::string& source,
                                               const LoadTarget* target = nullptr,
                                               const FileMapping* mapping = nullptr);
/// Dequantizes `n` elements of ggml type Q8_0, Q4_0 or Q4_K at `src` into
/// float32 `y`, exactly as ggml-quants.c's dequantize_row_*. Errors:
/// Unimplemented for other types, InvalidArgument when n is not whole blocks.
absl::Status DequantizeGgml(uint32_t type, const uint8_t* src, int64_t n, float* y);

/// Dispatches on the path: a directory is HF, a file ending in .bin llama2.c,
/// .gguf GGUF.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path);
/// The same, placed at `target` (see LoadTarget): what the worker and
/// sinkscope-run use, so that a load peaks at the weights' size.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path, const LoadTarget& target);

/// Checks that every tensor the config implies (under its family's file names,
/// ExpectedTensors) is present with the right shape and finite values, and that no unexpected tensor is left. `source`
/// names the checkpoint in messages. Called by the loaders. With
/// `check_values` false only names, shapes and dtypes are checked (no weight
/// byte is read): PlaceTensors checks the values as it copies them.
absl::Status ValidateCheckpointTensors(const ModelConfig& config,
                                       const std::map<std::string, at::Tensor>& tensors,
                                       const std::string& source, bool check_values = true);

/// Copies every tensor of `tensors` into a new contiguous tensor of
/// `target.dtype` on `target.device`, in file order (by data address), in
/// 4 MiB chunks: each chunk is checked for NaN / Inf (InvalidArgument naming
/// `source` and the tensor, as ValidateCheckpointTensors) and copied (and
/// cast); on the CPU the chunks run on the intra-op threads. Where the source
/// lies in one of `mappings`, its pages are returned to the kernel (every
/// 64 MiB on the CPU, every chunk on another device) and, when the mappings
/// exceed half of MemAvailable, dropped from the page cache too. Each map
/// entry is replaced as soon as its copy is done (dropping its alias of the
/// file). Peak memory: the placed weights plus 64 MiB of file pages; on cuda
/// the host holds one chunk at a time.
absl::Status PlaceTensors(std::map<std::string, at::Tensor>* tensors, const LoadTarget& target,
                          const std::vector<std::shared_ptr<FileMapping>>& mappings,
                          const std::string& source);

/// Renames and reshapes validated file tensors into the canonical names above
/// (family table, common/model_config.h): GPT-2's Conv1D weights are transposed
/// and its fused c_attn split into q, k, v; GPT-NeoX's per-head fused
/// query_key_value split likewise. A no-op for Llama-named families.
/// Errors: InvalidArgument naming `source` and a missing tensor.
absl::Status CanonicalizeTensors(const ModelConfig& config,
                                 std::map<std::string, at::Tensor>* tensors,
                                 const std::string& source);

/// Parses a safetensors header (format spec: 8-byte little-endian header
/// length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, data).
/// `data` must hold the whole file. Exposed for tests and fuzzing.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // offsets into the data section
};
absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(const uint8_t* data,
                                                                     size_t size,
                                                                     const std::string& source,
                                                                     size_t* data_start);

/// Writes tensors (float32/float16/bfloat16, contiguous CPU) as a
/// .safetensors file. Used by tests and fixture generators.
absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, at::Tensor>& tensors);

/// Writes `config` as a HF config.json (the inverse of ParseHfConfig).
absl::Status WriteHfConfig(const std::string& path, const ModelConfig& config);

}  // namespace sinkscope
