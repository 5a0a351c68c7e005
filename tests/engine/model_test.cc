// Numerics of the forward pass: against llama2.c's reference outputs, against
// an independent float64 re-implementation for every family, the hook
// invariants, and the llama2.c <-> HF layout equivalence.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "tests/engine/fixtures.h"
#include "tests/engine/test_util.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {
namespace {

using testing::RandomCheckpoint;
using testing::SmallConfig;

at::Tensor Ids(const std::vector<int64_t>& ids) {
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({1, -1});
}

using testing::MakeCpuModel;
using testing::TestTolerance;

// ---------------------------------------------------------------------------
// Independent float64 reference: token-by-token loops, written from the HF
// modelling code's definitions, sharing nothing with model.cc. Covers q/k/v
// biases, q/k norm (per head or full width), GQA, sliding window, llama3 rope
// scaling, tied embeddings, all three norm placements, and both RoPE layouts
// (applied directly in the checkpoint's layout: an adjacent-pairs checkpoint
// is never permuted here, so the engine's load-time permutation is checked).
// ---------------------------------------------------------------------------
struct Ref {
  const Checkpoint& ck;
  at::Tensor W(const std::string& n) const {
    auto it = ck.tensors.find(n);
    return it == ck.tensors.end() ? at::Tensor() : it->second.to(at::kDouble);
  }
  static at::Tensor Rms(const at::Tensor& x, const at::Tensor& w, double eps) {
    // x: [..., d]
    at::Tensor y = x / (x.pow(2).mean({-1}, true) + eps).sqrt();
    return w.defined() ? y * w : y;
  }
  std::vector<double> InvFreq() const {
    const ModelConfig& c = ck.config;
    std::vector<double> inv;
    for (int64_t i = 0; i < c.d_head / 2; ++i) {
      double f = 1.0 / std::pow(c.rope_theta, (2.0 * i) / c.d_head);
      if (c.rope_scaling.rope_type == "llama3") {
        const auto& s = c.rope_scaling;
        double wl = 2 * M_PI / f, lo = s.original_max_position_embeddings / s.low_freq_factor,
               hi = s.original_max_position_embeddings / s.high_freq_factor;
        if (wl < hi) {
        } else if (wl > lo) {
          f = f / s.factor;
        } else {
          double sm = (s.original_max_position_embeddings / wl - s.low_freq_factor) /
                      (s.high_freq_factor - s.low_freq_factor);
          f = (1 - sm) * f / s.factor + sm * f;
        }
      }
      inv.push_back(f);
    }
    return inv;
  }
  // v: [d_head] at position pos.
  at::Tensor Rope(at::Tensor v, int64_t pos) const {
    const ModelConfig& c = ck.config;
    std::vector<double> inv = InvFreq();
    at::Tensor out = v.clone();
    const int64_t half = c.d_head / 2;
    for (int64_t i = 0; i < half; ++i) {
      int64_t a = c.rope_layout == RopeLayout::kRotateHalves ? i : 2 * i;
      int64_t b = c.rope_layout == RopeLayout::kRotateHalves ? i + half : 2 * i + 1;
      double th = pos * inv[i], x = v[a].item<double>(), y = v[b].item<double>();
      out[a] = x * std::cos(th) - y * std::sin(th);
      out[b] = x * std::sin(th) + y * std::cos(th);
    }
    return out;
  }
  // ids -> logits [T, vocab] (double).
  at::Tensor Forward(const std::vector<int64_t>& ids) const {
    const ModelConfig& c = ck.config;
    const int64_t T = ids.size();
    at::Tensor E = W("model.embed_tokens.weight");
    at::Tensor h = E.index_select(0, at::tensor(ids, at::TensorOptions().dtype(at::kLong)));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      std::string p = absl::StrCat("model.layers.", l, ".");
      at::Tensor x = c.norm_placement == NormPlacement::kPost
                         ? h
                         : Rms(h, W(p + "input_layernorm.weight"), c.norm_eps);
      auto proj = [&](const std::string& n) {
        at::Tensor y = x.matmul(W(p + n + ".weight").t());
        at::Tensor b = W(p + n + ".bias");
        return b.defined() ? y + b : y;
      };
      at::Tensor q = proj("self_attn.q_proj"), k = proj("self_attn.k_proj"),
                 v = proj("self_attn.v_proj");
      // q/k norm before RoPE: OLMo 2 over each token's whole projected row
      // (n_heads*d_head resp. n_kv_heads*d_head); Qwen 3 per head (below).
      // The gains are applied in the file's coordinate order.
      const bool per_head_norm = c.qk_norm && !c.qk_norm_full_width;
      if (c.qk_norm && c.qk_norm_full_width) {
        q = Rms(q, W(p + "self_attn.q_norm.weight"), c.norm_eps);
        k = Rms(k, W(p + "self_attn.k_norm.weight"), c.norm_eps);
      }
      at::Tensor z = at::zeros({T, c.n_heads * c.d_head}, at::kDouble);
      for (int64_t hd = 0; hd < c.n_heads; ++hd) {
        int64_t kvh = hd / (c.n_heads / c.n_kv_heads);
        std::vector<at::Tensor> keys;
        for (int64_t s = 0; s < T; ++s) {
          at::Tensor ks = k[s].narrow(0, kvh * c.d_head, c.d_head);
          if (per_head_norm) ks = Rms(ks, W(p + "self_attn.k_norm.weight"), c.norm_eps);
          keys.push_back(Rope(ks, s));
        }
        for (int64_t t = 0; t < T; ++t) {
          at::Tensor qt = q[t].narrow(0, hd * c.d_head, c.d_head);
          if (per_head_norm) qt = Rms(qt, W(p + "self_attn.q_norm.weight"), c.norm_eps);
          qt = Rope(qt, t);
          std::vector<double> sc;
          std::vector<int64_t> ks_idx;
          double mx = -1e300;
          for (int64_t s = 0; s <= t; ++s) {
            if (c.sliding_window > 0 && t - s >= c.sliding_window) continue;
            double d = (qt * keys[s]).sum().item<double>() / std::sqrt((double)c.d_head);
            sc.push_back(d);
            ks_idx.push_back(s);
            mx = std::max(mx, d);
          }
          double denom = 0;
          for (double& d : sc) denom += (d = std::exp(d - mx));
          at::Tensor acc = at::zeros({c.d_head}, at::kDouble);
          for (size_t j = 0; j < sc.size(); ++j) {
            acc += (sc[j] / denom) * v[ks_idx[j]].narrow(0, kvh * c.d_head, c.d_head);
          }
          z[t].narrow(0, hd * c.d_head, c.d_head).copy_(acc);
        }
      }
      at::Tensor attn_out = z.matmul(W(p + "self_attn.o_proj.weight").t());
      if (c.norm_placement != NormPlacement::kPre) {
        attn_out = Rms(attn_out, W(p + "post_attention_layernorm.weight"), c.norm_eps);
      }
      h = h + attn_out;
      at::Tensor m = h;
      if (c.norm_placement == NormPlacement::kPre) {
        m = Rms(h, W(p + "post_attention_layernorm.weight"), c.norm_eps);
      } else if (c.norm_placement == NormPlacement::kSandwich) {
        m = Rms(h, W(p + "pre_feedforward_layernorm.weight"), c.norm_eps);
      }
      at::Tensor g = m.matmul(W(p + "mlp.gate_proj.weight").t());
      at::Tensor u = m.matmul(W(p + "mlp.up_proj.weight").t());
      at::Tensor act = g / (1 + (-g).exp()) * u;
      at::Tensor mlp_out = act.matmul(W(p + "mlp.down_proj.weight").t());
      if (c.norm_placement != NormPlacement::kPre) {
        mlp_out = Rms(mlp_out, W(p + "post_feedforward_layernorm.weight"), c.norm_eps);
      }
      h = h + mlp_out;
    }
    at::Tensor f = Rms(h, W("model.norm.weight"), c.norm_eps);
    at::Tensor U = c.tied_embeddings ? E : W("lm_head.weight");
    return f.matmul(U.t());
  }
};

class FamilyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FamilyTest, LogitsMatchFloat64Reference) {
  Checkpoint ck = RandomCheckpoint(SmallConfig(GetParam()), 7);
  if (ck.config.tied_embeddings) {
    ASSERT_EQ(ck.tensors.count("lm_head.weight"), 0u) << "the engine must reuse embed_tokens";
  }
  auto model = MakeCpuModel(ck);
  ASSERT_NE(model, nullptr);
  // 12 tokens; 40 (past the sliding window and llama3's original context 16);
  // the full n_ctx.
  const std::vector<int64_t> first = {1, 5, 9, 33, 2, 17, 60, 4, 4, 8, 12, 3};
  for (int64_t T : {int64_t{12}, int64_t{40}, ck.config.n_ctx}) {
    std::vector<int64_t> ids = first;
    ids.resize(T);
    for (int64_t i = 12; i < T; ++i) ids[i] = (i * 37 + 11) % ck.config.d_vocab;
    auto logits = model->Forward(Ids(ids), HookRegistry());
    ASSERT_TRUE(logits.ok()) << logits.status();
    at::Tensor ref = Ref{ck}.Forward(ids);
    double err = (logits->squeeze(0).cpu().to(at::kDouble) - ref).abs().max().item<double>();
    // float32: 1e-4 absolute; bfloat16 (SINKSCOPE_TEST_DTYPE): 3e-2 of max |logit|.
    const double tol = TestTolerance(1e-4, 3e-2 * ref.abs().max().item<double>());
    EXPECT_LT(err, tol) << GetParam() << " T=" << T << " max |logit - reference|";
    if (std::getenv("SINKSCOPE_TEST_VERBOSE")) {
      std::printf("%s T=%lld max err %.3g (max |logit| %.3g)\n", GetParam().c_str(),
                  static_cast<long long>(T), err, ref.abs().max().item<double>());
    }
  }
}

