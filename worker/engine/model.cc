// The instrumented decoder forward pass. Shapes use TransformerLens names:
// [batch, pos, d_model], [batch, pos, head, d_head], [batch, head, q_pos, k_pos].
#include "worker/engine/model.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/full.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/attention.h"
#include "common/status_macros.h"

#include <ATen/ops/scaled_dot_product_attention.h>

namespace sinkscope {
namespace {

/// Signals cancellation from deep inside the forward pass.
struct CancelledError {};

/// RMSNorm computed in float32 (gain included), cast back to the model dtype.
/// x: [..., d]; weight: [d]. An undefined weight means no gain (paper eq. 23).
/// The gain is (gain_offset + weight): Gemma stores w zero-centred, gain 1 + w.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps,
                   double gain_offset = 0.0) {
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor normed = x32 * (x32.pow(2).mean({-1}, /*keepdim=*/true) + eps).rsqrt();
  if (weight.defined()) {
    at::Tensor g = weight.to(at::kFloat);
    if (gain_offset != 0.0) g = g + gain_offset;
    normed = normed * g;
  }
  return normed.to(x.scalar_type());
}

/// The config's norm (RMSNorm, LayerNorm with bias, or DynamicTanh
/// gamma * tanh(alpha * x) + beta), float32 inside.
/// x: [..., d]; weight (gamma), bias (beta): [d] (bias undefined for RMSNorm); alpha: [1] (DyT).
at::Tensor Norm(const ModelConfig& c, const at::Tensor& x, const at::Tensor& weight,
                const at::Tensor& bias, const at::Tensor& alpha) {
  if (c.norm_kind == NormKind::kRms) return RmsNorm(x, weight, c.norm_eps, c.norm_gain_offset);
  if (c.norm_kind == NormKind::kDyT) {
    at::Tensor y = (x.to(at::kFloat) * alpha.to(at::kFloat)).tanh() * weight.to(at::kFloat);
    return (y + bias.to(at::kFloat)).to(x.scalar_type());
  }
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor w = weight.defined() ? weight.to(at::kFloat) : at::Tensor();
  if (w.defined() && c.norm_gain_offset != 0.0) w = w + c.norm_gain_offset;
  at::Tensor b = bias.defined() ? bias.to(at::kFloat) : at::Tensor();
  return at::layer_norm(x32, {x.size(-1)}, w, b, c.norm_eps).to(x.scalar_type());
}

/// The MLP activation (silu; gelu exact; gelu tanh approximation).
at::Tensor Activate(Activation a, const at::Tensor& x) {
  switch (a) {
    case Activation::kSilu:
      return at::silu(x);
    case Activation::kGelu:
      return at::gelu(x);
    case Activation::kGeluTanh:
      return at::gelu(x, "tanh");
    case Activation::kRelu:
      return at::relu(x);
  }
  return x;
}

/// c tanh(x / c), the Gemma 2 soft-cap; c <= 0 = identity.
at::Tensor SoftCap(const at::Tensor& x, double cap) {
  if (cap <= 0) return x;
  return (x / cap).tanh() * cap;
}

/// RoPE inverse frequencies [rotary_dim/2] (float64 math; rotary_dim = d_head unless
/// partial rotary), base `theta`, with Llama 3 / linear scaling `s`.
std::vector<double> RopeInvFreq(const ModelConfig& c, double theta, const RopeScaling& s) {
  const int64_t dim = c.RotaryDim(), half = dim / 2;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    inv[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
  }
  if (s.rope_type == "linear" && s.factor > 0) {
    for (double& f : inv) f /= s.factor;
  } else if (s.rope_type == "llama3") {
    // HF transformers _compute_llama3_parameters.
    const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
  }
  return inv;
}

/// Applies RoPE to x: [batch, pos, head, d_head]; cos/sin: [pos, rotary_dim/2] float32.
/// Partial rotary (rotary_dim < d_head, GPT-NeoX): the first rotary_dim coordinates
/// rotate, the rest pass unchanged.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     RopeLayout layout) {
  const int64_t T = x.size(1), D = x.size(3), half = cos.size(1), rot = 2 * half;
  at::Tensor c = cos.narrow(0, 0, T).view({1, T, 1, half});
  at::Tensor s = sin.narrow(0, 0, T).view({1, T, 1, half});
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor xr = rot == D ? x32 : x32.narrow(3, 0, rot);
  at::Tensor out;
  if (layout == RopeLayout::kRotateHalves) {
    at::Tensor x1 = xr.narrow(3, 0, half), x2 = xr.narrow(3, half, half);
    out = at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, 3);
  } else {
    at::Tensor pairs = xr.unflatten(3, {half, 2});
    at::Tensor x0 = pairs.select(4, 0), x1 = pairs.select(4, 1);
    out = at::stack({x0 * c - x1 * s, x0 * s + x1 * c}, 4).flatten(3);
  }
  if (rot < D) out = at::cat({out, x32.narrow(3, rot, D - rot)}, 3);
  return out.to(x.scalar_type());
}

