"""An independent float64 reference of llama2.c checkpoints, in numpy.

Written from the llama2.c format description in shared/README.md and
llama2.c's run.c (Karpathy, MIT), sharing no code with the engine: the
reference the tests compare the engine's numbers with (residual streams,
block outputs, logits, per-token NLL, and the eq. 27 / vo-circuit quantities
built on the weights).

Layout: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len; a negative vocab_size means an untied output head), then float32
token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim],
wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim],
w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final
[dim], freq_cis_real/imag [seq_len, head_size/2] (skipped), wcls [vocab, dim]
when untied. RoPE rotates adjacent pairs (2i, 2i+1) by pos * 10000^(-2i/hs);
RMSNorm eps 1e-5.
"""
from __future__ import annotations

import numpy as np


class Llama2c:
    """The weights of a llama2.c .bin file, as float64 arrays."""

    def __init__(self, path: str):
        raw = open(path, "rb").read()
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = np.frombuffer(raw[:28], np.int32)
        self.shared_head = vocab > 0
        vocab = abs(int(vocab))
        self.dim, self.hidden, self.n_layers = int(dim), int(hidden), int(n_layers)
        self.n_heads, self.n_kv_heads, self.vocab, self.seq_len = int(n_heads), int(n_kv), vocab, int(seq_len)
        self.head_size = self.dim // self.n_heads
        kv_dim = self.n_kv_heads * self.head_size
        f = np.frombuffer(raw[28:], np.float32)
        off = 0

        def take(*shape):
            nonlocal off
            n = int(np.prod(shape))
            a = f[off:off + n].reshape(shape).astype(np.float64)
            off += n
            return a

        L = self.n_layers
        self.emb = take(vocab, dim)
        self.rms_att = take(L, dim)
        self.wq = take(L, dim, dim)
        self.wk = take(L, kv_dim, dim)
        self.wv = take(L, kv_dim, dim)
        self.wo = take(L, dim, dim)
        self.rms_ffn = take(L, dim)
        self.w1 = take(L, hidden, dim)
        self.w2 = take(L, dim, hidden)
        self.w3 = take(L, hidden, dim)
        self.rms_final = take(dim)
        off += self.seq_len * self.head_size  # freq_cis_real + freq_cis_imag
        self.wcls = self.emb if self.shared_head else take(vocab, dim)

    @staticmethod
    def rmsnorm(x, w, eps=1e-5):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(self, x):
        """x [T, heads, hs] rotated in adjacent pairs (2i, 2i+1) by position."""
        T, _, hs = x.shape
        i = np.arange(0, hs, 2)
        ang = np.arange(T)[:, None] * (10000.0 ** (-i / hs))[None, :]  # [T, hs/2]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    def qkv(self, layer, x):
        """Rotated q [T, n_heads, hs], rotated k and v [T, n_kv_heads, hs] of
        layer `layer` for the residual stream x [T, dim] entering it."""
        T, hs = x.shape[0], self.head_size
        xb = self.rmsnorm(x, self.rms_att[layer])
        q = (xb @ self.wq[layer].T).reshape(T, self.n_heads, hs)
        k = (xb @ self.wk[layer].T).reshape(T, self.n_kv_heads, hs)
        v = (xb @ self.wv[layer].T).reshape(T, self.n_kv_heads, hs)
        return self.rope(q), self.rope(k), v

    def forward(self, ids):
        """Runs token ids [T]; returns a dict: `embed` [T, dim], `resid` [2L,
        T, dim] (post-residual after paper blocks 1..2L: resid_mid, resid_post
        of each layer), `out` [2L, T, dim] (attn_out / mlp_out), `pattern`
        [L, n_heads, T, T] and `logits` [T, vocab]."""
        ids = np.asarray(ids)
        T, hs = len(ids), self.head_size
        x = self.emb[ids].copy()
        embed = x.copy()
        resid, out, patterns = [], [], []
        causal = np.triu(np.ones((T, T), bool), 1)
        group = self.n_heads // self.n_kv_heads
        for l in range(self.n_layers):
            q, k, v = self.qkv(l, x)
            k = np.repeat(k, group, axis=1)
            v = np.repeat(v, group, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hs)
            scores[:, causal] = -np.inf
            scores -= scores.max(-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(-1, keepdims=True)
            patterns.append(p)
            z = np.einsum("hqk,khd->qhd", p, v).reshape(T, self.dim)
            attn_out = z @ self.wo[l].T
            x = x + attn_out
            out.append(attn_out)
            resid.append(x.copy())
            xb = self.rmsnorm(x, self.rms_ffn[l])
            g = xb @ self.w1[l].T
            hidden = g / (1.0 + np.exp(-g)) * (xb @ self.w3[l].T)
            mlp_out = hidden @ self.w2[l].T
            x = x + mlp_out
            out.append(mlp_out)
            resid.append(x.copy())
        logits = self.rmsnorm(x, self.rms_final) @ self.wcls.T
        return {"embed": embed, "resid": np.stack(resid), "out": np.stack(out),
                "pattern": np.stack(patterns), "logits": logits}


def nll(logits, ids):
    """Per-position next-token NLL (nats) [T-1] of ids[1:] given logits [T, vocab]."""
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    ids = np.asarray(ids)
    return -logp[np.arange(len(ids) - 1), ids[1:]]


def perplexity(logits, ids):
    """exp(mean NLL) of the next tokens ids[1:]."""
    return float(np.exp(nll(logits, ids).mean()))


def read_tokenizer(path: str, vocab_size: int):
    """A llama2.c tokenizer.bin: (pieces as bytes, scores), vocab_size of each."""
    raw = open(path, "rb").read()
    off = 4  # int32 max_token_length
    pieces, scores = [], []
    for _ in range(vocab_size):
        score, n = np.frombuffer(raw[off:off + 4], np.float32)[0], np.frombuffer(raw[off + 4:off + 8], np.int32)[0]
        off += 8
        pieces.append(raw[off:off + n])
        scores.append(float(score))
        off += n
    return pieces, scores


def encode(text: str, pieces, scores, bos: bool = True):
    """llama2.c's encoder (run.c `encode`, as shared/README.md states it): BOS
    = 1, a dummy-prefix piece " " for a non-empty text, one piece per UTF-8
    character (else one <0xXX> piece per byte, id byte + 3), then repeatedly
    the leftmost adjacent pair whose merge is a piece with the highest score."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    ids = [1] if bos else []
    if not text:
        return ids
    toks = [lookup[b" "]]
    for ch in text:
        b = ch.encode("utf-8")
        if b in lookup:
            toks.append(lookup[b])
        else:
            toks.extend(x + 3 for x in b)
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(toks) - 1):
            j = lookup.get(pieces[toks[i]] + pieces[toks[i + 1]])
            if j is not None and scores[j] > best:
                best, best_i, best_id = scores[j], i, j
        if best_i < 0:
            break
        toks[best_i:best_i + 2] = [best_id]
    return ids + toks
