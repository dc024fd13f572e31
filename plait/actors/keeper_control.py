"""A keeper's operator controls and its end: pause, resume, cancel, restart a
node, set attributes, query; terminate, settle, answer the waiting clients, and
retire once the end is committed.

Each control is an event (``paused``, ``resumed``, ``restart``, a ``diff``
with only attribute changes, ``workflow`` for a cancel), so it reaches the
feed and a rebuilt plan holds it.
"""

from __future__ import annotations

from typing import Any

from plait.actors.keeper_base import KeeperBase
from plait.actors.mail import LATE, Refund, Request, Retire, RunEnded, Start, Stopped, Welcomed
from plait.actors.registry import safe_tell
from plait.protocol.diff import AttrChange, NodeState, PlanDiff
from plait.protocol.messages import (
    Ack,
    CancelTask,
    Error,
    Message,
    PauseWorkflow,
    Query,
    QueryReply,
    RestartNode,
    ResumeWorkflow,
    SendSignal,
    SetAttrs,
    WorkflowResult,
)

__all__ = ["CANCELLED", "REFUSED_ONCE_ENDED", "ControlMixin"]

CANCELLED = {"type": "WorkflowCancelled", "message": "the workflow was cancelled"}
# Controls an ended workflow refuses, whether its keeper or the Reader answers.
REFUSED_ONCE_ENDED = (PauseWorkflow, ResumeWorkflow, SendSignal)


