"""The engine against Hugging Face transformers, per family, per hook.

For every family a small random model is built here from a transformers config,
saved by transformers' own `save_pretrained` (safetensors), loaded by
`sinkscope-run dump`, and the hook tensors it writes (read back with the
`safetensors` package) are compared with the same quantities taken from the
transformers model by forward hooks on its modules:

  blocks.L.hook_resid_pre   input of decoder layer L
  blocks.L.hook_attn_out    output of the attention branch as added to the stream
                            (self_attn for pre-norm, post_attention_layernorm for
                            sandwich / post-norm)
  blocks.L.hook_resid_mid   input of the module that starts the MLP branch
  blocks.L.hook_mlp_out     output of the MLP branch as added to the stream
  blocks.L.hook_resid_post  output of decoder layer L
  blocks.L.attn.hook_pattern  attention weights (eager attention, output_attentions)
  ln_final.hook_normalized  output of the final norm
  logits                    model(...).logits (after Gemma 2's final soft-cap)

Everything is float32 on CPU; tolerance 1e-5 absolute. Greedy ids (argmax of
the full-prefix forward, the engine's definition) must match exactly.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from pytest_skip_exit import in_ci, skip_missing  # noqa: E402

ATOL = 1e-5
SEQ_LEN = 32
VOCAB = 128
N_NEW = 8


def need(module):
    """Imports `module`; skips when absent, fails under CI."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if in_ci():
            raise
        skip_missing(f"python package {module} ({e})")


torch = need("torch")
transformers = need("transformers")
safetensors_torch = need("safetensors.torch")

SINKSCOPE_RUN = os.environ.get("SINKSCOPE_RUN", "")


def common(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(kw)
    return base


def family_configs():
    T = transformers
    return {
        "llama2": T.LlamaConfig(**common(num_key_value_heads=4, rms_norm_eps=1e-5)),
        "llama3": T.LlamaConfig(**common(
            num_hidden_layers=3, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16})),
        "mistral": T.MistralConfig(**common(head_dim=16, sliding_window=8,
                                            rope_parameters={"rope_type": "default",
                                                             "rope_theta": 20000.0})),
        "qwen2": T.Qwen2Config(**common(tie_word_embeddings=True)),
        "qwen3": T.Qwen3Config(**common(head_dim=32, attention_bias=False)),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64,
                             bos_token_id=1, eos_token_id=2),
        "gemma2": T.Gemma2Config(**common(
            num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
            attn_logit_softcapping=4.0, final_logit_softcapping=3.0)),
        "gemma3_text": T.Gemma3TextConfig(**common(
            num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                "rope_theta": 1000000.0},
                             "sliding_attention": {"rope_type": "default",
                                                   "rope_theta": 10000.0}})),
        "olmo2": T.Olmo2Config(**common()),
    }


FAMILIES = ["llama2", "llama3", "mistral", "qwen2", "qwen3", "gpt2", "gemma2", "gemma3_text",
            "olmo2"]

# Per family: (layers path, module whose input is resid_mid, attention-branch
# output module, MLP-branch output module, final norm path).
STRUCTURE = {
    "pre": ("model.layers", "post_attention_layernorm", "self_attn", "mlp", "model.norm"),
    "gpt2": ("transformer.h", "ln_2", "attn", "mlp", "transformer.ln_f"),
    "sandwich": ("model.layers", "pre_feedforward_layernorm", "post_attention_layernorm",
                 "post_feedforward_layernorm", "model.norm"),
    "post": ("model.layers", "mlp", "post_attention_layernorm", "post_feedforward_layernorm",
             "model.norm"),
}
KIND = {"llama2": "pre", "llama3": "pre", "mistral": "pre", "qwen2": "pre", "qwen3": "pre",
        "gpt2": "gpt2", "gemma2": "sandwich", "gemma3_text": "sandwich", "olmo2": "post"}


def build_model(family, seed=0):
    cfg = family_configs()[family]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        cfg, attn_implementation="eager", dtype=torch.float32)
    return randomize(model, seed, gemma=family.startswith("gemma"))


