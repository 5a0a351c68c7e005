"""GGUF checkpoints against the safetensors original and gguf-py.

A random transformers Llama (float32) is saved with save_pretrained, then
written here as GGUF with gguf-py's GGUFWriter the way llama.cpp's
convert_hf_to_gguf.py does (llama tensor names, W_Q/W_K rows permuted,
norms F32): F16, Q8_0 and Q4_0 (gguf-py's quantize), and Q4_K (random
super-blocks: gguf-py has no Q4_K quantizer). sinkscope-run export-tensors
writes what the engine loaded (canonical HF names) and its float32 logits.
Checked: F16 weights equal the F16-rounded originals exactly; quantized
weights equal gguf-py's dequantize bitwise; logits match transformers run
on the same (rounded / dequantized) weights; Q8_0 logits stay within the
quantization error of the original's (bound stated below).
"""
import copy

import numpy as np
import pytest

from conftest import need, sinkscope_run

N_HEAD, N_KV, D, FFN, V, L = 8, 4, 256, 512, 512, 2
IDS = [1, 17, 300, 42, 7, 511, 0, 99, 256, 3, 128, 64, 5, 450]


def permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py LlamaModel.permute (HF rows -> llama.cpp rows)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w, n_head):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_name(hf):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    parts = hf.split(".")
    layer, rest = parts[2], ".".join(parts[3:])
    table = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    return f"blk.{layer}.{table[rest]}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch = need("torch")
    transformers = need("transformers")
    need("gguf")
    need("safetensors")
    tmp = tmp_path_factory.mktemp("gguf")
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=FFN, num_hidden_layers=L,
                                   num_attention_heads=N_HEAD, num_key_value_heads=N_KV,
                                   max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval().float()
    with torch.no_grad():  # non-trivial norm gains
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    hf_dir = tmp / "hf"
    model.save_pretrained(hf_dir, safe_serialization=True)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return torch, transformers, model, sd, tmp


def write_gguf(path, sd, qtype, rng):
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(D // N_HEAD)
    w.add_file_type(1)
    stored = {}  # hf name -> float32 values the GGUF holds, in HF row order
    for hf, arr in sd.items():
        if hf.endswith("q_proj.weight"):
            arr = permute(arr, N_HEAD, N_HEAD)
        elif hf.endswith("k_proj.weight"):
            arr = permute(arr, N_HEAD, N_KV)
        heads = N_HEAD if hf.endswith("q_proj.weight") else N_KV if hf.endswith("k_proj.weight") else None
        back = (lambda a: unpermute(a, heads)) if heads else (lambda a: a)
        if arr.ndim == 1:
            w.add_tensor(gguf_name(hf), arr.astype(np.float32))
            stored[hf] = back(arr.astype(np.float32))
        elif qtype == "F16":
            a16 = arr.astype(np.float16)
            w.add_tensor(gguf_name(hf), a16)
            stored[hf] = back(a16)
        elif qtype in ("Q8_0", "Q4_0"):
            t = getattr(T, qtype)
            q = quants.quantize(arr, t)
            w.add_tensor(gguf_name(hf), q, raw_dtype=t)
            stored[hf] = back(quants.dequantize(q, t))
        else:  # Q4_K: random super-blocks (d, dmin small), as gguf-py cannot quantize it
            rows, cols = arr.shape
            blocks = rng.integers(0, 256, size=(rows, cols // 256, 144), dtype=np.uint8)
            dm = rng.uniform(1e-4, 3e-4, size=(rows, cols // 256, 2)).astype(np.float16)
            blocks[:, :, :4] = dm.view(np.uint8).reshape(rows, cols // 256, 4)
            q = blocks.reshape(rows, cols // 256 * 144)
            w.add_tensor(gguf_name(hf), q, raw_dtype=T.Q4_K)
            stored[hf] = back(quants.dequantize(q, T.Q4_K))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def export(path, out):
    info = sinkscope_run("export-tensors", "--model", str(path), "--out", str(out),
                         "--ids", ",".join(map(str, IDS)))
    from safetensors.numpy import load_file
    return info, load_file(str(out))


def reference_logits(torch, model, weights):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.state_dict().items():
            p.copy_(torch.from_numpy(np.ascontiguousarray(weights[n], dtype=np.float32)))
        return m(torch.tensor([IDS])).logits[0].double().numpy()


def test_permutation_roundtrip():
    a = np.arange(8 * 32 * 3, dtype=np.float32).reshape(8 * 32, 3)
    assert np.array_equal(unpermute(permute(a, 8), 8), a)
    assert not np.array_equal(permute(a, 8), a)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0", "Q4_K"])
def test_gguf_matches_original(setup, qtype):
    torch, transformers, model, sd, tmp = setup
    rng = np.random.default_rng(1)
    path = tmp / f"model-{qtype}.gguf"
    stored = write_gguf(path, sd, qtype, rng)
    info, got = export(path, tmp / f"export-{qtype}.safetensors")
    # Provenance: the format says what was dequantized.
    if qtype == "F16":
        assert info["format"] == "gguf" and info["dequantized_from"] == ""
    else:
        assert "dequantized" in info["format"] and qtype in info["dequantized_from"], info
    for hf, want in stored.items():
        assert hf in got, f"{hf} missing from the engine's checkpoint"
        g = got[hf]
        if qtype == "F16" and want.ndim == 2:
            assert g.dtype == np.float16
            # Exact: the F16-rounded original weights.
            assert np.array_equal(g, sd[hf].astype(np.float16)), hf
        else:
            assert g.dtype == np.float32, (hf, g.dtype)
            # Bitwise: gguf-py's dequantize (or the F32 original).
            assert np.array_equal(g.view(np.uint32), want.astype(np.float32).view(np.uint32)), hf
    assert set(got) - {"sinkscope.logits"} == set(stored)
    logits = got["sinkscope.logits"].astype(np.float64)
    # transformers on exactly the weights the GGUF holds.
    ref = reference_logits(torch, model, {k: v.astype(np.float32) for k, v in stored.items()})
    diff = np.abs(logits - ref).max()
    print(f"{qtype}: engine vs transformers on the GGUF's weights: max |logit diff| {diff:.3g}")
    assert diff < 1e-4
    if qtype in ("F16", "Q8_0"):
        orig = reference_logits(torch, model, sd)
        qerr = np.abs(logits - orig).max()
        scale = np.abs(orig).max()
        print(f"{qtype}: vs the float32 original: max |logit diff| {qerr:.3g} (max |logit| {scale:.3g})")
        # Quantization error: F16 rounds each weight by <= 2^-11 relative, Q8_0 by
        # <= 1/254 of its 32-block's max |w|; through two layers the logits move
        # by well under 1% (F16) and 3% (Q8_0) of their largest magnitude.
        assert qerr < (0.01 if qtype == "F16" else 0.03) * scale
