"""Every job type through the Python client against a real server; results
checked against the planted fixture's ground truth (planted.py) or analytic
identities, never against values the client computed."""
from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest

import planted
import planted_reference as ref
import sinkscope
import sinkscope.frames
import sinkscope.plot
from conftest import Server, _tmpdir, demo_catalog, get_result, require, shared_file
from jobs import (BYTELM_IDS, BYTELM_MAX_ABS, BYTELM_README_IDS, CORPUS, PROFILE_CHUNKS, SEQ_A,
                  SEQ_B, SEQ_D, SPECS)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "common"))
import llama2c_float64  # noqa: E402  (tests/common: float64 llama2.c reference)


def test_every_job_type_has_a_job(results):
    # The proto's job types (discovered) are all exercised by jobs.SPECS.
    covered = {t for t, _, _ in SPECS.values()}
    covered.add("train")  # a training run names no model: test_train.py submits it
    missing = [t for t in sinkscope.job_types() if t not in covered]
    assert not missing, f"job types without a test job: {missing}"
    assert {"scan", "sinks", "first_token_probe", "spike_similarity", "self_attention_profile",
            "perplexity", "constant_substitution", "sink_ablation"} <= set(sinkscope.job_types())


def test_models_frame(client):
    models = client.models().set_index("name")
    p = models.loc["planted"]
    assert (p.n_layers, p.d_model, p.n_heads, p.vocab_size, p.n_ctx) == (
        planted.N_LAYERS, planted.D_MODEL, planted.N_HEADS, planted.D_VOCAB, planted.N_CTX)
    assert p.format == "hf" and bool(p.available) and p.default_dtype == "FLOAT32"
    assert client.workers()["total"] == 2


def test_scan_planted(results):
    r = get_result(results, "scan")
    assert r.type == "scan"
    assert r.kinds == ["scan_block"] * (2 * planted.N_LAYERS) + ["scan_summary"]
    assert r.frame("spike_channels").channel.tolist() == [planted.SPIKE_CHANNEL]
    want = sorted((s, p) for s, seq in enumerate([SEQ_A, SEQ_B]) for p in planted.spike_positions(seq))
    got = sorted(map(tuple, r.frame("spike_tokens")[["sequence", "position"]].values.tolist()))
    assert got == want
    steps = r.frame("step_blocks")
    assert planted.STEP_UP_BLOCK in steps[steps.kind == "step_up"].block.tolist()
    assert planted.STEP_DOWN_BLOCK in steps[steps.kind == "step_down"].block.tolist()
    # Channel 7 of BOS carries 20 x^2 sigmoid(x), x = 8 / sqrt(1 + eps), between
    # the two MLPs (planted.step_up_value), the largest |h| of the block.
    blocks = r.frame("blocks").set_index("block")
    assert blocks.loc[planted.STEP_UP_BLOCK, "max_abs"] == pytest.approx(planted.step_up_value(), rel=1e-6)
    assert blocks.loc[planted.STEP_UP_BLOCK - 1, "n_massive"] == 0
    prov = r.provenance
    assert prov["model"] == "planted" and prov["dtype"] == "float32" and prov["device"] == "cpu"
    assert int(prov["n_tokens"]) == len(SEQ_A) + len(SEQ_B)


def test_sinks_planted(results):
    r = get_result(results, "sinks")
    heads = r.frame("heads")
    assert len(heads) == planted.N_LAYERS * planted.N_HEADS
    got = set(map(tuple, r.frame("sink_heads")[["layer", "head"]].values.tolist()))
    assert got == set(planted.SINK_HEADS)
    m = r.matrix("max_importance")
    assert m.shape == (planted.N_LAYERS, planted.N_HEADS)
    for l, h in planted.SINK_HEADS:
        assert m[l, h] > 0.3
    layers = r.frame("layers").set_index("layer")
    assert layers.loc[2, "n_sink_heads"] == 2 and layers.loc[3, "n_sink_heads"] == 1
    # eq. 28: s_eps of the model = sink heads / heads when every sequence agrees.
    assert r.summary.sink_ratio == pytest.approx(3 / 24, abs=1e-9)