def randomize(model, seed, gemma=False):
    """Random weights of a scale that keeps every hook O(1); norm gains near 1
    (Gemma stores w with gain 1 + w, so near 0 there)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name):
                if name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                else:  # gains near 1 (Gemma stores w with gain 1 + w)
                    p.copy_((0.0 if gemma else 1.0) + torch.randn(p.shape, generator=gen) * 0.2)
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "wte" in name or "embed_tokens" in name or "wpe" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6 / p.shape[-1] ** 0.5
                        if "c_" not in name else
                        torch.randn(p.shape, generator=gen) * 0.6 / p.shape[0] ** 0.5)
    return model


def get_module(root, path):
    m = root
    for part in path.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


def first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def hf_hooks(model, family, ids):
    layers_path, mid_mod, attn_mod, mlp_mod, final_path = STRUCTURE[KIND[family]]
    layers = get_module(model, layers_path)
    out, handles = {}, []

    def layer_pre(l):
        def f(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            out[f"blocks.{l}.hook_resid_pre"] = h.detach().clone()
        return f

    def layer_post(l):
        def f(mod, args, kwargs, result):
            out[f"blocks.{l}.hook_resid_post"] = first(result).detach().clone()
        return f

    def mod_in(name):
        def f(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            out[name] = h.detach().clone()
        return f

    def mod_out(name):
        def f(mod, args, kwargs, result):
            out[name] = first(result).detach().clone()
        return f

    for l, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(layer_pre(l), with_kwargs=True))
        handles.append(layer.register_forward_hook(layer_post(l), with_kwargs=True))
        handles.append(get_module(layer, mid_mod).register_forward_pre_hook(
            mod_in(f"blocks.{l}.hook_resid_mid"), with_kwargs=True))
        handles.append(get_module(layer, attn_mod).register_forward_hook(
            mod_out(f"blocks.{l}.hook_attn_out"), with_kwargs=True))
        handles.append(get_module(layer, mlp_mod).register_forward_hook(
            mod_out(f"blocks.{l}.hook_mlp_out"), with_kwargs=True))
    handles.append(get_module(model, final_path).register_forward_hook(
        mod_out("ln_final.hook_normalized"), with_kwargs=True))
    with torch.no_grad():
        res = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    for h in handles:
        h.remove()
    for l, a in enumerate(res.attentions):
        out[f"blocks.{l}.attn.hook_pattern"] = a.detach()
    out["logits"] = res.logits.detach()
    return out


def hf_greedy(model, ids, n):
    ids = list(ids)
    new = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]), use_cache=False).logits
            nxt = int(logits[0, -1].argmax())
            ids.append(nxt)
            new.append(nxt)
    return new


def run_engine(args):
    if not SINKSCOPE_RUN:
        skip_missing("SINKSCOPE_RUN (path of sinkscope-run) is not set")
    p = subprocess.run([SINKSCOPE_RUN] + args, capture_output=True, text=True, timeout=300)
    return p


def token_ids(seed=7):
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(3, VOCAB, (SEQ_LEN - 1,), generator=g).tolist()


def compare_dump(label, model_dir, ids, ref, n_layers):
    """`sinkscope-run dump` of `model_dir` on `ids` against `ref` ({hook: tensor}),
    each to ATOL; the residual identities inside the engine's own dump.
    Returns (the engine's hooks, {hook: max |diff|})."""
    dump = model_dir / "hooks.safetensors"
    p = run_engine(["dump", "--model", str(model_dir), "--ids", ",".join(map(str, ids)),
                    "--out", str(dump)])
    assert p.returncode == 0, p.stderr
    got = safetensors_torch.load_file(str(dump))
    worst = {}
    for name, want in ref.items():
        assert name in got, f"{label}: engine has no {name}"
        have = got[name]
        assert tuple(have.shape) == tuple(want.shape), (name, have.shape, want.shape)
        diff = (have.double() - want.double()).abs().max().item()
        worst[name] = diff
        assert diff <= ATOL, f"{label} {name}: max |diff| {diff:.3g} > {ATOL}"
    for l in range(n_layers):
        b = f"blocks.{l}."
        mid = got[b + "hook_resid_pre"] + got[b + "hook_attn_out"]
        assert (mid - got[b + "hook_resid_mid"]).abs().max() <= 1e-6
        post = got[b + "hook_resid_mid"] + got[b + "hook_mlp_out"]
        assert (post - got[b + "hook_resid_post"]).abs().max() <= 1e-6
    return got, worst


MEASURED = {}


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_parity(family, tmp_path):
    model = build_model(family)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").exists()
    ids = token_ids()
    ref = hf_hooks(model, family, ids)

    n_layers = len(get_module(model, STRUCTURE[KIND[family]][0]))
    _, worst = compare_dump(family, tmp_path, ids, ref, n_layers)
    MEASURED[family] = max(worst.values())
    print(f"\n{family}: max |diff| over {len(worst)} hooks = {MEASURED[family]:.3g} "
          f"(worst: {max(worst, key=worst.get)})")

    # Greedy decoding: exact ids.
    want_ids = hf_greedy(model, ids[:12], N_NEW)
    p = run_engine(["generate", "--model", str(tmp_path), "--ids", ",".join(map(str, ids[:12])),
                    "--max-new-tokens", str(N_NEW), "--json"])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["generated_ids"] == want_ids


def test_unknown_model_type_is_refused(tmp_path):
    model = build_model("llama2")
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "bert"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = run_engine(["hooks", "--model", str(tmp_path)])
    assert p.returncode != 0
    for word in ["config.json", "model_type", "bert", "gemma2", "gpt2", "olmo2", "llama"]:
        assert word in p.stderr, p.stderr


@pytest.mark.parametrize("family,tensor", [
    ("gpt2", "transformer.h.1.attn.c_attn.weight"),
    ("gemma2", "model.layers.0.pre_feedforward_layernorm.weight"),
    ("gemma3_text", "model.layers.2.self_attn.q_norm.weight"),
    ("olmo2", "model.layers.1.post_feedforward_layernorm.weight"),
    ("qwen2", "model.layers.0.self_attn.k_proj.bias"),
])
def test_missing_tensor_is_named(family, tensor, tmp_path):
    model = build_model(family)
    model.save_pretrained(tmp_path, safe_serialization=True)
    path = tmp_path / "model.safetensors"
    tensors = safetensors_torch.load_file(str(path))
    assert tensor in tensors, sorted(tensors)
    del tensors[tensor]
    safetensors_torch.save_file(tensors, str(path), metadata={"format": "pt"})
    p = run_engine(["hooks", "--model", str(tmp_path)])
    assert p.returncode != 0
    assert "model.safetensors" in p.stderr and tensor in p.stderr and "missing" in p.stderr, \
        p.stderr


# ---------------------------------------------------------------------------
# TransformerLens (4.x: TransformerBridge; HookedTransformer was removed in 4.0)
# on the same saved model. enable_compatibility_mode(no_processing=True) gives
# TransformerLens hook names with every weight processing off: fold_ln,
# center_writing_weights, center_unembed and fold_value_biases all False.

TL_ATOL = 1e-4


def word_tokenizer():
    """A VOCAB-word tokenizer: the bridge wants one; the test feeds ids."""
    tokenizers = need("tokenizers")
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0",
                                                bos_token="w1", eos_token="w2", pad_token="w0")