/// Repeats kv heads for GQA: [batch, kv_head, pos, d_head] -> [batch, head, pos, d_head].
at::Tensor RepeatKv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const auto B = x.size(0), KV = x.size(1), T = x.size(2), D = x.size(3);
  return x.unsqueeze(2).expand({B, KV, n_rep, T, D}).reshape({B, KV * n_rep, T, D});
}

}  // namespace

absl::StatusOr<c10::ScalarType> ParseDtype(const std::string& name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "fp32" || n == "f32" || n == "float") return at::kFloat;
  if (n == "bfloat16" || n == "bf16") return at::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "f16" || n == "half") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "' (expected float32, bfloat16 or float16)"));
}

std::string DtypeName(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return c10::toString(dtype);
  }
}

absl::StatusOr<c10::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "cuda" || absl::StartsWith(name, "cuda:")) {
    int64_t index = 0;
    if (name.size() > 5 && !absl::SimpleAtoi(name.substr(5), &index)) {
      return absl::InvalidArgumentError(absl::StrCat("bad device '", name, "'"));
    }
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", name, "' requested but this libtorch has no CUDA device"));
    }
    const int n = at::detail::getCUDAHooks().getNumGPUs();
    if (index < 0 || index >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", name, "' out of range: ", n, " CUDA device(s)"));
    }
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", name, "' (expected cpu, cuda or cuda:N)"));
}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const Checkpoint& ckpt, c10::Device device,
                                                     c10::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported model dtype ", DtypeName(dtype)));
  }
  RETURN_IF_ERROR(ckpt.config.Validate());
  std::unique_ptr<Model> m(new Model());
  m->config_ = ckpt.config;
  m->device_ = device;
  m->dtype_ = dtype;
  for (std::string& name : m->HookNames()) m->hook_names_.insert(std::move(name));
  try {
    for (const auto& [name, t] : ckpt.tensors) {
      // Placed at load (LoadTarget): owned and final, adopted without a copy.
      at::Tensor w = t.to(device, dtype).contiguous();
      // Otherwise never alias a memory map that the checkpoint may release.
      if (!ckpt.placed && w.data_ptr() == t.data_ptr()) w = w.clone();
      m->weight_bytes_ += w.numel() * w.element_size();
      m->n_params_ += w.numel();
      m->weights_[name] = w;
    }
    // One RoPE code path at run time: adjacent-pair checkpoints (llama2.c) get
    // their W_Q/W_K rows permuted into the rotate-halves layout exactly as HF's
    // conversion script does; attention scores are unchanged (only the order
    // of d_head coordinates in hook_q/hook_k differs from the file).
    if (m->config_.rope_layout == RopeLayout::kAdjacentPairs) {
      const int64_t dh = m->config_.d_head;
      auto permute = [dh](const at::Tensor& w, int64_t n_head) {
        const int64_t rest = w.numel() / (n_head * dh);
        return w.reshape({n_head, dh / 2, 2, rest}).transpose(1, 2).reshape(w.sizes()).contiguous();
      };
      for (int64_t l = 0; l < m->config_.n_layers; ++l) {
        const std::string p = absl::StrCat("model.layers.", l, ".self_attn.");
        for (const char* n : {"q_proj.weight", "q_proj.bias"}) {
          if (m->weights_.count(p + n)) m->weights_[p + n] = permute(m->weights_[p + n], m->config_.n_heads);
        }
        for (const char* n : {"k_proj.weight", "k_proj.bias"}) {
          if (m->weights_.count(p + n)) m->weights_[p + n] = permute(m->weights_[p + n], m->config_.n_kv_heads);
        }
        // q/k norm gains: [d_head] (per head) or [n_heads * d_head] (full width, OLMo 2).
        for (const char* n : {"q_norm.weight", "k_norm.weight"}) {
          if (m->weights_.count(p + n)) {
            const at::Tensor g = m->weights_[p + n];
            m->weights_[p + n] = permute(g, g.numel() / dh);
          }
        }
      }
      m->rope_permuted_at_load_ = true;
      m->config_.rope_layout = RopeLayout::kRotateHalves;
    }
    if (m->config_.tied_embeddings && !m->weights_.count("lm_head.weight")) {
      m->weights_["lm_head.weight"] = m->weights_.at("model.embed_tokens.weight");
    }
    const ModelConfig& c = m->config_;
    if (c.positional == Positional::kRope) {
      // HF: inv_freq in float32, positions float32, outer product, cos/sin.
      auto table = [&](double theta, const RopeScaling& rs, at::Tensor* cos, at::Tensor* sin) {
        std::vector<double> inv = RopeInvFreq(c, theta, rs);
        at::Tensor inv_t = at::tensor(inv, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
        at::Tensor pos = at::arange(c.n_ctx, at::TensorOptions().dtype(at::kFloat));
        at::Tensor angles = at::outer(pos, inv_t);  // [n_ctx, d_head/2]
        *cos = angles.cos().to(device);
        *sin = angles.sin().to(device);
      };
      table(c.rope_theta, c.rope_scaling, &m->rope_cos_, &m->rope_sin_);
      if (c.rope_local_theta > 0) {
        table(c.rope_local_theta, RopeScaling(), &m->rope_local_cos_, &m->rope_local_sin_);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("placing weights on ", device.str(), ": ",
                                            e.what_without_backtrace()));
  }
  return m;
}

at::Tensor Model::weight(const std::string& name) const {
  auto it = weights_.find(name);
  return it == weights_.end() ? at::Tensor() : it->second;
}

AttentionSpec Model::Attention(int64_t layer) const {
  AttentionSpec s = LayerAttention(config_, layer);
  if (config_.kv_bias) {
    const std::string p = absl::StrCat("model.layers.", layer, ".self_attn.");
    s.sink_key = weight(p + "sink_key");
    s.sink_value = weight(p + "sink_value");
  }
  return s;
}

std::vector<std::pair<std::string, at::Tensor>> Model::Parameters() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, w] : weights_) {
    if (name == "lm_head.weight" && config_.tied_embeddings) continue;  // the embedding
    out.emplace_back(name, w);
  }
  return out;
}

