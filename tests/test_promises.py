"""Unit tests of each promise: what it allows, what it refuses and how the refusal reads,
its scope (the owner and everything it creates, transitively), its wire form, and what
it tells the view about a live node's future (``Plan.bound``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import workflow_strategy as ws
from hypothesis import given, settings

from plait.errors import ShapeError
from plait.protocol.codec import pack, unpack
from plait.protocol.diff import AttrChange, EdgeSpec, NodeSpec, NodeState, PlanDiff
from plait.protocol.plan import Outcome, Plan
from plait.protocol.promises import (
    MaxNodes,
    MaxParallel,
    NoEdgesFrom,
    NoEdgesTo,
    NoNewEdges,
    NoNewNodes,
    OnlyEdges,
    OnlyNodes,
    Promise,
    Shape,
    promise_from_dict,
)
from plait.protocol.shape import OneOf, Repeat, Seq
from plait.protocol.view import view

S = NodeState


# --- helpers -------------------------------------------------------------------------------


def root(*promises: Promise, task: str = "root") -> Plan:
    """A plan whose running root ``r`` made ``promises`` at registration."""
    plan = Plan("wf")
    outcome = plan.apply(PlanDiff(None, (NodeSpec("r", task),), (),
                                  tuple(("r", p) for p in promises)))
    assert outcome.ok, outcome.rejection
    plan.set_state("r", S.RUNNING)
    return plan


def propose(plan: Plan, proposer: str, *children: tuple[str, str],
            edges: tuple[tuple[str, str], ...] = (),
            promises: tuple[tuple[str, Promise], ...] = ()) -> Outcome:
    diff = PlanDiff(proposer, tuple(NodeSpec(i, t, {}, {}, proposer) for i, t in children),
                    tuple(EdgeSpec(s, d) for s, d in edges), promises)
    return plan.apply(diff)


def child(plan: Plan, creator: str, node_id: str, task: str) -> None:
    """``creator`` spawns ``node_id`` (accepted), which then starts running."""
    out = propose(plan, creator, (node_id, task))
    assert out.ok, out.rejection
    plan.set_state(node_id, S.RUNNING)


def broken(out: Outcome, promise: Promise, owner: str, proposer: str) -> str:
    """Asserts ``out`` is a violation of ``promise`` made by ``owner``, proposed by
    ``proposer``; returns the reason."""
    rejection = out.rejection
    assert rejection is not None, "the diff was accepted"
    assert rejection.kind == "violation"
    assert (rejection.promise, rejection.owner, rejection.proposer) == (
        str(promise), owner, proposer)
    assert rejection.diff["proposer"] == proposer
    assert rejection.message().startswith(f"{proposer} broke {promise} (promised by {owner})")
    return rejection.reason


def task_a() -> None:
    """A task function: promises accept it in place of its name."""


def task_b() -> None:
    """Another task function."""


# --- the structural promises ---------------------------------------------------------------


def test_no_new_nodes() -> None:
    plan = root(NoNewNodes())
    assert plan.apply(PlanDiff("r", attrs=())).ok  # proposing nothing is fine
    out = propose(plan, "r", ("r.0", "x"))
    reason = broken(out, NoNewNodes(), "r", "r")
    assert "r.0 (x)" in reason
    assert out.rejection is not None
    assert out.rejection.diff["nodes"] == ["r.0 (x)"]
    assert "r.0" not in plan.nodes
    assert plan.violations == [out.rejection]


def test_no_new_edges_allows_nodes_but_no_edge_of_any_kind() -> None:
    plan = root(NoNewEdges())
    assert propose(plan, "r", ("r.0", "x"), ("r.1", "y")).ok
    out = propose(plan, "r", ("r.2", "x"), edges=(("r.0", "r.2"),))
    reason = broken(out, NoNewEdges(), "r", "r")
    assert "r.0 -> r.2" in reason
    data = PlanDiff("r", (NodeSpec("r.2", "x", {"args": [{"$ref": "r.0"}]}, {}, "r"),),
                    (EdgeSpec("r.0", "r.2", data=True),))
    broken(plan.apply(data), NoNewEdges(), "r", "r")
    broken(propose(plan, "r", edges=(("r.0", "r.1"),)), NoNewEdges(), "r", "r")


def test_only_nodes() -> None:
    plan = root(OnlyNodes("a", "b"))
    assert propose(plan, "r", ("r.0", "a"), ("r.1", "b")).ok
    out = propose(plan, "r", ("r.2", "a"), ("r.3", "c"))
    assert "r.3 (c)" in broken(out, OnlyNodes("a", "b"), "r", "r")
    assert "r.2" not in plan.nodes  # rejected whole


def test_only_edges_by_task_and_by_node_id() -> None:
    promise = OnlyEdges(("a", "b"), ("r", "c"))
    plan = root(promise)
    assert propose(plan, "r", ("r.0", "a"), ("r.1", "b"), edges=(("r.0", "r.1"),)).ok
    assert propose(plan, "r", ("r.2", "c"), edges=(("r", "r.2"),)).ok  # r by its id
    out = propose(plan, "r", ("r.3", "b"), edges=(("r", "r.3"),))
    assert "r -> r.3 (root -> b)" in broken(out, promise, "r", "r")
    out = propose(plan, "r", ("r.3", "a"), edges=(("r.1", "r.3"),))
    broken(out, promise, "r", "r")


@pytest.mark.parametrize("end", ["x", "r.0"])  # a task, or a node id
def test_no_edges_from(end: str) -> None:
    promise = NoEdgesFrom(end)
    plan = root(promise)
    assert propose(plan, "r", ("r.0", "x"), ("r.1", "y"), edges=(("r.1", "r.0"),)).ok
    out = propose(plan, "r", ("r.2", "y"), edges=(("r.0", "r.2"),))
    assert "r.0 -> r.2" in broken(out, promise, "r", "r")


@pytest.mark.parametrize("end", ["x", "r.0"])
def test_no_edges_to(end: str) -> None:
    promise = NoEdgesTo(end)
    plan = root(promise)
    assert propose(plan, "r", ("r.0", "x"), ("r.1", "y"), edges=(("r.0", "r.1"),)).ok
    out = propose(plan, "r", ("r.2", "y"), edges=(("r.2", "r.0"),))
    assert "r.2 -> r.0" in broken(out, promise, "r", "r")


# --- counting and scheduling ------------------------------------------------------------------


def test_max_nodes_counts_across_diffs_and_descendants() -> None:
    plan = root(MaxNodes(3))
    child(plan, "r", "r.0", "x")
    assert propose(plan, "r.0", ("r.0.0", "y")).ok  # the grandchild counts too
    assert propose(plan, "r", ("r.1", "x")).ok
    out = propose(plan, "r.0", ("r.0.1", "y"))
    assert "4" in broken(out, MaxNodes(3), "r", "r.0")


def test_a_diff_over_the_count_is_rejected_whole() -> None:
    plan = root(MaxNodes(2))
    broken(propose(plan, "r", ("r.0", "x"), ("r.1", "x"), ("r.2", "x")), MaxNodes(2), "r", "r")
    assert propose(plan, "r", ("r.0", "x"), ("r.1", "x")).ok  # nothing was counted


def test_max_nodes_of_a_task_counts_only_that_task() -> None:
    promise = MaxNodes(1, "a")
    plan = root(promise)
    assert propose(plan, "r", ("r.0", "a"), ("r.1", "b"), ("r.2", "b")).ok
    broken(propose(plan, "r", ("r.3", "a")), promise, "r", "r")
    assert propose(plan, "r", ("r.3", "b")).ok


def test_a_spent_task_budget_leaves_other_tasks_open() -> None:
    """MaxNodes(1, "a") spent rules out more ``a`` nodes only: the wildcard stays open."""
    plan = root(MaxNodes(1, "a"))
    assert propose(plan, "r", ("r.0", "a")).ok
    assert not plan.bound(plan.nodes["r"]).closed
    wildcards = [n for n in view(plan, unfold=True).to_json()["nodes"]
                 if n["provisional"] and n["parent"] == "r"]
    assert len(wildcards) == 1
    assert propose(plan, "r", ("r.1", "b")).ok


def test_max_nodes_zero_forbids_every_creation() -> None:
    plan = root(MaxNodes(0))
    broken(propose(plan, "r", ("r.0", "x")), MaxNodes(0), "r", "r")


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_max_nodes_needs_a_non_negative_integer(bad: Any) -> None:
    with pytest.raises(ValueError, match="MaxNodes"):
        MaxNodes(bad)


def test_atomicity_across_promises() -> None:
    """The inner MaxNodes accepts, the outer OnlyNodes refuses: the count is not spent."""
    plan = root(OnlyNodes("a"))
    child(plan, "r", "r.0", "a")
    assert propose(plan, "r.0", promises=(("r.0", MaxNodes(2)),)).ok
    out = propose(plan, "r.0", ("r.0.0", "a"), ("r.0.1", "z"))
    broken(out, OnlyNodes("a"), "r", "r.0")
    assert propose(plan, "r.0", ("r.0.0", "a"), ("r.0.1", "a")).ok


def test_max_parallel_is_recorded_for_the_dispatcher_not_enforced_by_the_plan() -> None:
    plan = root(MaxParallel(2), MaxParallel(1, "io"))
    assert plan.limits("r") == []  # it binds what r creates, not r itself
    out = plan.apply(PlanDiff("r", (
        NodeSpec("r.0", "x", {}, {}, "r"),
        NodeSpec("r.1", "x", {}, {"labels": ["io"]}, "r"),
        NodeSpec("r.2", "x", {}, {"labels": ["gpu", "io"]}, "r"),
    )))
    assert out.ok
    assert plan.limits("r.0") == [("wf:r:MaxParallel(2)", 2)]
    expected = [("wf:r:MaxParallel(2)", 2), ("wf:r:MaxParallel(1, io)", 1)]
    assert plan.limits("r.1") == expected
    assert plan.limits("r.2") == expected
    for node_id in ("r.0", "r.1", "r.2"):  # more than either limit run at once
        plan.set_state(node_id, S.RUNNING)
    assert plan.violations == []
    assert propose(plan, "r.1", ("r.1.0", "x")).ok
    assert plan.limits("r.1.0") == [("wf:r:MaxParallel(2)", 2)]  # transitively


def test_a_new_promise_for_a_node_that_has_ended_is_refused() -> None:
    """Its region opened empty and never closed: the promise was never judged, its
    placeholder was drawn for ever, and a node after it waited for ever."""
    plan = root()
    child(plan, "r", "r.0", "c")
    child(plan, "r.0", "r.0.0", "d")
    plan.set_state("r.0", S.SUCCEEDED)
    out = propose(plan, "r", promises=(("r.0", NoNewNodes()),))
    assert out.rejection is not None
    assert "r.0 has ended: a new promise for it (NoNewNodes()) could never be kept" \
        in out.rejection.reason
    assert propose(plan, "r.0.0", ("r.0.0.0", "e")).ok  # nothing was promised


def test_an_edge_from_after_a_region_into_it_would_close_a_cycle() -> None:
    """B runs after O, so after O's Shape region closes; an edge B -> O.0 made the
    region wait for B: the three waited for each other for ever."""
    plan = root()
    assert propose(plan, "r", ("o", "o"), ("b", "b"), edges=(("o", "b"),)).ok
    assert propose(plan, "r", promises=(("o", Shape(Repeat("a"))),)).ok
    plan.set_state("o", S.RUNNING)
    out = propose(plan, "o", ("o.0", "a"), edges=(("b", "o.0"),))
    assert out.rejection is not None
    assert "edge b -> o.0 would close a cycle" in out.rejection.reason
    assert propose(plan, "o", ("o.0", "a")).ok  # without it: fine


def _retried_with_a_child() -> Plan:
    """r's first attempt created r.0 (c), which created r.0.0 (x); r is retried."""
    plan = root()
    child(plan, "r", "r.0", "c")
    child(plan, "r.0", "r.0.0", "x")
    plan.set_state("r", S.READY)
    plan.set_state("r", S.RUNNING)
    return plan


