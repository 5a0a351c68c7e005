"""Connection to a sinkscope server and job handles.

    import sinkscope
    client = sinkscope.connect("127.0.0.1:50051")            # or "unix:/path/api.sock"
    job = client.scan("stories260K", [[1, 461, 401, 378]])    # returns at once (QUEUED)
    for record in job:                                        # streamed records
        print(record.block, record.max_abs)
    result = job.result()                                     # waits (progress bar)
    result.frame("blocks")                                    # pandas DataFrame

Job types are discovered from the proto (the fields of ``JobRequest.params``):
``client.submit("sinks", model, sequences, window=64)`` works for every type the
generated stubs know, and ``client.<type>(...)`` too; the named methods below
only add documentation and keyword names.
"""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import grpc
from google.protobuf import json_format

from . import proto as P
from .errors import JobCancelled, JobFailed, RpcError, code_from_number
from .proto import pb, pb_grpc

__all__ = ["connect", "Client", "Job", "TERMINAL_STATES"]

TERMINAL_STATES = frozenset({pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
_MAX_MESSAGE = 64 << 20


def connect(address: Optional[str] = None, token: Optional[str] = None,
            tls_ca: Optional[str] = None, user: Optional[str] = None,
            timeout: Optional[float] = 30.0) -> "Client":
    """Connects to a sinkscope server.

    Args:
        address: "host:port" or "unix:/path/to/api.sock"; default $SINKSCOPE_SERVER,
            else "127.0.0.1:50051" (as the CLI).
        token: API token (``sinkscope-server token create``), sent as
            "authorization: Bearer <token>"; default $SINKSCOPE_TOKEN.
        tls_ca: PEM file of the CA that signed the server's certificate: use TLS;
            default $SINKSCOPE_TLS_CA.
        user: caller name ("x-sinkscope-user") for servers with auth "none";
            default $SINKSCOPE_USER.
        timeout: deadline of each unary call, seconds (None = none).
    Returns a :class:`Client`. Nothing is sent until the first call.
    """
    return Client(address, token=token, tls_ca=tls_ca, user=user, timeout=timeout)


class Client:
    """A connection to one server (see :func:`connect`)."""

    def __init__(self, address: Optional[str] = None, token: Optional[str] = None,
                 tls_ca: Optional[str] = None, user: Optional[str] = None,
                 timeout: Optional[float] = 30.0):
        self.address = address or os.environ.get("SINKSCOPE_SERVER") or "127.0.0.1:50051"
        token = token if token is not None else os.environ.get("SINKSCOPE_TOKEN") or None
        tls_ca = tls_ca if tls_ca is not None else os.environ.get("SINKSCOPE_TLS_CA") or None
        user = user if user is not None else os.environ.get("SINKSCOPE_USER") or None
        self.timeout = timeout
        options = [("grpc.max_send_message_length", _MAX_MESSAGE),
                   ("grpc.max_receive_message_length", _MAX_MESSAGE)]
        if tls_ca:
            with open(tls_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            self._channel = grpc.secure_channel(self.address, creds, options)
        else:
            self._channel = grpc.insecure_channel(self.address, options)
        self._metadata = []
        if token:
            self._metadata.append(("authorization", f"Bearer {token}"))
        if user:
            self._metadata.append(("x-sinkscope-user", user))
        self.stub = pb_grpc.AnalysisServiceStub(self._channel)

    # -- plumbing ---------------------------------------------------------
    def _call(self, method: str, request, timeout: Any = "default"):
        t = self.timeout if timeout == "default" else timeout
        try:
            return getattr(self.stub, method)(request, timeout=t, metadata=self._metadata)
        except grpc.RpcError as e:
            raise RpcError.from_grpc(e, method) from None

    def _watch(self, job_id: str, after_seq: int = 0, timeout: Optional[float] = None):
        try:
            call = self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_seq=after_seq),
                                      timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise RpcError.from_grpc(e, "WatchJob") from None
        return call

    def close(self):
        """Closes the channel."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"sinkscope.Client({self.address!r})"

    # -- catalog and jobs -------------------------------------------------
    def models_response(self) -> "pb.ListModelsResponse":
        """The raw ListModels answer (models, corpora, worker health)."""
        return self._call("ListModels", pb.ListModelsRequest())

    def models(self):
        """The catalog's models as a DataFrame, one row per model (ModelInfo fields)."""
        from .frames import messages_frame
        return messages_frame(self.models_response().models, enums={"default_dtype": "DTYPE_"})

    def corpora(self):
        """The catalog's corpora as a DataFrame (CorpusInfo fields)."""
        from .frames import messages_frame
        return messages_frame(self.models_response().corpora)

    def workers(self) -> Dict[str, Any]:
        """The worker pool's health (WorkerHealth fields)."""
        return json_format.MessageToDict(self.models_response().workers,
                                         preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def jobs(self, state: Any = None, owner: str = "", limit: int = 50):
        """The caller's jobs (all jobs for admins), newest first, as a DataFrame:
        id, owner, type, state, model, attempts, create_time, start_time, end_time,
        error_code, error_message. `state`: a name ("RUNNING") or a list of names."""
        from .frames import jobs_frame
        states = [] if state is None else [state] if isinstance(state, (str, int)) else list(state)
        req = pb.ListJobsRequest(owner=owner, page_size=min(int(limit), 1000))
        for s in states:
            req.states.append(s if isinstance(s, int) else pb.JobState.Value(
                s if str(s).startswith("JOB_STATE_") else "JOB_STATE_" + str(s).upper()))
        out: List[pb.Job] = []
        while True:
            resp = self._call("ListJobs", req)
            out.extend(resp.jobs)
            if not resp.next_page_token or len(out) >= limit:
                break
            req.page_token = resp.next_page_token
        return jobs_frame(out[:limit])

    def get(self, job_id: str) -> "Job":
        """A handle of an existing job (NOT_FOUND raises RpcError)."""
        return Job(self, self._call("GetJob", pb.GetJobRequest(job_id=job_id)))

    def job_types(self) -> List[str]:
        """The job types this client's proto defines (submit() accepts each)."""
        return P.job_types()

    # -- submission -------------------------------------------------------
    def submit(self, job_type: str, model: str, sequences: Any = None, *,
               add_bos: Optional[bool] = None, dtype: Any = None, client_request_id: str = "",
               priority: int = 0, **params) -> "Job":
        """Submits a job of any type the proto defines.

        Args:
            job_type: a field name of JobRequest.params ("scan", "sinks", ...;
                see job_types()).
            model: catalog model name (see models()).
            sequences: one text (str), one id list, or a list of them.
            add_bos: prepend BOS to text sequences (server default true).
            dtype: "float32", "bfloat16", "float16" (default: the catalog's).
            client_request_id: idempotency key; priority: -100..100.
            **params: fields of the job type's parameters message, by proto field
                name (see sinkscope.proto.fill_message for the accepted forms);
                ``params=`` may also pass a ready message or dict.
        Returns a :class:`Job` (QUEUED). Raises RpcError (INVALID_ARGUMENT,
        NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE ...) with the server's message.
        """
        msg_cls = P.params_message(job_type)
        given = params.pop("params", None)
        msg = msg_cls()
        if isinstance(given, msg_cls):
            msg.CopyFrom(given)
        elif given is not None:
            P.fill_message(msg, given, job_type)
        P.fill_message(msg, params, job_type)
        req = pb.JobRequest(model=model, dtype=P.dtype_value(dtype))
        for s in _as_sequences(sequences):
            req.sequences.append(P.make_sequence(s))
        if add_bos is not None:
            req.add_bos = bool(add_bos)
        getattr(req, job_type).CopyFrom(msg)
        job = self._call("SubmitJob", pb.SubmitJobRequest(
            request=req, client_request_id=client_request_id, priority=int(priority)))
        return Job(self, job)

    def __getattr__(self, name: str):
        # Any job type of the proto without a named wrapper: client.<type>(model, ...).
        if not name.startswith("_") and name in P.job_types():
            def submit(model: str, sequences: Any = None, **kw):
                return self.submit(name, model, sequences, **kw)
            submit.__name__ = name
            submit.__doc__ = f"Submits a {name!r} job (parameters: {P.params_message(name).__name__})."
            return submit
        raise AttributeError(name)

    # Named wrappers (documentation and keyword names; everything goes through submit()).
    def scan(self, model: str, sequences: Any, *, top_k: Optional[int] = None,
             abs_threshold: Optional[float] = None, rel_threshold: Optional[float] = None,
             step_fraction: Optional[float] = None, **kw) -> "Job":
        """Activation scan (paper §3.1, Fig. 1 & 7): one ScanBlock per block, then a ScanSummary."""
        return self.submit("scan", model, sequences, top_k=top_k, abs_threshold=abs_threshold,
                           rel_threshold=rel_threshold, step_fraction=step_fraction, **kw)

    def sinks(self, model: str, sequences: Any, *, window: Optional[int] = None,
              windowed: Optional[bool] = None, epsilon: Optional[float] = None,
              layers: Optional[Sequence[int]] = None, **kw) -> "Job":
        """Attention-sink scan (eq. 27-28): one SinkLayer per layer, then a SinkSummary."""
        return self.submit("sinks", model, sequences, window=window, windowed=windowed,
                           epsilon=epsilon, layers=layers, **kw)

    def first_token_probe(self, model: str, *, token_ids: Optional[Sequence[int]] = None,
                          range_begin: Optional[int] = None, range_end: Optional[int] = None,
                          prefix: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                          **kw) -> "Job":
        """First-token probe (Table 2, eq. 22): one FirstTokenProbeResult."""
        return self.submit("first_token_probe", model, None, token_ids=token_ids,
                           range_begin=range_begin, range_end=range_end, prefix=prefix,
                           batch_size=batch_size, **kw)

    def spike_similarity(self, model: str, sequences: Any, *,
                         step_up_block: Optional[int] = None, **kw) -> "Job":
        """Spike similarity (Fig. 5, eq. 25): one SpikeSimilaritySummary (three cosine matrices)."""
        return self.submit("spike_similarity", model, sequences, step_up_block=step_up_block, **kw)

    def self_attention_profile(self, model: str, sequences: Any, *,
                               layers: Optional[Sequence[int]] = None,
                               delimiter_ids: Optional[Sequence[int]] = None,
                               delimiters: Optional[Sequence[str]] = None, **kw) -> "Job":
        """Self-attention profile (§3.1.3): one SelfAttentionLayer per layer, then a summary."""
        return self.submit("self_attention_profile", model, sequences, layers=layers,
                           delimiter_ids=delimiter_ids, delimiters=delimiters, **kw)

    def perplexity(self, model: str, sequences: Any = None, *, corpus: Optional[str] = None,
                   chunk_length: Optional[int] = None, token_budget: Optional[int] = None,
                   **kw) -> "Job":
        """Perplexity of a catalog corpus or of `sequences` (concatenated)."""
        return self.submit("perplexity", model, sequences, corpus=corpus,
                           chunk_length=chunk_length, token_budget=token_budget, **kw)

    def constant_substitution(self, model: str, sequences: Any = None, *,
                              corpus: Optional[str] = None, chunk_length: Optional[int] = None,
                              token_budget: Optional[int] = None,
                              interventions: Optional[List[Any]] = None, **kw) -> "Job":
        """Constant substitution (finding 6). `interventions`: list of
        {"substitution": {...}} / {"ablation": {...}} dicts (InterventionSpec);
        empty = one "mean" substitution after the detected step-up block."""
        return self.submit("constant_substitution", model, sequences, corpus=corpus,
                           chunk_length=chunk_length, token_budget=token_budget,
                           interventions=interventions, **kw)

    def sink_ablation(self, model: str, sequences: Any = None, *, corpus: Optional[str] = None,
                      chunk_length: Optional[int] = None, token_budget: Optional[int] = None,
                      interventions: Optional[List[Any]] = None, **kw) -> "Job":
        """Sink ablation (finding 6); empty `interventions` = one "mask" ablation of the
        detected sink heads. E.g. interventions=[{"ablation": {"method": "mask",
        "heads": [(2, 0), (3, 1)]}}]."""
        return self.submit("sink_ablation", model, sequences, corpus=corpus,
                           chunk_length=chunk_length, token_budget=token_budget,
                           interventions=interventions, **kw)

    def profile(self, model: str, sequences: Any = None, *, corpus: Optional[str] = None,
                chunk_length: Optional[int] = None, token_budget: Optional[int] = None,
                sink_window: Optional[int] = None, epsilon: Optional[float] = None,
                sink_layers: Optional[Sequence[int]] = None,
                abs_threshold: Optional[float] = None, rel_threshold: Optional[float] = None,
                compare: Optional[Sequence[str]] = None, **kw) -> "Job":
        """The paper's table row (Tables 3-8) of `model` from one pass over a
        corpus (or `sequences`, concatenated): perplexity, sink ratio (eq. 28,
        each chunk's first `sink_window` tokens), spike (per chunk max |h|,
        mean over chunks), step-up / step-down blocks, spike channels. `compare`:
        more catalog models, one row each, in order, on the same corpus and
        parameters (a model that fails gives a failed row). Records: one
        ProfileRow per model as it is done, then a ProfileSummary;
        ``result.frame("rows")`` is the table, ``sinkscope.plot.profile_bars``
        / ``profile_curves`` draw it."""
        return self.submit("profile", model, sequences, corpus=corpus, chunk_length=chunk_length,
                           token_budget=token_budget, sink_window=sink_window, epsilon=epsilon,
                           sink_layers=sink_layers, abs_threshold=abs_threshold,
                           rel_threshold=rel_threshold, compare_models=compare, **kw)

    def train(self, config: Any = None, *, corpus: str, name: str, model: str = "",
              tokenizer: str = "", log_every: Optional[int] = None, recipe: Optional[Dict[str, Any]] = None,
              profile_every: Optional[int] = None, profile: Optional[Dict[str, Any]] = None,
              **recipe_fields) -> "Job":
        """Trains a decoder on catalog corpus `corpus` as a job (issue 26); its
        checkpoints become your models ``NAME@STEP``. The corpus is read
        through catalog model `tokenizer`'s tokenizer (default: the starting
        `model`'s, else bytes: token id = byte).

        Args:
            config: the architecture: a config.json dict (or its JSON text), or a
                run dict ``{"model": {...}, "recipe": {...}}`` as
                examples/train/bytelm-tiny.json (or the path of such a file).
                Leave it out with ``model=`` (a catalog model to start from).
            corpus: catalog corpus; name: the run name.
            recipe / **recipe_fields: TrainRecipe fields (steps, batch_size,
                seq_len, seed, lr, warmup_steps, eval_every, checkpoint_every, ...),
                the keywords over the dict's.
            log_every: a TrainStep record every N updates (default steps / 100).
            profile_every: every N-th checkpoint profiles itself on the held-out
                split and streams its ProfileRow (``result.frame("profile")``);
                profile: its ProfileRequest fields (sink_window, token_budget, ...).
        Records: TrainStep per logged update (``result.frame("curve")``: the loss
        curve as a DataFrame; replayed rows come from a checkpoint after a
        crash), then a TrainSummary (``result.frame("summary")``).
        """
        if isinstance(config, str) and not config.lstrip().startswith("{"):
            with open(config, encoding="utf-8") as f:
                config = f.read()
        if isinstance(config, (str, bytes)):
            config = json.loads(config)
        merged: Dict[str, Any] = {}
        if isinstance(config, dict) and ("model" in config or "recipe" in config):
            unknown = set(config) - {"model", "recipe"}
            if unknown:
                raise TypeError(f"run config: unknown field(s) {sorted(unknown)} (known: model, recipe)")
            merged.update(config.get("recipe") or {})
            config = config.get("model")
        merged.update(recipe or {})
        merged.update({k: v for k, v in recipe_fields.items() if v is not None})
        dtype = merged.pop("dtype", None)
        params = {"config_json": json.dumps(config) if config is not None else "",
                  "corpus": corpus, "run_name": name, "log_every": log_every, "tokenizer": tokenizer,
                  "recipe": merged, "profile_every": profile_every, "profile": profile}
        return self.submit("train", model, None, dtype=dtype, **params)


def _as_sequences(sequences: Any) -> List[Any]:
    if sequences is None:
        return []
    if isinstance(sequences, (str, bytes, pb.Sequence)):
        return [sequences]
    items = list(sequences)
    if items and all(P._is_int_like(i) for i in items):
        return [items]  # one id list
    return items


class Job:
    """A submitted job.

    Iterating yields its result records as they stream (the message inside each
    ResultRecord, e.g. ScanBlock; records of an attempt lost to a worker crash
    are announced by a warning and superseded in result()), and raises
    JobFailed / JobCancelled when the job ends that way. ``wait()`` blocks
    until it ends (progress bar), ``result()`` returns a :class:`sinkscope.Result`,
    ``cancel()`` asks the server to stop it.
    """

    def __init__(self, client: Client, info: "pb.Job"):
        self.client = client
        self.info = info
        self.id = info.id
        self._lock = threading.Lock()

    def __repr__(self):
        return f"<sinkscope.Job {self.id} {self.type} {self.state}>"

    @property
    def type(self) -> str:
        """Job type name (the params field), e.g. "scan"."""
        return P.job_type_of(self.info)

    @property
    def state(self) -> str:
        """State name as last seen: QUEUED, MODEL_LOADING, RUNNING, COMPLETED, FAILED, CANCELLED."""
        return P.state_name(self.info.state)

    @property
    def done(self) -> bool:
        return self.info.state in TERMINAL_STATES

    def refresh(self) -> "Job":
        """Re-reads the job's state from the server."""
        self.info = self.client._call("GetJob", pb.GetJobRequest(job_id=self.id))
        return self

    def events(self, after_seq: int = 0, timeout: Optional[float] = None) -> Iterator["pb.JobEvent"]:
        """Every JobEvent with seq > after_seq, then live ones, until the terminal event."""
        call = self.client._watch(self.id, after_seq, timeout)
        try:
            for event in call:
                yield event
        except grpc.RpcError as e:
            raise RpcError.from_grpc(e, "WatchJob") from None
        finally:
            call.cancel()

    def __iter__(self) -> Iterator[Any]:
        for event in self.events():
            kind = event.WhichOneof("event")
            if kind == "result":
                yield P.record_body(event.result)
            elif kind == "retrying":
                warnings.warn(f"job {self.id}: attempt {event.retrying.failed_attempt} lost "
                              f"({event.retrying.reason}); its records are superseded")
            elif kind in ("completed", "failed", "cancelled"):
                self._finish(event)
                if kind == "cancelled":
                    raise JobCancelled(self.id, event.cancelled.reason)
                self._raise_if_unsuccessful()
                return

    def _finish(self, event: "pb.JobEvent"):
        kind = event.WhichOneof("event")
        state = {"completed": pb.JOB_STATE_COMPLETED, "failed": pb.JOB_STATE_FAILED,
                 "cancelled": pb.JOB_STATE_CANCELLED}[kind]
        self.info.state = state
        if kind == "failed":
            self.info.error.code = event.failed.code
            self.info.error.message = event.failed.message

    def _raise_if_unsuccessful(self):
        if self.info.state == pb.JOB_STATE_FAILED:
            raise JobFailed(self.id, code_from_number(self.info.error.code), self.info.error.message)
        if self.info.state == pb.JOB_STATE_CANCELLED:
            reason = "cancelled"
            try:
                for e in self.events():
                    if e.WhichOneof("event") == "cancelled":
                        reason = e.cancelled.reason
            except RpcError:
                pass
            raise JobCancelled(self.id, reason)

    def wait(self, timeout: Optional[float] = None, progress: Optional[bool] = None,
             raise_on_failure: bool = True) -> "Job":
        """Blocks until the job ends; shows a tqdm progress bar (tqdm.auto:
        a widget in notebooks) unless progress=False (default: when stderr or a
        notebook can show it). Raises JobFailed / JobCancelled unless
        raise_on_failure=False; TimeoutError after `timeout` seconds."""
        if not self.done:
            deadline = None if timeout is None else time.monotonic() + timeout
            bar = _Progress(self, progress)
            try:
                for event in self.events(timeout=timeout):
                    bar.update(event)
                    kind = event.WhichOneof("event")
                    if kind in ("completed", "failed", "cancelled"):
                        self._finish(event)
                        break
            except RpcError as e:
                if e.code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s") from None
                raise
            finally:
                bar.close()
            if not self.done:  # stream ended without a terminal event
                self.refresh()
        if raise_on_failure:
            self._raise_if_unsuccessful()
        return self

    def cancel(self) -> "Job":
        """Cancels the job (FAILED_PRECONDITION raises RpcError when it already finished)."""
        self.info = self.client._call("CancelJob", pb.CancelJobRequest(job_id=self.id))
        return self

    def result(self, timeout: Optional[float] = None, progress: Optional[bool] = None):
        """Waits, then returns the records of the completing attempt as a :class:`sinkscope.Result`."""
        from .results import Result
        self.wait(timeout=timeout, progress=progress)
        job = self.client._call("GetJob", pb.GetJobRequest(job_id=self.id, include_results=True,
                                                            page_results=True))
        records = list(job.results)
        # Results larger than one answer (the server's max_get_response_bytes)
        # come in pages; next_results_offset is 0 after the last one.
        while job.next_results_offset > 0:
            job = self.client._call("GetJob", pb.GetJobRequest(
                job_id=self.id, include_results=True, page_results=True,
                results_offset=job.next_results_offset))
            records.extend(job.results)
        del job.results[:]
        job.results.extend(records)
        self.info = job
        return Result(job)


class _Progress:
    """tqdm bar over a job's Running units (state shown in the description)."""

    def __init__(self, job: Job, enabled: Optional[bool]):
        self.bar = None
        if enabled is False:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            return
        self.bar = tqdm(total=None, desc=f"{job.id} {job.state}", unit="unit", leave=True,
                        disable=None if enabled is None else False)
        self.job = job

    def update(self, event: "pb.JobEvent"):
        if self.bar is None:
            return
        kind = event.WhichOneof("event")
        if kind == "queued":
            self.bar.set_description(f"{self.job.id} QUEUED #{event.queued.position}")
        elif kind == "model_loading":
            m = event.model_loading
            self.bar.set_description(f"{self.job.id} MODEL_LOADING {m.model} ({m.phase}, {m.device})")
        elif kind == "running":
            r = event.running
            if r.units_total and self.bar.total != r.units_total:
                self.bar.total = r.units_total
            self.bar.set_description(f"{self.job.id} RUNNING")
            self.bar.n = r.units_done
            self.bar.refresh()
        elif kind == "retrying":
            self.bar.set_description(f"{self.job.id} RETRYING")
        elif kind in ("completed", "failed", "cancelled"):
            self.bar.set_description(f"{self.job.id} {kind.upper()}")
            if kind == "completed" and self.bar.total:
                self.bar.n = self.bar.total
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
