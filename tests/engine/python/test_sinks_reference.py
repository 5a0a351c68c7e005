"""Sink analysis, attention distance, logit gap and self-attention profile of
the engine (computed from query chunks, never a [T, T] pattern) against a
float64 reference that shares no code with it.

Per family a small random model is built with transformers, saved with
`save_pretrained` (safetensors, float32: the Hub layout) and analysed by
`sinkscope-run sinks --query-chunk 16` (T = 150: not a multiple of the chunk).
The reference runs the same checkpoint in transformers in float64 with an
attention function registered here: the scores q . k * scaling (soft-capped
when the model passes a soft-cap), transformers' own causal / sliding-window
mask, softmax in float64. The statistics are then computed by plain Python
loops over t and k, from their definitions (paper eq. 27, Gu et al., the
mean attention distance with and without the sink key, the logit gap, A[t,t]).
The engine runs in float32: tolerance 2e-5 (relative for distances and gaps).
"""
import math

import pytest

from conftest import need, sinkscope_run

torch = need("torch")
transformers = need("transformers")

T = 150
CHUNK = 16
VOCAB = 96
EPS = 0.3


def common(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(kw)
    return base


def configs():
    T_ = transformers
    return {
        "llama_gqa": T_.LlamaConfig(**common(rms_norm_eps=1e-5)),
        "mistral_window": T_.MistralConfig(**common(head_dim=16, sliding_window=24)),
        "gemma2_softcap": T_.Gemma2Config(**common(
            head_dim=16, query_pre_attn_scalar=24, sliding_window=20,
            attn_logit_softcapping=4.0, final_logit_softcapping=3.0)),
    }


CAPTURED = {}


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                        softcap=None, **kwargs):
    """float64 attention: scores, transformers' mask, softmax; records scores and pattern."""
    if scaling is None:
        scaling = module.head_dim ** -0.5
    rep = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(rep, dim=1)
    v = value.repeat_interleave(rep, dim=1)
    s = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    n_q, n_k = s.shape[-2], s.shape[-1]
    if attention_mask is None:
        visible = torch.ones(n_q, n_k, dtype=torch.bool).tril()
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask[..., :n_k]
    else:
        visible = attention_mask[..., :n_k] == 0
    visible = visible.expand_as(s)
    s = s.masked_fill(~visible, float("-inf"))
    a = torch.softmax(s, dim=-1)
    CAPTURED[module.layer_idx] = (s.detach().clone(), a.detach().clone())
    return torch.matmul(a, v).transpose(1, 2).contiguous(), a


def stats_from_definitions(A, S):
    """Per-head statistics of one [T, T] pattern A and its scores S (lists of float)."""
    n = len(A)
    alpha = [sum(A[t][k] for t in range(n)) / n for k in range(n)]  # eq. 27
    half = max(1, n // 2)
    ks = max(range(half), key=lambda k: alpha[k])
    dist = sum(A[t][k] * (t - k) for t in range(n) for k in range(n)) / n
    wo, n_wo, gap, n_gap = 0.0, 0, 0.0, 0
    for t in range(n):
        mass = sum(A[t][k] for k in range(n) if k != ks)
        if mass > 1e-12:
            wo += sum(A[t][k] * (t - k) for k in range(n) if k != ks) / mass
            n_wo += 1
        others = [S[t][k] for k in range(n) if k != ks and math.isfinite(S[t][k])]
        if t > ks and others:
            s_sink = S[t][ks] if math.isfinite(S[t][ks]) else 0.0
            gap += s_sink - sum(others) / len(others)
            n_gap += 1
    return dict(max_importance=alpha[ks], argmax_key=ks, gu_first_key_score=alpha[0],
                mean_attention_distance=dist,
                mean_attention_distance_without_sink=wo / n_wo if n_wo else 0.0,
                mean_logit_gap=gap / n_gap if n_gap else 0.0,
                diag=[A[t][t] for t in range(n)])


@pytest.mark.parametrize("family", ["llama_gqa", "mistral_window", "gemma2_softcap"])
def test_sinks_match_float64_reference(family, tmp_path):
    cfg = configs()[family]
    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # larger than the default init: peaked, varied patterns
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(6.0)
    model.save_pretrained(tmp_path)
    ids = [1] + [int(x) for x in torch.randint(3, VOCAB, (T - 1,), generator=torch.Generator().manual_seed(5))]

    transformers.AttentionInterface.register("f64_reference", reference_attention)
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionMaskInterface.register("f64_reference", eager_mask)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="f64_reference", dtype=torch.float64)
    ref.eval()
    CAPTURED.clear()
    with torch.no_grad():
        ref(torch.tensor([ids]))
    assert sorted(CAPTURED) == list(range(cfg.num_hidden_layers))

    got = sinkscope_run("sinks", "--model", str(tmp_path), "--ids", ",".join(map(str, ids)),
                        "--query-chunk", str(CHUNK), "--epsilon", str(EPS), "--self-attention")
    assert got["window"] == T
    tol = 2e-5
    for layer in got["layers"]:
        l = layer["layer"]
        S, A = CAPTURED[l]
        head_diag = []
        for h in layer["heads"]:
            want = stats_from_definitions(A[0, h["head"]].tolist(), S[0, h["head"]].tolist())
            where = f"{family} layer {l} head {h['head']}"
            assert h["argmax_key"] == want["argmax_key"], where
            assert h["max_importance"] == pytest.approx(want["max_importance"], abs=tol), where
            assert h["gu_first_key_score"] == pytest.approx(want["gu_first_key_score"], abs=tol), where
            assert h["is_sink_head"] == (want["max_importance"] > EPS), where
            for key in ("mean_attention_distance", "mean_attention_distance_without_sink",
                        "mean_logit_gap"):
                assert h[key] == pytest.approx(want[key], rel=tol, abs=tol), f"{where} {key}"
            head_diag.append(want["diag"])
        sa = next(x for x in got["self_attention"] if x["layer"] == l)
        for t in range(T):
            mean = sum(d[t] for d in head_diag) / len(head_diag)
            assert sa["per_token"][t] == pytest.approx(mean, abs=tol), f"{family} layer {l} A[{t},{t}]"
