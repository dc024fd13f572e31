"""A workflow's event stream, and the state folded from it.

Store and feed share one stream per workflow, numbered 1, 2, 3...; each event
is a plain dict (``docs/architecture.md`` lists them all):

- ``submitted``, ``diff``, ``violation``, ``rejected``, ``workflow`` (the end);
- ``state``: a transition made from outside the plan (running, suspended with
  its ``wait``, succeeded, failed, cancelled, ready: a retry with its ``due``
  time, or a suspended attempt resuming with the same attempt);
- durable execution: ``recorded`` (values a task drew), ``wait`` (a wait that
  changed to durable), ``timer`` (a sleep fired), ``signal`` (one arrived and is
  buffered), ``delivered`` (a wait consumed the oldest buffered one),
  ``undelivered`` (a failed attempt's signals, back at the front of the
  buffer: its retry starts with none), ``heartbeat``, ``set_state``;
- operator controls: ``paused``, ``resumed``, ``restart``.

:meth:`WorkflowState.fold` applies one event. The PlanKeeper folds its own
events as it makes them, and Flow folds whole streams to rebuild live
workflows at start and to answer ``GetGraph(at=seq)``: one function for both,
so a rebuilt state is the state that was lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from plait.protocol.diff import NodeState, PlanDiff, Rejection
from plait.protocol.plan import TERMINAL, Outcome, Plan

__all__ = ["ENDED", "AttemptLog", "WorkflowState", "error_text", "state_event"]

ENDED = frozenset({"succeeded", "failed", "cancelled", "violated"})


class _StepFailed:
    """Marks a step index whose latest attempt failed there (see ``_fold_step``)."""

    def __repr__(self) -> str:
        return "STEP_FAILED"


STEP_FAILED: Any = _StepFailed()


def error_text(error: Mapping[str, Any] | None) -> str | None:
    """The one-line form of an error dict that the plan keeps on a failed node."""
    if not error:
        return None
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def state_event(node: str, state: NodeState, attempt: int, **extra: Any) -> dict[str, Any]:
    """A ``state`` event; ``extra`` holds output, error, supervisor, wait or due."""
    event: dict[str, Any] = {"type": "state", "node": node, "state": state.value,
                             "attempt": attempt}
    event.update((k, v) for k, v in extra.items() if v is not None)
    return event


class AttemptLog:
    """What one node's current attempt replays from: values drawn (by record seq),
    sleeps fired and signals delivered (by record seq, with their names), and
    whether it resumed."""

    __slots__ = ("attempt", "names", "recorded", "resumed", "signals", "timers")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.recorded: dict[int, dict[str, Any]] = {}
        self.timers: set[int] = set()
        self.signals: dict[int, Any] = {}
        self.names: dict[int, str] = {}
        self.resumed = False

    def consumed(self) -> list[list[Any]]:
        """The signals this attempt consumed, ``[name, payload]`` in record order."""
        return [[self.names.get(seq, ""), self.signals[seq]] for seq in sorted(self.signals)]


class WorkflowState:
    """A workflow's plan plus everything the plan does not hold: name, root, status,
    errors, supervisors, and what durable execution needs (see the fields)."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.name = ""
        self.root = ""
        self.plan = Plan(workflow_id)
        self.seq = 0
        self.status = "running"
        self.paused = False
        self.output: Any = None
        self.error: dict[str, Any] | None = None
        self.created = 0.0
        self.finished: float | None = None
        self.errors: dict[str, dict[str, Any]] = {}  # node -> its last error
        self.failures: dict[str, dict[str, Any]] = {}  # failed node -> error; in time order
        self.supervisor: dict[str, str] = {}  # node -> supervisor of its attempt
        self.logs: dict[str, AttemptLog] = {}
        self.born: dict[str, int] = {}  # child -> the attempt of its creator that made it
        # node -> step index -> (function, value or STEP_FAILED, attempt): the durable
        # steps its attempts completed (or failed), the latest attempt's at each index
        self.steps: dict[str, dict[int, tuple[str, Any, int]]] = {}
        # Suspended node -> what it waits for, oldest wait first (signals go to the oldest).
        self.waits: dict[str, dict[str, Any]] = {}
        self.last_wait: dict[str, dict[str, Any]] = {}  # node -> its wait that ended last
        self.not_before: dict[str, tuple[int, float]] = {}  # node -> (attempt, backoff end)
        self.started_at: dict[str, float] = {}  # running node -> when it (re)started
        self.signals: dict[str, deque[Any]] = {}  # name -> payloads nobody consumed yet
        # node -> (attempt, details) of its last heartbeat with details, and of the
        # last one from an earlier attempt (what a replay of that attempt starts from)
        self.beats: dict[str, tuple[tuple[int, Any], tuple[int, Any]]] = {}
        self.query: dict[str, Any] = {}  # node -> last ctx.set_state value
        self.query_latest: Any = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def heartbeat(self, node_id: str) -> Any:
        """The heartbeat details the node's current attempt started with: the last
        ones of an earlier attempt of its current run (a retry resumes from them; a
        run restarted by an operator, or a superseded child proposed again, starts
        without them). A replay of the attempt gets these too, not the ones it sent
        itself, or it would skip what its first execution did. None if none."""
        node = self.plan.nodes.get(node_id)
        if node is None or node_id not in self.beats:
            return None
        last, before = self.beats[node_id]
        attempt, details = last if last[0] < node.attempt else before
        return details if attempt >= node.base_attempt else None

    def last_heartbeat(self, node_id: str) -> Any:
        """The details last recorded for the node's current run (None if none)."""
        node = self.plan.nodes.get(node_id)
        if node is None or node_id not in self.beats:
            return None
        attempt, details = self.beats[node_id][0]
        return details if attempt >= node.base_attempt else None

    @classmethod
    def rebuild(cls, workflow_id: str,
                events: Iterable[tuple[int, float, Mapping[str, Any]]]) -> WorkflowState:
        """Fold a stored stream (``(seq, ts, event)`` in order) into a state."""
        state = cls(workflow_id)
        for seq, ts, event in events:
            state.fold(event, ts)
            state.seq = seq  # numbered as stored: a gap must not make it reuse one
        return state

    def note(self) -> None:
        """Count an event whose effect the caller already applied."""
        self.seq += 1

    def log(self, node: str, attempt: int) -> AttemptLog:
        """The replay log of ``node``'s attempt ``attempt`` (a new attempt starts empty)."""
        log = self.logs.get(node)
        if log is None or log.attempt != attempt:
            log = self.logs[node] = AttemptLog(attempt)
        return log

    # --- folding ------------------------------------------------------------------

    def fold(self, event: Mapping[str, Any], ts: float = 0.0) -> Outcome:
        """Apply one event; returns what it did to the plan. The event counts only
        once it applied: an event that raises is not in the stream."""
        out = self._fold(event, ts)
        self.seq += 1
        return out

    def _fold(self, event: Mapping[str, Any], ts: float) -> Outcome:
        kind = event["type"]
        if kind == "state":
            return self._fold_state(event, ts)
        if kind == "diff":
            return self._fold_diff(event)
        if kind == "restart":
            return self._fold_restart(event)
        if kind in ("violation", "rejected"):
            self._fold_rejection(event)
        elif kind == "submitted":
            self.name, self.root, self.created = str(event["name"]), str(event["root"]), ts
        elif kind == "workflow":
            self._fold_end(event, ts)
        else:
            self._fold_durable(kind, event)
        return Outcome()

    def _fold_state(self, event: Mapping[str, Any], ts: float) -> Outcome:
        node_id, state = str(event["node"]), NodeState(event["state"])
        node = self.plan.nodes[node_id]
        was, before, attempt = node.state, node.attempt, int(event["attempt"])
        if state is NodeState.READY and was is NodeState.SUSPENDED and attempt != before:
            # A retry of a suspended attempt: through running, so the attempt counts up.
            self.plan.set_state(node_id, NodeState.RUNNING)
        error = event.get("error")
        out = self.plan.set_state(node_id, state, output=event.get("output"),
                                  error=error_text(error))
        if was is NodeState.SUSPENDED and node_id in self.waits:
            self.last_wait[node_id] = self.waits.pop(node_id)
        if state is NodeState.SUSPENDED and "wait" in event:
            self.waits[node_id] = dict(event["wait"])
        elif state is NodeState.READY:
            if attempt == before:
                self.log(node_id, attempt).resumed = True
            if "due" in event:
                self.not_before[node_id] = (attempt, float(event["due"]))
        elif state is NodeState.RUNNING:
            self.started_at[node_id] = ts
            if "supervisor" in event:
                self.supervisor[node_id] = str(event["supervisor"])
        if state in TERMINAL:
            self.steps.pop(node_id, None)  # it will not run again (a restart starts afresh)
        if error:
            self.errors[node_id] = dict(error)
            if state is NodeState.FAILED:
                self.failures.pop(node_id, None)  # a later failure counts from now
                self.failures[node_id] = {**error, "node": node_id, "attempts": node.attempt}
        return out

    def _fold_diff(self, event: Mapping[str, Any]) -> Outcome:
        out = self.apply(PlanDiff.from_dict(event["diff"]), stored=True)
        if out.rejection is not None:
            raise ValueError(f"{self.workflow_id}: stored diff {self.seq + 1} no longer applies: "
                             f"{out.rejection.message()}")
        return out

    def _fold_restart(self, event: Mapping[str, Any]) -> Outcome:
        out = self.restart(str(event["node"]))
        if out.rejection is not None:
            raise ValueError(f"{self.workflow_id}: stored restart {self.seq + 1} no longer "
                             f"applies: {out.rejection.message()}")
        return out

    def _fold_rejection(self, event: Mapping[str, Any]) -> None:
        rejection = Rejection.from_dict(event["rejection"])
        if event["type"] == "violation" and rejection not in self.plan.violations:
            self.plan.violations.append(rejection)
        if event.get("diff") is not None:
            self.plan.rejected.append((rejection, PlanDiff.from_dict(event["diff"])))

    def _fold_end(self, event: Mapping[str, Any], ts: float) -> None:
        self.status = str(event["status"])
        self.paused = False
        self.output = event.get("output")
        self.error = event.get("error")
        self.finished = ts
        if self.status != "succeeded":
            self.plan.cancel()  # a cancelled, violated or failed workflow stops all
            self.waits.clear()

    def _fold_durable(self, kind: str, event: Mapping[str, Any]) -> None:
        if kind == "paused":
            self.paused, self.status = True, "paused"
        elif kind == "resumed":
            self.paused, self.status = False, "running"
        elif kind == "signal":
            self.signals.setdefault(str(event["name"]), deque()).append(event.get("payload"))
        elif kind == "set_state":
            self.query[str(event["node"])] = self.query_latest = event.get("value")
        elif kind == "heartbeat":
            node_id, beat = str(event["node"]), (int(event.get("attempt") or 0),
                                                 event.get("details"))
            last, before = self.beats.get(node_id, ((0, None), (0, None)))
            if beat[0] >= last[0]:
                self.beats[node_id] = (beat, last if beat[0] > last[0] else before)
        elif kind == "wait":
            node_id, wait = str(event["node"]), dict(event["wait"])
            if not _same_wait(self.waits.get(node_id), wait):
                self.waits.pop(node_id, None)  # another wait: the newest of all
            self.waits[node_id] = wait  # (the same one made durable keeps its place)
        else:
            self._fold_replay(kind, event)

    def _fold_step(self, node: str, value: Mapping[str, Any], attempt: int) -> None:
        """Keep, per step index, the step a retry may take back: the latest attempt's
        (a failure is kept as a marker, never handed back). An attempt that did
        otherwise at an index than an earlier one took another path there: what the
        earlier attempts did after that index is dropped, so that it runs anew."""
        kind, step = value.get("kind"), value.get("value")
        if kind not in ("step", "step_error") or not isinstance(step, dict) \
                or not isinstance(step.get("i"), int) or not isinstance(step.get("fn"), str):
            return
        steps = self.steps.setdefault(node, {})
        index = step["i"]
        done = (step["fn"], step.get("v") if kind == "step" else STEP_FAILED, attempt)
        known = steps.get(index)
        if known is not None and known[2] < attempt and (
                known[:2] != done[:2] or done[1] is STEP_FAILED):
            for later in [i for i, (_, _, a) in steps.items() if i > index and a < attempt]:
                del steps[later]
        steps[index] = done

    def _fold_replay(self, kind: str, event: Mapping[str, Any]) -> None:
        log = self.log(str(event["node"]), int(event["attempt"]))
        if kind == "recorded":
            for value in event["values"]:
                log.recorded.setdefault(int(value["seq"]), dict(value))
                self._fold_step(str(event["node"]), value, log.attempt)
        elif kind == "timer":
            log.timers.add(int(event["seq"]))
        elif kind == "delivered":
            buffered = self.signals.get(str(event["name"]))
            if buffered:
                buffered.popleft()
            log.signals[int(event["seq"])] = event.get("payload")
            log.names[int(event["seq"])] = str(event["name"])
        elif kind == "undelivered":
            for name, payload in reversed(event["signals"]):
                self.signals.setdefault(str(name), deque()).appendleft(payload)
            log.signals.clear()
            log.names.clear()

    # --- changes shared by the keeper and the fold --------------------------------

    def apply(self, diff: PlanDiff, *, stored: bool = False) -> Outcome:
        """Apply a diff to the plan, noting which attempt of its creator made each node."""
        new = [s for s in diff.nodes if s.creator is not None and s.id not in self.plan.nodes]
        out = self.plan.apply(diff, stored=stored)
        if out.rejection is None:
            for spec in new:
                self.born[spec.id] = self.plan.nodes[str(spec.creator)].attempt
        return out

    def restart(self, node_id: str, *, operator: bool = False) -> Outcome:
        """Restart a node and its downstream (``Plan.restart``); the workflow runs again."""
        attempts = {n: self.plan.nodes[n].attempt for n in self.steps}
        out = self.plan.restart(node_id, operator=operator)
        if out.rejection is not None:
            return out
        nodes = self.plan.nodes
        for n, attempt in attempts.items():  # run again from scratch: its steps too
            if nodes[n].attempt != attempt or nodes[n].superseded:
                del self.steps[n]
        self.failures = {n: e for n, e in self.failures.items()
                         if nodes[n].state is NodeState.FAILED}
        if self.ended:
            self.status = "paused" if self.paused else "running"
            self.output = self.error = self.finished = None
        return out

    # --- the workflow's outcome --------------------------------------------------

    def result(self) -> Any:
        """The root's output; for a Graph (no node named ``root``), the output of its
        single sink, else ``{node id: output}`` of its sinks."""
        plan = self.plan
        if self.root in plan.nodes:
            return plan.nodes[self.root].output
        tops = [plan.nodes[i] for i in plan.order if plan.nodes[i].creator is None]
        sinks = [n for n in tops if not any(plan.nodes[s].creator is None for s in n.succs)]
        if len(sinks) == 1:
            return sinks[0].output
        return {n.id: n.output for n in sinks}

    def outcome(self) -> dict[str, Any]:
        """The ``workflow`` event that ends a settled workflow. A workflow submitted
        as a task follows its root (a child's failure the root handled does not
        fail it); a Graph fails if any node failed (with the first failure)."""
        if self.plan.violations:
            violation = self.plan.violations[0]
            return {"type": "workflow", "status": "violated",
                    "error": violation_error(violation)}
        root = self.plan.nodes.get(self.root)
        if root is not None and root.state is not NodeState.SUCCEEDED:
            return {"type": "workflow", "status": "failed", "error": self.failure_of(root.id)}
        if root is None and self.failures:
            return {"type": "workflow", "status": "failed",
                    "error": next(iter(self.failures.values()))}
        return {"type": "workflow", "status": "succeeded", "output": self.result()}

    def failure_of(self, node_id: str) -> dict[str, Any]:
        node = self.plan.nodes[node_id]
        return self.failures.get(node_id) or {
            "type": "WorkflowFailed", "node": node_id, "attempts": node.attempt,
            "message": f"{node_id} ended {node.state.value}"}

    def view_json(self, unfold: bool = False) -> dict[str, Any]:
        """The as-of-now view document; its ``seq`` is the stream position."""
        from plait.protocol.view import view  # the view module is heavy; load on demand

        doc = view(self.plan, unfold=unfold).to_json()
        doc["seq"] = self.seq
        return doc


def violation_error(rejection: Rejection) -> dict[str, Any]:
    """A broken promise as a workflow error (what ``PromiseViolation`` carries)."""
    return {"type": "PromiseViolation", "message": rejection.message(),
            "reason": rejection.reason, "promise": rejection.promise,
            "owner": rejection.owner, "proposer": rejection.proposer,
            "diff": dict(rejection.diff)}


def _same_wait(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` is the wait ``old`` (a resident one its task was evicted from)."""
    return old is not None and ({k: v for k, v in old.items() if k != "resident"}
                                == {k: v for k, v in new.items() if k != "resident"})
