"""WorkerPool: the pykka actor that owns the supervisor's worker processes.

Only this actor starts, polls, signals and stops worker processes. On its own
timer (every ``tick`` seconds, after circus's ``reap_and_manage_processes``) it
reaps dead processes, starts processes until ``target`` are alive, and
escalates the cancellations in progress (the :class:`~plait.supervisor.cancel.
Canceller` deadlines live here, so that the signals come from the owner of the
processes). A worker that dies before it is ready is a startup failure:
restarts back off exponentially, and too many in a row is a crash loop, which
stops the supervisor loudly instead of burning CPU forever. A fork that fails
(the machine out of processes or memory) is tried again after ``backoff_max``:
it may pass, and the workers still running go on meanwhile.

The Relay (the supervisor's poll loop) tells the pool what it decides
(:class:`Scale`, :class:`Ready`, :class:`Retire`, :class:`Cancel`,
:class:`Settle`), and the pool reports what happens to the processes through an
inproc PUSH socket it creates in its own thread (the Relay polls the PULL end,
so it never blocks on the actor): ``started`` (ident, pid), ``died`` (ident,
pid, exit status), ``crash_loop`` and ``failed`` (reason). Events are msgpack
dicts (:func:`plait.protocol.codec.pack`), never pickles.

Workers are forked by the supervisor's zygote (:mod:`plait.supervisor.zygote`),
which this actor alone talks to: it asks for a worker, has it signalled, and
collects exit statuses from it. A worker is a process of its own (a pid to
signal, an exit status to report) that imports its task modules after the
fork; what it shares with the zygote is plait itself, already imported.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka
import zmq

from plait.actors.registry import safe_tell
from plait.actors.timers import Timers
from plait.errors import PlaitError
from plait.protocol import codec
from plait.supervisor.cancel import Canceller
from plait.supervisor.zygote import Zygote, ZygoteGone

log = logging.getLogger("plait.supervisor")


class CrashLoop(PlaitError):
    """Workers keep dying before they are ready (a broken import, a bad environment)."""

    code = "crash_loop"


@dataclass
class PoolSettings:
    endpoint: str  # the Relay's ROUTER, which workers connect to
    events: str  # the Relay's inproc PULL, which the pool reports to
    imports: Sequence[str]
    size: int
    max_size: int
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    crash_limit: int = 5
    cancel_grace: float = 5.0
    kill_grace: float = 2.0
    tick: float = 0.05  # seconds between reaps and cancel escalations
    stop_timeout: float = 3.0  # SIGTERM, then SIGKILL after this many seconds
    max_frame_size: int = codec.DEFAULT_MAX_SIZE  # the largest message a worker sends


# --- what the Relay tells the pool ----------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Keep ``target`` processes alive (not counting those retiring)."""

    target: int


@dataclass(frozen=True)
class Ready:
    """The worker said WorkerReady: it started cleanly."""

    ident: bytes


@dataclass(frozen=True)
class Retire:
    """An idle spare the Relay no longer routes to: SIGTERM it."""

    ident: bytes


@dataclass(frozen=True)
class Cancel:
    """The worker was told CancelTask: SIGTERM after the grace, then SIGKILL."""

    ident: bytes


@dataclass(frozen=True)
class Settle:
    """The worker is done with the attempt being cancelled: no escalation."""

    ident: bytes


@dataclass(frozen=True)
class _Tick:
    pass


@dataclass(eq=False)
class _Process:
    ident: bytes
    pid: int
    ready: bool = False
    retiring: bool = False
    kill_at: float | None = None  # retiring: SIGKILL then, if it ignored the SIGTERM


