"""`wakegate`: the command line, and the composition root that wires proxy and controller."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from . import api_token, logs
from .api_client import ApiClient, ClientError, check_url
from .api_token import TokenError
from .config import ConfigError, load_config
from .spec import Config, ProxySettings
from .statefile import StateFileError, read_state
from .workers import MAX_WORKERS, parse_workers

if TYPE_CHECKING:
    from proxy.app import Proxy

DEFAULT_CONFIG = "wakegate.yaml"
DEFAULT_CONTROLLER = "http://127.0.0.1:8081"
EXIT_USAGE = 2
# A proxy's report holds for 3 intervals and the controller holds none longer
# than 60 s (activity_reports.MAX_TTL).
MAX_REPORT_INTERVAL = 20.0

log = logging.getLogger("wakegate")


def _fail(message: str, code: int = 1) -> NoReturn:
    print(f"wakegate: {message}", file=sys.stderr)
    sys.exit(code)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        _exit_with(exc.problems)


def _exit_with(problems: list[str]) -> NoReturn:
    """Print the problems (`file: path: problem`), one a line, and exit 2."""
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _state_problems(config: Config) -> list[str]:
    """Every problem in the state files under state_dir the local runtime reads, all at once.

    Only read: a file with a problem is left exactly as it is, for a person to fix or remove.
    """
    token_problem = api_token.check(config.state_dir)
    problems = [token_problem] if token_problem is not None else []
    if config.runtime != "local":
        return problems  # the rest of its state is on the cluster's objects
    from . import keys, releases, versions

    for name, check in ((keys.KEYS_FILE, keys.check_keys),
                        (versions.VERSIONS_FILE, versions.check_versions),
                        (releases.RELEASES_FILE, releases.check_releases)):
        try:
            read_state(os.path.join(config.state_dir, name), check, None)
        except StateFileError as exc:
            problems.extend(exc.problems)
    return problems


def _log_args(args: argparse.Namespace) -> list[str]:
    """The logging options again, for worker processes."""
    return ["--log-level", args.log_level, "--log-format", args.log_format,
            "--request-log", args.request_log]


def _setup_logging(args: argparse.Namespace, worker: int | None = None) -> None:
    logs.setup(args.log_level, args.log_format, worker)


# --- validate ---


def cmd_validate(args: argparse.Namespace) -> None:
    config = _load(args.config)
    problems = _state_problems(config)
    if problems:
        _exit_with(problems)
    warnings = _warnings(config)
    for warning in warnings:
        print(warning, file=sys.stderr)
    n = len(config.instances())
    noted = f"; {len(warnings)} warning{'s' if len(warnings) > 1 else ''}" if warnings else ""
    print(f"{args.config}: ok ({len(config.environments)} environments, "
          f"{len(config.services)} services, {n} instances{noted})")


def _warnings(config: Config) -> list[str]:
    """What is valid but probably not what the operator wants: `file: field: warning: ...`."""
    warnings = list(config.warnings)
    if not _is_loopback(config.controller.host) and not os.environ.get(api_token.ENV, "").strip():
        warnings.append(
            f"{config.path}: listen.controller: warning: {config.controller.host} is not a "
            "loopback address and WAKEGATE_TOKEN is not set: the controller API is reachable "
            "from the network, guarded only by the token it makes in "
            f"{api_token.token_path(config.state_dir)}. Set WAKEGATE_TOKEN (to a long random "
            "string) so that proxies on other hosts can use it, and keep the API on a private "
            "network or behind TLS.")
    return warnings


# --- up, controller, proxy ---


def cmd_up(args: argparse.Namespace) -> None:
    config = _load(args.config)
    _setup_logging(args, 1 if args.workers > 1 else None)
    _run(_serve_controller(config, with_proxy=True, workers=args.workers,
                           log_args=_log_args(args), request_log=args.request_log == "on",
                           log_format=args.log_format))


def cmd_controller(args: argparse.Namespace) -> None:
    config = _load(args.config)
    _setup_logging(args)
    _run(_serve_controller(config, with_proxy=False))


def _run(main: Any) -> None:
    import gc

    import uvloop

    # Every request allocates a few objects the cyclic collector tracks; with
    # the default threshold (700) it runs every hundred requests or so and
    # costs about a tenth of the warm path's throughput (measured). Garbage
    # cycles are rare here: collect them 70 times less often.
    gc.set_threshold(50_000, 20, 20)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main)


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


def _stop_on_signals(
    kill_now: Callable[[], None], signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> asyncio.Event:
    """An event set by SIGINT/SIGTERM; a second signal kills what is left and exits at once."""
    stop = asyncio.Event()
    seen = 0

    def on_signal() -> None:
        nonlocal seen
        seen += 1
        if seen > 1:
            # A second Ctrl-C: no more grace for anyone.
            kill_now()
            os._exit(130)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    return stop


async def _serve_controller(
    config: Config, with_proxy: bool, workers: int = 1, log_args: list[str] | None = None,
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

    from .api import ControllerAPI, apply_file, create_key
    from .api_guard import ApiGuard
    from .api_server import ApiRunner
    from .inprocess import InProcessLink
    from .keys import KeyStore
    from .metrics import ControllerMetrics
    from .scaler import Scaler
    from .workers import WorkerFailed, Workers, child_argv, loopback_for

    # Private to wakegate's user: it holds the API token and the key digests.
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    # Before anything listens or starts, so a bad state file leaves nothing behind; every
    # file checked at once, so one run lists every problem.
    problems = _state_problems(config)
    if problems:
        _exit_with(problems)
    try:
        token, token_file = api_token.load_or_create(config.state_dir)
    except TokenError as exc:
        _fail(str(exc), EXIT_USAGE)
    for warning in _warnings(config):
        log.warning("%s", warning)
    registry = CollectorRegistry()
    controller_metrics = ControllerMetrics()
    registry.register(controller_metrics)
    try:
        scaler = Scaler(config, KeyStore(config.state_dir), controller_metrics.scale_event)
    except StateFileError as exc:
        # A file changed since the check, or one it skips (Kubernetes still reads state_dir).
        _exit_with(exc.problems)
    controller_metrics.scaler = scaler
    proxy = Proxy(config.proxy, InProcessLink(scaler), registry,
                  RequestLog(log_format, 1 if workers > 1 else None) if request_log else None
                  ) if with_proxy else None
    children: Workers | None = None

    def kill_now() -> None:
        if children is not None:
            children.kill_now()
        kill = getattr(scaler.runtime, "kill_all_now", None)
        if kill is not None:
            kill()

    stop = _stop_on_signals(kill_now)
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
                _fail(f"cannot listen on {config.proxy.host}:{config.proxy.port} "
                      f"(listen.proxy): {exc.strerror}")
        guard = ApiGuard(token, config.controller.hostnames, config.controller.allowed_origins)
        api = ControllerAPI(scaler, registry, lambda: port, guard, config_path,
                            proxy.activity.snapshot if proxy is not None else None,
                            proxy.activity.key_uses if proxy is not None else None)
        # Open watches are answered at close; shutting down never waits on them long.
        api_runner = ApiRunner(api.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await api_runner.setup()
        try:
            await web.TCPSite(api_runner, config.controller.host, config.controller.port).start()
        except OSError as exc:
            _fail(f"cannot listen on {config.controller.host}:{config.controller.port} "
                  f"(listen.controller): {exc.strerror}")
        await scaler.run()
        if proxy is not None and workers > 1:
            # Started once the API serves route tables, so that they get theirs at once.
            api_url = (f"http://{_url_host(loopback_for(config.controller.host))}:"
                       f"{config.controller.port}")
            # The children read the API token as this process does: WAKEGATE_TOKEN
            # (inherited), else the config's state_dir/api-token (read again after a 401).
            children = Workers(lambda i: child_argv(
                api_url, config.proxy.host, port, i, log_args or [], "1s", config.path),
                workers - 1)
            await children.start()
        await scaler.always_on_started()
        if children is not None:
            try:
                await children.wait("ready")
            except WorkerFailed as exc:
                _fail(f"--workers {workers}: {exc}")
        # Made only now that wakegate serves, so a failed start never eats a
        # key that was shown nowhere.
        new_keys = []
        for spec in config.instances():
            if spec.environment.access == "api_key" and not scaler.keys.has_key(*spec.key):
                new_keys.append((spec.name, await create_key(scaler, *spec.key)))
        _print_welcome(config, scaler.status(port), new_keys, port, with_proxy,
                       children.pids() if children is not None else None, token_file)
        await stop.wait()
        log.info("stopping: putting every instance to sleep")
    finally:
        try:
            if children is not None:
                # First, while the API still takes their last reports.
                await children.stop()
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


def cmd_proxy(args: argparse.Namespace) -> None:
    from .units import parse_duration

    # The proxy's settings (timeouts, sizes, trusted proxies) come from the
    # config file when there is one; the controller sends only the routes.
    config = _load(args.config) if args.config_given or os.path.exists(args.config) else None
    settings = config.proxy if config is not None else ProxySettings()
    if args.listen:
        try:
            host, port = _parse_address(args.listen)
        except ValueError as exc:
            _fail(f"--listen {args.listen}: {exc}", EXIT_USAGE)
        settings = dataclasses.replace(settings, host=host, port=port)
    url = args.controller or os.environ.get("WAKEGATE_CONTROLLER")
    if not url and config is not None:
        url = f"http://{_url_host(config.controller.host)}:{config.controller.port}"
    try:
        url = check_url(url or DEFAULT_CONTROLLER)
        api_token.from_env()  # a WAKEGATE_TOKEN that is not a token stops it here
    except (ClientError, TokenError) as exc:
        _fail(str(exc), EXIT_USAGE)
    try:
        interval = parse_duration(args.report_interval)
        if interval <= 0:
            raise ValueError("it must be more than 0")
    except ValueError as exc:
        _fail(f"--report-interval {args.report_interval}: {exc}", EXIT_USAGE)
    worker = args.worker_index
    if worker is not None:
        # A worker is stopped by its parent (SIGTERM), not by the Ctrl-C or the
        # hang-up its terminal sends to the whole process group.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    elif args.workers > 1:
        worker = 1
    if interval > MAX_REPORT_INTERVAL:
        _fail(f"--report-interval {args.report_interval}: at most {MAX_REPORT_INTERVAL:g}s "
              "(the controller holds a report for 3 intervals, 60 s at most)", EXIT_USAGE)
    _setup_logging(args, worker)
    _run(_serve_proxy(settings, config, url, interval, args, worker))


async def _serve_proxy(
    settings: ProxySettings, config: Config | None, url: str, report_interval: float,
    args: argparse.Namespace, worker: int | None,
) -> None:
    """One proxy; with --workers N, worker 1 of N; with --worker-index, one of those N."""
    from prometheus_client import CollectorRegistry

    from proxy.app import Proxy
    from proxy.remote_link import RemoteLink
    from proxy.request_log import RequestLog

    from .workers import WorkerFailed, Workers, child_argv

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
    stop = _stop_on_signals(lambda: children.kill_now() if children is not None else None,
                            (signal.SIGTERM,) if is_child else (signal.SIGINT, signal.SIGTERM))
    try:
        try:
            port = await proxy.start(settings.host, settings.port,
                                     reuse_port=args.reuse_port or args.workers > 1)
        except OSError as exc:
            _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
        if is_child:
            await _announce_worker(proxy, stop)
            return
        if args.workers > 1:
            # The port is known now (--listen ...:0 included): the others share it.
            config_file = args.config if args.config_given or os.path.exists(args.config) \
                else None
            children = Workers(lambda i: child_argv(
                url, settings.host, port, i, _log_args(args), args.report_interval, config_file),
                args.workers - 1)
            await children.start()
            try:
                # Listening is enough: a proxy starts even while its controller is down.
                await children.wait("listening")
            except WorkerFailed as exc:
                _fail(f"--workers {args.workers}: {exc}")
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


def _worker_proxy_id(worker: int, unique: str) -> str:
    import socket

    return f"{socket.gethostname()[:64]}/pid{os.getpid()}/worker{worker}/{unique[:12]}"


async def _announce_worker(proxy: Proxy, stop: asyncio.Event) -> None:
    """A worker child: tell the parent (stdout is a pipe to it) it listens, then that it has
    its first route table; serve until SIGTERM."""
    from .workers import LISTENING_LINE, READY_LINE

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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _print_welcome(
    config: Config, rows: list[dict[str, Any]], new_keys: list[tuple[str, str]], port: int,
    with_proxy: bool = True, workers: list[int] | None = None, token_file: str | None = None,
) -> None:
    api_url = f"http://{_url_host(config.controller.host)}:{config.controller.port}"
    if with_proxy:
        print(f"wakegate is up: proxy on {config.proxy.host}:{port}, controller API on "
              f"{api_url} ({config.path})")
        if workers:
            print(f"{len(workers) + 1} proxy workers share port {port} (SO_REUSEPORT): "
                  f"pid {os.getpid()} (this one) and {', '.join(map(str, workers))}; "
                  f"GET {api_url}/v1/proxies lists the other ones")
    else:
        print(f"wakegate controller is up: API on {api_url} ({config.path}); start proxies "
              f"with `wakegate proxy -c {config.path} --controller {api_url}`")
    # Where the API's token is; never the token itself.
    if token_file is not None:
        print(f"The controller API needs the token in {token_file}; `wakegate COMMAND -c "
              f"{config.path}` reads it from there.")
    else:
        print("The controller API needs the token in WAKEGATE_TOKEN.")
    print()
    _print_table(rows, ("environment", "service", "access", "state", "url"))
    for name, key in new_keys:
        print()
        print(f"New API key for {name} (shown only this once; only its hash is stored):")
        print(f"  {key}")
    print()
    print("Press Ctrl-C to stop. `wakegate status` shows what sleeps and what is awake.",
          flush=True)


def _print_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# --- commands that talk to the running controller ---


def _client(args: argparse.Namespace) -> ApiClient:
    """Where the controller API is (--controller, WAKEGATE_CONTROLLER, the config's
    listen.controller) and its token (WAKEGATE_TOKEN, else the config's state_dir)."""
    config = _load(args.config) if args.config_given or os.path.exists(args.config) else None
    url = args.controller or os.environ.get("WAKEGATE_CONTROLLER")
    option = "--controller" if args.controller else "WAKEGATE_CONTROLLER"
    if not url:
        url = DEFAULT_CONTROLLER if config is None else \
            f"http://{_url_host(config.controller.host)}:{config.controller.port}"
        option = "listen.controller"
    try:
        url = check_url(url, option)
        token, token_from = api_token.from_env(), api_token.ENV
        if token is None and config is not None:
            token = api_token.read(config.state_dir)
            token_from = api_token.token_path(config.state_dir)
    except (ClientError, TokenError) as exc:
        _fail(str(exc), EXIT_USAGE)
    return ApiClient(url, token, token_from if token is not None else None)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None,
          timeout: float = 30, fields: tuple[str, ...] = ()) -> Any:
    """The controller's JSON answer, an object with `fields` (else the CLI says why)."""
    # A change is sent again, with the same key, when its answer was lost.
    # (Not a new key: a second one would be made, and the first never shown.)
    retry = method == "POST" and not path.startswith("/v1/keys")
    try:
        return _client(args).call(method, path, body, timeout, retry, fields)
    except ClientError as exc:
        _fail(str(exc), exc.exit_code)


