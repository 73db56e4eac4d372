"""`wakegate env create|list|extend|delete`: ephemeral environments, through the running
controller (which alone makes and removes them)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from .client import call
from .exit import EXIT_USAGE, fail
from .output import human_seconds, print_table, when

# A delete waits for requests in flight (the environment's drain timeout) and the stops.
_DELETE_TIMEOUT = 300.0
# A create waits for the platform to show the new instances (Kubernetes).
_CREATE_TIMEOUT = 120.0
_ENTRY_FIELDS = ("name", "kind", "source", "created", "expires", "expires_in", "services")


def _path(name: str) -> str:
    return f"/v1/environments/{urllib.parse.quote(name, safe='')}"


def _versions(pairs: list[str]) -> dict[str, str]:
    versions: dict[str, str] = {}
    for pair in pairs:
        service, sep, version = pair.partition("=")
        if not sep or not service or not version:
            fail(f"--set {pair!r}: give SERVICE=VERSION, e.g. --set api=1.4.0", EXIT_USAGE)
        if service in versions:
            fail(f"--set {service}=...: given twice; give each service once", EXIT_USAGE)
        versions[service] = version
    return versions


def cmd_env_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "from": args.source}
    if args.access is not None:
        body["access"] = args.access
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.set:
        body["versions"] = _versions(args.set)
    result = call(args, "POST", "/v1/environments", body, timeout=_CREATE_TIMEOUT,
                  fields=("name", "source", "access", "expires", "urls"))
    print(f"{result['name']}: ephemeral environment made from {result['source']}, "
          f"{result['access']}, expires {when(result['expires'])}; asleep until its first "
          "request")
    width = max((len(service) for service in result["urls"]), default=0)
    for service, url in sorted(result["urls"].items()):
        print(f"  {service.ljust(width)}  {url}")
    if "key" in result:
        print(f"API key for every service of {result['name']} (shown only this once; only "
              "its hash is stored):")
        print(result["key"])


def _expires_in(entry: dict[str, Any]) -> str:
    return "-" if entry["expires_in"] is None else human_seconds(entry["expires_in"])


def cmd_env_list(args: argparse.Namespace) -> None:
    entries = call(args, "GET", "/v1/environments", fields=("environments",))["environments"]
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    rows = [{
        "name": entry["name"], "kind": entry["kind"], "source": entry["source"] or "-",
        "created": when(entry["created"]) if entry["created"] is not None else "-",
        "expires_in": _expires_in(entry),
        "services": ", ".join(f"{svc} {info['state']}"
                              for svc, info in sorted(entry["services"].items())) or "-",
    } for entry in entries]
    print_table(rows, ("name", "kind", "source", "created", "expires_in", "services"))


def cmd_env_extend(args: argparse.Namespace) -> None:
    entry = call(args, "POST", f"{_path(args.name)}/extend", {"ttl": args.ttl},
                 fields=_ENTRY_FIELDS)
    print(f"{entry['name']}: expires {when(entry['expires'])} (in {_expires_in(entry)})")


def cmd_env_delete(args: argparse.Namespace) -> None:
    result = call(args, "DELETE", _path(args.name), timeout=_DELETE_TIMEOUT,
                  fields=("name", "deleted"))
    print(f"{result['name']}: deleted (its processes stopped; its key and state are gone)")

