"""The planted-mechanism checkpoint of tests/engine/fixtures.cc
(PlantedCheckpoint), written in Python as a Hugging Face directory
(config.json + model.safetensors) with numpy and safetensors: independent of
the engine's code, same construction, so the same ground truth:

  - spike direction s* = e_0; spike tokens (ids 1, 5, 9) embed as 8 s*, the
    others as the offset m = e_1 plus noise in channels >= 3 (never on e_7);
  - step-up MLP at layer 1 (block 4): unit 0 reads s* through W_gate = W_up,
    W_down[7, 0] = 20, so a spike token gets ~1280 on channel 7;
  - step-down MLP at layer 4 (block 10) writes -1280 back on channel 7;
  - sink heads (2, 0), (2, 2), (3, 1): W_Q maps m and W_K maps e_7 onto the
    slowest RoPE pair, so every query attends to the spike tokens.
"""
from __future__ import annotations

import json
import os

import numpy as np

D_MODEL, N_LAYERS, N_HEADS, D_HEAD, D_FFN, D_VOCAB, N_CTX = 64, 6, 4, 16, 128, 64, 256
SPIKE_DIRECTION, OFFSET_CHANNEL, SPIKE_CHANNEL = 0, 1, 7
SPIKE_TOKEN_IDS = (1, 5, 9)
STEP_UP_BLOCK, STEP_DOWN_BLOCK = 4, 10
SINK_HEADS = ((2, 0), (2, 2), (3, 1))


def planted_tensors(seed: int = 1234, scale: float = 0.02):
    rng = np.random.default_rng(seed)

    def randn(shape, s):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    t = {"model.embed_tokens.weight": randn((D_VOCAB, D_MODEL), 1.0)}
    q_out = N_HEADS * D_HEAD
    for l in range(N_LAYERS):
        p = f"model.layers.{l}."
        t[p + "self_attn.q_proj.weight"] = randn((q_out, D_MODEL), scale * 3)
        t[p + "self_attn.k_proj.weight"] = randn((q_out, D_MODEL), scale * 3)
        t[p + "self_attn.v_proj.weight"] = randn((q_out, D_MODEL), scale)
        t[p + "self_attn.o_proj.weight"] = randn((D_MODEL, q_out), scale)
        t[p + "mlp.gate_proj.weight"] = randn((D_FFN, D_MODEL), scale)
        t[p + "mlp.up_proj.weight"] = randn((D_FFN, D_MODEL), scale)
        t[p + "mlp.down_proj.weight"] = randn((D_MODEL, D_FFN), scale)
        # Norm gains exactly 1 so the arithmetic is the paper's.
        t[p + "input_layernorm.weight"] = np.ones(D_MODEL, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(D_MODEL, np.float32)
    t["model.norm.weight"] = np.ones(D_MODEL, np.float32)
    t["lm_head.weight"] = randn((D_VOCAB, D_MODEL), scale) * 25.0

    s, m, k, dh = SPIKE_DIRECTION, OFFSET_CHANNEL, SPIKE_CHANNEL, D_HEAD
    E = t["model.embed_tokens.weight"]
    E *= 0.1
    E[:, 0:3] = 0
    E[:, k] = 0
    E[:, m] = 1.0
    for i in SPIKE_TOKEN_IDS:
        E[i] = 0
        E[i, s] = 8.0
    for l in range(N_LAYERS):
        p = f"model.layers.{l}."
        for n in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            t[p + n][[s, k, m], :] = 0
        for n in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "self_attn.q_proj.weight",
                  "self_attn.k_proj.weight", "self_attn.v_proj.weight"):
            t[p + n][:, [s, k]] = 0
    for layer, read, write in ((1, s, 20.0), (4, k, -20.0)):
        p = f"model.layers.{layer}.mlp."
        t[p + "gate_proj.weight"][0] = 0
        t[p + "gate_proj.weight"][0, read] = 1.0
        t[p + "up_proj.weight"][0] = 0
        t[p + "up_proj.weight"][0, read] = 1.0
        t[p + "down_proj.weight"][:, 0] = 0
        t[p + "down_proj.weight"][k, 0] = write
    slow = dh // 2 - 1
    for l, h in SINK_HEADS:
        p = f"model.layers.{l}.self_attn."
        rows = slice(h * dh, (h + 1) * dh)
        t[p + "q_proj.weight"][rows] = 0
        t[p + "k_proj.weight"][rows] = 0
        t[p + "q_proj.weight"][h * dh + slow, m] = 7.0 / 6.3
        t[p + "k_proj.weight"][h * dh + slow, k] = 7.0 / 8.0
        t[p + "v_proj.weight"][rows] *= 4.0
        t[p + "o_proj.weight"][:, rows] *= 4.0
    return t