def test_a_promise_made_in_a_retry_counts_its_scope_by_branches() -> None:
    """An earlier attempt's child is history with all it created (its own child was
    counted), and a child taken back in the very diff of the promise is in scope
    (it was not counted: MaxNodes(1) broken silently, Seq(c, d) refused)."""
    history = _retried_with_a_child()
    assert propose(history, "r", ("r.1", "d"), promises=(("r", MaxNodes(1)),)).ok
    assert propose(_retried_with_a_child(), "r", ("r.1", "d"),
                   promises=(("r", Shape(Repeat("d"))),)).ok
    taken = _retried_with_a_child()
    out = propose(taken, "r", ("r.0", "c"), ("r.1", "d"), promises=(("r", MaxNodes(1)),))
    broken(out, MaxNodes(1), "r", "r")
    again = root()
    child(again, "r", "r.0", "c")
    again.set_state("r", S.READY)
    again.set_state("r", S.RUNNING)
    assert propose(again, "r", ("r.0", "c"), ("r.1", "d"), edges=(("r.0", "r.1"),),
                   promises=(("r", Shape(Seq("c", "d"))),)).ok


def test_a_retry_taking_back_a_later_part_is_matched_in_the_diffs_order() -> None:
    """Seq(a, b): the retry made a anew and took b back in one diff; b was matched
    first, before the new a, and the honest retry was refused."""
    plan = root(Shape(Seq("a", "b")))
    first = (NodeSpec("r.0", "a", {"v": 1}, {}, "r"), NodeSpec("r.1", "b", {}, {}, "r"))
    assert plan.apply(PlanDiff("r", first, (EdgeSpec("r.0", "r.1"),))).ok
    plan.set_state("r", S.READY)
    plan.set_state("r", S.RUNNING)
    again = (NodeSpec("r.0@2", "a", {"v": 2}, {}, "r"), NodeSpec("r.1", "b", {}, {}, "r"))
    out = plan.apply(PlanDiff("r", again, (EdgeSpec("r.0@2", "r.1"),)))
    assert out.ok, out.rejection


