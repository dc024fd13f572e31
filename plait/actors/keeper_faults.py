"""A keeper's faults: failed attempts and their retries (durable backoff),
timeouts (schedule-to-start, start-to-close, heartbeat), and supervisors that
come back (Hello) or are lost.

Every timeout counts on Flow's clock and is keyed by when its count began
(``Expire.since``): a count restarted since (a new stint, a heartbeat, a
re-queue) makes the older timer a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plait.actors.keeper_base import AttemptRec, KeeperBase
from plait.actors.mail import Expire, OrphanCheck, RetryDue, Welcomed
from plait.actors.retry import SUPERVISOR_LOST, RetryPolicy
from plait.protocol.diff import NodeState
from plait.protocol.messages import CancelTask

__all__ = ["FaultMixin"]

TIMEOUTS = {
    "start": ("TimeoutError", "attempt {attempt} ran past its start-to-close timeout"),
    "heartbeat": ("HeartbeatTimeout", "attempt {attempt} sent no heartbeat in time"),
}


class FaultMixin(KeeperBase):
    def _failed(self, node_id: str, error: dict[str, Any]) -> None:
        """A failed attempt: retried per the task's policy after a durable backoff,
        else the node fails (and a failed root fails the whole workflow now)."""
        returned = self._undeliver(node_id)
        self._fail_or_retry(node_id, error)
        for name in returned:  # someone (the retry, maybe) may wait for them now
            self._offer(name)

    def _undeliver(self, node_id: str) -> list[str]:
        """Put the signals the failed attempt consumed back at the front of their
        buffers, in order (its retry starts with none); the names concerned."""
        node = self.st.plan.nodes[node_id]
        log = self.st.logs.get(node_id)
        if log is None or log.attempt != node.attempt or not log.signals:
            return []
        consumed = log.consumed()
        self._record({"type": "undelivered", "node": node_id, "attempt": node.attempt,
                      "signals": consumed})
        return list(dict.fromkeys(str(name) for name, _ in consumed))

    def _fail_or_retry(self, node_id: str, error: dict[str, Any]) -> None:
        node = self.st.plan.nodes[node_id]
        policy = RetryPolicy.of(self.ctx.catalog.get(node.task))
        if not policy.retries(error, node.tries):
            self._set(node_id, NodeState.FAILED, error=error)
            if node_id == self.st.root and not self.st.ended:
                self._terminate("failed", self.st.failure_of(node_id))
            return
        delay = policy.delay(node.tries) * self.ctx.retry_scale
        due = self._now() + delay
        self._set(node_id, NodeState.READY, error=error, due=due if delay > 0 else None)
        if delay > 0:
            self._at(due, RetryDue(node_id, node.attempt))
        else:
            self._enqueue(node_id)

    def _retry_due(self, msg: RetryDue) -> None:
        node = self.st.plan.nodes.get(msg.node)
        if (not self.st.ended and node is not None and node.state is NodeState.READY
                and node.attempt == msg.attempt):
            self._enqueue(msg.node)

    # --- timeouts ----------------------------------------------------------------------

    def _arm_running(self, node_id: str) -> None:
        """A stint of the task starts: start-to-close and heartbeat counts begin."""
        node = self.st.plan.nodes[node_id]
        info = self.ctx.catalog.get(node.task)
        if info is None:
            return
        if info.timeout:
            since = self.st.started_at.get(node_id, self._now())
            self._at(since + info.timeout, Expire(node_id, node.attempt, "start", since))
        if info.heartbeat_timeout:
            self.beats[node_id] = now = self._now()
            self._at(now + info.heartbeat_timeout,
                     Expire(node_id, node.attempt, "heartbeat", now))

    def _expire(self, msg: Expire) -> None:
        if msg.kind == "schedule":
            self._unstarted(msg)
            return
        node = self.st.plan.nodes.get(msg.node)
        if (not self._current(msg.node, msg.attempt) or node is None
                or node.state is not NodeState.RUNNING):
            return
        count = self.st.started_at if msg.kind == "start" else self.beats
        if count.get(msg.node) != msg.since:
            return  # restarted since
        rec = self.attempts.get(msg.node)
        self._send(rec.identity if rec else None,
                   CancelTask(workflow_id=self.wf, node=msg.node, attempt=msg.attempt))
        self.ctx.counters.add("attempts.timed_out")
        kind, message = TIMEOUTS[msg.kind]
        self._failed(msg.node, {"type": kind, "retryable": True,
                                "message": message.format(attempt=msg.attempt)})

    def _unstarted(self, msg: Expire) -> None:
        """Schedule-to-start: no worker took the node in time. It fails (through
        running, the plan's way to a result) and is not retried: another try would
        wait in the same queue."""
        node = self.st.plan.nodes.get(msg.node)
        if (self.st.ended or self.st.paused or node is None
                or node.state is not NodeState.READY or node.attempt != msg.attempt
                or self.queued_at.get(msg.node) != msg.since):
            return
        self.ctx.counters.add("attempts.unstarted")
        self._set(msg.node, NodeState.RUNNING)
        self._failed(msg.node, {"type": "ScheduleToStartTimeout", "retryable": False,
                                "message": f"no worker started {msg.node} in time"})

    # --- supervisors -------------------------------------------------------------------

    def _welcomed(self, msg: Welcomed) -> None:
        sessions = self.ctx.sessions
        if sessions is not None and not sessions.current(msg.supervisor, msg.identity):
            # A Hello already replaced by a newer one, whose Welcomed follows (this one
            # would fail what was started on the newer connection), or a supervisor
            # expired since, whose Lost follows.
            return
        orphaned = False
        for node_id, rec in list(self.attempts.items()):
            if self.st.ended or node_id not in self.attempts:
                break  # an earlier failure ended the workflow
            key = (node_id, self.st.plan.nodes[node_id].attempt)
            if key in msg.claims:
                rec.supervisor, rec.identity, rec.claimed = msg.supervisor, msg.identity, True
            elif key in msg.evicted:
                orphaned |= self._evicted_claim(rec, msg)
            elif rec.supervisor == msg.supervisor and rec.identity != msg.identity:
                # It came back without this attempt. (One given to the new connection
                # itself was assigned after this Hello, which could not claim it.)
                self._failed(node_id, SUPERVISOR_LOST)
        for node_id, attempt in msg.claims:
            if not self._held_by(node_id, attempt):  # lost or cancelled meanwhile: stop it
                self._send(msg.identity, CancelTask(workflow_id=self.wf, node=node_id,
                                                    attempt=attempt))
        if orphaned:  # one check for them all
            self._later(self.ctx.orphan_timeout, OrphanCheck())

    def _evicted_claim(self, rec: AttemptRec, msg: Welcomed) -> bool:
        """The supervisor let this attempt go for a durable wait that Flow may not
        have read: its Wait follows the Hello (or came before it). On another
        supervisor since (Flow read the Wait, the wait was over), it stays there.
        Else it is not failed now; an orphan unless the Wait suspends it in time
        (Flow may have read the Wait and sent the attempt back to the connection
        the supervisor has just replaced: that Assign is lost). True if it is an
        orphan now."""
        if rec.supervisor != msg.supervisor or rec.identity == msg.identity:
            return False
        rec.claimed = False
        return True

    def _held_by(self, node_id: str, attempt: int) -> bool:
        """Whether a process may hold this attempt (not a durably suspended one)."""
        return self._current(node_id, attempt) and node_id in self.attempts

    def _lost(self, which: Callable[[AttemptRec], bool]) -> None:
        for node_id, rec in list(self.attempts.items()):
            if which(rec) and node_id in self.attempts and not self.st.ended:
                self.ctx.counters.add("attempts.lost")
                self._failed(node_id, SUPERVISOR_LOST)
