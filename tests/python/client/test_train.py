"""Training runs as jobs from the Python client (issue 26): client.train(...)
returns a job whose records give the loss curve as a DataFrame; its
checkpoints are the owner's models RUN@STEP (profiled with RUN@*), unknown to
another user."""
import json

import numpy as np
import pytest

from conftest import require, shared_file

CONFIG = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 257,
          "max_position_embeddings": 64, "tie_word_embeddings": False,
          "bos_token_id": 256, "eos_token_id": 256}


def test_train_curve_checkpoints_and_profile(client, server):
    import sinkscope
    require(shared_file("corpora/tinyshakespeare.txt"), "shared corpora/tinyshakespeare.txt")
    alice = sinkscope.connect(server.address, user="alice", timeout=30)
    job = alice.train({"model": CONFIG, "recipe": {"batch_size": 2, "seq_len": 32}},
                      corpus="tinyshakespeare", name="pyrun", steps=12, seed=5, lr=1e-2,
                      bos_id=256, eval_every=6, eval_sequences=2, checkpoint_every=6, log_every=1,
                      profile_every=2, profile={"token_budget": 256, "chunk_length": 64,
                                                "sink_window": 32})
    assert job.type == "train"
    r = job.result(timeout=300, progress=False)
    curve = r.frame("curve")
    assert list(curve.step) == list(range(1, 13))
    assert np.isfinite(curve.loss).all() and (curve.loss > 0).all()
    assert list(curve.checkpoint[curve.checkpoint != ""]) == ["pyrun@6", "pyrun@12"]
    assert np.isfinite(curve.heldout_loss[curve.step.isin([6, 12])]).all()
    assert curve.heldout_loss[~curve.step.isin([6, 12])].isna().all()
    assert not curve.replayed.any()
    summary = r.frame("summary").iloc[0]
    assert summary.run_name == "pyrun" and summary.step == 12 and summary.resumed_from_step == 0
    assert summary.checkpoints == ["pyrun@6", "pyrun@12"]
    assert summary.final_loss == curve.loss.iloc[-1]

    # profile_every 2: the second checkpoint profiled itself on the held-out split.
    own = r.frame("profile")
    assert list(own.model) == ["pyrun@12"] and list(own.step) == [12] and own.ok.all()
    assert np.isfinite(own.perplexity).all()

    names = [m.name for m in alice.models_response().models]
    assert {"pyrun@6", "pyrun@12"} <= set(names)
    prof = alice.profile("pyrun@6", corpus="tinyshakespeare", token_budget=256, chunk_length=64,
                         sink_window=32, compare=["pyrun@*"]).result(timeout=300, progress=False)
    rows = prof.frame("rows")
    assert list(rows.model) == ["pyrun@6", "pyrun@6", "pyrun@12"]
    assert list(rows.step) == [6, 6, 12] and rows.ok.all()

    bob = sinkscope.connect(server.address, user="bob", timeout=30)
    assert "pyrun@12" not in [m.name for m in bob.models_response().models]
    with pytest.raises(sinkscope.RpcError) as e:
        bob.scan("pyrun@12", [[256, 70, 105]])
    assert "NOT_FOUND" in str(e.value)
    with pytest.raises(sinkscope.RpcError) as e:
        alice.train(CONFIG, corpus="tinyshakespeare", name="pyrun", steps=3, batch_size=1, seq_len=8)
    assert "ALREADY_EXISTS" in str(e.value)


def test_train_through_a_catalog_tokenizer(client, server):
    """train.tokenizer: the corpus is read through aidreams260K's llama2c
    tokenizer (512 pieces) instead of bytes (in bfloat16 mixed precision); the run keeps a byte-identical copy
    of it, so RUN@STEP reads text as aidreams260K does. A vocabulary smaller than
    the tokenizer's, an unknown tokenizer model and a non-byte vocabulary with
    no tokenizer are refused at submission."""
    import pathlib
    import sinkscope
    tok = shared_file("models/aidreams260K/tok512.bin")
    require(tok and shared_file("corpora/tinyshakespeare.txt"), "shared aidreams260K tok512.bin and corpus")
    carol = sinkscope.connect(server.address, user="carol", timeout=30)
    config = dict(CONFIG, vocab_size=512, bos_token_id=1, eos_token_id=2)
    job = carol.train(config, corpus="tinyshakespeare", name="bpe", tokenizer="aidreams260K",
                      steps=3, batch_size=2, seq_len=32, bos_id=1, checkpoint_every=3,
                      precision="bfloat16")
    r = job.result(timeout=300, progress=False)
    summary = r.frame("summary").iloc[0]
    assert summary.checkpoints == ["bpe@3"]
    assert json.loads(summary.recipe_json)["precision"] == "bfloat16"  # mixed precision, as a job
    copy = next(pathlib.Path(server.dir).rglob("bpe/tokenizer.bin"))
    assert copy.read_bytes() == pathlib.Path(tok).read_bytes()
    text = "ROMEO: the king is dead"
    ours = carol.scan("bpe@3", text).result(timeout=120, progress=False)
    ref = carol.scan("aidreams260K", text).result(timeout=120, progress=False)
    n_ours, n_ref = int(ours.provenance["n_tokens"]), int(ref.provenance["n_tokens"])
    assert n_ours == n_ref < len(text)  # pieces, not bytes

    for bad, code, words in [
        (dict(config, vocab_size=300), "INVALID_ARGUMENT", "smaller than the vocabulary of aidreams260K"),
        (config, "NOT_FOUND", "train.tokenizer: model \"nope\""),
    ]:
        with pytest.raises(sinkscope.RpcError) as e:
            carol.train(bad, corpus="tinyshakespeare", name="bad", steps=1, batch_size=1, seq_len=8,
                        tokenizer="nope" if code == "NOT_FOUND" else "aidreams260K")
        assert code in str(e.value) and words in str(e.value), str(e.value)
    with pytest.raises(sinkscope.RpcError) as e:
        carol.train(config, corpus="tinyshakespeare", name="bad", steps=1, batch_size=1, seq_len=8)
    assert "INVALID_ARGUMENT" in str(e.value) and "train.tokenizer" in str(e.value)