def cmd_status(args: argparse.Namespace) -> None:
    rows = _call(args, "GET", "/v1/status", fields=("instances",))["instances"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["idle"] = _human_seconds(row["idle_seconds"]) if row["idle_seconds"] else "-"
        if row.get("backoff_seconds"):
            row["state"] = (f"{row['state']} (crash back-off: {row['failures_in_a_row']} "
                            f"failed starts, next try in {row['backoff_seconds']:g}s)")
        elif row["state"] == "sleeping" and row.get("error"):
            row["state"] = "sleeping (last start failed)"
    _print_table(rows, ("environment", "service", "state", "replicas", "version", "idle", "url"))
    failed = [row for row in rows if row.get("error")]
    if failed:
        print()
        for row in failed:
            print(f"{row['environment']}/{row['service']}: last start failed: {row['error']}")


def _human_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def cmd_keys_create(args: argparse.Namespace) -> None:
    result = _call(args, "POST", "/v1/keys", {"service": args.service, "environment": args.env},
                   fields=("environment", "service", "key"))
    print(f"New API key for {result['environment']}/{result['service']} "
          "(shown only this once; only its hash is stored):")
    print(result["key"])


def cmd_keys_list(args: argparse.Namespace) -> None:
    query = f"?{urllib.parse.urlencode({'service': args.service})}" if args.service else ""
    rows = _call(args, "GET", f"/v1/keys{query}", fields=("keys",))["keys"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["created"] = _when(row["created"])
        row["last_used"] = _when(row["last_used"]) if row["last_used"] else "never"
    _print_table(rows, ("id", "environment", "service", "created", "last_used"))


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    result = _call(args, "DELETE", f"/v1/keys/{urllib.parse.quote(args.id, safe='')}",
                   fields=("id", "environment", "service"))
    print(f"revoked key {result['id']} of {result['environment']}/{result['service']}: "
          "every proxy refuses it from now on")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# A deploy to a running instance waits for the new replicas (up to start_timeout).
_DEPLOY_TIMEOUT = 300.0


_CHANGE_FIELDS = ("environment", "service", "version", "previous", "changed")


def _print_change(result: dict[str, Any]) -> None:
    where = f"{result['environment']}/{result['service']}"
    if result["changed"]:
        print(f"{where}: version {result['version']} (was {result['previous']})")
    else:
        print(f"{where}: already at version {result['version']}; nothing to do")


def cmd_deploy(args: argparse.Namespace) -> None:
    _print_change(_call(args, "POST", "/v1/deploy", {
        "service": args.service, "environment": args.env, "version": args.version,
    }, timeout=_DEPLOY_TIMEOUT, fields=_CHANGE_FIELDS))


def cmd_apply(args: argparse.Namespace) -> None:
    # The controller re-reads its own config file; it never reads a path it is sent. A
    # local copy (-c, or wakegate.yaml here) is checked first, like `validate`, and its
    # digest sent, so that editing another file than the controller reads is caught.
    body: dict[str, str] = {}
    if args.config_given or os.path.exists(args.config):
        _load(args.config)
        try:
            with open(args.config, "rb") as f:
                body["sha256"] = hashlib.sha256(f.read()).hexdigest()
        except OSError as exc:
            _fail(f"{args.config}: {exc.strerror}", EXIT_USAGE)
    result = _call(args, "POST", "/v1/apply", body,
                   fields=("config", "instances", "added", "removed"))
    print(f"{result['config']}: applied; {result['instances']} instances "
          f"(added: {', '.join(result['added']) or 'none'}; "
          f"removed: {', '.join(result['removed']) or 'none'})")


def cmd_release(args: argparse.Namespace) -> None:
    if args.action == "status":
        query = urllib.parse.urlencode({"service": args.service})
        result = _call(args, "GET", f"/v1/release/status?{query}",
                       fields=("environment", "service", "live", "colours"))
        print(f"{result['environment']}/{result['service']}: live colour {result['live']}")
        for colour, info in sorted(result["colours"].items()):
            line = (f"  {colour:<6} {info['role']:<9} version {info['version']:<12} "
                    f"replicas {info['replicas']}")
            if "scale_down_in_seconds" in info:
                line += f"  (scaled down in {info['scale_down_in_seconds']:g}s)"
            print(line)
        return
    result = _call(args, "POST", f"/v1/release/{args.action}", {"service": args.service},
                   timeout=_DEPLOY_TIMEOUT,
                   fields=("environment", "service", "version", "live", "previous"))
    print(f"{result['environment']}/{result['service']}: {result['version']} is live "
          f"({result['live']}; was {result['previous']})")


def cmd_promote(args: argparse.Namespace) -> None:
    _print_change(_call(args, "POST", "/v1/promote", {"service": args.service},
                        timeout=_DEPLOY_TIMEOUT, fields=_CHANGE_FIELDS))


# --- argument parsing ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wakegate", description="Scale-to-zero activating proxy: idle services sleep, "
        "the next request wakes them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=None,
                       help=f"config file (default: {DEFAULT_CONFIG})")

    def with_logging(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
        p.add_argument("--log-format", default="text", choices=logs.FORMATS,
                       help="text (default) or json: one object per line")
        p.add_argument("--request-log", default="on", choices=("on", "off"),
                       help="one line per request (default on)")

    def with_workers(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workers", type=parse_workers, default=1, metavar="N",
                       help=f"proxy processes sharing the proxy port with SO_REUSEPORT, this "
                       f"one included (1 to {MAX_WORKERS}; default 1)")

    def with_controller(p: argparse.ArgumentParser) -> None:
        with_config(p)
        p.add_argument("--controller", help="controller API URL (default: from the config, "
                       f"WAKEGATE_CONTROLLER, or {DEFAULT_CONTROLLER})")

    p = sub.add_parser("up", help="controller + proxy in one process on the local runtime")
    with_config(p)
    with_workers(p)
    with_logging(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("controller", help="the controller alone; proxies join over HTTP")
    with_config(p)
    with_logging(p)
    p.set_defaults(func=cmd_controller)

    p = sub.add_parser("proxy", help="a proxy alone, taking its routes from a controller")
    with_config(p)
    p.add_argument("--controller", help="controller API URL (default: WAKEGATE_CONTROLLER, "
                   f"listen.controller of the config, or {DEFAULT_CONTROLLER})")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="where to serve (default: listen.proxy of the config, or 127.0.0.1:8080)")
    p.add_argument("--report-interval", default="1s", metavar="DURATION",
                   help="how often activity is reported to the controller, e.g. 1s, 100ms "
                   "(a report holds for 3 intervals; default 1s)")
    with_workers(p)
    # Internal: how workers 2..N are started; --reuse-port alone also lets
    # separately started proxies share a port.
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    with_logging(p)
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("validate", help="check a config file")
    with_config(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("status", help="every instance: state, replicas, version, idle time, URL")
    with_controller(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    keys = sub.add_parser("keys", help="API keys of private instances")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys_sub.add_parser("create", help="make a new key, printed once (last line)")
    p.add_argument("service")
    p.add_argument("--env", default="private", help="environment (default: private)")
    with_controller(p)
    p.set_defaults(func=cmd_keys_create)
    p = keys_sub.add_parser("list", help="every key's id, environment, service, when it was "
                            "made and last used (never the key)")
    p.add_argument("service", nargs="?", help="only this service's keys")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    with_controller(p)
    p.set_defaults(func=cmd_keys_list)
    p = keys_sub.add_parser("revoke", help="revoke a key by its id (from `keys list`), on "
                            "every proxy at once")
    p.add_argument("id")
    with_controller(p)
    p.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("push", help="run VERSION in the private environment")
    p.add_argument("service")
    p.add_argument("version")
    p.add_argument("--env", default="private", help=argparse.SUPPRESS)
    with_controller(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("apply", help="reconcile the running system with an edited config "
                       "(an invalid one changes nothing); SIGHUP does the same")
    with_controller(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("promote", help="the private version becomes the demo (public) version")
    p.add_argument("service")
    with_controller(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("release", help="blue/green: promote the preview colour to production, "
                       "roll back, or show both colours")
    p.add_argument("action", choices=("promote", "rollback", "status"))
    p.add_argument("service")
    with_controller(p)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("deploy", help="run VERSION in any environment (production: on the "
                       "preview colour, at the prerelease URL)")
    p.add_argument("service")
    p.add_argument("version")
    p.add_argument("--env", required=True, help="environment")
    with_controller(p)
    p.set_defaults(func=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.config_given = getattr(args, "config", None) is not None
    if hasattr(args, "config") and args.config is None:
        args.config = DEFAULT_CONFIG
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C: no traceback


if __name__ == "__main__":
    main()
