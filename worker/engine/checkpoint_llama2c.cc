// llama2.c `.bin` checkpoints (layout in shared/README.md) -> canonical HF names.
//
// The file is mmapped once; after the header and the size check the weights
// are copied into one float32 buffer, and every tensor is a contiguous view of
// it (so a Checkpoint owns its memory and the file can go away). With a
// LoadTarget the views alias the mapping instead, and PlaceTensors copies each
// into its final tensor once, returning the file's pages as it goes.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/checkpoint.h"
#include "common/status_macros.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "llama2.c checkpoints are little-endian; this reader assumes a little-endian host"
#endif

namespace sinkscope {
namespace {

constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

std::string HeaderString(const Llama2cHeader& h) {
  return absl::StrCat("dim=", h.dim, " hidden_dim=", h.hidden_dim, " n_layers=", h.n_layers,
                      " n_heads=", h.n_heads, " n_kv_heads=", h.n_kv_heads,
                      " vocab_size=", h.vocab_size, " seq_len=", h.seq_len);
}

// Accumulates products/sums of non-negative counts; sticky overflow flag.
struct CheckedCount {
  uint64_t value = 0;
  bool overflow = false;
  void Add(std::initializer_list<uint64_t> factors) {
    uint64_t p = 1;
    for (uint64_t f : factors) overflow |= __builtin_mul_overflow(p, f, &p);
    overflow |= __builtin_add_overflow(value, p, &value);
  }
};

absl::Status CheckHeader(const Llama2cHeader& h, const std::string& source) {
  auto bad = [&](const char* field, int32_t v, const char* what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header field ", field, " = ", v, " ",
                                                   what, " (", HeaderString(h), ")"));
  };
  if (h.dim <= 0) return bad("dim", h.dim, "must be positive");
  if (h.hidden_dim <= 0) return bad("hidden_dim", h.hidden_dim, "must be positive");
  if (h.n_layers <= 0) return bad("n_layers", h.n_layers, "must be positive");
  if (h.n_heads <= 0) return bad("n_heads", h.n_heads, "must be positive");
  if (h.n_kv_heads <= 0) return bad("n_kv_heads", h.n_kv_heads, "must be positive");
  if (h.vocab_size == 0 || h.vocab_size == INT32_MIN) {
    return bad("vocab_size", h.vocab_size, "must be non-zero");
  }
  if (h.seq_len <= 0) return bad("seq_len", h.seq_len, "must be positive");
  if (h.dim % h.n_heads != 0) return bad("dim", h.dim, "is not a multiple of n_heads");
  if (h.n_heads % h.n_kv_heads != 0) {
    return bad("n_heads", h.n_heads, "is not a multiple of n_kv_heads");
  }
  if ((h.dim / h.n_heads) % 2 != 0) {
    return bad("dim", h.dim, "/ n_heads (the head size) must be even for RoPE");
  }
  return absl::OkStatus();
}

