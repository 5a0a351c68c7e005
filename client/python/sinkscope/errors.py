"""Exceptions of the sinkscope client.

Every error the server answers with becomes an :class:`RpcError` carrying the
gRPC status code (``err.code``, a :class:`grpc.StatusCode`) and the server's
message (``err.message``). A job that ends FAILED raises :class:`JobFailed`
(the same two fields, from the job's ``Failed`` event); one that ends
CANCELLED raises :class:`JobCancelled`.
"""
from __future__ import annotations

import grpc

__all__ = ["SinkscopeError", "RpcError", "JobFailed", "JobCancelled", "code_from_number"]

_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def code_from_number(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (e.g. 3 -> INVALID_ARGUMENT)."""
    return _BY_NUMBER.get(int(number), grpc.StatusCode.UNKNOWN)


class SinkscopeError(Exception):
    """Base class of every error raised by the sinkscope client."""


class RpcError(SinkscopeError):
    """A call answered with a non-OK gRPC status.

    Attributes:
        code: grpc.StatusCode, e.g. grpc.StatusCode.INVALID_ARGUMENT.
        message: the server's message (names the offending input).
        method: the RPC, e.g. "SubmitJob" ("" for job failures).
    """

    def __init__(self, code: grpc.StatusCode, message: str, method: str = ""):
        self.code = code
        self.message = message
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {message}")

    @property
    def code_name(self) -> str:
        """The code's name, e.g. "NOT_FOUND"."""
        return self.code.name

    @classmethod
    def from_grpc(cls, err: grpc.RpcError, method: str = "") -> "RpcError":
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", method)


class JobFailed(RpcError):
    """The job ended FAILED; code and message are the job's Failed event's."""

    def __init__(self, job_id: str, code: grpc.StatusCode, message: str):
        self.job_id = job_id
        super().__init__(code, message)
        self.args = (f"job {job_id} failed: {code.name}: {message}",)

    def __str__(self) -> str:
        return self.args[0]


class JobCancelled(SinkscopeError):
    """The job ended CANCELLED (``reason`` says by whom)."""

    def __init__(self, job_id: str, reason: str):
        self.job_id = job_id
        self.reason = reason
        self.code = grpc.StatusCode.CANCELLED
        self.message = reason
        super().__init__(f"job {job_id} cancelled: {reason}")
