"""Finding and reading the processes a test started, from /proc: each carries a marker in
its environment, so that a test can tell its own from everyone else's."""

from __future__ import annotations

import os
from collections.abc import Iterator


def stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None if
    the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running, not a zombie (one that exited and whose parent has not waited for it)."""
    fields = stat(pid)
    return fields is not None and fields[0] != b"Z"


def live_pids() -> Iterator[int]:
    """Every live process."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and alive(int(entry)):
            yield int(entry)


def _nul_separated(pid: int, name: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []  # gone, or not ours to read


def environ(pid: int) -> list[bytes]:
    """The process's environment as NAME=value entries; [] if it cannot be read."""
    return _nul_separated(pid, "environ")


def environment(pid: int) -> dict[str, str]:
    """The process's environment as a dict."""
    pairs = (item.decode(errors="replace").split("=", 1) for item in environ(pid) if item)
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def cmdline(pid: int) -> list[bytes]:
    """The process's argv; [] if it cannot be read."""
    return _nul_separated(pid, "cmdline")


def processes_with(marker_name: str, marker: str) -> list[int]:
    """Pids of live processes whose environment carries NAME=marker."""
    needle = f"{marker_name}={marker}".encode()
    return [pid for pid in live_pids() if needle in environ(pid)]
