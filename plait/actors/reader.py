"""The Reader: answers about committed state, on a SQLite connection of its own.

Status, history, the graph as of a sequence number, and every request about a
workflow that is no longer live (its keeper retired once its end was
committed): results, queries, late results from workers (acknowledged and
dropped), controls that make no sense any more (refused), and the two that
bring an ended workflow back: ``RestartNode`` and ``SetAttrs`` rebuild its
state from the events and hand it, with the request, to a new keeper
(``revive``). Long reads never delay a commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from plait.actors.database import DatabaseActor
from plait.actors.history import ENDED, WorkflowState
from plait.actors.keeper_control import REFUSED_ONCE_ENDED
from plait.actors.mail import Request
from plait.protocol.messages import (
    Ack,
    AwaitResult,
    CancelWorkflow,
    Error,
    GetGraph,
    GetHistory,
    GetStatus,
    GraphReply,
    HistoryReply,
    Message,
    PauseWorkflow,
    Query,
    QueryReply,
    RestartNode,
    ResumeWorkflow,
    SendSignal,
    SetAttrs,
    StatusReply,
    WorkflowResult,
)

__all__ = ["Reader", "Revive"]

log = logging.getLogger(__name__)

# (workflow id, how to read its state from the events, the request) -> False if its
# keepers kept coming and going while the state was read
Revive = Callable[[str, Callable[[], WorkflowState], Request], bool]


class Reader(DatabaseActor):
    """See the module docstring; ``revive(workflow_id, load, request)`` starts a
    keeper for an ended workflow from the state ``load()`` reads and hands it the
    request."""

    def __init__(self, path: str, zctx: zmq.Context[Any], outbox_address: str,
                 revive: Revive | None = None) -> None:
        super().__init__(path, zctx, outbox_address)
        self._revive = revive

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, Request):
            return super().on_receive(message)
        try:
            reply = self.answer(message)
        except Exception as exc:  # the edge of a request: reply, never die
            log.exception("reader: %s failed", type(message.message).__name__)
            reply = Error(id=message.message.id, code="internal", reason=repr(exc))
        if reply is not None and message.identity:
            self.outbox.send(message.identity, reply)
        return None

    def answer(self, request: Request) -> Message | None:
        msg = request.message
        if isinstance(msg, GetStatus):
            runs = self.db.runs(msg.workflow_id, msg.ended_since)
            if msg.workflow_id is not None and not runs:
                return _not_found(msg, msg.workflow_id)
            return StatusReply(id=msg.id, runs=runs)
        if isinstance(msg, GetHistory):
            events = self.db.events(msg.workflow_id, upto=msg.upto)
            if not events:
                return _not_found(msg, msg.workflow_id)
            return HistoryReply(id=msg.id, workflow_id=msg.workflow_id,
                                events=[{**ev, "seq": seq, "ts": ts} for seq, ts, ev in events])
        if isinstance(msg, GetGraph):
            return self._graph(msg)
        if isinstance(msg, AwaitResult | CancelWorkflow | Query | RestartNode | SetAttrs
                      | PauseWorkflow | ResumeWorkflow | SendSignal):
            return self._ended(request, msg)
        wf = getattr(msg, "workflow_id", None)
        return Error(id=msg.id, code="not_found", reason=f"workflow {wf!r} is not running")

    def _graph(self, msg: GetGraph) -> Message:
        events = self.db.events(msg.workflow_id, msg.at)
        if not events:
            return _not_found(msg, msg.workflow_id)
        state = WorkflowState.rebuild(msg.workflow_id, events)
        return GraphReply(id=msg.id, workflow_id=msg.workflow_id, seq=state.seq,
                          graph=state.view_json(msg.unfold))

    def _ended(self, request: Request, msg: Any) -> Message | None:
        wf = str(msg.workflow_id)
        found = self.db.result(wf)
        if found is None:
            return _not_found(msg, wf)
        status, output, error = found
        if status not in ENDED:
            return Error(id=msg.id, code="unavailable",
                         reason=f"workflow {wf!r} is being restored; retry")
        if isinstance(msg, CancelWorkflow):
            return Ack(id=msg.id)
        if isinstance(msg, Query):
            return self._query(msg)
        if isinstance(msg, REFUSED_ONCE_ENDED):
            return Error(id=msg.id, code="rejected", reason=f"workflow {wf!r} has ended "
                                                             f"({status})")
        if isinstance(msg, RestartNode | SetAttrs):
            if self._revive is None:
                return Error(id=msg.id, code="unavailable", reason="Flow is stopping")
            if not self._revive(wf, lambda: WorkflowState.rebuild(wf, self.db.events(wf)),
                                request):
                return Error(id=msg.id, code="unavailable",
                             reason=f"workflow {wf!r} is changing; retry")
            return None  # the revived keeper answers
        return WorkflowResult(id=msg.id, workflow_id=wf, status=status, output=output,
                              error=error)

    def _query(self, msg: Query) -> QueryReply:
        nodes: dict[str, Any] = {}
        state: Any = None
        for _, _, ev in self.db.events(msg.workflow_id, kind="set_state"):
            nodes[str(ev["node"])] = state = ev.get("value")
        return QueryReply(id=msg.id, workflow_id=msg.workflow_id, state=state, nodes=nodes)


def _not_found(msg: Message, workflow_id: str) -> Error:
    return Error(id=msg.id, code="not_found", reason=f"no workflow {workflow_id!r}")