std::string Model::Summary() const {
  std::string s = config_.Summary();
  if (rope_permuted_at_load_) {
    absl::StrAppend(&s, "; RoPE: checkpoint uses adjacent pairs (llama2.c), W_Q/W_K rows "
                        "permuted at load to rotate-halves (HF layout)");
  }
  absl::StrAppend(&s, "; ", DtypeName(dtype_), " on ", device_.str(), "; attention: ",
                  fast_attention_path(), " (eager where a pattern hook is read)");
  return s;
}

std::string Model::fast_attention_path() const { return "sdpa"; }

std::vector<std::string> Model::HookNames() const {
  std::vector<std::string> names = {"hook_embed"};
  const bool learned = config_.positional == Positional::kLearned;
  if (learned) names.push_back("hook_pos_embed");
  const bool has_ln = config_.HasInputNorms();
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    for (const std::string& s : LayerHookSuffixes()) {
      if (!has_ln && (s == "ln1.hook_normalized" || s == "ln2.hook_normalized")) continue;
      if (config_.positional != Positional::kRope && (s == "attn.hook_rot_q" || s == "attn.hook_rot_k")) {
        continue;
      }
      if (!config_.gated_mlp && s == "mlp.hook_pre_linear") continue;
      names.push_back(HookName(l, s));
    }
  }
  names.push_back("ln_final.hook_normalized");
  names.push_back("unembed.hook_out");
  return names;
}

