"""Attempts, restarts, cancels and outsiders: promises judge only what they should."""

from __future__ import annotations

from plait.protocol.diff import AttrChange, EdgeSpec, NodeSpec, NodeState, PlanDiff
from plait.protocol.plan import Plan
from plait.protocol.promises import MaxNodes, Shape
from plait.protocol.shape import OneOf, Par, Repeat
from plait.protocol.view import view

S = NodeState


def _plan(*promises: tuple[str, object], extra: tuple[NodeSpec, ...] = ()) -> Plan:
    plan = Plan("w")
    nodes = (NodeSpec("A", "A"), NodeSpec("B", "B"), *extra)
    assert plan.apply(PlanDiff(None, nodes, (EdgeSpec("A", "B"),), promises)).ok  # type: ignore[arg-type]
    plan.set_state("A", S.RUNNING)
    return plan


def _spawn(plan: Plan, creator: str, node: str, task: str) -> bool:
    return plan.apply(PlanDiff(creator, (NodeSpec(node, task, creator=creator),))).ok


def test_a_retry_may_take_another_branch_of_its_shape() -> None:
    plan = _plan(("A", Shape(OneOf("heads", "tails"))))
    assert _spawn(plan, "A", "A.1", "heads")
    plan.set_state("A", S.READY)  # the attempt failed; the retry draws afresh
    plan.set_state("A", S.RUNNING)
    assert _spawn(plan, "A", "A.1@2", "tails")
    plan.set_state("A", S.SUCCEEDED)
    for node in ("A.1", "A.1@2"):
        plan.set_state(node, S.RUNNING)
        plan.set_state(node, S.SUCCEEDED)
    assert plan.violations == []
    assert plan.nodes["B"].state is S.READY


def test_a_retry_still_takes_one_branch() -> None:
    plan = _plan(("A", Shape(OneOf("heads", "tails"))))
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    assert _spawn(plan, "A", "A.1@2", "tails")
    assert not _spawn(plan, "A", "A.2@2", "heads")


def test_a_retry_counts_its_own_creations_and_reclaims_the_earlier_ones() -> None:
    plan = _plan(("A", MaxNodes(1)))
    assert _spawn(plan, "A", "A.1", "m")
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    assert _spawn(plan, "A", "A.1", "m")  # re-claimed: counted once again
    assert not _spawn(plan, "A", "A.2@2", "m")  # the new attempt's budget is spent


def test_a_restarted_workflow_with_a_cancelled_region_settles() -> None:
    plan = _plan(("A", Shape(Repeat("M"))))
    assert _spawn(plan, "A", "A.1", "M")
    plan.set_state("A", S.SUCCEEDED)
    plan.cancel()
    assert plan.is_settled()
    placeholders = [n for n in view(plan).to_json()["nodes"] if n["provisional"]]
    assert placeholders == []  # a cancelled region promises nothing more
    assert plan.violations == []
    assert plan.restart("A").rejection is None
    plan.set_state("A", S.RUNNING)
    assert _spawn(plan, "A", "A.1", "M")
    plan.set_state("A", S.SUCCEEDED)
    plan.set_state("A.1", S.RUNNING)
    assert plan.set_state("A.1", S.SUCCEEDED).ready == ["B"]


def test_an_outsider_cannot_reshape_a_region_with_an_edge() -> None:
    plan = _plan(("A", Shape(Par("b", "c"))), extra=(NodeSpec("X", "X"),))
    assert plan.apply(PlanDiff("A", (NodeSpec("A.1", "b", creator="A"),
                                     NodeSpec("A.2", "c", creator="A")))).ok
    plan.set_state("X", S.RUNNING)
    out = plan.apply(PlanDiff("X", edges=(EdgeSpec("A.1", "A.2"),)))
    assert out.rejection is not None
    assert out.rejection.kind == "violation"
    assert out.rejection.owner == "A"


def test_a_task_changes_attributes_only_in_its_own_scope() -> None:
    plan = _plan(extra=(NodeSpec("X", "X"),))
    assert _spawn(plan, "A", "A.1", "m")
    plan.set_state("X", S.RUNNING)
    out = plan.apply(PlanDiff("X", attrs=(AttrChange("labels", ["free"], node="A.1"),)))
    assert out.rejection is not None
    assert "cannot change attributes" in out.rejection.reason
    assert plan.apply(PlanDiff("A", attrs=(AttrChange("color", "red", node="A.1"),))).ok
    assert plan.apply(PlanDiff(None, attrs=(AttrChange("color", "blue", node="A.1"),))).ok
