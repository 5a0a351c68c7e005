"""Build hook: generates the gRPC stubs of proto/sinkscope/v1/*.proto
into sinkscope/_proto/ (grpcio-tools) before the package is built.

The proto package is `sinkscope.v1`, which would clash with this package's
name, so the generated modules are placed in `sinkscope._proto` and their
`from sinkscope.v1 import ...` lines rewritten. The proto directory is
$SINKSCOPE_PROTO_DIR or ../../proto (the repository's, for `pip install
./client/python`).
"""
import os
import re
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

HERE = os.path.dirname(os.path.abspath(__file__))


def proto_dir():
    d = os.environ.get("SINKSCOPE_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
    d = os.path.abspath(d)
    if not os.path.isfile(os.path.join(d, "sinkscope", "v1", "analysis.proto")):
        sys.exit(f"sinkscope: sinkscope/v1/analysis.proto not found under {d}; build from the repository "
                 "(pip install ./client/python) or set SINKSCOPE_PROTO_DIR")
    return d


def generate(out_pkg):
    """Writes X_pb2.py, X_pb2.pyi and X_pb2_grpc.py of every proto/sinkscope/v1/X.proto
    (analysis.proto and the files it imports) into out_pkg."""
    import tempfile
    from grpc_tools import protoc
    import grpc_tools

    src = proto_dir()
    protos = sorted(f"sinkscope/v1/{n}" for n in os.listdir(os.path.join(src, "sinkscope", "v1"))
                    if n.endswith(".proto"))
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out_pkg, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{src}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"] + protos
        if protoc.main(args) != 0:
            sys.exit("sinkscope: grpc_tools.protoc failed on " + " ".join(protos))
        gen = os.path.join(tmp, "sinkscope", "v1")
        for name in sorted(os.listdir(gen)):
            with open(os.path.join(gen, name), encoding="utf-8") as f:
                text = f.read()
            text = re.sub(r"^from sinkscope\.v1 import ", "from sinkscope._proto import ", text,
                          flags=re.M)
            text = re.sub(r"^import sinkscope\.v1\.(\w+)", r"import sinkscope._proto.\1", text,
                          flags=re.M)
            with open(os.path.join(out_pkg, name), "w", encoding="utf-8") as f:
                f.write(text)
    init = os.path.join(out_pkg, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w", encoding="utf-8") as f:
            f.write('"""gRPC stubs generated from proto/sinkscope/v1 (never committed)."""\n')


class BuildPy(build_py):
    def finalize_options(self):
        super().finalize_options()
        generate(os.path.join(HERE, "sinkscope", "_proto"))
        if "sinkscope._proto" not in self.packages:
            self.packages = list(self.packages) + ["sinkscope._proto"]


class Develop(develop):
    def run(self):
        generate(os.path.join(HERE, "sinkscope", "_proto"))
        super().run()


setup(cmdclass={"build_py": BuildPy, "develop": Develop})