class WorkerPool(pykka.ThreadingActor):
    """N worker processes (the Relay's ``Scale`` target), each restarted when it dies."""

    def __init__(self, zctx: zmq.Context[Any], settings: PoolSettings, zygote: Zygote) -> None:
        super().__init__()
        self._zctx = zctx
        self._zygote = zygote
        self.settings = settings
        self._procs: dict[bytes, _Process] = {}
        self._target = settings.size
        self._serial = itertools.count(1)
        self._failures = 0  # consecutive startup failures
        self._not_before = 0.0
        self._gave_up = False
        self._cancels = Canceller(settings.cancel_grace, settings.kill_grace)
        self._timers = Timers(name="plait-pool-timer")

    def on_start(self) -> None:
        # Created here so that the PUSH socket is used by this actor's thread only.
        self._events = self._zctx.socket(zmq.PUSH)
        self._events.setsockopt(zmq.LINGER, 0)
        self._events.connect(self.settings.events)
        ref = self.actor_ref
        ref.tell(_Tick())  # the first workers start now, and a failure goes to on_failure

        def tick() -> None:
            safe_tell(ref, _Tick())

        self._timers.every(self.settings.tick, tick)
        self._timers.start()

    def on_stop(self) -> None:
        self._timers.stop()
        self._stop_workers()
        self._events.close(linger=0)

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        # pykka stops a failed actor without on_stop: leave no process or socket behind,
        # and tell the Relay, which stops the supervisor.
        self._timers.stop()
        self._report("failed", reason=f"worker pool failed: {exception_value!r}")
        self._stop_workers()
        self._events.close(linger=0)

    def on_receive(self, message: Any) -> Any:
        now = time.monotonic()
        if isinstance(message, _Tick):
            self._reconcile(now)
        elif isinstance(message, Scale):
            self._target = message.target
            self._reconcile(now)
        elif isinstance(message, Ready):
            self._on_ready(message.ident)
        elif isinstance(message, Retire):
            self._retire(message.ident, now)
        elif isinstance(message, Cancel):
            if message.ident in self._procs:  # else reaped already: nothing to escalate
                self._cancels.start(message.ident, now)
        elif isinstance(message, Settle):
            self._cancels.clear(message.ident)
        else:
            return super().on_receive(message)
        return None

    # --- the timer's work ------------------------------------------------------------------

    def _reconcile(self, now: float) -> None:
        """Reap, start processes up to the target, escalate cancellations."""
        self._reap(now)
        live = sum(1 for p in self._procs.values() if not p.retiring)
        if live < self._target and now >= self._not_before and not self._gave_up:
            for _ in range(self._target - live):
                try:
                    self._start()
                except OSError as exc:  # out of processes or memory: it may pass
                    log.error("%s; trying again in %g s", exc, self.settings.backoff_max)
                    self._not_before = now + self.settings.backoff_max
                    break
        for p in self._procs.values():
            if p.kill_at is not None and now >= p.kill_at:
                # A task module's own SIGTERM handler kept it alive: each scale-down
                # would leave one more process behind.
                log.warning("worker pid %d ignored SIGTERM when retired: killing it", p.pid)
                p.kill_at = None
                self._zygote.signal(p.pid, signal.SIGKILL)
        for ident, sig in self._cancels.due(now):
            process = self._procs.get(ident)
            if process is not None:
                log.warning("cancel: sending signal %d to worker pid %d", sig, process.pid)
                self._zygote.signal(process.pid, sig)

    def _reap(self, now: float) -> None:
        exits = self._zygote.exits()  # ZygoteGone fails the actor: no worker can start
        for p in [p for p in self._procs.values() if p.pid in exits]:
            code = exits[p.pid]
            del self._procs[p.ident]
            self._cancels.clear(p.ident)
            self._report("died", ident=p.ident, pid=p.pid, code=code)
            if not p.retiring:
                self._on_death(p, code, now)

    def _on_death(self, p: _Process, code: int, now: float) -> None:
        s = self.settings
        if not p.ready:
            self._failures += 1
            log.error("worker pid %d died before it was ready (code %s), %d in a row",
                      p.pid, code, self._failures)
            if self._failures >= s.crash_limit and not self._gave_up:
                self._gave_up = True
                self._report("crash_loop", reason=(
                    f"{self._failures} workers in a row died before they were ready (last "
                    f"exit code {code}); check the task modules {list(s.imports)} import "
                    f"cleanly"))
        delay = min(s.backoff_initial * 2 ** self._failures, s.backoff_max)
        self._not_before = max(self._not_before, now + delay)

    def _start(self) -> None:
        s = self.settings
        ident = f"w{os.getpid()}-{next(self._serial)}"
        argv = ["--connect", s.endpoint, "--ident", ident,
                "--max-frame-size", str(s.max_frame_size)]
        for module in s.imports:
            argv += ["--import", module]
        pid = self._zygote.fork(argv)
        self._procs[ident.encode()] = _Process(ident.encode(), pid)
        self._report("started", ident=ident.encode(), pid=pid)
        log.info("started worker pid %d (%s)", pid, ident)

    # --- what the Relay tells ----------------------------------------------------------------

    def _on_ready(self, ident: bytes) -> None:
        process = self._procs.get(ident)
        if process is not None:
            process.ready = True
            self._failures = 0

    def _retire(self, ident: bytes, now: float) -> None:
        process = self._procs.get(ident)
        if process is not None:
            process.retiring = True
            process.kill_at = now + self.settings.stop_timeout
            self._zygote.signal(process.pid, signal.SIGTERM)

    def _report(self, event: str, **data: Any) -> None:
        # NOBLOCK: an inproc PUSH to a bound PULL does not fill up in practice, and the
        # pool must never wait on the Relay.
        with contextlib.suppress(zmq.Again):
            self._events.send(codec.pack({"event": event, **data}), zmq.NOBLOCK)

    def _stop_workers(self) -> None:
        """Terminate every worker; kill those still alive after ``stop_timeout``."""
        for p in self._procs.values():
            self._zygote.signal(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout
        killed = False
        try:
            while self._procs:
                left = deadline - time.monotonic()
                if left <= 0 and not killed:
                    for p in self._procs.values():
                        self._zygote.signal(p.pid, signal.SIGKILL)
                    killed, deadline = True, time.monotonic() + 30.0
                elif left <= 0:
                    log.error("workers %s outlived SIGKILL", sorted(p.pid for p in
                                                                   self._procs.values()))
                    break
                exits = self._zygote.exits(min(max(left, 0.0), 0.5))
                self._procs = {i: p for i, p in self._procs.items() if p.pid not in exits}
        except ZygoteGone:
            pass  # its workers exit on their own when they see their parent change
        self._procs.clear()
