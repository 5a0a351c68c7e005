#!/usr/bin/env python3
"""Eager-PyTorch reference for sinkscope-bench section 2.

The same Llama forward pass as worker/engine/model.cc (pre-norm RMSNorm,
rotate-halves RoPE, eager causal attention, SwiGLU MLP), written as plain
torch.nn modules, with the per-block statistics of an activation scan
computed the way the research code does it (locuslab/massive-activations:
``feat_abs = feat.abs(); torch.sort(feat_abs.flatten(), descending=True)``
for the top 3, ``torch.median(feat_abs)``), but in register_forward_hook's
so nothing is cached across blocks.

Blocks follow the paper's numbering: a model with L layers has 2L blocks,
odd = attention, even = MLP; each block is a module whose output is the
post-residual stream (hook_resid_mid / hook_resid_post) and whose inner
module (self_attn / mlp) outputs the block output (hook_attn_out /
hook_mlp_out).

Pure torch: the safetensors file is parsed by hand (8-byte little-endian
header length, JSON header, raw data) since the `safetensors` package may be
absent.

Modes:
  --serve          line protocol on stdin/stdout for sinkscope-bench:
                   "time <plain|hooks-sort|hooks-topk> <input>" -> RESULT {"seconds": s}
                   "stats <input>" -> RESULT {"blocks": [...]}; "quit" -> BYE
  --mem MODE       one run in this fresh process, prints RESULT with VmHWM
  (default)        prints the per-block statistics of every input
"""
import argparse
import json
import math
import mmap
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_safetensors(path):
    """Returns {name: tensor} (copies; the file is closed afterwards)."""
    out = {}
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            (n,) = struct.unpack("<Q", mm[:8])
            header = json.loads(mm[8 : 8 + n].decode("utf-8"))
            base = 8 + n
            for name, e in header.items():
                if name == "__metadata__":
                    continue
                dtype = DTYPES[e["dtype"]]
                begin, end = e["data_offsets"]
                count = (end - begin) // torch.tensor([], dtype=dtype).element_size()
                t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + begin)
                out[name] = t.reshape(e["shape"]).clone()
                del t
        finally:
            mm.close()
    return out


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        normed = x32 * (x32.pow(2).mean(-1, keepdim=True) + self.eps).rsqrt()
        return (normed * self.weight.float()).to(x.dtype)


def apply_rope(x, cos, sin):
    # x: [batch, pos, head, d_head]; cos/sin: [pos, d_head/2] float32 (rotate halves)
    T, half = x.shape[1], x.shape[3] // 2
    c = cos[:T].view(1, T, 1, half)
    s = sin[:T].view(1, T, 1, half)
    x32 = x.float()
    x1, x2 = x32[..., :half], x32[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], 3).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, H, KV, Dh = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["d_head"]
        self.H, self.KV, self.Dh = H, KV, Dh
        self.q_proj = nn.Linear(d, H * Dh, bias=False)
        self.k_proj = nn.Linear(d, KV * Dh, bias=False)
        self.v_proj = nn.Linear(d, KV * Dh, bias=False)
        self.o_proj = nn.Linear(H * Dh, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.Dh)
        k = self.k_proj(x).view(B, T, self.KV, self.Dh)
        v = self.v_proj(x).view(B, T, self.KV, self.Dh)
        q = apply_rope(q, cos, sin).transpose(1, 2)
        k = apply_rope(k, cos, sin).transpose(1, 2)
        v = v.transpose(1, 2)
        if self.KV != self.H:
            r = self.H // self.KV
            k = k.repeat_interleave(r, dim=1)
            v = v.repeat_interleave(r, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.Dh))
        scores = scores.masked_fill(mask.logical_not(), float("-inf"))
        pattern = torch.softmax(scores.float(), -1).to(x.dtype)
        z = torch.matmul(pattern, v).transpose(1, 2)
        return self.o_proj(z.reshape(B, T, self.H * self.Dh))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg["d_model"], cfg["d_ffn"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class AttnBlock(nn.Module):
    """Paper block 2l+1: returns the post-residual h + attn(norm(h))."""

    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["d_model"], cfg["eps"])
        self.self_attn = Attention(cfg)

    def forward(self, h, cos, sin, mask):
        return h + self.self_attn(self.input_layernorm(h), cos, sin, mask)


class MlpBlock(nn.Module):
    """Paper block 2l+2: returns the post-residual h + mlp(norm(h))."""

    def __init__(self, cfg):
        super().__init__()
        self.post_attention_layernorm = RMSNorm(cfg["d_model"], cfg["eps"])
        self.mlp = MLP(cfg)

    def forward(self, h):
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg["d_vocab"], cfg["d_model"])
        self.blocks = nn.ModuleList()
        for _ in range(cfg["n_layers"]):
            self.blocks.append(AttnBlock(cfg))
            self.blocks.append(MlpBlock(cfg))
        self.norm = RMSNorm(cfg["d_model"], cfg["eps"])
        self.lm_head = nn.Linear(cfg["d_model"], cfg["d_vocab"], bias=False)
        half = cfg["d_head"] // 2
        inv = torch.tensor(
            [cfg["rope_theta"] ** (-2.0 * i / cfg["d_head"]) for i in range(half)],
            dtype=torch.float64,
        ).float()
        angles = torch.outer(torch.arange(cfg["n_ctx"], dtype=torch.float32), inv)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens, logits=False):
        T = tokens.shape[1]
        pos = torch.arange(T).view(T, 1)
        mask = pos.view(1, T) <= pos
        h = self.embed_tokens(tokens)
        for blk in self.blocks:
            h = blk(h, self.cos, self.sin, mask) if isinstance(blk, AttnBlock) else blk(h)
        if not logits:
            return None
        return self.lm_head(self.norm(h)).float()


