"""CPU time of the processes that proxy, from /proc: what a fixed load cost them, per request.

The machine is shared and noisy: req/s moves with whatever else runs, but the
CPU time a proxy spends on a given number of requests hardly does. So the
warm scenario reads utime + stime (fields 14 and 15 of /proc/<pid>/stat, in
clock ticks) of the proxy's own processes before and after each wrk run, and
divides by the requests wrk got answered. Never counted: the children's
cutime/cstime (fields 16 and 17), the backend, the load generator.

Which processes a target counts is decided when the load starts (a `Counted`
list, with a description each, so the result says what was summed).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Counted:
    pid: int
    what: str

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid})"


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name (field 3, state, first)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        # The name (field 2) is in parentheses and may hold spaces or ")".
        return f.read().rsplit(b")", 1)[1].split()


def cpu_ticks(pid: int) -> int:
    """utime + stime of this process (every thread of it), not of its children, in ticks."""
    fields = _stat_fields(pid)
    return int(fields[14 - 3]) + int(fields[15 - 3])


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]


def children(pid: int) -> list[int]:
    """The direct children of `pid`: /proc/<pid>/task/*/children, or the ppid of every process."""
    tasks = Path(f"/proc/{pid}/task")
    files = list(tasks.glob("*/children")) if tasks.exists() else []
    if files:
        found: list[int] = []
        for path in files:
            try:
                found += [int(p) for p in path.read_text().split()]
            except OSError:
                continue
        return sorted(set(found))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except (OSError, IndexError):
            continue
        if int(fields[4 - 3]) == pid and fields[0] != b"Z":
            found.append(int(entry))
    return sorted(found)


def _short(argv: list[str], limit: int = 60) -> str:
    text = " ".join(argv)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def tree(root: int, role: str = "") -> list[Counted]:
    """`root` and all its descendants: a proxy that forks its own workers (nginx), or none.

    Each is described by its command line (nginx rewrites its own: "nginx: master
    process ...", "nginx: worker process"); `role` is put before the root's.
    """
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        try:
            what = _short(cmdline(pid))
        except OSError:
            continue
        found.append(Counted(pid, (f"{role}: {what}" if role else what) if pid == root
                             else f"{what}, child of pid {root}"))
        todo += children(pid)
    return found


def is_wakegate_proxy(argv: list[str]) -> bool:
    """A `wakegate proxy` worker (started by `wakegate up --workers N`), not a service replica."""
    if "controller.cli" in argv:
        return "proxy" in argv[argv.index("controller.cli") + 1:]
    return bool(argv) and os.path.basename(argv[0]) == "wakegate" and "proxy" in argv[1:2]


def wakegate(root: int) -> list[Counted]:
    """`wakegate up` itself (controller and proxy worker 1 in one process) and its proxy
    workers 2..N; not the service replicas it runs (the backend, another child of it)."""
    found = [Counted(root, "wakegate up: controller + proxy worker 1, one process")]
    for pid in children(root):
        try:
            argv = cmdline(pid)
        except OSError:
            continue
        if is_wakegate_proxy(argv):
            index = argv[argv.index("--worker-index") + 1] if "--worker-index" in argv else "?"
            found.append(Counted(pid, f"wakegate proxy worker {index}"))
    return found


def left_out(counted: list[Counted]) -> list[Counted]:
    """The children of counted processes that are not counted themselves (e.g. the backend)."""
    pids = {c.pid for c in counted}
    out = []
    for parent in counted:
        for pid in children(parent.pid):
            if pid not in pids:
                with contextlib.suppress(OSError):
                    out.append(Counted(pid, f"child of pid {parent.pid}: {_short(cmdline(pid))}"))
    return out


def snapshot(counted: list[Counted]) -> dict[int, int]:
    """Ticks of each counted process now; a counted process that is gone is an error."""
    try:
        return {c.pid: cpu_ticks(c.pid) for c in counted}
    except (OSError, IndexError, ValueError) as exc:
        raise RuntimeError(f"a counted process is gone: {exc} ({counted})") from None


def seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    return sum(after[pid] - before[pid] for pid in before) / CLK_TCK
