"""A workflow's event stream, and the state folded from it.

Store and feed share one stream per workflow, numbered 1, 2, 3...; each event
is a plain dict:

- ``{"type": "submitted", "name", "root"}``
- ``{"type": "diff", "diff": PlanDiff dict}``
- ``{"type": "state", "node", "state", "attempt", "output"?, "error"?, "supervisor"?}``
  for transitions made from outside the plan (running, suspended, succeeded,
  failed, cancelled, and ready for a retry)
- ``{"type": "violation", "rejection", "diff"?}`` a broken promise
- ``{"type": "rejected", "rejection", "diff"}`` a refused proposal (plan error or
  non-determinism; the proposing task fails)
- ``{"type": "workflow", "status", "output"?, "error"?}`` the end

:meth:`WorkflowState.fold` applies one event. The PlanKeeper folds its own
state events as it makes them, and Flow folds whole streams to rebuild live
workflows at start and to answer ``GetGraph(at=seq)``: one function for both,
so a rebuilt plan is the plan that was lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from plait.protocol.diff import NodeState, PlanDiff, Rejection
from plait.protocol.plan import Outcome, Plan

__all__ = ["ENDED", "WorkflowState", "error_text", "state_event"]

ENDED = frozenset({"succeeded", "failed", "cancelled", "violated"})


def error_text(error: Mapping[str, Any] | None) -> str | None:
    """The one-line form of an error dict that the plan keeps on a failed node."""
    if not error:
        return None
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def state_event(node: str, state: NodeState, attempt: int, **extra: Any) -> dict[str, Any]:
    """A ``state`` event; ``extra`` holds output, error or supervisor when present."""
    event: dict[str, Any] = {"type": "state", "node": node, "state": state.value,
                             "attempt": attempt}
    event.update((k, v) for k, v in extra.items() if v is not None)
    return event


class WorkflowState:
    """A workflow's plan plus what the plan does not hold: name, root, status,
    error dicts, which supervisor runs each attempt, and the stream position."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.name = ""
        self.root = ""
        self.plan = Plan(workflow_id)
        self.seq = 0
        self.status = "running"
        self.output: Any = None
        self.error: dict[str, Any] | None = None
        self.created = 0.0
        self.finished: float | None = None
        self.errors: dict[str, dict[str, Any]] = {}  # node -> its last error
        self.first_failure: dict[str, Any] | None = None
        self.supervisor: dict[str, str] = {}  # node -> supervisor of its attempt

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @classmethod
    def rebuild(cls, workflow_id: str,
                events: Iterable[tuple[int, float, Mapping[str, Any]]]) -> WorkflowState:
        """Fold a stored stream (``(seq, ts, event)`` in order) into a state."""
        state = cls(workflow_id)
        for _, ts, event in events:
            state.fold(event, ts)
        return state

    def note(self) -> None:
        """Count an event whose effect the caller already applied to the plan."""
        self.seq += 1

    def fold(self, event: Mapping[str, Any], ts: float = 0.0) -> Outcome:
        """Apply one event; returns what it did to the plan."""
        self.seq += 1
        kind = event["type"]
        if kind == "state":
            return self._fold_state(event)
        if kind == "diff":
            return self._fold_diff(event)
        if kind in ("violation", "rejected"):
            self._fold_rejection(event)
        elif kind == "submitted":
            self.name, self.root, self.created = str(event["name"]), str(event["root"]), ts
        elif kind == "workflow":
            self._fold_end(event, ts)
        return Outcome()

    def _fold_state(self, event: Mapping[str, Any]) -> Outcome:
        node_id, state = str(event["node"]), NodeState(event["state"])
        node = self.plan.nodes[node_id]
        error = event.get("error")
        if state is NodeState.READY and node.state is NodeState.SUSPENDED:
            # A retry of a suspended attempt: through running, so the attempt counts up.
            self.plan.set_state(node_id, NodeState.RUNNING)
        out = self.plan.set_state(node_id, state, output=event.get("output"),
                                  error=error_text(error))
        if error:
            self.errors[node_id] = dict(error)
            if state is NodeState.FAILED and self.first_failure is None:
                self.first_failure = {**error, "node": node_id, "attempts": node.attempt}
        if state is NodeState.RUNNING and "supervisor" in event:
            self.supervisor[node_id] = str(event["supervisor"])
        return out

    def _fold_diff(self, event: Mapping[str, Any]) -> Outcome:
        out = self.plan.apply(PlanDiff.from_dict(event["diff"]))
        if out.rejection is not None:
            raise ValueError(f"{self.workflow_id}: stored diff {self.seq} no longer applies: "
                             f"{out.rejection.message()}")
        return out

    def _fold_rejection(self, event: Mapping[str, Any]) -> None:
        rejection = Rejection.from_dict(event["rejection"])
        if event["type"] == "violation" and rejection not in self.plan.violations:
            self.plan.violations.append(rejection)
        if event.get("diff") is not None:
            self.plan.rejected.append((rejection, PlanDiff.from_dict(event["diff"])))

    def _fold_end(self, event: Mapping[str, Any], ts: float) -> None:
        self.status = str(event["status"])
        self.output = event.get("output")
        self.error = event.get("error")
        self.finished = ts
        if self.status in ("cancelled", "violated"):
            self.plan.cancel()

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
        """The ``workflow`` event that ends a settled workflow."""
        if self.plan.violations:
            violation = self.plan.violations[0]
            return {"type": "workflow", "status": "violated",
                    "error": violation_error(violation)}
        if self.first_failure is not None:
            return {"type": "workflow", "status": "failed", "error": self.first_failure}
        return {"type": "workflow", "status": "succeeded", "output": self.result()}

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
