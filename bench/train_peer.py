"""Training tokens/s: sinkscope's trainer vs the same model and recipe in PyTorch eager.

Builds the RUN.json's model (llama or olmo2 keys) with transformers (random
init, saved with save_pretrained), then trains it --steps updates twice, in
interleaved order: `sinkscope-run train` from that directory, and transformers
+ torch.optim.AdamW (foreach=False, clip_grad_norm_, the recipe's schedule and
batches: tests/engine/python/test_train.py's re-implementation). With
--precision bfloat16 both train in mixed precision: the recipe's `precision`
for sinkscope, torch.autocast("cpu", dtype=torch.bfloat16) around the forward
and the loss for eager. Prints JSON: tokens/s of each (update time only; the
first --skip updates are warm-up and left out), the loss of the last update of
each (equal in float32; close in bfloat16), the thread count, the CPU and its
matmul rate in this run (GFLOP/s of a 512 x 512 x 512 torch.mm, float32 and
bfloat16, at the same thread count).

    build/venv/bin/python bench/train_peer.py --config examples/train/bytelm-tiny.json \
        --corpus ../shared/corpora/tinyshakespeare.txt --steps 40 --threads 2
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "engine", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "common"))


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--run-bin", default=os.path.join(HERE, "..", "build", "worker", "engine", "sinkscope-run"))
    a = ap.parse_args()
    import torch
    import transformers
    import test_train as ref  # the recipe's sampler and schedule, re-implemented

    torch.set_num_threads(a.threads)
    run = json.load(open(a.config))
    recipe = dict(run["recipe"], steps=a.steps, eval_every=0, checkpoint_every=0, precision=a.precision,
                  profile_every=0)
    mixed = a.precision == "bfloat16"
    recipe["warmup_steps"] = min(recipe.get("warmup_steps", 0), a.steps)
    for k, v in (("seed", 0), ("min_lr_ratio", 0.1), ("beta1", 0.9), ("beta2", 0.95), ("eps", 1e-8),
                 ("weight_decay", 0.1), ("grad_clip", 1.0), ("heldout_fraction", 0.05)):
        recipe.setdefault(k, v)
    if recipe.get("bos_id", -1) != ref.BOS:
        sys.exit("train_peer.py: the recipe must use bos_id 256 (byte-level + BOS)")
    m = run["model"]
    kind = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM)}[m["model_type"]]
    keys = {k: v for k, v in m.items() if not k.startswith("sinkscope_") and k != "model_type"}
    torch.manual_seed(0)
    model = kind[1](kind[0](**keys)).float()
    data = open(a.corpus, "rb").read()
    tmp = tempfile.mkdtemp(prefix="train_peer_")
    model.save_pretrained(os.path.join(tmp, "init"), safe_serialization=True)
    cfg = os.path.join(tmp, "run.json")
    json.dump({"init_from": os.path.join(tmp, "init"), "recipe": recipe}, open(cfg, "w"))
    T, B = recipe["seq_len"], recipe["batch_size"]

    def ours():
        p = subprocess.run([a.run_bin, "train", "--config", cfg, "--corpus", a.corpus, "--out",
                            os.path.join(tmp, "out"), "--json", "--log-every", "1",
                            "--threads", str(a.threads)], capture_output=True, text=True, check=True)
        recs = [json.loads(line) for line in p.stdout.splitlines()]
        # elapsed_s includes checkpoint writing at the end; use per-update deltas.
        t = [r["elapsed_s"] for r in recs]
        dt = t[-2] - t[a.skip - 1]  # updates skip+1 .. steps-1 (the last one writes a checkpoint)
        return (a.steps - 1 - a.skip) * B * T / dt, recs[-1]["loss"]

    def eager():
        import copy
        mdl = copy.deepcopy(model)
        F = torch.nn.functional
        decay = [p for p in mdl.parameters() if p.dim() >= 2]
        no_decay = [p for p in mdl.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"],
                                betas=(recipe["beta1"], recipe["beta2"]), eps=recipe["eps"], foreach=False)
        mdl.train()
        t0 = None
        for s in range(a.steps):
            if s == a.skip:
                t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = ref.lr_at(recipe, s)
            x, y = ref.batch(data, recipe, s)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                logits = mdl(torch.from_numpy(x)).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       torch.from_numpy(y).reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mdl.parameters(), recipe["grad_clip"])
            opt.step()
            last = loss.item()
        return (a.steps - a.skip) * B * T / (time.perf_counter() - t0), last

    def matmul_gflops(dtype):
        x = torch.randn(512, 512, dtype=dtype)
        y = torch.randn(512, 512, dtype=dtype)
        for _ in range(3):
            x @ y
        n, t0 = 50, time.perf_counter()
        for _ in range(n):
            x @ y
        return round(2 * 512 ** 3 * n / (time.perf_counter() - t0) / 1e9, 1)

    rounds = {"sinkscope": [], "pytorch_eager": []}
    losses = {}
    for _ in range(2):  # interleaved: sinkscope, eager, sinkscope, eager
        tps, losses["sinkscope"] = ours()
        rounds["sinkscope"].append(tps)
        tps, losses["pytorch_eager"] = eager()
        rounds["pytorch_eager"].append(tps)
    print(json.dumps({"cpu": cpu_name(), "threads": a.threads, "precision": a.precision,
                      "matmul_gflops": {"float32": matmul_gflops(torch.float32),
                                        "bfloat16": matmul_gflops(torch.bfloat16)}, "steps": a.steps, "batch": B, "seq_len": T,
                      "params": sum(p.numel() for p in model.parameters()),
                      "tokens_per_s": {k: max(v) for k, v in rounds.items()}, "rounds": rounds,
                      "last_loss": losses}, indent=1))


if __name__ == "__main__":
    main()
