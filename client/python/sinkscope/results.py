"""A finished job's records, as protobuf messages, tidy DataFrames and numpy arrays."""
from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Optional

from google.protobuf import json_format

from . import proto as P
from .proto import pb

__all__ = ["Result"]


def _text_as_base64(d: Any, descriptor) -> Any:
    """A copy of protobuf-JSON dict `d` of message `descriptor` where bytes fields
    given as text (the CLI's --json) are base64, as json_format expects."""
    if not isinstance(d, dict):
        return d
    out = dict(d)
    for f in descriptor.fields:
        if f.name not in out:
            continue
        v = out[f.name]
        if f.type == f.TYPE_BYTES:
            enc = lambda x: base64.b64encode(x.encode("utf-8")).decode("ascii") if isinstance(x, str) else x
            out[f.name] = [enc(x) for x in v] if isinstance(v, list) else enc(v)
        elif f.message_type is not None and not f.message_type.GetOptions().map_entry:
            if isinstance(v, list):
                out[f.name] = [_text_as_base64(x, f.message_type) for x in v]
            else:
                out[f.name] = _text_as_base64(v, f.message_type)
    return out


class Result:
    """The result records of a completed job (those of the completing attempt).

    Attributes:
        job: the Job message (request, owner, timestamps, results).
        type: job type name, e.g. "sinks".
        records: the messages inside the ResultRecords, in order (ScanBlock, ...).
    Tables: ``frames()`` (dict name -> DataFrame, one row per block / head /
    chunk / channel ..., columns named as the proto's fields), ``frame(name)``,
    ``result[name]``; matrices: ``matrices()`` / ``matrix(name)`` (numpy).
    """

    def __init__(self, job: "pb.Job", records: Optional[List["pb.ResultRecord"]] = None):
        self.job = job
        self.type = P.job_type_of(job)
        self.raw_records = list(records if records is not None else job.results)
        self.records = [P.record_body(r) for r in self.raw_records]
        self._frames: Optional[Dict[str, Any]] = None

    @classmethod
    def from_json(cls, text_or_dict: Any) -> "Result":
        """A Result from the CLI's `sinkscope --json get JOB` output (a Job in protobuf
        JSON; the CLI prints text fields as text, protobuf JSON as base64: either is read)."""
        job = pb.Job()
        d = json.loads(text_or_dict) if isinstance(text_or_dict, (str, bytes)) else text_or_dict
        json_format.ParseDict(_text_as_base64(d, job.DESCRIPTOR), job, ignore_unknown_fields=True)
        return cls(job)

    def __repr__(self):
        return (f"<sinkscope.Result {self.job.id} {self.type}: {len(self.records)} records; "
                f"tables {', '.join(self.frames())}>")

    # -- records ----------------------------------------------------------
    def of_kind(self, kind: str) -> List[Any]:
        """The records of one kind (ResultRecord field name), e.g. "sink_layer"."""
        return [P.record_body(r) for r in self.raw_records if P.record_kind(r) == kind]

    @property
    def kinds(self) -> List[str]:
        return [P.record_kind(r) for r in self.raw_records]

    @property
    def summary(self):
        """The last record (every job ends with its summary record)."""
        return self.records[-1] if self.records else None

    @property
    def provenance(self) -> Dict[str, Any]:
        """Model, checkpoint format, dtype, device, attention path, code version, tokens."""
        for rec in reversed(self.records):
            if "provenance" in rec.DESCRIPTOR.fields_by_name and rec.HasField("provenance"):
                return json_format.MessageToDict(rec.provenance, preserving_proto_field_name=True,
                                                 always_print_fields_with_no_presence=True)
        return {}

    @property
    def params(self) -> Dict[str, Any]:
        """The job's parameters as submitted (JobRequest.params message as a dict)."""
        if not self.type:
            return {}
        return json_format.MessageToDict(getattr(self.job.request, self.type),
                                         preserving_proto_field_name=True)

    @property
    def request(self) -> Dict[str, Any]:
        """The whole JobRequest as a dict (model, sequences, dtype, params)."""
        return json_format.MessageToDict(self.job.request, preserving_proto_field_name=True)

    # -- tables -----------------------------------------------------------
    def frames(self) -> Dict[str, Any]:
        """Every table of this result (see sinkscope.frames.CONVERTERS)."""
        if self._frames is None:
            from .frames import frames_of
            self._frames = frames_of(self)
        return self._frames

    def frame(self, name: Optional[str] = None):
        """One table; default the first (the per-block / per-head / per-chunk one)."""
        frames = self.frames()
        if name is None:
            return next(iter(frames.values()))
        if name not in frames:
            raise KeyError(f"{self.type} results have tables {', '.join(frames)}; not {name!r}")
        return frames[name]

    to_frame = frame

    def __getitem__(self, name: str):
        return self.frame(name)

    def matrices(self) -> Dict[str, Any]:
        """numpy arrays of this result (cosine matrices, layer x head grids, ...)."""
        from .frames import matrices_of
        return matrices_of(self)

    def matrix(self, name: str):
        m = self.matrices()
        if name not in m:
            raise KeyError(f"{self.type} results have matrices {', '.join(m) or '(none)'}; not {name!r}")
        return m[name]
