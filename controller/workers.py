"""Worker processes: more `wakegate proxy` processes serving the same port (SO_REUSEPORT).

`wakegate proxy --workers N` and `wakegate up --workers N`: the process itself
is worker 1 and binds the port first (so that port 0 is resolved before the
others start); workers 2..N are `wakegate proxy` children started by
`Workers`, each bound to that port with SO_REUSEPORT, so that the kernel
spreads new connections over all of them. Each child is a proxy of its own as
far as the controller is concerned: it watches the route table and reports
its activity like any `wakegate proxy` (GET /v1/proxies lists it).

Hygiene: a child dies with its parent (PR_SET_PDEATHSIG, SIGTERM, so that it
still says goodbye to the controller), stays in the parent's process group
(Ctrl-C reaches the parent, which stops its children in order; children
ignore SIGINT themselves), and is stopped by its pid: SIGTERM, a deadline,
then SIGKILL. A child that dies unexpectedly is restarted with capped
exponential back-off; a crash loop is logged once, not at every attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from common.backoff import Backoff

# The local runtime's replicas die with their parent too; they get SIGKILL, workers
# SIGTERM, so that they report a last time.
from .runtimes.local import die_with_parent

log = logging.getLogger("wakegate.workers")

MAX_WORKERS = 64
# A child prints these on its stdout (a pipe to the parent) and nothing else.
LISTENING_LINE = "wakegate-worker: listening"
READY_LINE = "wakegate-worker: ready"  # it has its first route table (/readyz 200)
START_TIMEOUT = 30.0  # for every child to reach the stage its parent waits for
STOP_GRACE = 5.0  # a proxy closes within ~3 s (2 s shutdown + a 1 s last report)
RESTART_FIRST = 0.25  # seconds before the first restart of a child that died
RESTART_CAP = 30.0
STEADY = 30.0  # a child up this long is healthy again: back-off and logging start over

Argv = Callable[[int], list[str]]


def parse_workers(text: str) -> int:
    """argparse `type` of --workers: a whole number from 1 to MAX_WORKERS."""
    text = text.strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_WORKERS):
        raise argparse.ArgumentTypeError(
            f"give a whole number from 1 to {MAX_WORKERS} (processes serving the "
            f"proxy port, this one included), got {text!r}"
        )
    return int(text)


class WorkerFailed(Exception):
    """A child did not get to the stage its parent waited for."""


def _term_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec. The check closes the window in
    # which the parent died before the prctl: then nobody would signal us.
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Worker:
    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.listening = False
        self.ready = False
        self.failed: str | None = None  # how it ended while its parent was starting
        self.announce = False  # log once that it is back after a logged death
        self.task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None


class Workers:
    """Workers `first`..`first + count - 1`, started by `start`, supervised until `stop`."""

    def __init__(self, argv: Argv, count: int, first: int = 2) -> None:
        self._workers = [_Worker(i, argv(i)) for i in range(first, first + count)]
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        # Restarts begin only once the parent is up; before, a death fails the start.
        self._supervising = False

    def __len__(self) -> int:
        return len(self._workers)

    def pids(self) -> list[int]:
        return [pid for w in self._workers if (pid := w.pid) is not None]

    async def start(self) -> None:
        for worker in self._workers:
            await self._spawn(worker)
            worker.task = asyncio.ensure_future(self._supervise(worker))

    async def wait(self, stage: str, timeout: float = START_TIMEOUT) -> None:
        """Until every child is `listening` or `ready`; WorkerFailed if one ends first."""
        assert stage in ("listening", "ready")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    failed = [w for w in self._workers if w.failed is not None]
                    if failed:
                        w = failed[0]
                        raise WorkerFailed(f"worker {w.index} {w.failed} before it was {stage}; "
                                           "its log is above")
                    if all(getattr(w, stage) for w in self._workers):
                        break
                    await self._changed.wait()
        except TimeoutError:
            late = [str(w.index) for w in self._workers if not getattr(w, stage)]
            raise WorkerFailed(f"worker {', '.join(late)} not {stage} within {timeout:g}s") \
                from None
        self._supervising = True

    def kill_now(self) -> None:
        """Last resort on the way out (a second Ctrl-C): no await, no grace."""
        self._stopping.set()
        for worker in self._workers:
            _signal(worker, signal.SIGKILL)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every child by its pid, wait up to `grace`, then SIGKILL what is left."""
        self._stopping.set()
        for worker in self._workers:
            _signal(worker, signal.SIGTERM)
        tasks = [w.task for w in self._workers if w.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        if late:
            for worker in self._workers:
                if worker.pid is not None:
                    log.warning("worker %d (pid %d) did not stop within %gs of SIGTERM; "
                                "killing it", worker.index, worker.pid, grace)
                _signal(worker, signal.SIGKILL)
            _, late = await asyncio.wait(late, timeout=grace)
        for task in late:  # only if a SIGKILLed child could not be reaped: never wait forever
            task.cancel()

    # --- one child ---

    async def _spawn(self, worker: _Worker) -> None:
        worker.listening = worker.ready = False
        preexec = functools.partial(_term_with_parent, os.getpid())
        worker.proc = await asyncio.create_subprocess_exec(
            *worker.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,  # the stage lines; its log goes to our stderr
            preexec_fn=preexec,
        )
        worker.started = time.monotonic()
        if self._stopping.is_set():
            _signal(worker, signal.SIGTERM)  # stop() ran while this one was being made

    async def _supervise(self, worker: _Worker) -> None:
        # No jitter: one supervisor restarting its own children is no thundering herd.
        backoff, failing = Backoff(RESTART_FIRST, RESTART_CAP, jitter=False), False
        while True:
            code = await self._run(worker)
            if self._stopping.is_set():
                return
            if not self._supervising:
                worker.failed = describe_exit(code)
                self._changed.set()
                return
            if time.monotonic() - worker.started >= STEADY:
                backoff.reset()
                failing = False
            delay = backoff.next()
            # Once per crash loop; the retries after it are logged at debug level.
            level = logging.DEBUG if failing else logging.WARNING
            log.log(level, "worker %d (pid %d) %s; restarting it in %gs", worker.index,
                    worker.proc.pid if worker.proc else 0, describe_exit(code), delay)
            worker.announce = worker.announce or not failing
            failing = True
            if not await self._spawn_after(worker, delay):
                return

    async def _spawn_after(self, worker: _Worker, delay: float) -> bool:
        """Restart `worker` after `delay` (longer while it cannot even be started: a back-off
        of its own, so failed starts do not lengthen the wait after the next crash)."""
        backoff = Backoff(delay, max(delay, RESTART_CAP), jitter=False)
        backoff.next()  # `delay` is the first wait; the next failed start waits twice as long
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return False
            try:
                await self._spawn(worker)
                return True
            except OSError as exc:
                log.debug("worker %d cannot be started (%s); trying again", worker.index, exc)
                delay = backoff.next()

    async def _run(self, worker: _Worker) -> int:
        """Follow the child's stage lines until it ends; its exit code."""
        proc = worker.proc
        assert proc is not None and proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line == LISTENING_LINE:
                worker.listening = True
                if worker.announce:
                    worker.announce = False
                    log.info("worker %d is back (pid %d)", worker.index, proc.pid)
            elif line == READY_LINE:
                worker.ready = True
            self._changed.set()
        return await proc.wait()


def _signal(worker: _Worker, sig: int) -> None:
    # By the pid of a child not yet reaped, so the pid cannot have been reused.
    proc = worker.proc
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def child_argv(
    controller: str, host: str, port: int, index: int, log_args: list[str],
    report_interval: str, config: str | None,
) -> list[str]:
    """The command line of worker `index`: `wakegate proxy` bound with SO_REUSEPORT."""
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv: list[str] = [
        sys.executable, "-m", "controller.cli", "proxy", "--controller", controller,
        "--listen", listen, "--report-interval", report_interval, *log_args,
        "--reuse-port", "--worker-index", str(index),
    ]
    if config is not None:
        argv += ["-c", os.path.abspath(config)]
    return argv


def loopback_for(host: str) -> str:
    """Where a child reaches a controller listening on `host` (a wildcard: via loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host

