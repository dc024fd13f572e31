"""The PlanKeeper: one actor per live workflow, the only one that changes its plan.

Every change to a workflow goes through its keeper, one message at a time:
the registration diff, proposals, waits, results, retries, cancellation and
supervisor losses. The keeper validates against the plan and its promises,
folds the resulting events into its :class:`WorkflowState`, and hands events
and replies to the Store together (one ``Write`` per message), so a reply or an
assignment leaves Flow only once what caused it is committed.

Per-message work is proportional to the message (a diff's size, a wait's
handles), never to the workflow's size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pykka

from plait.actors.history import WorkflowState, state_event, violation_error
from plait.actors.mail import (
    Expire,
    Lost,
    OrphanCheck,
    Ready,
    Refund,
    Request,
    Resumed,
    RetryDue,
    Start,
    Stopped,
    StoredEvent,
    Welcomed,
    Write,
)
from plait.actors.registry import Catalog, Counters, Registry, safe_tell
from plait.actors.retry import SUPERVISOR_LOST, RetryPolicy
from plait.actors.timers import Timers
from plait.protocol.codec import encode
from plait.protocol.diff import NodeState, PlanDiff, Rejection
from plait.protocol.messages import (
    Ack,
    Assign,
    AwaitResult,
    CancelTask,
    CancelWorkflow,
    Error,
    Finish,
    GetGraph,
    GraphReply,
    Message,
    NodeResult,
    Propose,
    Proposed,
    Resolved,
    Submit,
    Submitted,
    Wait,
    WorkflowResult,
)
from plait.protocol.plan import TERMINAL, Outcome

__all__ = ["KeeperContext", "PlanKeeper"]

log = logging.getLogger(__name__)

ACTIVE = frozenset({NodeState.RUNNING, NodeState.SUSPENDED})
CANCELLED = {"type": "WorkflowCancelled", "message": "the workflow was cancelled"}


@dataclass(frozen=True)
class KeeperContext:
    """What every keeper shares: the actors it tells and Flow's settings."""

    store: pykka.ActorRef[Any]
    dispatcher: pykka.ActorRef[Any]
    registry: Registry
    catalog: Catalog
    counters: Counters
    timers: Timers
    retry_scale: float
    orphan_timeout: float


@dataclass
class AttemptRec:
    """A running or suspended attempt: who runs it, and whether they said so since
    Flow (re)started."""

    supervisor: str
    identity: bytes | None
    claimed: bool


@dataclass
class WaitRec:
    """A suspended node's Wait: whom to answer, and how many handles are live."""

    identity: bytes
    correlation: str
    handles: list[str]
    remaining: int