def test_first_token_probe_planted(results):
    r = get_result(results, "first_token_probe")
    s = r.summary
    assert s.n_tokens == 7
    assert s.n_spike_at_first == len(planted.SPIKE_TOKEN_IDS)
    exc = r.frame("exceptions")
    assert sorted(exc[exc.kind == "not_spiking_at_first"].token_id) == [10, 11, 12, 13]
    h = r.frame("histogram")
    assert len(h) == 2 * planted.N_LAYERS and h.block.tolist() == list(range(1, 13))
    # The spikes first appear after the step-up MLP (block 4).
    assert h.set_index("block").first_spike_block_histogram.idxmax() == planted.STEP_UP_BLOCK


def test_spike_similarity_planted(results):
    r = get_result(results, "spike_similarity")
    n = sum(len(planted.spike_positions(s)) for s in (SEQ_A, SEQ_B))
    mats = r.matrices()
    assert set(mats) == {"before", "after", "normalized"}
    for name, m in mats.items():
        assert m.shape == (n, n)
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-5)
        np.testing.assert_allclose(m, m.T, atol=1e-6)
    # After the step-up block every spike token is ~1280 e_7: cosine -> 1.
    assert r.frame("cosine").set_index("matrix").loc["after", "min_off_diagonal"] > 0.99
    assert r.summary.step_up_block.block == planted.STEP_UP_BLOCK
    toks = r.frame("spike_tokens")
    assert set(toks.token_id) <= set(planted.SPIKE_TOKEN_IDS)


def test_self_attention_profile_planted(results):
    r = get_result(results, "self_attention_profile")
    g = r.frame("groups")
    assert sorted(g.layer.unique()) == [0, 1, 2]
    # Position 0 attends only to itself: A[0, 0] = 1 in every head and layer.
    first = g[g.group == "first"]
    np.testing.assert_allclose(first["mean"], 1.0, atol=1e-5)
    assert (g[g.group == "delimiter"]["count"] == 2).all()
    pt = r.frame("per_token")
    assert len(pt) == 3 * len(SEQ_D)
    assert ((pt.value >= 0) & (pt.value <= 1 + 1e-6)).all()


def _scored(n_tokens, chunk):
    n_chunks = math.ceil(n_tokens / chunk)
    last = n_tokens - (n_chunks - 1) * chunk
    if last == 1:
        return n_chunks - 1, n_tokens - 1 - (n_chunks - 1)
    return n_chunks, n_tokens - n_chunks


def test_perplexity_planted(results):
    r = get_result(results, "perplexity")
    chunks = r.frame("chunks")
    n_chunks, n_scored = _scored(100, 16)
    assert len(chunks) == n_chunks and chunks.n_scored.sum() == n_scored
    assert chunks["index"].tolist() == list(range(n_chunks))
    assert chunks.first_token.tolist() == [16 * i for i in range(n_chunks)]
    np.testing.assert_allclose(chunks.mean_loss, chunks.nll_sum / chunks.n_scored, rtol=1e-9)
    np.testing.assert_allclose(chunks.perplexity, np.exp(chunks.mean_loss), rtol=1e-9)
    s = r.summary
    assert s.n_scored == n_scored
    assert s.perplexity == pytest.approx(math.exp(chunks.nll_sum.sum() / n_scored), rel=1e-9)


def test_perplexity_stories(results):
    r = get_result(results, "perplexity_stories")
    n_chunks, n_scored = _scored(512, 128)
    chunks = r.frame("chunks")
    assert len(chunks) == n_chunks and r.summary.n_scored == n_scored
    assert r.summary.eval.corpus == "tinyshakespeare"
    # Independent value: the corpus's first 512 tokens by llama2.c's encoder
    # (tests/common/llama2c_float64.py; a prefix of the text is enough for
    # them) through a float64 numpy forward of stories260K, chunk by chunk.
    pieces, scores = llama2c_float64.read_tokenizer(shared_file("models/aidreams260K/tok512.bin"), 512)
    with open(shared_file("corpora/tinyshakespeare.txt"), encoding="utf-8") as f:
        ids = llama2c_float64.encode(f.read(1500), pieces, scores)[:512]
    assert len(ids) == 512
    model = llama2c_float64.Llama2c(shared_file("models/stories260K/stories260K.bin"))
    nll = [llama2c_float64.nll(model.forward(ids[i:i + 128])["logits"], ids[i:i + 128]).sum()
           for i in range(0, 512, 128)]
    np.testing.assert_allclose(chunks.nll_sum, nll, rtol=1e-5)
    assert r.summary.perplexity == pytest.approx(math.exp(sum(nll) / n_scored), rel=1e-5)


