// Attention from query chunks: scores, output and pattern statistics in
// O(chunk x T) memory per head group.
#include "worker/engine/attention.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>

#include "common/attention_chunks.h"

namespace sinkscope {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

/// (q . k) * scale, soft-capped, in q's dtype (no mask): the first steps of
/// Model::Forward's eager attention. q [..., nq, d], k [..., nk, d] -> [..., nq, nk].
at::Tensor ScaledCappedScores(const at::Tensor& q, const at::Tensor& k, const AttentionSpec& spec) {
  at::Tensor s = at::matmul(q, k.transpose(-1, -2)).mul_(spec.scale);
  if (spec.softcap > 0) s = (s / spec.softcap).tanh() * spec.softcap;
  return s;
}

/// Query rows per chunk for `batch_heads` rows of scores: every key up to T,
/// or, with a window shorter than half of T, at most `window` rows seeing at
/// most 2 x window keys each.
int64_t DefaultChunkRows(int64_t batch_heads, int64_t T, int64_t window) {
  if (window > 0 && 2 * window < T) {
    return std::min(window, AttentionChunkRows(batch_heads, 2 * window, T));
  }
  return AttentionChunkRows(batch_heads, T, T);
}

}  // namespace

AttentionSpec LayerAttention(const ModelConfig& c, int64_t layer) {
  AttentionSpec s;
  s.scale = c.QueryScale();
  s.softcap = c.attn_softcap;
  s.window = c.Window(layer);
  s.sigmoid = c.attn_fn == AttnFn::kSigmoid;
  return s;
}

at::Tensor PerQueryHead(const at::Tensor& per_kv_head, int64_t n_heads, c10::ScalarType dtype) {
  const int64_t kv = per_kv_head.size(0), d = per_kv_head.size(1);
  return per_kv_head.to(dtype).repeat_interleave(n_heads / kv, 0).view({1, n_heads, 1, d});
}

at::Tensor SinkSlotScores(const at::Tensor& qh, const AttentionSpec& spec) {
  return ScaledCappedScores(qh, PerQueryHead(spec.sink_key, qh.size(1), qh.scalar_type()), spec);
}

at::Tensor PatternOfScores(const at::Tensor& scores, const AttentionSpec& spec) {
  return spec.sigmoid ? scores.sigmoid() : at::softmax(scores, -1);
}

at::Tensor AttendMask(int64_t q0, int64_t nq, int64_t k0, int64_t nk, int64_t window,
                      const at::Device& device) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q = at::arange(q0, q0 + nq, opts).view({nq, 1});
  at::Tensor k = at::arange(k0, k0 + nk, opts).view({1, nk});
  at::Tensor mask = k <= q;
  if (window > 0) mask = mask.logical_and(q - k < window);
  return mask;
}

at::Tensor AttentionScores(const at::Tensor& qh, const at::Tensor& kh, int64_t q0, int64_t k0,
                           const AttentionSpec& spec) {
  at::Tensor s = ScaledCappedScores(qh, kh, spec);
  s.masked_fill_(AttendMask(q0, s.size(-2), k0, s.size(-1), spec.window, qh.device()).logical_not(),
                 kNegInf);
  return s;
}

std::vector<QueryChunk> QueryChunks(int64_t T, int64_t rows, int64_t window) {
  std::vector<QueryChunk> out;
  rows = std::max<int64_t>(1, rows);
  for (int64_t q0 = 0; q0 < T; q0 += rows) {
    QueryChunk c;
    c.q0 = q0;
    c.q1 = std::min(T, q0 + rows);
    c.k0 = window > 0 ? std::max<int64_t>(0, q0 - window + 1) : 0;
    out.push_back(c);
  }
  return out;
}

