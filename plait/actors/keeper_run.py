"""A keeper running its workflow: registration, assignments (with the history a
resumed or retried task replays), proposals, results, recorded values,
heartbeats, ``set_state``, and cache answers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from plait.actors.history import STEP_FAILED, state_event, violation_error
from plait.actors.keeper_base import AttemptRec, KeeperBase
from plait.actors.mail import CacheAnswer, CacheEntry, Expire, Refund, Start, Stopped
from plait.protocol.diff import AttrChange, NodeState, PlanDiff, Rejection, child_id
from plait.protocol.messages import (
    Ack,
    Assign,
    Error,
    Finish,
    History,
    PreviousChild,
    PreviousStep,
    Propose,
    Proposed,
    Recorded,
    SetState,
    Submit,
    Submitted,
    TaskHeartbeat,
    Wait,
)
from plait.protocol.plan import TERMINAL, Node, Outcome

__all__ = ["RunMixin"]


class RunMixin(KeeperBase):
    # --- registration ---------------------------------------------------------------

    def _submit(self, identity: bytes, msg: Submit) -> None:
        try:
            diff = replace(PlanDiff.from_dict(msg.diff), proposer=None)
            out = self.st.apply(diff)
        except (ValueError, TypeError) as exc:
            self._abandon(identity, Error(id=msg.id, code="invalid", reason=str(exc)))
            return
        if out.rejection is not None:
            self._abandon(identity, Error(id=msg.id, code="rejected",
                                          reason=out.rejection.message(),
                                          detail=out.rejection.to_dict()))
            return
        # The Submit's id: a client whose retried Submit finds the id taken can tell
        # its own workflow (the first reply was lost) from somebody else's.
        self._record({"type": "submitted", "name": msg.name, "root": msg.root,
                      "request": msg.id})
        self._record({"type": "diff", "diff": diff.to_dict()}, applied=True)
        self._send(identity, Submitted(id=msg.id, workflow_id=self.wf))
        self._react(out)

    def _abandon(self, identity: bytes, error: Error) -> None:
        """A refused registration: the workflow never existed."""
        self.ctx.counters.add("submit.rejected")
        self._send(identity, error)
        self.ctx.registry.release(self.wf)
        self.st.status = "cancelled"  # keeps the end quiet; nothing is recorded
        self.stop()

    # --- assignments ----------------------------------------------------------------

    def _start(self, msg: Start) -> None:
        node = self.st.plan.nodes.get(msg.node)
        if (self.st.ended or node is None or node.state is not NodeState.READY
                or node.attempt != msg.attempt or self.st.paused):
            self.ctx.counters.add("dispatch.stale")
            self.ctx.dispatcher.tell(Refund(self.wf, msg.node, msg.attempt, msg.supervisor,
                                            msg.session))
            if self.st.paused and node is not None and node.state is NodeState.READY:
                self.held.add(node.id)
            return
        sessions = self.ctx.sessions
        if sessions is not None and not sessions.current(msg.supervisor, msg.identity):
            # Declared dead, or reconnected since the Dispatcher chose it: an Assign
            # there would be lost without anybody noticing. Queue the node again.
            self.ctx.counters.add("dispatch.gone")
            if node.id in self.limited:  # the Dispatcher counted it as running
                self.ctx.dispatcher.tell(Stopped(self.wf, node.id, node.attempt))
            self._queue(node.id)
            return
        self._record(state_event(node.id, NodeState.RUNNING, node.attempt,
                                 supervisor=msg.supervisor))
        self.attempts[node.id] = AttemptRec(msg.supervisor, msg.identity, claimed=True)
        self.queued_at.pop(node.id, None)  # out of the queue: no schedule-to-start now
        self._send(msg.identity, Assign(
            workflow_id=self.wf, node=node.id, attempt=node.attempt, task=node.task,
            inputs=self._resolve(node.inputs), idempotency_key=f"{self.wf}/{node.id}",
            history=self._history(node),
            # Resumed in its worker, it would run again without queueing for a slot.
            resident_waits=node.id not in self.limited))
        info = self.ctx.catalog.get(node.task)
        if info is None or not info.timed:
            self._arm_running(node.id)
        # Else the attempt may wait in its supervisor's queue: its timeouts count
        # from when the supervisor says a worker started it (_task_heartbeat).

    def _history(self, node: Node) -> History | None:
        """What the task replays: None for a first execution of a first attempt."""
        log = self.st.logs.get(node.id)
        if log is not None and log.attempt != node.attempt:
            log = None
        if node.attempt == 1 and (log is None or not log.resumed):
            return None
        nodes = self.st.plan.nodes
        last = self.st.last_wait.get(node.id) or {}
        results = {h: self._node_result(h) for h in (*node.children, *last.get("handles", ()))
                   if h in nodes and nodes[h].state in TERMINAL and not nodes[h].superseded}
        return History(
            recorded=[Recorded.model_validate(v) for _, v in sorted(log.recorded.items())]
            if log else [],
            results=results,
            signals=sorted(log.signals.items()) if log else [],
            timers=sorted(log.timers) if log else [],
            previous=self._previous(node),
            steps=[PreviousStep(index=i, name=name, value=value)  # this attempt's are recorded
                   for i, (name, value, attempt) in sorted(self.st.steps.get(node.id, {}).items())
                   if attempt < node.attempt and value is not STEP_FAILED],
            heartbeat=self.st.heartbeat(node.id),
            resumed_at=(int(last.get("seq") or 0), int(last.get("spawns") or 0))
            if last.get("attempt") == node.attempt else None)

    def _previous(self, node: Node) -> list[PreviousChild]:
        """Children that earlier attempts spawned, with their spawn seq (read back from
        the id ``creator.seq``, ``creator.seq@attempt``; -1 for a keyed child)."""
        prefix = child_id(node.id, 0)[:-1]
        found = []
        for cid in node.children:
            if self.st.born.get(cid, 1) >= node.attempt:
                continue
            rest = cid[len(prefix):].split("@")[0] if cid.startswith(prefix) else ""
            child = self.st.plan.nodes[cid]
            found.append(PreviousChild(seq=int(rest) if rest.isdigit() else -1, id=cid,
                                       task=child.task, inputs=dict(child.inputs)))
        return found

    # --- proposals and results --------------------------------------------------------

    def _propose(self, identity: bytes, msg: Propose) -> None:
        if not self._current(msg.node, msg.attempt):
            self.ctx.counters.add("dropped.propose")
            stale = Rejection("plan", f"{msg.node} attempt {msg.attempt} is not running",
                              msg.node)
            self._send(identity, Proposed(id=msg.id, workflow_id=self.wf, node=msg.node,
                                          ok=False, rejection=stale.to_dict()))
            return
        self._note_recorded(msg.node, msg.attempt, msg.recorded)
        try:
            diff = replace(PlanDiff.from_dict(msg.diff), proposer=msg.node)
        except ValueError as exc:
            self._send(identity, Error(id=msg.id, code="invalid", reason=str(exc)))
            return
        # An empty diff only carries recorded values (a durable step): nothing to apply.
        empty = not (diff.nodes or diff.edges or diff.promises or diff.attrs)
        out = Outcome() if empty else self._apply(diff)
        rejection = out.rejection.to_dict() if out.rejection else None
        self._send(identity, Proposed(id=msg.id, workflow_id=self.wf, node=msg.node,
                                      ok=rejection is None, rejection=rejection))

    def _apply(self, diff: PlanDiff) -> Outcome:
        """Apply a proposer's diff; a broken promise terminates the workflow."""
        try:
            out = self.st.apply(diff)
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

    def _finish(self, identity: bytes, msg: Finish) -> None:
        self._ack_finish(identity, msg.id)
        if not self._current(msg.node, msg.attempt):
            self.ctx.counters.add("dropped.finish")  # a duplicate, or a lost attempt's
            return
        if self.st.plan.nodes[msg.node].state is NodeState.SUSPENDED:
            # The task stopped waiting by itself (it caught a timeout of
            # ``h.result(timeout=...)``) and ended: its wait is over, and a result
            # comes from running.
            self._resume(msg.node)
        self._note_recorded(msg.node, msg.attempt, msg.recorded)
        if msg.diff:
            failure, _ = self._carried_diff(msg.node, msg.diff)
            if self.st.ended:
                return
            if failure is not None:
                self._failed(msg.node, failure)
                return
        if msg.ok:
            self._succeeded(msg.node, msg.output, msg.version)
        else:
            self._failed(msg.node, msg.error or {"type": "Error", "message": "task failed"})

    def _carried_diff(self, node_id: str, data: dict[str, Any]
                      ) -> tuple[dict[str, Any] | None, Rejection | None]:
        """Apply a diff that rides on a Finish or a Wait: the error that fails the
        node if it was refused (as the task would raise it), and the rejection."""
        try:
            diff = replace(PlanDiff.from_dict(data), proposer=node_id)
        except ValueError as exc:
            return ({"type": "PlanError", "message": str(exc), "retryable": False},
                    Rejection("plan", f"invalid diff: {exc}", node_id))
        out = self._apply(diff)
        if out.rejection is None:
            return None, None
        kind = ("NonDeterminismError" if out.rejection.kind == "nondeterminism"
                else "PlanError")
        return ({"type": kind, "message": out.rejection.message(), "retryable": False},
                out.rejection)

    def _wait_diff(self, identity: bytes, msg: Wait) -> bool:
        """The proposals a Wait carries, applied before the wait; False if refused
        (then answered with a Proposed, and the node does not wait)."""
        self._note_recorded(msg.node, msg.attempt, msg.recorded)
        failure, rejection = self._carried_diff(msg.node, msg.diff or {})
        if rejection is None:
            return True
        self._send(identity, Proposed(id=msg.id, workflow_id=self.wf, node=msg.node,
                                      ok=False, rejection=rejection.to_dict()))
        if not msg.resident and failure is not None and not self.st.ended:
            self._failed(msg.node, failure)  # evicted: no task is left to raise it
        return False

    def _succeeded(self, node_id: str, output: Any, version: str) -> None:
        """The node succeeded; a caching task's result is stored under its key, if the
        code that ran is the version the key was made for (during a rolling deploy, a
        supervisor still on the old code may run it: its result is not the new one's)."""
        keyed = self.cache_keys.pop(node_id, None)
        self._set(node_id, NodeState.SUCCEEDED, output=output)
        if keyed is None:
            return
        key, wanted = keyed
        if version != wanted:
            self.ctx.counters.add("cache.other_version")
            return
        self._cache.append(CacheEntry(key, self.st.plan.nodes[node_id].task, wanted, output,
                                      self.wf, node_id, self._now()))

    # --- what a running task tells -----------------------------------------------------

    def _task_heartbeat(self, identity: bytes, msg: TaskHeartbeat) -> None:
        """A sign of life: resets the heartbeat timeout; new details are recorded."""
        self._send(identity, Ack(id=msg.id))
        node = self.st.plan.nodes.get(msg.node)
        if (not self._current(msg.node, msg.attempt) or node is None
                or node.state is not NodeState.RUNNING):
            self.ctx.counters.add("dropped.heartbeat")
            return
        self.beats[msg.node] = now = self._now()
        info = self.ctx.catalog.get(node.task)
        if msg.started and self.confirmed.get(msg.node) != msg.attempt:
            # A worker took it from its supervisor's queue: start-to-close counts from
            # now (once per attempt: a re-sent notice does not move it). Not recorded:
            # after a Flow restart the count is from the RUNNING event.
            self.confirmed[msg.node] = msg.attempt
            if info is not None and info.timeout:
                self.st.started_at[msg.node] = now
                self._at(now + info.timeout,
                         Expire(msg.node, msg.attempt, "start", since=now))
        if info is not None and info.heartbeat_timeout:
            self._at(now + info.heartbeat_timeout,
                     Expire(msg.node, msg.attempt, "heartbeat", since=now))
        if msg.details is not None and msg.details != self.st.last_heartbeat(msg.node):
            self._record({"type": "heartbeat", "node": msg.node, "attempt": msg.attempt,
                          "details": msg.details})

    def _set_state(self, identity: bytes, msg: SetState) -> None:
        self._send(identity, Ack(id=msg.id))
        if not self._current(msg.node, msg.attempt):
            self.ctx.counters.add("dropped.set_state")
            return
        if msg.node not in self.st.query or self.st.query[msg.node] != msg.value:
            self._record({"type": "set_state", "node": msg.node, "attempt": msg.attempt,
                          "value": msg.value})

    # --- the cache ---------------------------------------------------------------------

    def _cache_answer(self, msg: CacheAnswer) -> None:
        """A hit ends the node with the stored output (through running, marked
        ``cached``); a miss queues it for a worker."""
        node = self.st.plan.nodes.get(msg.node)
        if (self.st.ended or node is None or node.state is not NodeState.READY
                or node.attempt != msg.attempt):
            return
        if not msg.found:
            if self.st.paused:
                self.held.add(msg.node)
            else:
                self._queue(msg.node)
            return
        self.ctx.counters.add("cache.hits")
        self.cache_keys.pop(msg.node, None)
        mark = PlanDiff(None, attrs=(AttrChange("cached", True, node=msg.node),))
        self._record({"type": "diff", "diff": mark.to_dict()})
        self._set(msg.node, NodeState.RUNNING, cached=True)
        self._set(msg.node, NodeState.SUCCEEDED, output=msg.output)
