"""The as-of-now view: committed elements, placeholders, wildcards, folding, JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pytest

from plait.protocol.diff import AttrChange, EdgeSpec, NodeSpec, NodeState, PlanDiff, child_id
from plait.protocol.plan import Plan
from plait.protocol.promises import (
    MaxNodes,
    NoEdgesTo,
    NoNewEdges,
    NoNewNodes,
    OnlyNodes,
    Promise,
    Shape,
)
from plait.protocol.render import to_dot
from plait.protocol.shape import Any, Loop, OneOf, Repeat, Seq
from plait.protocol.view import PROVISIONAL, View, ViewNode, view


def registered(nodes: Sequence[str], edges: Sequence[tuple[str, str]] = (),
               promises: Sequence[tuple[str, Promise]] = ()) -> Plan:
    plan = Plan("wf")
    out = plan.apply(PlanDiff(nodes=tuple(NodeSpec(n, n) for n in nodes),
                              edges=tuple(EdgeSpec(s, d) for s, d in edges),
                              promises=tuple(promises)))
    assert out.rejection is None, out.rejection
    return plan


def spawn(plan: Plan, creator: str, task: str, seq: int, after: Sequence[str] = (),
          data: bool = False) -> str:
    node_id = child_id(creator, seq)
    out = plan.apply(PlanDiff(proposer=creator,
                              nodes=(NodeSpec(node_id, task, creator=creator),),
                              edges=tuple(EdgeSpec(a, node_id, data=data) for a in after)))
    assert out.rejection is None, out.rejection
    return node_id


def run(plan: Plan, *ids: str) -> None:
    for node_id in ids:
        plan.set_state(node_id, NodeState.RUNNING)


def finish(plan: Plan, *ids: str) -> None:
    for node_id in ids:
        plan.set_state(node_id, NodeState.SUCCEEDED)


def wildcards(v: View) -> dict[str, ViewNode]:
    return {n.parent or "": n for n in v.nodes if n.kind == "wildcard"}


def placeholders(v: View) -> list[ViewNode]:
    """This attempt's placeholders (not what a retry of a live owner may build)."""
    return [n for n in v.nodes if n.kind == "placeholder" and not n.attrs.get("retry")]


def edge_set(v: View, provisional: bool | None = None) -> set[tuple[str, str, str]]:
    return {(e.src, e.dst, e.kind) for e in v.edges
            if provisional is None or e.provisional is provisional}


# --- wildcards -----------------------------------------------------------------------


def test_an_unbounded_live_node_has_a_wildcard_successor() -> None:
    plan = registered(["A"])
    v = view(plan)
    wild = wildcards(v)["A"]
    assert (wild.id, wild.task, wild.state, wild.provisional) == ("?:A", None, PROVISIONAL, True)
    assert (wild.tasks, wild.bounds) == (None, (0, None))
    assert ("A", "?:A", "edge") in edge_set(v, provisional=True)


def test_a_finished_node_has_no_wildcard() -> None:
    plan = registered(["A"])
    run(plan, "A")
    finish(plan, "A")
    assert wildcards(view(plan)) == {}


def test_no_new_nodes_means_no_wildcard_but_no_new_edges_alone_does_not() -> None:
    plan = registered(["A", "B"], promises=[("A", NoNewNodes()), ("B", NoNewEdges())])
    assert set(wildcards(view(plan))) == {"B"}


def test_only_nodes_labels_the_wildcard_and_binds_descendants() -> None:
    plan = registered(["A"], promises=[("A", OnlyNodes("parse", "fetch"))])
    run(plan, "A")
    child = spawn(plan, "A", "fetch", 0)
    found = wildcards(view(plan))
    assert found["A"].tasks == ["fetch", "parse"]
    assert found[child].tasks == ["fetch", "parse"]


