#!/usr/bin/env python3
"""sinkscope against the tools researchers run today, side by side in one run.

One random-weight Llama (the 134M shape of sinkscope-bench: d_model 768, 12
layers, 12 heads, d_ffn 2048, vocab 32000) is built with `transformers`, saved
with `save_pretrained` (safetensors, float32) and analysed, on the same 512
token ids and with the same intra-op thread count everywhere, by

  * sinkscope (`sinkscope-run bench`: the engine the worker runs),
  * TransformerLens (TransformerBridge, the 4.x API): `run_with_cache` with a
    `names_filter`, then the reductions; and `run_with_hooks` reducing inside
    the hooks (nothing cached),
  * nnsight: `trace` + `.save()` of the same tensors, reductions after.

Activation scan = per paper block b = 1..2L: top-3 |h| and median |h| of the
post-residual (hook_resid_mid / hook_resid_post) and top-3 |h| of the block
output (hook_attn_out / hook_mlp_out). Sink scan = eq. 27 on every layer's
pattern: alpha_k = (1/T) sum_t A[t, k], max over k < T/2, per (layer, head).

The numbers are compared first (the run fails when any differs beyond
float32 tolerance), then every variant is timed in interleaved rounds (each
round runs every variant once; medians reported) and its peak RSS measured in
a fresh process. The BOS embedding carries a planted massive activation
(channel 7) so the scan does its spike work as on a real model.

  build/venv/bin/python bench/peers.py --sinkscope-run build/worker/engine/sinkscope-run
  ... --smoke     tiny shape, numbers only (what ctest runs: bench_peers_smoke)

Writes peers.json and peers.md into --out-dir (default: a temp dir) and prints
the table.
"""
import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

SPIKE_CHANNEL = 7
SPIKE_VALUE = 500.0


