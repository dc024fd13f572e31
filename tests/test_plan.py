"""Unit tests of the plan's rules: atomic diffs, structure, ids, readiness, life cycle,
placeholders, and the diff's wire form."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import workflow_strategy as ws
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol.codec import pack, unpack
from plait.protocol.diff import (
    AttrChange,
    EdgeSpec,
    NodeSpec,
    NodeState,
    PlanDiff,
    Rejection,
    child_id,
)
from plait.protocol.plan import Plan
from plait.protocol.promises import MaxNodes, NoNewNodes, OnlyNodes, Shape
from plait.protocol.shape import Seq, Task

S = NodeState


# --- helpers -----------------------------------------------------------------------


def spec(node_id: str, task: str | None = None, creator: str | None = None,
         **inputs: Any) -> NodeSpec:
    return NodeSpec(node_id, task or node_id.split(".")[0], {"kwargs": inputs}, {}, creator)


def registered(*nodes: str, edges: tuple[tuple[str, str], ...] = (),
               promises: tuple[tuple[str, Any], ...] = ()) -> Plan:
    plan = Plan("wf")
    outcome = plan.apply(PlanDiff(None, tuple(spec(n) for n in nodes),
                                  tuple(EdgeSpec(s, d) for s, d in edges), promises))
    assert outcome.ok, outcome.rejection
    return plan


def start(plan: Plan, node_id: str) -> None:
    plan.set_state(node_id, S.RUNNING)


def spawn(plan: Plan, creator: str, *children: tuple[str, str],
          edges: tuple[tuple[str, str], ...] = (),
          promises: tuple[tuple[str, Any], ...] = ()) -> Any:
    """``creator`` proposes children given as (id, task), with edges and promises."""
    diff = PlanDiff(creator, tuple(spec(i, t, creator) for i, t in children),
                    tuple(EdgeSpec(s, d) for s, d in edges), promises)
    return plan.apply(diff)


def snapshot(plan: Plan) -> tuple[Any, ...]:
    """Everything a rejected diff must leave untouched."""
    return (
        dict(plan.nodes), dict(plan.edges), list(plan.order), plan.seq, plan.live_count,
        {n.id: (n.state, list(n.preds), list(n.succs), list(n.children), n.waiting,
                len(n.trackers)) for n in plan.nodes.values()},
    )


# --- atomicity and structural rules ---------------------------------------------------


def test_registration_makes_only_sources_ready() -> None:
    plan = Plan("wf")
    out = plan.apply(PlanDiff(None, (spec("a"), spec("b"), spec("c")),
                              (EdgeSpec("a", "b"), EdgeSpec("b", "c"))))
    assert out.ok
    assert out.ready == ["a"]
    assert [plan.nodes[n].state for n in "abc"] == [S.READY, S.PENDING, S.PENDING]
    assert plan.seq == 1
    assert plan.order == ["a", "b", "c"]
    assert plan.live_count == 3
    assert plan.nodes["b"].preds == ["a"]
    assert plan.nodes["a"].succs == ["b"]


def test_a_diff_with_one_bad_part_is_rejected_whole() -> None:
    plan = registered("a")
    start(plan, "a")
    before = snapshot(plan)
    out = spawn(plan, "a", ("a.0", "x"), ("a.1", "y"), edges=(("a.0", "nowhere"),))
    assert out.rejection is not None
    assert not out.ok
    assert out.rejection.kind == "plan"
    assert "nowhere" in out.rejection.reason
    assert out.rejection.proposer == "a"
    assert snapshot(plan) == before
    assert plan.rejected[-1][0] is out.rejection
    assert plan.violations == []  # a plan error is not a promise violation


@pytest.mark.parametrize(
    ("diff", "needle"),
    [
        (PlanDiff("ghost", (spec("ghost.0", "x", "ghost"),)), "unknown proposer"),
        (PlanDiff(None, (spec("n", "x", "nobody"),)), "unknown creator"),
        (PlanDiff(None, (), (EdgeSpec("a", "zz"),)), "unknown node zz"),
        (PlanDiff(None, (), (), (("zz", NoNewNodes()),)), "unknown node zz"),
        (PlanDiff(None, attrs=(AttrChange("k", 1, node="zz"),)), "unknown node zz"),
        (PlanDiff(None, attrs=(AttrChange("k", 1, edge=("a", "zz")),)), "unknown edge"),
    ],
)
def test_unknown_nodes_are_plan_errors(diff: PlanDiff, needle: str) -> None:
    plan = registered("a")
    before = snapshot(plan)
    out = plan.apply(diff)
    assert out.rejection is not None
    assert out.rejection.kind == "plan"
    assert needle in out.rejection.reason
    assert snapshot(plan) == before


def test_only_a_running_or_suspended_node_proposes() -> None:
    plan = registered("a")
    out = spawn(plan, "a", ("a.0", "x"))  # a is only ready
    assert out.rejection is not None
    assert "only a running task" in out.rejection.reason
    start(plan, "a")
    plan.set_state("a", S.SUSPENDED)
    assert spawn(plan, "a", ("a.0", "x")).ok
    plan.set_state("a", S.RUNNING)
    plan.set_state("a", S.SUCCEEDED)
    out = spawn(plan, "a", ("a.1", "x"))
    assert out.rejection is not None
    assert "succeeded" in out.rejection.reason


def test_the_creator_of_new_nodes_must_be_the_proposer() -> None:
    plan = registered("a", "b")
    start(plan, "a")
    out = plan.apply(PlanDiff("a", (spec("b.0", "x", "b"),)))
    assert out.rejection is not None
    assert out.rejection.kind == "plan"
    assert "on behalf of b" in out.rejection.reason
    out = plan.apply(PlanDiff("a", (spec("a.0", "x", None),)))
    assert out.rejection is not None
    assert out.rejection.kind == "plan"


def test_a_proposer_promises_only_for_itself_and_its_new_children() -> None:
    plan = registered("a", "b")
    start(plan, "a")
    out = plan.apply(PlanDiff("a", (), (), (("b", NoNewNodes()),)))
    assert out.rejection is not None
    assert "cannot make a promise for b" in out.rejection.reason
    out = spawn(plan, "a", ("a.0", "x"), promises=(("a.0", NoNewNodes()), ("a", OnlyNodes("x"))))
    assert out.ok
    assert plan.promises_of("a.0") == [NoNewNodes()]
    assert plan.promises_of("a") == [OnlyNodes("x")]


def test_no_edge_into_a_started_node() -> None:
    plan = registered("a", "b")
    start(plan, "a")
    start(plan, "b")
    out = plan.apply(PlanDiff("a", (), (EdgeSpec("a", "b"),)))
    assert out.rejection is not None
    assert "b has already started" in out.rejection.reason
    plan.set_state("b", S.SUCCEEDED)
    out = plan.apply(PlanDiff("a", (), (EdgeSpec("a", "b"),)))
    assert out.rejection is not None
    assert "already started" in out.rejection.reason


def test_an_edge_into_a_ready_node_makes_it_pending_again() -> None:
    plan = registered("a", "b")
    start(plan, "a")
    out = plan.apply(PlanDiff("a", (), (EdgeSpec("a", "b"),)))
    assert out.ok
    assert out.unready == ["b"]
    assert plan.nodes["b"].state is S.PENDING
    assert plan.set_state("a", S.SUCCEEDED).ready == ["b"]


@pytest.mark.parametrize(
    "edges",
    [
        (("c", "c"),),  # a self loop
        (("c", "a"),),  # closes a -> b -> c -> a through existing edges
        (("a.0", "a.1"), ("a.1", "a.0")),  # a cycle inside the diff
        (("c", "a.0"), ("a.0", "b")),  # through a new node back into the graph
    ],
)
def test_no_cycles(edges: tuple[tuple[str, str], ...]) -> None:
    plan = Plan("wf")
    assert plan.apply(PlanDiff(None, (spec("r"), spec("a"), spec("b"), spec("c")),
                               (EdgeSpec("a", "b"), EdgeSpec("b", "c")))).ok
    start(plan, "r")
    before = snapshot(plan)
    out = plan.apply(PlanDiff("r", (spec("a.0", "x", "r"), spec("a.1", "x", "r")),
                              tuple(EdgeSpec(s, d) for s, d in edges)))
    assert out.rejection is not None
    assert "cycle" in out.rejection.reason
    assert snapshot(plan) == before


def test_registration_cycles_are_refused() -> None:
    plan = Plan("wf")
    out = plan.apply(PlanDiff(None, (spec("a"), spec("b")),
                              (EdgeSpec("a", "b"), EdgeSpec("b", "a"))))
    assert out.rejection is not None
    assert "cycle" in out.rejection.reason
    assert len(plan) == 0
    assert plan.seq == 0


# --- deterministic ids ------------------------------------------------------------------


def test_child_ids_are_deterministic() -> None:
    assert child_id("root", 0) == "root.0"
    assert child_id("root.0", 3) == "root.0.3"
    assert child_id("root", 7, key="fetch") == "root/fetch"
    long = "x" * 100
    assert child_id(long, 1) == child_id(long, 1)
    assert child_id(long, 1) != child_id("y" * 100, 1)
    assert len(child_id(long, 1)) < 40


def test_an_identical_re_proposal_is_a_duplicate() -> None:
    plan = registered("a")
    start(plan, "a")
    diff = PlanDiff("a", (spec("a.0", "x", "a", n=1), spec("a.1", "y", "a")),
                    (EdgeSpec("a.0", "a.1", data=True),), (("a", MaxNodes(5)),))
    assert plan.apply(diff).ok
    before = snapshot(plan)
    again = plan.apply(diff)
    assert again.ok
    assert again.duplicate
    assert again.ready == []
    assert snapshot(plan) == before
    # A replayed attempt re-proposes after its children started: still a no-op.
    start(plan, "a.0")
    assert plan.apply(diff).duplicate
    # Attributes are cosmetic: they do not make a re-proposal conflict.
    cosmetic = PlanDiff("a", (NodeSpec("a.0", "x", {"kwargs": {"n": 1}}, {"colour": "red"},
                                       "a"),))
    assert plan.apply(cosmetic).duplicate


@pytest.mark.parametrize(
    "conflict",
    [
        NodeSpec("a.0", "other", {"kwargs": {"n": 1}}, {}, "a"),
        NodeSpec("a.0", "x", {"kwargs": {"n": 2}}, {}, "a"),
    ],
)
def test_a_conflicting_re_proposal_is_nondeterminism(conflict: NodeSpec) -> None:
    plan = registered("a")
    start(plan, "a")
    assert plan.apply(PlanDiff("a", (spec("a.0", "x", "a", n=1),))).ok
    before = snapshot(plan)
    out = plan.apply(PlanDiff("a", (conflict, spec("a.1", "x", "a"))))
    assert out.rejection is not None
    assert out.rejection.kind == "nondeterminism"
    assert "a.0" in out.rejection.reason
    assert snapshot(plan) == before


def test_a_retried_spawn_with_promises_about_the_child_reclaims_it() -> None:
    """A retried task re-proposes its first diff, promises about its children included:
    the child is claimed by the new attempt, nothing new is created."""
    plan = registered("a")
    start(plan, "a")
    diff = PlanDiff("a", (spec("a.0", "x", "a"),), (), (("a.0", NoNewNodes()),))
    assert plan.apply(diff).ok
    plan.set_state("a", S.READY)  # the attempt failed: the retry replays the task
    assert plan.nodes["a.0"].unclaimed
    start(plan, "a")
    again = plan.apply(diff)
    assert again.rejection is None, again.rejection
    assert (again.ready, len(plan.nodes), plan.nodes["a.0"].unclaimed) == ([], 2, False)
    assert plan.promises_of("a.0") == [NoNewNodes()]
    assert plan.apply(diff).duplicate  # and then it is a plain duplicate


def test_a_node_proposed_twice_in_one_diff_is_refused() -> None:
    plan = registered("a")
    start(plan, "a")
    out = plan.apply(PlanDiff("a", (spec("a.0", "x", "a"), spec("a.0", "x", "a"))))
    assert out.rejection is not None
    assert "twice" in out.rejection.reason


# --- readiness and the life cycle ----------------------------------------------------------


def test_a_node_is_ready_when_every_predecessor_succeeded() -> None:
    plan = registered("a", "b", "c", edges=(("a", "c"), ("b", "c")))
    for n in ("a", "b"):
        start(plan, n)
    assert plan.set_state("a", S.SUCCEEDED).ready == []
    plan.set_state("b", S.SUSPENDED)
    plan.set_state("b", S.RUNNING)
    assert plan.set_state("b", S.SUCCEEDED).ready == ["c"]
    assert plan.nodes["b"].attempt == 1  # suspending and resuming is the same attempt


def test_new_children_are_ready_unless_held_back() -> None:
    plan = registered("a")
    start(plan, "a")
    out = spawn(plan, "a", ("a.0", "x"), ("a.1", "y"), ("a.2", "z"),
                edges=(("a.0", "a.1"), ("a", "a.2")))
    assert out.ready == ["a.0"]
    assert plan.nodes["a.1"].creator is plan.nodes["a"]
    assert plan.nodes["a"].children == ["a.0", "a.1", "a.2"]
    assert [n.id for n in plan.descendants(plan.nodes["a"])] == ["a.0", "a.1", "a.2"]
    assert plan.set_state("a", S.SUCCEEDED).ready == ["a.2"]


def test_retry_bumps_the_attempt_and_keeps_the_node_live() -> None:
    plan = registered("a")
    start(plan, "a")
    assert plan.set_state("a", S.READY).ok
    node = plan.nodes["a"]
    assert (node.state, node.attempt, plan.live_count) == (S.READY, 2, 1)
    start(plan, "a")
    plan.set_state("a", S.SUSPENDED)
    plan.set_state("a", S.READY)  # the suspended attempt is lost: resumed as the same one
    assert node.attempt == 2
    start(plan, "a")
    plan.set_state("a", S.FAILED, error="boom")
    assert (node.state, node.error, plan.live_count) == (S.FAILED, "boom", 0)
    assert plan.is_settled()


def test_output_is_recorded_on_success() -> None:
    plan = registered("a")
    start(plan, "a")
    plan.set_state("a", S.SUCCEEDED, output={"x": 1})
    assert plan.nodes["a"].output == {"x": 1}


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ((), S.SUCCEEDED),  # ready -> succeeded skips running
        ((), S.SUSPENDED),
        ((S.RUNNING,), S.PENDING),
        ((S.RUNNING, S.SUCCEEDED), S.RUNNING),  # terminal states are final
        ((S.RUNNING, S.FAILED), S.READY),
        ((S.RUNNING, S.CANCELLED), S.RUNNING),
        ((S.RUNNING, S.SUSPENDED), S.SUCCEEDED),
    ],
)
def test_invalid_transitions_raise(path: tuple[NodeState, ...], bad: NodeState) -> None:
    plan = registered("a")
    for state in path:
        plan.set_state("a", state)
    with pytest.raises(ValueError, match="cannot go from"):
        plan.set_state("a", bad)


def test_cancel_stops_everything_and_reports_started_nodes() -> None:
    plan = registered("a", "b", "c", edges=(("a", "c"),))
    start(plan, "a")
    start(plan, "b")
    plan.set_state("b", S.SUSPENDED)
    assert plan.cancel() == ["a", "b"]
    assert all(n.state is S.CANCELLED for n in plan.nodes.values())
    assert plan.is_settled()
    assert plan.live_count == 0
    assert plan.cancel() == []


# --- Shape placeholders ------------------------------------------------------------------------


def shaped_plan() -> Plan:
    """Seed 001 in miniature: ``a`` promises ``Seq(n, m)``; ``b`` runs after a."""
    return registered("a", "b", edges=(("a", "b"),),
                      promises=(("a", Shape(Seq(Task("n"), Task("m")))),))


def test_a_region_holds_back_the_owners_successors_until_it_closes() -> None:
    plan = shaped_plan()
    start(plan, "a")
    assert spawn(plan, "a", ("a.0", "n")).ok
    assert plan.set_state("a", S.SUCCEEDED).ready == []  # a.0 may still add to the region
    assert plan.nodes["b"].state is S.PENDING
    start(plan, "a.0")
    assert spawn(plan, "a.0", ("a.0.0", "m"), edges=(("a.0", "a.0.0"),)).ok
    assert plan.set_state("a.0", S.SUCCEEDED).ready == ["a.0.0"]
    start(plan, "a.0.0")
    out = plan.set_state("a.0.0", S.SUCCEEDED)
    assert out.ok
    assert out.ready == ["b"]
    assert plan.nodes["a"].region is not None
    assert plan.nodes["a"].region.closed


def test_an_edge_from_a_finished_owner_waits_for_its_open_region() -> None:
    plan = registered("a", "x", promises=(("a", Shape(Task("n"))),))
    start(plan, "a")
    assert spawn(plan, "a", ("a.0", "n")).ok
    plan.set_state("a", S.SUCCEEDED)
    start(plan, "x")
    out = spawn(plan, "x", ("x.0", "y"), edges=(("a", "x.0"),))
    assert out.ok
    assert "x.0" not in out.ready
    start(plan, "a.0")
    assert plan.set_state("a.0", S.SUCCEEDED).ready == ["x.0"]


def test_members_of_the_region_are_not_held_back_by_it() -> None:
    plan = shaped_plan()
    start(plan, "a")
    out = spawn(plan, "a", ("a.0", "n"), ("a.1", "m"), edges=(("a", "a.0"), ("a.0", "a.1")))
    assert out.ok
    assert plan.set_state("a", S.SUCCEEDED).ready == ["a.0"]


def test_closing_an_incomplete_region_is_a_violation() -> None:
    plan = shaped_plan()
    start(plan, "a")
    assert spawn(plan, "a", ("a.0", "n")).ok
    assert plan.set_state("a", S.SUCCEEDED).ok
    start(plan, "a.0")
    out = plan.set_state("a.0", S.SUCCEEDED)  # nobody created m
    assert not out.ok
    assert len(out.violations) == 1
    violation = out.violations[0]
    assert violation.kind == "violation"
    assert violation.promise == str(Shape(Seq(Task("n"), Task("m"))))
    assert violation.owner == "a"
    assert violation.proposer == "a"
    assert plan.violations == [violation]
    assert "broke" in violation.message()
    assert "Shape" in violation.message()


def test_an_empty_region_closes_when_its_owner_finishes() -> None:
    plan = shaped_plan()
    start(plan, "a")
    out = plan.set_state("a", S.SUCCEEDED)
    assert len(out.violations) == 1
    assert out.violations[0].owner == "a"


# --- promises made at run time adopt what exists ----------------------------------------------


def test_a_runtime_promise_adopts_existing_children() -> None:
    plan = registered("a")
    start(plan, "a")
    assert spawn(plan, "a", ("a.0", "x"), ("a.1", "x")).ok
    start(plan, "a.0")
    assert spawn(plan, "a.0", ("a.0.0", "x")).ok
    out = plan.apply(PlanDiff("a", promises=(("a", MaxNodes(2)),)))
    assert out.rejection is not None
    assert out.rejection.kind == "violation"
    assert out.rejection.promise == "MaxNodes(2)"
    assert plan.promises_of("a") == []
    assert plan.apply(PlanDiff("a", promises=(("a", MaxNodes(4)),))).ok
    assert spawn(plan, "a.0", ("a.0.1", "x")).ok
    out = spawn(plan, "a", ("a.2", "x"))
    assert out.rejection is not None
    assert out.rejection.promise == "MaxNodes(4)"


def test_a_runtime_promise_counts_the_children_of_its_own_diff() -> None:
    plan = registered("a")
    start(plan, "a")
    out = spawn(plan, "a", ("a.0", "x"), ("a.1", "x"), promises=(("a", MaxNodes(1)),))
    assert out.rejection is not None
    assert out.rejection.owner == "a"
    assert "a.0" not in plan.nodes


def test_a_runtime_shape_adopts_existing_children_and_opens_a_region() -> None:
    plan = registered("a", "b", edges=(("a", "b"),))
    start(plan, "a")
    assert spawn(plan, "a", ("a.0", "n")).ok
    assert plan.apply(PlanDiff("a", promises=(("a", Shape(Seq(Task("n"), Task("m")))),))).ok
    region = plan.nodes["a"].region
    assert region is not None
    assert region in plan.nodes["a.0"].regions
    out = spawn(plan, "a", ("a.1", "n"))  # a second n does not fit Seq(n, m)
    assert out.rejection is not None
    assert out.rejection.kind == "violation"
    assert spawn(plan, "a", ("a.1", "m"), edges=(("a.0", "a.1"),)).ok
    plan.set_state("a", S.SUCCEEDED)
    for child in ("a.0", "a.1"):
        start(plan, child)
        out = plan.set_state(child, S.SUCCEEDED)
    assert out.ok
    assert out.ready == ["b"]


def test_a_runtime_shape_refuses_children_that_do_not_fit() -> None:
    plan = registered("a")
    start(plan, "a")
    assert spawn(plan, "a", ("a.0", "z")).ok
    out = plan.apply(PlanDiff("a", promises=(("a", Shape(Task("n"))),)))
    assert out.rejection is not None
    assert out.rejection.kind == "violation"
    assert plan.nodes["a"].region is None


# --- the diff's wire form ------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=3),
    max_leaves=8,
)
ids = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=6)


@st.composite
def node_specs(draw: st.DrawFn) -> NodeSpec:
    return NodeSpec(
        draw(ids), draw(ids),
        {"args": draw(st.lists(json_values, max_size=2)),
         "kwargs": draw(st.dictionaries(st.text(max_size=4), json_values, max_size=2))},
        draw(st.dictionaries(st.text(max_size=4), json_values, max_size=2)),
        draw(st.none() | ids), draw(st.none() | ids),
    )


edge_specs = st.builds(EdgeSpec, ids, ids, st.booleans(),
                       st.dictionaries(st.text(max_size=4), json_values, max_size=2))
attr_changes = st.builds(AttrChange, st.text(max_size=5), json_values, st.none() | ids,
                         st.none() | st.tuples(ids, ids))


@st.composite
def plan_diffs(draw: st.DrawFn) -> PlanDiff:
    return PlanDiff(
        draw(st.none() | ids),
        tuple(draw(st.lists(node_specs(), max_size=4))),
        tuple(draw(st.lists(edge_specs, max_size=4))),
        tuple(draw(st.lists(st.tuples(ids, ws.promises()), max_size=3))),
        tuple(draw(st.lists(attr_changes, max_size=2))),
    )


@settings(max_examples=ws.examples(200))
@given(plan_diffs())
def test_plan_diff_round_trips_through_its_dict_and_the_wire(diff: PlanDiff) -> None:
    assert PlanDiff.from_dict(diff.to_dict()) == diff
    assert PlanDiff.from_dict(unpack(pack(diff.to_dict()))) == diff
    assert PlanDiff.from_dict(json.loads(json.dumps(diff.to_dict()))) == diff


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "diff",
        {"nodes": 5},
        {"nodes": ["a"]},
        {"nodes": [{"task": "t"}]},
        {"nodes": [{"id": "a"}]},
        {"nodes": [{"id": "a", "task": "t", "inputs": 3}]},
        {"edges": [{"src": "a"}]},
        {"edges": [{"src": "a", "dst": "b", "attrs": [1]}]},
        {"promises": [["a"]]},
        {"promises": [["a", {"kind": "NoSuchPromise"}]]},
        {"promises": [["a", {"kind": "MaxNodes"}]]},
        {"promises": [["a", {"kind": "MaxNodes", "n": -1}]]},
        {"promises": [["a", "NoNewNodes"]]},
        {"attrs": [{"value": 1}]},
        {"attrs": [{"key": "k", "edge": ["a"]}]},
    ],
)
def test_plan_diff_from_malformed_dict_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"."):
        PlanDiff.from_dict(bad)


@settings(max_examples=ws.examples(300))
@given(st.dictionaries(st.sampled_from(["proposer", "nodes", "edges", "promises", "attrs"]),
                       json_values, max_size=5))
def test_plan_diff_from_any_data_raises_only_value_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(ValueError):
        PlanDiff.from_dict(data)


def test_rejection_round_trips_and_explains_itself() -> None:
    plan = registered("a", promises=(("a", NoNewNodes()),))
    start(plan, "a")
    out = spawn(plan, "a", ("a.0", "x"))
    rejection = out.rejection
    assert rejection is not None
    assert Rejection.from_dict(json.loads(json.dumps(rejection.to_dict()))) == rejection
    assert rejection.message() == f"a broke NoNewNodes() (promised by a): {rejection.reason}"
    assert rejection.diff["proposer"] == "a"
    assert rejection.diff["nodes"] == ["a.0 (x)"]
    plain = Rejection("plan", "edge a -> b would close a cycle", "a")
    assert plain.message() == "a: edge a -> b would close a cycle"


def _deep_line(depth: int, promise: Any = None) -> tuple[Plan, list[str]]:
    """A root, a child of it that was retried (so the plan has history), and a line
    of ``depth`` nodes each created by the one before, all running."""
    plan = Plan("w")
    promises = (("r", promise),) if promise is not None else ()
    assert plan.apply(PlanDiff(None, (NodeSpec("r", "t"),), (), promises)).ok
    plan.set_state("r", NodeState.RUNNING)
    assert plan.apply(PlanDiff("r", (NodeSpec("r.1", "t", creator="r"),))).ok
    plan.set_state("r.1", NodeState.RUNNING)
    assert plan.apply(PlanDiff("r.1", (NodeSpec("r.1.1", "t", creator="r.1"),))).ok
    plan.set_state("r.1", NodeState.READY)  # retried: its child is history now
    plan.set_state("r.1", NodeState.RUNNING)
    assert plan.has_history
    line, creator = [], "r.1"
    for i in range(depth):
        nid = f"d{i}"
        assert plan.apply(PlanDiff(creator, (NodeSpec(nid, "t", creator=creator),))).ok
        plan.set_state(nid, NodeState.RUNNING)
        line.append(nid)
        creator = nid
    return plan, line


class _Unreachable:
    """A creator the walk up a line must not reach."""

    @property
    def id(self) -> str:
        raise AssertionError("walked above the last owner that matters")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError("walked above the last owner that matters")


def test_a_diff_deep_in_a_line_walks_no_further_than_the_owners_of_counting_promises(
        ) -> None:
    """Once a plan has history, a line judged by an earlier attempt's counting
    promises is found by walking up the proposer's creators: only as far as the
    owners of such promises, and not at all without any."""
    plan, line = _deep_line(50)
    plan.nodes["r.1"].creator = _Unreachable()  # type: ignore[assignment]
    assert plan.apply(PlanDiff(line[-1], (NodeSpec("x", "t", creator=line[-1]),))).ok
    counted, line = _deep_line(50)
    assert counted.apply(PlanDiff(line[9], promises=((line[9], MaxNodes(100)),))).ok
    counted.nodes[line[8]].creator = _Unreachable()  # type: ignore[assignment]
    assert counted.apply(PlanDiff(line[-1], (NodeSpec("x", "t", creator=line[-1]),))).ok
