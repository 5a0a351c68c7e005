#!/usr/bin/env python3
"""Loading at the checkpoint's size: seconds and peak RSS of a load, beside transformers.

Writes a synthetic bf16 checkpoint laid out as the Hub's (Llama-3 config.json,
model-0000X-of-0000N.safetensors shards written by the `safetensors` package,
model.safetensors.index.json) and, in the same run, loads it

  * with the engine: `sinkscope-run bench --dtype bfloat16 --variants scan`
    (LoadCheckpoint placed at its target, then Model::Create; then a scan of a
    few tokens, so the model also runs), reporting the load's seconds, VmRSS
    before it (the runtime's baseline: libtorch loaded, no model) and VmHWM
    after it;
  * with transformers: `AutoModelForCausalLM.from_pretrained(dir,
    dtype=torch.bfloat16, low_cpu_mem_usage=True)` in a fresh Python process,
    VmRSS after the imports (its baseline) and VmHWM after the load.

Each load runs in a fresh process, after the shards were read once into the
page cache (so both read from memory where it holds them), or with --cold
after they were dropped from it (posix_fadvise DONTNEED: both read the disk). The figure the
issue asks for is (peak - baseline) / checkpoint bytes (the tensors' bytes,
the index's total_size).

Shapes: `1b` (Llama-3.2-1B: d_model 2048, 16 layers, 32/8 heads, d_ffn 8192,
vocab 128256, tied; 2.47 GB, 3 shards), `8b` (Llama-3-8B: d_model 4096, 32
layers, 32/8 heads, d_ffn 14336, vocab 128256; 16.06 GB, 4 shards), `tiny`
(a smoke test). The checkpoint is deleted afterwards unless --keep.

  build/venv/bin/python bench/load_memory.py --shapes 1b
  build/venv/bin/python bench/load_memory.py --shapes 8b --repeats 1   # needs ~19 GB free
  ... --sinkscope-run OLD_BINARY --label before                        # an older build

Prints a Markdown table and writes load_memory.json into --out-dir. Never run by ctest.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = {
    # name: d_model, layers, heads, kv_heads, d_ffn, vocab, tied, shards, rope_scaling
    "tiny": dict(d=256, L=4, H=8, KV=2, F=704, V=4096, tied=True, shards=3, llama3_rope=True),
    "1b": dict(d=2048, L=16, H=32, KV=8, F=8192, V=128256, tied=True, shards=3, llama3_rope=True),
    "8b": dict(d=4096, L=32, H=32, KV=8, F=14336, V=128256, tied=False, shards=4, llama3_rope=False),
}


def tensor_specs(s):
    """(name, shape) in the order the Hub's Llama checkpoints list them."""
    d, hd = s["d"], s["d"] // s["H"]
    out = [("model.embed_tokens.weight", (s["V"], d))]
    for l in range(s["L"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (d,)),
                (p + "self_attn.q_proj.weight", (s["H"] * hd, d)),
                (p + "self_attn.k_proj.weight", (s["KV"] * hd, d)),
                (p + "self_attn.v_proj.weight", (s["KV"] * hd, d)),
                (p + "self_attn.o_proj.weight", (d, s["H"] * hd)),
                (p + "post_attention_layernorm.weight", (d,)),
                (p + "mlp.gate_proj.weight", (s["F"], d)),
                (p + "mlp.up_proj.weight", (s["F"], d)),
                (p + "mlp.down_proj.weight", (d, s["F"]))]
    out.append(("model.norm.weight", (d,)))
    if not s["tied"]:
        out.append(("lm_head.weight", (s["V"], d)))
    return out


