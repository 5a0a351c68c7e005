"""A bf16 sharded checkpoint written by the `safetensors` package, loaded bit for bit.

The shards are laid out as the Hub's (model-0000X-of-0000N.safetensors written
by safetensors.torch.save_file, model.safetensors.index.json, a Llama
config.json), bfloat16, with bit patterns that a careless conversion changes
(subnormals, -0.0, the largest finite values). `sinkscope-run export-tensors` writes what the engine
loaded: unplaced (the file's dtype), placed as the worker loads (LoadTarget:
bfloat16, float32, float16 on the CPU). Checked against the tensors handed to
safetensors: bfloat16 placement equal bit for bit, float32 equal to the exact
widening, float16 equal to torch's rounding; a NaN in the last shard refused
naming the tensor.
"""
import json
import subprocess

import pytest

from conftest import need, run_bin

D, FFN, V, L, H, KV = 64, 160, 96, 3, 4, 2


def specs():
    hd = D // H
    out = [("model.embed_tokens.weight", (V, D))]
    for l in range(L):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (D,)), (p + "self_attn.q_proj.weight", (H * hd, D)),
                (p + "self_attn.k_proj.weight", (KV * hd, D)), (p + "self_attn.v_proj.weight", (KV * hd, D)),
                (p + "self_attn.o_proj.weight", (D, H * hd)), (p + "post_attention_layernorm.weight", (D,)),
                (p + "mlp.gate_proj.weight", (FFN, D)), (p + "mlp.up_proj.weight", (FFN, D)),
                (p + "mlp.down_proj.weight", (D, FFN))]
    return out + [("model.norm.weight", (D,)), ("lm_head.weight", (V, D))]


def write(tmp, torch, poison=None):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    tensors = {}
    for name, shape in specs():
        t = torch.randn(shape).to(torch.bfloat16)
        flat = t.view(-1)
        # Bit patterns: -0.0, the smallest and largest subnormals, a negative
        # subnormal, the largest finite value and its negative.
        flat.view(torch.int16)[:6] = torch.tensor([-0x8000, 0x0001, 0x007F, -0x7FFF, 0x7F7F, -0x0081],
                                                  dtype=torch.int16)
        tensors[name] = t
    names = [n for n, _ in specs()]
    shards = [names[:1], names[1:1 + 9 * 2], names[1 + 9 * 2:]]  # embed / 2 layers / the rest
    weight_map, files = {}, []
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        part = {n: tensors[n] for n in group}
        if poison is not None and i == len(shards) - 1:
            part[poison] = part[poison].clone()
            part[poison].view(-1)[11] = float("nan")
        save_file(part, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    total = sum(t.numel() * 2 for t in tensors.values())
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (tmp / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
        "intermediate_size": FFN, "num_hidden_layers": L, "num_attention_heads": H,
        "num_key_value_heads": KV, "vocab_size": V, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}))
    return tensors


def export(model_dir, out, placed=None):
    args = [run_bin(), "export-tensors", "--model", str(model_dir), "--out", str(out)]
    if placed:
        args += ["--placed-dtype", placed]
    return subprocess.run(args, capture_output=True, text=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch = need("torch")
    need("safetensors")
    tmp = tmp_path_factory.mktemp("sharded")
    return torch, tmp, write(tmp, torch)


@pytest.mark.parametrize("placed", [None, "bfloat16", "float32", "float16"])
def test_weights_equal_the_files(checkpoint, placed, tmp_path):
    torch, model_dir, tensors = checkpoint
    from safetensors.torch import load_file
    out = tmp_path / "out.safetensors"
    p = export(model_dir, out, placed)
    assert p.returncode == 0, p.stderr
    got = load_file(str(out))
    assert set(got) == set(tensors)
    want_dtype = {None: torch.bfloat16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                  "float16": torch.float16}[placed]
    for name, t in tensors.items():
        g = got[name]
        assert g.dtype == want_dtype, name
        assert g.shape == t.shape, name
        want = t.to(want_dtype)
        bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[want_dtype]
        assert torch.equal(g.view(bits), want.view(bits)), f"{name}: bits differ ({placed})"


@pytest.mark.parametrize("placed", [None, "bfloat16"])
def test_nan_in_a_shard_is_refused_naming_the_tensor(placed, tmp_path):
    torch = need("torch")
    need("safetensors")
    poison = f"model.layers.{L - 1}.mlp.down_proj.weight"
    write(tmp_path, torch, poison=poison)
    p = export(tmp_path, tmp_path / "out.safetensors", placed)
    assert p.returncode != 0
    assert f"tensor {poison} contains NaN" in p.stderr, p.stderr
    assert "model.safetensors.index.json" in p.stderr, p.stderr
