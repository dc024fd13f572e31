"""Regressions found by the property tests: retries, restarts and views. Each test is
the smallest input; the comment says what is expected and what used to happen."""

from __future__ import annotations

from plait.protocol.diff import EdgeSpec, NodeSpec, NodeState, PlanDiff
from plait.protocol.plan import Plan
from plait.protocol.promises import NoNewNodes, Shape
from plait.protocol.shape import Repeat, Seq, Task

S = NodeState


def _spawn(plan: Plan, creator: str, node: str, task: str) -> PlanDiff:
    return PlanDiff(creator, (NodeSpec(node, task, creator=creator),),
                    (EdgeSpec(creator, node),) if "." in creator else ())


def _started(plan: Plan, *promises: object) -> Plan:
    assert plan.apply(PlanDiff(None, (NodeSpec("A", "a"),), (), promises)).ok  # type: ignore[arg-type]
    plan.set_state("A", S.RUNNING)
    return plan


def test_a_retry_replaying_spawns_made_before_a_runtime_no_new_nodes_is_honest() -> None:
    # A spawns A.1, then promises NoNewNodes; the attempt fails; the retry replays the
    # same program. Expected: re-proposing A.1 (same id/task/inputs) reclaims it, no
    # violation. Actual: violation NoNewNodes() "created A.1 (b)" (the claimed node is
    # shown to the stateless tracker as new). Same for NoNewNodes after a restart.
    plan = _started(Plan("w"))
    assert plan.apply(_spawn(plan, "A", "A.1", "b")).ok
    assert plan.apply(PlanDiff("A", promises=(("A", NoNewNodes()),))).ok
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    out = plan.apply(_spawn(plan, "A", "A.1", "b"))
    assert out.rejection is None, out.rejection


def test_a_retry_reclaiming_a_delegate_keeps_its_region_complete() -> None:
    # Shape(Seq(b, c)) on A; A spawns A.1 (b), A.1 spawns A.1.1 (c) and succeeds; A
    # fails and its retry re-proposes A.1 (reclaimed: it does not run again). Expected:
    # the region {A.1, A.1.1} matches Seq(b, c), no violation. Actual at close:
    # "region closed incomplete: expected c after b" (the renewed matcher sees A.1 but
    # not what A.1 created).
    plan = _started(Plan("w"), ("A", Shape(Seq("b", "c"))))
    assert plan.apply(_spawn(plan, "A", "A.1", "b")).ok
    plan.set_state("A.1", S.RUNNING)
    assert plan.apply(_spawn(plan, "A.1", "A.1.1", "c")).ok
    plan.set_state("A.1", S.SUCCEEDED)
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    assert plan.apply(_spawn(plan, "A", "A.1", "b")).ok
    plan.set_state("A", S.SUCCEEDED)
    plan.set_state("A.1.1", S.RUNNING)
    assert plan.set_state("A.1.1", S.SUCCEEDED).violations == []
    assert plan.violations == []


def test_restarting_a_shape_owner_with_a_delegate_keeps_its_region_complete() -> None:
    # Same region, all succeeded; restart A; A re-proposes A.1 (revived), A.1
    # re-proposes A.1.1 (revived). Expected: no violation. Actual when A.1.1 succeeds:
    # "region closed incomplete: expected c after b" (a revival proposed by a delegate
    # is not shown to the owner's renewed matcher).
    plan = _started(Plan("w"), ("A", Shape(Seq("b", "c"))))
    assert plan.apply(_spawn(plan, "A", "A.1", "b")).ok
    plan.set_state("A", S.SUCCEEDED)
    for node, child in (("A.1", "A.1.1"), ("A.1.1", None)):
        plan.set_state(node, S.RUNNING)
        if child:
            assert plan.apply(_spawn(plan, node, child, "c")).ok
        plan.set_state(node, S.SUCCEEDED)
    assert plan.violations == []
    assert plan.restart("A").rejection is None
    plan.set_state("A", S.RUNNING)
    assert plan.apply(_spawn(plan, "A", "A.1", "b")).ok
    plan.set_state("A", S.SUCCEEDED)
    plan.set_state("A.1", S.RUNNING)
    assert plan.apply(_spawn(plan, "A.1", "A.1.1", "c")).ok
    plan.set_state("A.1", S.SUCCEEDED)
    plan.set_state("A.1.1", S.RUNNING)
    assert plan.set_state("A.1.1", S.SUCCEEDED).violations == []
    assert plan.violations == []