TEST_P(FamilyTest, HookInvariants) {
  Checkpoint ck = RandomCheckpoint(SmallConfig(GetParam()), 11);
  auto model = MakeCpuModel(ck);
  ASSERT_NE(model, nullptr);
  std::map<std::string, at::Tensor> seen;
  HookRegistry hooks;
  for (const std::string& n : model->HookNames()) {
    hooks.AddProbe(n, [&seen](const std::string& name, int64_t, const at::Tensor& t) {
      seen[name] = t.clone();
    });
  }
  std::vector<int64_t> ids = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19};
  auto logits = model->Forward(at::cat({Ids(ids), Ids(ids).flip(1)}, 0), hooks);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_EQ(seen.size(), model->HookNames().size()) << "every hook fires exactly once";
  const int64_t T = ids.size();
  for (int64_t l = 0; l < ck.config.n_layers; ++l) {
    auto H = [&](const std::string& s) { return seen.at(HookName(l, s)); };
    // float32: exact to 1e-6; bfloat16: the stream is stored in bfloat16, so the
    // sum is rounded once: 2^-7 of the largest |resid| entry.
    const double id_tol = TestTolerance(1e-6, H("hook_resid_post").abs().max().item<double>() / 128);
    EXPECT_LT((H("hook_resid_mid") - H("hook_resid_pre") - H("hook_attn_out")).abs().max().item<double>(), id_tol);
    EXPECT_LT((H("hook_resid_post") - H("hook_resid_mid") - H("hook_mlp_out")).abs().max().item<double>(), id_tol);
    at::Tensor pattern = H("attn.hook_pattern");  // [batch, head, q_pos, k_pos]
    ASSERT_EQ(pattern.sizes(), (std::vector<int64_t>{2, ck.config.n_heads, T, T}));
    // bfloat16 patterns: each probability rounded to 8 bits.
    EXPECT_LT((pattern.sum(-1) - 1).abs().max().item<double>(), TestTolerance(1e-5, 1e-2)) << "rows sum to 1";
    at::Tensor above = pattern.triu(1);
    EXPECT_EQ(above.abs().max().item<double>(), 0.0) << "no attention to future keys";
    if (ck.config.sliding_window > 0) {
      EXPECT_EQ(pattern.tril(-ck.config.sliding_window).abs().max().item<double>(), 0.0)
          << "no attention outside the sliding window";
    }
    EXPECT_EQ(H("attn.hook_q").sizes(),
              (std::vector<int64_t>{2, T, ck.config.n_heads, ck.config.d_head}));
    EXPECT_EQ(H("attn.hook_k").sizes(),
              (std::vector<int64_t>{2, T, ck.config.n_kv_heads, ck.config.d_head}));
    EXPECT_EQ(H("mlp.hook_post").sizes(), (std::vector<int64_t>{2, T, ck.config.d_ffn}));
  }
  // The pattern path and the fast path agree.
  auto fast = model->Forward(at::cat({Ids(ids), Ids(ids).flip(1)}, 0), HookRegistry());
  ASSERT_TRUE(fast.ok());
  EXPECT_LT((*fast - *logits).abs().max().item<double>(),
            TestTolerance(1e-5, 5e-2 * std::max(1.0, logits->abs().max().item<double>())));
}

