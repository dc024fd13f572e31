"""Flow: the process that owns all durable state (``plait flow``).

Inside, each box is an actor with its own thread (DESIGN.md section 1):

- Gateway: the ROUTER socket, for clients and supervisors;
- PlanKeeper: one per live workflow, the only one changing its plan;
- Dispatcher: ready queues per task, supervisor credits, MaxParallel (no
  thread of its own: its callers run it under a lock);
- Store: the only writer (SQLite, WAL, group commit), and a Reader;
- Publisher: the PUB mutation feed;
- Membership: supervisor liveness;
- Scheduler: cron schedules; Cache: lookups of cached results;
- Timers: durable ones on Flow's clock (backoff, sleeps, timeouts, cron
  ticks) and liveness ones on monotonic time (heartbeats, orphan checks).

:func:`run_flow` starts them (rebuilding every unfinished workflow from the
Store first), serves until SIGTERM/SIGINT or ``stop``, and stops them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
import zmq
from pydantic import ValidationError

from plait import memory
from plait.actors.cache import Cache
from plait.actors.clock import Clock, FileClock, WallClock
from plait.actors.database import DatabaseLock
from plait.actors.dispatcher import Dispatcher
from plait.actors.gateway import Gateway
from plait.actors.history import WorkflowState
from plait.actors.mail import Request, ScheduleDue, Serving, Tick
from plait.actors.membership import Membership
from plait.actors.plan_keeper import KeeperContext, PlanKeeper
from plait.actors.publisher import Publisher
from plait.actors.reader import Reader
from plait.actors.registry import Catalog, Counters, Registry, Sessions, safe_tell
from plait.actors.schedules import Scheduler
from plait.actors.store import Store, load
from plait.actors.timers import Timers
from plait.protocol.codec import DEFAULT_MAX_SIZE
from plait.protocol.messages import Submit, TaskInfo, Welcome
from plait.protocol.sockets import tcp
from plait.stopping import stop_on_signals

__all__ = ["Flow", "FlowSettings", "run_flow"]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0


@dataclass
class FlowSettings:
    """Flow's configuration. ``port`` 0 binds any free port (see ``Flow.endpoint``);
    ``feed_port`` defaults to ``port + 1`` (any free port when ``port`` is 0).
    ``retry_scale`` multiplies every retry delay (tests make it tiny). ``clock`` is
    the time of durable timers and event timestamps (tests inject a fake one)."""

    db: str = ".plait/flow.db"
    host: str = "127.0.0.1"
    port: int = 7100
    feed_port: int | None = None
    max_message_size: int = DEFAULT_MAX_SIZE
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    retry_scale: float = 1.0
    clock: Clock = field(default_factory=WallClock)

    def __post_init__(self) -> None:
        # An interval of 0 re-armed at once: heartbeats in a tight loop, to every
        # supervisor too (they take it from Welcome). A timeout within one interval
        # declared healthy supervisors dead.
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ValueError("the heartbeat interval must be positive and shorter than the "
                             "heartbeat timeout")
        if not self.retry_scale >= 0:
            raise ValueError("the retry scale must be zero or more")

    def endpoint(self, port: int) -> str:
        return tcp(self.host, port if port else "*")

    def feed(self) -> int:
        if self.feed_port is not None:
            return self.feed_port
        return self.port + 1 if self.port else 0


class Flow:
    """Flow's actors, started and stopped together. ``run_flow`` is the usual door;
    tests that need the counters or the bound endpoints use this directly."""

    def __init__(self, settings: FlowSettings,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.settings = settings
        self.counters = Counters()
        self.failure: BaseException | None = None
        self._on_fatal = on_fatal
        self.endpoint = ""
        self.feed_endpoint = ""
        self._actors: list[pykka.ActorRef[Any]] = []
        self._stopped = False
        self.stopped_cleanly = False  # every actor stopped, every socket closed (_term)
        self._all_stopped = True
        self._lock = DatabaseLock(settings.db)
        self.registry = Registry()

    def start(self) -> Flow:
        s = self.settings
        os.makedirs(os.path.dirname(os.path.abspath(s.db)), exist_ok=True)
        self._lock.acquire()  # before anything is read: another Flow may be writing
        try:
            loaded = load(s.db)
        except BaseException:
            self._lock.release()
            raise
        self.zctx: zmq.Context[Any] = zmq.Context()
        outbox = f"inproc://plait-flow-{id(self):x}"
        self.registry = Registry(loaded.known)
        self.sessions, self.timers = Sessions(), Timers()
        self.catalog = Catalog(_stored_tasks(loaded.tasks))
        self.clock_timers = Timers(s.clock, name="plait-clock")
        self.timers.start()
        self.clock_timers.start()
        try:
            self._start_actors(outbox, loaded.schedules)
            self._restore(loaded.streams)
            self.scheduler.tell(ScheduleDue())  # ticks missed while Flow was down
            self.endpoint = self.gateway.start()
            self.registry.broadcast(Serving())  # restored keepers wait for claims now
        except BaseException:
            self.stop()
            raise
        membership = self.membership
        self.timers.every(s.heartbeat_interval, lambda: _tell(membership, Tick()))
        log.info("flow serving on %s, feed on %s, %d workflows restored",
                 self.endpoint, self.feed_endpoint, len(loaded.streams))
        return self

    def _start_actors(self, outbox: str, schedules: list[dict[str, Any]]) -> None:
        s, z = self.settings, self.zctx
        self.publisher = publisher = self._add(Publisher.start(z, s.endpoint(s.feed())))
        bound = publisher.proxy().bound().get(timeout=STOP_TIMEOUT)
        if isinstance(bound, zmq.ZMQError):
            raise bound
        self.feed_endpoint = bound
        audience = publisher.proxy().audience.get(timeout=STOP_TIMEOUT)
        self.store = self._add(Store.start(s.db, z, outbox, publisher, audience.maybe,
                                           self._fatal))
        reader = self._add(Reader.start(s.db, z, outbox, self._revive))
        cache = self._add(Cache.start(s.db))
        self.dispatcher = Dispatcher(self.registry, self.counters, self.sessions)
        self.membership = self._add(Membership.start(
            z, outbox, sessions=self.sessions, registry=self.registry,
            dispatcher=self.dispatcher, counters=self.counters,
            heartbeat_timeout=s.heartbeat_timeout, heartbeat_interval=s.heartbeat_interval,
            on_fatal=self._fatal))
        self.scheduler = Scheduler.start(
            schedules, store=self.store, registry=self.registry, counters=self.counters,
            timers=self.clock_timers, start_run=self._start_run)
        self.keeper_ctx = KeeperContext(
            store=self.store, dispatcher=self.dispatcher, registry=self.registry,
            catalog=self.catalog, counters=self.counters, timers=self.timers,
            retry_scale=s.retry_scale, orphan_timeout=s.heartbeat_timeout, clock=s.clock,
            clock_timers=self.clock_timers, reader=reader, cache=cache,
            scheduler=self.scheduler, sessions=self.sessions)
        self.gateway = Gateway(
            z, s.endpoint(s.port), outbox, registry=self.registry, sessions=self.sessions,
            catalog=self.catalog, counters=self.counters, reader=reader, store=self.store,
            dispatcher=self.dispatcher, membership=self.membership, scheduler=self.scheduler,
            spawn_keeper=self._spawn_keeper, max_message_size=s.max_message_size,
            welcome=Welcome(heartbeat_interval=s.heartbeat_interval,
                            heartbeat_timeout=s.heartbeat_timeout))

    def _add(self, ref: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        self._actors.append(ref)
        return ref

    def _spawn_keeper(self, workflow_id: str) -> pykka.ActorRef[Any]:
        return PlanKeeper.start(workflow_id, self.keeper_ctx)

    def _start_run(self, workflow_id: str, submit: Submit) -> bool:
        """A schedule's run: a workflow started from inside (nobody to answer)."""
        if not self.registry.claim(workflow_id):
            return False
        keeper = self._spawn_keeper(workflow_id)
        self.registry.add(workflow_id, keeper)
        keeper.tell(Request(b"", submit.model_copy(update={"workflow_id": workflow_id})))
        return True

    def _revive(self, workflow_id: str, load: Callable[[], WorkflowState],
                request: Request) -> bool:
        """An ended workflow comes back (restart, attributes): a keeper for it."""
        return self.registry.adopt(
            workflow_id, load,
            lambda state: PlanKeeper.start(workflow_id, self.keeper_ctx, state), request)

    def _restore(self, streams: list[tuple[str, list[tuple[int, float, dict[str, Any]]]]]
                 ) -> None:
        """Rebuild every unfinished workflow by folding its events."""
        for workflow_id, events in streams:
            try:
                state = WorkflowState.rebuild(workflow_id, events)
            except Exception:  # one workflow must not keep Flow from starting
                log.exception("flow: workflow %s cannot be rebuilt; left as is", workflow_id)
                continue
            self.registry.add(workflow_id,
                              PlanKeeper.start(workflow_id, self.keeper_ctx, state))

    def _fatal(self, exc: BaseException) -> None:
        self.failure = exc
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def stop(self) -> None:
        """Stop everything, inputs first, the Store after everything that writes."""
        if self._stopped:
            return
        self._stopped = True
        if hasattr(self, "gateway"):
            self.gateway.stop()
        if hasattr(self, "scheduler"):
            self._all_stopped &= _stop(self.scheduler)  # it starts keepers: before them
        self.timers.stop()
        self.clock_timers.stop()
        # Closed first: the Reader may be reviving an ended workflow right now, and
        # a keeper started after this list was taken would never be stopped.
        stopping = [keeper.stop(block=False) for keeper in self.registry.close()]
        for future in stopping:  # all at once: a thousand keepers stop in parallel
            self._all_stopped &= _wait(future)
        for ref in reversed(self._actors):  # membership, dispatcher, reader, store, publisher
            self._all_stopped &= _stop(ref)
        self._actors.clear()
        self.stopped_cleanly = _term(self.zctx) and self._all_stopped
        if self.stopped_cleanly:
            self._lock.release()  # last: the Store, its only writer, has stopped
        # Else an actor may still write: the lock stays until the process exits.


