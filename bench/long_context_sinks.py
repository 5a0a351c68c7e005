#!/usr/bin/env python3
"""Long-context attention statistics: the sink analysis at T = 4k / 16k / 32k.

The sink analysis (eq. 27-28, the Gu et al. variant, attention distance with
and without the sink, logit gap) is computed from query chunks, never a
[batch, head, T, T] pattern per layer (worker/engine/attention.h), so its
memory grows as O(T). This measures it: for each T, one random-weight Llama
(built with `transformers`, saved with `save_pretrained`, float32 safetensors,
max_position_embeddings = the longest T), one sequence of T token ids, and in
a fresh `sinkscope-run bench` process per (T, variant):

  * plain: the forward pass without hooks (fused attention),
  * sinks: RunSinkAnalysis over every layer, window = T,

reporting seconds and the process's peak RSS (VmHWM, reset after the model is
loaded, so "peak - loaded" is what the variant itself needs), beside what the
materialised pattern of one layer would take (batch x heads x T^2 float32).

  build/venv/bin/python bench/long_context_sinks.py            # 4k, 16k, 32k (minutes)
  ... --lengths 4096 --layers 2                                # a quick look
  ... --model-dir DIR                                          # a Hugging Face checkpoint instead
  ... --smoke                                                  # tiny shape, T = 64 and 300

Writes long_context_sinks.json and .md into --out-dir (default: a temp dir)
and prints the table. Never run by ctest.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build_model(args, out_dir, n_ctx):
    import torch
    import transformers
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=n_ctx, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32)
    path = os.path.join(out_dir, "model")
    model.save_pretrained(path)
    return path, cfg.num_attention_heads


def run_variant(args, model_dir, ids_file, variant):
    cmd = [args.sinkscope_run, "bench", "--model", model_dir, "--ids", "@" + ids_file,
           "--variants", variant, "--iters", str(args.iters), "--warmup", "0", "--reset-hwm",
           "--threads", str(args.threads), "--dtype", args.dtype]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-2000:] or f"exit {r.returncode}"}
    out = json.loads(r.stdout)
    secs = sorted(out["seconds"][variant])
    return {"seconds": secs[len(secs) // 2], "rss_loaded_bytes": out["rss_loaded_bytes"],
            "vm_hwm_bytes": out["vm_hwm_bytes"],
            "sink_ratio": out.get("sinks", {}).get("sink_ratio")}


def gib(b):
    return f"{b / 2**30:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--sinkscope-run",
                    default=os.path.join(here, "..", "build", "worker", "engine", "sinkscope-run"))
    ap.add_argument("--lengths", default="4096,16384,32768")
    ap.add_argument("--model-dir", help="a Hugging Face checkpoint to use instead of a random one")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=12)
    ap.add_argument("--d-ffn", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: libtorch default)")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--smoke", action="store_true", help="tiny shape, T = 64 and 300")
    ap.add_argument("--out-dir")
    args = ap.parse_args()
    if args.smoke:
        args.lengths, args.layers, args.d_model, args.heads, args.kv_heads = "64,300", 2, 64, 4, 2
        args.d_ffn, args.vocab = 96, 128
    lengths = [int(x) for x in args.lengths.split(",")]
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="sinkscope-longctx-")
    os.makedirs(out_dir, exist_ok=True)
    if args.model_dir:
        model_dir = args.model_dir
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        heads = cfg.get("num_attention_heads") or cfg.get("text_config", {}).get("num_attention_heads")
        vocab = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
    else:
        model_dir, heads = build_model(args, out_dir, max(lengths))
        vocab = args.vocab
    rows = []
    for T in lengths:
        ids_file = os.path.join(out_dir, f"ids_{T}.txt")
        with open(ids_file, "w") as f:
            f.write(",".join(["1"] + [str(3 + (i * 7919) % (vocab - 3)) for i in range(1, T)]))
        row = {"T": T, "pattern_bytes_per_layer": heads * T * T * 4}
        for variant in ("plain", "sinks"):
            print(f"T = {T}: {variant} ...", file=sys.stderr, flush=True)
            row[variant] = run_variant(args, model_dir, ids_file, variant)
        rows.append(row)
    lines = ["| T | plain s | sinks s | sinks / plain | peak - loaded, plain (GiB) | "
             "peak - loaded, sinks (GiB) | one layer's [T, T] pattern (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p, s = r["plain"], r["sinks"]
        if "error" in p or "error" in s:
            lines.append(f"| {r['T']} | {p.get('error', '')} | {s.get('error', '')} | | | | |")
            continue
        lines.append(
            f"| {r['T']} | {p['seconds']:.2f} | {s['seconds']:.2f} | {s['seconds'] / p['seconds']:.2f} | "
            f"{gib(p['vm_hwm_bytes'] - p['rss_loaded_bytes'])} | "
            f"{gib(s['vm_hwm_bytes'] - s['rss_loaded_bytes'])} | {gib(r['pattern_bytes_per_layer'])} |")
    table = "\n".join(lines)
    with open(os.path.join(out_dir, "long_context_sinks.json"), "w") as f:
        json.dump({"model_dir": model_dir, "dtype": args.dtype, "threads": args.threads,
                   "rows": rows}, f, indent=1)
    with open(os.path.join(out_dir, "long_context_sinks.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"(written to {out_dir})", file=sys.stderr)
    return 1 if any("error" in r["plain"] or "error" in r["sinks"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
