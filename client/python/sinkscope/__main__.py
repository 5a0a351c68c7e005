"""python3 -m sinkscope: command-line entry points of the Python client.

    python3 -m sinkscope report JOB_ID -o report.html   # one self-contained HTML page
    python3 -m sinkscope figures JOB_ID -o DIR          # every figure as PNG and SVG
    python3 -m sinkscope tables JOB_ID -o DIR           # every table as CSV

Server, token and CA come from --server/--token/--tls-ca or, as for the C++
client, $SINKSCOPE_SERVER, $SINKSCOPE_TOKEN, $SINKSCOPE_TLS_CA.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m sinkscope", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=None, help="host:port or unix:/path (default $SINKSCOPE_SERVER "
                   "or 127.0.0.1:50051)")
    p.add_argument("--token", default=None, help="API token (default $SINKSCOPE_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="PEM CA file: use TLS (default $SINKSCOPE_TLS_CA)")
    p.add_argument("--user", default=None, help="caller name for auth \"none\" servers")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="write one self-contained HTML page of a job")
    r.add_argument("job_id")
    r.add_argument("-o", "--output", default=None, help="output file (default JOB_ID.html)")
    r.add_argument("--max-rows", type=int, default=60, help="rows shown per table")
    f = sub.add_parser("figures", help="write every figure of a job as PNG and SVG")
    f.add_argument("job_id")
    f.add_argument("-o", "--output", default=".", help="output directory")
    t = sub.add_parser("tables", help="write every table of a job as CSV")
    t.add_argument("job_id")
    t.add_argument("-o", "--output", default=".", help="output directory")
    args = p.parse_args(argv)

    from . import connect
    from .errors import SinkscopeError
    try:
        client = connect(args.server, token=args.token, tls_ca=args.tls_ca, user=args.user)
        job = client.get(args.job_id)
        result = job.result(progress=sys.stderr.isatty())
        if args.command == "report":
            from .report import write
            out = args.output or f"{args.job_id}.html"
            write(result, out, max_rows=args.max_rows)
            print(out)
        elif args.command == "figures":
            from .plot import figures, save
            for name, fig in figures(result).items():
                for path in save(fig, os.path.join(args.output, f"{args.job_id}-{name}")):
                    print(path)
        else:
            os.makedirs(args.output, exist_ok=True)
            for name, df in result.frames().items():
                path = os.path.join(args.output, f"{args.job_id}-{name}.csv")
                df.to_csv(path, index=False)
                print(path)
    except SinkscopeError as e:
        print(f"sinkscope: {e}", file=sys.stderr)
        code = getattr(e, "code", None)
        return 1 if code is None else max(1, min(int(code.value[0]), 125))
    return 0


if __name__ == "__main__":
    sys.exit(main())
