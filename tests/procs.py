"""Finding the processes a test started: each carries a marker in its environment."""

from __future__ import annotations

import os


def processes_with(marker_name: str, marker: str) -> list[int]:
    """Pids of live processes whose environment carries NAME=marker."""
    needle = f"{marker_name}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":
            continue  # exited; only its parent's wait is missing
        if needle in environ.split(b"\0"):
            pids.append(int(entry))
    return pids