def test_max_nodes_counts_the_wildcard_once_its_owner_cannot_be_retried() -> None:
    plan = registered(["A"], promises=[("A", MaxNodes(3))])
    assert wildcards(view(plan))["A"].bounds == (0, None)  # a retry would count afresh
    run(plan, "A")
    child = spawn(plan, "A", "x", 0)
    assert wildcards(view(plan))[child].bounds == (0, None)
    finish(plan, "A")
    assert wildcards(view(plan))[child].bounds == (0, 2)  # A's budget is final now
    run(plan, child)
    spawn(plan, child, "x", 0)
    spawn(plan, child, "x", 1)
    assert wildcards(view(plan)) == {}


def test_a_live_shape_owner_shows_what_a_retry_may_build() -> None:
    plan = registered(["A"], promises=[("A", Shape(OneOf(Seq("N", "M"), Seq("J", "K"))))])
    run(plan, "A")
    spawn(plan, "A", "N", 0)
    retry = [n for n in view(plan).nodes if n.attrs.get("retry")]
    assert sorted(n.task or "" for n in retry) == ["J", "K", "M", "N"]
    assert all(n.bounds == (0, None) for n in retry)
    assert "if retried" in to_dot(view(plan))
    finish(plan, "A")
    assert not [n for n in view(plan).nodes if n.attrs.get("retry")]


def test_other_promises_leave_the_wildcard_unbounded() -> None:
    plan = registered(["A"], promises=[("A", NoEdgesTo("A"))])
    assert wildcards(view(plan))["A"].bounds == (0, None)


# --- placeholders ----------------------------------------------------------------------


def test_a_shape_becomes_a_placeholder_between_owner_and_successors() -> None:
    plan = registered(["A", "B"], [("A", "B")],
                      [("A", Shape(Repeat("M"))), ("B", NoNewNodes())])
    v = view(plan)
    (holder,) = placeholders(v)
    assert (holder.id, holder.task, holder.parent, holder.bounds) == ("~:A:0", "M", "A", (0, None))
    assert holder.state == PROVISIONAL
    assert holder.provisional
    assert {("A", "~:A:0", "edge"), ("~:A:0", "B", "edge")} <= edge_set(v, provisional=True)
    assert ("A", "B", "edge") in edge_set(v, provisional=False)
    assert wildcards(v) == {}  # the shape bounds A; B promised nothing new
    assert v.node("B").state == "pending"


def test_repeat_residual_stays_open_ended_after_copies() -> None:
    plan = registered(["A"], promises=[("A", Shape(Repeat("M")))])
    run(plan, "A")
    copies = [spawn(plan, "A", "M", i) for i in range(3)]
    v = view(plan)
    assert [(h.task, h.bounds) for h in placeholders(v)] == [("M", (0, None))]
    assert all(v.node(c).state == "ready" for c in copies)
    assert wildcards(v) == {}  # copies inside the region are bounded by the shape


def test_repeat_bounds_narrow_as_copies_appear() -> None:
    plan = registered(["A"], promises=[("A", Shape(Repeat("M", 2, 5)))])
    assert [h.bounds for h in placeholders(view(plan))] == [(2, 5)]
    run(plan, "A")
    for i in range(3):
        spawn(plan, "A", "M", i)
    assert [h.bounds for h in placeholders(view(plan))] == [(0, 2)]


def test_a_closed_region_has_no_placeholder() -> None:
    plan = registered(["A", "B"], [("A", "B")], [("A", Shape(Repeat("M")))])
    run(plan, "A")
    m = spawn(plan, "A", "M", 0)
    finish(plan, "A")
    assert placeholders(view(plan))  # M could still create more M's
    run(plan, m)
    finish(plan, m)
    v = view(plan)
    assert placeholders(v) == []
    assert v.node("B").state == "ready"