def test_a_promise_made_after_a_retry_took_a_node_back_matches_it_in_run_order() -> None:
    """b, taken back behind the retry's new A, kept its first rank: it was matched
    before A, and Seq(A, B) terminated an honest workflow."""
    plan = root()
    assert propose(plan, "r", ("r.0", "A"), ("r/b", "B"), edges=(("r.0", "r/b"),)).ok
    plan.set_state("r", S.READY)
    plan.set_state("r", S.RUNNING)
    assert propose(plan, "r", ("r.0@2", "A")).ok
    assert propose(plan, "r", ("r/b", "B"), edges=(("r.0@2", "r/b"),)).ok
    out = propose(plan, "r", promises=(("r", Shape(Seq("A", "B"))),))
    assert out.ok, out.rejection


def test_a_stored_diff_is_folded_as_it_was_applied() -> None:
    """Checks added since refuse what a proposer sends now, not the events of a
    workflow that ran before them: it must still rebuild after an upgrade."""
    plan = root(MaxNodes(1))
    child(plan, "r", "r.0", "c")
    plan.set_state("r.0", S.SUCCEEDED)
    odd = PlanDiff("r", (NodeSpec("r.1", "x", {}, {"labels": "gpu"}, "r"),),
                   promises=(("r.0", NoNewNodes()),))
    assert plan.apply(odd).rejection is not None  # from a proposer: refused
    out = plan.apply(odd, stored=True)  # recorded as applied (and over MaxNodes(1) now)
    assert out.rejection is None
    assert "r.1" in plan.nodes
    stored = promise_from_dict({"kind": "MaxParallel", "n": 1, "label": 3})
    assert isinstance(stored, MaxParallel)
    assert stored.label == "3"