// The fused attention path (at::scaled_dot_product_attention, taken where no
// pattern hook is read) and the eager path (scores, softmax, pattern @ V,
// taken where one is) give the same numbers at every hook and on the logits,
// within float32 rounding. Sequences longer than the sliding window exercise
// SDPA's explicit-mask branch.
TEST_P(FamilyTest, SdpaEqualsEagerPerHook) {
  Checkpoint ck = RandomCheckpoint(SmallConfig(GetParam()), 17);
  auto model = MakeCpuModel(ck);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->fast_attention_path(), "sdpa");
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 23; ++i) ids.push_back((i * 7 + 1) % ck.config.d_vocab);
  at::Tensor tokens = at::cat({Ids(ids), Ids(ids).flip(1)}, 0);
  auto collect = [&](bool with_pattern, std::map<std::string, at::Tensor>* seen) {
    HookRegistry hooks;
    for (const std::string& n : model->HookNames()) {
      const bool is_pattern = n.find("hook_pattern") != std::string::npos ||
                              n.find("hook_attn_scores") != std::string::npos;
      if (is_pattern && !with_pattern) continue;
      hooks.AddProbe(n, [seen](const std::string& name, int64_t, const at::Tensor& t) {
        (*seen)[name] = t.to(at::kDouble).clone();
      });
    }
    return model->Forward(tokens, hooks);
  };
  std::map<std::string, at::Tensor> fused, eager;
  auto a = collect(false, &fused);
  auto b = collect(true, &eager);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_FALSE(fused.empty());
  for (const auto& [name, t] : fused) {
    ASSERT_TRUE(eager.count(name)) << name;
    const double scale = std::max(1.0, eager.at(name).abs().max().item<double>());
    // float32: 1e-5 of the hook's scale; bfloat16: 6e-2 (different reduction
    // orders, amplified through the sandwich / post norms).
    EXPECT_LT((t - eager.at(name)).abs().max().item<double>() / scale, TestTolerance(1e-5, 6e-2))
        << GetParam() << " " << name;
  }
  const double scale = std::max(1.0, b->abs().max().item<double>());
  EXPECT_LT((*a - *b).abs().max().item<double>() / scale, TestTolerance(1e-5, 6e-2))
      << GetParam() << " logits";
}

TEST_P(FamilyTest, Bfloat16StaysNearFloat32) {
  Checkpoint ck = RandomCheckpoint(SmallConfig(GetParam()), 13);
  auto f32 = MakeCpuModel(ck, at::kFloat);
  auto bf16 = MakeCpuModel(ck, at::kBFloat16);
  ASSERT_TRUE(f32 && bf16);
  std::vector<int64_t> ids = {1, 2, 3, 4, 5, 6, 7, 8};
  auto a = f32->Forward(Ids(ids), HookRegistry());
  auto b = bf16->Forward(Ids(ids), HookRegistry());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->scalar_type(), at::kFloat) << "logits returned in float32";
  const double scale = a->abs().max().item<double>();
  EXPECT_LT((*b - *a).abs().max().item<double>() / scale, 2e-2);
  // float16 runs on cpu with libtorch 2.x, within the same tolerance.
  auto f16 = Model::Create(ck, c10::Device(c10::kCPU), at::kHalf);
  ASSERT_TRUE(f16.ok()) << f16.status();
  auto h = (*f16)->Forward(Ids(ids), HookRegistry());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_LT((*h - *a).abs().max().item<double>() / scale, 2e-2);
}