bool Model::HasHook(const std::string& name) const { return hook_names_.count(name) > 0; }

absl::Status Model::ValidateTokens(const std::vector<std::vector<int64_t>>& seqs) const {
  if (seqs.empty()) return absl::InvalidArgumentError("no sequences given");
  for (size_t s = 0; s < seqs.size(); ++s) {
    if (seqs[s].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " is empty"));
    }
    if (static_cast<int64_t>(seqs[s].size()) > config_.n_ctx) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " has ", seqs[s].size(),
                                                     " tokens, more than the model's context of ",
                                                     config_.n_ctx));
    }
    for (size_t p = 0; p < seqs[s].size(); ++p) {
      const int64_t id = seqs[s][p];
      if (id < 0 || id >= config_.d_vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", id, " at sequence ", s,
                                                       " position ", p, " is out of range [0, ",
                                                       config_.d_vocab, ")"));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

/// What one forward pass's blocks share: the model, its hooks and the
/// cancellation flag. Hook(l, suffix, t) runs the hook point `suffix` of layer
/// `l` (l < 0: a model-level name) and returns its (possibly edited) tensor.
struct ForwardContext {
  const Model& model;
  const ModelConfig& c;
  const HookRegistry& hooks;
  const std::atomic<bool>* cancel;
  c10::ScalarType dtype;

  at::Tensor Hook(int64_t l, const char* suffix, at::Tensor t) const {
    if (cancel && cancel->load(std::memory_order_relaxed)) throw CancelledError{};
    if (hooks.Empty()) return t;
    const std::string name = l < 0 ? std::string(suffix) : HookName(l, suffix);
    return hooks.Has(name) ? hooks.Run(name, l, std::move(t)) : t;
  }
  bool Wants(int64_t l, const char* suffix) const {
    return !hooks.Empty() && hooks.Has(HookName(l, suffix));
  }
  at::Tensor W(const std::string& name) const { return model.weight(name); }
  /// The config's block norm (canonical prefix, e.g. "model.layers.3.input_layernorm").
  at::Tensor Norm(const std::string& prefix, const at::Tensor& x) const {
    return sinkscope::Norm(c, x, W(prefix + ".weight"), W(prefix + ".bias"), W(prefix + ".alpha"));
  }
};