def _term(zctx: zmq.Context[Any]) -> bool:
    """Terminate the context, which waits for every socket to close: one left open
    by a thread that never stopped must not keep Flow from stopping for ever.
    False if it was left so."""
    # What is still open, named before term() (which closes nothing) runs: a hint
    # at whose socket it is, should it hang.
    left = [f"{zmq.SocketType(s.type).name} {s.getsockopt_string(zmq.LAST_ENDPOINT) or '(unbound)'}"
            for s in list(getattr(zctx, "_sockets", None) or ()) if not s.closed]
    terminating = threading.Thread(target=zctx.term, name="plait-term", daemon=True)
    terminating.start()
    terminating.join(STOP_TIMEOUT)
    if terminating.is_alive():
        log.error("flow: a socket is still open after stop (open: %s; threads alive: %s); "
                  "the process's exit closes it", ", ".join(left) or "none, closed lingering",
                  ", ".join(t.name for t in threading.enumerate()
                            if t is not terminating and t is not threading.current_thread()))
        return False
    return True


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    safe_tell(ref, message)


def _stop(ref: pykka.ActorRef[Any]) -> bool:
    return _wait(ref.stop(block=False))


def _wait(future: pykka.Future[Any]) -> bool:
    """Whether the actor stopped in time."""
    try:
        future.get(timeout=STOP_TIMEOUT)
    except pykka.Timeout:
        log.error("flow: an actor did not stop in %.0fs", STOP_TIMEOUT)
        return False
    return True


