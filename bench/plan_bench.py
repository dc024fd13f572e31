"""How much adding nodes to a plan costs, and whether it grows with the plan.

Prints the per-node cost of applying diffs that add nodes (proposed by a
running node) to plans of 1,000 and of 100,000 nodes, in batches of 1 and of
100, and the ratio between the two sizes, under two sets of promises: OnlyNodes,
MaxNodes, NoEdgesTo and MaxParallel on the root (each new node also gets a data
edge), and a Shape(Repeat(work)) on the root. Then the time to build the
as-of-now view and its DOT text for a 100,000-node plan with one folded fan-out.

Targets (issue 2): < 20 µs per added node, ratio < 1.5, view + DOT < 2 s.
Times are this process's CPU time (the machine is shared: wall-clock time would
measure the neighbours), best of several rounds that alternate the two sizes.

    python bench/plan_bench.py [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

from plait.protocol.diff import EdgeSpec, NodeSpec, NodeState, PlanDiff, child_id
from plait.protocol.plan import Plan
from plait.protocol.promises import MaxNodes, MaxParallel, NoEdgesTo, OnlyNodes, Promise, Shape
from plait.protocol.render import to_dot
from plait.protocol.shape import Repeat
from plait.protocol.view import view

SIZES = (1_000, 100_000)
BATCHES = (1, 100)
MEASURED = 2_000  # nodes added while timing, on top of the plan's size
REPEATS = 5
TARGET_US = 20.0
TARGET_RATIO = 1.5
TARGET_VIEW_S = 2.0

# name -> (promises on the root, whether each new node gets a data edge)
VARIANTS: dict[str, tuple[tuple[Promise, ...], bool]] = {
    "OnlyNodes+MaxNodes+NoEdgesTo+MaxParallel": (
        (OnlyNodes("work"), MaxNodes(10**9), NoEdgesTo("root"), MaxParallel(64)), True),
    # Copies of a Repeat must not be linked, so no edges here.
    "Shape(Repeat(work))": ((Shape(Repeat("work")),), False),
}


def _plan(promises: tuple[Promise, ...]) -> Plan:
    """A running root bound by ``promises``, with one finished source node."""
    plan = Plan("bench")
    plan.apply(PlanDiff(nodes=(NodeSpec("root", "root"),),
                        promises=tuple(("root", p) for p in promises)))
    plan.set_state("root", NodeState.RUNNING)
    plan.apply(_diffs(0, 1, 1, edges=False)[0])
    plan.set_state(child_id("root", 0), NodeState.RUNNING)
    plan.set_state(child_id("root", 0), NodeState.SUCCEEDED)
    return plan


def _diffs(start: int, count: int, batch: int, edges: bool) -> list[PlanDiff]:
    """Diffs adding ``count`` work nodes from ``start`` (each fed by the source node)."""
    source = child_id("root", 0)
    diffs = []
    for first in range(start, start + count, batch):
        ids = [child_id("root", i) for i in range(first, min(first + batch, start + count))]
        diffs.append(PlanDiff(
            proposer="root",
            nodes=tuple(NodeSpec(i, "work", creator="root") for i in ids),
            edges=tuple(EdgeSpec(source, i, data=True) for i in ids) if edges else (),
        ))
    return diffs


def _apply_all(plan: Plan, diffs: list[PlanDiff]) -> float:
    started = time.process_time()
    for diff in diffs:
        outcome = plan.apply(diff)
        if outcome.rejection is not None:
            raise RuntimeError(outcome.rejection.message())
    return time.process_time() - started


def per_node_us(variant: str, batch: int) -> list[float]:
    """Best per-node cost (µs) of adding MEASURED nodes to a plan of each of SIZES."""
    promises, edges = VARIANTS[variant]
    plans = []
    for size in SIZES:
        plan = _plan(promises)
        _apply_all(plan, _diffs(1, size - len(plan), batch, edges))
        plans.append(plan)
    best = [float("inf")] * len(plans)
    for _ in range(REPEATS):  # alternate sizes, so a busy moment hits both alike
        for i, plan in enumerate(plans):
            diffs = _diffs(len(plan), MEASURED, batch, edges)
            best[i] = min(best[i], _apply_all(plan, diffs) / MEASURED * 1e6)
    return best


def fan_out_plan(n: int) -> Plan:
    """``A`` spawns ``n`` copies of M (a few running, most done); ``B`` follows A."""
    plan = Plan("fan-out")
    plan.apply(PlanDiff(nodes=(NodeSpec("A", "A"), NodeSpec("B", "B")),
                        edges=(EdgeSpec("A", "B"),)))
    plan.set_state("A", NodeState.RUNNING)
    ids = [child_id("A", i) for i in range(n)]
    plan.apply(PlanDiff(proposer="A", nodes=tuple(NodeSpec(i, "M", creator="A") for i in ids)))
    for i in ids[: n - 10]:
        plan.set_state(i, NodeState.RUNNING)
        plan.set_state(i, NodeState.SUCCEEDED)
    return plan


def view_seconds(plan: Plan, unfold: bool = False) -> tuple[float, int]:
    started = time.process_time()
    dot = to_dot(view(plan, unfold=unfold))
    return time.process_time() - started, len(dot)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true",
                        help="profile adding nodes to the 100,000-node plan")
    args = parser.parse_args()
    print(f"adding nodes to a plan (best of {REPEATS} x {MEASURED} nodes)")
    for variant in VARIANTS:
        print(f"  promises on the root: {variant}")
        for batch in BATCHES:
            small, large = per_node_us(variant, batch)
            ratio = large / small
            print(f"    batch {batch:>3}: {small:6.2f} µs/node at {SIZES[0]:,}, "
                  f"{large:6.2f} µs/node at {SIZES[1]:,}, ratio {ratio:.2f}  "
                  f"[{_verdict(max(small, large) < TARGET_US and ratio < TARGET_RATIO)}]")
    plan = fan_out_plan(100_000)
    seconds, size = view_seconds(plan)
    print(f"view + DOT of a {len(plan):,}-node folded fan-out: {seconds:.3f} s "
          f"({size:,} bytes of DOT)  [{_verdict(seconds < TARGET_VIEW_S)}]")
    seconds, size = view_seconds(plan, unfold=True)
    print(f"  (unfolded, for comparison: {seconds:.3f} s, {size:,} bytes of DOT)")
    if args.profile:
        for variant in VARIANTS:
            _profile(lambda v=variant: per_node_us(v, 1))  # type: ignore[misc]


def _profile(run: Callable[[], object]) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(run)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