def test_constant_substitution_planted(results):
    mean = get_result(results, "constant_substitution")
    zero = get_result(results, "constant_substitution_zero")
    for r in (mean, zero):
        kl = r.frame("kl").set_index("position_class")
        # Every position of every chunk has a next-token distribution; each
        # chunk holds 2 planted spike tokens (BOS, id 5), each followed by an
        # ordinary token.
        n_spike = sum(CORPUS.count(t) for t in planted.SPIKE_TOKEN_IDS)
        assert kl.loc["spike", "n"] == n_spike == 12
        assert kl.loc["after_spike", "n"] == n_spike
        assert kl.loc["rest", "n"] == len(CORPUS) - 2 * n_spike
        assert kl.loc["all", "n"] == len(CORPUS)
        iv = r.frame("interventions")
        assert iv.kind.tolist() == ["substitution"]
        assert iv.block.tolist() == [planted.STEP_UP_BLOCK]
    # Finding 6: the mean vector stands in for the spike; zero breaks the model.
    assert mean.frame("interventions").loc[0, "mode"] == "mean"
    assert zero.frame("kl").set_index("position_class").loc["all", "kl"] > \
        10 * mean.frame("kl").set_index("position_class").loc["all", "kl"]
    assert len(mean.matrix("substitution_values_0")) == planted.D_MODEL


def test_sink_ablation_planted(results):
    r = get_result(results, "sink_ablation")
    eff = r.frame("head_effects")
    assert set(map(tuple, eff[["layer", "head"]].values.tolist())) == set(planted.SINK_HEADS)
    iv = r.frame("interventions")
    assert iv.kind.tolist() == ["ablation"] and iv.method.tolist() == ["mask"]
    assert sorted(iv.heads[0]) == sorted(planted.SINK_HEADS)
    # Masking the sink key moves attention away from it: the distance changes.
    assert (eff.distance_baseline != eff.distance_intervened).all()
    assert r.summary.kl.all > 0


def test_scan_stories_no_spikes(results):
    r = get_result(results, "scan_stories")
    # stories260K is too small to grow massive activations (README).
    assert r.frame("spike_tokens").empty and r.frame("blocks").n_massive.sum() == 0
    assert len(r.frame("blocks")) == 10


# -- mechanism jobs (when the proto has them) --------------------------------
def test_ffn_quadratic_planted(results):
    r = get_result(results, "ffn_quadratic")
    m = r.matrix("frobenius_norms")
    blocks = r.frame("blocks")
    assert blocks.block.tolist() == [2 * (l + 1) for l in range(planted.N_LAYERS)]
    # The step-up MLP's U_7 = 20 e_0 e_0^T: ||U_7||_F = 20, the largest of its block.
    row = blocks.block.tolist().index(planted.STEP_UP_BLOCK)
    assert int(np.argmax(m[row])) == planted.SPIKE_CHANNEL
    assert m[row, planted.SPIKE_CHANNEL] == pytest.approx(20.0, rel=1e-6)


