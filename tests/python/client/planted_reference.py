"""A float64 numpy forward of the planted checkpoint (planted.py's tensors,
Hugging Face Llama layout: pre-norm RMSNorm, rotate-half RoPE, SiLU-gated
MLP), sharing no code with the engine, and the mechanism quantities the
mechanism jobs report, computed from it and from the weights:

  - silu-regime (Fig. 2): the gate pre-activation x = W_gate h~ (mlp.hook_pre)
    per token, cos(x, SiLU(x)) and ||SiLU(x)|| / ||x||;
  - vo-circuit (eq. 22): W_VO = sum_h W_O^(h) W_V^(h), the leading eigenvector
    s* of S_k = (U_k + U_k^T) / 2, U_k = sum_i W_down[k, i] W_gate[i]^T W_up[i],
    and |cos(W_VO h~, s*)| of the position-0 state of one-token sequences.
"""
from __future__ import annotations

import numpy as np

import planted

EPS = 1e-5


def weights():
    """planted.planted_tensors() as float64 arrays."""
    return {k: v.astype(np.float64) for k, v in planted.planted_tensors().items()}


def rmsnorm(x, g):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * g


def rope(x):
    """x [T, heads, dh], rotate-half RoPE (theta 10000) by position."""
    T, _, dh = x.shape
    inv = 10000.0 ** (-np.arange(0, dh, 2) / dh)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    rot = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], -1)
    return x * cos + rot * sin


def forward(ids, w=None):
    """Runs ids [T]; returns resid_pre [L+1, T, D] (resid_pre[L] = final
    residual), resid_mid [L, T, D], mlp_pre [L, T, D_FFN] (gate
    pre-activation) and ln1 [L, T, D] (attention input, normalised)."""
    w = w or weights()
    H, dh = planted.N_HEADS, planted.D_HEAD
    x = w["model.embed_tokens.weight"][np.asarray(ids)]
    T = len(ids)
    out = {"resid_pre": [], "resid_mid": [], "mlp_pre": [], "ln1": []}
    causal = np.triu(np.ones((T, T), bool), 1)
    for l in range(planted.N_LAYERS):
        p = f"model.layers.{l}."
        out["resid_pre"].append(x)
        h = rmsnorm(x, w[p + "input_layernorm.weight"])
        out["ln1"].append(h)
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, dh))
        k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, H, dh))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, H, dh)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dh)
        s[:, causal] = -np.inf
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        z = np.einsum("hqk,khd->qhd", a, v).reshape(T, H * dh)
        x = x + z @ w[p + "self_attn.o_proj.weight"].T
        out["resid_mid"].append(x)
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        out["mlp_pre"].append(g)
        x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    out["resid_pre"].append(x)
    return {k: np.stack(v) for k, v in out.items()}


def silu_regime(x):
    """cos(x, SiLU(x)) and ||SiLU(x)|| / ||x|| of gate pre-activations x [T, D_FFN]."""
    s = x / (1 + np.exp(-x))
    nx, ns = np.linalg.norm(x, axis=-1), np.linalg.norm(s, axis=-1)
    return (x * s).sum(-1) / (nx * ns), ns / nx


def vo_matrix(w, layer):
    """W_VO = sum_h W_O[:, h] W_V[h] [D, D] (one KV head per query head here)."""
    p = f"model.layers.{layer}.self_attn."
    return w[p + "o_proj.weight"] @ w[p + "v_proj.weight"]


def s_star(w, layer, k):
    """Leading eigenvector (largest |lambda|) of S_k of `layer`'s MLP (norm gains
    folded in: all 1 here)."""
    p = f"model.layers.{layer}."
    g = w[p + "post_attention_layernorm.weight"]
    gate, up = w[p + "mlp.gate_proj.weight"] * g, w[p + "mlp.up_proj.weight"] * g
    U = (gate.T * w[p + "mlp.down_proj.weight"][k]) @ up
    vals, vecs = np.linalg.eigh((U + U.T) / 2)
    return vecs[:, int(np.argmax(np.abs(vals)))]


def vo_alignments(w, token_ids, last_layer, k):
    """|cos(W_VO h~, s*)| [last_layer + 1, len(token_ids)] for one-token
    sequences, h~ = the normalised attention input at position 0 of layer l."""
    s = s_star(w, last_layer, k)
    out = np.zeros((last_layer + 1, len(token_ids)))
    for j, t in enumerate(token_ids):
        f = forward([t], w)
        for l in range(last_layer + 1):
            y = vo_matrix(w, l) @ f["ln1"][l, 0]
            n = np.linalg.norm(y)
            out[l, j] = abs(y @ s) / n if n > 0 else 0.0
    return out


def quantiles(values):
    """The 10 / 50 / 90 % order statistics v[floor(q (n - 1))] of sorted values."""
    v = np.sort(values)
    return [v[int(q * (len(v) - 1))] for q in (0.1, 0.5, 0.9)]
