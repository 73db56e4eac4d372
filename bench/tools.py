"""What every scenario needs: the tools, processes stopped by pid, memory, percentiles, wrk.

Nothing here measures anything on its own; the scenarios (warm, hold, routes,
sleep_accuracy) do, and write bench/results/<name>.json through `write_result`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.coldstart import REPO, Wakegate, _free_port
from bench.cpu import cmdline, is_wakegate_proxy

RESULTS = REPO / "bench" / "results"
# nginx and haproxy live in sbin, which is not on every user's PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

free_port = _free_port


class Skip(Exception):
    """A scenario that cannot run here (a tool is missing); the run goes on."""


def find_tool(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(name, path=path)


def need_tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        raise Skip(f"{name} is not installed (make bench installs it with apt-get when allowed)")
    return found


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit (children inherit it); the soft limit reached.

    As root the hard limit can be raised too; otherwise the soft limit goes up to the hard.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
        return want
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def workdir(scenario: str) -> Iterator[Path]:
    """A temporary directory for configs and logs; BENCH_KEEP=1 keeps it (logs to read)."""
    if os.environ.get("BENCH_KEEP") == "1":
        path = Path(tempfile.mkdtemp(prefix=f"wakegate-bench-{scenario}-"))
        print(f"{scenario}: keeping {path}", file=sys.stderr)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"wakegate-bench-{scenario}-") as tmp:
        yield Path(tmp)


# --- processes ---


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """SIGTERM by pid, then SIGKILL if it outlives `timeout`; never by name."""
    if proc is None or proc.poll() is not None:
        if proc is not None:
            proc.wait()
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spawn(argv: Sequence[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """A child with its output in `log`, stdin closed, started from the repository."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=kwargs.pop("cwd", REPO), **kwargs)


@contextlib.contextmanager
def wakegate(workdir: Path, config: dict[str, Any], args: Sequence[str] = ()) -> Iterator[Wakegate]:
    """A `wakegate up` with this config (top-level keys), stopped by pid on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    wg = Wakegate(workdir, config, args)
    try:
        yield wg
    finally:
        stop(wg.proc, 30)


def wait_http(port: int, host: str = "localhost", path: str = "/", timeout: float = 20.0,
              proc: subprocess.Popen[Any] | None = None, log: Path | None = None) -> None:
    """Until http://127.0.0.1:port/path answers anything (any status counts: it listens)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            said = log.read_text(errors="replace").strip()[-1500:] if log else ""
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while starting: "
                               f"{said}")
        try:
            http_get(port, host, path, timeout=1.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answered on 127.0.0.1:{port}") from None
            time.sleep(0.02)


def http_get(port: int, host: str, path: str = "/", timeout: float = 5.0,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Host": host, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def api(wg: Wakegate, path: str) -> Any:
    """GET a controller API path of this wakegate, with its token."""
    request = urllib.request.Request(f"http://127.0.0.1:{wg.api_port}{path}",
                                     headers={"Authorization": f"Bearer {wg.token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def metric(port: int, name: str) -> float:
    """The sum of one metric's samples on wakegate's /metrics (the proxy's own Host)."""
    _, body = http_get(port, "127.0.0.1", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- memory (from /proc, in KiB) ---


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def wakegate_pids(root: int) -> list[int]:
    """wakegate's own processes: `root` and its descendants that run wakegate, not services."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [root], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            argv = cmdline(pid)
        except OSError:
            continue
        # Worker processes of wakegate run its code; replicas run the service's command
        # (nginx rewrites its own: "nginx: master process ... -p /tmp/wakegate-bench-...").
        if is_wakegate_proxy(argv):
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def rss_kib(root: int) -> int:
    """Resident memory of wakegate's processes now."""
    return sum(_status_field(pid, "VmRSS") for pid in wakegate_pids(root))


def peak_rss_kib(root: int) -> int:
    """The sum of each wakegate process's resident high-water mark (VmHWM)."""
    return sum(_status_field(pid, "VmHWM") for pid in wakegate_pids(root))


# --- numbers ---


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    ms = [round(percentile(ordered, q) * 1000, 3) for q in (50, 90, 99, 99.9)]
    return {"n": len(ordered), "p50_ms": ms[0], "p90_ms": ms[1], "p99_ms": ms[2],
            "p999_ms": ms[3],
            "max_ms": round(ordered[-1] * 1000, 3) if ordered else float("nan")}


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2 if n else float("nan")


# --- wrk ---

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (--latency) and errors from wrk's report."""
    result: dict[str, Any] = {"errors": 0, "non_2xx": 0}
    for line in output.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif re.fullmatch(r"\s+(50|90|99)%\s+\S+", line):
            result[f"p{words[0].rstrip('%')}_ms"] = round(_ms(words[1]), 3)
        elif "requests in" in line:
            result["requests"] = int(words[0])
        elif line.startswith("  Socket errors:"):
            result["errors"] = sum(int(n.rstrip(",")) for n in words[3::2])
        elif line.startswith("  Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(words[-1])
    if "rps" not in result:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    return result


def run_wrk(url: str, host: str, seconds: float, connections: int = 64,
            threads: int = 1) -> dict[str, Any]:
    """One closed-loop run: `connections` keep-alive connections as fast as they go."""
    argv = [need_tool("wrk"), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "-H", f"Host: {host}", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# --- results ---


def _tool_version(name: str) -> str | None:
    path = find_tool(name)
    if path is None:
        return None
    flag = {"nginx": "-v", "haproxy": "-v", "wrk": "-v"}[name]
    done = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "tools": {name: _tool_version(name) for name in ("wrk", "nginx", "haproxy")},
    }


def write_result(result: dict[str, Any], results: Path | None = None) -> Path:
    """bench/results/<scenario>.json, with the machine it ran on."""
    result.setdefault("machine", machine())
    result.setdefault("finished_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    folder = results or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result['scenario']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def skipped(scenario: str, reason: str) -> dict[str, Any]:
    return {"scenario": scenario, "status": "skipped", "reason": reason}
