"""The commands that change what runs, sent to the running controller: push, deploy,
promote, release and apply."""

from __future__ import annotations

import argparse
import hashlib
import urllib.parse
from typing import Any

from .client import call, config_file
from .exit import EXIT_USAGE, fail, load

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
    _print_change(call(args, "POST", "/v1/deploy", {
        "service": args.service, "environment": args.env, "version": args.version,
    }, timeout=_DEPLOY_TIMEOUT, fields=_CHANGE_FIELDS))


def cmd_apply(args: argparse.Namespace) -> None:
    # The controller re-reads its own config file; it never reads a path it is sent. A
    # local copy (-c, or wakegate.yaml here) is checked first, like `validate`, and its
    # digest sent, so that editing another file than the controller reads is caught.
    body: dict[str, str] = {}
    path = config_file(args)
    if path is not None:
        load(path)
        try:
            with open(path, "rb") as f:
                body["sha256"] = hashlib.sha256(f.read()).hexdigest()
        except OSError as exc:
            fail(f"{path}: {exc.strerror}", EXIT_USAGE)
    result = call(args, "POST", "/v1/apply", body,
                  fields=("config", "instances", "added", "removed"))
    print(f"{result['config']}: applied; {result['instances']} instances "
          f"(added: {', '.join(result['added']) or 'none'}; "
          f"removed: {', '.join(result['removed']) or 'none'})")


def cmd_release(args: argparse.Namespace) -> None:
    if args.action == "status":
        query = urllib.parse.urlencode({"service": args.service})
        result = call(args, "GET", f"/v1/release/status?{query}",
                      fields=("environment", "service", "live", "colours"))
        print(f"{result['environment']}/{result['service']}: live colour {result['live']}")
        for colour, info in sorted(result["colours"].items()):
            line = (f"  {colour:<6} {info['role']:<9} version {info['version']:<12} "
                    f"replicas {info['replicas']}")
            if "tag" in info:
                line += f"  tag {info['tag']}"
            if "scale_down_in_seconds" in info:
                line += f"  (scaled down in {info['scale_down_in_seconds']:g}s)"
            print(line)
        return
    result = call(args, "POST", f"/v1/release/{args.action}", {"service": args.service},
                  timeout=_DEPLOY_TIMEOUT,
                  fields=("environment", "service", "version", "live", "previous"))
    print(f"{result['environment']}/{result['service']}: {result['version']} is live "
          f"({result['live']}; was {result['previous']})")


def cmd_promote(args: argparse.Namespace) -> None:
    _print_change(call(args, "POST", "/v1/promote", {"service": args.service},
                       timeout=_DEPLOY_TIMEOUT, fields=_CHANGE_FIELDS))
