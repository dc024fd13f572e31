"""The Dispatcher: ready queues per task, supervisor credits, MaxParallel.

It is told mail like an actor, but it has no thread: ``tell`` runs the
matching at once, in the caller's thread, under a lock. A keeper that makes a
node ready thus finds its Start in its own inbox before it writes, and the
node's assignment is committed with what made it ready (one commit and no
thread hop on a chain's critical path, instead of two and three).

Keepers tell it which nodes are ready; supervisors grant credit (one per free
worker slot). Whenever both meet, it spends a credit and tells the node's
keeper to start it there, round robin over the supervisors serving the task.
The keeper checks that the node is still ready at that attempt; if not (the
workflow was cancelled, the entry is a leftover), it refunds the credit: queue
entries are deleted lazily, so nothing here ever scans a workflow.

``MaxParallel`` limits (``plan.limits(node)``: key and size) are counted here:
an entry whose limit is full waits in that limit's line until a node bound by
it stops running.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from plait.actors.mail import Join, Leave, Ready, Refund, Resumed, Start, Stopped, Supply
from plait.actors.registry import Counters, Registry, Sessions

__all__ = ["Dispatcher"]

Limits = tuple[tuple[str, int], ...]


@dataclass
class Supervisor:
    identity: bytes
    tasks: frozenset[str]
    credit: int
    session: int  # which join of this supervisor
    order: list[str] = field(init=False)  # its tasks, sorted once

    def __post_init__(self) -> None:
        self.order = sorted(self.tasks)


class Dispatcher:
    """Matches ready nodes with supervisor credit; see the module docstring."""

    def __init__(self, registry: Registry, counters: Counters,
                 sessions: Sessions | None = None) -> None:
        self._lock = threading.Lock()
        self.registry = registry
        self.counters = counters
        self.sessions = sessions  # who is connected: a Leave may come after a new Hello
        self.queues: dict[str, deque[Ready]] = {}
        self.supervisors: dict[str, Supervisor] = {}
        self.serving: dict[str, list[str]] = {}  # task -> supervisor ids, in join order
        self.turn: Counter[str] = Counter()  # task -> next supervisor to try
        self.held: dict[str, deque[Ready]] = {}  # limit key -> entries waiting for a slot
        self.running: Counter[str] = Counter()  # limit key -> nodes running under it
        # (workflow, node, attempt) -> its limits. By attempt: a restarted node's new
        # attempt is not taken for a leftover while its old one's Start is on its way.
        self.active: dict[tuple[str, str, int], Limits] = {}
        self.assigned = 0
        self.joins = 0

    def tell(self, message: Any) -> None:
        """Handle ``message`` now (any thread may call it)."""
        with self._lock:
            self.on_receive(message)

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Ready):
            self.queues.setdefault(message.task, deque()).append(message)
            self._pump(message.task)
        elif isinstance(message, Supply | Refund):
            self._supply(message)
        elif isinstance(message, Stopped):
            self._release(message.workflow_id, message.node, message.attempt)
        elif isinstance(message, Resumed):
            self._hold(message.workflow_id, message.node, message.attempt, message.limits)
        elif isinstance(message, Join):
            self._join(message)
        elif isinstance(message, Leave):
            self._gone(message.supervisor)
        else:
            raise TypeError(f"the Dispatcher is not told {type(message).__name__}")

    # --- supervisors ----------------------------------------------------------------

    def _join(self, msg: Join) -> None:
        self._leave(msg.supervisor)
        self.joins += 1
        self.supervisors[msg.supervisor] = Supervisor(msg.identity, msg.tasks, msg.slots,
                                                      self.joins)
        for task in msg.tasks:
            self.serving.setdefault(task, []).append(msg.supervisor)
        self._pump_for(msg.supervisor)

    def _gone(self, supervisor: str) -> None:
        """Membership declared it dead, unless it said Hello again meanwhile: its
        session there is live again (Membership's expiry and the Gateway's Hello run
        in two threads). Forgotten, a connected supervisor would idle for good: its
        Credit is ignored, and it has no reason to say Hello again."""
        sup = self.supervisors.get(supervisor)
        if sup is not None and self.sessions is not None \
                and self.sessions.current(supervisor, sup.identity):
            return
        self._leave(supervisor)

    def _leave(self, supervisor: str) -> None:
        sup = self.supervisors.pop(supervisor, None)
        if sup is None:
            return
        for task in sup.tasks:
            self.serving[task].remove(supervisor)

    def _supply(self, msg: Supply | Refund) -> None:
        if isinstance(msg, Refund):
            self._release(msg.workflow_id, msg.node, msg.attempt)
        sup = self.supervisors.get(msg.supervisor)
        if sup is None or (isinstance(msg, Refund) and msg.session != sup.session):
            return
        sup.credit += msg.n if isinstance(msg, Supply) else 1
        self._pump_for(msg.supervisor)

    def _pump_for(self, supervisor: str) -> None:
        tasks = self.supervisors[supervisor].order
        if not tasks:
            return
        start = self.assigned % len(tasks)  # rotate, so no task starves the others
        for task in tasks[start:] + tasks[:start]:
            self._pump(task)

    # --- matching -------------------------------------------------------------------

    def _pump(self, task: str) -> None:
        queue = self.queues.get(task)
        reopened: set[str] = set()
        while queue:
            supervisor = self._pick(task)
            if supervisor is None:
                break
            entry = queue.popleft()
            full = next((key for key, n in entry.limits if self.running[key] >= n), None)
            if full is not None:
                self.held.setdefault(full, deque()).append(entry)
                continue
            if not self._dispatch(entry, supervisor):
                reopened |= self._reopen(entry.limits)  # it took no slot: pass it on
        for other in reopened:
            self._pump(other)

    def _pick(self, task: str) -> str | None:
        """The next supervisor serving ``task`` that has credit (round robin)."""
        sids = self.serving.get(task) or []
        start = self.turn[task]
        for i in range(len(sids)):
            sid = sids[(start + i) % len(sids)]
            if self.supervisors[sid].credit > 0:
                self.turn[task] = (start + i + 1) % len(sids)
                return sid
        return None

    def _dispatch(self, entry: Ready, supervisor: str) -> bool:
        """Start the entry there; False if it is dropped as stale."""
        if (entry.workflow_id, entry.node, entry.attempt) in self.active:
            # That attempt runs already (a leftover entry): a Start would be refunded,
            # and the refund would release the slot the running one holds.
            self.counters.add("dispatch.stale")
            return False
        sup = self.supervisors[supervisor]
        start = Start(entry.node, entry.attempt, supervisor, sup.identity, sup.session)
        if not self.registry.tell(entry.workflow_id, start):
            self.counters.add("dispatch.gone")  # the workflow ended: a stale entry
            return False
        sup.credit -= 1
        self.assigned += 1
        self._hold(entry.workflow_id, entry.node, entry.attempt, entry.limits)
        return True

    # --- MaxParallel ----------------------------------------------------------------

    def _hold(self, workflow_id: str, node: str, attempt: int, limits: Limits) -> None:
        if limits and (workflow_id, node, attempt) not in self.active:
            self.active[(workflow_id, node, attempt)] = limits
            for key, _ in limits:
                self.running[key] += 1

    def _release(self, workflow_id: str, node: str, attempt: int) -> None:
        limits = self.active.pop((workflow_id, node, attempt), ())
        for key, _ in limits:
            self.running[key] -= 1
            if self.running[key] <= 0:
                del self.running[key]
        for task in self._reopen(limits):
            self._pump(task)

    def _reopen(self, limits: Limits) -> set[str]:
        """For each limit with a free slot, its next held entry of a live workflow
        gets another look (at the front of its task's queue); entries of ended
        workflows are dropped on the way, so they never take the wake-up. A
        reopened entry that turns out stale is refunded or dropped, which reopens
        again: held entries never wait for a slot nobody will free. Returns the
        task queues to pump."""
        tasks = set()
        for key, n in limits:
            line = self.held.get(key)
            while line and self.running[key] < n:
                entry = line.popleft()
                if self.registry.is_live(entry.workflow_id):
                    self.queues.setdefault(entry.task, deque()).appendleft(entry)
                    tasks.add(entry.task)
                    break
                self.counters.add("dispatch.gone")
            if line is not None and not line:
                del self.held[key]
        return tasks