def test_a_restart_may_give_a_node_it_takes_back_a_new_promise() -> None:
    """The usual fix: new code promises more for a child, and the operator restarts
    its creator, which proposes the child again with the promise."""
    plan = root()
    child(plan, "r", "r.0", "c")
    plan.set_state("r.0", S.SUCCEEDED)
    plan.set_state("r", S.FAILED)
    assert plan.restart("r", operator=True).rejection is None
    plan.set_state("r", S.RUNNING)
    out = propose(plan, "r", ("r.0", "c"), promises=(("r.0", MaxNodes(3)),))
    assert out.ok, out.rejection


def test_labels_are_a_list_of_strings() -> None:
    """An int failed the node's queueing (it was never sent to a worker, and after
    a restart the keeper died at start); a string matched its substrings."""
    plan = root(MaxParallel(1, "gpu"))
    for labels in (5, "xgpux", ["gpu", 3]):
        out = plan.apply(PlanDiff("r", (NodeSpec("r.0", "x", {}, {"labels": labels}, "r"),)))
        assert out.rejection is not None
        assert "labels must be a list of strings" in out.rejection.reason
    assert plan.apply(PlanDiff("r", (NodeSpec("r.0", "x", {}, {"labels": ["gpu"]}, "r"),))).ok
    out = plan.apply(PlanDiff(None, attrs=(AttrChange("labels", 5, node="r.0"),)))
    assert out.rejection is not None
    with pytest.raises(ValueError, match="label is a string"):
        MaxParallel(1, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -3, False])
