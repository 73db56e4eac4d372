"""`wakegate proxy`: a proxy alone (or one of its --workers), taking its routes from a
controller over HTTP. Beside `serve`, the other module that builds the proxy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..api import token as api_token
from ..api.token import TokenError
from ..spec import Config, ProxySettings
from .client import ClientError, check_url, config_file, config_if_any, controller_url
from .exit import EXIT_USAGE, fail
from .process import log_args, run, setup_logging, stop_on_signals

if TYPE_CHECKING:
    from proxy.app import Proxy

# A proxy's report holds for 3 intervals and the controller holds none longer
# than 60 s (activity_reports.MAX_TTL).
MAX_REPORT_INTERVAL = 20.0

log = logging.getLogger("wakegate")


def cmd_proxy(args: argparse.Namespace) -> None:
    from ..units import parse_duration

    # The proxy's settings (timeouts, sizes, trusted proxies) come from the
    # config file when there is one; the controller sends only the routes.
    config = config_if_any(args)
    settings = config.proxy if config is not None else ProxySettings()
    if args.listen:
        try:
            host, port = _parse_address(args.listen)
        except ValueError as exc:
            fail(f"--listen {args.listen}: {exc}", EXIT_USAGE)
        settings = dataclasses.replace(settings, host=host, port=port)
    url, option = controller_url(args.controller, config)
    try:
        url = check_url(url, option)
        api_token.from_env()  # a WAKEGATE_TOKEN that is not a token stops it here
    except (ClientError, TokenError) as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        interval = parse_duration(args.report_interval)
        if interval <= 0:
            raise ValueError("it must be more than 0")
    except ValueError as exc:
        fail(f"--report-interval {args.report_interval}: {exc}", EXIT_USAGE)
    worker = args.worker_index
    if worker is not None:
        # A worker is stopped by its parent (SIGTERM), not by the Ctrl-C or the
        # hang-up its terminal sends to the whole process group.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    elif args.workers > 1:
        worker = 1
    if interval > MAX_REPORT_INTERVAL:
        fail(f"--report-interval {args.report_interval}: at most {MAX_REPORT_INTERVAL:g}s "
             "(the controller holds a report for 3 intervals, 60 s at most)", EXIT_USAGE)
    setup_logging(args, worker)
    run(_serve_proxy(settings, config, url, interval, args, worker))


async def _serve_proxy(
    settings: ProxySettings, config: Config | None, url: str, report_interval: float,
    args: argparse.Namespace, worker: int | None,
) -> None:
    """One proxy; with --workers N, worker 1 of N; with --worker-index, one of those N."""
    from prometheus_client import CollectorRegistry

    from proxy.app import Proxy
    from proxy.remote_link import RemoteLink
    from proxy.request_log import RequestLog

    from ..workers import WorkerFailed, Workers, child_argv

    for warning in config.warnings if config is not None else ():
        log.warning("%s", warning)
    link = RemoteLink(url, _token_reader(config), report_interval)
    if worker is not None:
        # So that GET /v1/proxies shows which worker process each report is from.
        link.proxy_id = _worker_proxy_id(worker, link.proxy_id)
    proxy = Proxy(settings, link, CollectorRegistry(),
                  RequestLog(args.log_format, worker) if args.request_log == "on" else None)
    children: Workers | None = None
    is_child = args.worker_index is not None
    stop = stop_on_signals(lambda: children.kill_now() if children is not None else None,
                           (signal.SIGTERM,) if is_child else (signal.SIGINT, signal.SIGTERM))
    try:
        try:
            port = await proxy.start(settings.host, settings.port,
                                     reuse_port=args.reuse_port or args.workers > 1)
        except OSError as exc:
            fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
        if is_child:
            await _announce_worker(proxy, stop)
            return
        if args.workers > 1:
            # The port is known now (--listen ...:0 included): the others share it.
            file = config_file(args)
            children = Workers(lambda i: child_argv(
                url, settings.host, port, i, log_args(args), args.report_interval, file),
                args.workers - 1)
            await children.start()
            try:
                # Listening is enough: a proxy starts even while its controller is down.
                await children.wait("listening")
            except WorkerFailed as exc:
                fail(f"--workers {args.workers}: {exc}")
        print(f"wakegate proxy is up on {settings.host}:{port}, taking its routes from {url} "
              f"(reports every {report_interval:g}s)")
        if children is not None:
            print(f"{args.workers} workers share the port (SO_REUSEPORT): pid {os.getpid()} "
                  f"(this one) and {', '.join(map(str, children.pids()))}; each reports to "
                  "the controller as its own proxy (GET /v1/proxies)")
        print("Press Ctrl-C to stop. /readyz answers 200 once the first route table is in.",
              flush=True)
        await stop.wait()
        log.info("stopping the proxy")
    finally:
        try:
            if children is not None:
                await children.stop()
        finally:
            await proxy.close()


def _token_reader(config: Config | None) -> Callable[[], str | None]:
    """The token as `wakegate proxy` sends it: WAKEGATE_TOKEN, else the controller's token
    file in the config's state_dir (read again when the controller refuses it)."""
    state_dir = config.state_dir if config is not None else None

    def read() -> str | None:
        try:
            return api_token.from_env() if state_dir is None else api_token.read(state_dir)
        except TokenError as exc:
            log.warning("%s", exc)
            return None

    return read


def _worker_proxy_id(worker: int, unique: str) -> str:
    import socket

    return f"{socket.gethostname()[:64]}/pid{os.getpid()}/worker{worker}/{unique[:12]}"


async def _announce_worker(proxy: Proxy, stop: asyncio.Event) -> None:
    """A worker child: tell the parent (stdout is a pipe to it) it listens, then that it has
    its first route table; serve until SIGTERM."""
    from ..workers import LISTENING_LINE, READY_LINE

    print(LISTENING_LINE, flush=True)
    while proxy.table.version == 0 and not stop.is_set():
        # Polled (briefly, at start only) rather than hooking the link's apply.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.01)
    if not stop.is_set():
        print(READY_LINE, flush=True)
    await stop.wait()
    log.info("stopping")


def _parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT", "[v6]:PORT" or "PORT" (on 127.0.0.1)."""
    hint = "give HOST:PORT with a port from 0 to 65535, e.g. 0.0.0.0:8080 or [::1]:8080"
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(hint)
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(hint)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(hint)
    return host or "127.0.0.1", int(port_text)
