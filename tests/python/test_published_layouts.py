"""Checkpoints laid out as the published (Hub) files are, against transformers, per hook.

test_transformers_parity.py checks every family on what transformers 5.24's
`save_pretrained` writes. The files researchers download are older and differ:

  gpt2       the Hub's openai-community/gpt2 model.safetensors: BARE names
             (`h.0.attn.c_attn.weight`, `wte.weight`, `ln_f.bias`; no `transformer.`)
             plus the causal-mask buffer `h.N.attn.bias` ([1, 1, n_ctx, n_ctx] float32
             ones below the diagonal, what GPT2Attention registered before it became
             non-persistent; transformers skips it, `_keys_to_ignore_on_load_unexpected
             = ["attn.bias", ...]`), in some exports `h.N.attn.masked_bias` (scalar -1e4)
             too; config.json as the Hub's (n_ctx, no tie_word_embeddings key, ...).
  gpt_neox   Pythia (EleutherAI/pythia-*): `gpt_neox.*` + `embed_out.weight`, the
             buffers `attention.bias` (bool causal mask), `attention.masked_bias` and
             `attention.rotary_emb.inv_freq` of transformers 4.2x, config.json with
             `rotary_pct` / `rotary_emb_base` (transformers 4.24, as the Hub's); parallel
             residual and, as the other published variant, sequential.
  gemma3     google/gemma-3-4b-it (Gemma3ForConditionalGeneration): `language_model.model.*`
             text tensors beside `vision_tower.*` and `multi_modal_projector.*`, and a
             config.json whose `text_config` lists only non-default keys (transformers
             4.50's to_diff_dict), with `rope_scaling` for the global layers.

Each fixture is a random model built by transformers, saved, and rewritten into
the published layout here; the reference is transformers' own `from_pretrained`
of that rewritten directory (so the layout is one transformers accepts, with no
missing weights), and its hooks are taken by forward hooks on its modules:

  hook_embed, blocks.L.hook_resid_pre, ln1.hook_normalized, hook_attn_out,
  hook_resid_mid, ln2.hook_normalized, mlp.hook_pre, mlp.hook_post, hook_mlp_out,
  hook_resid_post, attn.hook_pattern, ln_final.hook_normalized, logits

For a parallel GPT-NeoX layer, hook_resid_mid is the virtual point
resid_pre + attn_out (README, Families) formed here from transformers' tensors.
Float32 on CPU, 1e-5 absolute; greedy ids exactly.
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_transformers_parity as base  # noqa: E402  (helpers only; its tests stay there)

torch = base.torch
transformers = base.transformers
st = base.safetensors_torch
ATOL = base.ATOL


def save_safetensors(tensors, path):
    st.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
                 metadata={"format": "pt"})


def load_reference(path, cls):
    """transformers' from_pretrained of the published-layout directory; no weight may be missing."""
    model, info = cls.from_pretrained(str(path), attn_implementation="eager",
                                      dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"], info
    return model.eval()


def collect(model, ids, layers, final_norm, embed, per_layer, virtual_mid=False):
    """Runs `model` on `ids` and returns {hook name: tensor} from forward hooks.

    per_layer: (hook suffix, module path inside the layer, "in" | "out"); "" is the layer.
    virtual_mid: hook_resid_mid = resid_pre + attn_out (parallel attention + MLP).
    """
    out, handles = {}, []

    def grab(name, where):
        if where == "in":
            def f(mod, args, kwargs):
                out[name] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            return f

        def g(mod, args, kwargs, result):
            out[name] = base.first(result).detach().clone()
        return g

    def add(module, name, where):
        register = module.register_forward_pre_hook if where == "in" else module.register_forward_hook
        handles.append(register(grab(name, where), with_kwargs=True))

    for l, layer in enumerate(layers):
        for suffix, path, where in per_layer:
            add(base.get_module(layer, path) if path else layer, f"blocks.{l}.{suffix}", where)
    add(final_norm, "ln_final.hook_normalized", "out")
    add(embed, "hook_embed", "out")
    with torch.no_grad():
        res = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    for h in handles:
        h.remove()
    assert len(res.attentions) == len(layers)
    for l, a in enumerate(res.attentions):
        out[f"blocks.{l}.attn.hook_pattern"] = a.detach()
    if virtual_mid:
        for l in range(len(layers)):
            b = f"blocks.{l}."
            out[b + "hook_resid_mid"] = out[b + "hook_resid_pre"] + out[b + "hook_attn_out"]
    out["logits"] = res.logits.detach()
    return out


def compare(label, model_dir, ref, n_layers, model):
    """Engine dump of `model_dir` vs `ref` per hook; residual identities; greedy ids."""
    ids = base.token_ids()
    _, worst = base.compare_dump(label, model_dir, ids, ref, n_layers)
    print(f"\n{label}: max |diff| over {len(worst)} hooks = {max(worst.values()):.3g} "
          f"(worst: {max(worst, key=worst.get)})")

    want_ids = base.hf_greedy(model, ids[:12], base.N_NEW)
    p = base.run_engine(["generate", "--model", str(model_dir), "--ids",
                         ",".join(map(str, ids[:12])), "--max-new-tokens", str(base.N_NEW),
                         "--json"])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["generated_ids"] == want_ids


def causal_mask(n, dtype):
    return torch.tril(torch.ones(n, n, dtype=dtype)).view(1, 1, n, n)


# ---------------------------------------------------------------------------
# GPT-2 as the Hub publishes it.

def gpt2_hub_config(cfg):
    """config.json with the keys of the Hub's openai-community/gpt2 file."""
    return {
        "activation_function": cfg.activation_function, "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": cfg.bos_token_id, "embd_pdrop": 0.1,
        "eos_token_id": cfg.eos_token_id, "initializer_range": 0.02,
        "layer_norm_epsilon": cfg.layer_norm_epsilon, "model_type": "gpt2",
        "n_ctx": cfg.n_positions, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
        "n_layer": cfg.n_layer, "n_positions": cfg.n_positions, "resid_pdrop": 0.1,
        "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
        "summary_type": "cls_index", "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": cfg.vocab_size,
    }


@pytest.mark.parametrize("names,buffers", [
    ("bare", "mask"),                # the Hub's gpt2 file
    ("bare", "mask+masked_bias"),    # exports that kept masked_bias too
    ("bare", "none"),
    ("prefixed", "mask"),            # transformer.* with the mask buffers
])
def test_gpt2_as_published(names, buffers, tmp_path):
    built = base.build_model("gpt2")
    built.save_pretrained(tmp_path, safe_serialization=True)
    cfg = built.config
    tensors = st.load_file(str(tmp_path / "model.safetensors"))
    assert all(k.startswith("transformer.") for k in tensors), sorted(tensors)
    if names == "bare":
        tensors = {k[len("transformer."):]: v for k, v in tensors.items()}
    prefix = "" if names == "bare" else "transformer."
    for l in range(cfg.n_layer):
        if "mask" in buffers:
            tensors[f"{prefix}h.{l}.attn.bias"] = causal_mask(cfg.n_positions, torch.float32)
        if "masked_bias" in buffers:
            tensors[f"{prefix}h.{l}.attn.masked_bias"] = torch.tensor(-1e4)
    save_safetensors(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(gpt2_hub_config(cfg), indent=2))

    model = load_reference(tmp_path, transformers.GPT2LMHeadModel)
    per_layer = [("hook_resid_pre", "", "in"), ("ln1.hook_normalized", "ln_1", "out"),
                 ("hook_attn_out", "attn", "out"), ("hook_resid_mid", "ln_2", "in"),
                 ("ln2.hook_normalized", "ln_2", "out"), ("mlp.hook_pre", "mlp.c_fc", "out"),
                 ("mlp.hook_post", "mlp.act", "out"), ("hook_mlp_out", "mlp", "out"),
                 ("hook_resid_post", "", "out")]
    ref = collect(model, base.token_ids(), model.transformer.h, model.transformer.ln_f,
                  model.transformer.wte, per_layer)
    compare(f"gpt2 {names} {buffers}", tmp_path, ref, cfg.n_layer, model)


# ---------------------------------------------------------------------------
# GPT-NeoX / Pythia as the Hub publishes it.

def neox_model(parallel, seed=0):
    cfg = transformers.GPTNeoXConfig(
        vocab_size=base.VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=64, rotary_pct=0.25,
        rotary_emb_base=10000, use_parallel_residual=parallel, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        cfg, attn_implementation="eager", dtype=torch.float32)
    return base.randomize(model, seed)


def pythia_hub_layout(path, cfg):
    """Rewrites a transformers 5 save of GPTNeoXForCausalLM into Pythia's Hub layout."""
    tensors = st.load_file(str(path / "model.safetensors"))
    assert "embed_out.weight" in tensors and "lm_head.weight" not in tensors, sorted(tensors)
    head = cfg.hidden_size // cfg.num_attention_heads
    rot = int(head * cfg.rope_parameters["partial_rotary_factor"])
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    for l in range(cfg.num_hidden_layers):
        p = f"gpt_neox.layers.{l}.attention."
        tensors[p + "bias"] = causal_mask(cfg.max_position_embeddings, torch.bool)
        tensors[p + "masked_bias"] = torch.tensor(-1e9)
        tensors[p + "rotary_emb.inv_freq"] = inv_freq.clone()
    save_safetensors(tensors, path / "model.safetensors")
    hub = {
        "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
        "hidden_act": "gelu", "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size, "layer_norm_eps": 1e-05,
        "max_position_embeddings": cfg.max_position_embeddings, "model_type": "gpt_neox",
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers, "rotary_emb_base": 10000,
        "rotary_pct": 0.25, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.24.0", "use_cache": True,
        "use_parallel_residual": cfg.use_parallel_residual, "vocab_size": cfg.vocab_size,
    }
    (path / "config.json").write_text(json.dumps(hub, indent=2))


@pytest.mark.parametrize("layout,parallel", [
    ("hub", True),             # Pythia
    ("hub", False),            # sequential residual (use_parallel_residual: false)
    ("save_pretrained", True),  # transformers 5.24's own files (rope_parameters)
])
def test_gpt_neox_as_published(layout, parallel, tmp_path):
    built = neox_model(parallel)
    built.save_pretrained(tmp_path, safe_serialization=True)
    if layout == "hub":
        pythia_hub_layout(tmp_path, built.config)
    model = load_reference(tmp_path, transformers.GPTNeoXForCausalLM)
    assert model.config.use_parallel_residual == parallel
    per_layer = [("hook_resid_pre", "", "in"), ("ln1.hook_normalized", "input_layernorm", "out"),
                 ("hook_attn_out", "attention", "out"),
                 ("ln2.hook_normalized", "post_attention_layernorm", "out"),
                 ("mlp.hook_pre", "mlp.dense_h_to_4h", "out"), ("mlp.hook_post", "mlp.act", "out"),
                 ("hook_mlp_out", "mlp", "out"), ("hook_resid_post", "", "out")]
    if not parallel:  # the MLP's norm reads resid_pre + attn_out
        per_layer.append(("hook_resid_mid", "post_attention_layernorm", "in"))
    inner = model.gpt_neox
    ref = collect(model, base.token_ids(), inner.layers, inner.final_layer_norm, inner.embed_in,
                  per_layer, virtual_mid=parallel)
    compare(f"gpt_neox {layout} parallel={parallel}", tmp_path, ref,
            model.config.num_hidden_layers, model)


# ---------------------------------------------------------------------------
# Gemma 3 multimodal (Gemma3ForConditionalGeneration) run as its text model.

def gemma3_hub_config(text, vision):
    """config.json as google/gemma-3-4b-it's: text_config with only the keys whose
    values differ from Gemma3TextConfig's defaults (transformers 4.50 to_diff_dict)."""
    return {
        "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999,
        "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
        "initializer_range": 0.02, "mm_tokens_per_image": 4, "model_type": "gemma3",
        "text_config": text, "torch_dtype": "float32", "transformers_version": "4.50.0.dev0",
        "vision_config": vision,
    }


def test_gemma3_multimodal_as_published(tmp_path):
    # Sparse text_config: query_pre_attn_scalar (256), rope_theta (1e6),
    # rope_local_base_freq (1e4), the 5:1 sliding pattern, eps and activation
    # all come from the defaults; rope_scaling applies to the global layer 5.
    text = {"hidden_size": 64, "intermediate_size": 96, "model_type": "gemma3_text",
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "vocab_size": base.VOCAB, "max_position_embeddings": 64,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 8}
    vision = {"hidden_size": 32, "image_size": 28, "intermediate_size": 48,
              "model_type": "siglip_vision_model", "num_attention_heads": 2,
              "num_hidden_layers": 1, "patch_size": 14, "vision_use_head": False}
    (tmp_path / "config.json").write_text(json.dumps(gemma3_hub_config(text, vision)))
    cfg = transformers.AutoConfig.from_pretrained(str(tmp_path))
    torch.manual_seed(0)
    built = base.randomize(transformers.Gemma3ForConditionalGeneration(cfg), 0, gemma=True)
    built.save_pretrained(tmp_path, safe_serialization=True)
    tensors = st.load_file(str(tmp_path / "model.safetensors"))
    # The layout of the Hub's files, as transformers 5.24 writes it back.
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in tensors, sorted(tensors)
    assert any(k.startswith("vision_tower.") for k in tensors)
    assert any(k.startswith("multi_modal_projector.") for k in tensors)
    assert not any(k.startswith("model.") or k.startswith("lm_head") for k in tensors)
    (tmp_path / "config.json").write_text(json.dumps(gemma3_hub_config(text, vision), indent=2))

    model = load_reference(tmp_path, transformers.Gemma3ForConditionalGeneration)
    lm = model.model.language_model
    assert lm.config.layer_types[5] == "full_attention" and lm.config.layer_types[4] != "full_attention"
    per_layer = [("hook_resid_pre", "", "in"), ("ln1.hook_normalized", "input_layernorm", "out"),
                 ("hook_attn_out", "post_attention_layernorm", "out"),
                 ("hook_resid_mid", "pre_feedforward_layernorm", "in"),
                 ("ln2.hook_normalized", "pre_feedforward_layernorm", "out"),
                 ("mlp.hook_pre", "mlp.gate_proj", "out"),
                 ("mlp.hook_pre_linear", "mlp.up_proj", "out"),
                 ("hook_mlp_out", "post_feedforward_layernorm", "out"),
                 ("hook_resid_post", "", "out")]
    ref = collect(model, base.token_ids(), lm.layers, lm.norm, lm.embed_tokens, per_layer)
    compare("gemma3 multimodal", tmp_path, ref, len(lm.layers), model)
