"""sinkscope: Python client of the sinkscope service (massive activations and
attention sinks, Sun et al. 2026, "The Spike, the Sparse and the Sink").

    import sinkscope
    client = sinkscope.connect("127.0.0.1:50051", token=None, tls_ca=None)
    result = client.sinks("stories260K", [[1, 461, 401, 378, 455]]).result()
    result.frame("heads")                     # pandas DataFrame, one row per (layer, head)
    fig = sinkscope.plot.sink_ratio(result)   # matplotlib Figure
    sinkscope.plot.save(fig, "sinks")         # sinks.png, sinks.svg

Command line: ``python3 -m sinkscope report JOB_ID -o report.html``.
"""
from .client import Client, Job, connect
from .errors import JobCancelled, JobFailed, RpcError, SinkscopeError
from .proto import job_types, pb
from .results import Result

__version__ = "0.1.0"

__all__ = ["connect", "Client", "Job", "Result", "RpcError", "JobFailed", "JobCancelled",
           "SinkscopeError", "job_types", "pb", "plot", "frames", "report"]


def __getattr__(name):
    # matplotlib / report modules load on first use.
    if name in ("plot", "frames", "report"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
