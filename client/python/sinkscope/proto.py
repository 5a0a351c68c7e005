"""The generated messages of proto/sinkscope/v1/analysis.proto, and what the
client discovers from them: job types are the fields of the ``JobRequest.params``
oneof, record kinds the fields of the ``ResultRecord.record`` oneof. A job type
added to the proto is available through ``Client.submit(name, ...)`` (and as
``client.<name>(...)``) without a change here.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping

try:
    from sinkscope._proto import analysis_pb2 as _analysis_pb2
    from sinkscope._proto import analysis_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - only when the stubs were never generated
    raise ImportError(
        "sinkscope: the gRPC stubs are missing (they are generated from proto/ when the "
        "package is built): install it with `pip install ./client/python`") from e

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message


class _Messages:
    """Every generated message and enum of proto/sinkscope/v1 (analysis.proto
    and the files it imports, e.g. mechanism.proto) under one name:
    ``pb.ScanBlock``, ``pb.JOB_STATE_COMPLETED``, ..."""

    def __init__(self):
        import importlib
        import pkgutil
        import sinkscope._proto as pkg
        mods = [_analysis_pb2]
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.endswith("_pb2") and info.name not in ("analysis_pb2", "worker_pb2"):
                mods.append(importlib.import_module(f"sinkscope._proto.{info.name}"))
        self._modules = mods

    def __getattr__(self, name):
        for m in self._modules:
            if hasattr(m, name):
                return getattr(m, name)
        raise AttributeError(f"no message or enum {name!r} in the sinkscope protos")

    def __dir__(self):
        return sorted({n for m in self._modules for n in dir(m) if not n.startswith("_")})


pb = _Messages()

__all__ = ["pb", "pb_grpc", "job_types", "record_kinds", "params_message", "job_type_of",
           "record_kind", "record_body", "fill_message", "make_sequence", "dtype_value",
           "state_name", "enum_name"]

_PARAMS = pb.JobRequest.DESCRIPTOR.oneofs_by_name["params"]


def _rep(f) -> bool:
    """True for a repeated field (protobuf >= 5: is_repeated; older: label)."""
    r = getattr(f, "is_repeated", None)
    return r if r is not None else f.label == f.LABEL_REPEATED


_RECORD = pb.ResultRecord.DESCRIPTOR.oneofs_by_name["record"]


def job_types() -> List[str]:
    """Names of the job types the proto defines (JobRequest.params fields), in field order."""
    return [f.name for f in sorted(_PARAMS.fields, key=lambda f: f.number)]


def record_kinds() -> List[str]:
    """Names of the result-record kinds (ResultRecord.record fields)."""
    return [f.name for f in sorted(_RECORD.fields, key=lambda f: f.number)]


def params_message(job_type: str) -> type:
    """The parameters message class of a job type, e.g. "sinks" -> SinksRequest."""
    field = pb.JobRequest.DESCRIPTOR.fields_by_name.get(job_type)
    if field is None or field.containing_oneof is not _PARAMS:
        raise ValueError(f"unknown job type {job_type!r}; the server's proto has: "
                         + ", ".join(job_types()))
    return _message_class(field.message_type)


def _message_class(desc: _descriptor.Descriptor) -> type:
    from google.protobuf import message_factory
    return message_factory.GetMessageClass(desc)


def job_type_of(job: "pb.Job") -> str:
    """The job type name of a Job (its request's params case), "" when unset."""
    return job.request.WhichOneof("params") or ""


def record_kind(record: "pb.ResultRecord") -> str:
    """The record's kind, e.g. "scan_block"."""
    return record.WhichOneof("record") or ""


def record_body(record: "pb.ResultRecord") -> _message.Message:
    """The message inside a ResultRecord (e.g. a ScanBlock)."""
    kind = record_kind(record)
    return getattr(record, kind) if kind else record


def enum_name(enum_type: Any, value: int, prefix: str) -> str:
    """Name of an enum value (EnumDescriptor or generated enum wrapper) without `prefix`."""
    by_number = getattr(enum_type, "values_by_number", None)
    if by_number is None:
        by_number = getattr(enum_type, "DESCRIPTOR").values_by_number
    v = by_number.get(int(value))
    name = v.name if v is not None else str(value)
    return name[len(prefix):] if name.startswith(prefix) else name


def state_name(value: int) -> str:
    """JobState number -> "QUEUED", "COMPLETED", ..."""
    return enum_name(pb.JobState, value, "JOB_STATE_")


_DTYPES = {"float32": pb.DTYPE_FLOAT32, "fp32": pb.DTYPE_FLOAT32, "bfloat16": pb.DTYPE_BFLOAT16,
           "bf16": pb.DTYPE_BFLOAT16, "float16": pb.DTYPE_FLOAT16, "fp16": pb.DTYPE_FLOAT16,
           "half": pb.DTYPE_FLOAT16, "": pb.DTYPE_UNSPECIFIED, "default": pb.DTYPE_UNSPECIFIED}


def dtype_value(dtype: Any) -> int:
    """"float32" / "bfloat16" / "float16" / a Dtype number / None -> Dtype number."""
    if dtype is None:
        return pb.DTYPE_UNSPECIFIED
    if isinstance(dtype, int):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key.startswith("dtype_"):
        key = key[len("dtype_"):]
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return _DTYPES[key]


def make_sequence(x: Any) -> "pb.Sequence":
    """A Sequence from text (str / bytes) or token ids (any iterable of ints)."""
    if isinstance(x, pb.Sequence):
        return x
    if isinstance(x, str):
        return pb.Sequence(text=x.encode("utf-8"))
    if isinstance(x, (bytes, bytearray)):
        return pb.Sequence(text=bytes(x))
    try:
        ids = [int(i) for i in x]
    except TypeError:
        raise TypeError(f"a sequence is text or token ids, got {type(x).__name__}") from None
    return pb.Sequence(ids=pb.TokenIds(ids=ids))


def _is_int_like(v: Any) -> bool:
    try:
        import numbers
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    except Exception:  # pragma: no cover
        return False


def _set_value(msg: _message.Message, field: _descriptor.FieldDescriptor, value: Any, path: str):
    FD = _descriptor.FieldDescriptor
    if field.type == FD.TYPE_MESSAGE:
        target = getattr(msg, field.name)
        _fill_sub(target, value, path)
    elif field.type == FD.TYPE_ENUM:
        setattr(msg, field.name, _enum_value(field, value, path))
    elif field.type == FD.TYPE_BYTES and isinstance(value, str):
        setattr(msg, field.name, value.encode("utf-8"))
    else:
        setattr(msg, field.name, _scalar(field, value))


def _scalar(field: _descriptor.FieldDescriptor, value: Any) -> Any:
    FD = _descriptor.FieldDescriptor
    if field.cpp_type in (FD.CPPTYPE_INT32, FD.CPPTYPE_INT64, FD.CPPTYPE_UINT32, FD.CPPTYPE_UINT64):
        return int(value)
    if field.cpp_type in (FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE):
        return float(value)
    if field.cpp_type == FD.CPPTYPE_BOOL:
        return bool(value)
    return value


def _enum_value(field: _descriptor.FieldDescriptor, value: Any, path: str) -> int:
    if isinstance(value, int):
        return value
    names = {v.name: v.number for v in field.enum_type.values}
    key = str(value).upper()
    for cand in (key, f"{field.enum_type.name.upper()}_{key}"):
        if cand in names:
            return names[cand]
    for name, number in names.items():
        if name.endswith("_" + key):
            return number
    raise ValueError(f"{path}: {value!r} is not one of {sorted(names)}")


def _fill_sub(target: _message.Message, value: Any, path: str):
    if isinstance(value, _message.Message):
        target.CopyFrom(value)
    elif target.DESCRIPTOR.full_name == "sinkscope.v1.Sequence":
        target.CopyFrom(make_sequence(value))
    elif isinstance(value, Mapping):
        fill_message(target, value, path)
    elif isinstance(value, (tuple, list)) and all(not isinstance(v, Mapping) for v in value):
        # Positional: e.g. a HeadRef as (layer, head), a BlockRef as (block,).
        fields = sorted(target.DESCRIPTOR.fields, key=lambda f: f.number)
        if len(value) > len(fields):
            raise ValueError(f"{path}: {len(value)} values for {target.DESCRIPTOR.name} "
                             f"({', '.join(f.name for f in fields)})")
        fill_message(target, dict(zip([f.name for f in fields], value)), path)
    elif target.DESCRIPTOR.full_name == "sinkscope.v1.TokenIds":
        target.ids.extend(int(i) for i in value)
    else:
        raise TypeError(f"{path}: expected a {target.DESCRIPTOR.name} (message or dict), "
                        f"got {type(value).__name__}")


def fill_message(msg: _message.Message, values: Mapping[str, Any], path: str = "") -> _message.Message:
    """Sets the fields of `msg` from a dict (proto field names; nested dicts for
    sub-messages; lists for repeated fields; tuples for small messages such as
    HeadRef (layer, head); text or id lists for Sequence; enum names without
    their prefix). A key that is not a field of the message, but is a field of
    exactly one of its singular message fields (e.g. ``corpus`` for
    ``eval.corpus``), goes there. Unknown keys raise TypeError naming the valid
    ones. None values are skipped (the server's default applies)."""
    desc = msg.DESCRIPTOR
    prefix = path or desc.name
    FD = _descriptor.FieldDescriptor
    for key, value in values.items():
        if value is None:
            continue
        field = desc.fields_by_name.get(key)
        if field is None:
            owners = [f for f in desc.fields
                      if f.type == FD.TYPE_MESSAGE and not _rep(f)
                      and key in f.message_type.fields_by_name]
            if len(owners) == 1:
                fill_message(getattr(msg, owners[0].name), {key: value}, f"{prefix}.{owners[0].name}")
                continue
            valid = sorted(set(desc.fields_by_name) | {
                k for f in desc.fields if f.type == FD.TYPE_MESSAGE and not _rep(f)
                for k in f.message_type.fields_by_name})
            raise TypeError(f"{prefix}: unknown parameter {key!r}; valid: {', '.join(valid)}")
        where = f"{prefix}.{key}"
        if _rep(field):
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                value = [value]
            rep = getattr(msg, field.name)
            del rep[:]
            for i, item in enumerate(value):
                if field.type == FD.TYPE_MESSAGE:
                    _fill_sub(rep.add(), item, f"{where}[{i}]")
                elif field.type == FD.TYPE_ENUM:
                    rep.append(_enum_value(field, item, where))
                else:
                    rep.append(_scalar(field, item))
        else:
            _set_value(msg, field, value, where)
    return msg
