"""Fixtures of the Python client tests: a REAL sinkscope-server with real
sinkscope-worker processes on a loopback Unix socket, a temporary catalog
(the planted fixture written by planted.py, stories260K / aidreams260K and
tinyshakespeare from shared/ when present), and the C++ CLI for cross-checks.

Binary paths come from ctest's environment (SINKSCOPE_SERVER_BIN,
SINKSCOPE_WORKER_BIN, SINKSCOPE_CLIENT_BIN; tests/python/CMakeLists.txt),
defaulting to build/ of this checkout. A missing dependency skips, and fails
under CI (as SINKSCOPE_SKIP_MISSING). When tests skipped and none failed,
pytest exits 77 (ctest SKIP_RETURN_CODE; tests/common/pytest_skip_exit.py,
loaded by ctest with -p).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "common"))

import planted  # noqa: E402
from pytest_skip_exit import NOT_APPLICABLE, in_ci, skip_missing  # noqa: E402,F401


def require(condition, message: str):
    """Skips (developer machine) or fails (CI) when `condition` is false."""
    if not condition:
        skip_missing(message)


def binary(env: str, rel: str) -> str:
    path = os.environ.get(env) or os.path.join(ROOT, "build", rel)
    return path


def shared_dir() -> str:
    for key in ("SINKSCOPE_SHARED_DIR", "SINKSCOPE_DEFAULT_SHARED_DIR"):
        d = os.environ.get(key)
        if d and os.path.isdir(d):
            return os.path.abspath(d)
    d = os.path.join(ROOT, "..", "shared")
    return os.path.abspath(d) if os.path.isdir(d) else ""


def shared_file(rel: str) -> str:
    d = shared_dir()
    p = os.path.join(d, rel) if d else ""
    return p if p and os.path.exists(p) else ""


class Server:
    """A sinkscope-server process listening on unix:DIR/api.sock."""

    def __init__(self, directory: str, catalog: dict, workers: int = 1, extra: dict | None = None):
        self.dir = directory
        self.address = f"unix:{directory}/api.sock"
        self.log_path = os.path.join(directory, "server.log")
        with open(os.path.join(directory, "catalog.json"), "w") as f:
            json.dump(catalog, f, indent=2)
        cfg = {"listen": self.address, "database": f"{directory}/jobs.db",
               "workers": ",".join(["cpu"] * workers), "catalog": f"{directory}/catalog.json",
               "worker_binary": binary("SINKSCOPE_WORKER_BIN", "worker/sinkscope-worker"),
               "runtime_dir": f"{directory}/run", "worker_threads": 1, "sync_full": False,
               "metrics_listen": "", "drain_timeout_s": 2}
        cfg.update(extra or {})
        self.address = cfg["listen"]
        self.config_path = os.path.join(directory, "server.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = None

    def start(self, timeout: float = 90, token: str | None = None, tls_ca: str | None = None):
        import sinkscope
        server_bin = binary("SINKSCOPE_SERVER_BIN", "server/sinkscope-server")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([server_bin, f"--config={self.config_path}"], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        client = sinkscope.connect(self.address, token=token, tls_ca=tls_ca, timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                resp = client.models_response()
                if resp.workers.up >= 1:
                    return self
            except sinkscope.RpcError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not answer: " + self.log_tail())

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _tmpdir() -> str:
    # Short: Unix socket paths are limited to 108 bytes.
    return tempfile.mkdtemp(prefix="sspy-", dir="/tmp")


def demo_catalog() -> dict:
    """deploy/catalog.json's models and corpus with absolute shared/ paths
    (bytelm-demo with its byte-level tokenizer), and one fixture the shipped
    catalog does not have: stories260K, whose own tokenizer is not shipped,
    declares aidreams260K's tok512 compatible (same size, other pieces), so
    that the tests can check the corpus pipeline on it against a reference
    tokenized the same way."""
    models, corpora = [], []
    if shared_file("models/stories260K/stories260K.bin"):
        models.append({"name": "stories260K", "format": "llama2c", "default_dtype": "float32",
                       "path": shared_file("models/stories260K/stories260K.bin")})
        if shared_file("models/aidreams260K/tok512.bin"):
            models[-1]["compatible_tokenizers"] = [shared_file("models/aidreams260K/tok512.bin")]
    if shared_file("models/aidreams260K/aidreams260K.bin") and shared_file("models/aidreams260K/tok512.bin"):
        models.append({"name": "aidreams260K", "format": "llama2c", "default_dtype": "float32",
                       "path": shared_file("models/aidreams260K/aidreams260K.bin"),
                       "tokenizer": shared_file("models/aidreams260K/tok512.bin")})
    if shared_file("models/bytelm-demo/bytelm-demo.bin"):
        models.append({"name": "bytelm-demo", "format": "llama2c", "default_dtype": "float32",
                       "path": shared_file("models/bytelm-demo/bytelm-demo.bin")})
        if shared_file("models/bytelm-demo/tokenizer.json"):
            models[-1]["tokenizer"] = shared_file("models/bytelm-demo/tokenizer.json")
    if shared_file("corpora/tinyshakespeare.txt") and shared_file("models/aidreams260K/tok512.bin"):
        corpora.append({"name": "tinyshakespeare", "path": shared_file("corpora/tinyshakespeare.txt"),
                        "tokenizer": shared_file("models/aidreams260K/tok512.bin")})
    return {"models": models, "corpora": corpora}


@pytest.fixture(scope="session")
def binaries():
    for env, rel in (("SINKSCOPE_SERVER_BIN", "server/sinkscope-server"),
                     ("SINKSCOPE_WORKER_BIN", "worker/sinkscope-worker"),
                     ("SINKSCOPE_CLIENT_BIN", "client/sinkscope")):
        require(os.access(binary(env, rel), os.X_OK), f"{binary(env, rel)} (build it first)")
    return {"client": binary("SINKSCOPE_CLIENT_BIN", "client/sinkscope"),
            "server": binary("SINKSCOPE_SERVER_BIN", "server/sinkscope-server")}


@pytest.fixture(scope="session")
def workdir():
    d = _tmpdir()
    yield d
    if not os.environ.get("SINKSCOPE_KEEP_TEST_DIRS"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def server(binaries, workdir):
    """One server, 2 cpu workers: planted (HF directory) + the demo catalog."""
    pdir = planted.write_planted(os.path.join(workdir, "planted"))
    cat = demo_catalog()
    cat["models"].insert(0, {"name": "planted", "format": "hf", "path": pdir,
                             "default_dtype": "float32"})
    # Two "checkpoints of a run" (the same weights) for profile comparisons
    # over RUN@* (step order: 20 before 100).
    # The planted model's sandwich-norm twin (same weights, output norms of
    # gain 1): a comparison of two checkpoints that differ only in norm
    # placement.
    cat["models"].insert(1, {"name": "planted-sandwich", "format": "hf",
                             "path": planted.write_planted(os.path.join(workdir, "planted-sandwich"),
                                                           norm_placement="sandwich"),
                             "default_dtype": "float32"})
    for step in (100, 20):
        cat["models"].append({"name": f"planted@{step}", "format": "hf", "path": pdir,
                              "default_dtype": "float32"})
    srv = Server(workdir, cat, workers=2)
    try:
        srv.start()
    except RuntimeError as e:
        srv.stop()
        pytest.fail(str(e), pytrace=False)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    import sinkscope
    return sinkscope.connect(server.address, timeout=30)


@pytest.fixture(scope="session")
def has_stories(server):
    return bool(shared_file("models/stories260K/stories260K.bin"))


# The shared/ file each shared model of jobs.SPECS needs.
SHARED_MODELS = {"stories260K": "models/stories260K/stories260K.bin",
                 "aidreams260K": "models/aidreams260K/aidreams260K.bin",
                 "bytelm-demo": "models/bytelm-demo/bytelm-demo.bin"}


def cli_json(binaries, server, *args) -> dict:
    """`sinkscope --server ADDR --json ARGS...` parsed."""
    out = subprocess.run([binaries["client"], "--server", server.address, "--json", "-q", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"sinkscope {' '.join(args)}: rc {out.returncode}: {out.stderr}"
    return json.loads(out.stdout)


# Tests of job types this checkout's proto does not define are not missing
# dependencies: such skips count as passes (tests/common/pytest_skip_exit.py).
NOT_IN_PROTO = NOT_APPLICABLE


@pytest.fixture(scope="session")
def results(client, has_stories):
    """Every applicable job of jobs.SPECS, submitted together and awaited:
    {name: Result}; a job that failed maps to its exception."""
    import sinkscope
    from jobs import SPECS
    types = set(sinkscope.job_types())
    handles, out = {}, {}
    for name, (job_type, needs, submit) in SPECS.items():
        if job_type not in types or (needs and not shared_file(SHARED_MODELS[needs])):
            continue
        try:
            handles[name] = submit(client)
        except sinkscope.SinkscopeError as e:
            out[name] = e
    for name, job in handles.items():
        try:
            out[name] = job.result(timeout=300, progress=False)
        except sinkscope.SinkscopeError as e:
            out[name] = e
    return out


def get_result(results, name):
    """The Result of jobs.SPECS[name]; skips when it did not run (no shared/
    data, or a job type this proto lacks), fails when the job failed."""
    from jobs import SPECS
    if name not in results:
        job_type, needs, _ = SPECS[name]
        import sinkscope
        if job_type not in sinkscope.job_types():
            require(False, f"{NOT_IN_PROTO} {job_type}")
        require(False, f"{name} needs shared/{SHARED_MODELS.get(needs, needs)} (and tinyshakespeare)")
    r = results[name]
    if isinstance(r, Exception):
        pytest.fail(f"job {name} failed: {r}", pytrace=False)
    return r
