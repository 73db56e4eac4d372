"""`wakegate up` and `wakegate controller`: the composition root. It builds the controller
(scaler, runtime, key store, metrics, API) and, for `up`, the proxy in the same process, and
is with `serve_proxy` the only code that imports both the controller and the proxy."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

from ..api import token as api_token
from ..api.token import TokenError
from ..spec import Config
from ..statefile import StateFileError
from .client import api_url, url_host
from .exit import EXIT_USAGE, exit_with, fail, load
from .output import print_table
from .process import log_args, run, setup_logging, stop_on_signals
from .validate import state_problems, warnings

log = logging.getLogger("wakegate")


def cmd_up(args: argparse.Namespace) -> None:
    config = load(args.config)
    setup_logging(args, 1 if args.workers > 1 else None)
    run(_serve_controller(config, with_proxy=True, workers=args.workers,
                          child_log_args=log_args(args), request_log=args.request_log == "on",
                          log_format=args.log_format))


def cmd_controller(args: argparse.Namespace) -> None:
    config = load(args.config)
    setup_logging(args)
    run(_serve_controller(config, with_proxy=False))


async def _serve_controller(
    config: Config, with_proxy: bool, workers: int = 1, child_log_args: list[str] | None = None,
    request_log: bool = True, log_format: str = "text",
) -> None:
    """`up` (with_proxy: the proxy in this process) and `controller` (proxies elsewhere).

    `workers` > 1 (`up` only): workers 2..N are `wakegate proxy` children that
    take their routes from this process's controller API and share the proxy's
    port with SO_REUSEPORT.
    """
    # Imported here so that validate/status/keys start fast.
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from proxy.app import Proxy
    from proxy.request_log import RequestLog

    from ..api.app import ControllerAPI
    from ..api.apply import apply_file
    from ..api.guard import ApiGuard
    from ..api.server import ApiRunner
    from ..ephemeral import EphemeralManager
    from ..inprocess import InProcessLink
    from ..metrics import ControllerMetrics
    from ..runtimes import build_runtime
    from ..scaler import Scaler
    from ..workers import WorkerFailed, Workers, child_argv, loopback_for

    # Private to wakegate's user: it holds the API token and the key digests.
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    # Before anything listens or starts, so a bad state file leaves nothing behind; every
    # file checked at once, so one run lists every problem.
    problems = state_problems(config)
    if problems:
        exit_with(problems)
    try:
        token, token_file = api_token.load_or_create(config.state_dir)
    except TokenError as exc:
        fail(str(exc), EXIT_USAGE)
    for warning in warnings(config):
        log.warning("%s", warning)
    registry = CollectorRegistry()
    controller_metrics = ControllerMetrics()
    registry.register(controller_metrics)
    try:
        scaler = Scaler(config, build_runtime(config), controller_metrics.scale_event)
    except StateFileError as exc:
        # A file changed since the check, or one it skips (Kubernetes still reads state_dir).
        exit_with(exc.problems)
    controller_metrics.scaler = scaler
    ephemeral = EphemeralManager(scaler)
    proxy = Proxy(config.proxy, InProcessLink(scaler), registry,
                  RequestLog(log_format, 1 if workers > 1 else None) if request_log else None
                  ) if with_proxy else None
    children: Workers | None = None

    def kill_now() -> None:
        if children is not None:
            children.kill_now()
        scaler.runtime.kill_all_now()

    stop = stop_on_signals(kill_now)
    # SIGHUP: apply the edited config file, as `wakegate apply` does.
    config_path = os.path.abspath(config.path)
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, lambda: apply_file(scaler, config_path))
    api: ControllerAPI | None = None
    api_runner: web.AppRunner | None = None
    try:
        # Without a proxy here, status shows the URLs of listen.proxy.
        port = config.proxy.port
        if proxy is not None:
            try:
                port = await proxy.start(config.proxy.host, config.proxy.port,
                                         reuse_port=workers > 1)
            except OSError as exc:
                fail(f"cannot listen on {config.proxy.host}:{config.proxy.port} "
                     f"(listen.proxy): {exc.strerror}")
        guard = ApiGuard(token, config.controller.hostnames, config.controller.allowed_origins)
        api = ControllerAPI(scaler, registry, lambda: port, guard, config_path, ephemeral,
                            proxy.activity.snapshot if proxy is not None else None,
                            proxy.activity.key_uses if proxy is not None else None)
        # Open watches are answered at close; shutting down never waits on them long.
        api_runner = ApiRunner(api.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await api_runner.setup()
        try:
            await web.TCPSite(api_runner, config.controller.host, config.controller.port).start()
        except OSError as exc:
            fail(f"cannot listen on {config.controller.host}:{config.controller.port} "
                 f"(listen.controller): {exc.strerror}")
        await scaler.run()
        ephemeral.start()  # after a restart, what expired meanwhile goes now
        if proxy is not None and workers > 1:
            # Started once the API serves route tables, so that they get theirs at once.
            children_api = (f"http://{url_host(loopback_for(config.controller.host))}:"
                            f"{config.controller.port}")
            # The children read the API token as this process does: WAKEGATE_TOKEN
            # (inherited), else the config's state_dir/api-token (read again after a 401).
            children = Workers(lambda i: child_argv(
                children_api, config.proxy.host, port, i, child_log_args or [], "1s", config.path),
                workers - 1)
            await children.start()
        await scaler.always_on_started()
        if children is not None:
            try:
                await children.wait("ready")
            except WorkerFailed as exc:
                fail(f"--workers {workers}: {exc}")
        # Made only now that wakegate serves, so a failed start never eats a
        # key that was shown nowhere.
        new_keys = []
        for spec in config.instances():
            if spec.environment.access == "api_key" and not scaler.keys.has_key(*spec.key):
                new_keys.append((spec.name, await scaler.create_key(*spec.key)))
        _print_welcome(config, scaler.status(port), new_keys, port, with_proxy,
                       children.pids() if children is not None else None, token_file)
        await stop.wait()
        log.info("stopping: putting every instance to sleep")
    finally:
        try:
            if children is not None:
                # First, while the API still takes their last reports.
                await children.stop()
            await ephemeral.close()
            try:
                # Bounded: whatever hangs (an API server that stopped answering), the
                # process exits, and kill_now() below stops what is left.
                await asyncio.wait_for(scaler.shutdown(), _shutdown_deadline(config))
            except TimeoutError:
                log.error("the runtime did not stop in time; stopping what is left at once")
            if proxy is not None:
                await proxy.close()
            if api is not None:
                api.close()
            if api_runner is not None:
                await api_runner.cleanup()
        finally:
            kill_now()


def _shutdown_deadline(config: Config) -> float:
    """How long stopping may take: every service's stop_grace, and some."""
    grace = max((svc.stop_grace for svc in config.services.values()), default=10.0)
    return grace + 10.0


