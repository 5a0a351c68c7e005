#!/usr/bin/env python3
"""Writes a random-weight Llama checkpoint in the Hugging Face layout
(config.json + model.safetensors) without building the model in Python:
each tensor is drawn on the chosen device (N(0, 0.02), norms 1) and written
with `safetensors`. Used by bench/gpu/run.sh on a host where nothing can be
installed (torch + safetensors come with its transformers).

  make_random_hf.py --shape 7b --dtype bfloat16 --out DIR [--device cuda]
Shapes: 7b (Llama-2-7B: d 4096, 32 layers, 32 heads, d_ffn 11008, vocab 32000),
1b (d 2048, 16 layers, 32 heads, 8 kv heads, d_ffn 5632, vocab 32000: TinyLlama-1.1B),
tiny (d 64, 2 layers, 4 heads, d_ffn 96, vocab 256: the CPU dry run).
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

SHAPES = {
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32000),
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
               intermediate_size=5632, vocab_size=32000),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=96, vocab_size=256),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-positions", type=int, default=4096)
    ap.add_argument("--spike", type=float, default=0.0, help="planted BOS value on channel 7 (0 = none)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    d, L, H, KV, F, V = (s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"],
                         s["num_key_value_heads"], s["intermediate_size"], s["vocab_size"])
    dh = d // H
    dt = DTYPES[a.dtype]
    g = torch.Generator(device=a.device).manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=a.device, dtype=torch.float32) * 0.02).to(dt).cpu()

    t = {"model.embed_tokens.weight": rnd(V, d), "model.norm.weight": torch.ones(d, dtype=dt),
         "lm_head.weight": rnd(V, d)}
    if a.spike:
        t["model.embed_tokens.weight"][1].zero_()
        t["model.embed_tokens.weight"][1, 7] = a.spike
    for l in range(L):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = torch.ones(d, dtype=dt)
        t[p + "post_attention_layernorm.weight"] = torch.ones(d, dtype=dt)
        t[p + "self_attn.q_proj.weight"] = rnd(H * dh, d)
        t[p + "self_attn.k_proj.weight"] = rnd(KV * dh, d)
        t[p + "self_attn.v_proj.weight"] = rnd(KV * dh, d)
        t[p + "self_attn.o_proj.weight"] = rnd(d, H * dh)
        t[p + "mlp.gate_proj.weight"] = rnd(F, d)
        t[p + "mlp.up_proj.weight"] = rnd(F, d)
        t[p + "mlp.down_proj.weight"] = rnd(d, F)
    os.makedirs(a.out, exist_ok=True)
    save_file(t, os.path.join(a.out, "model.safetensors"))
    cfg = dict(s, model_type="llama", architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5, rope_theta=10000.0,
               max_position_embeddings=a.max_positions, tie_word_embeddings=False, torch_dtype=a.dtype,
               hidden_act="silu", bos_token_id=1, eos_token_id=2)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    n = sum(x.numel() for x in t.values())
    print(json.dumps({"out": a.out, "shape": a.shape, "n_params": n, "dtype": a.dtype}))


if __name__ == "__main__":
    main()