def test_seq_narrows_to_what_remains() -> None:
    plan = registered(["A"], promises=[("A", Shape(OneOf(Seq("N", "M"), Seq("J", "K"))))])
    v = view(plan)
    assert sorted(h.task or "" for h in placeholders(v)) == ["J", "K", "M", "N"]
    assert all(h.bounds == (0, 1) for h in placeholders(v))  # each alternative may not happen
    by_task = {h.task: h.id for h in placeholders(v)}
    assert (by_task["N"], by_task["M"], "edge") in edge_set(v, provisional=True)
    assert (by_task["N"], by_task["K"], "edge") not in edge_set(v, provisional=True)
    run(plan, "A")
    spawn(plan, "A", "J", 0)
    assert [(h.task, h.bounds) for h in placeholders(view(plan))] == [("K", (1, 1))]


def test_oneof_alternatives_are_grouped_as_a_choice() -> None:
    plan = registered(["coin"], promises=[("coin", Shape(OneOf("heads", "tails")))])
    holders = placeholders(view(plan))
    choices = {h.attrs["choice"] for h in holders}
    assert len(choices) == 2
    assert len({c.rsplit(":", 1)[0] for c in choices}) == 1


def test_any_in_a_shape_is_a_wildcard_of_the_owner() -> None:
    plan = registered(["A"], promises=[("A", Shape(Seq("plan", Any())))])
    v = view(plan)
    (holder,) = placeholders(v)
    (wild,) = [n for n in v.nodes if n.kind == "wildcard"]
    assert holder.task == "plan"
    assert (wild.parent, wild.task, wild.bounds) == ("A", None, (0, None))
    assert (holder.id, wild.id, "edge") in edge_set(v, provisional=True)


def test_loop_placeholder_is_marked_sequential() -> None:
    plan = registered(["A"], promises=[("A", Shape(Loop("poll", 1, 3)))])
    (holder,) = placeholders(view(plan))
    assert (holder.task, holder.bounds, holder.attrs.get("loop")) == ("poll", (1, 3), True)


# --- committed elements ----------------------------------------------------------------


def test_lineage_is_drawn_only_without_a_real_edge() -> None:
    plan = registered(["A"])
    run(plan, "A")
    loose = spawn(plan, "A", "x", 0)
    tied = spawn(plan, "A", "y", 1, after=["A"])
    edges = edge_set(view(plan), provisional=False)
    assert ("A", loose, "lineage") in edges
    assert ("A", tied, "edge") in edges
    assert ("A", tied, "lineage") not in edges
    assert view(plan).node(loose).parent == "A"


def test_data_edges_have_their_own_kind() -> None:
    plan = registered(["A", "B"], [("A", "B")])
    run(plan, "A")
    user = spawn(plan, "A", "use", 0, after=["B"], data=True)
    edges = edge_set(view(plan))
    assert ("B", user, "data") in edges
    assert ("A", user, "lineage") in edges


def test_committed_states_and_ids_are_stable() -> None:
    plan = registered(["A", "B"], [("A", "B")])
    before = view(plan)
    run(plan, "A")
    after = view(plan)
    assert [n.id for n in before.committed()] == [n.id for n in after.committed()] == ["A", "B"]
    assert (before.node("A").state, after.node("A").state) == ("ready", "running")
    assert after.seq == plan.seq == 1


# --- folding -----------------------------------------------------------------------------


def fan_out(n: int) -> Plan:
    plan = registered(["A", "B"], [("A", "B")])
    run(plan, "A")
    ids = [child_id("A", i) for i in range(n)]
    plan.apply(PlanDiff(proposer="A", nodes=tuple(NodeSpec(i, "M", creator="A") for i in ids),
                        edges=tuple(EdgeSpec(i, "B") for i in ids)))
    return plan


def test_many_siblings_fold_into_one_node() -> None:
    plan = fan_out(20)
    run(plan, "A.3")
    finish(plan, "A")
    run(plan, "A.4")
    finish(plan, "A.4")
    v = view(plan)
    (folded,) = [n for n in v.nodes if n.members is not None]
    assert (folded.id, folded.task, folded.count) == ("A.0..×20", "M", 20)  # noqa: RUF001
    assert folded.members == [f"A.{i}" for i in range(20)]
    assert folded.state == "running"
    assert folded.attrs["states"] == {"ready": 18, "running": 1, "succeeded": 1}
    assert edge_set(v, provisional=False) == {("A", "B", "edge"), ("A", folded.id, "lineage"),
                                              (folded.id, "B", "edge")}
    assert set(wildcards(v)) == {folded.id, "B"}