/// The attention block of layer `l` (paper block 2l+1) on the residual stream
/// resid [batch, pos, d_model]; returns hook_attn_out (what is added to the
/// stream). Norm placement, QK-norm, RoPE (`cos`/`sin`, [n_ctx, rotary/2]),
/// softmax or sigmoid, soft-cap, window and output gate come from the config.
at::Tensor AttentionBlock(const ForwardContext& f, int64_t l, const at::Tensor& resid,
                          const at::Tensor& cos, const at::Tensor& sin) {
  const ModelConfig& c = f.c;
  const std::string p = absl::StrCat("model.layers.", l, ".");
  const int64_t B = resid.size(0), T = resid.size(1);
  const int64_t H = c.n_heads, KV = c.n_kv_heads, Dh = c.d_head;
  at::Tensor x = resid;
  if (c.HasInputNorms()) x = f.Hook(l, "ln1.hook_normalized", f.Norm(p + "input_layernorm", resid));
  at::Tensor q = at::linear(x, f.W(p + "self_attn.q_proj.weight"), f.W(p + "self_attn.q_proj.bias"));
  at::Tensor k = at::linear(x, f.W(p + "self_attn.k_proj.weight"), f.W(p + "self_attn.k_proj.bias"));
  at::Tensor v = at::linear(x, f.W(p + "self_attn.v_proj.weight"), f.W(p + "self_attn.v_proj.bias"))
                     .view({B, T, KV, Dh});
  if (c.qk_norm && c.qk_norm_full_width) {  // OLMo 2: over n_heads*d_head, before the split
    q = RmsNorm(q, f.W(p + "self_attn.q_norm.weight"), c.norm_eps, c.norm_gain_offset);
    k = RmsNorm(k, f.W(p + "self_attn.k_norm.weight"), c.norm_eps, c.norm_gain_offset);
  }
  q = q.view({B, T, H, Dh});
  k = k.view({B, T, KV, Dh});
  if (c.qk_norm && !c.qk_norm_full_width) {  // Qwen3 / Gemma 3: over d_head, before RoPE
    q = RmsNorm(q, f.W(p + "self_attn.q_norm.weight"), c.norm_eps, c.norm_gain_offset);
    k = RmsNorm(k, f.W(p + "self_attn.k_norm.weight"), c.norm_eps, c.norm_gain_offset);
  }
  q = f.Hook(l, "attn.hook_q", q);  // [batch, pos, head, d_head]
  k = f.Hook(l, "attn.hook_k", k);  // [batch, pos, kv_head, d_head]
  v = f.Hook(l, "attn.hook_v", v);
  if (c.positional == Positional::kRope) {
    q = f.Hook(l, "attn.hook_rot_q", ApplyRope(q, cos, sin, c.rope_layout));
    k = f.Hook(l, "attn.hook_rot_k", ApplyRope(k, cos, sin, c.rope_layout));
  }
  at::Tensor qh = q.transpose(1, 2);                    // [batch, head, pos, d_head]
  at::Tensor kh = RepeatKv(k.transpose(1, 2), H / KV);  // [batch, head, pos, d_head]
  at::Tensor vh = RepeatKv(v.transpose(1, 2), H / KV);
  const AttentionSpec spec = f.model.Attention(l);
  at::Tensor z;  // [batch, head, pos, d_head]
  if (f.Wants(l, "attn.hook_attn_scores") || f.Wants(l, "attn.hook_pattern")) {
    at::Tensor scores = f.Hook(l, "attn.hook_attn_scores", AttentionScores(qh, kh, 0, 0, spec));
    if (spec.sink_key.defined()) {
      // The learned slot: softmax over [q.k*, scores]; the pattern keeps the tokens.
      at::Tensor full = PatternOfScores(at::cat({SinkSlotScores(qh, spec), scores}, -1).to(at::kFloat), spec);
      at::Tensor pattern = f.Hook(l, "attn.hook_pattern", full.narrow(-1, 1, T).to(f.dtype));
      z = at::matmul(pattern, vh) + full.narrow(-1, 0, 1).to(f.dtype) * PerQueryHead(spec.sink_value, H, f.dtype);
    } else {
      at::Tensor pattern = PatternOfScores(scores.to(at::kFloat), spec).to(f.dtype);
      z = at::matmul(f.Hook(l, "attn.hook_pattern", pattern), vh);
    }
  } else if (c.attn_softcap > 0 || spec.sigmoid || (spec.window > 0 && T > spec.window) || c.kv_bias) {
    // Soft-cap or sigmoid (no fused kernel), a window or a learned slot: query chunks, O(chunk x T).
    z = ChunkedAttention(qh, kh, vh, spec);
  } else {
    z = at::scaled_dot_product_attention(qh.contiguous(), kh.contiguous(), vh.contiguous(), {}, 0.0,
                                         true, spec.scale);
  }
  z = z.transpose(1, 2);  // [batch, pos, head, d_head]
  if (c.attn_gate != AttnGate::kNone) {
    // Gated attention (G1): sigmoid(x W_g) from the input of q, per head or per channel.
    at::Tensor g = at::linear(x, f.W(p + "self_attn.gate_proj.weight")).sigmoid();
    z = z * (c.attn_gate == AttnGate::kHeadwise ? g.unsqueeze(-1) : g.view({B, T, H, Dh}));
  }
  z = f.Hook(l, "attn.hook_z", z);  // what W_O reads (gated when gated)
  at::Tensor out = at::linear(z.reshape({B, T, H * Dh}), f.W(p + "self_attn.o_proj.weight"),
                              f.W(p + "self_attn.o_proj.bias"));
  if (c.HasOutputNorms()) out = f.Norm(p + "post_attention_layernorm", out);
  return f.Hook(l, "hook_attn_out", out);
}

