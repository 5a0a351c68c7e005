"""The engine's trainer (worker/engine/train.h) against transformers + torch.optim.AdamW.

transformers writes a tiny Llama / OLMo 2 / Qwen3 / Gemma 2 ForCausalLM with its own
init (norm gains randomised so their gradients matter); `sinkscope-run train`
trains it 20 updates from that directory; here the same model is trained by
transformers with torch.optim.AdamW (foreach=False), torch.nn.utils.clip_grad_norm_
and the same learning-rate schedule, on batches this file builds from the
recipe's documented sampler (SplitMix64 offsets, held-out tail, BOS + bytes).
Checked: losses equal to 1e-5 relative (float32), to 2e-3 in bfloat16 mixed
precision against torch.autocast; a run resumed from step-10
gives updates 11-20 bitwise equal to the uninterrupted run and the same final
weights; transformers loads the trainer's checkpoint and gives the engine's
logits; a fresh run's init is N(0, init_std) / ones, a function of the seed;
bad recipes fail before any work with the field named; a sandwich-norm run
(no transformers model: smoke only) writes a checkpoint the analyses load.
"""
import json
import math
import os
import random

import numpy as np
import pytest

from conftest import need, run_bin, sinkscope_run, sinkscope_run_error, sinkscope_run_lines

V, D, L, H, KV, FFN, T = 257, 64, 2, 4, 2, 128, 32
BOS = 256
M64 = (1 << 64) - 1
RECIPE = {"steps": 20, "batch_size": 4, "seq_len": T, "seed": 3, "lr": 3e-3, "warmup_steps": 5,
          "min_lr_ratio": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
          "grad_clip": 1.0, "bos_id": BOS, "heldout_fraction": 0.1, "checkpoint_every": 10}


def corpus_bytes():
    """~24 KB of deterministic pseudo-text (words from a fixed list, seeded)."""
    rng = random.Random(11)
    words = ("the of and to in sink head spike norm token attention residual stream layer "
             "ROMEO JULIET king queen love death night day\n").split(" ")
    out = []
    while sum(len(w) + 1 for w in out) < 24000:
        out.append(rng.choice(words))
    return " ".join(out).encode()


def splitmix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def batch(data, recipe, step):
    """Inputs and targets [B, T] of update `step` (train.h's sampler, re-implemented)."""
    n = len(data)
    n_train = n - math.floor(n * recipe["heldout_fraction"])
    need_tokens = recipe["seq_len"]  # BOS + seq_len bytes
    n_starts = n_train - need_tokens + 1
    rows = []
    for b in range(recipe["batch_size"]):
        k = step * recipe["batch_size"] + b + 1
        off = splitmix64((recipe["seed"] + k * 0x9E3779B97F4A7C15) & M64) % n_starts
        rows.append([recipe.get("bos_id", BOS)] + list(data[off:off + need_tokens]))
    a = np.array(rows, dtype=np.int64)
    return a[:, :-1], a[:, 1:]


def lr_at(r, s):
    if s < r["warmup_steps"]:
        return r["lr"] * (s + 1) / r["warmup_steps"]
    lo = r["lr"] * r["min_lr_ratio"]
    p = (s - r["warmup_steps"]) / max(1, r["steps"] - r["warmup_steps"])
    return lo + (r["lr"] - lo) * (1 + math.cos(math.pi * p)) / 2


