// GGUF checkpoints (llama.cpp's format): metadata -> ModelConfig, llama.cpp
// tensor names -> the canonical HF names, quantized blocks -> float32.
//
// Dequantization follows ggml-quants.c (dequantize_row_q8_0 / _q4_0 / _q4_K)
// operation for operation; this file is compiled with -ffp-contract=off so
// `d * q - m` is never fused and the values equal ggml's and gguf-py's bitwise.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
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
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/engine/checkpoint.h"
#include "common/gguf.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

float Fp16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

/// Architectures read: their tensor names are llama.cpp's LLM_ARCH tables.
struct GgufArch {
  const char* name;
  const char* model_type;  // HF model_type
  bool permuted_qk;        // convert_hf_to_gguf.py permutes W_Q/W_K rows (LlamaModel.permute)
  bool qkv_bias;
  bool qk_norm;
};
constexpr GgufArch kArchs[] = {
    {"llama", "llama", true, false, false},
    {"qwen2", "qwen2", false, true, false},
    {"qwen3", "qwen3", false, false, true},
};

/// llama.cpp tensor name -> canonical HF name; "" when unknown.
std::string HfName(const std::string& g) {
  static const std::map<std::string, std::string> kTop = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"}};
  auto top = kTop.find(g);
  if (top != kTop.end()) return top->second;
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_q_norm.weight", "self_attn.q_norm.weight"},
      {"attn_k_norm.weight", "self_attn.k_norm.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  if (!absl::StartsWith(g, "blk.")) return "";
  const size_t dot = g.find('.', 4);
  if (dot == std::string::npos) return "";
  int64_t layer = 0;
  if (!absl::SimpleAtoi(g.substr(4, dot - 4), &layer) || layer < 0) return "";
  auto it = kLayer.find(g.substr(dot + 1));
  if (it == kLayer.end()) return "";
  return absl::StrCat("model.layers.", layer, ".", it->second);
}

}  // namespace

absl::Status DequantizeGgml(uint32_t type, const uint8_t* src, int64_t n, float* y) {
  switch (type) {
    case kGgmlQ8_0: {  // block_q8_0: half d; int8 qs[32]
      if (n % 32) break;
      for (int64_t b = 0; b < n / 32; ++b, src += 34) {
        const float d = Fp16(src);
        for (int j = 0; j < 32; ++j) *y++ = static_cast<int8_t>(src[2 + j]) * d;
      }
      return absl::OkStatus();
    }
    case kGgmlQ4_0: {  // block_q4_0: half d; uint8 qs[16] (low nibbles first)
      if (n % 32) break;
      for (int64_t b = 0; b < n / 32; ++b, src += 18, y += 32) {
        const float d = Fp16(src);
        const uint8_t* qs = src + 2;
        for (int j = 0; j < 16; ++j) {
          const int x0 = (qs[j] & 0x0F) - 8;
          const int x1 = (qs[j] >> 4) - 8;
          y[j] = x0 * d;
          y[j + 16] = x1 * d;
        }
      }
      return absl::OkStatus();
    }
    case kGgmlQ4_K: {  // block_q4_K: half d, dmin; uint8 scales[12] (6-bit); uint8 qs[128]
      if (n % 256) break;
      for (int64_t b = 0; b < n / 256; ++b, src += 144) {
        const float d = Fp16(src);
        const float min = Fp16(src + 2);
        const uint8_t* scales = src + 4;
        const uint8_t* q = src + 16;
        auto scale_min = [scales](int j, uint8_t* sc, uint8_t* m) {  // get_scale_min_k4
          if (j < 4) {
            *sc = scales[j] & 63;
            *m = scales[j + 4] & 63;
          } else {
            *sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
            *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
          }
        };
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < 256; j += 64) {
          scale_min(is + 0, &sc, &m);
          const float d1 = d * sc;
          const float m1 = min * m;
          scale_min(is + 1, &sc, &m);
          const float d2 = d * sc;
          const float m2 = min * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
          q += 32;
          is += 2;
        }
      }
      return absl::OkStatus();
    }
    default:
      return absl::UnimplementedError(absl::StrCat("ggml type ", GgmlTypeName(type), " is not dequantized"));
  }
  return absl::InvalidArgumentError(absl::StrCat(n, " elements are not whole ", GgmlTypeName(type), " blocks"));
}