def test_max_parallel_needs_a_positive_integer(bad: Any) -> None:
    with pytest.raises(ValueError, match="MaxParallel"):
        MaxParallel(bad)


# --- scope: the owner and everything it creates, transitively ----------------------------------


def test_a_grandchild_is_bound_by_its_grandparents_promise() -> None:
    plan = root(OnlyNodes("a", "b"))
    child(plan, "r", "r.0", "a")
    child(plan, "r.0", "r.0.0", "b")
    assert propose(plan, "r.0.0", ("r.0.0.0", "a")).ok
    out = propose(plan, "r.0.0", ("r.0.0.1", "z"))
    broken(out, OnlyNodes("a", "b"), "r", "r.0.0")


def test_the_scope_survives_finished_ancestors() -> None:
    plan = root(NoNewEdges())
    child(plan, "r", "r.0", "x")
    child(plan, "r.0", "r.0.0", "x")
    plan.set_state("r.0", S.SUCCEEDED)
    plan.set_state("r", S.SUCCEEDED)
    out = propose(plan, "r.0.0", ("r.0.0.0", "y"), edges=(("r.0.0", "r.0.0.0"),))
    broken(out, NoNewEdges(), "r", "r.0.0")


def test_a_promise_does_not_bind_its_owners_siblings_or_ancestors() -> None:
    plan = Plan("wf")
    assert plan.apply(PlanDiff(None, (NodeSpec("p", "x"), NodeSpec("q", "x")), (),
                               (("p", NoNewNodes()),))).ok
    plan.set_state("q", S.RUNNING)
    assert propose(plan, "q", ("q.0", "x")).ok
    plan.set_state("q.0", S.RUNNING)
    assert propose(plan, "q", promises=(("q", OnlyNodes("a")),)).ok  # binds q from now on
    assert propose(plan, "q.0", ("q.0.0", "a")).ok
    broken(propose(plan, "q.0", ("q.0.1", "b")), OnlyNodes("a"), "q", "q.0")


def test_promises_made_about_a_new_child_bind_it_from_birth() -> None:
    plan = root()
    out = propose(plan, "r", ("r.0", "x"), promises=(("r.0", NoNewNodes()),))
    assert out.ok
    plan.set_state("r.0", S.RUNNING)
    broken(propose(plan, "r.0", ("r.0.0", "y")), NoNewNodes(), "r.0", "r.0")


def test_promises_are_only_ever_added() -> None:
    plan = root(OnlyNodes("a"))
    out = propose(plan, "r", promises=(("r", OnlyNodes("a", "b")),))
    assert out.ok  # a wider promise adds nothing: both hold
    broken(propose(plan, "r", ("r.0", "b")), OnlyNodes("a"), "r", "r")
    assert plan.promises_of("r") == [OnlyNodes("a"), OnlyNodes("a", "b")]


# --- task functions as task references -----------------------------------------------------