def torch_losses(torch, model, data, recipe, lo=0, hi=None):
    """The recipe trained by transformers + torch.optim.AdamW; the loss of each update.
    recipe["precision"] == "bfloat16": forward and loss under torch.autocast (bf16);
    recipe["no_weight_decay"]: names (substrings) moved to the no-decay group."""
    F = torch.nn.functional
    hi = recipe["seq_len"] - 1 if hi is None else hi
    excluded = recipe.get("no_weight_decay", [])

    def decays(name, p):
        return p.dim() >= 2 and not any(n in name for n in excluded)

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=recipe["lr"], betas=(recipe["beta1"], recipe["beta2"]),
                            eps=recipe["eps"], foreach=False)
    model.train()
    losses = []
    for s in range(recipe["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(recipe, s)
        x, y = batch(data, recipe, s)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.get("precision") == "bfloat16"):
            logits = model(torch.from_numpy(x)).logits
            loss = F.cross_entropy(logits[:, lo:hi + 1].reshape(-1, logits.shape[-1]).float(),
                                   torch.from_numpy(y)[:, lo:hi + 1].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch = need("torch")
    transformers = need("transformers")
    need("safetensors")
    tmp = tmp_path_factory.mktemp("train")
    data = corpus_bytes()
    (tmp / "corpus.txt").write_bytes(data)
    return torch, transformers, tmp, data


def make_model(torch, transformers, family):
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=FFN, num_hidden_layers=L,
                  num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=64,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=BOS, eos_token_id=BOS)
    torch.manual_seed(0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif family == "qwen3":  # pre-norm + per-head QK-norm
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=D // H, **common))
    elif family == "gemma2":  # sandwich norm, (1 + w) gains, soft-caps, a window of 8 on even
        # layers (T = 32: the engine's chunked attention path), tied embeddings; eager
        # attention (transformers' sdpa path drops the soft-cap).
        common = dict(common, tie_word_embeddings=True)
        cfg = transformers.Gemma2Config(head_dim=D // H, query_pre_attn_scalar=24, sliding_window=8,
                                        **common)
        model = transformers.Gemma2ForCausalLM._from_config(cfg, attn_implementation="eager")
    else:
        model = transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**common))
    model = model.float()
    with torch.no_grad():  # non-trivial norm gains
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def engine_train(tmp, name, run, *extra):
    cfg = tmp / f"{name}.json"
    cfg.write_text(json.dumps(run))
    return sinkscope_run_lines("train", "--config", str(cfg), "--corpus", str(tmp / "corpus.txt"),
                               "--out", str(tmp / name), "--log-every", "1", "--json", *extra)


def losses_of(records):
    return {r["step"]: r["loss"] for r in records}


@pytest.mark.parametrize("family,loss_range,no_decay", [
    ("llama", None, None), ("olmo2", None, None), ("qwen3", None, None), ("gemma2", None, None),
    ("llama", (8, 20), None),
    ("llama", None, ["embed_tokens", "lm_head"]),  # a second AdamW group without weight decay
])
def test_losses_equal_transformers_adamw(env, family, loss_range, no_decay):
    torch, transformers, tmp, data = env
    name = f"{family}_{'all' if loss_range is None else 'range'}{'_nodecay' if no_decay else ''}"
    model = make_model(torch, transformers, family)
    model.save_pretrained(tmp / f"{name}_init", safe_serialization=True)
    recipe = dict(RECIPE)
    if loss_range:
        recipe["loss_pos_min"], recipe["loss_pos_max"] = loss_range
    if no_decay:
        recipe["no_weight_decay"] = no_decay
    records = engine_train(tmp, name, {"init_from": str(tmp / f"{name}_init"), "recipe": recipe})
    ours = losses_of(records)
    assert sorted(ours) == list(range(1, 21))
    lo, hi = loss_range or (0, None)
    ref = torch_losses(torch, model, data, recipe, lo, hi)
    for s in range(1, 21):
        assert ours[s] == pytest.approx(ref[s - 1], rel=1e-5), (s, ours[s], ref[s - 1])
    assert ours[20] < ours[1] - 0.2  # it learns
    # The trained weights equal transformers' too (float32 rounding through 20 updates).
    from safetensors.numpy import load_file
    trained = load_file(str(tmp / name / "step-20" / "model.safetensors"))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # the embedding
    assert set(trained) == set(sd)
    # Adam's update m / (sqrt(v) + eps) is ill-conditioned where a gradient is
    # near zero, so single elements may differ by a fraction of one step (lr 3e-3);
    # the bulk agrees to float32 rounding.
    for k in sd:
        np.testing.assert_allclose(trained[k], sd[k], atol=1e-4, rtol=0, err_msg=k)
        assert float(np.abs(trained[k] - sd[k]).mean()) < 1e-6, k
    # transformers reads the trainer's checkpoint (its config.json included) and
    # gives the engine's logits.
    ckpt = tmp / name / "step-20"
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt), attn_implementation="eager")
    assert type(hf) is type(model)
    ids = [BOS] + list(b"the sink head of ROMEO")
    with torch.no_grad():
        ref_logits = hf.float().eval()(torch.tensor([ids])).logits[0].numpy()
    sinkscope_run("export-tensors", "--model", str(ckpt), "--out", str(tmp / f"{name}.safetensors"),
                  "--ids", ",".join(map(str, ids)))
    got = load_file(str(tmp / f"{name}.safetensors"))["sinkscope.logits"]
    np.testing.assert_allclose(got.reshape(ref_logits.shape), ref_logits, atol=3e-5, rtol=1e-5)


