"""Small thread-safe tables that Flow's actors share instead of asking each other.

Asking an actor from another actor blocks and can deadlock (pykka's guide), so
the few facts several actors need at once live here, each behind a lock held
only for a dictionary operation: which workflows are live (and their keepers),
which supervisors are connected, what each task's metadata is, and the error
counters of the edge.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka

from plait.protocol.messages import TaskInfo

__all__ = ["Catalog", "Counters", "Registry", "Session", "Sessions", "safe_tell"]

T = TypeVar("T")


def safe_tell(ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
    """Tell ``ref`` unless it has stopped; a stopped actor no longer needs to know."""
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


class Registry:
    """Live workflows and their PlanKeeper actors, plus every workflow id ever used.

    The gateway looks a keeper up and tells it under the lock, and a keeper
    retires by removing itself under the same lock, so no request can slip into
    a keeper's inbox after it decided to stop.
    """

    def __init__(self, known: set[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._keepers: dict[str, pykka.ActorRef[Any]] = {}
        self._known: set[str] = set(known or ())
        # Workflow -> how often a keeper of it started or left: a state read from the
        # events while this stood still is the committed state (see ``adopt``).
        self._turns: dict[str, int] = {}
        self._closed = False  # Flow is stopping: no keeper starts any more

    def claim(self, workflow_id: str) -> bool:
        """Reserve a new workflow id; False if it was ever used."""
        with self._lock:
            if workflow_id in self._known:
                return False
            self._known.add(workflow_id)
            return True

    def release(self, workflow_id: str) -> None:
        """Forget an id whose registration was rejected: it never existed."""
        with self._lock:
            self._known.discard(workflow_id)
            if self._keepers.pop(workflow_id, None) is not None:
                self._turn(workflow_id)

    def add(self, workflow_id: str, keeper: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._known.add(workflow_id)
            self._keepers[workflow_id] = keeper
            self._turn(workflow_id)

    def _turn(self, workflow_id: str) -> None:
        self._turns[workflow_id] = self._turns.get(workflow_id, 0) + 1

    def adopt(self, workflow_id: str, load: Callable[[], T],
              start: Callable[[T], pykka.ActorRef[Any]], message: Any,
              tries: int = 10) -> bool:
        """Tell the workflow's keeper ``message``, starting one if it has none: how an
        ended workflow comes back (a restart, new attributes). ``load()`` reads its
        state from the committed events, outside the lock; ``start(state)`` runs
        under it, so two requests never start two keepers. A keeper that came and
        went while ``load`` ran (it committed what ``load`` may have missed) means
        loading again. False if that happened ``tries`` times."""
        for _ in range(tries):
            with self._lock:
                if safe_tell(self._keepers.get(workflow_id), message):
                    return True
                turn = self._turns.get(workflow_id, 0)
            state = load()
            with self._lock:
                if safe_tell(self._keepers.get(workflow_id), message):
                    return True
                if self._closed:
                    return False
                if self._turns.get(workflow_id, 0) != turn:
                    continue
                keeper = self._keepers[workflow_id] = start(state)
                self._known.add(workflow_id)
                self._turn(workflow_id)
                keeper.tell(message)
                return True
        return False

    def close(self) -> list[pykka.ActorRef[Any]]:
        """No keeper is adopted from now on (Flow is stopping); the live keepers."""
        with self._lock:
            self._closed = True
            return list(self._keepers.values())

    def is_live(self, workflow_id: str) -> bool:
        with self._lock:
            return workflow_id in self._keepers

    def remove(self, workflow_id: str) -> pykka.ActorRef[Any] | None:
        with self._lock:
            keeper = self._keepers.pop(workflow_id, None)
            if keeper is not None:
                self._turn(workflow_id)
            return keeper

    def tell(self, workflow_id: str, message: Any) -> bool:
        """Tell the workflow's keeper; False when the workflow is not live."""
        with self._lock:
            return safe_tell(self._keepers.get(workflow_id), message)

    def broadcast(self, message: Any | Callable[[str], Any]) -> list[str]:
        """Tell every keeper ``message`` (or ``message(workflow_id)``); the workflows told."""
        with self._lock:
            keepers = list(self._keepers.items())
        for workflow_id, ref in keepers:
            safe_tell(ref, message(workflow_id) if callable(message) else message)
        return [workflow_id for workflow_id, _ in keepers]

    def live(self) -> list[str]:
        with self._lock:
            return list(self._keepers)


@dataclass
class Session:
    """One connected supervisor: its current socket identity and when it last spoke."""

    supervisor_id: str
    identity: bytes
    last_seen: float


class Sessions:
    """Connected supervisors by id and by ROUTER identity (written by the gateway on
    Hello and on every frame, read and pruned by Membership)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}
        self._by_identity: dict[bytes, Session] = {}

    def join(self, supervisor_id: str, identity: bytes) -> None:
        with self._lock:
            old = self._by_id.get(supervisor_id)
            if old is not None:
                self._by_identity.pop(old.identity, None)
            session = Session(supervisor_id, identity, time.monotonic())
            self._by_id[supervisor_id] = session
            self._by_identity[identity] = session

    def touch(self, identity: bytes) -> str | None:
        """Note that ``identity`` spoke; its supervisor id, or None if unknown."""
        with self._lock:
            session = self._by_identity.get(identity)
            if session is None:
                return None
            session.last_seen = time.monotonic()
            return session.supervisor_id

    def current(self, supervisor_id: str, identity: bytes) -> bool:
        """Whether ``identity`` is the supervisor's live connection (not one it left,
        and not a supervisor declared dead)."""
        with self._lock:
            session = self._by_id.get(supervisor_id)
            return session is not None and session.identity == identity

    def refresh(self) -> None:
        """Count every supervisor's silence from now."""
        now = time.monotonic()
        with self._lock:
            for session in self._by_id.values():
                session.last_seen = now

    def joined(self, supervisor_id: str) -> bool:
        """Whether the supervisor has a session (a Hello since any expiry)."""
        with self._lock:
            return supervisor_id in self._by_id

    def expire(self, timeout: float) -> tuple[list[str], list[bytes]]:
        """Remove supervisors silent for ``timeout`` seconds, atomically (a Hello that
        races with this keeps its fresh session); returns (expired ids, live identities)."""
        now = time.monotonic()
        with self._lock:
            dead = [s for s in self._by_id.values() if now - s.last_seen > timeout]
            for session in dead:
                del self._by_id[session.supervisor_id]
                self._by_identity.pop(session.identity, None)
            return ([s.supervisor_id for s in dead],
                    [s.identity for s in self._by_id.values()])


class Catalog:
    """Task metadata from supervisors' Hello messages (Flow never imports task code).

    It is stored (the ``tasks`` table) and read back when Flow starts: the
    workflows restored then need their tasks' timeouts and retry policies before
    any supervisor has said Hello again."""

    def __init__(self, tasks: Iterable[TaskInfo] = ()) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskInfo] = {info.name: info for info in tasks}

    def update(self, tasks: list[TaskInfo]) -> list[TaskInfo]:
        """Take what a Hello says of its tasks; the ones that are new or changed."""
        with self._lock:
            changed = [info for info in tasks if self._tasks.get(info.name) != info]
            for info in changed:
                self._tasks[info.name] = info
            return changed

    def get(self, name: str) -> TaskInfo | None:
        with self._lock:
            return self._tasks.get(name)


class Counters:
    """Named event counts (errors by code, dropped duplicates...), for tests and ops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
