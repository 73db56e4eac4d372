"""The fast backend every warm-path target reaches: a fixed 13-byte body, keep-alive.

nginx with one worker when it is installed (so the backend is never the
bottleneck), else a small asyncio server that answers the same bytes. Run as
a service command, it takes the port wakegate gives it:

    python -m bench.backend --port {port} --dir DIR [--start-delay 2s] [--python]

nginx replaces this process (exec), so wakegate's SIGTERM reaches nginx itself.
`--start-delay` sleeps before listening: a slow starter, so requests to a
sleeping instance are really held (the hold scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from bench.tools import find_tool

BODY = b"Hello world!\n"  # 13 bytes
# Enough for every connection a proxy may open to it during the hold scenario.
WORKER_CONNECTIONS = 30000


def nginx_head(prefix: Path, connections: int) -> str:
    """The start of an nginx config up to inside `http {`: 1 worker, run as a user, every
    file it writes in `prefix`, no access log, long keep-alive to the clients."""
    return f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {connections * 2};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
"""


def nginx_conf(port: int, prefix: Path) -> Path:
    """An nginx config serving BODY on 127.0.0.1:port; pid, logs and temp files in `prefix`."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "backend.conf"
    conf.write_text(nginx_head(prefix, WORKER_CONNECTIONS) + f"""
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{BODY.decode().strip()}\\n";
        }}
    }}
}}
""")
    return conf


def nginx_argv(nginx: str, conf: Path, prefix: Path) -> list[str]:
    # -e: nginx's startup errors go to our file, not to /var/log (not writable as a user).
    return [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]


class _Answer(asyncio.Protocol):
    """Answers every request head with BODY; GET without a body is all the bench sends."""

    _response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                 + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")
        if heads:
            self.buffer = self.buffer.rsplit(b"\r\n\r\n", 1)[1]
            self.transport.write(self._response * heads)


async def serve_python(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, help="nginx's prefix (pid, logs, config)")
    parser.add_argument("--start-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--python", action="store_true", help="the asyncio server, not nginx")
    args = parser.parse_args()
    if args.start_delay:
        time.sleep(args.start_delay)
    nginx = None if args.python else find_tool("nginx")
    if nginx is not None:
        prefix = (args.dir or Path(f"/tmp/wakegate-bench-backend-{args.port}")).resolve()
        conf = nginx_conf(args.port, prefix)
        os.execv(nginx, nginx_argv(nginx, conf, prefix))
    import uvloop

    uvloop.run(serve_python(args.port))


if __name__ == "__main__":
    main()