at::Tensor ChunkedAttention(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh,
                            const AttentionSpec& spec) {
  const int64_t B = qh.size(0), H = qh.size(1), T = qh.size(2);
  at::Tensor z = at::empty({B, H, T, vh.size(3)}, vh.options());
  for (const QueryChunk& c : QueryChunks(T, DefaultChunkRows(B * H, T, spec.window), spec.window)) {
    const int64_t nq = c.q1 - c.q0, nk = c.q1 - c.k0;
    at::Tensor qc = qh.narrow(2, c.q0, nq).contiguous();
    at::Tensor kc = kh.narrow(2, c.k0, nk).contiguous();
    at::Tensor vc = vh.narrow(2, c.k0, nk).contiguous();
    at::Tensor zc;
    if (spec.sink_key.defined()) {  // the learned slot first, visible to every query
      TORCH_CHECK(spec.softcap <= 0 && !spec.sigmoid, "kv_bias needs softmax attention without soft-cap");
      const int64_t D = qh.size(3);
      at::Tensor ks = PerQueryHead(spec.sink_key, H, kh.scalar_type()).expand({B, H, 1, D});
      at::Tensor vs = PerQueryHead(spec.sink_value, H, vh.scalar_type()).expand({B, H, 1, vh.size(3)});
      at::Tensor mask = at::cat({at::ones({nq, 1}, at::TensorOptions().dtype(at::kBool).device(qh.device())),
                                 AttendMask(c.q0, nq, c.k0, nk, spec.window, qh.device())},
                                1);
      zc = at::scaled_dot_product_attention(qc, at::cat({ks, kc}, 2), at::cat({vs, vc}, 2), mask, 0.0,
                                            false, spec.scale);
    } else if (spec.softcap > 0 || spec.sigmoid) {
      at::Tensor p = PatternOfScores(AttentionScores(qc, kc, c.q0, c.k0, spec).to(at::kFloat), spec)
                         .to(qh.scalar_type());
      zc = at::matmul(p, vc);
    } else {
      zc = at::scaled_dot_product_attention(
          qc, kc, vc, AttendMask(c.q0, nq, c.k0, nk, spec.window, qh.device()), 0.0, false,
          spec.scale);
    }
    z.narrow(2, c.q0, nq).copy_(zc);
  }
  return z;
}

