"""The training variants transformers has no model for (paper-notes.md, "Variants a
lab trains"), each against a float64 / float32 PyTorch reference of its building
block written here from the definitions, sharing no code with the engine:

- DynamicTanh (Zhu et al. 2025): gamma * tanh(alpha x) + beta in place of every norm;
- no norm in the blocks (final norm kept);
- sandwich norm with per-head QK-norm (model_type qwen3 + sinkscope_norm_placement);
- gated attention (Qiu et al. 2025, G1): z_h *= sigmoid(x W_g), per head or per channel;
- sigmoid attention without row normalisation (Gu et al. 2025);
- learnable key/value bias (Gu et al. 2025, sail-sg): a learned key k* and value v*
  per head that every query attends to besides the tokens (a learned sink);
- the FFN: GeGLU (gated, tanh gelu), plain GELU and ReLU MLPs;
- positions: none (NoPE) or a learned absolute table instead of RoPE.

Checked per variant: the engine's logits equal the float64 reference's on the same
weights (random, gains and DyT alphas perturbed so that they matter); 20 updates of
`sinkscope-run train` from those weights give the losses of the reference trained by
torch.optim.AdamW with the recipe of test_train.py (1e-5 relative, float32); for
sigmoid attention and the key/value bias, attn.hook_pattern and the sink
analysis's per-head sink ratio (eq. 27-28) equal the reference's pattern
(unnormalised rows; token rows summing to 1 - the slot's mass). Misspelt or unknown variant
keys are refused with the key named.
"""
import json
import math
import types

import numpy as np
import pytest

from conftest import need, sinkscope_run, sinkscope_run_error
from test_train import BOS, RECIPE, V, corpus_bytes, engine_train, losses_of, torch_losses

D, L, H, T_CTX = 64, 2, 4, 64
DH = D // H
FFN = 128

VARIANTS = {
    "dyt_pre": {"model_type": "llama", "sinkscope_norm_kind": "dyt", "sinkscope_dyt_alpha0": 0.5},
    "dyt_sandwich": {"model_type": "llama", "sinkscope_norm_kind": "dyt",
                     "sinkscope_norm_placement": "sandwich", "sinkscope_dyt_alpha0": 0.8},
    "no_norm": {"model_type": "llama", "sinkscope_norm_placement": "none"},
    "sandwich_qk_norm": {"model_type": "qwen3", "sinkscope_norm_placement": "sandwich", "head_dim": DH},
    "gate_headwise": {"model_type": "llama", "sinkscope_attn_gate": "headwise"},
    "gate_elementwise": {"model_type": "llama", "sinkscope_attn_gate": "elementwise"},
    "sigmoid_attention": {"model_type": "llama", "sinkscope_attn_fn": "sigmoid"},
    "kv_bias": {"model_type": "llama", "sinkscope_kv_bias": True},
    "geglu": {"model_type": "llama", "hidden_act": "gelu_pytorch_tanh"},
    "relu_plain_mlp": {"model_type": "llama", "hidden_act": "relu", "sinkscope_mlp": "plain"},
    "gelu_plain_mlp": {"model_type": "llama", "hidden_act": "gelu", "sinkscope_mlp": "plain"},
    "no_positions": {"model_type": "llama", "sinkscope_positions": "none"},
    "learned_positions": {"model_type": "llama", "sinkscope_positions": "learned"},
}


def hf_config(variant):
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": D, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": H, "intermediate_size": FFN,
           "vocab_size": V, "max_position_embeddings": T_CTX, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
           "bos_token_id": BOS, "eos_token_id": BOS}
    cfg.update(VARIANTS[variant])
    return cfg