def test_an_earlier_attempts_children_fold_apart_and_keep_their_wildcards() -> None:
    """Folded with the retry's own children, they borrowed a closed bound: no "?" was
    drawn, though each could still create a node under the first attempt's budget."""
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("C", "c"),), (), (("C", MaxNodes(10)),))).ok
    plan.set_state("C", NodeState.RUNNING)
    first = [NodeSpec(f"C.{i}", "t", {"i": i}, creator="C") for i in range(1, 10)]
    assert plan.apply(PlanDiff("C", tuple(first))).ok
    plan.set_state("C", NodeState.READY)  # a retry
    plan.set_state("C", NodeState.RUNNING)
    assert plan.apply(PlanDiff("C", tuple(first[:5]))).ok  # taken back
    assert plan.apply(PlanDiff("C", tuple(NodeSpec(f"C.{i}@2", "t", {"j": i}, creator="C")
                                           for i in range(6, 11)))).ok
    plan.set_state("C", NodeState.SUCCEEDED)
    v = view(plan)
    assert sorted(n.count for n in v.nodes if n.members) == [10]
    assert {f"C.{i}" for i in range(6, 10)} <= set(wildcards(v))
    plan.set_state("C.6", NodeState.RUNNING)
    assert plan.apply(PlanDiff("C.6", (NodeSpec("C.6.0", "z", creator="C.6"),))).ok


def test_children_of_two_earlier_attempts_fold_apart() -> None:
    """Left by two attempts, each judged by its own attempt's MaxNodes, they folded
    together under the first's closed bound: the second's "?" was not drawn."""
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("T", "t"),), (), (("T", MaxNodes(7)),))).ok
    plan.set_state("T", NodeState.RUNNING)
    for attempt, count in (("a", 7), ("b", 2)):
        assert plan.apply(PlanDiff("T", tuple(
            NodeSpec(f"T/{attempt}{i}", "x", creator="T", key=f"{attempt}{i}")
            for i in range(count)))).ok
        plan.set_state("T", NodeState.READY)  # a retry: these are history now
        plan.set_state("T", NodeState.RUNNING)
    plan.set_state("T", NodeState.SUCCEEDED)
    for node_id in [n for n in plan.nodes if n.startswith("T/")]:
        plan.set_state(node_id, NodeState.RUNNING)
    assert {"T/b0", "T/b1"} <= set(wildcards(view(plan)))
    assert plan.apply(PlanDiff("T/b1", (NodeSpec("T/b1.0", "z", creator="T/b1"),))).ok


def test_few_siblings_do_not_fold_and_unfold_shows_all() -> None:
    assert all(n.members is None for n in view(fan_out(8)).nodes)
    v = view(fan_out(20), unfold=True)
    assert len(v.committed()) == 22
    assert len(wildcards(v)) == 22  # A, B and every M are live and unbounded


def test_siblings_with_different_neighbours_fold_separately() -> None:
    plan = fan_out(10)
    for i in range(10, 20):
        spawn(plan, "A", "M", i)
    v = view(plan)
    assert sorted(n.count for n in v.nodes if n.members) == [10, 10]


def test_a_sibling_with_something_of_its_own_to_show_is_not_folded_away() -> None:
    """A colour set on one member, a retry: the folded node would hide them."""
    plan = fan_out(20)
    assert plan.apply(PlanDiff(None, attrs=(AttrChange("color", "red", node="A.3"),))).ok
    run(plan, "A.5")
    plan.set_state("A.5", NodeState.READY)  # retried: attempt 2
    v = view(plan)
    alone = {n.id for n in v.nodes if n.members is None and n.id.startswith("A.")}
    assert alone == {"A.3", "A.5"}
    assert sorted(n.count for n in v.nodes if n.members) == [18]
    assert next(n for n in v.nodes if n.id == "A.3").attrs["color"] == "red"