INSTANTIATE_TEST_SUITE_P(AllFamilies, FamilyTest,
                         ::testing::Values("llama2", "llama3", "mistral", "qwen2", "qwen3",
                                           "qwen2_tied", "olmo2", "sandwich", "post"));

// A checkpoint in llama2.c's adjacent-pairs RoPE layout with q/k/v biases and
// q/k norms (per head, full width) and GQA: the engine permutes W_Q/W_K rows,
// the q/k biases and the q/k norm gains into rotate-halves at load; the
// reference applies adjacent-pair RoPE to the file's weights as they are.
// The same weights converted to HF layout by the test (transformers'
// `permute`, applied to every q/k tensor) give the same logits in both.
class AdjacentPairsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(AdjacentPairsTest, PermutedBiasesAndNormsMatchFloat64Reference) {
  Checkpoint ck = RandomCheckpoint(SmallConfig(GetParam()), 23);
  const ModelConfig& c = ck.config;
  ck.config.rope_layout = RopeLayout::kAdjacentPairs;
  // Large biases and uneven gains, so that a coordinate mix-up shows.
  for (auto& [name, w] : ck.tensors) {
    if (name.find("_proj.bias") != std::string::npos) w.mul_(8.0);
    if (name.find("_norm.weight") != std::string::npos) w.sub_(1.0).mul_(5.0).add_(1.0);
  }
  // HF conversion of every q/k tensor; `wrong` leaves the biases and norm gains
  // unpermuted (weights only), to show this fixture depends on them.
  auto permute = [&](const at::Tensor& w, int64_t n_head) {
    if (w.dim() == 2) return testing::PermuteForRotateHalves(w, n_head, c.d_head).contiguous();
    return testing::PermuteForRotateHalves(w.view({-1, 1}), n_head, c.d_head)
        .view({-1})
        .contiguous();
  };
  Checkpoint hf = ck, wrong = ck;
  hf.config.rope_layout = wrong.config.rope_layout = RopeLayout::kRotateHalves;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".self_attn.");
    for (const char* n : {"q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
                          "q_norm.weight", "k_norm.weight"}) {
      auto it = ck.tensors.find(p + n);
      if (it == ck.tensors.end()) continue;
      // Heads in the tensor: n_heads / n_kv_heads for weights, biases and
      // full-width gains; 1 for a per-head gain [d_head].
      const int64_t n_head = it->second.size(0) / c.d_head;
      hf.tensors[p + n] = permute(it->second, n_head);
      if (it->second.dim() == 2) wrong.tensors[p + n] = hf.tensors[p + n];
    }
  }
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < c.n_ctx; ++i) ids.push_back((i * 37 + 11) % c.d_vocab);
  at::Tensor ref = Ref{ck}.Forward(ids);
  // The test's own conversion is the HF one: float64 references agree.
  EXPECT_LT((Ref{hf}.Forward(ids) - ref).abs().max().item<double>(), 1e-9);
  const double wrong_err = (Ref{wrong}.Forward(ids) - ref).abs().max().item<double>();
  EXPECT_GT(wrong_err, 1e-2) << "biases / norm gains left unpermuted must change the logits";
  const double tol = TestTolerance(1e-4, 3e-2 * ref.abs().max().item<double>());
  for (const Checkpoint* k : {&ck, &hf}) {
    auto model = MakeCpuModel(*k);
    ASSERT_NE(model, nullptr);
    auto logits = model->Forward(Ids(ids), HookRegistry());
    ASSERT_TRUE(logits.ok()) << logits.status();
    const double err = (logits->squeeze(0).cpu().to(at::kDouble) - ref).abs().max().item<double>();
    EXPECT_LT(err, tol) << GetParam() << (k == &ck ? " adjacent-pairs" : " HF") << " checkpoint";
    if (std::getenv("SINKSCOPE_TEST_VERBOSE")) {
      std::printf("%s %s T=%zu max err %.3g (max |logit| %.3g, unpermuted biases/norms %.3g)\n",
                  GetParam().c_str(), k == &ck ? "adjacent" : "hf", ids.size(), err,
                  ref.abs().max().item<double>(), wrong_err);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BiasAndNormFamilies, AdjacentPairsTest,
                         ::testing::Values("qwen2", "qwen3", "olmo2"));

TEST(ModelErrors, UnknownHookIsNamed) {
  auto model = MakeCpuModel(RandomCheckpoint(SmallConfig("llama2"), 1));
  HookRegistry hooks;
  hooks.AddProbe("blocks.7.hook_resid_post", [](auto&, auto, auto&) {});
  auto r = model->Forward(Ids({1, 2}), hooks);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("blocks.7.hook_resid_post"), std::string::npos);
  // A post-norm model has no ln1 hook.
  auto post = MakeCpuModel(RandomCheckpoint(SmallConfig("post"), 1));
  HookRegistry ln;
  ln.AddProbe("blocks.0.ln1.hook_normalized", [](auto&, auto, auto&) {});
  auto r2 = post->Forward(Ids({1, 2}), ln);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("blocks.0.ln1.hook_normalized"), std::string::npos);
}