absl::StatusOr<Checkpoint> ParseGgufCheckpoint(const uint8_t* data, size_t size,
                                               const std::string& source, const LoadTarget* target,
                                               const FileMapping* mapping) {
  ASSIGN_OR_RETURN(GgufFile f, ParseGguf(data, size, source));
  auto fail = [&](const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", problem));
  };
  const GgufValue* arch_v = f.Find("general.architecture");
  if (arch_v == nullptr || arch_v->type != GgufType::kString) return fail("no general.architecture string");
  const GgufArch* arch = nullptr;
  for (const GgufArch& a : kArchs) {
    if (arch_v->string == a.name) arch = &a;
  }
  if (arch == nullptr) {
    return absl::UnimplementedError(absl::StrCat(source, ": general.architecture \"", arch_v->string,
                                                 "\" is not supported (llama, qwen2, qwen3)"));
  }
  const std::string p = absl::StrCat(arch->name, ".");
  auto get_int = [&](const std::string& key, bool required, int64_t def) -> absl::StatusOr<int64_t> {
    const GgufValue* v = f.Find(p + key);
    if (v == nullptr) {
      if (required) return fail(absl::StrCat("missing metadata ", p, key));
      return def;
    }
    if (!v->is_integer() || v->integer <= 0 || v->integer > (int64_t{1} << 40)) {
      return fail(absl::StrCat("metadata ", p, key, " must be a positive integer"));
    }
    return v->integer;
  };
  auto get_float = [&](const std::string& key, double def) -> absl::StatusOr<double> {
    const GgufValue* v = f.Find(p + key);
    if (v == nullptr) return def;
    if (v->type != GgufType::kFloat32 && v->type != GgufType::kFloat64) {
      return fail(absl::StrCat("metadata ", p, key, " must be a float"));
    }
    return v->number;
  };
  Checkpoint ck;
  ck.path = source;
  ModelConfig& c = ck.config;
  c.model_type = arch->model_type;
  c.rope_layout = RopeLayout::kRotateHalves;  // W_Q/W_K un-permuted below
  c.qkv_bias = arch->qkv_bias;
  c.qk_norm = arch->qk_norm;
  ASSIGN_OR_RETURN(c.d_model, get_int("embedding_length", true, 0));
  ASSIGN_OR_RETURN(c.n_layers, get_int("block_count", true, 0));
  ASSIGN_OR_RETURN(c.d_ffn, get_int("feed_forward_length", true, 0));
  ASSIGN_OR_RETURN(c.n_heads, get_int("attention.head_count", true, 0));
  ASSIGN_OR_RETURN(c.n_kv_heads, get_int("attention.head_count_kv", false, c.n_heads));
  ASSIGN_OR_RETURN(c.d_head, get_int("attention.key_length", false, c.d_model / c.n_heads));
  ASSIGN_OR_RETURN(c.n_ctx, get_int("context_length", false, 2048));
  ASSIGN_OR_RETURN(c.norm_eps, get_float("attention.layer_norm_rms_epsilon", 1e-5));
  ASSIGN_OR_RETURN(c.rope_theta, get_float("rope.freq_base", 10000.0));
  if (const GgufValue* rd = f.Find(p + "rope.dimension_count"); rd && rd->is_integer() && rd->integer != c.d_head) {
    return absl::UnimplementedError(absl::StrCat(source, ": partial RoPE (", p, "rope.dimension_count ",
                                                 rd->integer, " of head size ", c.d_head, ") is not supported"));
  }
  if (const GgufValue* rs = f.Find(p + "rope.scaling.type"); rs && rs->type == GgufType::kString &&
                                                             rs->string != "none") {
    return absl::UnimplementedError(absl::StrCat(source, ": ", p, "rope.scaling.type \"", rs->string,
                                                 "\" is not supported"));
  }
  if (const GgufValue* v = f.Find("tokenizer.ggml.bos_token_id"); v && v->is_integer()) c.bos_token_id = v->integer;
  if (const GgufValue* v = f.Find("tokenizer.ggml.eos_token_id"); v && v->is_integer()) c.eos_token_id = v->integer;

  std::map<std::string, int> dequantized;  // ggml type name -> tensor count
  bool has_output = false;
  try {
    for (const GgufTensorInfo& t : f.tensors) {
      const std::string where = absl::StrCat(source, ": tensor ", t.name, ": ");
      if (t.name == "rope_freqs.weight") {
        return absl::UnimplementedError(where + "Llama 3 RoPE frequency factors are not supported");
      }
      const std::string hf = HfName(t.name);
      if (hf.empty()) return absl::InvalidArgumentError(absl::StrCat(where, "not a ", arch->name, " tensor name"));
      if (hf == "lm_head.weight") has_output = true;
      std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());  // ne[0] is the last torch dim
      const uint8_t* src = data + f.data_offset + t.offset;
      at::Tensor out;
      // Placed: raw F32/F16/BF16 bytes are cast straight into the final tensor
      // (one copy); quantized ones are dequantized into one float32 tensor first.
      auto raw = [&](at::ScalarType file_type) {
        at::Tensor view;
        if (reinterpret_cast<uintptr_t>(src) % c10::elementSize(file_type) != 0) {
          view = at::empty(shape, at::TensorOptions().dtype(file_type));  // misaligned: copy first
          std::memcpy(view.data_ptr(), src, t.nbytes);
          if (target == nullptr) return view;
        } else {
          view = at::from_blob(const_cast<uint8_t*>(src), shape, at::TensorOptions().dtype(file_type));
          if (target == nullptr) return view.clone();
        }
        at::Tensor placed = at::empty(shape, at::TensorOptions().dtype(target->dtype).device(target->device));
        placed.copy_(view);
        return placed;
      };
      switch (t.type) {
        case kGgmlF32:
          out = raw(at::kFloat);
          break;
        case kGgmlF16:
          out = raw(at::kHalf);
          break;
        case kGgmlBF16:
          out = raw(at::kBFloat16);
          break;
        case kGgmlQ8_0:
        case kGgmlQ4_0:
        case kGgmlQ4_K: {
          out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
          absl::Status st = DequantizeGgml(t.type, src, t.numel(), out.data_ptr<float>());
          if (!st.ok()) return absl::InvalidArgumentError(where + std::string(st.message()));
          ++dequantized[GgmlTypeName(t.type)];
          if (target != nullptr) out = out.to(target->device, target->dtype);
          break;
        }
        default:
          return absl::UnimplementedError(absl::StrCat(
              where, "ggml type ", GgmlTypeName(t.type),
              " is not supported (F32, F16, BF16, and Q8_0, Q4_0, Q4_K dequantized at load)"));
      }
      ck.tensors[hf] = out;
      if (mapping != nullptr) mapping->ReleasePages(src, t.nbytes);
    }
    if (arch->permuted_qk) {
      // Inverse of convert_hf_to_gguf.py's LlamaModel.permute: rows were
      // reshape(n_head, 2, d_head/2, ...).swapaxes(1, 2); undo with the transpose.
      const int64_t dh = c.d_head;
      auto unpermute = [dh](const at::Tensor& w, int64_t n_head) {
        const int64_t rest = w.numel() / (n_head * dh);
        return w.reshape({n_head, dh / 2, 2, rest}).transpose(1, 2).reshape(w.sizes()).contiguous();
      };
      for (int64_t l = 0; l < c.n_layers; ++l) {
        const std::string lp = absl::StrCat("model.layers.", l, ".self_attn.");
        for (auto [name, heads] : {std::pair{"q_proj.weight", c.n_heads}, std::pair{"k_proj.weight", c.n_kv_heads}}) {
          auto it = ck.tensors.find(lp + name);
          if (it == ck.tensors.end()) continue;
          if (dh % 2 != 0 || it->second.numel() % (heads * dh) != 0) {
            return fail(absl::StrCat("tensor ", lp, name, ": shape does not fit ", heads, " heads of ", dh));
          }
          it->second = unpermute(it->second, heads);
        }
      }
    }
  } catch (const c10::Error& e) {
    return fail(absl::StrCat("reading tensors: ", e.what_without_backtrace()));
  }
  auto embed = ck.tensors.find("model.embed_tokens.weight");
  if (embed == ck.tensors.end() || embed->second.dim() != 2) return fail("tensor token_embd.weight: missing or not 2-D");
  c.d_vocab = embed->second.size(0);
  c.tied_embeddings = !has_output;
  RETURN_IF_ERROR(c.Validate());
  ck.format = "gguf";
  if (!dequantized.empty()) {
    std::vector<std::string> parts;
    for (const auto& [type, count] : dequantized) parts.push_back(absl::StrCat(type, " (", count, " tensors)"));
    ck.dequantized_from = absl::StrJoin(parts, ", ");
    ck.format = absl::StrCat("gguf, weights dequantized to float32 at load from ", ck.dequantized_from);
  }
  RETURN_IF_ERROR(ValidateCheckpointTensors(c, ck.tensors, source));
  ck.placed = target != nullptr;
  return ck;
}

namespace {

absl::StatusOr<Checkpoint> LoadGgufImpl(const std::string& path, const LoadTarget* target) {
  absl::StatusOr<std::shared_ptr<FileMapping>> map = FileMapping::Open(path);
  if (!map.ok()) {
    if (absl::IsNotFound(map.status())) return map.status();
    return absl::InvalidArgumentError(std::string(map.status().message()));
  }
  if ((*map)->size() == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty or unreadable file"));
  // The tensors are copies; the mapping goes when this returns.
  return ParseGgufCheckpoint((*map)->data(), (*map)->size(), path, target, map->get());
}

}  // namespace

absl::StatusOr<Checkpoint> LoadGguf(const std::string& path) { return LoadGgufImpl(path, nullptr); }

absl::StatusOr<Checkpoint> LoadGguf(const std::string& path, const LoadTarget& target) {
  return LoadGgufImpl(path, &target);
}

}  // namespace sinkscope