def write_checkpoint(s, path):
    """Hub layout, bf16, shards of about equal size written by safetensors.torch.save_file."""
    import torch
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": s["d"], "intermediate_size": s["F"], "num_hidden_layers": s["L"],
        "num_attention_heads": s["H"], "num_key_value_heads": s["KV"], "head_dim": s["d"] // s["H"],
        "vocab_size": s["V"], "max_position_embeddings": 8192 if not s["llama3_rope"] else 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
        "tie_word_embeddings": s["tied"], "torch_dtype": "bfloat16", "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001,
        "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
    }
    if s["llama3_rope"]:
        cfg["rope_scaling"] = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    specs = tensor_specs(s)
    nbytes = lambda shape: 2 * math.prod(shape)
    total = sum(nbytes(sh) for _, sh in specs)
    n = s["shards"]
    # A new shard starts where a tensor's midpoint crosses k * total / n.
    groups, acc = [[]], 0
    for name, sh in specs:
        if groups[-1] and len(groups) < n and acc + nbytes(sh) / 2 > total * len(groups) / n:
            groups.append([])
        groups[-1].append((name, sh))
        acc += nbytes(sh)
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, sh in group:
            if len(sh) == 1:
                tensors[name] = (1 + 0.1 * torch.randn(sh, generator=g)).to(torch.bfloat16)
            else:
                tensors[name] = torch.empty(sh, dtype=torch.bfloat16).normal_(0, 0.02, generator=g)
            weight_map[name] = fname
        save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
        del tensors
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return total, len(groups)


def warm_page_cache(path):
    for f in sorted(os.listdir(path)):
        with open(os.path.join(path, f), "rb") as fh:
            while fh.read(64 << 20):
                pass


