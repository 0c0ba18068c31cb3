"""Serve the `timetuning` flow: a Prefect server of its own and the flow as a deployment to run from the UI.

    timetuning serve [--port 4200] [--host 127.0.0.1] [--repo .]
    # then open http://127.0.0.1:4200 -> Deployments -> timetuning -> Run -> Custom run

The server binds to --host (loopback by default), its UI calls the API at --host:--port, and it lives exactly as
long as this command: Ctrl-C stops both, and a killed `serve` (even SIGKILL) takes its server with it. A port
already taken is an error, never a silent attach. With --api-url the flow is served against an existing server.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.server import start_server, stop_server, url_host, wait_healthy


def main(argv: list[str] | None = None) -> int:
    """`timetuning serve`: start the server (unless --api-url), serve the flow until Ctrl-C, stop the server."""
    ap = argparse.ArgumentParser(prog="timetuning serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=4200)
    ap.add_argument("--host", default="127.0.0.1", help="address the server binds to (default: loopback only)")
    ap.add_argument("--repo", default=".", help="the pipeline's repository root (default: .)")
    ap.add_argument("--api-url", default=None, help="serve against this Prefect API instead of starting a server")
    args = ap.parse_args(argv)
    repo = Path(args.repo).resolve()
    if not (repo / "params.yaml").is_file():
        print(f"error: {repo} has no params.yaml: pass --repo with the pipeline's checkout", file=sys.stderr)
        return 2
    proc = None
    api_url = args.api_url or f"http://{url_host(args.host)}:{args.port}/api"
    if args.api_url is None:
        try:
            proc = start_server(args.port, host=args.host)
        except RuntimeError as err:  # the port is taken: say so, never attach to whatever listens there
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        if proc is not None:
            wait_healthy(api_url, timeout=180, proc=proc)
            print(f"Prefect UI: http://{url_host(args.host)}:{args.port}", flush=True)
        os.environ.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
        from prefect import serve

        from pipeline.deploy import build_deployment

        serve(build_deployment(repo / "params.yaml", str(repo)))
    finally:
        if proc is not None:
            stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