def test_restarting_a_region_member_holds_the_owners_successors_again() -> None:
    # A (Shape(m)) -> B. A spawns A.1 (m); A and A.1 succeed: the region closes and B
    # is ready. The operator restarts A.1: A's region opens again (live 1). Expected:
    # B, downstream of the region (a placeholder's exits are real dependencies), is
    # reset or held until the region closes again. Actual: B stays ready (restart's
    # closure follows edges and lineage but not region -> owner's successors), so B
    # may run while A's region is still open.
    from plait.protocol.shape import Task

    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("A", "a"), NodeSpec("B", "b")),
                               (EdgeSpec("A", "B"),), (("A", Shape(Task("m"))),))).ok
    plan.set_state("A", S.RUNNING)
    assert plan.apply(PlanDiff("A", (NodeSpec("A.1", "m", creator="A"),))).ok
    plan.set_state("A", S.SUCCEEDED)
    plan.set_state("A.1", S.RUNNING)
    assert plan.set_state("A.1", S.SUCCEEDED).ready == ["B"]
    assert plan.restart("A.1").rejection is None
    assert plan.nodes["A"].region is not None
    assert not plan.nodes["A"].region.closed
    assert plan.nodes["B"].state is not S.READY


def test_a_wildcard_bound_holds_across_a_retry() -> None:
    # A has MaxNodes(1) and spawns A.1: the view's wildcard under A says at most 0
    # more (closed). A fails; its retry (renewed budget) spawns A.1@2, which is honest
    # (test_attempts.py). Expected: the snapshot taken before the retry did not promise
    # less than can happen (e.g. the bound counts attempts that may still come).
    # Before the fix: the snapshot showed no wildcard under A (nothing more), yet A.1@2 appears
    # under A: the view lied (DESIGN.md section 3, invariant 2).
    from plait.protocol.promises import MaxNodes
    from plait.protocol.view import view

    plan = _started(Plan("w"), ("A", MaxNodes(1)))
    assert plan.apply(_spawn(plan, "A", "A.1", "m")).ok
    before = view(plan, unfold=True).to_json()
    wild = [n for n in before["nodes"] if n["provisional"] and n["parent"] == "A"]
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    assert plan.apply(_spawn(plan, "A", "A.1@2", "m")).ok
    assert wild, "the snapshot said A creates nothing more"
    assert wild[0]["bounds"]["max"] is None or wild[0]["bounds"]["max"] >= 1, wild


def test_a_retry_replaying_a_sequence_one_spawn_at_a_time_is_honest() -> None:
    # A has Shape(Seq(Seq(Seq(a, a)), a, a)); it spawns A.1, then A.2 after A.1 (two
    # diffs) and fails. The retry replays: A.1 (reclaimed), A.2 after A.1 (reclaimed),
    # then A.3 after A.2. Expected: no violation (the same DAG as a first run, which is
    # accepted). Actual: violation "node A.3 (task a) starts a in Seq(Seq(Seq(a, a)), a,
    # a) but is not ordered after A.1 (task a): it needed an edge from every sink of
    # Seq(Seq(a, a))". Cause: a reclaim showed the renewed matcher only the edges
    # among that diff's reclaimed nodes (staging._Members), so A.1 -> A.2 is lost when
    # they are reclaimed in separate diffs. (With the flat Seq(a, a, a, a) it passes.)
    from plait.protocol.shape import Seq as Sequence

    plan = _started(Plan("w"), ("A", Shape(Sequence(Sequence(Sequence("a", "a")), "a", "a"))))

    def step(node: str, after: str | None) -> PlanDiff:
        return PlanDiff("A", (NodeSpec(node, "a", creator="A"),),
                        (EdgeSpec(after, node),) if after else ())

    assert plan.apply(step("A.1", None)).ok
    assert plan.apply(step("A.2", "A.1")).ok
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    assert plan.apply(step("A.1", None)).ok
    assert plan.apply(step("A.2", "A.1")).ok
    out = plan.apply(step("A.3", "A.2"))
    assert out.rejection is None, out.rejection


def _run(plan: Plan, node: str) -> None:
    plan.set_state(node, S.RUNNING)
    plan.set_state(node, S.SUCCEEDED)


