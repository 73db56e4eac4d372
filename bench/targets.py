"""Starting what the warm path is measured through: the backend, nginx, HAProxy, wakegate,
Caddy, and two Python reference proxies (bench/pipe.py, bench/httptools_proxy.py).

Each start function registers its process on an ExitStack, so that every
process is stopped by its pid when the scenario ends, however it ends. Each
target also says which processes do its proxying (`Target.counted`): the
warm scenario counts their CPU time, and only theirs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import backend, cpu
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
    # The processes that proxy, found when asked; default: `pid` and its descendants.
    counts: Callable[[], list[cpu.Counted]] | None = None

    def counted(self) -> list[cpu.Counted]:
        return self.counts() if self.counts is not None else cpu.tree(self.pid)


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
    # bench.backend execs nginx, so the pid is nginx's master (its worker is a child).
    return Target("direct", port, proc.pid, f"{kind}, {len(backend.BODY)}-byte body",
                  lambda: cpu.tree(proc.pid, "the backend itself, no proxy"))


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


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """`extra` in os.environ while a child is started (it inherits it), then as before."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_wakegate(stack: contextlib.ExitStack, workdir: Path, workers: int = 1,
                   config: dict[str, Any] | None = None, name: str | None = None,
                   args: list[str] | None = None, env: dict[str, str] | None = None,
                   note: str = "") -> Target:
    """`wakegate up` with the backend as an always-on staging instance.

    With workers > 1 it passes `--workers N`; a wakegate that refuses the
    option is a Skip that says why. `args` are more options of `wakegate up`
    (one it refuses is a Skip too), `env` more environment for it.

    The counted processes: `wakegate up` itself (the controller and proxy
    worker 1 share it) and its `wakegate proxy` worker children, told from
    the backend (its other child, a service replica) by their command lines.
    """
    name = name or f"wakegate-w{workers}"
    if config is None:
        config = {"environments": {"staging": {}},
                  "services": {"be": {**backend_service(workdir), "environments": ["staging"]}}}
    argv = (["--workers", str(workers)] if workers > 1 else []) + (args or [])
    try:
        with _environ(env or {}):
            wg = stack.enter_context(wakegate(workdir / name, config, argv))
    except RuntimeError as exc:
        if argv:
            raise Skip(f"`wakegate up {' '.join(argv)}` refused: {exc}") from None
        raise
    wait_http(wg.proxy_port, HOST, proc=wg.proc)
    pid = wg.proc.pid
    note = note or f"{workers} worker{'s' if workers > 1 else ''}"
    return Target(name, wg.proxy_port, pid, note, lambda: cpu.wakegate(pid))


def start_python_proxy(stack: contextlib.ExitStack, workdir: Path, name: str, module: str,
                       upstream: int, note: str) -> Target:
    """One of the reference proxies of bench/ (pipe, httptools_proxy): one process."""
    port = free_port()
    log = workdir / f"{name}.log"
    proc = spawn([sys.executable, "-m", module, "--port", str(port), "--upstream-port",
                  str(upstream)], log)
    _stopped(stack, proc)
    wait_http(port, HOST, proc=proc, log=log)
    return Target(name, port, proc.pid, note)


def start_caddy(stack: contextlib.ExitStack, workdir: Path, upstream: int) -> Target:
    """Caddy 2 as a reverse proxy (plain HTTP, no admin endpoint), if a caddy binary exists.

    GOMAXPROCS=1, so that it runs Go code on one core like the others run one worker.
    """
    caddy = find_tool("caddy")
    if caddy is None:
        raise Skip("caddy is not installed (the bench does not install it)")
    home = workdir / "caddy"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = home / "Caddyfile"
    conf.write_text(f"""{{
    admin off
    auto_https off
    persist_config off
}}
http://:{port} {{
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:{upstream}
}}
""")
    # Its data and config directories in the workdir, not in the user's home.
    env = {**os.environ, "GOMAXPROCS": "1", "HOME": str(home),
           "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
    log = workdir / "caddy.log"
    proc = spawn([caddy, "run", "--config", str(conf), "--adapter", "caddyfile"], log, env=env)
    _stopped(stack, proc)
    wait_http(port, HOST, proc=proc, log=log)
    return Target("caddy", port, proc.pid, "GOMAXPROCS=1, reverse_proxy")