def test_bfloat16_mixed_precision_tracks_torch_autocast(env):
    """precision "bfloat16" against transformers under torch.autocast(bfloat16):
    the per-update losses agree to 2e-3 relative (bfloat16 resolution; the two
    forwards may round at different places); the checkpoint keeps float32
    master weights; a resumed bf16 run is bitwise."""
    torch, transformers, tmp, data = env
    model = make_model(torch, transformers, "llama")
    model.save_pretrained(tmp / "bf16_init", safe_serialization=True)
    recipe = dict(RECIPE, precision="bfloat16")
    run = {"init_from": str(tmp / "bf16_init"), "recipe": recipe}
    ours = losses_of(engine_train(tmp, "bf16", run))
    ref = torch_losses(torch, model, data, recipe)
    f32_model = make_model(torch, transformers, "llama")
    torch_losses(torch, f32_model, data, RECIPE)
    dev = [abs(ours[s] - ref[s - 1]) / ref[s - 1] for s in range(1, 21)]
    assert max(dev) < 2e-3, dev
    assert ours[20] < ours[1] - 0.2
    # bf16 really ran: the engine's float32 run of the same init differs from
    # the first update on; after 20 updates the bf16 weights sit closer to
    # transformers' autocast run than to its float32 run. The checkpoint holds
    # float32 master weights.
    ours_f32 = losses_of(engine_train(tmp, "bf16_as_f32", dict(run, recipe=RECIPE)))
    assert ours_f32[1] != ours[1]
    from safetensors.numpy import load_file
    w = load_file(str(tmp / "bf16" / "step-20" / "model.safetensors"))
    assert all(v.dtype == np.float32 for v in w.values())
    ref_sd, f32_sd = model.state_dict(), f32_model.state_dict()
    d_ref = np.mean([np.abs(w[k] - ref_sd[k].numpy()).mean() for k in w])
    d_f32 = np.mean([np.abs(w[k] - f32_sd[k].numpy()).mean() for k in w])
    assert d_ref < d_f32, (d_ref, d_f32)
    state = json.loads((tmp / "bf16" / "step-20" / "trainer_state.json").read_text())
    assert state["recipe"]["precision"] == "bfloat16"
    part = losses_of(engine_train(tmp, "bf16_resumed", run, "--resume", str(tmp / "bf16" / "step-10")))
    assert all(part[s] == ours[s] for s in range(11, 21)), (part, ours)


def test_corpus_through_a_sentencepiece_tokenizer(env):
    """RUN.json "tokenizer": Llama 2's tokenizer.model: the engine trains on the
    corpus as SentencePiece (the reference library) encodes it, without BOS,
    the recipe's bos_id 1 starting each sequence: 12 updates equal transformers
    + AdamW on those ids (1e-5 relative)."""
    torch, transformers, tmp, data = env
    spm = need("sentencepiece")
    from conftest import require_shared
    path = require_shared("tokenizers/llama2/tokenizer.model")
    ids = spm.SentencePieceProcessor(model_file=path).encode(data.decode())
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2)).float()
    model.save_pretrained(tmp / "spm_init", safe_serialization=True)
    recipe = dict(RECIPE, steps=12, bos_id=1, checkpoint_every=0)
    ours = losses_of(engine_train(tmp, "spm", {"init_from": str(tmp / "spm_init"), "recipe": recipe,
                                               "tokenizer": path}))
    ref = torch_losses(torch, model, ids, recipe)
    for s in range(1, 13):
        assert ours[s] == pytest.approx(ref[s - 1], rel=1e-5), (s, ours[s], ref[s - 1])