TEST(ModelErrors, TokenOutOfRangeIsNamed) {
  auto model = MakeCpuModel(RandomCheckpoint(SmallConfig("llama2"), 1));
  auto r = model->Forward(Ids({1, 64}), HookRegistry());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("64"), std::string::npos) << r.status();
  auto v = model->ValidateTokens({{1, 2}, {3, -5}});
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.message().find("-5"), std::string::npos) << v;
  std::vector<int64_t> too_long(65, 1);
  auto r3 = model->Forward(Ids(too_long), HookRegistry());
  EXPECT_FALSE(r3.ok());
}

TEST(ModelErrors, CancelledBetweenHooks) {
  auto model = MakeCpuModel(RandomCheckpoint(SmallConfig("llama2"), 1));
  std::atomic<bool> cancel{false};
  int calls = 0;
  HookRegistry hooks;
  hooks.AddProbe("blocks.0.hook_resid_post", [&](auto&, auto, auto&) {
    ++calls;
    cancel = true;
  });
  hooks.AddProbe("blocks.1.hook_resid_post", [&](auto&, auto, auto&) { ++calls; });
  ForwardOptions opts;
  opts.cancel = &cancel;
  auto r = model->Forward(Ids({1, 2, 3}), hooks, opts);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 1);
}

TEST(ModelInterventions, ReplacementPropagates) {
  Checkpoint ck = RandomCheckpoint(SmallConfig("llama2"), 3);
  auto model = MakeCpuModel(ck);
  HookRegistry hooks;
  hooks.AddIntervention("blocks.1.hook_resid_pre",
                        [](auto&, auto, const at::Tensor& t) { return t * 0; });
  at::Tensor seen;
  hooks.AddProbe("blocks.1.hook_resid_pre", [&](auto&, auto, const at::Tensor& t) { seen = t; });
  auto r = model->Forward(Ids({1, 2, 3}), hooks);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(seen.abs().max().item<double>(), 0.0) << "probes see the replaced tensor";
  auto base = model->Forward(Ids({1, 2, 3}), HookRegistry());
  EXPECT_GT((*r - *base).abs().max().item<double>(), 1e-3);
  // Identity intervention: bit-identical logits.
  HookRegistry same;
  same.AddIntervention("blocks.0.hook_mlp_out", [](auto&, auto, const at::Tensor& t) { return t; });
  auto r2 = model->Forward(Ids({1, 2, 3}), same);
  EXPECT_TRUE(r2->equal(*base));
}