/// The MLP block of layer `l` (paper block 2l+2) on its input mlp_in
/// [batch, pos, d_model] (resid_mid, or resid_pre for parallel attention +
/// MLP); returns hook_mlp_out. Gated (SwiGLU / GeGLU) or plain, by the config.
at::Tensor MlpBlock(const ForwardContext& f, int64_t l, const at::Tensor& mlp_in) {
  const ModelConfig& c = f.c;
  const std::string p = absl::StrCat("model.layers.", l, ".");
  at::Tensor x = mlp_in;
  if (c.norm_placement == NormPlacement::kPre) {
    x = f.Hook(l, "ln2.hook_normalized", f.Norm(p + "post_attention_layernorm", mlp_in));
  } else if (c.norm_placement == NormPlacement::kSandwich) {
    x = f.Hook(l, "ln2.hook_normalized", f.Norm(p + "pre_feedforward_layernorm", mlp_in));
  }
  at::Tensor post;
  if (c.gated_mlp) {
    at::Tensor pre = f.Hook(l, "mlp.hook_pre", at::linear(x, f.W(p + "mlp.gate_proj.weight"),
                                                          f.W(p + "mlp.gate_proj.bias")));
    at::Tensor pre_linear = f.Hook(
        l, "mlp.hook_pre_linear", at::linear(x, f.W(p + "mlp.up_proj.weight"), f.W(p + "mlp.up_proj.bias")));
    post = f.Hook(l, "mlp.hook_post", Activate(c.activation, pre) * pre_linear);
  } else {
    at::Tensor pre = f.Hook(l, "mlp.hook_pre", at::linear(x, f.W(p + "mlp.up_proj.weight"),
                                                          f.W(p + "mlp.up_proj.bias")));
    post = f.Hook(l, "mlp.hook_post", Activate(c.activation, pre));
  }
  at::Tensor out = at::linear(post, f.W(p + "mlp.down_proj.weight"), f.W(p + "mlp.down_proj.bias"));
  if (c.HasOutputNorms()) out = f.Norm(p + "post_feedforward_layernorm", out);
  return f.Hook(l, "hook_mlp_out", out);
}

}  // namespace