def vm_status(key):
    """VmHWM / VmRSS of this process in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ---------------------------------------------------------------- model ----


def build_model(args, out_dir):
    """Random Llama saved by transformers; returns its directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = LlamaConfig(
        hidden_size=args.d_model,
        intermediate_size=args.d_ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        vocab_size=args.vocab,
        max_position_embeddings=max(args.seq_len, 64),
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        torch_dtype="float32",
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[1].zero_()
        model.model.embed_tokens.weight[1, SPIKE_CHANNEL] = SPIKE_VALUE
    d = os.path.join(out_dir, "model")
    model.save_pretrained(d, safe_serialization=True)
    tk = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(args.vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="t1", eos_token="t2", unk_token="t0").save_pretrained(d)
    return d


def input_ids(args):
    g = torch.Generator().manual_seed(99)
    rest = torch.randint(3, args.vocab, (args.seq_len - 1,), generator=g)
    return [1] + rest.tolist()


def load_hf(model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def hf_resid_peak(model_dir, ids):
    """max |h| of the residual stream after every attention and MLP block
    (resid_mid = layer input + self_attn output, resid_post = layer output),
    by transformers' own forward."""
    model = load_hf(model_dir)
    pre, attn, post = [], [], []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(
            lambda m, args, kwargs: pre.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        layer.self_attn.register_forward_hook(lambda m, i, o: attn.append(o[0]))
        layer.register_forward_hook(lambda m, i, o: post.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(ids)
    assert len(pre) == len(attn) == len(post) == len(model.model.layers)
    hs = [p + a for p, a in zip(pre, attn)] + post
    return max(h.abs().max().item() for h in hs)


# ----------------------------------------------------------- reductions ----


def top3_median(t):
    """t: [batch, pos, d_model] -> (top-3 |h| desc, lower median |h|) as floats."""
    a = t.detach().float().abs().flatten()
    top = torch.topk(a, 3).values.tolist()
    return top, a.median().item()


def top3(t):
    return torch.topk(t.detach().float().abs().flatten(), 3).values.tolist()


def block_stats_from(get, n_layers):
    """get(name) -> tensor for TL-named hooks; per-block stats list."""
    out = []
    for layer in range(n_layers):
        for sub, resid, output in (("attn", "hook_resid_mid", "hook_attn_out"), ("mlp", "hook_resid_post", "hook_mlp_out")):
            rt, med = top3_median(get(f"blocks.{layer}.{resid}"))
            out.append({"block": 2 * layer + (1 if sub == "attn" else 2), "resid_top_abs": rt,
                        "resid_median_abs": med, "output_top_abs": top3(get(f"blocks.{layer}.{output}"))})
    return out


def scan_names(n_layers):
    return {f"blocks.{l}.{h}" for l in range(n_layers)
            for h in ("hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")}


def sink_alpha(pattern):
    """pattern [batch, head, q, k] -> per head max_{k < T/2} (1/T) sum_t A[t, k]."""
    p = pattern.detach().float()
    T = p.shape[-1]
    alpha = p.sum(dim=-2) / T  # [batch, head, k]
    return alpha[..., : T // 2].max(dim=-1).values.mean(dim=0).tolist()


# --------------------------------------------------------------- peers -----


class Peers:
    """The TransformerLens bridge and the nnsight wrapper of one HF model."""

    def __init__(self, model_dir):
        from transformers import AutoTokenizer
        from transformer_lens.model_bridge import TransformerBridge
        import nnsight

        self.hf = load_hf(model_dir)
        self.n_layers = self.hf.config.num_hidden_layers
        tok = AutoTokenizer.from_pretrained(model_dir)
        # Raw HF weights (no fold_ln / centering: the bridge's default), eager attention.
        self.tl = TransformerBridge.boot_transformers(model_dir, hf_model=self.hf, tokenizer=tok)
        self.nn = nnsight.NNsight(load_hf(model_dir))
        self.names = scan_names(self.n_layers)

    # ---- activation scan ----
    def tl_cache_scan(self, ids):
        with torch.no_grad():
            _, cache = self.tl.run_with_cache(ids, names_filter=lambda n: n in self.names)
        return block_stats_from(lambda n: cache[n], self.n_layers)

    def tl_hooks_scan(self, ids):
        stats = {}

        def make(alias):  # the bridge fires aliases under canonical names
            def hook(t, hook):
                stats[alias] = top3_median(t) if alias.endswith(("resid_mid", "resid_post")) else (top3(t), None)
            return hook

        with torch.no_grad():
            self.tl.run_with_hooks(ids, fwd_hooks=[(n, make(n)) for n in sorted(self.names)])
        out = []
        for layer in range(self.n_layers):
            for k, (resid, output) in enumerate((("hook_resid_mid", "hook_attn_out"), ("hook_resid_post", "hook_mlp_out"))):
                rt, med = stats[f"blocks.{layer}.{resid}"]
                out.append({"block": 2 * layer + 1 + k, "resid_top_abs": rt, "resid_median_abs": med,
                            "output_top_abs": stats[f"blocks.{layer}.{output}"][0]})
        return out

    def nnsight_scan(self, ids):
        saved = {}
        with torch.no_grad():
            with self.nn.trace(ids):
                for layer in range(self.n_layers):
                    blk = self.nn.model.layers[layer]
                    saved[(layer, "pre")] = blk.input.save()
                    saved[(layer, "attn")] = blk.self_attn.output[0].save()
                    saved[(layer, "mlp")] = blk.mlp.output.save()
                    saved[(layer, "post")] = blk.output.save()

        def val(x):
            x = getattr(x, "value", x)
            return x[0] if isinstance(x, tuple) else x

        def get(name):
            _, l, h = name.split(".")
            l = int(l)
            if h == "hook_attn_out":
                return val(saved[(l, "attn")])
            if h == "hook_mlp_out":
                return val(saved[(l, "mlp")])
            if h == "hook_resid_post":
                return val(saved[(l, "post")])
            return val(saved[(l, "pre")]) + val(saved[(l, "attn")])  # resid_mid

        return block_stats_from(get, self.n_layers)

    # ---- sink scan ----
    def tl_cache_sinks(self, ids):
        names = {f"blocks.{l}.attn.hook_pattern" for l in range(self.n_layers)}
        with torch.no_grad():
            _, cache = self.tl.run_with_cache(ids, names_filter=lambda n: n in names)
        return [sink_alpha(cache[f"blocks.{l}.attn.hook_pattern"]) for l in range(self.n_layers)]

    # ---- plain ----
    def tl_plain(self, ids):
        with torch.no_grad():
            self.tl(ids)

    def hf_plain(self, ids):
        with torch.no_grad():
            self.hf(ids)


PY_VARIANTS = {
    "tl_run_with_cache_scan": "tl_cache_scan",
    "tl_run_with_hooks_scan": "tl_hooks_scan",
    "nnsight_trace_save_scan": "nnsight_scan",
    "tl_pattern_cache_sinks": "tl_cache_sinks",
    "tl_plain_forward": "tl_plain",
}
SINKSCOPE_VARIANTS = {"sinkscope_plain_forward": "plain", "sinkscope_scan": "scan", "sinkscope_sinks": "sinks"}


def run_sinkscope(args, model_dir, ids, variants, iters, warmup, reset_hwm=False):
    cmd = [args.sinkscope_run, "bench", "--model", model_dir, "--ids", ",".join(map(str, ids)),
           "--threads", str(args.threads), "--variants", ",".join(variants),
           "--iters", str(iters), "--warmup", str(warmup)]
    if reset_hwm:
        cmd.append("--reset-hwm")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"sinkscope-run failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------- compare -----


def compare_scan(name, ref, got, rtol):
    worst = 0.0
    assert len(ref) == len(got), f"{name}: {len(got)} blocks, sinkscope {len(ref)}"
    assert ref, f"{name}: sinkscope returned no block"
    for a, b in zip(ref, got):
        assert a["block"] == b["block"], (name, a["block"], b["block"])
        for key in ("resid_top_abs", "output_top_abs"):
            assert len(a[key]) == len(b[key]) == 3, (name, a["block"], key, a[key], b[key])
        pairs = list(zip(a["resid_top_abs"], b["resid_top_abs"])) + list(zip(a["output_top_abs"], b["output_top_abs"]))
        pairs.append((a["resid_median_abs"], b["resid_median_abs"]))
        for x, y in pairs:
            err = abs(x - y) / max(abs(x), 1e-6)
            worst = max(worst, err)
            if err > rtol:
                raise AssertionError(f"{name}: block {a['block']}: sinkscope {x} vs {y} (rel {err:.2e} > {rtol})")
    return worst


def compare_sinks(ref, got, atol, n_layers, n_heads):
    worst = 0.0
    assert len(ref) == len(got) == n_layers, f"sinks: {len(ref)} layers, TL {len(got)}, model {n_layers}"
    for l, (a, b) in enumerate(zip(ref, got)):
        assert len(a) == len(b) == n_heads, f"sinks: layer {l}: {len(a)} heads, TL {len(b)}, model {n_heads}"
        for h, (x, y) in enumerate(zip(a, b)):
            worst = max(worst, abs(x - y))
            if abs(x - y) > atol:
                raise AssertionError(f"sinks: layer {l} head {h}: sinkscope {x} vs TL {y}")
    return worst


# ----------------------------------------------------------------- mem -----


def mem_child(args):
    """One Python variant in this fresh process: peak RSS of the run itself."""
    torch.set_num_threads(args.threads)
    ids = torch.tensor([json.load(open(args.ids_file))])
    peers = Peers(args.model_dir)
    fn = getattr(peers, PY_VARIANTS[args.mem])
    rss_loaded = vm_status("VmRSS")
    reset_hwm()
    fn(ids)
    print(json.dumps({"vm_hwm_bytes": vm_status("VmHWM"), "rss_loaded_bytes": rss_loaded}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sinkscope-run", default=os.path.join(os.path.dirname(__file__), "..", "build", "worker", "engine", "sinkscope-run"))
    ap.add_argument("--out-dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-ffn", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--smoke", action="store_true", help="tiny shape; compare numbers, no timing")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--mem", choices=sorted(PY_VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--ids-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem:
        return mem_child(args)
    if args.smoke:
        args.layers, args.d_model, args.heads, args.d_ffn, args.vocab, args.seq_len = 2, 64, 4, 96, 256, 32
    torch.set_num_threads(args.threads)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="sinkscope-peers.")
    os.makedirs(out_dir, exist_ok=True)
    model_dir = build_model(args, out_dir)
    ids = input_ids(args)
    ids_t = torch.tensor([ids])
    with open(os.path.join(out_dir, "ids.json"), "w") as f:
        json.dump(ids, f)

    # ---- same numbers first ----
    ss = run_sinkscope(args, model_dir, ids, ["scan", "sinks"], iters=1, warmup=0)
    peers = Peers(model_dir)
    checks = {}
    checks["tl_run_with_cache_scan"] = compare_scan("TL run_with_cache", ss["scan"]["blocks"], peers.tl_cache_scan(ids_t), 1e-4)
    checks["tl_run_with_hooks_scan"] = compare_scan("TL run_with_hooks", ss["scan"]["blocks"], peers.tl_hooks_scan(ids_t), 1e-4)
    checks["nnsight_trace_save_scan"] = compare_scan("nnsight", ss["scan"]["blocks"], peers.nnsight_scan(ids_t), 1e-4)
    checks["tl_pattern_cache_sinks"] = compare_sinks(ss["sinks"]["max_importance"], peers.tl_cache_sinks(ids_t), 1e-5,
                                                     args.layers, args.heads)
    spike = max(b["resid_top_abs"][0] for b in ss["scan"]["blocks"])
    hf_peak = hf_resid_peak(model_dir, ids_t)
    assert abs(spike - hf_peak) <= 1e-5 * hf_peak, f"peak |h| {spike}, transformers {hf_peak}"
    # The planted embedding entry, moved only by the blocks' small outputs.
    assert abs(hf_peak - SPIKE_VALUE) < 1.0, f"planted spike {SPIKE_VALUE} not seen: peak {hf_peak}"
    import nnsight
    import transformer_lens
    import transformers

    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "transformer_lens": importlib.metadata.version("transformer-lens"),
                     "nnsight": importlib.metadata.version("nnsight"),
                     "sinkscope": ss["provenance"]["code_version"]},
        "shape": {k: getattr(args, k) for k in ("layers", "d_model", "heads", "d_ffn", "vocab", "seq_len")},
        "threads": args.threads, "max_rel_diff_vs_sinkscope": checks,
    }
    print("numbers agree:", json.dumps(checks))
    if args.smoke:
        print(json.dumps(result))
        return 0

    # ---- interleaved timing ----
    seconds = {k: [] for k in list(SINKSCOPE_VARIANTS) + list(PY_VARIANTS)}
    for fn in PY_VARIANTS.values():  # warm-up
        getattr(peers, fn)(ids_t)
    for r in range(args.rounds):
        order = list(PY_VARIANTS.items())
        order = order[r % len(order):] + order[: r % len(order)]
        if r % 2 == 0:
            order.insert(0, ("sinkscope", None))
        else:
            order.append(("sinkscope", None))
        for name, fn in order:
            if name == "sinkscope":
                res = run_sinkscope(args, model_dir, ids, list(SINKSCOPE_VARIANTS.values()), iters=1, warmup=1)
                for k, v in SINKSCOPE_VARIANTS.items():
                    seconds[k].extend(res["seconds"][v])
            else:
                t0 = time.perf_counter()
                getattr(peers, fn)(ids_t)
                seconds[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    result["median_seconds"] = med
    result["tokens_per_s"] = {k: args.seq_len / v for k, v in med.items()}
    plain = med["sinkscope_plain_forward"]
    result["ratios"] = {
        "tl_run_with_cache_scan / sinkscope_scan": med["tl_run_with_cache_scan"] / med["sinkscope_scan"],
        "tl_run_with_hooks_scan / sinkscope_scan": med["tl_run_with_hooks_scan"] / med["sinkscope_scan"],
        "nnsight_trace_save_scan / sinkscope_scan": med["nnsight_trace_save_scan"] / med["sinkscope_scan"],
        "sinkscope_scan / sinkscope_plain_forward": med["sinkscope_scan"] / plain,
        "sinkscope_sinks / sinkscope_plain_forward": med["sinkscope_sinks"] / plain,
        "tl_pattern_cache_sinks / sinkscope_sinks": med["tl_pattern_cache_sinks"] / med["sinkscope_sinks"],
        "tl_plain_forward / sinkscope_plain_forward": med["tl_plain_forward"] / plain,
    }

    # ---- peak RSS, each variant in a fresh process ----
    mem = {}
    if not args.no_memory:
        ids_file = os.path.join(out_dir, "ids.json")
        for k, v in SINKSCOPE_VARIANTS.items():
            res = run_sinkscope(args, model_dir, ids, [v], iters=1, warmup=0, reset_hwm=True)
            mem[k] = {"vm_hwm_bytes": res["vm_hwm_bytes"], "rss_loaded_bytes": res["rss_loaded_bytes"]}
        for k in PY_VARIANTS:
            r = subprocess.run([sys.executable, __file__, "--mem", k, "--model-dir", model_dir, "--ids-file", ids_file,
                                "--threads", str(args.threads)], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"memory run {k} failed: {r.stderr[-2000:]}")
            mem[k] = json.loads(r.stdout.strip().splitlines()[-1])
    result["peak_rss"] = mem

    lines = [f"Peers: {result['shape']}, float32, cpu, {args.threads} thread(s), median of {args.rounds} interleaved rounds",
             f"versions: {result['versions']}", "",
             "| variant | median s | tokens/s | peak RSS MiB (run) | RSS after load MiB |", "|---|---:|---:|---:|---:|"]
    for k in seconds:
        m = mem.get(k, {})
        lines.append(f"| {k} | {med[k]:.3f} | {args.seq_len / med[k]:.0f} | "
                     f"{m.get('vm_hwm_bytes', 0) / 2**20:.0f} | {m.get('rss_loaded_bytes', 0) / 2**20:.0f} |")
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f}x |" for k, v in result["ratios"].items()]
    lines += ["", f"numbers: max relative difference to sinkscope: {checks}"]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "peers.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "peers.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