def test_resume_is_bitwise_and_transformers_reads_checkpoint(env):
    torch, transformers, tmp, data = env
    model = make_model(torch, transformers, "llama")
    model.save_pretrained(tmp / "resume_init", safe_serialization=True)
    run = {"init_from": str(tmp / "resume_init"), "recipe": RECIPE}
    full = losses_of(engine_train(tmp, "resume_full", run))
    assert (tmp / "resume_full" / "step-10" / "optimizer.safetensors").exists()
    resumed = engine_train(tmp, "resume_second", run, "--resume", str(tmp / "resume_full" / "step-10"))
    part = losses_of(resumed)
    assert sorted(part) == list(range(11, 21))
    for s in range(11, 21):
        assert part[s] == full[s], (s, part[s], full[s])  # bitwise (CPU float32)
    a = (tmp / "resume_full" / "step-20" / "model.safetensors").read_bytes()
    b = (tmp / "resume_second" / "step-20" / "model.safetensors").read_bytes()
    assert a == b
    state = json.loads((tmp / "resume_second" / "step-20" / "trainer_state.json").read_text())
    assert state["step"] == 20 and state["losses"][10:] == [part[s] for s in range(11, 21)]

    # transformers reads the checkpoint the trainer wrote; its logits are the engine's.
    ckpt = tmp / "resume_full" / "step-20"
    hf = transformers.LlamaForCausalLM.from_pretrained(str(ckpt)).float().eval()
    ids = [BOS] + list(b"ROMEO the sink head")
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    sinkscope_run("export-tensors", "--model", str(ckpt), "--out", str(tmp / "exp.safetensors"),
                  "--ids", ",".join(map(str, ids)))
    from safetensors.numpy import load_file
    ours = load_file(str(tmp / "exp.safetensors"))["sinkscope.logits"]
    np.testing.assert_allclose(ours.reshape(ref.shape), ref, atol=2e-5, rtol=1e-5)


def test_fresh_init_is_seeded_normal(env):
    torch, transformers, tmp, data = env
    from safetensors.numpy import load_file
    model_cfg = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": V,
                 "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    # lr 1e-30: the one update changes no float32 weight, so step-1 holds the init.
    recipe = dict(RECIPE, steps=1, warmup_steps=0, lr=1e-30, checkpoint_every=0)

    def init(name, seed):
        engine_train(tmp, name, {"model": model_cfg, "recipe": dict(recipe, seed=seed)})
        return load_file(str(tmp / name / "step-1" / "model.safetensors"))

    a, b, c = init("init_a", 5), init("init_b", 5), init("init_c", 6)
    for k, w in a.items():
        np.testing.assert_array_equal(w, b[k], err_msg=k)  # a function of the seed
        if w.ndim >= 2:
            assert abs(float(w.std()) - 0.02) < 0.02 * 0.05, (k, w.std())
            assert abs(float(w.mean())) < 0.002, k
            assert not np.array_equal(w, c[k]), k
        else:
            np.testing.assert_array_equal(w, np.ones_like(w), err_msg=k)
    # transformers runs what a fresh run writes.
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp / "init_a" / "step-1"))
    assert hf.config.hidden_size == 128


