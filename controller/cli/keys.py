"""`wakegate keys create|list|revoke`: the API keys of private instances, through the
running controller (which alone writes them)."""

from __future__ import annotations

import argparse
import json
import urllib.parse

from .client import call
from .output import print_table, when


def cmd_keys_create(args: argparse.Namespace) -> None:
    result = call(args, "POST", "/v1/keys", {"service": args.service, "environment": args.env},
                  fields=("environment", "service", "key"))
    print(f"New API key for {result['environment']}/{result['service']} "
          "(shown only this once; only its hash is stored):")
    print(result["key"])


def cmd_keys_list(args: argparse.Namespace) -> None:
    query = f"?{urllib.parse.urlencode({'service': args.service})}" if args.service else ""
    rows = call(args, "GET", f"/v1/keys{query}", fields=("keys",))["keys"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["created"] = when(row["created"])
        row["last_used"] = when(row["last_used"]) if row["last_used"] else "never"
    print_table(rows, ("id", "environment", "service", "created", "last_used"))


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    result = call(args, "DELETE", f"/v1/keys/{urllib.parse.quote(args.id, safe='')}",
                  fields=("id", "environment", "service"))
    print(f"revoked key {result['id']} of {result['environment']}/{result['service']}: "
          "every proxy refuses it from now on")
