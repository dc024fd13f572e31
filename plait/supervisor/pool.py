"""WorkerPool: keeps the desired number of healthy worker processes.

A reconciliation loop (after circus's ``reap_and_manage_processes``): each
:meth:`WorkerPool.reconcile` reaps dead processes, reports them, and starts or
retires processes until the observed pool matches the desired one. A worker
that dies before it ever says it is ready is a startup failure: restarts back
off exponentially, and too many in a row is a crash loop, which stops the
supervisor loudly instead of burning CPU forever.

Workers are subprocesses (``python -m plait.supervisor.worker``): a clean
interpreter per worker, a pid to signal, and an exit status to report.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from plait.errors import PlaitError
from plait.protocol.messages import Assign

log = logging.getLogger("plait.supervisor")


class CrashLoop(PlaitError):
    """Workers keep dying before they are ready (a broken import, a bad environment)."""

    code = "crash_loop"


@dataclass(eq=False)
class Worker:
    """One worker process and what the supervisor knows of it."""

    ident: bytes
    proc: subprocess.Popen[bytes]
    started: float
    ready: bool = False
    assign: Assign | None = None
    waiting: bool = False  # its task awaits other nodes (Wait sent, no Resolved yet)
    cancelling: bool = False
    evicting: bool = False  # told to drop its waiting task; WorkerReady says it has
    retiring: bool = False
    idle_since: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def idle(self) -> bool:
        return self.ready and self.assign is None and not self.retiring

    def key(self) -> tuple[str, str] | None:
        return (self.assign.workflow_id, self.assign.node) if self.assign else None


@dataclass(frozen=True)
class Death:
    """A worker process that exited, and why."""

    worker: Worker
    returncode: int

    def describe(self) -> str:
        code = self.returncode
        why = f"signal {-code}" if code < 0 else f"exit code {code}"
        return f"worker pid {self.worker.pid} died ({why})"


@dataclass
class PoolSettings:
    endpoint: str
    imports: Sequence[str]
    size: int
    max_size: int
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    crash_limit: int = 5
    linger: float = 10.0  # an extra idle worker is retired after this many seconds
    path: Sequence[str] = field(default_factory=lambda: list(sys.path))


class WorkerPool:
    """N worker processes, plus one extra per task that waits (up to ``max_size``)."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.workers: dict[bytes, Worker] = {}
        self._serial = itertools.count(1)
        self._failures = 0  # consecutive startup failures
        self._not_before = 0.0

    # --- desired state ---------------------------------------------------------------

    def waiting(self) -> int:
        return sum(1 for w in self.workers.values() if w.waiting)

    def target(self) -> int:
        """Processes wanted: N, plus a stand-in for each worker held by a waiting task."""
        s = self.settings
        return s.size + min(self.waiting(), max(s.max_size - s.size, 0))

    def idle(self) -> Worker | None:
        return next((w for w in self.workers.values() if w.idle), None)

    def reconcile(self, now: float) -> list[Death]:
        """Reap, then start or retire processes; returns the deaths since last time."""
        deaths = self._reap(now)
        live = [w for w in self.workers.values() if not w.retiring]
        if len(live) < self.target() and now >= self._not_before:
            for _ in range(self.target() - len(live)):
                self._start(now)
        elif len(live) > self.target():
            # Waits come and go quickly; keeping a spare a while avoids restart churn.
            spare = [w for w in live if w.idle and now - w.idle_since >= self.settings.linger]
            for w in spare[: len(live) - self.target()]:
                w.retiring = True
                self.signal(w, signal.SIGTERM)
        return deaths

    def _reap(self, now: float) -> list[Death]:
        deaths = []
        for w in list(self.workers.values()):
            code = w.proc.poll()
            if code is None:
                continue
            del self.workers[w.ident]
            deaths.append(Death(w, code))
            if w.retiring:
                continue
            if not w.ready:
                self._failures += 1
                log.error("worker pid %d died before it was ready (code %s), %d in a row",
                          w.pid, code, self._failures)
                if self._failures >= self.settings.crash_limit:
                    raise CrashLoop(f"{self._failures} workers in a row died before they were "
                                    f"ready (last exit code {code}); check the task modules "
                                    f"{list(self.settings.imports)} import cleanly")
            delay = min(self.settings.backoff_initial * 2 ** self._failures,
                        self.settings.backoff_max)
            self._not_before = max(self._not_before, now + delay)
        return deaths

    def _start(self, now: float) -> Worker:
        s = self.settings
        ident = f"w{os.getpid()}-{next(self._serial)}"
        cmd = [sys.executable, "-m", "plait.supervisor.worker", "--connect", s.endpoint,
               "--ident", ident]
        for module in s.imports:
            cmd += ["--import", module]
        env = dict(os.environ)
        path = [p or os.getcwd() for p in s.path]
        env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        worker = Worker(ident.encode(), proc, now)
        self.workers[worker.ident] = worker
        log.info("started worker pid %d (%s)", proc.pid, ident)
        return worker

    # --- observed events ----------------------------------------------------------------------

    def on_ready(self, ident: bytes, now: float) -> Worker | None:
        worker = self.workers.get(ident)
        if worker is not None:
            worker.ready, worker.idle_since = True, now
            self._failures = 0
        return worker

    def signal(self, worker: Worker, sig: int) -> None:
        # It may exit between poll and signal: the next reap reports it.
        if worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)

    def stop(self, timeout: float = 3.0) -> None:
        """Terminate every worker; kill those still alive after ``timeout``."""
        for w in self.workers.values():
            self.signal(w, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            try:
                w.proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self.workers.clear()
