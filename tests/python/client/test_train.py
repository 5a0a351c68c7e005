"""Training runs as jobs from the Python client (issue 26): client.train(...)
returns a job whose records give the loss curve as a DataFrame; its
checkpoints are the owner's models RUN@STEP (profiled with RUN@*), unknown to
another user."""
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
