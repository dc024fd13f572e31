"""Restarting a node and its downstream: new attempts, earlier ones kept as history."""

from __future__ import annotations

from plait.protocol.diff import EdgeSpec, NodeSpec, NodeState, PlanDiff, child_id
from plait.protocol.plan import Plan
from plait.protocol.promises import Shape
from plait.protocol.shape import Repeat

S = NodeState


def _run(plan: Plan, node_id: str) -> list[str]:
    plan.set_state(node_id, S.RUNNING)
    return plan.set_state(node_id, S.SUCCEEDED).ready


def _map_plan(copies: int) -> tuple[Plan, tuple[NodeSpec, ...]]:
    plan = Plan("w")
    diff = PlanDiff(None, (NodeSpec("A", "A"), NodeSpec("B", "B")), (EdgeSpec("A", "B"),),
                    (("A", Shape(Repeat("M"))),))
    assert plan.apply(diff).ok
    plan.set_state("A", S.RUNNING)
    ms = tuple(NodeSpec(child_id("A", i), "M", {"i": i}, creator="A") for i in range(copies))
    assert plan.apply(PlanDiff("A", ms)).ok
    plan.set_state("A", S.SUCCEEDED)
    for m in ms:
        _run(plan, m.id)
    _run(plan, "B")
    assert plan.is_settled()
    return plan, ms


def test_restart_resets_downstream_and_supersedes_children() -> None:
    plan, ms = _map_plan(3)
    out = plan.restart("A")
    assert out.rejection is None
    assert out.ready == ["A"]
    assert (plan.nodes["A"].attempt, plan.nodes["B"].attempt) == (2, 2)
    assert plan.nodes["B"].state is S.PENDING
    assert all(plan.nodes[m.id].superseded for m in ms)
    assert all(plan.nodes[m.id].state is S.SUCCEEDED for m in ms)  # kept as history
    assert not plan.is_settled()


def test_reproposed_children_are_revived_and_the_rest_stay_history() -> None:
    plan, ms = _map_plan(3)
    plan.restart("A")
    plan.set_state("A", S.RUNNING)
    out = plan.apply(PlanDiff("A", ms[:2]))
    assert out.ok
    assert sorted(out.ready) == [ms[0].id, ms[1].id]
    assert plan.nodes[ms[0].id].attempt == 2
    assert plan.nodes[ms[2].id].superseded
    plan.set_state("A", S.SUCCEEDED)
    assert plan.nodes["B"].state is S.PENDING  # the region is open again
    _run(plan, ms[0].id)
    assert _run(plan, ms[1].id) == ["B"]


def test_restart_refuses_while_downstream_runs() -> None:
    plan, _ = _map_plan(1)
    plan.restart("A")
    plan.set_state("A", S.RUNNING)
    out = plan.restart("A")
    assert out.rejection is not None
    assert "still running" in out.rejection.reason


def test_restarting_a_middle_node_leaves_upstream_alone() -> None:
    plan = Plan("w")
    nodes = (NodeSpec("a", "t"), NodeSpec("b", "t"), NodeSpec("c", "t"))
    assert plan.apply(PlanDiff(None, nodes, (EdgeSpec("a", "b"), EdgeSpec("b", "c")))).ok
    for n in "abc":
        _run(plan, n)
    out = plan.restart("b")
    assert out.ready == ["b"]
    assert plan.nodes["a"].state is S.SUCCEEDED
    assert plan.nodes["a"].attempt == 1
    assert plan.nodes["c"].state is S.PENDING
    assert plan.nodes["c"].attempt == 2
    assert _run(plan, "b") == ["c"]


def test_restart_refuses_a_node_whose_predecessor_outside_it_did_not_succeed() -> None:
    plan = Plan("w")
    nodes = (NodeSpec("a", "t"), NodeSpec("b", "t"), NodeSpec("c", "t"))
    assert plan.apply(PlanDiff(None, nodes, (EdgeSpec("a", "b"), EdgeSpec("b", "c")))).ok
    plan.set_state("a", S.RUNNING)
    plan.set_state("a", S.FAILED)
    plan.cancel()  # the workflow ended: b and c never ran
    out = plan.restart("c", operator=True)
    assert out.rejection is not None
    assert "c runs after b, which was cancelled; restart b (or a node upstream of it)" \
        in out.rejection.reason
    assert plan.nodes["c"].attempt == 1  # nothing changed
    assert plan.nodes["c"].state is S.CANCELLED
    out = plan.restart("b", operator=True)
    assert out.rejection is not None
    assert "b runs after a, which failed" in out.rejection.reason
    # A restart already stored (by a version that allowed it) is folded as it was.
    folded = Plan("w")
    assert folded.apply(PlanDiff(None, nodes, (EdgeSpec("a", "b"), EdgeSpec("b", "c")))).ok
    folded.set_state("a", S.RUNNING)
    folded.set_state("a", S.FAILED)
    folded.cancel()
    assert folded.restart("c").rejection is None
    out = plan.restart("a", operator=True)
    assert out.rejection is None
    assert out.ready == ["a"]
    assert _run(plan, "a") == ["b"]


def test_restart_refuses_a_child_whose_creator_did_not_succeed() -> None:
    """The root re-raised its child's failure: restarting the child alone ran it
    again, and the workflow ended failed as before, with the root's old error."""
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("r", "t"),), ())).ok
    plan.set_state("r", S.RUNNING)
    child = child_id("r", 1)
    assert plan.apply(PlanDiff("r", (NodeSpec(child, "t", creator="r"),), ())).ok
    plan.set_state(child, S.RUNNING)
    plan.set_state(child, S.FAILED)
    plan.set_state("r", S.FAILED)
    out = plan.restart(child, operator=True)
    assert out.rejection is not None
    assert f"cannot restart {child}: r, which created it, failed; restart r instead" \
        in out.rejection.reason
    assert plan.restart("r", operator=True).rejection is None


def test_a_reproposal_may_add_an_edge_into_a_revived_child() -> None:
    """A's first attempt spawned b, then c after b. A is restarted; its new run
    spawns another b (new inputs: a new id) and the same c, after the new b. The
    revived c has not started again: the edge into it is allowed."""
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("A", "A"),))).ok
    plan.set_state("A", S.RUNNING)
    b, c = child_id("A", 1), child_id("A", 2)
    first = (NodeSpec(b, "fetch", {"x": 1}, creator="A"), NodeSpec(c, "report", creator="A"))
    assert plan.apply(PlanDiff("A", first, (EdgeSpec(b, c),))).ok
    plan.set_state("A", S.SUCCEEDED)
    _run(plan, b)
    _run(plan, c)
    assert plan.restart("A").rejection is None
    plan.set_state("A", S.RUNNING)
    b2 = f"{b}@2"
    again = (NodeSpec(b2, "fetch", {"x": 2}, creator="A"), first[1])
    out = plan.apply(PlanDiff("A", again, (EdgeSpec(b2, c),)))
    assert out.ok, out.rejection
    assert sorted(out.ready) == [b2]  # c waits for the new b
    assert plan.nodes[c].state is S.PENDING
    assert plan.nodes[c].attempt == 2
    assert _run(plan, b2) == [c]
