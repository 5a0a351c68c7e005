#include "tests/engine/llama2c_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

namespace sinkscope::testing {
namespace {

/// out[i] = sum_j w[i * n + j] x[j], w [d, n] row-major.
void MatVec(const double* w, const double* x, int64_t d, int64_t n, double* out) {
  for (int64_t i = 0; i < d; ++i) {
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += w[i * n + j] * x[j];
    out[i] = s;
  }
}

void RmsNorm(const double* x, const double* g, int64_t n, double* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * g[i];
}

/// llama2.c's RoPE: adjacent pairs of each head rotated by pos * freq.
void Rope(double* v, int64_t n, int64_t head_size, int64_t pos) {
  for (int64_t i = 0; i < n; i += 2) {
    const double freq = 1.0 / std::pow(10000.0, static_cast<double>(i % head_size) / head_size);
    const double c = std::cos(pos * freq), s = std::sin(pos * freq);
    const double a = v[i], b = v[i + 1];
    v[i] = a * c - b * s;
    v[i + 1] = a * s + b * c;
  }
}

}  // namespace

bool Llama2cFloat64::Load(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot open " + path;
    return false;
  }
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int32_t h[7];
  if (raw.size() < sizeof(h)) {
    *error = path + ": shorter than the 28-byte header";
    return false;
  }
  std::memcpy(h, raw.data(), sizeof(h));
  dim = h[0], hidden = h[1], n_layers = h[2], n_heads = h[3], n_kv_heads = h[4];
  vocab = std::abs(h[5]), seq_len = h[6];
  const bool shared_head = h[5] > 0;
  const int64_t kv_dim = n_kv_heads * head_size(), L = n_layers;
  size_t off = sizeof(h);
  bool ok = true;
  auto take = [&](int64_t n, std::vector<double>* out) {
    if (!ok || off + n * sizeof(float) > raw.size()) {
      ok = false;
      return;
    }
    std::vector<float> f(n);
    std::memcpy(f.data(), raw.data() + off, n * sizeof(float));
    out->assign(f.begin(), f.end());
    off += n * sizeof(float);
  };
  take(vocab * dim, &emb_);
  take(L * dim, &rms_att_);
  take(L * dim * dim, &wq_);
  take(L * kv_dim * dim, &wk_);
  take(L * kv_dim * dim, &wv_);
  take(L * dim * dim, &wo_);
  take(L * dim, &rms_ffn_);
  take(L * hidden * dim, &w1_);
  take(L * dim * hidden, &w2_);
  take(L * hidden * dim, &w3_);
  take(dim, &rms_final_);
  off += seq_len * head_size() * sizeof(float);  // freq_cis_real, freq_cis_imag
  if (shared_head) {
    wcls_ = emb_;
  } else {
    take(vocab * dim, &wcls_);
  }
  if (!ok) *error = path + ": shorter than its header's shapes";
  return ok;
}

Llama2cFloat64::Trace Llama2cFloat64::Forward(const std::vector<int64_t>& ids) const {
  const int64_t T = static_cast<int64_t>(ids.size()), D = dim, hs = head_size();
  const int64_t kv_dim = n_kv_heads * hs, group = n_heads / n_kv_heads;
  Trace tr;
  std::vector<std::vector<double>> x(T, std::vector<double>(D));
  for (int64_t t = 0; t < T; ++t) std::copy_n(emb_.data() + ids[t] * D, D, x[t].data());
  std::vector<double> xb(D), hb(hidden), hb2(hidden), att(T), out(D);
  for (int64_t l = 0; l < n_layers; ++l) {
    std::vector<double> q(T * D), k(T * kv_dim), v(T * kv_dim);
    for (int64_t t = 0; t < T; ++t) {
      RmsNorm(x[t].data(), rms_att_.data() + l * D, D, xb.data());
      MatVec(wq_.data() + l * D * D, xb.data(), D, D, q.data() + t * D);
      MatVec(wk_.data() + l * kv_dim * D, xb.data(), kv_dim, D, k.data() + t * kv_dim);
      MatVec(wv_.data() + l * kv_dim * D, xb.data(), kv_dim, D, v.data() + t * kv_dim);
      Rope(q.data() + t * D, D, hs, t);
      Rope(k.data() + t * kv_dim, kv_dim, hs, t);
    }
    tr.rot_q.push_back(q);
    tr.rot_k.push_back(k);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> z(D, 0.0);
      for (int64_t h = 0; h < n_heads; ++h) {
        const double* qh = q.data() + t * D + h * hs;
        const int64_t g = h / group;
        double mx = -INFINITY;
        for (int64_t s = 0; s <= t; ++s) {
          const double* ks = k.data() + s * kv_dim + g * hs;
          double dot = 0;
          for (int64_t d = 0; d < hs; ++d) dot += qh[d] * ks[d];
          att[s] = dot / std::sqrt(static_cast<double>(hs));
          mx = std::max(mx, att[s]);
        }
        double sum = 0;
        for (int64_t s = 0; s <= t; ++s) sum += (att[s] = std::exp(att[s] - mx));
        for (int64_t s = 0; s <= t; ++s) {
          const double* vs = v.data() + s * kv_dim + g * hs;
          for (int64_t d = 0; d < hs; ++d) z[h * hs + d] += att[s] / sum * vs[d];
        }
      }
      MatVec(wo_.data() + l * D * D, z.data(), D, D, out.data());
      for (int64_t i = 0; i < D; ++i) x[t][i] += out[i];
    }
    for (int64_t t = 0; t < T; ++t) {
      RmsNorm(x[t].data(), rms_ffn_.data() + l * D, D, xb.data());
      MatVec(w1_.data() + l * hidden * D, xb.data(), hidden, D, hb.data());
      MatVec(w3_.data() + l * hidden * D, xb.data(), hidden, D, hb2.data());
      for (int64_t i = 0; i < hidden; ++i) hb[i] = hb[i] / (1.0 + std::exp(-hb[i])) * hb2[i];
      MatVec(w2_.data() + l * D * hidden, hb.data(), D, hidden, out.data());
      for (int64_t i = 0; i < D; ++i) x[t][i] += out[i];
    }
  }
  tr.logits.assign(T, std::vector<double>(vocab));
  for (int64_t t = 0; t < T; ++t) {
    RmsNorm(x[t].data(), rms_final_.data(), D, xb.data());
    MatVec(wcls_.data(), xb.data(), vocab, D, tr.logits[t].data());
  }
  return tr;
}

double Llama2cFloat64::NllSum(const std::vector<int64_t>& ids) const {
  const Trace tr = Forward(ids);
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const std::vector<double>& row = tr.logits[t];
    const double mx = *std::max_element(row.begin(), row.end());
    double s = 0;
    for (double v : row) s += std::exp(v - mx);
    nll += mx + std::log(s) - row[ids[t + 1]];
  }
  return nll;
}

}  // namespace sinkscope::testing