def _print_welcome(
    config: Config, rows: list[dict[str, Any]], new_keys: list[tuple[str, str]], port: int,
    with_proxy: bool = True, workers: list[int] | None = None, token_file: str | None = None,
) -> None:
    url = api_url(config)
    if with_proxy:
        print(f"wakegate is up: proxy on {config.proxy.host}:{port}, controller API on "
              f"{url} ({config.path})")
        if workers:
            print(f"{len(workers) + 1} proxy workers share port {port} (SO_REUSEPORT): "
                  f"pid {os.getpid()} (this one) and {', '.join(map(str, workers))}; "
                  f"GET {url}/v1/proxies lists the other ones")
    else:
        print(f"wakegate controller is up: API on {url} ({config.path}); start proxies "
              f"with `wakegate proxy -c {config.path} --controller {url}`")
    # Where the API's token is; never the token itself.
    if token_file is not None:
        print(f"The controller API needs the token in {token_file}; `wakegate COMMAND -c "
              f"{config.path}` reads it from there.")
    else:
        print("The controller API needs the token in WAKEGATE_TOKEN.")
    print()
    print_table(rows, ("environment", "service", "access", "state", "url"))
    for name, key in new_keys:
        print()
        print(f"New API key for {name} (shown only this once; only its hash is stored):")
        print(f"  {key}")
    print()
    print("Press Ctrl-C to stop. `wakegate status` shows what sleeps and what is awake.",
          flush=True)