// ---------------------------------------------------------------------------
// Real checkpoints against llama2.c's reference implementation (shared/README.md).
// ---------------------------------------------------------------------------
TEST(RealCheckpoints, Stories260KGreedyFromBos) {
  SINKSCOPE_FLOAT32_ONLY("exact greedy ids of the llama2.c reference are a float32 property");
  SKIP_IF_NO_SHARED(path, "models/stories260K/stories260K.bin");
  auto ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto model = MakeCpuModel(*ck);
  auto gen = model->GenerateGreedy({1}, 20);
  ASSERT_TRUE(gen.ok()) << gen.status();
  std::vector<int64_t> expected = {461, 461, 401, 401, 401, 461, 378, 455, 473, 456,
                                   435, 299, 362, 409, 283, 264, 283, 452, 288, 13};
  EXPECT_EQ(*gen, expected);
}

TEST(RealCheckpoints, Aidreams260KPromptAndContinuation) {
  SINKSCOPE_FLOAT32_ONLY("exact greedy ids of the llama2.c reference are a float32 property");
  SKIP_IF_NO_SHARED(path, "models/aidreams260K/aidreams260K.bin");
  SKIP_IF_NO_SHARED(tok_path, "models/aidreams260K/tok512.bin");
  auto ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto model = MakeCpuModel(*ck);
  auto tok = LoadTokenizer(tok_path, model->config().d_vocab);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto prompt = (*tok)->Encode("I dreamed", true);
  ASSERT_TRUE(prompt.ok());
  const std::vector<int64_t> reference = {
      303, 281, 269, 435, 447, 328, 446, 299, 303, 266, 358, 430, 312, 379, 441, 260,
      446, 262, 421, 392, 275, 280, 302, 450, 405, 403, 399, 448, 429, 465, 265, 434,
      317, 431, 434, 289, 408, 326, 446, 262, 279, 438, 349, 261, 446, 299, 303, 384};
  ASSERT_EQ((*prompt)[0], 1);
  const size_t n_prompt = prompt->size() - 1;
  ASSERT_LT(n_prompt, reference.size());
  EXPECT_EQ(std::vector<int64_t>(prompt->begin() + 1, prompt->end()),
            std::vector<int64_t>(reference.begin(), reference.begin() + n_prompt));
  auto gen = model->GenerateGreedy(*prompt, reference.size() - n_prompt);
  ASSERT_TRUE(gen.ok()) << gen.status();
  EXPECT_EQ(*gen, std::vector<int64_t>(reference.begin() + n_prompt, reference.end()));
}

TEST(RealCheckpoints, Llama2cAndHfLayoutsGiveSameLogits) {
  SKIP_IF_NO_SHARED(path, "models/stories260K/stories260K.bin");
  auto ck = LoadLlama2c(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  const ModelConfig& c = ck->config;
  EXPECT_EQ(c.rope_layout, RopeLayout::kAdjacentPairs);
  // Write the same weights as HF conversion would: q/k rows permuted.
  std::map<std::string, at::Tensor> hf = ck->tensors;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    std::string p = absl::StrCat("model.layers.", l, ".self_attn.");
    hf[p + "q_proj.weight"] =
        testing::PermuteForRotateHalves(hf[p + "q_proj.weight"], c.n_heads, c.d_head).contiguous();
    hf[p + "k_proj.weight"] =
        testing::PermuteForRotateHalves(hf[p + "k_proj.weight"], c.n_kv_heads, c.d_head)
            .contiguous();
  }
  ModelConfig hc = c;
  hc.rope_layout = RopeLayout::kRotateHalves;
  std::string dir = testing::MakeTempDir("sinkscope_hf_");
  ASSERT_TRUE(WriteHfConfig(dir + "/config.json", hc).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", hf).ok());
  auto hck = LoadHfDirectory(dir);
  ASSERT_TRUE(hck.ok()) << hck.status();
  EXPECT_EQ(hck->config.rope_layout, RopeLayout::kRotateHalves);
  auto a = MakeCpuModel(*ck), b = MakeCpuModel(*hck);
  std::vector<int64_t> ids = {1, 461, 401, 378, 455, 473, 13, 288, 100, 7};
  auto la = a->Forward(Ids(ids), HookRegistry()), lb = b->Forward(Ids(ids), HookRegistry());
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_LT((*la - *lb).abs().max().item<double>(), 1e-5);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sinkscope