def test_promises_accept_task_functions() -> None:
    assert OnlyNodes(task_a, "b") == OnlyNodes("task_a", "b")
    assert OnlyEdges((task_a, task_b)) == OnlyEdges(("task_a", "task_b"))
    assert NoEdgesFrom(task_a) == NoEdgesFrom("task_a")
    assert NoEdgesTo(task_b) == NoEdgesTo("task_b")
    assert MaxNodes(2, task_a) == MaxNodes(2, "task_a")
    assert Shape(Seq(task_a, task_b)) == Shape(Seq("task_a", "task_b"))
    assert Shape(task_a) == Shape("task_a")
    plan = root(OnlyNodes(task_a))
    assert propose(plan, "r", ("r.0", "task_a")).ok
    broken(propose(plan, "r", ("r.1", "task_b")), OnlyNodes("task_a"), "r", "r")


def test_a_task_reference_must_be_a_name_or_a_function() -> None:
    with pytest.raises(TypeError):
        OnlyNodes(42)
    with pytest.raises(ValueError, match="empty"):
        NoEdgesTo("")


# --- Shape --------------------------------------------------------------------------------------

SEED_001 = Shape(OneOf(Seq("N", "M"), Seq("J", "K")))


def seed_001() -> Plan:
    """Seed 001: A -> X -> B, X being (N -> M) or (J -> K), created by A."""
    plan = Plan("wf")
    assert plan.apply(PlanDiff(None, (NodeSpec("A", "a"), NodeSpec("B", "b")),
                               (EdgeSpec("A", "B"),), (("A", SEED_001),))).ok
    plan.set_state("A", S.RUNNING)
    return plan


def finish(plan: Plan, *node_ids: str) -> Outcome:
    out = Outcome()
    for node_id in node_ids:
        if plan.nodes[node_id].state is S.READY:
            plan.set_state(node_id, S.RUNNING)
        out = plan.set_state(node_id, S.SUCCEEDED)
        assert not out.violations, out.violations
    return out


@pytest.mark.parametrize(("first", "second"), [("N", "M"), ("J", "K")])
def test_seed_001_either_branch(first: str, second: str) -> None:
    plan = seed_001()
    assert propose(plan, "A", ("A.0", first)).ok
    plan.set_state("A.0", S.RUNNING)
    # The second node is created by the first, ordered after it.
    assert propose(plan, "A.0", ("A.0.0", second), edges=(("A.0", "A.0.0"),)).ok
    assert finish(plan, "A", "A.0").ready == ["A.0.0"]
    assert plan.nodes["B"].state is S.PENDING  # B waits for the whole of X
    assert finish(plan, "A.0.0").ready == ["B"]
    assert plan.violations == []


@pytest.mark.parametrize(
    ("nodes", "edges"),
    [
        ((("A.0", "N"), ("A.1", "K")), (("A.0", "A.1"),)),  # mixes the alternatives
        ((("A.0", "M"),), ()),  # starts in the middle
        ((("A.0", "N"), ("A.1", "M")), ()),  # M not ordered after N
        ((("A.0", "N"), ("A.1", "M"), ("A.2", "J")), (("A.0", "A.1"),)),  # both alternatives
        ((("A.0", "Q"),), ()),  # a task the shape does not name
    ],
)
def test_seed_001_refuses_what_is_not_x(nodes: tuple[tuple[str, str], ...],
                                        edges: tuple[tuple[str, str], ...]) -> None:
    plan = seed_001()
    broken(propose(plan, "A", *nodes, edges=edges), SEED_001, "A", "A")


def test_seed_001_region_closing_after_half_of_x_is_a_violation() -> None:
    plan = seed_001()
    assert propose(plan, "A", ("A.0", "J")).ok
    plan.set_state("A", S.SUCCEEDED)
    plan.set_state("A.0", S.RUNNING)
    out = plan.set_state("A.0", S.SUCCEEDED)
    assert len(out.violations) == 1
    violation = out.violations[0]
    assert (violation.kind, violation.promise, violation.owner) == ("violation", str(SEED_001),
                                                                     "A")
    assert "K" in violation.reason