def drop_page_cache(path):
    """Drops the shards' clean pages from the page cache (no root needed)."""
    for f in sorted(os.listdir(path)):
        fd = os.open(os.path.join(path, f), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


TRANSFORMERS_CHILD = r"""
import json, sys, time, os
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) * 1024
import torch, transformers
torch.set_num_threads(int(sys.argv[2]))
base = status('VmRSS')
t0 = time.perf_counter()
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16,
                                                      low_cpu_mem_usage=True)
t = time.perf_counter() - t0
hwm_load, rss_load = status('VmHWM'), status('VmRSS')
n = sum(p.numel() for p in m.parameters())
# from_pretrained may leave same-dtype weights aliasing the file's mapping,
# unread: read every parameter once (what the first forward does) and measure again.
t1 = time.perf_counter()
with torch.no_grad():
    for p in m.parameters():
        p.sum()
touch = time.perf_counter() - t1
print(json.dumps({'load_seconds': t, 'rss_before_load_bytes': base,
                  'vm_hwm_after_load_bytes': hwm_load, 'rss_after_load_bytes': rss_load,
                  'touch_seconds': touch, 'vm_hwm_after_touch_bytes': status('VmHWM'),
                  'rss_after_touch_bytes': status('VmRSS'), 'n_params': n,
                  'transformers': transformers.__version__, 'torch': torch.__version__}))
"""


def run_engine(args, path):
    ids = ",".join(str(i) for i in range(1, 1 + args.scan_tokens))
    cmd = [args.sinkscope_run, "bench", "--model", path, "--ids", ids, "--variants", "scan",
           "--iters", "1", "--warmup", "0", "--threads", str(args.threads), "--dtype", "bfloat16"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": (r.stderr.strip() or f"exit {r.returncode}")[-1500:]}
    out = json.loads(r.stdout)
    res = {k: out.get(k) for k in ("load_seconds", "rss_before_load_bytes", "vm_hwm_after_load_bytes",
                                   "rss_after_load_bytes", "n_params", "weight_bytes")}
    res["scan_seconds"] = out["seconds"]["scan"][0]
    if res["load_seconds"] is None:
        # An engine from before the load figures: the process's wall time less
        # the scan, its whole-run peak, and the baseline of --baseline-rss.
        res["load_seconds"] = wall - res["scan_seconds"]
        res["vm_hwm_after_load_bytes"] = out["vm_hwm_bytes"]
        res["rss_before_load_bytes"] = args.baseline_rss
        res["note"] = "old engine: load s = process wall - scan; peak = whole run's VmHWM"
    return res


def run_transformers(args, path):
    r = subprocess.run([args.python, "-c", TRANSFORMERS_CHILD, path, str(args.threads)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip() or f"exit {r.returncode}")[-1500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1b", help="comma-separated: tiny, 1b, 8b")
    ap.add_argument("--repeats", type=int, default=2, help="loads per loader (fresh process each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scan-tokens", type=int, default=8)
    ap.add_argument("--sinkscope-run", default=os.path.join(ROOT, "build/worker/engine/sinkscope-run"))
    ap.add_argument("--label", default="engine", help="name of the engine row (e.g. 'before')")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--baseline-rss", type=int, default=0,
                    help="bytes; the runtime's baseline for an engine that does not report it")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--cold", action="store_true",
                    help="drop the shards from the page cache before each load (else: read them first)")
    ap.add_argument("--model-dir", default="", help="reuse this checkpoint directory (kept)")
    ap.add_argument("--out-dir", default="")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    args = ap.parse_args()
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="load_memory_")
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for shape in args.shapes.split(","):
        s = SHAPES[shape]
        path = args.model_dir or os.path.join(out_dir, f"llama-{shape}")
        if not args.model_dir:
            t0 = time.perf_counter()
            total, n_shards = write_checkpoint(s, path)
            print(f"[{shape}] wrote {total / 1e9:.2f} GB in {n_shards} shards in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        else:
            with open(os.path.join(path, "model.safetensors.index.json")) as f:
                index = json.load(f)
            total = index["metadata"]["total_size"]
            n_shards = len(set(index["weight_map"].values()))
        try:
            loaders = [(args.label, run_engine)]
            if not args.no_transformers:
                loaders.append(("transformers", run_transformers))
            for rep in range(args.repeats):
                for label, fn in loaders:
                    if args.cold:
                        drop_page_cache(path)
                    else:
                        warm_page_cache(path)
                    r = fn(args, path)
                    r.update(shape=shape, loader=label, repeat=rep, checkpoint_bytes=total,
                             shards=n_shards)
                    if "error" not in r:
                        r["ratio"] = (r["vm_hwm_after_load_bytes"] - r["rss_before_load_bytes"]) / total
                        if "vm_hwm_after_touch_bytes" in r:
                            r["ratio_after_touch"] = (r["vm_hwm_after_touch_bytes"] -
                                                      r["rss_before_load_bytes"]) / total
                    print(json.dumps(r), file=sys.stderr)
                    results.append(r)
        finally:
            if not args.keep and not args.model_dir:
                shutil.rmtree(path, ignore_errors=True)
    with open(os.path.join(out_dir, "load_memory.json"), "w") as f:
        json.dump(results, f, indent=1)
    gb = lambda b: f"{b / 1e9:.2f}"
    print("| shape | checkpoint GB (shards) | loader | load s | baseline RSS GB | peak RSS GB "
          "| (peak - baseline) / checkpoint | scan s / every weight read once: s, peak ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        cache = "cold" if args.cold else "warm"
        head = f"| {r['shape']} | {gb(r['checkpoint_bytes'])} ({r['shards']}) | {r['loader']} ({cache}) |"
        if "error" in r:
            print(head + f" error: {r['error'][-200:]} | | | | |")
            continue
        scan = f"scan {r['scan_seconds']:.2f}" if r.get("scan_seconds") is not None else "-"
        if "ratio_after_touch" in r:
            scan = f"read {r['touch_seconds']:.2f} s, {r['ratio_after_touch']:.3f}x"
        print(head + f" {r['load_seconds']:.2f} | {gb(r['rss_before_load_bytes'])} | "
              f"{gb(r['vm_hwm_after_load_bytes'])} | {r['ratio']:.3f}x | {scan} |")
    print(f"\n(results: {os.path.join(out_dir, 'load_memory.json')})", file=sys.stderr)


if __name__ == "__main__":
    main()
