"""The messages Flow's actors tell one another (never on the wire).

Actors only ``tell``: a request that needs an answer carries whom to answer
(a socket identity for a peer), and answers flow forward, through the Store,
which sends nothing before it has committed what caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from plait.protocol.messages import Finish, Message, SetState, TaskHeartbeat

__all__ = [
    "LATE", "CacheAnswer", "CacheEntry", "Expire", "Join", "Leave", "Lookup", "Lost", "OrphanCheck",
    "Publish", "Ready", "Refund", "Request", "Resumed", "Retire", "RetryDue", "RunEnded",
    "ScheduleChange", "ScheduleDue", "Serving", "Start", "Stopped", "StoredEvent", "Supply", "Tick",
    "TimerDue", "Welcomed", "Write",
]

# A worker's reports once its workflow is over: acknowledged and counted as
# dropped, by the Gateway or by a keeper told them just before it left.
LATE = (Finish, TaskHeartbeat, SetState)


class StoredEvent(NamedTuple):
    """An event on its way to the database. ``nodes``: the workflow's node count
    once the event is applied (the ``workflows`` row shows it; not part of the
    event itself)."""

    workflow_id: str
    seq: int
    ts: float
    event: Mapping[str, Any]
    nodes: int | None = None


class ScheduleChange(NamedTuple):
    """A schedule stored (``body``: its dict form) or removed (``body`` None)."""

    name: str
    body: Mapping[str, Any] | None


class CacheEntry(NamedTuple):
    """A successful result of a ``cache=True`` task, under its cache key."""

    key: str
    task: str
    version: str
    output: Any
    workflow_id: str
    node: str
    ts: float


# --- to the Store and the Publisher ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Events to record (with schedule changes and cache entries, in the same
    transaction), then frames to send (``(identity, frame)``) and a callback to run
    once they are committed (it runs on the Store's thread: keep it a tell)."""

    events: Sequence[StoredEvent] = ()
    out: Sequence[tuple[bytes, bytes]] = ()
    then: Callable[[], None] | None = None
    schedules: Sequence[ScheduleChange] = ()
    cache: Sequence[CacheEntry] = ()
    tasks: Sequence[dict[str, Any]] = ()  # TaskInfo dumps: what Hellos said of tasks


@dataclass(frozen=True, slots=True)
class Publish:
    """Committed events for the feed."""

    events: Sequence[StoredEvent]


# --- from the Gateway ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A validated message from a peer (client or supervisor), and whom to answer."""

    identity: bytes
    message: Message


# --- the Dispatcher's ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """Keeper -> Dispatcher: this node (at this attempt) may run; ``limits`` are its
    MaxParallel keys and sizes."""

    workflow_id: str
    node: str
    attempt: int
    task: str
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Start:
    """Dispatcher -> Keeper: run the node on this supervisor (one credit spent from
    its ``session``: the Dispatcher counts each join of a supervisor anew)."""

    node: str
    attempt: int
    supervisor: str
    identity: bytes
    session: int = 0


@dataclass(frozen=True, slots=True)
class Refund:
    """Keeper -> Dispatcher: the entry was stale; give the credit back (and the
    MaxParallel slot that Start of this attempt took)."""

    workflow_id: str
    node: str
    attempt: int
    supervisor: str
    # The Start's: a credit spent before the supervisor joined again is not given
    # back (its Hello counted that slot among its free ones already).
    session: int = 0


@dataclass(frozen=True, slots=True)
class Stopped:
    """Keeper -> Dispatcher: an attempt of a node bound by MaxParallel left the
    running state."""

    workflow_id: str
    node: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Resumed:
    """Keeper -> Dispatcher: a suspended node runs again (it holds its slots again)."""

    workflow_id: str
    node: str
    attempt: int
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Join:
    """A supervisor (re)joined: what it serves and its free slots."""

    supervisor: str
    identity: bytes
    tasks: frozenset[str]
    slots: int


@dataclass(frozen=True, slots=True)
class Supply:
    """A supervisor granted ``n`` more credits."""

    supervisor: str
    n: int


@dataclass(frozen=True, slots=True)
class Leave:
    """A supervisor is gone: forget its credits."""

    supervisor: str


# --- to the PlanKeepers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcomed:
    """A supervisor said Hello: its attempts of this workflow in ``claims`` (node,
    attempt) keep running, now at ``identity``; any other attempt Flow thinks it
    runs was lost, and a claimed attempt that is no longer current is stopped.
    Those in ``evicted`` run nowhere there, and their durable Wait is on its way:
    not claimed (the attempt may run elsewhere since), and not failed at once."""

    supervisor: str
    identity: bytes
    claims: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    evicted: frozenset[tuple[str, int]] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Lost:
    """A supervisor was declared dead: its attempts failed (SupervisorLost)."""

    supervisor: str


@dataclass(frozen=True, slots=True)
class OrphanCheck:
    """After a restart: attempts no supervisor claimed by now are failed."""


@dataclass(frozen=True, slots=True)
class Serving:
    """Flow serves now (after a restart): supervisors can claim what they run, so
    the wait for their claims (then an OrphanCheck) starts."""


@dataclass(frozen=True, slots=True)
class RetryDue:
    """A retry's backoff elapsed: queue the node (if still at this attempt)."""

    node: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Expire:
    """A timeout of this attempt may have elapsed: ``kind`` is ``start`` (start to
    close), ``heartbeat`` or ``schedule`` (schedule to start); ``since`` is when its
    count began, so that a count restarted since then ignores this one."""

    node: str
    attempt: int
    kind: str = "start"
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class TimerDue:
    """A durable sleep of this attempt (record seq ``seq``) is due."""

    node: str
    attempt: int
    seq: int


@dataclass(frozen=True, slots=True)
class Lookup:
    """Keeper -> Cache: is there a stored result under ``key``? Answer ``keeper``."""

    keeper: Any  # pykka.ActorRef
    node: str
    attempt: int
    key: str


@dataclass(frozen=True, slots=True)
class CacheAnswer:
    """Cache -> Keeper: ``found`` with ``output``, or a miss."""

    node: str
    attempt: int
    key: str
    found: bool
    output: Any = None


@dataclass(frozen=True, slots=True)
class Retire:
    """To a keeper, once its events up to ``seq`` are committed: leave, unless its
    workflow runs again (restarted) or wrote more since."""

    seq: int


# --- to the Scheduler ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleDue:
    """A schedule's next tick may have come (the timer was armed for ``at``)."""

    at: float | None = None


@dataclass(frozen=True, slots=True)
class RunEnded:
    """A workflow's end is committed (a schedule may start its queued run)."""

    workflow_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Membership: time to heartbeat and to look for silent supervisors."""