def test_a_shape_binds_the_owners_descendants() -> None:
    promise = Shape(Seq("N", Repeat("M", 0, 2)))
    plan = root(promise)
    child(plan, "r", "r.0", "N")
    assert propose(plan, "r.0", ("r.0.0", "M"), edges=(("r.0", "r.0.0"),)).ok
    assert plan.set_state("r.0", S.SUCCEEDED).ready == ["r.0.0"]
    plan.set_state("r.0.0", S.RUNNING)
    out = propose(plan, "r.0.0", ("r.0.0.0", "M"), edges=(("r.0", "r.0.0.0"),))
    assert out.ok  # a second copy, created by a grandchild
    out = propose(plan, "r.0.0", ("r.0.0.1", "M"), edges=(("r.0", "r.0.0.1"),))
    assert "at most 2" in broken(out, promise, "r", "r.0.0")


def test_an_ambiguous_shape_is_refused_when_it_is_promised() -> None:
    with pytest.raises(ShapeError, match="both start with"):
        Shape(OneOf(Seq("a", "b"), Seq("a", "c")))
    with pytest.raises(ShapeError):
        promise_from_dict({"kind": "Shape",
                           "expr": {"oneof": [{"task": "a"}, {"task": "a"}]}})


def test_shape_bounds_the_view_through_its_placeholder() -> None:
    plan = root(Shape(Seq("N", "M")))
    assert plan.bound(plan.nodes["r"]).shaped
    child(plan, "r", "r.0", "N")
    assert plan.bound(plan.nodes["r.0"]).shaped  # the region's nodes too


# --- what promises tell the view: Plan.bound ------------------------------------------------------


def test_bound_combines_every_promise_in_force() -> None:
    plan = root(OnlyNodes("a", "b", "c"), MaxNodes(5))
    child(plan, "r", "r.0", "a")
    assert propose(plan, "r.0", promises=(("r.0", OnlyNodes("b", "c", "d")),
                                          ("r.0", MaxNodes(2)))).ok
    bound = plan.bound(plan.nodes["r.0"])
    # Live owners may be retried, and a retry counts afresh: no count bound yet.
    assert (bound.closed, bound.tasks, bound.count) == (False, frozenset({"b", "c"}), None)
    assert propose(plan, "r.0", ("r.0.0", "b"), ("r.0.1", "c")).ok
    plan.set_state("r.0", S.SUCCEEDED)
    assert plan.bound(plan.nodes["r.0.0"]).closed  # r.0's budget is spent, and final
    plan.set_state("r", S.SUCCEEDED)
    assert plan.bound(plan.nodes["r.0.0"]).closed


def test_bound_of_an_unbound_node_is_open_and_of_a_closed_one_closed() -> None:
    plan = root()
    bound = plan.bound(plan.nodes["r"])
    assert (bound.closed, bound.tasks, bound.count, bound.shaped) == (False, None, None, False)
    assert root(NoNewNodes()).bound(root(NoNewNodes()).nodes["r"]).closed
    assert root(OnlyNodes("a"), OnlyNodes("b")).bound(
        root(OnlyNodes("a"), OnlyNodes("b")).nodes["r"]).closed  # no task is left


# --- the wire form ---------------------------------------------------------------------------


@settings(max_examples=ws.examples(300))
@given(ws.promises())
def test_every_promise_round_trips_through_its_dict(promise: Promise) -> None:
    data = promise.to_dict()
    assert data["kind"] == type(promise).__name__
    assert promise_from_dict(data) == promise
    assert promise_from_dict(json.loads(json.dumps(data))) == promise
    assert promise_from_dict(unpack(pack(data))) == promise
    assert str(promise_from_dict(data)) == str(promise)
    assert str(promise).startswith(type(promise).__name__ + "(")


@pytest.mark.parametrize(
    "bad",
    [None, "NoNewNodes", [], {}, {"kind": 3}, {"kind": "Nope"}, {"kind": "MaxNodes", "n": "many"},
     {"kind": "Shape", "expr": {"seq": []}}, {"kind": "OnlyEdges", "pairs": [["a"]]}],
)
def test_promise_from_malformed_dict_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"."):
        promise_from_dict(bad)