absl::StatusOr<at::Tensor> Model::Forward(const at::Tensor& tokens_in, const HookRegistry& hooks,
                                          const ForwardOptions& options) const {
  const ModelConfig& c = config_;
  if (tokens_in.dim() != 2 || tokens_in.size(0) == 0 || tokens_in.size(1) == 0) {
    return absl::InvalidArgumentError("tokens must be a non-empty [batch, pos] tensor");
  }
  const int64_t B = tokens_in.size(0), T = tokens_in.size(1);
  if (T > c.n_ctx) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence of ", T, " tokens is longer than the model's context of ", c.n_ctx));
  }
  for (const std::string& name : hooks.Names()) {
    if (!HasHook(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown hook '", name, "' for this model (", c.n_layers, " layers, ",
                       NormPlacementName(c.norm_placement), " norm)"));
    }
  }
  try {
    at::Tensor tokens = tokens_in.to(device_, at::kLong);
    {
      const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
      if (lo < 0 || hi >= c.d_vocab) {
        const int64_t bad = lo < 0 ? lo : hi;
        return absl::InvalidArgumentError(absl::StrCat("token id ", bad, " is out of range [0, ",
                                                       c.d_vocab, ")"));
      }
    }
    const ForwardContext f{*this, c, hooks, options.cancel, dtype_};
    at::Tensor resid = at::embedding(weight("model.embed_tokens.weight"), tokens);  // [b, p, d]
    if (c.embed_scale != 1.0) {
      // Gemma: normalizer = tensor(sqrt(d_model), dtype=model dtype).
      resid = resid * at::scalar_tensor(c.embed_scale, resid.options());
    }
    resid = f.Hook(-1, "hook_embed", resid);
    if (c.positional == Positional::kLearned) {
      at::Tensor positions = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device_));
      at::Tensor pos_embed =
          at::embedding(weight("model.embed_positions.weight"), positions).unsqueeze(0);
      resid = resid + f.Hook(-1, "hook_pos_embed", pos_embed.expand({B, T, c.d_model}));
    }
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const bool local_rope = c.rope_local_theta > 0 && c.Window(l) > 0;
      resid = f.Hook(l, "hook_resid_pre", resid);
      const at::Tensor resid_pre = resid;
      at::Tensor attn_out = AttentionBlock(f, l, resid, local_rope ? rope_local_cos_ : rope_cos_,
                                           local_rope ? rope_local_sin_ : rope_sin_);
      // Parallel attention + MLP (GPT-NeoX): resid_mid is the virtual point
      // resid_pre + attn_out; the MLP reads the layer input, and resid_post =
      // resid_mid + mlp_out, so blocks 2l+1 and 2l+2 still add up exactly.
      resid = f.Hook(l, "hook_resid_mid", resid + attn_out);
      at::Tensor mlp_out = MlpBlock(f, l, c.parallel_attn_mlp ? resid_pre : resid);
      resid = f.Hook(l, "hook_resid_post", resid + mlp_out);
    }
    if (!options.compute_logits && !hooks.Has("ln_final.hook_normalized") &&
        !hooks.Has("unembed.hook_out")) {
      return at::Tensor();
    }
    at::Tensor final_x = f.Hook(-1, "ln_final.hook_normalized", f.Norm("model.norm", resid));
    at::Tensor logits = f.Hook(-1, "unembed.hook_out", at::linear(final_x, weight("lm_head.weight")));
    // Gemma 2 final soft-cap, after the hook (TransformerLens' output_logits_soft_cap).
    logits = SoftCap(logits.to(at::kFloat), c.final_softcap);
    return logits.to(at::kFloat);
  } catch (const CancelledError&) {
    return absl::CancelledError("forward pass cancelled");
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("forward pass: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("forward pass: ", e.what()));
  }
}

absl::Status Model::RunHooks(const at::Tensor& tokens, const HookRegistry& hooks,
                             const std::atomic<bool>* cancel) const {
  ForwardOptions opts;
  opts.cancel = cancel;
  opts.compute_logits = false;
  return Forward(tokens, hooks, opts).status();
}

absl::StatusOr<std::vector<int64_t>> Model::GenerateGreedy(const std::vector<int64_t>& prompt,
                                                           int64_t max_new_tokens) const {
  if (prompt.empty()) return absl::InvalidArgumentError("empty prompt");
  RETURN_IF_ERROR(ValidateTokens({prompt}));
  std::vector<int64_t> ids = prompt, generated;
  HookRegistry none;
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    if (static_cast<int64_t>(ids.size()) >= config_.n_ctx) break;
    at::Tensor t = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
    ASSIGN_OR_RETURN(at::Tensor logits, Forward(t, none));
    const int64_t next = logits.select(1, logits.size(1) - 1).argmax(-1).item<int64_t>();
    ids.push_back(next);
    generated.push_back(next);
  }
  return generated;
}

}  // namespace sinkscope