def test_silu_regime_planted(results):
    r = get_result(results, "silu_regime")
    t = r.frame("tokens")
    # The detected step-up / step-down MLP blocks; every token of both sequences.
    assert sorted(t.block.unique()) == [planted.STEP_UP_BLOCK, planted.STEP_DOWN_BLOCK]
    spikes = {(s, p) for s, seq in enumerate([SEQ_A, SEQ_B]) for p in planted.spike_positions(seq)}
    w = ref.weights()
    fwd = [ref.forward(seq, w) for seq in (SEQ_A, SEQ_B)]
    for block in (planted.STEP_UP_BLOCK, planted.STEP_DOWN_BLOCK):
        bt = t[t.block == block].sort_values(["sequence", "position"])
        assert list(zip(bt.sequence, bt.position)) == [(s, p) for s, seq in enumerate([SEQ_A, SEQ_B])
                                                       for p in range(len(seq))]
        assert {(s, p) for s, p, k in zip(bt.sequence, bt.position, bt.is_spike_token) if k} == spikes
        # cos(x, SiLU(x)) and ||SiLU(x)|| / ||x|| of mlp.hook_pre, float64 reference.
        cos, ratio = zip(*(ref.silu_regime(f["mlp_pre"][block // 2 - 1]) for f in fwd))
        np.testing.assert_allclose(bt.cosine, np.concatenate(cos), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bt.norm_ratio, np.concatenate(ratio), rtol=1e-5, atol=1e-6)


def _check_vo_circuit(r, alignments, n_layers):
    """vo-circuit result `r` against float64 alignments [layers, 1 + vocab]:
    column 0.. the requested tokens, then the whole vocabulary (the sample)."""
    layers = r.frame("layers").sort_values("layer")
    assert layers.layer.tolist() == list(range(n_layers))
    al = r.frame("alignment")
    for l in range(n_layers):
        tok, vocab = alignments[l]
        got = al[al.layer == l].sort_values("index").token_alignment.to_numpy()
        np.testing.assert_allclose(got, tok, rtol=1e-5, atol=1e-6)
        row = layers[layers.layer == l].iloc[0]
        np.testing.assert_allclose(row.sample_quantiles, ref.quantiles(vocab), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([row.sample_mean, row.sample_min, row.sample_max],
                                   [vocab.mean(), vocab.min(), vocab.max()], rtol=1e-5, atol=1e-6)


def test_vo_circuit_planted(results):
    r = get_result(results, "vo_circuit")
    assert r.summary.step_up_block == planted.STEP_UP_BLOCK
    # Layers 0..1 (block 4 is layer 1's MLP); s* = e_0 (U_7 = 20 e_0 e_0^T) and
    # W_O writes nothing on e_0, so every alignment is 0 here (bytelm-demo
    # below has non-zero ones).
    w = ref.weights()
    tok = ref.vo_alignments(w, [1, 5, 10, 11], 1, planted.SPIKE_CHANNEL)
    vocab = ref.vo_alignments(w, list(range(planted.D_VOCAB)), 1, planted.SPIKE_CHANNEL)
    _check_vo_circuit(r, [(tok[l], vocab[l]) for l in range(2)], 2)


def vo_circuit_bytelm_reference():
    """Float64 vo-circuit of bytelm-demo at step-up block 2 (layer 0, channel
    251 = argmax ||U_k||_F): |cos(W_VO h~, s*)| of position 0 for BYTELM_IDS
    and for all 257 ids; h~ = RMSNorm(embedding) * rms_att (one-token
    sequences: position 0 attends only to itself)."""
    m = llama2c_float64.Llama2c(shared_file("models/bytelm-demo/bytelm-demo.bin"))
    g = m.rms_ffn[0]
    gate, up, down = m.w1[0] * g, m.w3[0] * g, m.w2[0]
    frob = [np.linalg.norm((gate.T * down[k]) @ up) for k in range(m.dim)]
    k = int(np.argmax(frob))
    U = (gate.T * down[k]) @ up
    vals, vecs = np.linalg.eigh((U + U.T) / 2)
    s = vecs[:, int(np.argmax(np.abs(vals)))]
    y = m.rmsnorm(m.emb, m.rms_att[0]) @ (m.wo[0] @ m.wv[0]).T  # [vocab, D]
    cos = np.abs(y @ s) / np.linalg.norm(y, axis=1)
    return k, cos[BYTELM_IDS], cos


def test_vo_circuit_bytelm(results):
    r = get_result(results, "vo_circuit_bytelm")
    assert r.summary.step_up_block == 2 and r.summary.vocab_sample == 257
    k, tok, vocab = vo_circuit_bytelm_reference()
    assert k == 251  # the spike channel of shared/README.md
    assert vocab.max() > 0.1  # values a wrong s* or W_VO would not give
    _check_vo_circuit(r, [(tok, vocab)], 1)


def test_activations_planted(results):
    r = get_result(results, "activations")
    mats = r.matrices()
    resid = mats["blocks.1.hook_resid_post/0"]
    assert resid.shape == (3, planted.D_MODEL)
    # Position 0 (BOS) and 8 (id 5) are spike tokens after block 4 (layer 1
    # mlp): BOS carries the analytic planted.step_up_value() on e_7; every value
    # equals the float64 reference forward.
    assert resid[0, planted.SPIKE_CHANNEL] == pytest.approx(planted.step_up_value(), rel=1e-6)
    want = ref.forward(SEQ_A)["resid_pre"][2][[0, 1, 8]]
    np.testing.assert_allclose(resid, want, rtol=1e-5, atol=1e-4)
    assert abs(want[2, planted.SPIKE_CHANNEL]) > 1000 and abs(want[1, planted.SPIKE_CHANNEL]) < 1


# -- client behaviour ---------------------------------------------------------
def test_streamed_records_and_progress(client, capsys):
    job = client.scan("planted", [SEQ_A])
    kinds = [rec.DESCRIPTOR.name for rec in job]
    assert kinds == ["ScanBlock"] * 12 + ["ScanSummary"]
    assert job.state == "COMPLETED" and job.done
    job2 = client.scan("planted", [SEQ_B])
    job2.wait(progress=True)
    err = capsys.readouterr().err
    assert job2.id in err and "COMPLETED" in err
    assert job2.result(progress=False).frame("blocks").block.tolist() == list(range(1, 13))
    assert client.get(job2.id).state == "COMPLETED"
    jobs = client.jobs()
    assert {job.id, job2.id} <= set(jobs.id)
    assert set(jobs[jobs.id == job2.id].type) == {"scan"}
    assert len(client.jobs(state="COMPLETED", limit=2)) == 2


def test_generic_submission_and_getattr(client):
    # Any job type by its proto name, and client.<type>(...) without a wrapper.
    job = client.submit("scan", "planted", SEQ_A, top_k=5, abs_threshold=50.0)
    res = job.result(progress=False)
    assert res.params == {"top_k": 5, "abs_threshold": 50.0}
    assert res.summary.thresholds.top_k == 5
    assert (res.frame("entries").groupby("block").size() == 10).all()  # 5 resid + 5 output
    job = client.__getattr__("sinks")("planted", [SEQ_A], layers=[2])
    assert job.result(progress=False).frame("layers").layer.tolist() == [2]


def test_errors_carry_code_and_message(client):
    with pytest.raises(sinkscope.RpcError) as e:
        client.scan("no-such-model", [1, 2, 3])
    assert e.value.code == grpc.StatusCode.NOT_FOUND and "no-such-model" in e.value.message
    with pytest.raises(sinkscope.RpcError) as e:
        client.sinks("planted", [SEQ_A], window=1)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "window" in e.value.message
    with pytest.raises(sinkscope.RpcError) as e:
        client.scan("planted", [[1, 2, planted.D_VOCAB + 5]])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(sinkscope.RpcError) as e:
        client.get("j-0000000000000000")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(TypeError, match="windw"):
        client.sinks("planted", [SEQ_A], windw=3)
    with pytest.raises(ValueError, match="unknown job type"):
        client.submit("no_such_type", "planted", [SEQ_A])


def test_job_failure_raises(client):
    # Spike similarity without spike tokens fails the job (FAILED_PRECONDITION).
    job = client.spike_similarity("planted", [planted.ordinary(12, 0)[1:]])
    with pytest.raises(sinkscope.JobFailed) as e:
        job.result(progress=False)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and e.value.job_id == job.id
    assert e.value.message
    assert job.state == "FAILED"
    with pytest.raises(sinkscope.RpcError) as e2:
        job.cancel()
    assert e2.value.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def slow_server(binaries):
    d = _tmpdir()
    pdir = planted.write_planted(os.path.join(d, "planted"))
    srv = Server(d, {"models": [{"name": "planted", "format": "hf", "path": pdir}]}, workers=1,
                 extra={"worker_args": ["--test-unit-delay-ms=150"]})
    srv.start()
    yield srv
    srv.stop()
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_cancel_running_and_queued(slow_server):
    c = sinkscope.connect(slow_server.address)
    running = c.scan("planted", [SEQ_A])
    queued = c.scan("planted", [SEQ_B])
    for event in running.events():
        if event.WhichOneof("event") == "running":
            break
    assert queued.refresh().state == "QUEUED"
    queued.cancel()
    assert queued.state == "CANCELLED"
    running.cancel()
    with pytest.raises(sinkscope.JobCancelled) as e:
        running.wait(timeout=60, progress=False)
    assert running.state == "CANCELLED" and e.value.code == grpc.StatusCode.CANCELLED
    with pytest.raises(sinkscope.JobCancelled):
        queued.result(progress=False)
    # The slow job ends in time with a timeout that is long enough.
    with pytest.raises(TimeoutError):
        c.scan("planted", [SEQ_A]).wait(timeout=0.3, progress=False)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_token_and_tls(binaries):
    # A server with TLS (self-signed certificate) and tokens, as on a shared host.
    import shutil
    d = _tmpdir()
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    out = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                          "-subj", "/CN=localhost", "-addext",
                          "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                         capture_output=True, text=True)
    require(out.returncode == 0, "openssl (a test certificate): " + out.stderr[-300:])
    pdir = planted.write_planted(os.path.join(d, "planted"))
    port = _free_port()
    srv = Server(d, {"models": [{"name": "planted", "format": "hf", "path": pdir}]}, workers=1,
                 extra={"listen": f"127.0.0.1:{port}", "auth": "token", "tls_cert": cert,
                        "tls_key": key})
    out = subprocess.run([binaries["server"], f"--config={srv.config_path}", "token", "create",
                          "--user", "alice"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    token = next(w for w in out.stdout.split() if w.startswith("sst_"))
    try:
        srv.start(token=token, tls_ca=cert)
        address = f"localhost:{port}"
        with pytest.raises(sinkscope.RpcError) as e:
            sinkscope.connect(address, tls_ca=cert).models()
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(sinkscope.RpcError) as e:
            sinkscope.connect(address, token=token, timeout=3).models()  # plaintext to a TLS port
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        c = sinkscope.connect(address, token=token, tls_ca=cert)
        job = c.scan("planted", [SEQ_A])
        assert job.info.owner == "alice"
        assert job.result(progress=False).frame("spike_channels").channel.tolist() == [7]
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_results_larger_than_one_answer(binaries):
    """Issue 25.3: Job.result(), client.get(id).result() and the report read
    results over max_get_response_bytes page by page: every record, as the
    watch stream delivered it."""
    d = _tmpdir()
    pdir = planted.write_planted(os.path.join(d, "planted"))
    srv = Server(d, {"models": [{"name": "planted", "format": "hf", "path": pdir}]}, workers=1,
                 extra={"max_get_response_bytes": 2048})
    srv.start()
    try:
        c = sinkscope.connect(srv.address)
        job = c.scan("planted", [SEQ_A, SEQ_B], top_k=32)
        streamed = [e.result.SerializeToString() for e in job.events()
                    if e.WhichOneof("event") == "result"]
        assert len(streamed) > 4
        for result in (job.result(progress=False), c.get(job.id).result(progress=False)):
            assert [r.SerializeToString() for r in result.raw_records] == streamed
            assert result.job.total_results == len(streamed)
        out = subprocess.run([sys.executable, "-m", "sinkscope", "--server", srv.address, "report",
                              job.id, "-o", os.path.join(d, "report.html")],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    finally:
        srv.stop()


# ---- profile (the paper's table row) ----

def _ok_row(r, model):
    rows = r.frame("rows")
    row = rows[rows.model == model]
    assert len(row) == 1, rows
    row = row.iloc[0]
    assert row.ok, row.error
    return row


def test_profile_equals_the_separate_jobs(results):
    """One pass gives the numbers of the perplexity, sinks (the chunks cut to
    T) and scan (the chunks) jobs; and the planted ground truth."""
    prof = get_result(results, "profile_planted")
    ppl = get_result(results, "profile_part_perplexity").summary
    sinks = get_result(results, "profile_part_sinks").summary
    scan = get_result(results, "profile_part_scan").summary
    row = _ok_row(prof, "planted")
    assert row.n_chunks == len(PROFILE_CHUNKS) and row.n_scored == ppl.n_scored
    assert row.perplexity == pytest.approx(ppl.perplexity, rel=1e-6)
    assert row.mean_loss == pytest.approx(ppl.mean_loss, rel=1e-6)
    assert row.sink_ratio == pytest.approx(sinks.sink_ratio, abs=1e-12)
    assert row.gu_sink_ratio == pytest.approx(sinks.gu_sink_ratio, abs=1e-12)
    assert (row.n_sink_heads, row.n_heads) == (sinks.n_sink_heads, sinks.n_heads)
    assert row.sink_heads_distance == pytest.approx(sinks.sink_heads_distance, rel=1e-5)
    assert row.other_heads_distance == pytest.approx(sinks.other_heads_distance, rel=1e-5)
    layers = prof.frame("layers")
    sink_layers = get_result(results, "profile_part_sinks").frame("layers")
    np.testing.assert_allclose(layers.sink_ratio, sink_layers.sink_ratio, atol=1e-12)
    assert row.spike == pytest.approx(scan.spike_mean_over_sequences, rel=1e-6)
    assert row.peak_abs == pytest.approx(scan.peak_abs, rel=1e-6)
    assert row.peak_block == scan.peak_block.block
    assert row.step_up_blocks == [b.block for b in scan.step_up_blocks]
    assert row.step_down_blocks == [b.block for b in scan.step_down_blocks]
    assert row.spike_channels == list(scan.spike_channels)
    assert row.n_spike_tokens == len(scan.spike_tokens)
    assert row.spike_positions == sorted({t.position for t in scan.spike_tokens})
    # The planted ground truth (planted.py), not only agreement.
    assert row.spike_channels == [planted.SPIKE_CHANNEL]
    assert planted.STEP_UP_BLOCK in row.step_up_blocks
    assert planted.STEP_DOWN_BLOCK in row.step_down_blocks
    want_pos = sorted({p for c in PROFILE_CHUNKS for p in planted.spike_positions(c)})
    assert row.spike_positions == want_pos
    assert row.n_sink_heads == len(planted.SINK_HEADS) and row.n_heads == 24
    assert row.sink_ratio == pytest.approx(len(planted.SINK_HEADS) / 24, abs=1e-12)
    assert row.peak_abs == pytest.approx(planted.step_up_value(), rel=1e-4)
    params = prof.summary.params
    assert (params.eval.chunk_length, params.sinks.window, params.sinks.epsilon) == (16, 16, 0.3)
    assert params.thresholds.abs_threshold == 100 and params.thresholds.step_rule == "share"


def test_profile_bytelm_published_numbers(results):
    """shared/README.md's float64 numbers for bytelm-demo's sentence: one
    chunk, so spike = max |h| over blocks (block 12), perplexity 3.326, the
    position-0 spike on channel 251 stepped up by block 2, no sink head."""
    r = get_result(results, "profile_bytelm")
    row = _ok_row(r, "bytelm-demo")
    assert row.n_chunks == 1 and row.n_scored == len(BYTELM_README_IDS) - 1 == 80
    assert row.perplexity == pytest.approx(3.326, abs=5e-4)
    assert row.spike == pytest.approx(BYTELM_MAX_ABS[-1], abs=5e-3)
    assert row.peak_block == 12
    assert 251 in row.spike_channels and 0 in row.spike_positions
    assert 2 in row.step_up_blocks
    assert row.n_sink_heads == 0 and row.sink_ratio == 0 and row.top_sink_key == -1


def test_profile_compare_rows_in_order(results):
    """A comparison: one row per model in the order asked, the missing model's
    failed row in its place, the others complete; the first row equals the
    single-model profile (same corpus, same parameters)."""
    r = get_result(results, "profile_compare")
    rows = r.frame("rows")
    assert rows.model.tolist() == ["planted", "planted-sandwich", "bytelm-demo", "no-such-model",
                                   "stories260K"]
    assert rows.ok.tolist() == [True, True, True, False, True]
    assert "no-such-model" in rows.error[3] and "catalog" in rows.error[3]
    assert r.summary.n_failed == 1
    assert [k for k in r.kinds] == ["profile_row"] * 5 + ["profile_summary"]  # streamed, in order
    # The pair that differs only in norm placement: the pre-norm model's
    # planted step-up (~1280 on channel 7) is a spike; its sandwich twin stays
    # under the analytic bound of a stream of gain-1 normalised block outputs.
    bound = planted.sandwich_spike_bound()
    assert rows.spike[0] > planted.step_up_value() * 0.9 > bound
    assert 0 < rows.peak_abs[1] <= bound
    single = _ok_row(get_result(results, "profile_planted"), "planted")
    first = rows.iloc[0]
    for col in ("perplexity", "sink_ratio", "spike", "peak_abs"):
        assert first[col] == pytest.approx(single[col], rel=1e-6)
    assert first.step_up_blocks == single.step_up_blocks
    prov = r.frame("provenance")
    assert prov.model.tolist() == ["planted", "planted-sandwich", "bytelm-demo", "stories260K"]


def test_profile_compare_refuses_a_model_that_cannot_read_the_corpus(client, has_stories):
    """On a catalog corpus every compared model must read the stream through
    its own tokenizer or a declared compatible one: planted (no tokenizer,
    none declared) is refused at submission, naming the model and the
    corpus's tokenizer; stories260K (tok512 declared compatible) is not."""
    if not (has_stories and shared_file("models/aidreams260K/aidreams260K.bin")):
        pytest.skip("shared/ has no aidreams260K / stories260K / tinyshakespeare")
    with pytest.raises(sinkscope.RpcError) as e:
        client.profile("aidreams260K", corpus="tinyshakespeare", token_budget=128,
                       compare=["stories260K", "planted"])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, e.value.message
    for w in ("compared model planted", "tok512.bin", "compatible"):
        assert w in e.value.message, e.value.message


def test_profile_figures(results, tmp_path):
    r = get_result(results, "profile_compare")
    figs = sinkscope.plot.figures(r)
    assert "profile_bars" in figs
    paths = sinkscope.plot.save(figs["profile_bars"], str(tmp_path / "bars"))
    assert all(os.path.getsize(p) > 1000 for p in paths)
    # Curves over checkpoints from rows named NAME@STEP.
    rows = r.frame("rows").copy()
    rows = rows[rows.ok].reset_index(drop=True)
    steps = [100 * (i + 1) for i in range(len(rows))]
    rows["run"], rows["step"] = "run", steps
    fig = sinkscope.plot.profile_curves(rows)
    ax = fig.axes[0]
    assert list(ax.lines[0].get_xdata()) == steps
    np.testing.assert_allclose(ax.lines[0].get_ydata(), rows.perplexity)
    assert sinkscope.frames.checkpoint_step("run@1500") == ("run", 1500)
    assert sinkscope.frames.checkpoint_step("ln-sandwich-step20") == ("ln-sandwich", 20)
    assert sinkscope.frames.checkpoint_step("bytelm-demo") == ("bytelm-demo", None)


def test_profile_run_checkpoints_in_step_order(results):
    """RUN@* expands to the catalog's RUN@STEP entries in step order (20
    before 100), each a complete row equal to the same weights' profile; a
    pattern no checkpoint matches keeps its place as a failed row."""
    r = get_result(results, "profile_run")
    rows = r.frame("rows")
    assert rows.model.tolist() == ["planted", "planted@20", "planted@100", "nothing@*"]
    assert rows.ok.tolist() == [True, True, True, False]
    assert rows.run.tolist()[1:3] == ["planted", "planted"] and rows.step.tolist()[1:3] == [20, 100]
    for col in ("perplexity", "sink_ratio", "spike"):
        np.testing.assert_allclose(rows[col][:3], rows[col][0], rtol=1e-6)
    fig = sinkscope.plot.profile_curves(r)
    assert list(fig.axes[0].lines[0].get_xdata()) == [20, 100]


@pytest.mark.parametrize("kw, code, words", [
    ({"sink_window": 1}, "INVALID_ARGUMENT", ["profile.sink_window", "--sink-window", ">= 2"]),
    ({"sink_window": planted.N_CTX + 1}, "INVALID_ARGUMENT", ["exceeds the context", "planted"]),
    ({"epsilon": 1.5}, "INVALID_ARGUMENT", ["profile.epsilon", "(0, 1)"]),
    ({"sink_layers": [planted.N_LAYERS]}, "INVALID_ARGUMENT", ["profile.sink_layers", "layer 6"]),
    ({"abs_threshold": -1}, "INVALID_ARGUMENT", ["profile.thresholds.abs_threshold"]),
    ({"step_rule": "sometimes"}, "INVALID_ARGUMENT", ["profile.thresholds.step_rule"]),
    ({"compare": ["planted"]}, "INVALID_ARGUMENT", ["listed twice"]),
    ({"compare": ["x"] * 65}, "RESOURCE_EXHAUSTED", ["compare_models", "64"]),
    ({"corpus": "no-such-corpus"}, "NOT_FOUND", ["profile.eval.corpus", "no-such-corpus"]),
    ({"chunk_length": 1}, "INVALID_ARGUMENT", ["profile.eval.chunk_length"]),
])
def test_profile_bad_requests(client, kw, code, words):
    seqs = None if "corpus" in kw else [CORPUS]
    with pytest.raises(sinkscope.RpcError) as e:
        client.profile("planted", seqs, **kw)
    assert e.value.code == getattr(grpc.StatusCode, code), e.value.message
    for w in words:
        assert w in e.value.message, e.value.message
