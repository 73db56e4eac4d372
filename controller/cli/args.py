"""The command line: every command, its options and its help, and `main`, which runs one."""

from __future__ import annotations

import argparse
import sys

from ..workers import MAX_WORKERS, parse_workers
from .client import DEFAULT_CONTROLLER
from .commands import cmd_apply, cmd_deploy, cmd_promote, cmd_release
from .env import cmd_env_create, cmd_env_delete, cmd_env_extend, cmd_env_list
from .keys import cmd_keys_create, cmd_keys_list, cmd_keys_revoke
from .logs import FORMATS
from .serve import cmd_controller, cmd_up
from .serve_proxy import cmd_proxy
from .status import cmd_status
from .validate import cmd_validate

DEFAULT_CONFIG = "wakegate.yaml"


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
        p.add_argument("--log-format", default="text", choices=FORMATS,
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

    env = sub.add_parser("env", help="ephemeral environments: made from another one, asleep "
                         "until used, gone at the end of their TTL")
    env_sub = env.add_subparsers(dest="env_command", required=True, metavar="ACTION")
    p = env_sub.add_parser("create", help="a new ephemeral environment with every service of "
                           "another one; prints its URLs (and its API key, last)")
    p.add_argument("name", help="its name: 1 to 24 letters, digits and dashes, starting with "
                   "a letter (hosts are SERVICE.NAME.DOMAIN)")
    p.add_argument("--from", dest="source", required=True, metavar="ENV",
                   help="the environment to copy, each service at its current version")
    p.add_argument("--ttl", help="how long it lives, e.g. 2h, 30m (default: ephemeral.ttl of "
                   "the config, 24h)")
    p.add_argument("--access", choices=("public", "api_key"), default=None,
                   help="who may call it (default: the source environment's access, so a "
                   "copy of a private environment needs a key)")
    p.add_argument("--set", action="append", default=[], metavar="SERVICE=VERSION",
                   help="run this version of a service instead (repeatable)")
    with_controller(p)
    p.set_defaults(func=cmd_env_create)
    p = env_sub.add_parser("list", help="every environment: kind, source, created, expires in, "
                           "the state of each service")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    with_controller(p)
    p.set_defaults(func=cmd_env_list)
    p = env_sub.add_parser("extend", help="an ephemeral environment expires TTL from now")
    p.add_argument("name")
    p.add_argument("--ttl", required=True, help="e.g. 4h")
    with_controller(p)
    p.set_defaults(func=cmd_env_extend)
    p = env_sub.add_parser("delete", help="remove an ephemeral environment now (requests in "
                           "flight get its drain timeout)")
    p.add_argument("name")
    with_controller(p)
    p.set_defaults(func=cmd_env_delete)

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
