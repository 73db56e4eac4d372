"""A service that answers what wakegate told it: its WAKEGATE_* environment, as JSON.

Run as `python environment.py --port PORT`. It waits START_DELAY_MS (its
environment; default 0) before it binds, so a test knows how long one start
takes; then every GET answers 200 with {"WAKEGATE_PREFIX": ..., ...}. Only
the standard library, so that the start delay is nearly all of the start.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy's pooled connections expect

    def do_GET(self) -> None:  # http.server calls it by this name
        told = {k: v for k, v in os.environ.items() if k.startswith("WAKEGATE_")}
        body = json.dumps(told).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    time.sleep(int(os.environ.get("START_DELAY_MS") or 0) / 1000)
    # HOST: the fake kubelet gives each pod a loopback address of its own (tests/kube/).
    server = ThreadingHTTPServer((os.environ.get("HOST") or "127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