// With `alias` (the mapping `data` lies in) the floats alias the mapping instead
// of being copied; with `target` they are then placed (PlaceTensors).
absl::StatusOr<Checkpoint> ParseImpl(const uint8_t* data, size_t size, const std::string& source,
                                     std::shared_ptr<FileMapping> alias = nullptr,
                                     const LoadTarget* target = nullptr) {
  if (size < kHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": truncated: file has ", size,
                                                   " bytes, the header needs ", kHeaderBytes));
  }
  Llama2cHeader h;
  std::memcpy(&h, data, kHeaderBytes);
  RETURN_IF_ERROR(CheckHeader(h, source));

  const bool shared = h.vocab_size > 0;
  const uint64_t dim = h.dim, hidden = h.hidden_dim, L = h.n_layers, seq = h.seq_len;
  const uint64_t vocab = shared ? h.vocab_size : -static_cast<int64_t>(h.vocab_size);
  const uint64_t head = dim / h.n_heads;
  const uint64_t kv_dim = head * h.n_kv_heads;

  // Float counts of each array, in file order (0 = skipped array).
  CheckedCount total;
  total.Add({vocab, dim});               // token_embedding
  total.Add({L, dim});                   // rms_att
  total.Add({L, dim, dim});              // wq
  total.Add({L, kv_dim, dim});           // wk
  total.Add({L, kv_dim, dim});           // wv
  total.Add({L, dim, dim});              // wo
  total.Add({L, dim});                   // rms_ffn
  total.Add({L, hidden, dim});           // w1
  total.Add({L, dim, hidden});           // w2
  total.Add({L, hidden, dim});           // w3
  total.Add({dim});                      // rms_final
  total.Add({seq, head / 2});            // freq_cis_real (legacy, skipped)
  total.Add({seq, head / 2});            // freq_cis_imag (legacy, skipped)
  if (!shared) total.Add({vocab, dim});  // wcls
  uint64_t expected_bytes = 0;
  if (total.overflow || __builtin_mul_overflow(total.value, uint64_t{4}, &expected_bytes) ||
      __builtin_add_overflow(expected_bytes, uint64_t{kHeaderBytes}, &expected_bytes) ||
      total.value > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header implies an impossibly large file (", HeaderString(h), ")"));
  }
  if (expected_bytes != size) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, size < expected_bytes ? ": truncated" : ": size mismatch", ": header (",
        HeaderString(h), ") implies ", expected_bytes, " bytes, file has ", size, " bytes"));
  }

  // One copy of every float after the header; tensors are views of it.
  at::Tensor flat;
  if (alias != nullptr) {  // kHeaderBytes is a multiple of 4: the floats are aligned
    std::shared_ptr<FileMapping> keep = alias;
    flat = at::from_blob(
        const_cast<uint8_t*>(data) + kHeaderBytes, {static_cast<int64_t>(total.value)},
        [keep](void*) mutable { keep.reset(); }, at::TensorOptions().dtype(at::kFloat));
  } else {
    flat = at::empty({static_cast<int64_t>(total.value)}, at::kFloat);
    std::memcpy(flat.data_ptr<float>(), data + kHeaderBytes, total.value * sizeof(float));
  }

  Checkpoint ck;
  ck.format = "llama2c";
  ck.path = source;
  ModelConfig& c = ck.config;
  c.model_type = "llama";
  c.d_model = h.dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.d_head = static_cast<int64_t>(head);
  c.d_ffn = h.hidden_dim;
  c.d_vocab = static_cast<int64_t>(vocab);
  c.n_ctx = h.seq_len;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.rope_layout = RopeLayout::kAdjacentPairs;
  c.norm_placement = NormPlacement::kPre;
  c.tied_embeddings = shared;
  c.bos_token_id = 1;
  c.eos_token_id = 2;

  int64_t offset = 0;
  // Takes the next array of `shape` from the flat buffer.
  auto take = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    at::Tensor t = flat.narrow(0, offset, n).view(shape);
    offset += n;
    return t;
  };
  // Takes a stacked [L, ...] array and names layer l's slice `model.layers.l.<suffix>`.
  auto take_layers = [&](std::vector<int64_t> per_layer, const std::string& suffix) {
    per_layer.insert(per_layer.begin(), c.n_layers);
    at::Tensor stacked = take(per_layer);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      ck.tensors[absl::StrCat("model.layers.", l, ".", suffix)] = stacked.select(0, l);
    }
  };
  const int64_t d = c.d_model, f = c.d_ffn, kv = static_cast<int64_t>(kv_dim);
  ck.tensors["model.embed_tokens.weight"] = take({c.d_vocab, d});
  take_layers({d}, "input_layernorm.weight");
  take_layers({d, d}, "self_attn.q_proj.weight");
  take_layers({kv, d}, "self_attn.k_proj.weight");
  take_layers({kv, d}, "self_attn.v_proj.weight");
  take_layers({d, d}, "self_attn.o_proj.weight");
  take_layers({d}, "post_attention_layernorm.weight");
  take_layers({f, d}, "mlp.gate_proj.weight");
  take_layers({d, f}, "mlp.down_proj.weight");
  take_layers({f, d}, "mlp.up_proj.weight");
  ck.tensors["model.norm.weight"] = take({d});
  take({static_cast<int64_t>(seq), static_cast<int64_t>(head / 2)});  // freq_cis_real
  take({static_cast<int64_t>(seq), static_cast<int64_t>(head / 2)});  // freq_cis_imag
  if (!shared) ck.tensors["lm_head.weight"] = take({c.d_vocab, d});

  flat = at::Tensor();
  RETURN_IF_ERROR(ValidateCheckpointTensors(c, ck.tensors, source, /*check_values=*/target == nullptr));
  if (target != nullptr) {
    std::vector<std::shared_ptr<FileMapping>> mappings;
    if (alias != nullptr) mappings.push_back(alias);
    RETURN_IF_ERROR(PlaceTensors(&ck.tensors, *target, mappings, source));
    ck.placed = true;
  }
  return ck;
}

}  // namespace

absl::StatusOr<Checkpoint> ParseLlama2c(const uint8_t* data, size_t size,
                                        const std::string& source) {
  try {
    return ParseImpl(data, size, source);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(source, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(source, ": ", e.what()));
  }
}

absl::StatusOr<Checkpoint> LoadLlama2c(const std::string& path) {
  ASSIGN_OR_RETURN(std::shared_ptr<FileMapping> file, FileMapping::Open(path));
  static const uint8_t kEmpty[1] = {0};
  return ParseLlama2c(file->size() > 0 ? file->data() : kEmpty, file->size(), path);
}

absl::StatusOr<Checkpoint> LoadLlama2c(const std::string& path, const LoadTarget& target) {
  ASSIGN_OR_RETURN(std::shared_ptr<FileMapping> file, FileMapping::Open(path));
  static const uint8_t kEmpty[1] = {0};
  const bool empty = file->size() == 0;
  try {
    return ParseImpl(empty ? kEmpty : file->data(), file->size(), path, empty ? nullptr : file,
                     &target);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what()));
  }
}

}  // namespace sinkscope