class PlanKeeper(pykka.ThreadingActor):
    """Owns one workflow's :class:`WorkflowState`; see the module docstring."""

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
        self.awaiting: list[tuple[bytes, str]] = []  # AwaitResult requests
        self.limited: dict[str, tuple[tuple[str, int], ...]] = {}  # MaxParallel-bound nodes
        self._events: list[StoredEvent] = []
        self._out: list[tuple[bytes, bytes]] = []
        self._then: Callable[[], None] | None = None

    # --- the actor's loop ---------------------------------------------------------

    def on_start(self) -> None:
        if self._restored:
            self._restore()
            self._flush()

    def on_receive(self, message: Any) -> Any:
        try:
            self._handle(message)
        except Exception as exc:  # one bad message must not take the workflow down
            log.exception("keeper %s: %r failed", self.wf, message)
            if isinstance(message, Request):
                self._send(message.identity, Error(id=message.message.id, code="internal",
                                                   reason=repr(exc)))
        finally:
            self._flush()
        return None

    def _handle(self, message: Any) -> None:
        if isinstance(message, Request):
            self._request(message.identity, message.message)
        elif isinstance(message, Start):
            self._start(message)
        elif isinstance(message, RetryDue):
            node = self.st.plan.nodes.get(message.node)
            if (not self.st.ended and node is not None and node.state is NodeState.READY
                    and node.attempt == message.attempt):
                self._enqueue(message.node)
        elif isinstance(message, Expire):
            self._expire(message)
        elif isinstance(message, Welcomed):
            self._welcomed(message)
        elif isinstance(message, Lost):
            self._lost(lambda rec: rec.supervisor == message.supervisor)
        elif isinstance(message, OrphanCheck):
            self._lost(lambda rec: not rec.claimed)
        self._check_end()

    def _flush(self) -> None:
        if self._events or self._out or self._then:
            self.ctx.store.tell(Write(self._events, self._out, self._then))
            self._events, self._out, self._then = [], [], None

    def _send(self, identity: bytes | None, message: Message) -> None:
        if identity is not None:
            self._out.append((identity, encode(message)))

    def _record(self, event: dict[str, Any], *, applied: bool = False) -> Outcome:
        """Add an event to the stream; fold it unless the plan already holds it."""
        ts = time.time()
        if applied:
            self.st.note()
            out = Outcome()
        else:
            out = self.st.fold(event, ts)
        self._events.append(StoredEvent(self.wf, self.st.seq, ts, event))
        return out

    # --- requests -------------------------------------------------------------------

    def _request(self, identity: bytes, msg: Message) -> None:
        if isinstance(msg, Submit):
            self._submit(identity, msg)
        elif isinstance(msg, Propose):
            self._propose(identity, msg)
        elif isinstance(msg, Wait):
            self._wait(identity, msg)
        elif isinstance(msg, Finish):
            self._finish(identity, msg)
        elif isinstance(msg, AwaitResult):
            if self.st.ended:
                self._send(identity, self._result(msg.id))
            else:
                self.awaiting.append((identity, msg.id))
        elif isinstance(msg, GetGraph):
            self._send(identity, GraphReply(id=msg.id, workflow_id=self.wf, seq=self.st.seq,
                                            graph=self.st.view_json(msg.unfold)))
        elif isinstance(msg, CancelWorkflow):
            self._terminate("cancelled", CANCELLED)
            self._send(identity, Ack(id=msg.id))

    def _submit(self, identity: bytes, msg: Submit) -> None:
        try:
            diff = replace(PlanDiff.from_dict(msg.diff), proposer=None)
            out = self.st.plan.apply(diff)
        except (ValueError, TypeError) as exc:
            self._abandon(identity, Error(id=msg.id, code="invalid", reason=str(exc)))
            return
        if out.rejection is not None:
            self._abandon(identity, Error(id=msg.id, code="rejected",
                                          reason=out.rejection.message(),
                                          detail=out.rejection.to_dict()))
            return
        self._record({"type": "submitted", "name": msg.name, "root": msg.root})
        self._record({"type": "diff", "diff": diff.to_dict()}, applied=True)
        self._send(identity, Submitted(id=msg.id, workflow_id=self.wf))
        self._react(out)

    def _abandon(self, identity: bytes, error: Error) -> None:
        """A refused registration: the workflow never existed."""
        self.ctx.counters.add("submit.rejected")
        self._send(identity, error)
        self.ctx.registry.release(self.wf)
        self.st.status = "cancelled"  # keeps _check_end quiet; nothing is recorded
        self.stop()

    def _current(self, node_id: str, attempt: int) -> bool:
        node = self.st.plan.nodes.get(node_id)
        return (not self.st.ended and node is not None and node.attempt == attempt
                and node.state in ACTIVE)

    def _propose(self, identity: bytes, msg: Propose) -> None:
        if not self._current(msg.node, msg.attempt):
            self.ctx.counters.add("dropped.propose")
            stale = Rejection("plan", f"{msg.node} attempt {msg.attempt} is not running",
                              msg.node)
            self._send(identity, Proposed(id=msg.id, workflow_id=self.wf, node=msg.node,
                                          ok=False, rejection=stale.to_dict()))
            return
        try:
            diff = replace(PlanDiff.from_dict(msg.diff), proposer=msg.node)
        except ValueError as exc:
            self._send(identity, Error(id=msg.id, code="invalid", reason=str(exc)))
            return
        out = self._apply(diff)
        rejection = out.rejection.to_dict() if out.rejection else None
        self._send(identity, Proposed(id=msg.id, workflow_id=self.wf, node=msg.node,
                                      ok=rejection is None, rejection=rejection))

    def _apply(self, diff: PlanDiff) -> Outcome:
        """Apply a proposer's diff; a broken promise terminates the workflow."""
        try:
            out = self.st.plan.apply(diff)
        except (ValueError, TypeError, KeyError) as exc:
            return Outcome(rejection=Rejection("plan", f"invalid diff: {exc}", diff.proposer))
        if out.rejection is not None:
            rejection = out.rejection
            kind = "violation" if rejection.kind == "violation" else "rejected"
            self._record({"type": kind, "rejection": rejection.to_dict(),
                          "diff": diff.to_dict()}, applied=True)
            if kind == "violation":
                self._terminate("violated", violation_error(rejection))
            return out
        if not out.duplicate:
            self._record({"type": "diff", "diff": diff.to_dict()}, applied=True)
            for edge in diff.edges:  # an edge from a dead node: its target can never run
                if self.st.plan.nodes[edge.src].state in (NodeState.FAILED,
                                                          NodeState.CANCELLED):
                    self._cancel_downstream([edge.dst])
            self._react(out)
        return out

    def _wait(self, identity: bytes, msg: Wait) -> None:
        plan = self.st.plan
        unknown = [h for h in msg.handles if h not in plan.nodes]
        if not self._current(msg.node, msg.attempt) or unknown:
            self.ctx.counters.add("dropped.wait")
            reason = (f"unknown handles {unknown[:5]}" if unknown
                      else f"{msg.node} attempt {msg.attempt} is not running")
            self._send(identity, Error(id=msg.id, code="invalid", reason=reason))
            return
        handles = list(dict.fromkeys(msg.handles))
        live = [h for h in handles if plan.nodes[h].live]
        if not live:
            if plan.nodes[msg.node].state is NodeState.SUSPENDED:
                self._resume(msg.node)
            self._send(identity, self._resolved(msg.node, msg.id, handles))
            return
        if msg.node in self.waits:  # re-sent after a reconnect: answer the new socket
            rec = self.waits[msg.node]
            rec.identity, rec.correlation = identity, msg.id
            return
        if plan.nodes[msg.node].state is NodeState.RUNNING:
            self._set(msg.node, NodeState.SUSPENDED)
        self.waits[msg.node] = WaitRec(identity, msg.id, handles, len(live))
        for h in live:
            self.watchers.setdefault(h, []).append(msg.node)

    def _resolved(self, node_id: str, correlation: str, handles: list[str]) -> Resolved:
        nodes = self.st.plan.nodes
        results = {h: NodeResult(state=nodes[h].state.value, output=nodes[h].output,
                                 error=self.st.errors.get(h)
                                 if nodes[h].state is NodeState.FAILED else None)
                   for h in handles}
        return Resolved(id=correlation, workflow_id=self.wf, node=node_id, results=results)

    def _finish(self, identity: bytes, msg: Finish) -> None:
        self._send(identity, Ack(id=msg.id))
        if not self._current(msg.node, msg.attempt):
            self.ctx.counters.add("dropped.finish")  # a duplicate, or a lost attempt's
            return
        if msg.diff:
            failure = self._final_diff(msg)
            if self.st.ended:
                return
            if failure is not None:
                self._failed(msg.node, failure)
                return
        if msg.ok:
            self._set(msg.node, NodeState.SUCCEEDED, output=msg.output)
        else:
            self._failed(msg.node, msg.error or {"type": "Error", "message": "task failed"})

    def _final_diff(self, msg: Finish) -> dict[str, Any] | None:
        """Apply a Finish's diff; the error that fails the node if it was refused."""
        try:
            diff = replace(PlanDiff.from_dict(msg.diff or {}), proposer=msg.node)
        except ValueError as exc:
            return {"type": "PlanError", "message": str(exc), "retryable": False}
        out = self._apply(diff)
        if out.rejection is None:
            return None
        kind = ("NonDeterminismError" if out.rejection.kind == "nondeterminism"
                else "PlanError")
        return {"type": kind, "message": out.rejection.message(), "retryable": False}

    # --- state changes --------------------------------------------------------------

    def _set(self, node_id: str, state: NodeState, **extra: Any) -> None:
        """Record a transition made from outside the plan and react to it."""
        node = self.st.plan.nodes[node_id]
        was = node.state
        attempt = node.attempt + 1 if state is NodeState.READY else node.attempt
        out = self._record(state_event(node_id, state, attempt, **extra))
        if was is NodeState.RUNNING and node_id in self.limited:
            self.ctx.dispatcher.tell(Stopped(self.wf, node_id))
        if state not in ACTIVE:
            self.attempts.pop(node_id, None)
            self.waits.pop(node_id, None)
        if state in TERMINAL:
            self.limited.pop(node_id, None)
            self._wake(node_id)
            if state is not NodeState.SUCCEEDED:
                self._cancel_downstream(node.succs)
        self._react(out)

    def _resume(self, node_id: str) -> None:
        self.waits.pop(node_id, None)
        self._record(state_event(node_id, NodeState.RUNNING,
                                 self.st.plan.nodes[node_id].attempt))
        limits = self.limited.get(node_id)
        if limits:
            self.ctx.dispatcher.tell(Resumed(self.wf, node_id, limits))

    def _failed(self, node_id: str, error: dict[str, Any]) -> None:
        """A failed attempt: retried per the task's policy, else the node fails."""
        node = self.st.plan.nodes[node_id]
        policy = RetryPolicy.of(self.ctx.catalog.get(node.task))
        if not policy.retries(error, node.attempt):
            self._set(node_id, NodeState.FAILED, error=error)
            return
        delay = policy.delay(node.attempt) * self.ctx.retry_scale
        self._set(node_id, NodeState.READY, error=error)
        self._tell_later(delay, RetryDue(node_id, node.attempt))

    def _tell_later(self, delay: float, message: Any) -> None:
        ref = self.actor_ref

        def fire() -> None:  # on the timer thread: only a tell
            safe_tell(ref, message)

        self.ctx.timers.call_later(delay, fire)

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
        """``node_id`` ended: answer every wait that was only missing it."""
        for waiter in self.watchers.pop(node_id, ()):
            rec = self.waits.get(waiter)
            if rec is None:
                continue
            rec.remaining -= 1
            if rec.remaining == 0:
                self._resume(waiter)
                self._send(rec.identity, self._resolved(waiter, rec.correlation, rec.handles))

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

    def _enqueue(self, node_id: str) -> None:
        node = self.st.plan.nodes[node_id]
        limits = tuple(self.st.plan.limits(node_id))
        if limits:
            self.limited[node_id] = limits
        self.ctx.dispatcher.tell(Ready(self.wf, node_id, node.attempt, node.task, limits))

    # --- dispatch -------------------------------------------------------------------

    def _start(self, msg: Start) -> None:
        node = self.st.plan.nodes.get(msg.node)
        if (self.st.ended or node is None or node.state is not NodeState.READY
                or node.attempt != msg.attempt):
            self.ctx.counters.add("dispatch.stale")
            self.ctx.dispatcher.tell(Refund(self.wf, msg.node, msg.supervisor))
            return
        self._record(state_event(node.id, NodeState.RUNNING, node.attempt,
                                 supervisor=msg.supervisor))
        self.attempts[node.id] = AttemptRec(msg.supervisor, msg.identity, claimed=True)
        self._send(msg.identity, Assign(
            workflow_id=self.wf, node=node.id, attempt=node.attempt, task=node.task,
            inputs=self._resolve(node.inputs), idempotency_key=f"{self.wf}/{node.id}"))
        info = self.ctx.catalog.get(node.task)
        if info is not None and info.timeout:
            self._tell_later(info.timeout, Expire(node.id, node.attempt))

    def _expire(self, msg: Expire) -> None:
        """Start-to-close timeout: stop the attempt, fail it (retryable)."""
        if not self._current(msg.node, msg.attempt):
            return
        rec = self.attempts.get(msg.node)
        self._send(rec.identity if rec else None,
                   CancelTask(workflow_id=self.wf, node=msg.node, attempt=msg.attempt))
        self.ctx.counters.add("attempts.timed_out")
        self._failed(msg.node, {"type": "TimeoutError", "retryable": True,
                                "message": f"attempt {msg.attempt} ran past its timeout"})

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

    # --- supervisors ----------------------------------------------------------------

    def _welcomed(self, msg: Welcomed) -> None:
        for node_id, rec in list(self.attempts.items()):
            if self.st.ended or node_id not in self.attempts:
                break  # an earlier failure ended the workflow
            if (node_id, self.st.plan.nodes[node_id].attempt) in msg.claims:
                rec.supervisor, rec.identity, rec.claimed = msg.supervisor, msg.identity, True
            elif rec.supervisor == msg.supervisor:
                self._failed(node_id, SUPERVISOR_LOST)  # it came back without this attempt
        for node_id, attempt in msg.claims:
            if not self._current(node_id, attempt):  # lost or cancelled meanwhile: stop it
                self._send(msg.identity, CancelTask(workflow_id=self.wf, node=node_id,
                                                    attempt=attempt))

    def _lost(self, which: Callable[[AttemptRec], bool]) -> None:
        for node_id, rec in list(self.attempts.items()):
            if which(rec) and node_id in self.attempts and not self.st.ended:
                self.ctx.counters.add("attempts.lost")
                self._failed(node_id, SUPERVISOR_LOST)

    def _restore(self) -> None:
        """After a Flow restart: queue ready nodes, expect running ones to be claimed."""
        for node_id in self.st.plan.order:
            node = self.st.plan.nodes[node_id]
            if node.state is NodeState.READY:
                self._enqueue(node_id)
            elif node.state in ACTIVE:
                self.attempts[node_id] = AttemptRec(self.st.supervisor.get(node_id, ""),
                                                    None, claimed=False)
                limits = tuple(self.st.plan.limits(node_id))
                if limits:
                    self.limited[node_id] = limits
                    if node.state is NodeState.RUNNING:
                        self.ctx.dispatcher.tell(Resumed(self.wf, node_id, limits))
        if self.attempts:
            self._tell_later(self.ctx.orphan_timeout, OrphanCheck())
        self._check_end()

    # --- the end --------------------------------------------------------------------

    def _terminate(self, status: str, error: dict[str, Any]) -> None:
        """Cancel or violate: stop every running attempt, end the workflow now."""
        if self.st.ended:
            return
        for node_id, rec in self.attempts.items():
            attempt = self.st.plan.nodes[node_id].attempt
            self._send(rec.identity, CancelTask(workflow_id=self.wf, node=node_id,
                                                attempt=attempt))
            if node_id in self.limited:
                self.ctx.dispatcher.tell(Stopped(self.wf, node_id))
        self.attempts.clear()
        self.waits.clear()
        self.watchers.clear()
        self._record({"type": "workflow", "status": status, "error": error})
        self._ended()

    def _check_end(self) -> None:
        if not self.st.ended and self.st.plan.is_settled() and self.st.seq > 0:
            self._record(self.st.outcome())
            self._ended()

    def _ended(self) -> None:
        for identity, correlation in self.awaiting:
            self._send(identity, self._result(correlation))
        self.awaiting.clear()
        registry, wf, ref = self.ctx.registry, self.wf, self.actor_ref

        def retire() -> None:  # on the Store's thread, once the end is committed
            registry.remove(wf)
            ref.stop(block=False)

        self._then = retire

    def _result(self, correlation: str) -> WorkflowResult:
        return WorkflowResult(id=correlation, workflow_id=self.wf, status=self.st.status,
                              output=self.st.output, error=self.st.error)
