"""The messages Flow's actors tell one another (never on the wire).

Actors only ``tell``: a request that needs an answer carries whom to answer
(a socket identity for a peer), and answers flow forward, through the Store,
which sends nothing before it has committed what caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from plait.protocol.messages import Message

__all__ = [
    "Expire", "Join", "Leave", "Lost", "OrphanCheck", "Publish", "Ready", "Refund", "Request",
    "Resumed", "RetryDue", "Start", "Stopped", "StoredEvent", "Supply", "Tick", "Welcomed",
    "Write",
]


class StoredEvent(NamedTuple):
    workflow_id: str
    seq: int
    ts: float
    event: Mapping[str, Any]


# --- to the Store and the Publisher ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Events to record, then frames to send (``(identity, frame)``) and a callback
    to run once they are committed (it runs on the Store's thread: keep it a tell)."""

    events: Sequence[StoredEvent] = ()
    out: Sequence[tuple[bytes, bytes]] = ()
    then: Callable[[], None] | None = None


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
    """Dispatcher -> Keeper: run the node on this supervisor (one credit spent)."""

    node: str
    attempt: int
    supervisor: str
    identity: bytes


@dataclass(frozen=True, slots=True)
class Refund:
    """Keeper -> Dispatcher: the entry was stale; give the credit back."""

    workflow_id: str
    node: str
    supervisor: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """Keeper -> Dispatcher: a node bound by MaxParallel left the running state."""

    workflow_id: str
    node: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """Keeper -> Dispatcher: a suspended node runs again (it holds its slots again)."""

    workflow_id: str
    node: str
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
    runs was lost, and a claimed attempt that is no longer current is stopped."""

    supervisor: str
    identity: bytes
    claims: frozenset[tuple[str, int]] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Lost:
    """A supervisor was declared dead: its attempts failed (SupervisorLost)."""

    supervisor: str


@dataclass(frozen=True, slots=True)
class OrphanCheck:
    """After a restart: attempts no supervisor claimed by now are failed."""


@dataclass(frozen=True, slots=True)
class RetryDue:
    """A retry's backoff elapsed: queue the node (if still at this attempt)."""

    node: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Expire:
    """A task's start-to-close timeout elapsed for this attempt."""

    node: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Membership: time to heartbeat and to look for silent supervisors."""
