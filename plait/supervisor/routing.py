"""The Relay's routing table: what each worker process is doing.

The WorkerPool actor owns the processes; the Relay keeps, in its own thread,
which worker runs which attempt and in what phase (waiting, being cancelled,
being evicted, retiring), learning of processes from the pool's ``started``
and ``died`` events and of readiness from the workers' ``WorkerReady``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from plait.protocol.messages import Assign


@dataclass(eq=False)
class Worker:
    """One worker process as the Relay sees it."""

    ident: bytes
    pid: int
    ready: bool = False
    assign: Assign | None = None
    since: float = 0.0  # when it was handed ``assign``
    # The attempt sent ahead (with its frame): it starts when ``assign`` ends.
    ahead: tuple[Assign, bytes] | None = None
    retracting: bool = False  # a Retract of ``ahead`` is not answered yet
    ahead_cancelled: bool = False  # Flow cancelled ``ahead``; the worker was told
    waiting: bool = False  # its task awaits other nodes (Wait sent, no Resolved yet)
    cancelling: bool = False
    evicting: bool = False  # told to drop its waiting task; WorkerReady says it has
    retiring: bool = False  # an idle spare the pool was told to terminate
    idle_since: float = 0.0

    @property
    def idle(self) -> bool:
        # An attempt still sent ahead: a Retract is out, and its answer says whether
        # the worker started it.
        return self.ready and self.assign is None and self.ahead is None and not self.retiring


class Workers:
    """Worker records by socket identity, and the pool size they call for."""

    def __init__(self, size: int, max_size: int, linger: float = 10.0) -> None:
        self.size = size
        self.max_size = max_size
        self.linger = linger  # an extra idle worker is retired after this many seconds
        self.by_ident: dict[bytes, Worker] = {}

    def get(self, ident: bytes) -> Worker | None:
        return self.by_ident.get(ident)

    def values(self) -> list[Worker]:
        return list(self.by_ident.values())

    def waiting(self) -> int:
        return sum(1 for w in self.by_ident.values() if w.waiting)

    def target(self) -> int:
        """Processes wanted: N, plus a stand-in for each worker held by a waiting task."""
        return self.size + min(self.waiting(), max(self.max_size - self.size, 0))

    def idle(self) -> Worker | None:
        return next((w for w in self.by_ident.values() if w.idle), None)

    def spares(self, now: float) -> list[Worker]:
        """Idle workers beyond the target, idle for ``linger``: waits come and go
        quickly, and keeping a spare a while avoids restart churn."""
        live = [w for w in self.by_ident.values() if not w.retiring]
        excess = len(live) - self.target()
        if excess <= 0:
            return []
        spare = [w for w in live if w.idle and now - w.idle_since >= self.linger]
        return spare[:excess]


class _OfAnAttempt(Protocol):
    @property
    def workflow_id(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def attempt(self) -> int: ...


def attempt_of(msg: _OfAnAttempt) -> tuple[str, str, int]:
    """Which attempt a message is about."""
    return msg.workflow_id, msg.node, msg.attempt


def describe_death(pid: int, returncode: int) -> str:
    why = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return f"worker pid {pid} died ({why})"
