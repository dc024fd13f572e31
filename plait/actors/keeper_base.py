"""What every part of a PlanKeeper shares: its state, its write-ahead loop
helpers, node transitions and the way ready nodes reach the Dispatcher.

The keeper is assembled from mixins, one per concern (``keeper_run``,
``keeper_waits``, ``keeper_faults``, ``keeper_control``); they all extend
:class:`KeeperBase`. A handler changes the in-memory state only by recording
events (:meth:`KeeperBase._record` folds them), and everything it wants sent
leaves with its events in one ``Write`` when the message is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from plait.actors.cache import cache_key
from plait.actors.clock import Clock
from plait.actors.dispatcher import Dispatcher
from plait.actors.history import WorkflowState, state_event, violation_error
from plait.actors.mail import CacheEntry, Expire, Lookup, Ready, Stopped, StoredEvent, Write
from plait.actors.registry import Catalog, Counters, Registry, Sessions, safe_tell
from plait.actors.timers import Timers
from plait.protocol.codec import encode
from plait.protocol.diff import NodeState, PlanDiff
from plait.protocol.messages import Ack, Error, Message, NodeResult, Recorded, Wait
from plait.protocol.plan import TERMINAL, Node, Outcome
from plait.protocol.promises import Shape

__all__ = ["ACTIVE", "AttemptRec", "KeeperBase", "KeeperContext", "WaitRec"]

log = logging.getLogger("plait.actors.plan_keeper")

ACTIVE = frozenset({NodeState.RUNNING, NodeState.SUSPENDED})


@dataclass(frozen=True)
class KeeperContext:
    """What every keeper shares: the actors it tells, the clocks and Flow's settings.
    ``clock_timers`` read Flow's clock (durable timers); ``timers`` monotonic time."""

    store: pykka.ActorRef[Any]
    dispatcher: Dispatcher
    registry: Registry
    catalog: Catalog
    counters: Counters
    timers: Timers
    retry_scale: float
    orphan_timeout: float
    clock: Clock
    clock_timers: Timers
    reader: pykka.ActorRef[Any] | None = None
    cache: pykka.ActorRef[Any] | None = None
    scheduler: pykka.ActorRef[Any] | None = None
    sessions: Sessions | None = None


@dataclass
class AttemptRec:
    """An attempt a process holds (running, or suspended in a resident wait): who
    runs it, and whether they said so since Flow (re)started (an unclaimed one is
    failed as lost at the next orphan check)."""

    supervisor: str
    identity: bytes | None
    claimed: bool


@dataclass
class WaitRec:
    """A suspended node's wait: the handles still live, its sleep's due time or
    its signal's name, and whom to answer (``identity`` None: nobody holds the task
    in memory, so it is assigned again when the wait is satisfied)."""

    seq: int
    handles: list[str]
    pending: set[str] = field(default_factory=set)
    due: float | None = None
    signal: str | None = None
    identity: bytes | None = None
    correlation: str = ""
    resident: bool = True
    spawns: int = 0  # the task's spawn seq at the wait (History.resumed_at)

    def spec(self, attempt: int) -> dict[str, Any]:
        """The wait as stored in events (``wait``)."""
        spec: dict[str, Any] = {"attempt": attempt, "seq": self.seq, "handles": self.handles,
                                "resident": self.resident}
        if self.spawns:
            spec["spawns"] = self.spawns
        if self.due is not None:
            spec["due"] = self.due
        if self.signal is not None:
            spec["signal"] = self.signal
        return spec


