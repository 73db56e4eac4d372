"""`wakegate status`: every instance's state, as the running controller tells it."""

from __future__ import annotations

import argparse
import json

from .client import call
from .output import human_seconds, print_table


def cmd_status(args: argparse.Namespace) -> None:
    rows = call(args, "GET", "/v1/status", fields=("instances",))["instances"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        # ready/desired, as kubectl's READY column: more wanted (waking, or under load),
        # fewer (the load dropped), or equal.
        row["replicas"] = f"{row['replicas']}/{row.get('desired_replicas', row['replicas'])}"
        row["idle"] = human_seconds(row["idle_seconds"]) if row["idle_seconds"] else "-"
        if row.get("backoff_seconds"):
            row["state"] = (f"{row['state']} (crash back-off: {row['failures_in_a_row']} "
                            f"failed starts, next try in {row['backoff_seconds']:g}s)")
        elif row["state"] == "sleeping" and row.get("error"):
            row["state"] = "sleeping (last start failed)"
        row["prefix"] = row.get("prefix") or "-"
        row.setdefault("tag", row["version"])  # a controller from before prefixes
    print_table(rows, ("environment", "service", "state", "replicas", "version", "prefix", "tag",
                       "idle", "url"))
    failed = [row for row in rows if row.get("error")]
    if failed:
        print()
        for row in failed:
            print(f"{row['environment']}/{row['service']}: last start failed: {row['error']}")