@pytest.mark.parametrize("recipe,message", [
    (dict(RECIPE, dropout=0.1), "unknown recipe field 'dropout'"),
    (dict(RECIPE, seq_len=100), "seq_len = 100 exceeds the model's context n_ctx = 64"),
    (dict(RECIPE, loss_pos_min=10, loss_pos_max=5), "loss_pos_min/loss_pos_max"),
    (dict(RECIPE, warmup_steps=30), "warmup_steps must be in [0, steps = 20]"),
    (dict(RECIPE, beta2=1.0), "beta2 must be in [0, 1)"),
    (dict(RECIPE, precision="float16"), "precision must be float32 or bfloat16"),
    (dict(RECIPE, no_weight_decay="lm_head"), "no_weight_decay must be a list of name substrings"),
    (dict(RECIPE, no_weight_decay=[""]), "no_weight_decay holds an empty name"),
    (dict(RECIPE, heldout_fraction=0.5, seq_len=64, batch_size=1), None),  # valid
])
def test_bad_recipes_fail_before_work(env, recipe, message):
    torch, transformers, tmp, data = env
    model_cfg = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": V,
                 "max_position_embeddings": 64}
    cfg = tmp / "bad.json"
    if message is None:
        cfg.write_text(json.dumps({"model": model_cfg, "recipe": dict(recipe, steps=2, warmup_steps=0)}))
        sinkscope_run_lines("train", "--config", str(cfg), "--corpus", str(tmp / "corpus.txt"),
                            "--out", str(tmp / "ok_run"), "--json")
        return
    cfg.write_text(json.dumps({"model": model_cfg, "recipe": recipe}))
    err = sinkscope_run_error("train", "--config", str(cfg), "--corpus", str(tmp / "corpus.txt"),
                              "--out", str(tmp / "bad_run"))
    assert message in err
    assert not (tmp / "bad_run" / "step-1").exists()


def test_corpus_smaller_than_one_sequence(env):
    torch, transformers, tmp, data = env
    (tmp / "tiny.txt").write_bytes(b"too short")
    cfg = tmp / "tiny.json"
    cfg.write_text(json.dumps({"model": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
                                         "num_attention_heads": 2, "intermediate_size": 64,
                                         "vocab_size": V, "max_position_embeddings": 64},
                               "recipe": RECIPE}))
    err = sinkscope_run_error("train", "--config", str(cfg), "--corpus", str(tmp / "tiny.txt"),
                              "--out", str(tmp / "tiny_run"))
    assert "fewer than one sequence needs" in err


def test_sandwich_run_loads_in_analyses(env):
    torch, transformers, tmp, data = env
    model_cfg = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": V,
                 "max_position_embeddings": 64, "sinkscope_norm_placement": "sandwich"}
    recs = engine_train(tmp, "sandwich", {"model": model_cfg, "recipe": dict(RECIPE, steps=3, warmup_steps=1)})
    assert [r["step"] for r in recs] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in recs)
    ckpt = tmp / "sandwich" / "step-3"
    assert json.loads((ckpt / "config.json").read_text())["sinkscope_norm_placement"] == "sandwich"
    from safetensors.numpy import load_file
    names = set(load_file(str(ckpt / "model.safetensors")))
    assert "model.layers.1.pre_feedforward_layernorm.weight" in names
    out = sinkscope_run("forward", "--model", str(ckpt), "--ids", "256,72,105", "--json")
    assert any(h["hook"] == "blocks.1.hook_resid_post" for h in out["hooks"])


def test_kill_9_then_resume_gives_the_uninterrupted_curve(env):
    """kill -9 mid-run, then `--resume OUT` (the run directory): the latest complete
    checkpoint is picked and the loss curve equals the uninterrupted run's, bitwise."""
    import signal
    import subprocess
    import time
    torch, transformers, tmp, data = env
    model_cfg = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": V,
                 "max_position_embeddings": 64}
    run = {"model": model_cfg, "recipe": dict(RECIPE, steps=300, checkpoint_every=5)}
    full = losses_of(engine_train(tmp, "crash_full", run))
    cfg = tmp / "crash.json"
    cfg.write_text(json.dumps(run))
    out = tmp / "crash"
    p = subprocess.Popen([run_bin(), "train", "--config", str(cfg), "--corpus", str(tmp / "corpus.txt"),
                          "--out", str(out), "--json"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "step-15").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(int(d.name[5:]) for d in out.iterdir() if d.name.startswith("step-") and d.name[5:].isdigit())
    assert done and done[-1] < 300
    resumed = losses_of(engine_train(tmp, "crash", run, "--resume", str(out)))
    assert min(resumed) == done[-1] + 1 and max(resumed) == 300
    for s, loss in resumed.items():
        assert loss == full[s], (s, loss, full[s])
