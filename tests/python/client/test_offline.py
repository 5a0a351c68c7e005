"""Client logic without a server: request building from keyword arguments
(compared with messages built field by field), job-type discovery from the
proto descriptor, generic tables of record kinds the converters do not know."""
from __future__ import annotations

import pytest

import sinkscope
from sinkscope import pb
from sinkscope import proto as P


def test_job_types_are_the_params_oneof():
    names = [f.name for f in sorted(pb.JobRequest.DESCRIPTOR.oneofs_by_name["params"].fields,
                                    key=lambda f: f.number)]
    assert sinkscope.job_types() == names
    assert P.params_message("sinks") is pb.SinksRequest
    with pytest.raises(ValueError, match="unknown job type"):
        P.params_message("model")  # a JobRequest field, not a params case


def test_fill_message_forms():
    got = P.fill_message(pb.InterventionRequest(), {
        "corpus": "tinyshakespeare", "chunk_length": 64, "abs_threshold": 50,
        "interventions": [{"ablation": {"method": "zero-value", "heads": [(2, 0), {"layer": 3, "head": 1}],
                                        "sink_positions": 0}},
                          {"substitution": {"mode": "constant", "channels_only": True,
                                            "channels": [7], "constant": [1.5]}}],
        "calibration": ["some text", [1, 2, 3]],
        "rel_threshold": None})
    want = pb.InterventionRequest()
    want.eval.corpus = "tinyshakespeare"
    want.eval.chunk_length = 64
    want.abs_threshold = 50.0
    a = want.interventions.add().ablation
    a.method = "zero-value"
    a.heads.add(layer=2, head=0)
    a.heads.add(layer=3, head=1)
    a.sink_positions.append(0)
    s = want.interventions.add().substitution
    s.mode = "constant"
    s.channels_only = True
    s.channels.append(7)
    s.constant.append(1.5)
    want.calibration.add().text = b"some text"
    want.calibration.add().ids.ids.extend([1, 2, 3])
    assert got == want
    assert not got.HasField("rel_threshold")  # None leaves the server default


def test_fill_message_errors_name_the_field():
    with pytest.raises(TypeError, match="sinks: unknown parameter 'windw'; valid: epsilon, layers"):
        P.fill_message(pb.SinksRequest(), {"windw": 3}, "sinks")
    with pytest.raises(ValueError, match="HeadRef"):
        P.fill_message(pb.SinkAblation(), {"heads": [(1, 2, 3)]})


def test_sequences_and_dtypes():
    assert P.make_sequence("héllo").text == "héllo".encode()
    assert list(P.make_sequence(range(3)).ids.ids) == [0, 1, 2]
    assert P.dtype_value("bf16") == pb.DTYPE_BFLOAT16 and P.dtype_value(None) == pb.DTYPE_UNSPECIFIED
    with pytest.raises(ValueError, match="float32"):
        P.dtype_value("int8")
    from sinkscope.client import _as_sequences
    assert _as_sequences([1, 2, 3]) == [[1, 2, 3]]
    assert _as_sequences(["a", "b"]) == ["a", "b"]
    assert _as_sequences("a") == ["a"]


def test_generic_frames_for_unknown_job_type():
    # A job whose type has no converter: one table per record kind, repeated
    # sub-messages exploded with the record's scalars.
    job = pb.Job(id="j-1")
    job.request.sinks.SetInParent()
    layer = job.results.add().sink_layer
    layer.layer = 4
    layer.sink_ratio = 0.5
    layer.heads.add(layer=4, head=0, max_importance=0.75)
    layer.heads.add(layer=4, head=1, max_importance=0.25)
    r = sinkscope.Result(job)
    r.type = "a_future_type"
    from sinkscope.frames import generic_frames
    t = generic_frames(r)
    assert list(t) == ["sink_layer", "sink_layer.heads"]
    assert t["sink_layer"].loc[0, "sink_ratio"] == 0.5
    h = t["sink_layer.heads"]
    assert h["max_importance"].tolist() == [0.75, 0.25] and h["index"].tolist() == [0, 1]
    assert h["sink_ratio"].tolist() == [0.5, 0.5]


def test_state_and_enum_names():
    assert P.state_name(pb.JOB_STATE_MODEL_LOADING) == "MODEL_LOADING"
    frame = sinkscope.frames.messages_frame([pb.ModelInfo(name="m", default_dtype=pb.DTYPE_BFLOAT16)],
                                            enums={"default_dtype": "DTYPE_"})
    assert frame.loc[0, "default_dtype"] == "BFLOAT16"