class ControlMixin(KeeperBase):
    def _refuse_once_ended(self, identity: bytes, msg: Message) -> bool:
        """An ended workflow (not yet retired) refuses what the Reader would refuse
        after: recorded, a pause or a signal would bring back a status it has left."""
        if not (self.st.ended and isinstance(msg, REFUSED_ONCE_ENDED)):
            return False
        self._send(identity, Error(id=msg.id, code="rejected",
                                   reason=f"workflow {self.wf!r} has ended ({self.st.status})"))
        return True

    def _pause(self, identity: bytes, msg: PauseWorkflow) -> None:
        if not self.st.paused:
            self._record({"type": "paused"})
        self._send(identity, Ack(id=msg.id))

    def _unpause(self, identity: bytes, msg: ResumeWorkflow) -> None:
        if self.st.paused:
            self._record({"type": "resumed"})
            nodes = self.st.plan.nodes
            # Nodes that stayed in the Dispatcher's queue: their schedule-to-start
            # was not judged while paused, and counts again from now.
            for node_id in [n for n in self.queued_at if n not in self.held]:
                if nodes[node_id].state is NodeState.READY:
                    self._count_queued(node_id)
            held = sorted((nodes[n] for n in self.held), key=lambda n: n.rank)
            self.held.clear()
            for node in held:
                if node.state is NodeState.READY:
                    self._enqueue(node.id)
        self._send(identity, Ack(id=msg.id))

    def _restart(self, identity: bytes, msg: RestartNode) -> None:
        """Run the node and its downstream again as new attempts (``Plan.restart``);
        refused while any of them runs. An ended workflow runs again."""
        if msg.node not in self.st.plan.nodes:
            self._send(identity, Error(id=msg.id, code="not_found",
                                       reason=f"no node {msg.node!r} in {self.wf}"))
            return
        if self.st.plan.violations:
            self._send(identity, Error(id=msg.id, code="rejected",
                                       reason=f"{self.wf} broke a promise: it cannot run "
                                              "again"))
            return
        out = self.st.restart(msg.node, operator=True)
        if out.rejection is not None:
            self._send(identity, Error(id=msg.id, code="rejected",
                                       reason=out.rejection.message(),
                                       detail=out.rejection.to_dict()))
            return
        self._record({"type": "restart", "node": msg.node}, applied=True)
        self.ctx.counters.add("restarts")
        self._send(identity, Ack(id=msg.id))
        self._rewatch()
        self._react(out)

    def _set_attrs(self, identity: bytes, msg: SetAttrs) -> None:
        try:
            changes = tuple(AttrChange.from_dict(c) for c in msg.changes)
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            self._send(identity, Error(id=msg.id, code="invalid", reason=repr(exc)))
            return
        # Through _apply like any diff: a refused one is recorded as rejected too, so
        # that the plan rebuilt from the events lists it as the live one does.
        out = self._apply(PlanDiff(None, attrs=changes))
        if out.rejection is not None:
            self._send(identity, Error(id=msg.id, code="rejected",
                                       reason=out.rejection.message(),
                                       detail=out.rejection.to_dict()))
            return
        self._send(identity, Ack(id=msg.id))

    def _query(self, identity: bytes, msg: Query) -> None:
        self._send(identity, QueryReply(id=msg.id, workflow_id=self.wf,
                                        state=self.st.query_latest, nodes=dict(self.st.query)))

    # --- the end --------------------------------------------------------------------

    def _terminate(self, status: str, error: dict[str, Any]) -> None:
        """Cancel, violate or fail at once: stop every attempt a process holds, end
        the workflow now (folding the end cancels every live node)."""
        if self.st.ended:
            return
        for node_id, rec in self.attempts.items():
            attempt = self.st.plan.nodes[node_id].attempt
            self._send(rec.identity, CancelTask(workflow_id=self.wf, node=node_id,
                                                attempt=attempt))
            if node_id in self.limited:
                self.ctx.dispatcher.tell(Stopped(self.wf, node_id, attempt))
        self.attempts.clear()
        # The signals that attempts which end unfinished consumed go back, as a failed
        # attempt's do: a restarted node waits for them again.
        for node in self.st.plan.nodes.values():
            if node.live:
                self._undeliver(node.id)
        self.waits.clear()
        self.watchers.clear()
        self.signal_waiters.clear()
        self.held.clear()
        self._record({"type": "workflow", "status": status, "error": error})
        self._ended()

    def _check_end(self) -> None:
        if not self.st.ended and self.st.plan.is_settled() and self.st.seq > 0:
            self._record(self.st.outcome())
            self._ended()

    def _ended(self) -> None:
        """Answer the waiting clients; retire once everything so far is committed."""
        for identity, correlation in self.awaiting:
            self._send(identity, self._result(correlation))
        self.awaiting.clear()
        self._retire_after_commit()

    def _retire_after_commit(self) -> None:
        self.retiring = True
        seq = self.st.seq
        ref = self.actor_ref

        def retire() -> None:  # on the Store's thread, once the events up to seq are in
            safe_tell(ref, Retire(seq))

        self._then = retire

    def _retire(self, seq: int) -> None:
        """Leave the Registry and stop, unless the workflow runs again (restarted) or
        wrote more since (then once that is committed too). From now on the Reader
        answers for it, from committed events only."""
        if not self.st.ended or not self.retiring:
            self.retiring = False
            return
        if seq != self.st.seq:
            self._retire_after_commit()
            return
        self.ctx.registry.remove(self.wf)
        self.gone = True
        safe_tell(self.ctx.scheduler, RunEnded(self.wf))
        self.stop()

    def _forward(self, message: Any) -> None:
        """After leaving: what was already on its way here goes to the Reader; a Start
        gives back the credit (and the MaxParallel slot) the Dispatcher spent on it."""
        if isinstance(message, Request) and isinstance(message.message, LATE):
            self.ctx.counters.add(f"dropped.{message.message.type}")
            self._send(message.identity, Ack(id=message.message.id))
        elif isinstance(message, Request) and self.ctx.reader is not None:
            self.ctx.reader.tell(message)
        elif isinstance(message, Start):
            self.ctx.counters.add("dispatch.gone")
            self.ctx.dispatcher.tell(Refund(self.wf, message.node, message.attempt,
                                            message.supervisor, message.session))
        elif isinstance(message, Welcomed):
            # A Hello told as this keeper left (Membership counts the workflow as
            # told): what the supervisor still runs of the ended workflow stops.
            for node, attempt in sorted(message.claims):
                self._send(message.identity, CancelTask(workflow_id=self.wf, node=node,
                                                        attempt=attempt))

    def _result(self, correlation: str) -> WorkflowResult:
        return WorkflowResult(id=correlation, workflow_id=self.wf, status=self.st.status,
                              output=self.st.output, error=self.st.error)