def test_restarting_an_unclaimed_child_keeps_it_reclaimable() -> None:
    # A (Shape(a)) spawns A.1 (a); A.1 succeeds; A fails (A.1 is unclaimed history);
    # the operator restarts A.1; A's retry re-proposes A.1. Expected: A.1 reclaimed,
    # the region matches, no violation. Actual: restart's _reset clears `unclaimed`,
    # the re-proposal is a no-op, the renewed matcher never sees A.1:
    # "region closed incomplete: expected a (nothing matched)".
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("A", "x"),), (), (("A", Shape(Task("a"))),))).ok
    plan.set_state("A", S.RUNNING)
    spawn = PlanDiff("A", (NodeSpec("A.1", "a", creator="A"),))
    assert plan.apply(spawn).ok
    _run(plan, "A.1")
    plan.set_state("A", S.READY)
    assert plan.restart("A.1").rejection is None
    plan.set_state("A", S.RUNNING)
    assert plan.apply(spawn).ok
    plan.set_state("A", S.SUCCEEDED)
    plan.set_state("A.1", S.RUNNING)
    assert plan.set_state("A.1", S.SUCCEEDED).violations == []


def test_a_delegate_not_yet_reclaimed_does_not_break_its_retried_owners_shape() -> None:
    # A (Shape(Seq(b, d))) spawns A.1 (b), which is to spawn A.1.1 (d). A fails and is
    # retried; before A re-proposes A.1, the still running A.1 spawns A.1.1 after A.1.
    # Expected: no violation (A's retry re-proposes A.1: the same region). Actual:
    # violation "node A.1.1 (task d) does not fit Seq(b, d): expected b".
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("A", "x"),), (),
                               (("A", Shape(Seq("b", "d"))),))).ok
    plan.set_state("A", S.RUNNING)
    assert plan.apply(PlanDiff("A", (NodeSpec("A.1", "b", creator="A"),))).ok
    plan.set_state("A", S.READY)
    plan.set_state("A.1", S.RUNNING)
    out = plan.apply(PlanDiff("A.1", (NodeSpec("A.1.1", "d", creator="A.1"),),
                              (EdgeSpec("A.1", "A.1.1"),)))
    assert out.rejection is None, out.rejection


def test_a_restarted_node_waits_once_for_an_open_region() -> None:
    # r0.3 runs after r0.1 and r0.2 (Shape(a), region still open) -> r0.3 is held
    # by the region; restarting r0.1 recounts r0.3's waits. Before the fix the region
    # held r0.3 twice and released it twice when it closed: r0.3 started before r0.1.
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("r0", "a"),))).ok
    plan.set_state("r0", S.RUNNING)
    assert plan.apply(PlanDiff("r0", (NodeSpec("r0.1", "a", creator="r0"),
                                      NodeSpec("r0.2", "a", creator="r0"),
                                      NodeSpec("r0.3", "a", creator="r0")),
                               (EdgeSpec("r0.1", "r0.3"), EdgeSpec("r0.2", "r0.3")),
                               (("r0.2", Shape(Task("a"))),))).ok
    _run(plan, "r0.1")
    plan.set_state("r0.2", S.RUNNING)
    assert plan.apply(PlanDiff("r0.2", (NodeSpec("r0.2.1", "a", creator="r0.2"),))).ok
    plan.set_state("r0.2", S.SUCCEEDED)  # its region stays open: r0.2.1 has not run
    assert plan.restart("r0.1").rejection is None
    _run(plan, "r0.2.1")  # the region closes
    assert plan.nodes["r0.3"].state is S.PENDING  # still waiting for r0.1
    plan.set_state("r0.1", S.RUNNING)
    assert plan.set_state("r0.1", S.SUCCEEDED).ready == ["r0.3"]


def test_a_line_left_behind_is_still_bound_by_its_attempts_budget() -> None:
    # r0 has MaxNodes(1) and spawns r0.1, then fails; its retry has not reclaimed r0.1,
    # which (still running) spawns two nodes. Expected: a violation of MaxNodes(1), as
    # the first attempt's budget is spent. Before the fix the line escaped counting.
    from plait.protocol.promises import MaxNodes

    plan = _started(Plan("w"), ("A", MaxNodes(1)))
    assert plan.apply(_spawn(plan, "A", "A.1", "a")).ok
    plan.set_state("A.1", S.RUNNING)
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    out = plan.apply(PlanDiff("A.1", (NodeSpec("A.1.1", "a", creator="A.1"),
                                      NodeSpec("A.1.2", "a", creator="A.1"))))
    assert out.rejection is not None
    assert (out.rejection.kind, out.rejection.promise, out.rejection.owner) == (
        "violation", "MaxNodes(1)", "A")