class KeeperBase(pykka.ThreadingActor):
    """State and shared steps of a PlanKeeper (see the module docstring)."""

    def __init__(self, workflow_id: str, ctx: KeeperContext,
                 restored: WorkflowState | None = None) -> None:
        super().__init__()
        self.wf = workflow_id
        self.ctx = ctx
        self.st = restored or WorkflowState(workflow_id)
        self._restored = restored is not None
        self.attempts: dict[str, AttemptRec] = {}
        self.waits: dict[str, WaitRec] = {}
        self.watchers: dict[str, list[str]] = {}  # handle -> nodes waiting on it
        self.signal_waiters: dict[str, list[str]] = {}  # signal name -> waiting nodes
        self.awaiting: list[tuple[bytes, str]] = []  # AwaitResult requests
        self.limited: dict[str, tuple[tuple[str, int], ...]] = {}  # MaxParallel-bound nodes
        self.held: set[str] = set()  # ready nodes a pause keeps back
        # node -> its cache key, and the task version the key was made for
        self.cache_keys: dict[str, tuple[str, str]] = {}
        self.beats: dict[str, float] = {}  # running node -> its last heartbeat
        self.confirmed: dict[str, int] = {}  # node -> attempt its supervisor said started
        self.queued_at: dict[str, float] = {}  # ready node -> when it was queued
        self.retiring = False  # the end is recorded: leaving once it is committed
        self.gone = False  # left the Registry: whatever still arrives goes to the Reader
        self._events: list[StoredEvent] = []
        self._out: list[tuple[bytes, Message]] = []
        self._finished: dict[bytes, list[str]] = {}  # supervisor -> Finishes to acknowledge
        self._cache: list[CacheEntry] = []
        self._then: Callable[[], None] | None = None

    # --- implemented by the mixins ---------------------------------------------------

    def _satisfy(self, node_id: str) -> None:
        raise NotImplementedError

    def _resume(self, node_id: str) -> None:
        raise NotImplementedError

    def _offer(self, name: str) -> None:
        raise NotImplementedError

    def _failed(self, node_id: str, error: dict[str, Any]) -> None:
        raise NotImplementedError

    def _undeliver(self, node_id: str) -> list[str]:
        raise NotImplementedError

    def _terminate(self, status: str, error: dict[str, Any]) -> None:
        raise NotImplementedError

    def _arm_running(self, node_id: str) -> None:
        raise NotImplementedError

    def _wait_diff(self, identity: bytes, msg: Wait) -> bool:
        raise NotImplementedError

    def _apply(self, diff: PlanDiff) -> Outcome:
        raise NotImplementedError

    # --- writing ahead ------------------------------------------------------------

    def _flush(self) -> None:
        if self._events or self._out or self._then or self._cache or self._finished:
            out = [(identity, _encoded(message)) for identity, message in self._out]
            out += [(identity, encode(Ack(id=ids[0], more=ids[1:])))
                    for identity, ids in self._finished.items()]
            self.ctx.store.tell(Write(self._events, out, self._then, cache=self._cache))
            self._events, self._out, self._cache, self._then = [], [], [], None
            self._finished = {}

    def _send(self, identity: bytes | None, message: Message) -> None:
        if identity:  # internal requests (a schedule's Submit) have nobody to answer
            self._out.append((identity, message))

    def _ack_finish(self, identity: bytes, correlation: str) -> None:
        """Acknowledge a Finish with the others of this batch from that supervisor:
        one Ack frame for all (``Ack.more``), a message less per task for both."""
        if identity:
            self._finished.setdefault(identity, []).append(correlation)

    def _unsend(self, identity: bytes, correlation: str) -> None:
        """Take back every reply queued for that peer's request ``correlation``."""
        self._out = [(peer, m) for peer, m in self._out
                     if (peer, m.id) != (identity, correlation)]
        ids = [i for i in self._finished.get(identity, ()) if i != correlation]
        if ids:
            self._finished[identity] = ids
        else:
            self._finished.pop(identity, None)

    def _record(self, event: dict[str, Any], *, applied: bool = False) -> Outcome:
        """Add an event to the stream; fold it unless the state already holds it."""
        ts = self._now()
        if applied:
            self.st.note()
            out = Outcome()
        else:
            out = self.st.fold(event, ts)
        self._events.append(StoredEvent(self.wf, self.st.seq, ts, event,
                                        len(self.st.plan.nodes)))
        return out

    # --- time -----------------------------------------------------------------------

    def _now(self) -> float:
        return self.ctx.clock.now()

    def _at(self, when: float, message: Any) -> None:
        """Tell ourselves ``message`` at ``when`` on Flow's clock (a durable timer:
        what it stands for is stored, and re-armed at restart)."""
        self.ctx.clock_timers.call_at(when, self._teller(message))

    def _later(self, delay: float, message: Any) -> None:
        """Tell ourselves ``message`` in ``delay`` seconds of monotonic time."""
        self.ctx.timers.call_later(delay, self._teller(message))

    def _teller(self, message: Any) -> Callable[[], None]:
        ref = self.actor_ref

        def fire() -> None:  # on a timer thread: only a tell
            safe_tell(ref, message)

        return fire

    # --- nodes ----------------------------------------------------------------------

    def _current(self, node_id: str, attempt: int) -> bool:
        node = self.st.plan.nodes.get(node_id)
        return (not self.st.ended and node is not None and node.attempt == attempt
                and node.state in ACTIVE)

    def _set(self, node_id: str, state: NodeState, *, attempt: int | None = None,
             **extra: Any) -> None:
        """Record a transition made from outside the plan and react to it. A READY
        state is a retry (attempt + 1) unless ``attempt`` says otherwise."""
        node = self.st.plan.nodes[node_id]
        was, was_attempt = node.state, node.attempt
        if attempt is None:
            attempt = node.attempt + 1 if state is NodeState.READY else node.attempt
        out = self._record(state_event(node_id, state, attempt, **extra))
        if was is NodeState.RUNNING and node_id in self.limited:
            self.ctx.dispatcher.tell(Stopped(self.wf, node_id, was_attempt))
        if state not in ACTIVE:
            self.attempts.pop(node_id, None)
            self._drop_wait(node_id)
            self.beats.pop(node_id, None)
            # Its next assignment (a retry, or this attempt again after a durable
            # wait) is a new stint: its start notice arms start-to-close anew.
            self.confirmed.pop(node_id, None)
        if state in TERMINAL:
            self.limited.pop(node_id, None)
            self._wake(node_id)
            if state is not NodeState.SUCCEEDED:
                self._cancel_downstream(node.succs)
        self._react(out)

    def _drop_wait(self, node_id: str) -> None:
        rec = self.waits.pop(node_id, None)
        if rec is not None and rec.signal is not None:
            waiting = self.signal_waiters.get(rec.signal, [])
            if node_id in waiting:
                waiting.remove(node_id)

    def _react(self, out: Outcome) -> None:
        if self.st.ended:
            return  # nothing runs after the end; cancellation already stopped it all
        for node_id in out.ready:
            self._enqueue(node_id)
        for violation in out.violations:
            self._record({"type": "violation", "rejection": violation.to_dict()},
                         applied=True)
        if out.violations:
            self._terminate("violated", violation_error(out.violations[0]))

    def _cancel_downstream(self, start: list[str]) -> None:
        """Cancel nodes that can never run because something they follow failed."""
        nodes = self.st.plan.nodes
        stack, outcomes = list(start), []
        while stack:
            node = nodes[stack.pop()]
            if node.state in (NodeState.PENDING, NodeState.READY):
                outcomes.append(self._record(state_event(node.id, NodeState.CANCELLED,
                                                         node.attempt)))
                self._wake(node.id)
                stack.extend(node.succs)
        for out in outcomes:  # a region may close, releasing or breaking something
            self._react(out)

    def _wake(self, node_id: str) -> None:
        """``node_id`` ended: satisfy every wait that was only missing it."""
        for waiter in self.watchers.pop(node_id, ()):
            rec = self.waits.get(waiter)
            if rec is None or node_id not in rec.pending:
                continue
            rec.pending.discard(node_id)
            if not rec.pending and rec.due is None and rec.signal is None:
                self._satisfy(waiter)

    def _rewatch(self) -> None:
        """Nodes made live again (an operator restarted a node that a task waits on):
        waited for again, as a keeper rebuilt from the events would. Else the wait
        was answered with the restarted node's "ready" state, taken for a failure."""
        nodes = self.st.plan.nodes
        for waiter, rec in self.waits.items():
            for h in rec.handles:
                if h not in rec.pending and nodes[h].live:
                    rec.pending.add(h)
                    self.watchers.setdefault(h, []).append(waiter)

    def _note_recorded(self, node_id: str, attempt: int, values: list[Recorded]) -> None:
        """Store the values a task drew (once per record seq) before answering it."""
        if not values:
            return
        log = self.st.log(node_id, attempt)
        new = [v.model_dump() for v in values if v.seq not in log.recorded]
        if new:
            self._record({"type": "recorded", "node": node_id, "attempt": attempt,
                          "values": new})

    def _node_result(self, node_id: str) -> NodeResult:
        node = self.st.plan.nodes[node_id]
        error = self.st.errors.get(node_id) if node.state is NodeState.FAILED else None
        return NodeResult(state=node.state.value, output=node.output, error=error)

    # --- towards a worker -----------------------------------------------------------

    def _enqueue(self, node_id: str) -> None:
        """A ready node may run: held back while paused; a caching task's node is
        looked up first; otherwise it is queued for a worker."""
        if self.st.ended:
            return
        if self.st.paused:
            self.held.add(node_id)
            return
        node = self.st.plan.nodes[node_id]
        info = self.ctx.catalog.get(node.task)
        if info is not None and info.cache and self.ctx.cache is not None \
                and not _must_create(node) and not _restarted(node):
            try:
                key = cache_key(node.task, info.version, self._resolve(node.inputs))
            except (TypeError, ValueError) as exc:  # not data: it runs, uncached
                log.warning("keeper %s: %s is not cached: %s", self.wf, node_id, exc)
            else:
                self.cache_keys[node_id] = (key, info.version or "")
                self.ctx.cache.tell(Lookup(self.actor_ref, node_id, node.attempt, key))
                return
        self._queue(node_id)

    def _queue(self, node_id: str) -> None:
        node = self.st.plan.nodes[node_id]
        limits = tuple(self.st.plan.limits(node_id))
        if limits:
            self.limited[node_id] = limits
        self.ctx.dispatcher.tell(Ready(self.wf, node_id, node.attempt, node.task, limits))
        self._count_queued(node_id)

    def _count_queued(self, node_id: str) -> None:
        """Schedule-to-start counts from now (a timer armed before is a no-op then)."""
        node = self.st.plan.nodes[node_id]
        info = self.ctx.catalog.get(node.task)
        now = self.queued_at[node_id] = self._now()
        if info is not None and info.schedule_to_start:
            self._at(now + info.schedule_to_start,
                     Expire(node_id, node.attempt, "schedule", since=now))

    def _resolve(self, value: Any) -> Any:
        """Inputs with every ``{"$ref": id}`` replaced by that node's output."""
        if isinstance(value, dict):
            ref = value.get("$ref")
            if len(value) == 1 and isinstance(ref, str) and ref in self.st.plan.nodes:
                return self.st.plan.nodes[ref].output
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._resolve(v) for v in value]
        return value


def _must_create(node: Node) -> bool:
    """Whether what the node creates may be needed by a Shape: its own one, unless
    it matches nothing at all, or an open region of an ancestor's it is in (what
    it creates is part of that region). A cache hit, which creates nothing, would
    break the promise and end an honest workflow."""
    return any(t.owner == node.id and isinstance(t.promise, Shape)
               and not t.promise.expr.nullable for t in node.trackers) \
        or any(not region.closed for region in node.regions)


def _restarted(node: Node) -> bool:
    """A run an operator restarted (the node or one upstream), retries included: it
    runs for real, or the restart would hand back the result it was to redo."""
    return node.base_attempt > 1


def _encoded(message: Message) -> bytes:
    """A reply's frame; one that cannot be encoded is answered with an Error instead.
    Raised here, it lost the whole batch's events and ended the keeper."""
    try:
        return encode(message)
    except (TypeError, ValueError) as exc:
        log.exception("keeper: a %s could not be encoded", type(message).__name__)
        return encode(Error(id=message.id, code="internal",
                            reason=f"the reply could not be encoded: {exc}"))
