"""Starting what the warm path is measured through: the backend, nginx, HAProxy, wakegate.

Each start function registers its process on an ExitStack, so that every
process is stopped by its pid when the scenario ends, however it ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import backend
from bench.tools import (
    REPO,
    Skip,
    find_tool,
    free_port,
    need_tool,
    spawn,
    stop,
    wait_http,
    wakegate,
)

HOST = "be.staging.localhost"  # wakegate routes by it; the others ignore it
MAX_CONNECTIONS = 30000
# HAProxy refuses to start unless it can raise its open-file limit to about
# twice maxconn; this fits a default hard limit of 20,000 and is far above wrk's 64.
HAPROXY_MAXCONN = 8000


@dataclass
class Target:
    name: str
    port: int
    pid: int
    note: str = ""


def _stopped(stack: contextlib.ExitStack, proc: subprocess.Popen[Any]) -> None:
    stack.callback(stop, proc)


def start_backend(stack: contextlib.ExitStack, workdir: Path) -> Target:
    """The backend the direct, nginx and HAProxy targets reach."""
    port = free_port()
    proc = spawn([sys.executable, "-m", "bench.backend", "--port", str(port),
                  "--dir", str(workdir / "backend")], workdir / "backend.log")
    _stopped(stack, proc)
    wait_http(port, proc=proc, log=workdir / "backend.log")
    kind = "nginx, 1 worker" if find_tool("nginx") else "asyncio (nginx is not installed)"
    return Target("direct", port, proc.pid, f"{kind}, {len(backend.BODY)}-byte body")


def start_nginx_proxy(stack: contextlib.ExitStack, workdir: Path, upstream: int) -> Target:
    """nginx as a reverse proxy: 1 worker, HTTP/1.1 keep-alive to the upstream."""
    nginx = need_tool("nginx")
    prefix = workdir / "nginx-proxy"
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "proxy.conf"
    conf.write_text(backend.nginx_head(prefix, MAX_CONNECTIONS) + f"""
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
""")
    proc = spawn(backend.nginx_argv(nginx, conf, prefix), workdir / "nginx-proxy.log")
    _stopped(stack, proc)
    wait_http(port, HOST, proc=proc, log=workdir / "nginx-proxy.log")
    return Target("nginx", port, proc.pid, "1 worker, upstream keepalive 128")


def start_haproxy(stack: contextlib.ExitStack, workdir: Path, upstream: int) -> Target:
    """HAProxy in http mode: 1 thread, keep-alive both ways, server connections reused."""
    haproxy = need_tool("haproxy")
    port = free_port()
    conf = workdir / "haproxy.cfg"
    conf.write_text(f"""
global
    maxconn {HAPROXY_MAXCONN}
    nbthread 1
defaults
    mode http
    maxconn {HAPROXY_MAXCONN}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{upstream}
""")
    # -db: stay in the foreground, so the pid we hold is HAProxy's.
    proc = spawn([haproxy, "-db", "-f", str(conf)], workdir / "haproxy.log")
    _stopped(stack, proc)
    wait_http(port, HOST, proc=proc, log=workdir / "haproxy.log")
    return Target("haproxy", port, proc.pid, "1 thread, http-reuse always")


def backend_service(workdir: Path, **extra: Any) -> dict[str, Any]:
    """A wakegate service whose replica is the same backend, on the port wakegate picks."""
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in extra.items())
    return {
        "command": f"{{python}} -m bench.backend --port {{port}} --dir {workdir}/be-{{port}} "
                   + args,
        "version": "bench",
        "readiness": {"tcp": True},
        "env": {"PYTHONPATH": str(REPO)},
        "stop_grace": "5s",
    }


def start_wakegate(stack: contextlib.ExitStack, workdir: Path, workers: int = 1,
                   config: dict[str, Any] | None = None) -> Target:
    """`wakegate up` with the backend as an always-on staging instance.

    With workers > 1 it passes `--workers N`; a wakegate that refuses the
    option is a Skip that says why.
    """
    if config is None:
        config = {"environments": {"staging": {}},
                  "services": {"be": {**backend_service(workdir), "environments": ["staging"]}}}
    args = ["--workers", str(workers)] if workers > 1 else []
    try:
        wg = stack.enter_context(wakegate(workdir / f"wakegate-w{workers}", config, args))
    except RuntimeError as exc:
        if workers > 1:
            raise Skip(f"`wakegate up --workers {workers}` refused: {exc}") from None
        raise
    wait_http(wg.proxy_port, HOST, proc=wg.proc)
    return Target(f"wakegate-w{workers}", wg.proxy_port, wg.proc.pid,
                  f"{workers} worker{'s' if workers > 1 else ''}")
