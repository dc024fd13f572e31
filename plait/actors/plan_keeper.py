"""The PlanKeeper: one actor per live workflow, the only one that changes its plan.

Every change to a workflow goes through its keeper, one message at a time:
the registration diff, proposals, waits, results, retries, timers, signals,
operator controls and supervisor losses. The keeper validates against the
plan and its promises, folds the resulting events into its
:class:`~plait.actors.history.WorkflowState`, and hands events and replies to
the Store together (one ``Write`` per batch of the messages waiting in its
inbox), so a reply or an assignment leaves Flow only once what caused it is
committed.

The keeper is assembled from one mixin per concern: :mod:`keeper_run`
(registration, assignments and history, proposals, results, cache),
:mod:`keeper_waits` (children, sleeps, signals), :mod:`keeper_faults` (retries,
timeouts, supervisors) and :mod:`keeper_control` (operator controls, the end).
This module routes messages to them and restores a workflow after a restart.

Per-message work is proportional to the message (a diff's size, a wait's
handles), never to the workflow's size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from plait import memory
from plait.actors.history import WorkflowState
from plait.actors.keeper_base import ACTIVE, AttemptRec, KeeperContext
from plait.actors.keeper_control import CANCELLED, ControlMixin
from plait.actors.keeper_faults import FaultMixin
from plait.actors.keeper_run import RunMixin
from plait.actors.keeper_waits import WaitMixin
from plait.actors.mail import (
    CacheAnswer,
    Expire,
    Lost,
    OrphanCheck,
    Request,
    Resumed,
    Retire,
    RetryDue,
    Serving,
    Start,
    TimerDue,
    Welcomed,
)
from plait.protocol.diff import NodeState
from plait.protocol.messages import (
    Ack,
    AwaitResult,
    CancelWorkflow,
    Error,
    Finish,
    GetGraph,
    GraphReply,
    Message,
    PauseWorkflow,
    Propose,
    Query,
    RestartNode,
    ResumeWorkflow,
    SendSignal,
    SetAttrs,
    SetState,
    Submit,
    TaskHeartbeat,
    Wait,
)

__all__ = ["KeeperContext", "PlanKeeper"]

log = logging.getLogger(__name__)

# Everything the keeper is told (_handle); anything else (pykka's own) ends a batch.
MAIL = (Request, Start, RetryDue, TimerDue, Expire, CacheAnswer, Welcomed, Lost,
        OrphanCheck, Serving, Retire)
MAX_BATCH = 256  # messages handled before one Write
# A keeper whose plan had this many nodes gives memory back when it stops (~2 ms
# for a 10,000-node map, which took seconds to run).
RELEASE_NODES = 1_000
AWAITS_PER_PEER = 8  # AwaitResult requests kept per client connection


class PlanKeeper(RunMixin, WaitMixin, FaultMixin, ControlMixin):
    """Owns one workflow's state; see the module docstring."""

    # --- the actor's loop ---------------------------------------------------------

    def on_start(self) -> None:
        if self._restored:
            self._restore()
            self._flush()

    def on_stop(self) -> None:
        if len(self.st.plan.nodes) >= RELEASE_NODES:
            # The big plan becomes garbage here rather than with the actor: its pages
            # go back to the OS instead of staying Flow's high-water mark.
            self.st = WorkflowState(self.wf)
            memory.release()

    def on_receive(self, message: Any) -> Any:
        try:
            self._receive(message)
            for more in self._waiting():
                self._receive(more)
        finally:
            self._flush()
        return None

    def _waiting(self) -> Iterator[Any]:
        """Mail already in the inbox, taken now so that the whole batch makes one
        Write (one commit, one wake-up of the Store) instead of one each. Stops at
        anything that is not keeper mail (pykka's stop stays first in line) and
        after MAX_BATCH, so replies are never held back for long."""
        inbox = self.actor_inbox
        for _ in range(MAX_BATCH):
            if inbox.empty():
                return
            head = inbox.queue[0]  # type: ignore[attr-defined]  # a peek: queue.Queue
            if head.reply_to is not None or not isinstance(head.message, MAIL):
                return
            yield inbox.get().message  # there: only this thread takes

    def _receive(self, message: Any) -> None:
        if self.gone:
            self._forward(message)
            return
        try:
            self._handle(message)
        except Exception as exc:  # one bad message must not take the workflow down
            log.exception("keeper %s: %r failed", self.wf, message)
            if isinstance(message, Request):
                self._refuse(message, exc)

    def _refuse(self, request: Request, exc: Exception) -> None:
        """A request whose handler raised is answered ``internal`` only: a reply it
        queued (an Ack) would claim what did not happen. The events recorded before
        the failure are folded already, so they are written: the stream must say
        what this state holds, or a rebuild would disagree with it."""
        correlation = request.message.id
        self._unsend(request.identity, correlation)
        self._send(request.identity, Error(id=correlation, code="internal", reason=repr(exc)))

    def _handle(self, message: Any) -> None:
        if isinstance(message, Request):
            self._request(message.identity, message.message)
        elif isinstance(message, Start):
            self._start(message)
        elif isinstance(message, RetryDue):
            self._retry_due(message)
        elif isinstance(message, TimerDue):
            self._timer_due(message)
        elif isinstance(message, Expire):
            self._expire(message)
        elif isinstance(message, CacheAnswer):
            self._cache_answer(message)
        elif isinstance(message, Welcomed):
            self._welcomed(message)
        elif isinstance(message, Lost):
            # Joined again since it expired (the broadcast reaches keepers one by one,
            # late): attempts may have started on the new connection meanwhile. Its
            # Welcomed, which follows, fails those it no longer runs.
            sessions = self.ctx.sessions
            if sessions is None or not sessions.joined(message.supervisor):
                self._lost(lambda rec: rec.supervisor == message.supervisor)
        elif isinstance(message, OrphanCheck):
            self._lost(lambda rec: not rec.claimed)
        elif isinstance(message, Serving):
            # Counted from here, not from the restore: restoring the other workflows
            # may take longer than the timeout, while no supervisor could connect.
            if self.attempts:
                self._later(self.ctx.orphan_timeout, OrphanCheck())
        elif isinstance(message, Retire):
            self._retire(message.seq)
            return
        self._check_end()
        if self.st.ended and not self.retiring and self.st.seq > 0:
            self._ended()  # a workflow brought back for a control that left it ended

    def _request(self, identity: bytes, msg: Message) -> None:
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            if not self._refuse_once_ended(identity, msg):
                handler(self, identity, msg)
        elif isinstance(msg, AwaitResult):
            if self.st.ended:
                self._send(identity, self._result(msg.id))
            else:
                self._await(identity, msg.id)
        elif isinstance(msg, GetGraph):
            self._send(identity, GraphReply(id=msg.id, workflow_id=self.wf, seq=self.st.seq,
                                            graph=self.st.view_json(msg.unfold)))
        elif isinstance(msg, CancelWorkflow):
            self._terminate("cancelled", CANCELLED)
            self._send(identity, Ack(id=msg.id))

    def _await(self, identity: bytes, correlation: str) -> None:
        """Answer ``correlation`` at the end. A client that gave up waiting asks
        anew next time (a loop of ``result(timeout=1)``): only its latest asks are
        kept, and one that finds the workflow ended asks again and is answered."""
        mine = [i for i, (peer, _) in enumerate(self.awaiting) if peer == identity]
        if len(mine) >= AWAITS_PER_PEER:
            del self.awaiting[mine[0]]
        self.awaiting.append((identity, correlation))

    # --- after a Flow restart ---------------------------------------------------------

    def _restore(self) -> None:
        """Queue ready nodes (or re-arm their backoff), re-arm waits and timeouts,
        and expect the attempts that processes hold to be claimed."""
        if self.st.ended:
            return  # brought back for a control: nothing runs unless it says so
        now = self._now()
        suspended = []
        for node_id in self.st.plan.order:
            node = self.st.plan.nodes[node_id]
            if node.state is NodeState.READY:
                attempt, due = self.st.not_before.get(node_id, (0, 0.0))
                if attempt == node.attempt and due > now:
                    self._at(due, RetryDue(node_id, node.attempt))
                else:
                    self._enqueue(node_id)
            elif node.state is NodeState.SUSPENDED:
                suspended.append(node_id)
            elif node.state in ACTIVE:
                self._restore_active(node_id)
        # Waits in the order they began, not the plan's: a signal goes to the oldest
        # wait for it, after a restart as before.
        began = {node_id: i for i, node_id in enumerate(self.st.waits)}
        for node_id in sorted(suspended, key=lambda n: began.get(n, -1)):
            self._restore_active(node_id)
        # Attempts that processes hold are expected to be claimed once Flow serves.

    def _restore_active(self, node_id: str) -> None:
        node = self.st.plan.nodes[node_id]
        spec = self.st.waits.get(node_id) if node.state is NodeState.SUSPENDED else None
        resident = spec is None or bool(spec.get("resident", True))
        if resident:
            self.attempts[node_id] = AttemptRec(self.st.supervisor.get(node_id, ""), None,
                                                claimed=False)
            limits = tuple(self.st.plan.limits(node_id))
            if limits:
                self.limited[node_id] = limits
                if node.state is NodeState.RUNNING:
                    self.ctx.dispatcher.tell(Resumed(self.wf, node_id, node.attempt, limits))
        if node.state is NodeState.RUNNING:
            self._arm_running(node_id)
        elif spec is not None:
            rec = self._restore_wait(node_id, spec)
            if rec.signal is not None:
                self._offer(rec.signal)
            elif rec.due is None and not rec.pending:
                self._satisfy(node_id)


_HANDLERS: dict[type[Message], Any] = {
    Submit: PlanKeeper._submit,
    Propose: PlanKeeper._propose,
    Wait: PlanKeeper._wait,
    Finish: PlanKeeper._finish,
    TaskHeartbeat: PlanKeeper._task_heartbeat,
    SetState: PlanKeeper._set_state,
    SendSignal: PlanKeeper._signal,
    Query: PlanKeeper._query,
    PauseWorkflow: PlanKeeper._pause,
    ResumeWorkflow: PlanKeeper._unpause,
    RestartNode: PlanKeeper._restart,
    SetAttrs: PlanKeeper._set_attrs,
}
