"""The supervisor daemon: one per machine, between Flow and the worker processes.

Two components, so that every ZeroMQ socket is used by exactly one thread:

- The Relay (:class:`Supervisor`, the thread that calls :func:`run_supervisor`)
  owns the sockets: a DEALER to Flow (the :class:`~plait.supervisor.flow_link.
  FlowLink`), a ROUTER for the workers, and the PULL end of the pool's event
  socket. Its poll loop keeps the routing state (which worker runs which
  attempt, :mod:`plait.supervisor.routing`), credit and the Flow link.
- The WorkerPool (:mod:`plait.supervisor.pool`), a pykka actor, owns the worker
  processes: it starts, reaps (on its own timer), restarts with backoff,
  signals and stops them, detects crash loops, and escalates cancellations.
  The Relay only ``tell``s it what to do (a blocking call only at shutdown);
  the pool reports ``started``/``died``/``crash_loop`` through an inproc PUSH
  socket the Relay polls, so the Relay never waits on the actor.

What the Relay does:

- Flow link: Hello (tasks served, free slots, attempts in flight) on every
  (re)connection, heartbeats both ways, and every Propose/Wait/Finish kept
  until Flow answers it, so that it is re-sent after Flow restarts.
- Credit: Flow may assign as many attempts as the supervisor has free slots,
  plus ``prefetch`` more that wait here in a queue. The queue hides the round
  trip to Flow: a worker that finishes starts the next attempt at once instead
  of idling until Flow hears of it and answers. When every worker is busy, the
  next queued attempt goes *ahead* to one of them (one each), to start as soon
  as its current attempt ends, without waiting for this loop to hear of the end
  and answer. It is taken back (``Retract``) when that worker's task starts to
  wait, since the attempt may be a child it waits for, and when another worker
  is idle with nothing queued while the current attempt runs on. A worker whose
  task awaits other nodes counts as free (an extra process stands in for it, up to
  ``max_workers``). An attempt of a task with a timeout or a heartbeat timeout
  tells Flow when a worker starts it (``TaskHeartbeat(started=True)``): Flow
  counts those timeouts from then, so time in the queue is not the task's.
- Eviction: a task waiting for children stays resident in its worker while
  fewer than ``max_workers`` processes are busy. Otherwise, and always for a
  durable timer or signal, its Wait goes to Flow with ``resident=False`` and the
  worker gets ``Evict``: the task unwinds, reports nothing more, and the worker
  says ``WorkerReady`` when it is free again. Flow re-assigns the attempt, with
  its history, when the wait is over.
- Routing: Assign goes to an idle worker, or ahead to a busy one (see
  Credit); Proposed/Resolved go back to the
  worker that asked; CancelTask goes to the worker running that attempt (and
  the pool escalates to signals if the task does not stop). TaskHeartbeat and
  SetState go to Flow and, like every request, are re-sent until Flow
  acknowledges them.
- A Finish (or an evicted task's Wait) that Flow cannot read (too large, say)
  becomes a failed Finish saying why, once: no process holds that attempt.
- A worker's death (a ``died`` event) with an attempt in hand becomes a
  ``Finish`` with a retryable ``WorkerLost`` (``WorkflowCancelled`` if it was
  being cancelled); an attempt sent ahead to it goes back to the queue unless
  it had started; a
  ``crash_loop`` event stops the supervisor with
  :class:`~plait.supervisor.pool.CrashLoop`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pykka
import zmq
from pydantic import BaseModel, ConfigDict, Field

from plait.actors.registry import safe_tell
from plait.errors import PlaitError, ProtocolError
from plait.protocol import codec
from plait.protocol.messages import (
    Ack,
    Assign,
    AttemptRef,
    CancelTask,
    Credit,
    Error,
    Evict,
    Finish,
    Heartbeat,
    Hello,
    Message,
    Propose,
    Proposed,
    Resolved,
    Retract,
    Retracted,
    SetState,
    TaskHeartbeat,
    Wait,
    Welcome,
    WorkerReady,
)
from plait.protocol.sockets import waiting
from plait.stopping import stop_on_signals
from plait.supervisor.flow_link import FlowLink
from plait.supervisor.pool import (
    Cancel,
    CrashLoop,
    PoolSettings,
    Ready,
    Retire,
    Scale,
    Settle,
    WorkerPool,
)
from plait.supervisor.routing import Worker, Workers, attempt_of, describe_death
from plait.supervisor.worker import error_dict
from plait.supervisor.zygote import Zygote
from plait.task import Task, UnknownTask, import_user_module, registered

log = logging.getLogger("plait.supervisor")

_TICK = 0.05  # seconds between reconciliations when nothing arrives
_UPKEEP = 0.005  # seconds between rescales and heartbeat checks in a busy loop
# Per worker. Enough to cover Flow's round trip (a group commit included) many
# times over, so that Flow gets results and sends assignments in batches (bench/,
# 2 workers, 10,000-task map: 16 per worker gave ~90% of the throughput of 48, and
# 96 was no better than 48).
PREFETCH = 48
# A worker's current attempt has run this long (seconds) before an idle worker takes
# back the attempt sent ahead to it: a task that ran for a while may run for hours.
STEAL_AFTER = 0.01


def _default_flow() -> str:
    return os.environ.get("PLAIT_FLOW", "tcp://127.0.0.1:7100")


class SupervisorSettings(BaseModel):
    """How a supervisor runs (``plait supervisor`` maps its flags onto these)."""

    model_config = ConfigDict(extra="forbid")

    flow: str = Field(default_factory=_default_flow)
    imports: list[str] = Field(min_length=1)
    # Serve only the imported tasks on these queues (``@task(queue=...)``); None: all.
    queues: list[str] | None = Field(default=None, min_length=1)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_workers: int | None = Field(default=None, ge=1)  # None: 4 x workers
    # Assignments accepted beyond the free slots (None: PREFETCH per worker), queued here.
    prefetch: int | None = Field(default=None, ge=0)
    evict_waiting: bool = False  # evict every waiting task, even with room (tests use it)
    supervisor_id: str | None = None  # None: host-pid
    heartbeat_interval: float = Field(default=0.5, gt=0)
    heartbeat_timeout: float = Field(default=3.0, gt=0)
    cancel_grace: float = Field(default=5.0, ge=0)
    kill_grace: float = Field(default=2.0, ge=0)
    restart_backoff: float = Field(default=0.1, ge=0)
    restart_backoff_max: float = Field(default=5.0, ge=0)
    crash_limit: int = Field(default=5, ge=1)
    # The largest message a worker may send (as Flow's max_message_size, or less).
    max_frame_size: int = Field(default=codec.DEFAULT_MAX_SIZE, gt=0)


def import_tasks(modules: list[str], queues: list[str] | None = None) -> list[Task[Any, Any]]:
    """Import the task modules; the tasks they define (on ``queues``, if given) are the
    ones served."""
    for name in modules:
        import_user_module(name)
    tasks = registered(modules)
    if not tasks:
        raise PlaitError(f"no @task in {modules}: nothing to serve")
    if queues is not None:
        found = sorted({t.queue for t in tasks})
        tasks = [t for t in tasks if t.queue in queues]
        if not tasks:
            raise PlaitError(f"no task of {modules} is on queues {sorted(queues)} "
                             f"(their queues: {found}): nothing to serve")
    return tasks


class Supervisor:
    """The Relay: the poll loop over the Flow link, the worker ROUTER and the pool's
    events; it keeps credit and routing, and tells the WorkerPool actor what to do."""

    def __init__(self, settings: SupervisorSettings, tasks: list[Task[Any, Any]],
                 zygote: Zygote) -> None:
        self.settings = settings
        self.zygote = zygote
        self.tasks = {t.name: t for t in tasks}
        self.timed = {t.name for t in tasks if t.info().timed}  # they say when they start
        self.id = settings.supervisor_id or f"{socket.gethostname()}-{os.getpid()}"
        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.workers_sock = self.zctx.socket(zmq.ROUTER)
        self.workers_sock.setsockopt(zmq.LINGER, 0)
        self.workers_sock.bind(_worker_endpoint())
        endpoint = self.workers_sock.getsockopt_string(zmq.LAST_ENDPOINT)
        size = settings.workers
        max_size = max(settings.max_workers or 4 * size, size)
        self.workers = Workers(size, max_size)
        # Bound before the pool starts: the pool's PUSH connects to it from its own thread.
        self.events = self.zctx.socket(zmq.PULL)
        self.events.setsockopt(zmq.LINGER, 0)
        events = f"inproc://plait-pool-{id(self):x}"
        self.events.bind(events)
        self.pool_settings = PoolSettings(
            endpoint=endpoint, events=events, imports=settings.imports, size=size,
            max_size=max_size, backoff_initial=settings.restart_backoff,
            backoff_max=settings.restart_backoff_max, crash_limit=settings.crash_limit,
            cancel_grace=settings.cancel_grace, kill_grace=settings.kill_grace,
            max_frame_size=settings.max_frame_size)
        self.pool: pykka.ActorRef[Any] | None = None
        self._target = size  # the last Scale the pool was told
        self._early: set[bytes] = set()  # WorkerReady that beat the pool's "started"
        self.link = FlowLink(self.zctx, settings, self._hello)
        self.prefetch = PREFETCH * size if settings.prefetch is None else settings.prefetch
        # Each with its frame (relayed to the worker as it came).
        self.queue: deque[tuple[Assign, bytes]] = deque()
        self.queued: set[tuple[str, str, int]] = set()  # the queue's attempts
        self.credit = 0
        self.welcomed = threading.Event()
        self.errors = 0
        self._stand_ins: set[str] = set()  # failed Finishes sent for ones Flow refused
        self._polling: tuple[tuple[Any, Any], zmq.Poller] | None = None
        self._upkeep = 0.0  # when rescaling and the Flow link's heartbeat are next due

    # --- credit ------------------------------------------------------------------------

    def free(self) -> int:
        held = sum((w.assign is not None) + (w.ahead is not None)
                   for w in self.workers.values())
        return max(self.workers.target() + self.prefetch - held - len(self.queue), 0)

    def _hello(self) -> Hello:
        self.credit = self.free()
        return Hello(supervisor_id=self.id, tasks=[t.info() for t in self.tasks.values()],
                     slots=self.credit, running=self._running())

    def _running(self) -> list[AttemptRef]:
        assigns = self._held() + [a for a, _ in self.queue]
        refs = {attempt_of(a) for a in assigns}
        refs |= {attempt_of(m) for m, _, _ in self.link.outstanding.values()
                 if isinstance(m, Finish)}  # ended, but Flow has not taken it in
        # Evicted, and Flow has not recorded its Wait: a restarted Flow still has it
        # running here, and would fail it as lost if nobody spoke for it.
        evicted = {attempt_of(m) for m, _, _ in self.link.outstanding.values()
                   if isinstance(m, Wait) and not m.resident} - refs
        return [AttemptRef(workflow_id=w, node=n, attempt=a, evicted=(w, n, a) in evicted)
                for w, n, a in sorted(refs | evicted)]

    def _grant(self) -> None:
        more = self.free() - self.credit
        if more <= 0 or not self.welcomed.is_set():
            return
        if more < self.prefetch // 4 and len(self.queue) >= self.workers.size:
            return  # plenty queued: one Credit for several slots, later
        self.credit += more
        self.link.send(Credit(n=more))

    # --- the loop ------------------------------------------------------------------------

    def run(self, ready: threading.Event | None, stop: threading.Event) -> None:
        self.pool = WorkerPool.start(self.zctx, self.pool_settings, self.zygote)
        self.link.open(time.monotonic())
        while not stop.is_set():
            self._poll_once()
            self._dispatch()  # before rescaling, so an idle worker is not retired first
            now = time.monotonic()
            if now >= self._upkeep:  # not on every message: a busy loop turns often
                self._upkeep = now + _UPKEEP
                self._rescale(now)
                if self.link.tick(now):
                    log.warning("Flow silent for %.1f s: reconnecting", self.link.timeout)
                    self.welcomed.clear()
                    self.link.open(now)
                self._dispatch()
            self._grant()
            self.link.flush()
            if ready is not None and not ready.is_set() and self.welcomed.is_set():
                ready.set()

    def _tell(self, message: Any) -> None:
        safe_tell(self.pool, message)

    def _rescale(self, now: float) -> None:
        """Retire idle spares beyond the target; tell the pool when the target moves."""
        for worker in self.workers.spares(now):
            worker.retiring = True
            self._tell(Retire(worker.ident))
        target = self.workers.target()
        if target != self._target:
            self._target = target
            self._tell(Scale(target))

    def _poller(self) -> zmq.Poller:
        """The poller over our sockets, rebuilt only when the Flow link reconnects."""
        sockets = (self.link.sock, self.link.monitor)
        if self._polling is None or self._polling[0] != sockets:
            poller = zmq.Poller()
            poller.register(self.events, zmq.POLLIN)
            poller.register(self.workers_sock, zmq.POLLIN)
            if self.link.sock is not None and self.link.monitor is not None:
                poller.register(self.link.sock, zmq.POLLIN)
                poller.register(self.link.monitor, zmq.POLLIN)
            self._polling = (sockets, poller)
        return self._polling[1]

    def _poll_once(self) -> None:
        events = dict(self._poller().poll(int(_TICK * 1000)))
        now = time.monotonic()
        deaths = []
        if self.events in events:  # first: a worker's "started" before its WorkerReady
            for frame in _drain(self.events):
                event = codec.unpack(frame)
                if event.get("event") != "died":
                    self._from_pool(event, now)
                    continue
                deaths.append(event)
                dead = self.workers.get(event["ident"])
                if dead is not None:
                    dead.retiring = True  # gone: nothing more is sent to it
        if self.link.monitor is not None and self.link.monitor in events:
            self.link.on_monitor(now)
        if self.link.sock is not None and self.link.sock in events:
            for frame in _drain(self.link.sock):
                self.link.heard(now)
                self._from_flow(frame)
        # A dead worker's last frames (its Finish, say) before its death: what it
        # reported is not lost, and what it started is not taken for unstarted.
        if self.workers_sock in events or deaths:
            for ident, frame in _drain_router(self.workers_sock):
                self._from_worker(ident, frame, now)
        for event in deaths:
            self._from_pool(event, now)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.stop(block=True)  # a blocking call at shutdown only: it stops the workers
        self.events.close(linger=0)
        self.link.close()
        self.workers_sock.close(linger=0)
        self.zctx.term()
        self.zygote.close()

    # --- from Flow -------------------------------------------------------------------------

    def _decode(self, frame: bytes, max_size: int | None = None) -> Message | None:
        try:
            return codec.decode(frame, max_size=max_size or self.settings.max_frame_size)
        except ProtocolError as exc:
            self.errors += 1
            log.error("bad frame (%s)", exc)
            return None

    def _from_flow(self, frame: bytes) -> None:
        msg = self._decode(frame, codec.TRUSTED_MAX_SIZE)  # bounded by Flow, not by us
        if msg is None:
            return
        if isinstance(msg, Welcome):
            self.link.interval, self.link.timeout = msg.heartbeat_interval, msg.heartbeat_timeout
            self.welcomed.set()
        elif isinstance(msg, Assign):
            self.credit = max(self.credit - 1, 0)
            self._on_assign(msg, frame)
        elif isinstance(msg, CancelTask):
            self._on_cancel(msg)
        elif isinstance(msg, Proposed | Resolved | Error | Ack):
            self._on_reply(msg, frame)
        elif not isinstance(msg, Heartbeat):
            self.errors += 1
            log.error("unexpected %s from Flow", type(msg).__name__)

    def _on_assign(self, msg: Assign, frame: bytes) -> None:
        if msg.task not in self.tasks:
            exc = UnknownTask(f"task {msg.task!r} is not served by supervisor {self.id} "
                              f"(serves {sorted(self.tasks)})")
            self._finish(msg, error_dict(exc))
            return
        key = attempt_of(msg)
        if key in self.queued or any(attempt_of(a) == key
                                     for a in self._held()):
            return  # re-sent by a restarted Flow: already running here
        self.queued.add(key)
        self.queue.append((msg, frame))

    def _held(self) -> list[Assign]:
        """Attempts the workers hold, running or sent ahead (an evicted one is Flow's
        again, though its worker may still be unwinding it)."""
        held = [w.assign for w in self.workers.values()
                if w.assign is not None and not w.evicting]
        return held + [w.ahead[0] for w in self.workers.values() if w.ahead is not None]

    def _finish(self, of: Assign | Finish | Wait, error: dict[str, Any]) -> Finish:
        """Tell Flow the attempt ``of`` names failed with ``error``; the Finish sent."""
        finish = Finish(workflow_id=of.workflow_id, node=of.node, attempt=of.attempt,
                        ok=False, error=error)
        self.link.send(finish, track=True)
        return finish

    def _on_cancel(self, msg: CancelTask) -> None:
        for entry in list(self.queue):
            a = entry[0]
            if attempt_of(a) == attempt_of(msg):
                self.queue.remove(entry)
                self.queued.discard(attempt_of(a))
                self._finish(a, _cancelled(a))
        for w in self.workers.values():
            if w.ahead is not None and attempt_of(w.ahead[0]) == attempt_of(msg):
                # The worker ends it unstarted (a cancelled Finish) or, if it has just
                # started it, cancels it; it is escalated once this loop sees it start.
                w.ahead_cancelled = True
                self._to_worker(w.ident, msg)
        # By attempt: an earlier attempt of the node may still be unwinding its own
        # cancel in another worker here.
        worker = next((w for w in self.workers.values() if w.assign is not None
                       and not w.evicting and attempt_of(w.assign) == attempt_of(msg)), None)
        if worker is not None:
            worker.cancelling = True
            self._to_worker(worker.ident, msg)
            self._tell(Cancel(worker.ident))
            # The cancel may be escalated to a signal: the attempt sent ahead would
            # die with it, or be started just before and take the signal meant for
            # this one. It goes to another worker.
            self._take_back(worker)

    def _on_reply(self, msg: Proposed | Resolved | Error | Ack, frame: bytes) -> None:
        request, ident = self.link.answered(msg.id)
        if isinstance(msg, Ack):
            self._stand_ins.difference_update((msg.id, *msg.more))
            for more in msg.more:  # the other Finishes of a batch
                self.link.answered(more)
            return
        # A busy supervisor sends no Heartbeat (any frame counts as one): a refused
        # Credit is how it learns that Flow forgot it.
        if isinstance(msg, Error) and (msg.id == self.link.last_beat or (
                request is None and msg.code == "unavailable")):
            self.link.forgotten(time.monotonic())
            return
        # Only a Propose or a resident Wait has a task waiting for the answer.
        if isinstance(msg, Error) and not (isinstance(request, Propose) or (
                isinstance(request, Wait) and request.resident)):
            log.error("Flow answered %s with %s: %s", type(request).__name__, msg.code,
                      msg.reason)
            if isinstance(request, Finish | Wait) and msg.code in UNREADABLE:
                self._stand_in(request, msg)
            return
        if isinstance(msg, Proposed) and isinstance(request, Wait) and not request.resident:
            return  # refused proposals of an evicted task: Flow failed the node itself
        worker = self.workers.get(ident) if ident is not None else None
        if worker is None:
            log.info("dropped %s for a worker that is gone", type(msg).__name__)
            return
        if not isinstance(request, Propose | Wait) or worker.assign is None \
                or attempt_of(worker.assign) != attempt_of(request):
            # A late answer (to a request of an attempt that has ended, re-sent after a
            # reconnection, say): nobody awaits it, and the worker's current task may
            # be in a wait of its own, which this answer must not end.
            log.info("dropped a late %s for %s/%s", type(msg).__name__,
                     getattr(msg, "workflow_id", "?"), getattr(msg, "node", "?"))
            return
        if isinstance(request, Wait):
            worker.waiting = False  # resolved, or refused: the task goes on
        self._to_worker(worker.ident, msg, frame)

    def _stand_in(self, refused: Finish | Wait, error: Error) -> None:
        """Flow could not read what ends an attempt here (its Finish, an evicted
        task's Wait): no process holds the attempt any more, so it fails, saying why,
        rather than running on in Flow's view for ever. Once: a refused stand-in is
        only logged. (Other refusals, "not running" say, mean Flow has moved on: a
        re-sent durable Wait of an attempt that is to run again must not fail it.)"""
        if refused.id in self._stand_ins:
            self._stand_ins.discard(refused.id)
            return
        stand_in = self._finish(refused, {
            "type": "ProtocolError", "retryable": False,
            "message": f"Flow refused the attempt's {type(refused).__name__} "
                       f"({error.code}): {error.reason}"})
        self._stand_ins.add(stand_in.id)

    # --- from the pool -----------------------------------------------------------------------

    def _from_pool(self, event: dict[str, Any], now: float) -> None:
        kind = event.get("event")
        if kind == "started":
            worker = Worker(event["ident"], event["pid"])
            self.workers.by_ident[worker.ident] = worker
            if worker.ident in self._early:
                self._early.discard(worker.ident)
                self._on_ready(worker, now)
        elif kind == "died":
            self._on_death(event["ident"], event["pid"], event["code"])
        elif kind == "crash_loop":
            raise CrashLoop(event["reason"])
        else:  # "failed": the pool actor crashed and has stopped its workers
            raise PlaitError(str(event.get("reason", event)))

    def _on_ready(self, worker: Worker, now: float) -> None:
        if not worker.ready:
            self._tell(Ready(worker.ident))  # a clean start: not a crash-loop candidate
        worker.ready, worker.idle_since = True, now

    # --- from workers --------------------------------------------------------------------------

    def _from_worker(self, ident: bytes, frame: bytes, now: float) -> None:
        msg = self._decode(frame)
        worker = self.workers.get(ident)
        if msg is None:
            return
        if worker is None:
            if isinstance(msg, WorkerReady):
                self._early.add(ident)
            return
        if worker.ahead is not None and isinstance(msg, _ABOUT_AN_ATTEMPT) \
                and attempt_of(msg) == attempt_of(worker.ahead[0]):
            if worker.assign is None:  # a Retract is out, and its answer is behind this
                self._promote(worker, now)  # it speaks of the attempt: it started it
            elif isinstance(msg, Finish):
                # Cancelled before it started; the current attempt runs on.
                self.link.send(msg, ident, track=True, frame=frame)
                worker.ahead, worker.retracting, worker.ahead_cancelled = None, False, False
                return
        if isinstance(msg, WorkerReady):
            self._on_ready(worker, now)
            if worker.evicting:
                self._release(worker)
        elif isinstance(msg, Wait):
            self._on_wait(worker, msg, frame)
        elif isinstance(msg, Propose | TaskHeartbeat | SetState):
            self.link.send(msg, ident, track=True, frame=frame)
        elif isinstance(msg, Finish):
            if worker.evicting:  # raced its eviction: the attempt is Flow's to resume
                log.warning("dropped the Finish of evicted %s/%s", msg.workflow_id, msg.node)
            else:
                self.link.send(msg, ident, track=True, frame=frame)
            self.link.ended(ident, attempt_of(msg))
            self._release(worker)
            if not worker.retracting:  # else Retracted says whether it started the next
                self._promote(worker, now)
            self._dispatch()  # its next attempt at once, not after the rest of the drain
        elif isinstance(msg, Retracted):
            self._on_retracted(worker, msg)
        else:
            self.errors += 1
            log.error("unexpected %s from worker pid %d", type(msg).__name__, worker.pid)

    def _on_wait(self, worker: Worker, msg: Wait, frame: bytes) -> None:
        # First: the attempt sent ahead may be a child this task waits for. The worker
        # reads the Retract before any answer to the Wait, so it has not started it.
        self._take_back(worker)
        resident = self._resident(worker, msg)
        if resident == msg.resident:  # relayed as it came: a big map's Wait is megabytes
            self.link.send(msg, worker.ident, track=True, frame=frame)
        else:
            self.link.send(msg.model_copy(update={"resident": resident}), worker.ident,
                           track=True)
        if resident:
            worker.waiting = True
            return
        # Being cancelled, it stays under the cancel's escalation until it has unwound
        # (WorkerReady): a task that swallowed its cancel may never see the eviction.
        worker.evicting, worker.waiting = True, False
        self._to_worker(worker.ident, Evict(workflow_id=msg.workflow_id, node=msg.node,
                                            attempt=msg.attempt))

    def _resident(self, worker: Worker, wait: Wait) -> bool:
        """Whether a waiting task may keep its worker: Flow allows it, there is room,
        and it waits for children (durable timers and signals may last for ever)."""
        if self.settings.evict_waiting or wait.timer is not None or wait.signal is not None \
                or (worker.assign is not None and not worker.assign.resident_waits):
            return False
        busy = sum(1 for w in self.workers.values() if w.assign and not w.evicting)
        return busy < self.workers.max_size

    def _promote(self, worker: Worker, now: float) -> None:
        """The worker ended its attempt and started the one sent ahead to it."""
        if worker.ahead is None:
            return
        worker.assign, worker.since = worker.ahead[0], now
        worker.ahead, worker.retracting = None, False
        if worker.ahead_cancelled:  # it started before it read the CancelTask
            worker.ahead_cancelled, worker.cancelling = False, True
            self._tell(Cancel(worker.ident))

    def _take_back(self, worker: Worker) -> None:
        if worker.ahead is None or worker.retracting:
            return
        worker.retracting = True
        a = worker.ahead[0]
        log.debug("taking back %s/%s from worker pid %d", a.workflow_id, a.node, worker.pid)
        self._to_worker(worker.ident, Retract(workflow_id=a.workflow_id, node=a.node,
                                              attempt=a.attempt))

    def _on_retracted(self, worker: Worker, msg: Retracted) -> None:
        """The answer to a Retract. The worker may have ended its current attempt
        just before (its Finish came first, and it was not promoted) or just after."""
        ahead = worker.ahead
        if ahead is None or attempt_of(ahead[0]) != attempt_of(msg):
            return  # it spoke (so it had started), or was cancelled unstarted
        worker.retracting = False
        if msg.ok:
            worker.ahead = None
            self._requeue(ahead, worker.ahead_cancelled)
            worker.ahead_cancelled = False
            log.debug("took back %s/%s from worker pid %d", msg.workflow_id, msg.node,
                      worker.pid)
        elif worker.assign is None:
            self._promote(worker, time.monotonic())  # it started after its predecessor
        else:  # the worker sends its Finish before it takes the next attempt: never
            self.errors += 1
            log.error("worker pid %d started %s/%s before ending %s", worker.pid,
                      msg.workflow_id, msg.node, worker.assign.node)
            worker.retracting = True  # not taken back again and again
        self._dispatch()

    def _requeue(self, entry: tuple[Assign, bytes], cancelled: bool) -> None:
        """An attempt given back unstarted: first in line again, or ended if Flow
        cancelled it meanwhile."""
        assign = entry[0]
        if cancelled:
            self._finish(assign, _cancelled(assign))
        else:
            self.queued.add(attempt_of(assign))
            self.queue.appendleft(entry)

    def _release(self, worker: Worker) -> None:
        """The worker is done with its attempt (finished, or unwound after eviction)."""
        if worker.cancelling:
            self._tell(Settle(worker.ident))
        worker.assign, worker.waiting, worker.cancelling, worker.evicting = (
            None, False, False, False)
        worker.idle_since = time.monotonic()

    def _to_worker(self, ident: bytes, msg: Message, frame: bytes | None = None) -> None:
        """Send ``msg``; as ``frame`` when it came from Flow as is (not encoded again)."""
        self.workers_sock.send_multipart([ident, frame or codec.encode(msg)])

    def _dispatch(self) -> None:
        while self.queue:
            worker = self.workers.idle()
            if worker is None:
                self._send_ahead()
                return
            assign, frame = self.queue.popleft()
            self.queued.discard(attempt_of(assign))
            worker.assign, worker.since = assign, time.monotonic()
            self.workers_sock.send_multipart([worker.ident, frame])
            if assign.task in self.timed:
                self.link.send(TaskHeartbeat(workflow_id=assign.workflow_id, node=assign.node,
                                             attempt=assign.attempt, started=True),
                               worker.ident, track=True)
        self._steal()

    def _send_ahead(self) -> None:
        """Every worker is busy: send each the next queued attempt, to start the moment
        its current one ends. A task with a timeout is never sent ahead: Flow counts
        its time from when this loop starts it (``TaskHeartbeat(started=True)``)."""
        for worker in self.workers.values():
            if not self.queue or self.queue[0][0].task in self.timed:
                return
            if worker.ahead is None and worker.assign is not None and worker.ready and not (
                    worker.waiting or worker.evicting or worker.cancelling or worker.retiring):
                entry = self.queue.popleft()
                self.queued.discard(attempt_of(entry[0]))
                worker.ahead = entry
                self.workers_sock.send_multipart([worker.ident, entry[1]])
                log.debug("sent %s/%s ahead to worker pid %d", entry[0].workflow_id,
                          entry[0].node, worker.pid)

    def _steal(self) -> None:
        """Nothing queued and a worker idle: take back an attempt sent ahead to a worker
        whose current attempt has run for a while, for the idle one to run."""
        holders = [w for w in self.workers.values() if w.ahead is not None]
        if not holders:
            return
        idle = sum(1 for w in self.workers.values() if w.idle)
        taking = sum(1 for w in holders if w.retracting)
        now = time.monotonic()
        for worker in holders:
            if taking >= idle:
                return
            if not worker.retracting and now - worker.since >= STEAL_AFTER:
                self._take_back(worker)
                taking += 1

    def _on_death(self, ident: bytes, pid: int, returncode: int) -> None:
        """The pool reaped a worker (and dropped its cancel escalation)."""
        worker = self.workers.by_ident.pop(ident, None)
        self.link.forget(ident)
        if worker is not None and worker.ahead is not None:
            if worker.assign is None and worker.retracting:
                # Its predecessor's Finish came and the answer did not: the worker
                # takes the next attempt right after a Finish, so it had started it.
                worker.assign, worker.cancelling = worker.ahead[0], worker.ahead_cancelled
            else:
                self._requeue(worker.ahead, worker.ahead_cancelled)
            worker.ahead = None
        if worker is None or worker.assign is None or worker.evicting:
            return
        death = describe_death(pid, returncode)
        if worker.cancelling:
            error = _cancelled(worker.assign)
        else:
            error = {"type": "WorkerLost", "message": death, "traceback": "", "retryable": True}
        log.warning("%s running %s/%s", death, worker.assign.workflow_id, worker.assign.node)
        self._finish(worker.assign, error)


def _worker_endpoint() -> str:
    """Where workers connect. On Linux, a Unix socket in the abstract namespace: a
    round trip costs about a quarter less CPU than over TCP loopback, and it leaves
    no file behind, even when the supervisor is killed (like a loopback port, any
    local process may connect; messages are validated either way). Elsewhere,
    loopback TCP."""
    if sys.platform == "linux":
        return f"ipc://@plait-sup-{os.getpid()}-{secrets.token_hex(4)}"
    return "tcp://127.0.0.1:*"


# Flow's error codes for a frame it could not take as it was (see codec).
UNREADABLE = frozenset({"too_large", "malformed", "bad_version", "unknown_type"})
# What a worker sends about its attempt (a Retracted speaks of one it may not run).
_ABOUT_AN_ATTEMPT = (Wait, Propose, TaskHeartbeat, SetState, Finish)


def _cancelled(assign: Assign) -> dict[str, Any]:
    return {"type": "WorkflowCancelled", "traceback": "", "retryable": False,
            "message": f"workflow {assign.workflow_id} was cancelled (node {assign.node})"}


def _drain(sock: zmq.Socket[bytes]) -> Iterator[bytes]:
    while waiting(sock):
        yield sock.recv(zmq.NOBLOCK)


def _drain_router(sock: zmq.Socket[bytes]) -> Iterator[tuple[bytes, bytes]]:
    while waiting(sock):
        parts = sock.recv_multipart(zmq.NOBLOCK)
        if len(parts) == 2:
            yield parts[0], parts[1]


def run_supervisor(settings: SupervisorSettings, ready: threading.Event | None = None,
                   stop: threading.Event | None = None) -> None:
    """Serve the tasks of ``settings.imports`` until ``stop`` (or SIGTERM/SIGINT).

    ``ready`` is set once Flow has welcomed this supervisor. Raises PlaitError
    if the modules cannot be imported or the workers crash in a loop.
    """
    # First, while this process may still have one thread (the task modules may start
    # threads when imported): the zygote is forked from it.
    zygote = Zygote.start()
    try:
        tasks = import_tasks(settings.imports, settings.queues)
        supervisor = Supervisor(settings, tasks, zygote)
    except BaseException:
        zygote.close()
        raise
    stop = stop or threading.Event()
    log.info("supervisor %s serving %s for %s", supervisor.id, sorted(supervisor.tasks),
             settings.flow)
    try:
        with stop_on_signals(stop):
            supervisor.run(ready, stop)
    finally:
        supervisor.close()
