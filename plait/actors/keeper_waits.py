"""A keeper's waits: on children (handles), durable sleeps (timers) and signals.

A ``Wait`` suspends its node. A *resident* wait (the worker keeps the task in
memory) is answered with ``Resolved`` when satisfied and the node runs again. A
durable one (``resident=False``: the worker dropped the task) is acknowledged;
when it is satisfied the node goes back to ready, same attempt, and is assigned
again with its history. The wait is stored with the ``suspended`` event (its
handles, its sleep's due time on Flow's clock, or its signal's name), so a
restarted Flow re-arms it. Signals are stored as they arrive and buffered per
name until a wait consumes the oldest (``delivered``), so none is lost, not even
one sent before anybody waits for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plait.actors.keeper_base import KeeperBase, WaitRec
from plait.actors.mail import Resumed, TimerDue
from plait.protocol.diff import NodeState
from plait.protocol.messages import Ack, Error, Resolved, SendSignal, Wait

__all__ = ["WaitMixin"]


class WaitMixin(KeeperBase):
    def _wait(self, identity: bytes, msg: Wait) -> None:
        if msg.diff and self._current(msg.node, msg.attempt) \
                and not self._wait_diff(identity, msg):
            return
        plan = self.st.plan
        unknown = [h for h in msg.handles if h not in plan.nodes]
        own = self._own_line(msg.node) if not unknown and msg.node in plan.nodes else set()
        circular = [h for h in msg.handles if h in own]
        if not self._current(msg.node, msg.attempt) or unknown or circular:
            self.ctx.counters.add("dropped.wait")
            reason = (f"unknown handles {unknown[:5]}" if unknown
                      else f"{msg.node} cannot wait for {circular[0]}: it would wait for "
                           "ever (itself, or a node that ends only after it)" if circular
                      else f"{msg.node} attempt {msg.attempt} is not running")
            self._send(identity, Error(id=msg.id, code="invalid", reason=reason))
            return
        self._note_recorded(msg.node, msg.attempt, msg.recorded)
        rec = WaitRec(msg.seq, list(dict.fromkeys(msg.handles)), signal=msg.signal,
                      resident=msg.resident, spawns=msg.spawns)
        existing = self.waits.get(msg.node)
        if existing is not None and _same(existing, msg):
            self._rewait(identity, msg, existing)
        elif existing is not None and not existing.resident \
                and plan.nodes[msg.node].state is NodeState.SUSPENDED:
            # Suspended durably, no process holds the task: another wait of this
            # attempt is an earlier one, re-sent after a reconnection. Answering it
            # would drop the wait the node is in.
            self.ctx.counters.add("dropped.wait")
            self._send(identity, Ack(id=msg.id))
        elif not msg.resident and self._stale(msg):
            self.ctx.counters.add("dropped.wait")  # a re-sent wait, satisfied since
            self._send(identity, Ack(id=msg.id))
        elif self._ready_now(msg, rec):
            self._answer_now(identity, msg, rec)
        else:
            self._suspend(identity, msg, rec)

    def _own_line(self, node_id: str) -> set[str]:
        """The node and the nodes that created it, up to the root: none of them can
        end while it waits."""
        line, node = set(), self.st.plan.nodes.get(node_id)
        while node is not None:
            line.add(node.id)
            node = node.creator
        return line

    def _stale(self, msg: Wait) -> bool:
        """A durable wait this attempt already made and got over: the node was
        assigned again since (a replay never repeats a satisfied wait)."""
        last = self.st.last_wait.get(msg.node)
        return (last is not None and last.get("attempt") == msg.attempt
                and self.st.plan.nodes[msg.node].state is NodeState.RUNNING
                and last.get("seq") == msg.seq and last.get("signal") == msg.signal
                and ("due" in last) == (msg.timer is not None)
                and list(last.get("handles", ())) == list(dict.fromkeys(msg.handles)))

    def _rewait(self, identity: bytes, msg: Wait, rec: WaitRec) -> None:
        """The pending wait again: re-sent after a reconnection (answer the new
        socket), or the supervisor evicted the task since (the wait is durable now)."""
        if msg.resident:
            rec.identity, rec.correlation = identity, msg.id
            return
        self._send(identity, Ack(id=msg.id))
        if rec.resident:
            rec.resident, rec.identity = False, None
            self.attempts.pop(msg.node, None)
            self._record({"type": "wait", "node": msg.node, "wait": rec.spec(msg.attempt)})

    def _ready_now(self, msg: Wait, rec: WaitRec) -> bool:
        """Whether the wait is satisfied already (a buffered signal is consumed, a
        sleep of no time fires)."""
        log = self.st.log(msg.node, msg.attempt)
        if rec.signal is not None:
            if rec.seq in log.signals:
                return True
            if self.st.signals.get(rec.signal):
                self._deliver(msg.node, msg.attempt, rec)
                return True
            return False
        if msg.timer is not None:
            if rec.seq in log.timers:
                return True
            if msg.timer <= 0:
                self._record({"type": "timer", "node": msg.node, "attempt": msg.attempt,
                              "seq": rec.seq})
                return True
            return False
        nodes = self.st.plan.nodes
        return not any(nodes[h].live for h in rec.handles)

    def _answer_now(self, identity: bytes, msg: Wait, rec: WaitRec) -> None:
        node = self.st.plan.nodes[msg.node]
        if msg.resident:
            if node.state is NodeState.SUSPENDED:
                self._resume(msg.node)
            self._send(identity, self._resolved(msg.node, msg.id, rec))
            return
        self._send(identity, Ack(id=msg.id))
        if node.state is NodeState.RUNNING:
            self._set(msg.node, NodeState.SUSPENDED, wait=rec.spec(msg.attempt))
        self._ready_again(msg.node)

    def _suspend(self, identity: bytes, msg: Wait, rec: WaitRec) -> None:
        nodes = self.st.plan.nodes
        rec.pending = {h for h in rec.handles if nodes[h].live}
        if msg.timer is not None:
            rec.due = self._now() + msg.timer
        if msg.resident:
            rec.identity, rec.correlation = identity, msg.id
        else:
            self._send(identity, Ack(id=msg.id))
            self.attempts.pop(msg.node, None)  # no process holds it any more
        if nodes[msg.node].state is NodeState.RUNNING:
            self._set(msg.node, NodeState.SUSPENDED, wait=rec.spec(msg.attempt))
        else:  # suspended already, in another wait: this one replaces it
            self._drop_wait(msg.node)
            self._record({"type": "wait", "node": msg.node, "wait": rec.spec(msg.attempt)})
        self._watch(msg.node, rec)

    def _watch(self, node_id: str, rec: WaitRec) -> None:
        self.waits[node_id] = rec
        for h in rec.pending:
            self.watchers.setdefault(h, []).append(node_id)
        if rec.due is not None:
            self._at(rec.due, TimerDue(node_id, self.st.plan.nodes[node_id].attempt, rec.seq))
        if rec.signal is not None:
            self.signal_waiters.setdefault(rec.signal, []).append(node_id)

    # --- satisfied --------------------------------------------------------------------

    def _satisfy(self, node_id: str) -> None:
        """The node's wait is satisfied: answer a resident task, or assign it again."""
        rec = self.waits.get(node_id)
        if rec is None:
            return
        if rec.resident:
            self._resume(node_id)
            self._send(rec.identity, self._resolved(node_id, rec.correlation, rec))
        else:
            self._ready_again(node_id)

    def _resume(self, node_id: str) -> None:
        """A resident task goes on (same attempt)."""
        self._drop_wait(node_id)
        self._set(node_id, NodeState.RUNNING)
        limits = self.limited.get(node_id)
        if limits:
            attempt = self.st.plan.nodes[node_id].attempt
            self.ctx.dispatcher.tell(Resumed(self.wf, node_id, attempt, limits))
        self._arm_running(node_id)

    def _ready_again(self, node_id: str) -> None:
        """A task nobody holds is to replay: ready again, same attempt."""
        self._set(node_id, NodeState.READY, attempt=self.st.plan.nodes[node_id].attempt)
        self._enqueue(node_id)

    def _resolved(self, node_id: str, correlation: str, rec: WaitRec) -> Resolved:
        value = None
        if rec.signal is not None:
            attempt = self.st.plan.nodes[node_id].attempt
            value = self.st.log(node_id, attempt).signals.get(rec.seq)
        return Resolved(id=correlation, workflow_id=self.wf, node=node_id,
                        results={h: self._node_result(h) for h in rec.handles}, value=value)

    def _timer_due(self, msg: TimerDue) -> None:
        rec = self.waits.get(msg.node)
        if (not self._current(msg.node, msg.attempt) or rec is None or rec.seq != msg.seq
                or rec.due is None or rec.due > self._now()):
            return
        self._record({"type": "timer", "node": msg.node, "attempt": msg.attempt,
                      "seq": msg.seq})
        self._satisfy(msg.node)

    # --- signals ----------------------------------------------------------------------

    def _signal(self, identity: bytes, msg: SendSignal) -> None:
        """Store the signal; the oldest wait for it (if any) consumes it now."""
        self._record({"type": "signal", "name": msg.name, "payload": msg.payload})
        self._send(identity, Ack(id=msg.id))
        self._offer(msg.name)

    def _offer(self, name: str) -> None:
        waiting = self.signal_waiters.get(name, [])
        while waiting and self.st.signals.get(name):
            node_id = waiting[0]
            rec = self.waits.get(node_id)
            if rec is None or rec.signal != name:
                waiting.pop(0)
                continue
            self._deliver(node_id, self.st.plan.nodes[node_id].attempt, rec)
            self._satisfy(node_id)

    def _deliver(self, node_id: str, attempt: int, rec: WaitRec) -> None:
        """The wait consumes the oldest buffered signal of its name."""
        name = str(rec.signal)
        self._record({"type": "delivered", "name": name, "node": node_id,
                      "attempt": attempt, "seq": rec.seq,
                      "payload": self.st.signals[name][0]})

    # --- after a Flow restart ------------------------------------------------------------

    def _restore_wait(self, node_id: str, spec: Mapping[str, Any]) -> WaitRec:
        """Re-arm a stored wait (nobody to answer yet: a resident task's supervisor
        re-sends its Wait after it says Hello)."""
        nodes = self.st.plan.nodes
        handles = [str(h) for h in spec.get("handles") or ()]
        due, signal = spec.get("due"), spec.get("signal")
        rec = WaitRec(int(spec.get("seq") or 0), handles,
                      pending={h for h in handles if nodes[h].live},
                      due=float(due) if due is not None else None,
                      signal=str(signal) if signal is not None else None,
                      resident=bool(spec.get("resident", True)),
                      spawns=int(spec.get("spawns") or 0))
        self._watch(node_id, rec)
        return rec


def _same(rec: WaitRec, msg: Wait) -> bool:
    return (rec.seq == msg.seq and rec.signal == msg.signal
            and (rec.due is not None) == (msg.timer is not None)
            and rec.handles == list(dict.fromkeys(msg.handles)))
