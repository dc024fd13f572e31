"""The view never lies, every break is caught, no honest workflow is refused (DESIGN.md §3).

Random workflows over the whole static-to-dynamic spectrum (``workflow_strategy``)
are played on the pure plan in random interleavings, with a view snapshot after
every step. Over every case:

(a) every snapshot holds the truthfulness invariant against the final graph;
(b) a breaking workflow is stopped by a violation of the promise it breaks;
(c) an honest workflow is never refused and runs to the end, creating exactly the
    nodes its program spawns.
"""

from __future__ import annotations

import random

import pytest
import workflow_strategy as ws
from hypothesis import event, given, settings
from hypothesis import strategies as st

from plait.protocol.diff import EdgeSpec, NodeSpec, NodeState, PlanDiff, child_id
from plait.protocol.plan import Plan
from plait.protocol.promises import MaxNodes, Promise, Shape
from plait.protocol.shape import OneOf, Seq
from plait.protocol.view import view

# Together ~3,000 generated workflows, about a dozen steps (and snapshots) each.
HONEST = ws.examples(2000)
BREAKING = ws.examples(1000)


def assert_truthful(run: ws.Run) -> None:
    assert not run.early, run.early
    final = view(run.plan, unfold=True).to_json()
    for i, (snap, regions) in enumerate(zip(run.snapshots, run.regions, strict=True)):
        errors = ws.check_snapshot(snap, final, regions, run.reopened(i))
        assert not errors, f"snapshot {i} (seq {snap['seq']}) lies: {errors[:5]}"


def describe(wf: ws.Workflow) -> None:
    """Statistics (``--hypothesis-show-statistics``): what the examples covered."""
    kinds = {p.kind for _, p in wf.registration.promises}
    kinds |= {p.kind for b in wf.behaviours.values() for s in b.steps
              for p in (*s.promises, *(q for c in s.spawns for q in c.promises))}
    for kind in sorted(kinds):
        event(f"promise {kind}")
    size = len(wf.node_ids())
    event(f"nodes {'1' if size <= 1 else '2-5' if size <= 5 else '6-12' if size <= 12 else '13+'}")
    if wf.broken is not None:
        event(f"break {wf.broken.how}")
    if any(b.paths for b in wf.behaviours.values()):
        event("a retry takes another path")


def describe_run(run: ws.Run) -> None:
    if run.restarts:
        event("restarted")
    if run.refused_restarts:
        event("a restart refused (busy)")
    if any(n.unclaimed for n in run.plan.nodes.values()):
        event("history left unclaimed")
    if any(n.superseded for n in run.plan.nodes.values()):
        event("history left superseded")


@settings(max_examples=HONEST)
@given(ws.workflows(), st.randoms(use_true_random=False))
def test_honest_workflows_run_to_the_end_and_are_never_lied_about(
        wf: ws.Workflow, rng: random.Random) -> None:
    describe(wf)
    run = ws.play(wf, rng)
    describe_run(run)
    assert not run.refusals, [(w, r.to_dict()) for w, r in run.refusals]
    assert run.plan.violations == []
    assert run.plan.is_settled(), "stuck: live nodes but nothing can run"
    if wf.cancel_after is None:
        assert sorted(run.plan.nodes) == sorted(wf.node_ids())
        # History a restart superseded stays cancelled unless its creator re-proposed it.
        assert all(n.state.value == "succeeded" or (n.superseded and n.state.value ==
                                                   "cancelled")
                   for n in run.plan.nodes.values()), {
            n.id: n.state.value for n in run.plan.nodes.values()}
        assert not any(n.region and not n.region.closed for n in run.plan.nodes.values())
    assert_truthful(run)


@settings(max_examples=BREAKING)
@given(ws.workflows(breaking=True), st.randoms(use_true_random=False))
def test_every_break_is_reported_as_the_promise_it_breaks(
        wf: ws.Workflow, rng: random.Random) -> None:
    describe(wf)
    run = ws.play(wf, rng)
    broken = wf.broken
    if broken is None:  # nothing to break (no promise in force anywhere): honest
        assert not run.refusals
    elif broken.kind == "plan":  # a rule of the plan, not a promise: refused, not a violation
        assert run.refusals, f"{broken} was never refused"
        where, rejection = run.refusals[0]
        assert (where, rejection.kind, rejection.proposer) == ("apply", "plan", broken.node), (
            rejection.to_dict())
        assert "cannot change attributes" in rejection.reason
        assert run.plan.violations == []
    else:
        assert run.refusals, f"{broken} was never reported"
        where, rejection = run.refusals[0]
        assert rejection.kind == "violation", rejection.to_dict()
        assert (rejection.promise, rejection.owner) in run.expected, (
            rejection.to_dict(), run.expected)
        assert run.plan.violations[0] == rejection
        assert view(run.plan).to_json()["violations"][0] == rejection.to_dict()
        if broken.at_close:
            assert (where, rejection.proposer) == ("close", broken.owner)
        else:
            assert run.break_proposed
            # A runtime Shape adopting a foreign node reports its owner's proposal.
            assert rejection.proposer in (broken.node, broken.owner)
            assert rejection.diff["proposer"] == rejection.proposer
        assert run.plan.is_settled()  # the workflow was stopped
    assert_truthful(run)


@pytest.mark.parametrize("promise", ["max_nodes", "shape"])
def test_a_child_left_running_by_a_retried_owner_is_not_lied_about(promise: str) -> None:
    """O spawned C, failed and was retried; its second attempt took its promise's
    budget (three nodes; the other alternative of a Shape) and succeeded. C runs on,
    and what it creates is judged by the first attempt's promise, which allows one
    more node: the view must not draw C's future as closed or shaped."""
    s = NodeState
    kept: Promise = MaxNodes(3) if promise == "max_nodes" else Shape(
        OneOf(Seq("c", "x"), Seq("d", "y")))
    plan = Plan("w")
    assert plan.apply(PlanDiff(None, (NodeSpec("O", "o"),), (), (("O", kept),))).ok
    plan.set_state("O", s.RUNNING)
    c = child_id("O", 1)
    assert plan.apply(PlanDiff("O", (NodeSpec(c, "c", creator="O"),))).ok
    plan.set_state(c, s.RUNNING)
    plan.set_state("O", s.READY)  # its first attempt failed: a retry
    plan.set_state("O", s.RUNNING)
    tasks = ["d", "d", "d"] if promise == "max_nodes" else ["d", "y"]
    again = [NodeSpec(f"{child_id('O', i)}@2", t, {"i": i}, creator="O")
             for i, t in enumerate(tasks, start=1)]
    edges = () if promise == "max_nodes" else (EdgeSpec(again[0].id, again[1].id),)
    assert plan.apply(PlanDiff("O", tuple(again), edges)).ok
    plan.set_state("O", s.SUCCEEDED)
    snap = view(plan, unfold=True).to_json()
    x = child_id(c, 1)
    assert plan.apply(PlanDiff(c, (NodeSpec(x, "x", creator=c),), (EdgeSpec(c, x),))).ok
    final = view(plan, unfold=True).to_json()
    assert ws.check_snapshot(snap, final) == []