PatternStats ComputePatternStats(const at::Tensor& q, const at::Tensor& k,
                                 const AttentionSpec& spec, c10::ScalarType dtype, int64_t rows) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), KV = k.size(2);
  const int64_t rep = H / KV;
  // [batch, kv_head, rep, pos, d_head]: head h = kv * rep + r, as RepeatKv lays them out.
  at::Tensor qg = q.reshape({B, T, KV, rep, D}).permute({0, 2, 3, 1, 4});
  at::Tensor kg = k.permute({0, 2, 1, 3}).unsqueeze(2);  // [batch, kv_head, 1, pos, d_head]
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(q.device());
  PatternStats st;
  st.col_sum = at::zeros({B, H, T}, f64);
  st.row_sum = at::zeros({B, H, T}, f64);
  st.key_moment = at::zeros({B, H, T}, f64);
  st.diag = at::zeros({B, H, T}, f64);
  st.score_sum = at::zeros({B, H, T}, f64);
  st.logsumexp = at::zeros({B, H, T}, f64.dtype(at::kFloat));
  st.row_argmax = at::zeros({B, H, T}, f64.dtype(at::kLong));
  st.mass_without_argmax = at::zeros({B, H, T}, f64);
  st.moment_without_argmax = at::zeros({B, H, T}, f64);
  // The same tensors seen per kv-head group: [batch, kv_head, rep, pos].
  auto grouped = [&](const at::Tensor& t) { return t.view({B, KV, rep, T}); };
  at::Tensor col = grouped(st.col_sum), row = grouped(st.row_sum), mom = grouped(st.key_moment),
             diag = grouped(st.diag), ssum = grouped(st.score_sum), lse = grouped(st.logsumexp),
             amax = grouped(st.row_argmax), mass_wo = grouped(st.mass_without_argmax),
             mom_wo = grouped(st.moment_without_argmax);
  const at::Tensor pos = at::arange(T, f64.dtype(at::kFloat));
  // kv heads per step: all of them when every head gets >= 64 rows per chunk.
  const int64_t min_rows = std::min<int64_t>(T, 64);
  const int64_t G = std::clamp<int64_t>(kAttentionChunkElements / (B * rep * T * min_rows), 1, KV);
  for (int64_t g0 = 0; g0 < KV; g0 += G) {
    const int64_t ng = std::min(G, KV - g0);
    const int64_t r = rows > 0 ? rows : DefaultChunkRows(B * ng * rep, T, spec.window);
    for (const QueryChunk& c : QueryChunks(T, r, spec.window)) {
      const int64_t nq = c.q1 - c.q0, nk = c.q1 - c.k0;
      at::Tensor qc = qg.narrow(1, g0, ng).narrow(3, c.q0, nq);
      at::Tensor s = AttentionScores(qc, kg.narrow(1, g0, ng).narrow(3, c.k0, nk), c.q0, c.k0, spec)
                         .to(at::kFloat);  // [b, g, rep, nq, nk]
      // With a learned key/value slot, the softmax runs over [slot, keys]
      // and the statistics keep the keys.
      at::Tensor full = s;
      if (spec.sink_key.defined()) {
        at::Tensor ks = spec.sink_key.narrow(0, g0, ng).to(qc.scalar_type()).view({1, ng, 1, 1, D});
        full = at::cat({ScaledCappedScores(qc, ks, spec).to(at::kFloat), s}, -1);
      }
      at::Tensor p = PatternOfScores(full, spec);
      if (spec.sink_key.defined()) p = p.narrow(-1, 1, nk);
      if (dtype != at::kFloat) p = p.to(dtype).to(at::kFloat);  // as hook_pattern is
      auto out = [&](const at::Tensor& acc, int64_t k0, int64_t n) {
        return acc.narrow(1, g0, ng).narrow(3, k0, n);
      };
      out(col, c.k0, nk).add_(p.sum(3).to(at::kDouble));
      // Row sums and key moments as (the row's largest entry) + (the others,
      // summed without it).
      const at::Tensor kpos = pos.narrow(0, c.k0, nk);
      auto [top, top_at] = p.max(-1, /*keepdim=*/true);  // [b, g, rep, nq, 1]
      at::Tensor rest = p.scatter(4, top_at, 0.0);
      at::Tensor rest_mass = rest.sum(4).to(at::kDouble);
      at::Tensor rest_mom = at::matmul(rest, kpos).to(at::kDouble);
      at::Tensor top_key = top_at.squeeze(4) + c.k0;
      at::Tensor top64 = top.squeeze(4).to(at::kDouble);
      out(amax, c.q0, nq).copy_(top_key);
      out(mass_wo, c.q0, nq).copy_(rest_mass);
      out(mom_wo, c.q0, nq).copy_(rest_mom);
      out(row, c.q0, nq).copy_(rest_mass + top64);
      out(mom, c.q0, nq).copy_(rest_mom + top64 * top_key.to(at::kDouble));
      at::Tensor self = (at::arange(c.q0, c.q1, f64.dtype(at::kLong)) - c.k0).view({1, 1, 1, nq, 1});
      out(diag, c.q0, nq).copy_(p.gather(4, self.expand({B, ng, rep, nq, 1})).squeeze(4));
      out(lse, c.q0, nq).copy_(at::logsumexp(full, {-1}));
      at::Tensor visible = AttendMask(c.q0, nq, c.k0, nk, spec.window, q.device());
      out(ssum, c.q0, nq).copy_(at::where(visible, s, at::scalar_tensor(0.0, s.options())).sum(-1));
    }
  }
  return st;
}

at::Tensor ScoresAtKey(const at::Tensor& q, const at::Tensor& k, const at::Tensor& key,
                       const AttentionSpec& spec) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), KV = k.size(2);
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(q.device());
  at::Tensor kv_of_head = at::arange(H, i64).div(H / KV, "floor");
  at::Tensor kh = k.permute({0, 2, 1, 3}).index_select(1, kv_of_head);  // [b, h, pos, d]
  at::Tensor kk = key.to(i64);
  at::Tensor ksel = kh.gather(2, kk.view({B, H, 1, 1}).expand({B, H, 1, D}));  // [b, h, 1, d]
  at::Tensor s = ScaledCappedScores(q.transpose(1, 2), ksel, spec).squeeze(3).to(at::kFloat);
  at::Tensor t = at::arange(T, i64).view({1, 1, T});
  at::Tensor kpos = kk.view({B, H, 1});
  at::Tensor visible = kpos <= t;
  if (spec.window > 0) visible = visible.logical_and(t - kpos < spec.window);
  return s.masked_fill(visible.logical_not(), kNegInf);
}

at::Tensor PatternAtKey(const at::Tensor& scores_at_key, const at::Tensor& logsumexp,
                        const AttentionSpec& spec, c10::ScalarType dtype) {
  at::Tensor a = spec.sigmoid ? scores_at_key.sigmoid() : (scores_at_key - logsumexp).exp();
  return dtype == at::kFloat ? a : a.to(dtype).to(at::kFloat);
}

}  // namespace sinkscope
