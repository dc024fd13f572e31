"""Seed 001's must-have workflows as pure plans, with their views before, during, after.

No runtime here: a tiny driver plays the part of Flow and the workers (it
starts ready nodes in a seeded random order, applies the diffs their tasks
would propose, and finishes them), so each story is deterministic for a given
``random.Random``. Tests check the views; ``python examples/plans.py DIR``
writes them as SVG files to look at.

- :func:`static`: the pre-determined DAG start -> 1, start -> 2, 2 -> end.
- :func:`branching`: ``coin`` promises ``OneOf(heads, tails)``; ``done`` follows it.
- :func:`random_map`: ``A -> M* -> B`` with A promising ``Repeat(M)``.
- :func:`subgraph`: ``A -> X -> B`` where X is ``(N -> M) | (J -> K)``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from plait.protocol.diff import EdgeSpec, NodeSpec, NodeState, PlanDiff, child_id
from plait.protocol.plan import Plan
from plait.protocol.promises import NoNewEdges, NoNewNodes, Promise, Shape
from plait.protocol.render import render
from plait.protocol.shape import OneOf, Repeat, Seq
from plait.protocol.view import View, view

__all__ = ["STORIES", "Driver", "Frame", "branching", "random_map", "static", "subgraph"]

Frame = tuple[str, View]
Behaviour = Callable[["Driver", str], None]
"""What a task does when it runs: proposes diffs through the driver (and may snapshot)."""

_CLOSED: tuple[Promise, ...] = (NoNewNodes(), NoNewEdges())


class Driver:
    """Plays the runtime for a pure plan and records the views along the way."""

    def __init__(self, plan: Plan, rng: random.Random, behaviours: dict[str, Behaviour]) -> None:
        self.plan = plan
        self.rng = rng
        self.behaviours = behaviours
        self.frames: list[Frame] = []
        self._spawned: dict[str, int] = {}

    def snap(self, label: str) -> None:
        self.frames.append((label, view(self.plan)))

    def apply(self, diff: PlanDiff) -> None:
        outcome = self.plan.apply(diff)
        if outcome.rejection is not None:
            raise RuntimeError(outcome.rejection.message())

    def spawn(self, creator: str, task: str, after: Sequence[str] = (),
              before: Sequence[str] = ()) -> str:
        """``creator`` creates one ``task`` node, after and before the given nodes."""
        seq = self._spawned.get(creator, 0)
        self._spawned[creator] = seq + 1
        node_id = child_id(creator, seq)
        edges = [EdgeSpec(a, node_id) for a in after] + [EdgeSpec(node_id, b) for b in before]
        self.apply(PlanDiff(proposer=creator, nodes=(NodeSpec(node_id, task, creator=creator),),
                            edges=tuple(edges)))
        return node_id

    def run(self) -> list[Frame]:
        """Run every node to completion, one at a time in a random ready order."""
        self.snap("before")
        while True:
            ready = [n.id for n in self.plan.nodes.values() if n.state is NodeState.READY]
            if not ready:
                break
            node_id = self.rng.choice(ready)
            node = self.plan.nodes[node_id]
            self.plan.set_state(node_id, NodeState.RUNNING)
            behaviour = self.behaviours.get(node.task)
            if behaviour is not None:
                behaviour(self, node_id)
            self.snap(f"during: {node_id} running")
            self.plan.set_state(node_id, NodeState.SUCCEEDED)
        self.snap("after")
        return self.frames


def _register(plan: Plan, nodes: Sequence[str], edges: Sequence[tuple[str, str]],
              promises: Sequence[tuple[str, Promise]]) -> None:
    diff = PlanDiff(
        nodes=tuple(NodeSpec(n, n) for n in nodes),
        edges=tuple(EdgeSpec(s, d) for s, d in edges),
        promises=tuple(promises),
    )
    outcome = plan.apply(diff)
    if outcome.rejection is not None:
        raise RuntimeError(outcome.rejection.message())


def static(rng: random.Random | None = None) -> list[Frame]:
    """Seed 001's example: registered whole, nothing may be added, same DAG every time."""
    plan = Plan("static")
    nodes = ("start", "1", "2", "end")
    _register(plan, nodes, [("start", "1"), ("start", "2"), ("2", "end")],
              [(n, p) for n in nodes for p in _CLOSED])
    return Driver(plan, rng or random.Random(1), {}).run()


def branching(rng: random.Random | None = None) -> list[Frame]:
    """``coin`` creates either ``heads`` or ``tails``; ``done`` runs after whichever."""
    rng = rng or random.Random(1)
    plan = Plan("branching")
    _register(plan, ["coin", "done"], [("coin", "done")],
              [("coin", Shape(OneOf("heads", "tails"))), *(("done", p) for p in _CLOSED)])

    def coin(driver: Driver, me: str) -> None:
        driver.spawn(me, driver.rng.choice(["heads", "tails"]))

    return Driver(plan, rng, {"coin": coin}).run()


def random_map(rng: random.Random | None = None, k: int | None = None) -> list[Frame]:
    """``A -> M* -> B``: A creates k >= 0 copies of M (k random unless given)."""
    rng = rng or random.Random(1)
    copies = rng.randint(0, 5) if k is None else k
    plan = Plan("map")
    _register(plan, ["A", "B"], [("A", "B")],
              [("A", Shape(Repeat("M"))), *(("B", p) for p in _CLOSED)])

    def fan_out(driver: Driver, me: str) -> None:
        for i in range(copies):
            driver.spawn(me, "M", before=["B"])  # B gathers every copy
            if i == 0:
                driver.snap(f"during: {me} created its first M")

    return Driver(plan, rng, {"A": fan_out}).run()


def subgraph(rng: random.Random | None = None) -> list[Frame]:
    """Seed 001's subgraph promise: A -> X -> B where X is (N -> M) or (J -> K)."""
    rng = rng or random.Random(1)
    plan = Plan("subgraph")
    shape = Shape(OneOf(Seq("N", "M"), Seq("J", "K")))
    _register(plan, ["A", "B"], [("A", "B")], [("A", shape), *(("B", p) for p in _CLOSED)])

    def choose(driver: Driver, me: str) -> None:
        first, second = driver.rng.choice([("N", "M"), ("J", "K")])
        head = driver.spawn(me, first)
        driver.snap(f"during: {me} created {first}")
        driver.spawn(me, second, after=[head])

    return Driver(plan, rng, {"A": choose}).run()


STORIES: dict[str, Callable[[random.Random | None], list[Frame]]] = {
    "static": static, "branching": branching, "map": random_map, "subgraph": subgraph,
}


def write(out: Path, seed: int = 1, format: str = "svg") -> list[Path]:
    """Render every story's frames to ``out/<story>-<n>.<format>``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, story in STORIES.items():
        for i, (_, frame) in enumerate(story(random.Random(seed))):
            written.append(render(frame, out / f"{name}-{i}.{format}", format))
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "out/plans")):
        print(path)