TL_HOOKS = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
            "hook_resid_post", "attn.hook_pattern"]


@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_lens_parity(family, tmp_path):
    bridge_mod = need("transformer_lens.model_bridge")
    model = build_model(family)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ids = token_ids()
    word_tokenizer().save_pretrained(tmp_path)  # the bridge loads one from the directory
    bridge = bridge_mod.TransformerBridge.boot_transformers(
        str(tmp_path), device="cpu", dtype=torch.float32)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    with torch.no_grad():
        tl_logits, cache = bridge.run_with_cache(torch.tensor([ids]))

    dump = tmp_path / "hooks.safetensors"
    p = run_engine(["dump", "--model", str(tmp_path), "--ids", ",".join(map(str, ids)),
                    "--out", str(dump)])
    assert p.returncode == 0, p.stderr
    got = safetensors_torch.load_file(str(dump))
    n_layers = len(get_module(model, STRUCTURE[KIND[family]][0]))
    worst = {}
    for l in range(n_layers):
        for suffix in TL_HOOKS:
            name = f"blocks.{l}.{suffix}"
            assert name in cache.keys(), f"TransformerLens has no {name}"
            diff = (got[name].double() - cache[name].double()).abs().max().item()
            worst[name] = diff
            assert diff <= TL_ATOL, f"{family} {name}: max |diff| {diff:.3g} > {TL_ATOL}"
    diff = (got["logits"].double() - tl_logits.double()).abs().max().item()
    worst["logits"] = diff
    assert diff <= TL_ATOL, f"{family} logits: max |diff| {diff:.3g}"
    print(f"\nTL {family}: max |diff| {max(worst.values()):.3g} "
          f"(worst: {max(worst, key=worst.get)})")