def load_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    n_heads = hf["num_attention_heads"]
    cfg = {
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads", n_heads),
        "d_head": hf.get("head_dim") or hf["hidden_size"] // n_heads,
        "d_ffn": hf["intermediate_size"],
        "d_vocab": hf["vocab_size"],
        "n_ctx": hf.get("max_position_embeddings", 2048),
        "eps": hf.get("rms_norm_eps", 1e-5),
        "rope_theta": hf.get("rope_theta", 10000.0),
    }
    if hf.get("rope_scaling"):
        raise SystemExit("pytorch_scan.py: rope_scaling is not implemented")
    model = Llama(cfg)
    weights = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    sd = {"embed_tokens.weight": weights.pop("model.embed_tokens.weight"),
          "norm.weight": weights.pop("model.norm.weight"),
          "lm_head.weight": weights.pop("lm_head.weight")}
    for l in range(cfg["n_layers"]):
        p = f"model.layers.{l}."
        a, m = f"blocks.{2 * l}.", f"blocks.{2 * l + 1}."
        sd[a + "input_layernorm.weight"] = weights.pop(p + "input_layernorm.weight")
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[a + f"self_attn.{n}.weight"] = weights.pop(p + f"self_attn.{n}.weight")
        sd[m + "post_attention_layernorm.weight"] = weights.pop(p + "post_attention_layernorm.weight")
        for n in ("gate_proj", "up_proj", "down_proj"):
            sd[m + f"mlp.{n}.weight"] = weights.pop(p + f"mlp.{n}.weight")
    if weights:
        raise SystemExit(f"pytorch_scan.py: unexpected tensors {sorted(weights)[:5]}")
    model.load_state_dict(sd, strict=True)
    del sd
    model.requires_grad_(False)
    model.eval()
    return model


class ScanHooks:
    """Per-block top-3 |value| of the post-residual and of the block output,
    and the median |value| of the post-residual, in forward hooks.

    mode "sort": torch.sort of the flattened |h| (locuslab/massive-activations);
    mode "topk": torch.topk(|h|, 3)."""

    def __init__(self, model, mode):
        self.stats = {}
        self.handles = []
        self.mode = mode
        for i, blk in enumerate(model.blocks):
            b = i + 1
            inner = blk.self_attn if isinstance(blk, AttnBlock) else blk.mlp
            self.handles.append(inner.register_forward_hook(self._hook(b, "out")))
            self.handles.append(blk.register_forward_hook(self._hook(b, "resid")))

    def _top3(self, feat_abs):
        if self.mode == "sort":
            return torch.sort(feat_abs.flatten(), descending=True).values[:3]
        return torch.topk(feat_abs.flatten(), 3).values

    def _hook(self, b, kind):
        def hook(module, inputs, output):
            feat_abs = output.detach().abs()
            s = self.stats.setdefault(b, {"block": b})
            if kind == "out":
                s["out_top3"] = self._top3(feat_abs).tolist()
            else:
                s["resid_top3"] = self._top3(feat_abs).tolist()
                s["median"] = torch.median(feat_abs).item()

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()

    def blocks(self):
        return [self.stats[b] for b in sorted(self.stats)]


def run(model, tokens, mode):
    """One forward in `mode`; returns (seconds, stats or None)."""
    hooks = None
    if mode.startswith("hooks-"):
        hooks = ScanHooks(model, mode[len("hooks-"):])
    elif mode != "plain":
        raise ValueError(f"unknown mode {mode}")
    t0 = time.perf_counter()
    with torch.no_grad():
        model(tokens)
    secs = time.perf_counter() - t0
    stats = None
    if hooks is not None:
        stats = hooks.blocks()
        hooks.remove()
    return secs, stats


def vm_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--inputs", required=True, help='JSON {"A": [ids], "B": [ids]}')
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--mem", choices=["plain", "hooks-sort", "hooks-topk"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with open(a.inputs) as f:
        inputs = {k: torch.tensor(v, dtype=torch.long).view(1, -1) for k, v in json.load(f).items()}
    model = load_model(a.model_dir)

    if a.mem:
        import gc

        gc.collect()
        rss = vm_status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            reset = True
        except OSError:
            reset = False
        secs, _ = run(model, inputs["B"], a.mem)
        print("RESULT " + json.dumps({"variant": a.mem, "rss_after_load_kib": rss,
                                      "peak_kib": vm_status("VmHWM"), "hwm_reset": reset,
                                      "seconds": secs}), flush=True)
        return

    if a.serve:
        print("READY " + json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                     "params": sum(p.numel() for p in model.parameters())}),
              flush=True)
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "quit":
                print("BYE", flush=True)
                return
            if parts[0] == "time":
                secs, _ = run(model, inputs[parts[2]], parts[1])
                print("RESULT " + json.dumps({"seconds": secs}), flush=True)
            elif parts[0] == "stats":
                _, stats = run(model, inputs[parts[1]], "hooks-sort")
                print("RESULT " + json.dumps({"blocks": stats}), flush=True)
            else:
                print("RESULT " + json.dumps({"error": f"unknown command {parts[0]}"}), flush=True)
        return

    for name, tok in inputs.items():
        secs, stats = run(model, tok, "hooks-sort")
        print(f"input {name}: {tok.shape[1]} tokens, {secs:.3f} s")
        for s in stats:
            sub = "attn" if s["block"] % 2 else "mlp"
            print(f"  block {s['block']:3d} (layer {(s['block'] - 1) // 2} {sub:4s}) "
                  f"resid top3 {['%.4g' % v for v in s['resid_top3']]} "
                  f"out top3 {['%.4g' % v for v in s['out_top3']]} median {s['median']:.4g}")


if __name__ == "__main__":
    main()