# --- rejections ---------------------------------------------------------------------------


def test_a_violation_marks_its_proposer_and_keeps_the_refused_nodes() -> None:
    plan = registered(["A"], promises=[("A", OnlyNodes("fetch"))])
    run(plan, "A")
    out = plan.apply(PlanDiff(proposer="A", nodes=(NodeSpec("A.0", "rm", creator="A"),)))
    assert out.rejection is not None
    v = view(plan)
    assert "OnlyNodes(fetch)" in v.node("A").attrs["violation"]
    assert v.violations == [out.rejection.to_dict()]
    (entry,) = v.rejected
    assert entry["nodes"] == [{"id": "A.0", "task": "rm", "parent": "A"}]
    assert "A.0" not in {n.id for n in v.nodes}


def test_a_plan_error_marks_the_proposer_as_rejected() -> None:
    plan = registered(["A"])
    run(plan, "A")
    out = plan.apply(PlanDiff(proposer="A", edges=(EdgeSpec("A", "nowhere"),)))
    assert out.rejection is not None
    assert out.rejection.kind == "plan"
    v = view(plan)
    assert "nowhere" in v.node("A").attrs["rejected"]
    assert v.violations == []


# --- the JSON document ----------------------------------------------------------------------


def contract_plan() -> Plan:
    plan = fan_out(12)
    plan.apply(PlanDiff(proposer="A", nodes=(NodeSpec("A/s", "S", creator="A"),),
                        promises=(("A/s", Shape(Repeat("M", 1, 2))),)))
    return plan


def test_json_document_follows_the_contract() -> None:
    doc = view(contract_plan()).to_json()
    assert set(doc) == {"workflow_id", "seq", "nodes", "edges", "violations", "rejected"}
    base = {"id", "task", "state", "parent", "provisional", "attrs"}
    kinds = set()
    for node in doc["nodes"]:
        if node["provisional"]:
            kinds.add(node["kind"])
            extra = {"kind", "bounds", "tasks"} if node["kind"] == "wildcard" else {"kind",
                                                                                     "bounds"}
            assert set(node) == base | extra
            assert node["state"] == "provisional"
            assert set(node["bounds"]) == {"min", "max"}
        elif "members" in node:
            assert set(node) == base | {"count", "members"}
            assert node["count"] == len(node["members"]) == 12
        else:
            assert set(node) == base
            assert node["state"] in {s.value for s in NodeState}
    assert kinds == {"wildcard", "placeholder"}
    for edge in doc["edges"]:
        assert set(edge) == {"src", "dst", "provisional", "kind", "attrs"}
        assert edge["kind"] in {"edge", "lineage", "data"}
    assert json.loads(json.dumps(doc)) == doc


def test_json_round_trips() -> None:
    v = view(contract_plan())
    doc = v.to_json()
    again = View.from_json(json.loads(json.dumps(doc)))
    assert again.to_json() == doc
    assert to_dot(again) == to_dot(v) == to_dot(doc)


@pytest.mark.parametrize("unfold", [False, True])
def test_edges_only_join_nodes_of_the_view(unfold: bool) -> None:
    v = view(contract_plan(), unfold=unfold)
    ids = {n.id for n in v.nodes}
    assert len(ids) == len(v.nodes)
    assert all(e.src in ids and e.dst in ids for e in v.edges)


def test_a_large_fan_out_renders_quickly() -> None:
    # A generous sanity bound; bench/plan_bench.py measures the real figure (target 2 s).
    plan = fan_out(100_000)
    started = time.perf_counter()
    dot = to_dot(view(plan))
    elapsed = time.perf_counter() - started
    assert "M ×100000" in dot  # noqa: RUF001
    assert elapsed < 10