def config(norm_placement: str = "pre") -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": D_MODEL, "num_hidden_layers": N_LAYERS, "num_attention_heads": N_HEADS,
            "num_key_value_heads": N_HEADS, "head_dim": D_HEAD, "intermediate_size": D_FFN,
            "vocab_size": D_VOCAB, "max_position_embeddings": N_CTX, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
            "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
            "sinkscope_norm_placement": norm_placement}


def sandwich_tensors(tensors: dict) -> dict:
    """The same weights with sandwich norm (Gemma 2's layout): each layer's
    pre-MLP norm (Llama's post_attention_layernorm) becomes
    pre_feedforward_layernorm, and the attention and MLP outputs get their
    own norms (post_attention_layernorm, post_feedforward_layernorm), gain 1.
    Only the norm placement differs from the pre-norm model."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(".post_attention_layernorm.weight"):
            prefix = name[: -len("post_attention_layernorm.weight")]
            out[prefix + "pre_feedforward_layernorm.weight"] = t
            out[prefix + "post_attention_layernorm.weight"] = np.ones_like(t)
            out[prefix + "post_feedforward_layernorm.weight"] = np.ones_like(t)
        else:
            out[name] = t
    return out


def sandwich_spike_bound() -> float:
    """Analytic bound on max |h| of the sandwich twin: the residual stream is
    the embedding plus 2 N_LAYERS block outputs, each an RMSNorm output of
    gain 1, whose entries are at most sqrt(D_MODEL) in magnitude
    (x_i^2 <= sum_j x_j^2 = D_MODEL rms^2)."""
    embed = np.abs(planted_tensors()["model.embed_tokens.weight"]).max()
    return float(embed + 2 * N_LAYERS * np.sqrt(D_MODEL))


def write_planted(directory: str, norm_placement: str = "pre") -> str:
    """Writes config.json and model.safetensors into `directory`; returns it.
    norm_placement "sandwich" writes the sandwich twin (sandwich_tensors)."""
    from safetensors.numpy import save_file
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config(norm_placement), f, indent=2)
    tensors = planted_tensors()
    if norm_placement == "sandwich":
        tensors = sandwich_tensors(tensors)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(directory, "model.safetensors"))
    return directory


def step_up_value(eps: float = 1e-5) -> float:
    """Channel 7 of the post-residual of BOS after the step-up block, analytic:
    BOS enters layer 1's MLP as exactly 8 s* (layers 0-1 read nothing from
    channels 0 / 7 and write nothing there), its RMSNorm (gain 1) gives
    x = 8 / sqrt(1 + eps) on s*, unit 0 outputs SiLU(x) x = x^2 sigmoid(x),
    and W_down[7, 0] = 20: 20 x^2 sigmoid(x) = 1279.558 (not 20 * 8^2)."""
    x = 8.0 / np.sqrt(1.0 + eps)
    return float(20.0 * x * x / (1.0 + np.exp(-x)))


def ordinary(n: int, start: int):
    """BOS then n - 1 ordinary ids (never 1, 5 or 9), as analysis_jobs_test.cc."""
    return [1] + [10 + (start + 7 * i) % 50 for i in range(1, n)]


def spike_positions(seq):
    """Positions of the planted spike tokens in a sequence."""
    return [i for i, t in enumerate(seq) if t in SPIKE_TOKEN_IDS]