def run_flow(settings: FlowSettings, ready: threading.Event | None = None,
             stop: threading.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (main thread only) or ``stop`` is set. Blocks."""
    stop = stop or threading.Event()
    failed: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failed.append(exc)
        stop.set()

    with stop_on_signals(stop):
        flow = Flow(settings, on_fatal=fatal).start()
        try:
            if ready is not None:
                ready.set()
            stop.wait()
        finally:
            flow.stop()
    if failed:
        raise RuntimeError("flow stopped: the store could not commit") from failed[0]


def _stored_tasks(bodies: list[dict[str, Any]]) -> list[TaskInfo]:
    """The stored task metadata that this version can read (a newer field, say,
    is skipped: the task's next Hello says it again)."""
    tasks = []
    for body in bodies:
        try:
            tasks.append(TaskInfo.model_validate(body))
        except ValidationError as exc:
            log.warning("stored metadata of task %r is unreadable (%s): skipped",
                        body.get("name"), exc.errors()[0].get("msg"))
    return tasks


def main(argv: list[str] | None = None) -> int:
    """``python -m plait.actors.flow``: Flow without the CLI (tests use it)."""
    p = argparse.ArgumentParser(prog="python -m plait.actors.flow")
    p.add_argument("--db", default=FlowSettings.db)
    p.add_argument("--host", default=FlowSettings.host)
    p.add_argument("--port", type=int, default=FlowSettings.port)
    p.add_argument("--feed-port", type=int, default=None)
    p.add_argument("--max-message-size", type=int, default=FlowSettings.max_message_size)
    p.add_argument("--heartbeat-interval", type=float, default=FlowSettings.heartbeat_interval)
    p.add_argument("--heartbeat-timeout", type=float, default=FlowSettings.heartbeat_timeout)
    p.add_argument("--retry-scale", type=float, default=FlowSettings.retry_scale)
    p.add_argument("--clock-file", default=None,
                   help="tests: read the time from this file (see clock.FileClock)")
    args = vars(p.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    clock_file = args.pop("clock_file")
    settings = FlowSettings(**args)
    if clock_file:
        settings.clock = FileClock(clock_file)
    memory.tune_gc()
    with stop_on_signals() as stop:
        flow = Flow(settings, on_fatal=lambda exc: stop.set()).start()
        try:
            # One line for whoever started us (tests): where we listen, ports resolved.
            print(f"flow ready {flow.endpoint} {flow.feed_endpoint}", flush=True)
            stop.wait()
        finally:
            flow.stop()
    return 1 if flow.failure else 0


if __name__ == "__main__":
    sys.exit(main())