def test_a_line_left_by_an_earlier_attempt_is_judged_by_the_attempt_that_made_it() -> None:
    # Shape(Seq(b, c)) on A; A spawns A.1 (b) and fails; the retry fails before it
    # re-proposes anything; meanwhile A.1 runs and spawns A.1.1 (c). Expected: A.1's
    # line is judged by the promises as the first attempt left them (b seen, c next),
    # then the third attempt reclaims A.1 and the region matches. Actual: rejected
    # "node A.1.1 (task c) does not fit Seq(b, c): expected b" (judged by the second
    # attempt's matcher, which never saw A.1).
    plan = _started(Plan("w"), ("A", Shape(Seq("b", "c"))))
    assert plan.apply(_spawn(plan, "A", "A.1", "b")).ok
    for _ in range(2):
        plan.set_state("A", S.READY)
        plan.set_state("A", S.RUNNING)
    plan.set_state("A.1", S.RUNNING)
    out = plan.apply(_spawn(plan, "A.1", "A.1.1", "c"))
    assert out.rejection is None, out.rejection
    plan.set_state("A.1", S.SUCCEEDED)
    assert plan.apply(_spawn(plan, "A", "A.1", "b")).ok
    plan.set_state("A", S.SUCCEEDED)
    plan.set_state("A.1.1", S.RUNNING)
    assert plan.set_state("A.1.1", S.SUCCEEDED).violations == []
    assert plan.violations == []
    assert plan.is_settled()


def test_an_edge_added_between_history_nodes_is_judged_when_they_come_back() -> None:
    # Shape(Repeat(c)) on A (disjoint copies); A spawns A.1 (c) and A.2 (c), then
    # fails; while they are history an outsider X joins them, A.2 -> A.1 (nobody's
    # promise counts them then); the retry reclaims A.1, then A.2. Expected: a
    # violation when A.2 comes back (two copies are linked). Actual: none (a
    # reclaimed node was shown with its edges from counted nodes only, not to them).
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("A", "a"), NodeSpec("X", "a")), (),
                               (("A", Shape(Repeat("c"))),))).ok
    plan.set_state("A", S.RUNNING)
    copies = (NodeSpec("A.1", "c", creator="A"), NodeSpec("A.2", "c", creator="A"))
    assert plan.apply(PlanDiff("A", copies)).ok
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    plan.set_state("X", S.RUNNING)
    assert plan.apply(PlanDiff("X", edges=(EdgeSpec("A.2", "A.1"),))).ok
    assert plan.apply(PlanDiff("A", copies[:1])).ok
    out = plan.apply(PlanDiff("A", copies[1:]))
    assert out.rejection is not None
    assert (out.rejection.kind, out.rejection.owner) == ("violation", "A")
    assert "edge A.2 -> A.1 (c -> c) links two copies" in out.rejection.reason


def test_a_diff_that_takes_history_back_shows_its_other_edges_to_the_shape_too() -> None:
    # Shape(Repeat(c)) on A; A spawns A.1, A.2, A.3 (c) and fails; the retry takes back
    # A.1 and A.2, then in one diff A.3 and a new edge A.1 -> A.2. Expected: a
    # violation (two copies linked), as for that edge alone. Actual: accepted (the
    # renewed Shape was shown the taken-back nodes and their edges only).
    plan = _started(Plan("w"), ("A", Shape(Repeat("c"))))
    copies = tuple(NodeSpec(f"A.{i}", "c", creator="A") for i in (1, 2, 3))
    assert plan.apply(PlanDiff("A", copies)).ok
    plan.set_state("A", S.READY)
    plan.set_state("A", S.RUNNING)
    assert plan.apply(PlanDiff("A", copies[:2])).ok
    out = plan.apply(PlanDiff("A", copies[2:], (EdgeSpec("A.1", "A.2"),)))
    assert out.rejection is not None
    assert "edge A.1 -> A.2 (c -> c) links two copies" in out.rejection.reason