def make_reference(torch, cfg):
    """A decoder built from the definitions, parameters under Llama's HF names."""
    nn = torch.nn
    placement = cfg.get("sinkscope_norm_placement", "pre")
    kind = cfg.get("sinkscope_norm_kind", "rmsnorm")
    gate = cfg.get("sinkscope_attn_gate", "none")
    sigmoid = cfg.get("sinkscope_attn_fn", "softmax") == "sigmoid"
    kv_bias = cfg.get("sinkscope_kv_bias", False)
    qk_norm = cfg["model_type"] == "qwen3"
    positions = cfg.get("sinkscope_positions", "rope")
    gated_mlp = cfg.get("sinkscope_mlp", "gated") == "gated"
    F = torch.nn.functional
    act = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu,
           "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}[cfg["hidden_act"]]
    eps = cfg["rms_norm_eps"]

    class Norm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))
            if kind == "dyt":
                self.bias = nn.Parameter(torch.zeros(d))
                self.alpha = nn.Parameter(torch.full((1,), cfg.get("sinkscope_dyt_alpha0", 0.5)))

        def forward(self, x):
            if kind == "dyt":
                return self.weight * torch.tanh(self.alpha * x) + self.bias
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    class RmsHead(nn.Module):  # QK-norm: RMSNorm over d_head, whatever the block norms are
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(DH))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(D, H * DH, bias=False)
            self.k_proj = nn.Linear(D, H * DH, bias=False)
            self.v_proj = nn.Linear(D, H * DH, bias=False)
            self.o_proj = nn.Linear(H * DH, D, bias=False)
            if qk_norm:
                self.q_norm, self.k_norm = RmsHead(), RmsHead()
            if gate != "none":
                self.gate_proj = nn.Linear(D, H if gate == "headwise" else H * DH, bias=False)
            if kv_bias:  # k*, v* per (kv) head, not rotated
                self.sink_key = nn.Parameter(torch.zeros(H, DH))
                self.sink_value = nn.Parameter(torch.zeros(H, DH))

        def forward(self, x, patterns):
            B, T, _ = x.shape
            q = self.q_proj(x).view(B, T, H, DH)
            k = self.k_proj(x).view(B, T, H, DH)
            v = self.v_proj(x).view(B, T, H, DH)
            if qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            # RoPE, rotate-halves pairing (i, i + DH/2), base 10000.
            inv = 1.0 / (10000.0 ** (torch.arange(0, DH, 2, dtype=torch.float64) / DH))
            ang = torch.outer(torch.arange(T, dtype=torch.float64), inv).to(x.dtype)
            cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]

            def rope(t):
                a, b = t[..., :DH // 2], t[..., DH // 2:]
                return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

            if positions == "rope":
                q, k = rope(q), rope(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            s = q @ k.transpose(-1, -2) / math.sqrt(DH)
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            if sigmoid:
                p = torch.sigmoid(s) * causal
            elif kv_bias:  # softmax over [q.k*, q.k_0..t]; the slot adds A* v*
                s0 = (q * self.sink_key[None, :, None, :]).sum(-1, keepdim=True) / math.sqrt(DH)
                full = torch.softmax(torch.cat([s0, s.masked_fill(~causal, float("-inf"))], -1), -1)
                p = full[..., 1:]
                slot = full[..., :1] * self.sink_value[None, :, None, :]  # [B, H, T, DH]
            else:
                p = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)
            patterns.append(p)
            pv = p @ v.transpose(1, 2)
            if kv_bias:
                pv = pv + slot
            z = pv.transpose(1, 2)  # [B, T, H, DH]
            if gate == "headwise":
                z = z * torch.sigmoid(self.gate_proj(x)).unsqueeze(-1)
            elif gate == "elementwise":
                z = z * torch.sigmoid(self.gate_proj(x)).view(B, T, H, DH)
            return self.o_proj(z.reshape(B, T, H * DH))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            if gated_mlp:
                self.gate_proj = nn.Linear(D, FFN, bias=False)
            self.up_proj = nn.Linear(D, FFN, bias=False)
            self.down_proj = nn.Linear(FFN, D, bias=False)

        def forward(self, x):
            if gated_mlp:
                return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))
            return self.down_proj(act(self.up_proj(x)))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.mlp = Attention(), Mlp()
            if placement in ("pre", "sandwich"):
                self.input_layernorm, self.post_attention_layernorm = Norm(D), Norm(D)
            if placement == "sandwich":
                self.pre_feedforward_layernorm, self.post_feedforward_layernorm = Norm(D), Norm(D)

        def forward(self, h, patterns, resids):
            # resids: the residual stream after each block (paper blocks 2l+1, 2l+2).
            if placement == "pre":
                h = h + self.self_attn(self.input_layernorm(h), patterns)
                resids.append(h)
                h = h + self.mlp(self.post_attention_layernorm(h))
            elif placement == "sandwich":
                h = h + self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), patterns))
                resids.append(h)
                h = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
            else:  # none
                h = h + self.self_attn(h, patterns)
                resids.append(h)
                h = h + self.mlp(h)
            resids.append(h)
            return h

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(V, D)
            if positions == "learned":
                self.embed_positions = nn.Embedding(T_CTX, D)
            self.layers = nn.ModuleList([Layer() for _ in range(L)])
            self.norm = Norm(D)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = nn.Linear(D, V, bias=False)
            self.patterns, self.resids = [], []

        def forward(self, ids):
            self.patterns, self.resids = [], []
            h = self.model.embed_tokens(ids)
            if positions == "learned":
                h = h + self.model.embed_positions(torch.arange(ids.shape[1]))[None]
            for layer in self.model.layers:
                h = layer(h, self.patterns, self.resids)
            return types.SimpleNamespace(logits=self.lm_head(self.model.norm(h)))

    torch.manual_seed(1)
    m = Decoder()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            elif name.endswith(".alpha"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return m.float()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch = need("torch")
    safetensors_torch = need("safetensors.torch")
    tmp = tmp_path_factory.mktemp("variants")
    data = corpus_bytes()
    (tmp / "corpus.txt").write_bytes(data)
    return torch, safetensors_torch, tmp, data


def write_checkpoint(st, model, cfg, out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    st.save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                 str(out / "model.safetensors"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_forward_and_training_equal_reference(env, variant):
    torch, st, tmp, data = env
    cfg = hf_config(variant)
    model = make_reference(torch, cfg)
    init = tmp / f"{variant}_init"
    write_checkpoint(st, model, cfg, init)

    # Forward: the engine (float32) against the reference in float64.
    ids = [BOS] + list(b"the sink head of ROMEO and the spike")
    ref64 = make_reference(torch, cfg).double()
    ref64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    with torch.no_grad():
        ref_logits = ref64(torch.tensor([ids])).logits[0].numpy()
    sinkscope_run("export-tensors", "--model", str(init), "--out", str(tmp / f"{variant}.safetensors"),
                  "--ids", ",".join(map(str, ids)))
    from safetensors.numpy import load_file
    got = load_file(str(tmp / f"{variant}.safetensors"))["sinkscope.logits"].reshape(ref_logits.shape)
    assert np.abs(ref_logits).max() > 0.1  # logits far above the tolerance below
    np.testing.assert_allclose(got, ref_logits, atol=2e-5, rtol=1e-5)

    # Training: 20 updates from the same weights, engine vs reference + torch AdamW.
    records = engine_train(tmp, variant, {"init_from": str(init), "recipe": RECIPE})
    ours = losses_of(records)
    assert sorted(ours) == list(range(1, 21))
    ref = torch_losses(torch, model, data, RECIPE)
    for s in range(1, 21):
        assert ours[s] == pytest.approx(ref[s - 1], rel=1e-5), (s, ours[s], ref[s - 1])
    assert ours[20] < ours[1] - 0.2  # it learns
    trained = load_file(str(tmp / variant / "step-20" / "model.safetensors"))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert set(trained) == set(sd)
    for k in sd:
        np.testing.assert_allclose(trained[k], sd[k], atol=1e-4, rtol=0, err_msg=k)
    saved = json.loads((tmp / variant / "step-20" / "config.json").read_text())
    for key, value in VARIANTS[variant].items():
        if key.startswith("sinkscope_"):
            assert saved[key] == value, key  # the checkpoint keeps its variant


def assert_sink_heads_equal(ckpt, ids, ref, layers):
    """The sinks job's per-head importance (eq. 27: alpha_k = (1/T) sum_t A[t, k];
    the head's ratio is max_k alpha_k over k < T/2) equals the reference patterns'
    `ref` ([head, q, k] per layer) on `layers`."""
    out = sinkscope_run("sinks", "--model", str(ckpt), "--ids", ",".join(map(str, ids)), "--json")
    T = len(ids)
    for l in layers:
        heads = out["layers"][l]["heads"]
        for h in range(H):
            alpha = ref[l][h].sum(0) / T
            half = alpha[: max(1, T // 2)]
            assert heads[h]["max_importance"] == pytest.approx(half.max(), abs=1e-5), (l, h)
            assert heads[h]["argmax_key"] == int(half.argmax()), (l, h)
            assert heads[h]["gu_first_key_score"] == pytest.approx(alpha[0], abs=1e-5), (l, h)


def planted_reference(env, variant, plant, ids):
    """A reference of `variant` with `plant(model)` applied, written as a float32
    checkpoint and read back in float64: (checkpoint, float64 logits of `ids`,
    the attention patterns [head, q, k] per layer)."""
    torch, st, tmp, data = env
    cfg = hf_config(variant)
    model = make_reference(torch, cfg).double()
    with torch.no_grad():
        plant(model)
    ckpt = tmp / f"{variant}_planted"
    write_checkpoint(st, model.float(), cfg, ckpt)
    model = make_reference(torch, cfg).double()
    from safetensors.torch import load_file as load_torch
    model.load_state_dict({k: v.double() for k, v in load_torch(str(ckpt / "model.safetensors")).items()})
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return ckpt, logits, [p[0].numpy() for p in model.patterns]


def dumped_hook(ckpt, ids, hook, out):
    """The engine's value of `hook` on `ids` (sinkscope-run dump)."""
    sinkscope_run("dump", "--model", str(ckpt), "--ids", ",".join(map(str, ids)), "--out", str(out),
                  "--hook", hook)
    from safetensors.numpy import load_file
    return next(v for k, v in load_file(str(out)).items() if hook in k)


SINK_IDS = [BOS] + list(b"to be or not to be, that is the question")


def test_sigmoid_pattern_and_sink_ratio_equal_reference(env):
    def plant(model):  # a loud BOS embedding: position 0's keys stand out
        model.model.embed_tokens.weight[BOS] *= 6.0

    ckpt, _, ref = planted_reference(env, "sigmoid_attention", plant, SINK_IDS)
    assert abs(ref[1].sum(-1).mean() - 1.0) > 0.05  # rows not normalised: really not softmax
    pat = dumped_hook(ckpt, SINK_IDS, "blocks.1.attn.hook_pattern", env[2] / "sig_dump.safetensors")
    np.testing.assert_allclose(pat.reshape(ref[1].shape), ref[1], atol=2e-6)
    assert_sink_heads_equal(ckpt, SINK_IDS, ref, layers=[1])


def test_kv_bias_pattern_and_sink_ratio_equal_reference(env):
    """The learned key/value slot takes attention mass: attn.hook_pattern holds
    the token keys (rows sum to 1 - A*) and equals the float64 reference, as do
    the logits of the fused (SDPA with the slot) path; the sink analysis (eq.
    27-28 from query chunks, the slot in each row's normaliser) gives the
    reference's per-head importance of the tokens."""
    def plant(model):  # a loud learned key: the slot soaks up a good share of each row
        for layer in model.model.layers:
            layer.self_attn.sink_key.mul_(25.0)

    ckpt, ref_logits, ref = planted_reference(env, "kv_bias", plant, SINK_IDS)
    slot_mass = 1.0 - ref[1].sum(-1)
    assert slot_mass.max() > 0.3 and slot_mass.min() >= 0  # the slot is a real sink here
    tmp = env[2]
    pat = dumped_hook(ckpt, SINK_IDS, "blocks.1.attn.hook_pattern", tmp / "kv_dump.safetensors")
    np.testing.assert_allclose(pat.reshape(ref[1].shape), ref[1], atol=2e-6)
    sinkscope_run("export-tensors", "--model", str(ckpt), "--out", str(tmp / "kv_logits.safetensors"),
                  "--ids", ",".join(map(str, SINK_IDS)))
    from safetensors.numpy import load_file
    got = load_file(str(tmp / "kv_logits.safetensors"))["sinkscope.logits"].reshape(ref_logits.shape)
    np.testing.assert_allclose(got, ref_logits, atol=3e-5, rtol=1e-5)
    assert_sink_heads_equal(ckpt, SINK_IDS, ref, layers=range(L))


@pytest.mark.parametrize("key,value,message", [
    ("sinkscope_norm_kindd", "dyt", "sinkscope_norm_kindd"),
    ("sinkscope_norm_kind", "tanh", "unknown value 'tanh'"),
    ("sinkscope_attn_gate", "per-head", "unknown value 'per-head'"),
    ("sinkscope_norm_placement", "middle", "unknown norm placement 'middle'"),
    ("sinkscope_dyt_alpha0", -1.0, "dyt_alpha0 must be positive"),
    ("sinkscope_kv_bias", "yes", "must be a boolean"),
])
def test_bad_variant_keys_are_refused(env, key, value, message):
    torch, st, tmp, data = env
    cfg = dict(hf_config("dyt_pre"), **{key: value})
    run = tmp / "bad_variant.json"
    run.write_text(json.dumps({"model": cfg, "recipe": dict(RECIPE, steps=2, warmup_steps=0)}))
    err = sinkscope_run_error("train", "--config", str(run), "--corpus", str(tmp / "corpus.txt"),
                              "--out", str(tmp / "bad_variant"))
    assert message in err


def test_profile_while_training_equals_reference(env):
    """profile_every: the row streamed at a checkpoint equals the reference's
    perplexity, spike and sink ratio of that checkpoint's weights on the held-out
    profile stream (train.h: chunks of BOS + seq_len - 1 held-out bytes)."""
    torch, st, tmp, data = env
    cfg = hf_config("gate_headwise")
    model = make_reference(torch, cfg)
    init = tmp / "profiled_init"
    write_checkpoint(st, model, cfg, init)
    recipe = dict(RECIPE, steps=10, checkpoint_every=5, profile_every=2, profile_sequences=3,
                  profile_abs_threshold=0.0, profile_rel_threshold=0.0)
    records = engine_train(tmp, "profiled", {"init_from": str(init), "recipe": recipe})
    rows = {r["step"]: r["profile"] for r in records if "profile" in r}
    assert sorted(rows) == [10]  # checkpoints 5, 10: every 2nd (and the last)
    row = rows[10]
    ref = make_reference(torch, cfg).double()
    from safetensors.torch import load_file as load_torch
    ref.load_state_dict({k: v.double() for k, v in
                         load_torch(str(tmp / "profiled" / "step-10" / "model.safetensors")).items()})
    n = len(data)
    n_train = n - math.floor(n * recipe["heldout_fraction"])
    T = recipe["seq_len"]
    nll, count, spikes, ratios, dists = 0.0, 0, [], [], []
    for w in range(3):
        chunk = [BOS] + list(data[n_train + w * (T - 1): n_train + (w + 1) * (T - 1)])
        ids = torch.tensor([chunk])
        with torch.no_grad():
            logp = torch.log_softmax(ref(ids).logits[0], -1)
        nll -= logp[torch.arange(T - 1), ids[0, 1:]].sum().item()
        count += T - 1
        spikes.append(max(r.abs().max().item() for r in ref.resids))
        # eq. 27-28 on the chunk's first 64 tokens (softmax rows: causal, so the
        # first 64 rows of the full pattern are those of a 64-token pass).
        W = min(64, T)
        heads = [p[0, h, :W, :W].sum(0) / W for p in ref.patterns for h in range(H)]
        ratios.append(sum(float(a[: W // 2].max()) > 0.3 for a in heads) / len(heads))
        # Mean attention distance per head: (1/W) sum_t sum_k A[t, k] (t - k).
        dist = torch.arange(W)[:, None] - torch.arange(W)[None, :]
        dists.append([float((p[0, h, :W, :W] * dist).sum()) / W for p in ref.patterns for h in range(H)])
    assert row["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert row["spike"] == pytest.approx(sum(spikes) / len(spikes), rel=1e-5)
    assert row["sink_ratio"] == pytest.approx(sum(ratios) / len(ratios), abs=1e-12)
    assert row["n_heads"] == L * H
    # No head is a sink head here (ratio 0): every head is an "other" head, and their
    # mean distance is the mean over heads of the per-window means.
    assert row["n_sink_heads"] == 0
    per_head = np.mean(np.array(dists), axis=0)
    assert row["other_heads_distance"] == pytest.approx(float(per_head.mean()), rel=1e-5)
    assert row["other_heads_distance"] > 1.0
