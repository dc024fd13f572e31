"""Generates the drawings of docs/promises.md from real plans' as-of-now views.

Each scenario builds a small pure plan, drives it to an interesting moment
and renders :func:`plait.protocol.view.view` of it as SVG. Nothing is drawn
by hand, so the pictures cannot drift from what plait really shows; a test
runs :func:`generate` so they cannot rot either.

    python docs/gen_promises.py [OUT_DIR]   (default: docs/img)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plait.protocol.diff import EdgeSpec, NodeSpec, NodeState, PlanDiff, child_id
from plait.protocol.plan import Plan
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
)
from plait.protocol.render import render
from plait.protocol.shape import Any, Loop, OneOf, Par, Repeat, Seq
from plait.protocol.view import view

IMG = Path(__file__).resolve().parent / "img"


class Story:
    """A pure plan driven by hand: register, run, spawn, finish."""

    def __init__(self, name: str) -> None:
        self.plan = Plan(name)
        self._spawned: dict[str, int] = {}

    def register(self, nodes: Sequence[str], edges: Sequence[tuple[str, str]] = (),
                 promises: Sequence[tuple[str, Promise]] = ()) -> Story:
        self._apply(PlanDiff(nodes=tuple(NodeSpec(n, n) for n in nodes),
                             edges=tuple(EdgeSpec(s, d) for s, d in edges),
                             promises=tuple(promises)))
        return self

    def run(self, *node_ids: str) -> Story:
        for node_id in node_ids:
            self.plan.set_state(node_id, NodeState.RUNNING)
        return self

    def finish(self, *node_ids: str) -> Story:
        for node_id in node_ids:
            self.plan.set_state(node_id, NodeState.SUCCEEDED)
        return self

    def spawn(self, creator: str, task: str, after: Sequence[str] = ()) -> str:
        seq = self._spawned.get(creator, 0)
        self._spawned[creator] = seq + 1
        node_id = child_id(creator, seq)
        self._apply(PlanDiff(proposer=creator, nodes=(NodeSpec(node_id, task, creator=creator),),
                             edges=tuple(EdgeSpec(a, node_id) for a in after)))
        return node_id

    def propose(self, diff: PlanDiff) -> Story:
        """Apply a diff that may be refused (to draw a violation)."""
        self.plan.apply(diff)
        return self

    def _apply(self, diff: PlanDiff) -> None:
        outcome = self.plan.apply(diff)
        if outcome.rejection is not None:
            raise RuntimeError(outcome.rejection.message())


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[], Story]


def _unbounded() -> Story:
    s = Story("no promise").register(["crawl"]).run("crawl")
    page = s.spawn("crawl", "fetch")
    return s.run(page)


def _no_new_nodes() -> Story:
    nodes = ["start", "1", "2", "end"]
    closed = [(n, p) for n in nodes for p in (NoNewNodes(), NoNewEdges())]
    s = Story("NoNewNodes").register(nodes, [("start", "1"), ("start", "2"), ("2", "end")],
                                     closed)
    return s.run("start").finish("start").run("2")


def _no_new_edges() -> Story:
    s = Story("NoNewEdges").register(["split"], promises=[("split", NoNewEdges())]).run("split")
    s.spawn("split", "part")
    s.spawn("split", "part")
    return s


def _only_nodes() -> Story:
    s = Story("OnlyNodes").register(["crawl"], promises=[("crawl", OnlyNodes("fetch", "parse"))])
    s.run("crawl")
    s.spawn("crawl", "fetch")
    return s


def _only_edges() -> Story:
    s = Story("OnlyEdges").register(
        ["etl"], promises=[("etl", OnlyEdges(("extract", "load"))), ("etl", MaxNodes(2))])
    s.run("etl")
    first = s.spawn("etl", "extract")
    s.spawn("etl", "load", after=[first])
    return s


def _no_edges_from() -> Story:
    s = Story("NoEdgesFrom").register(["report", "audit"], [("report", "audit")],
                                      [("report", NoEdgesFrom("audit"))])
    return s.run("report")


def _no_edges_to() -> Story:
    s = Story("NoEdgesTo").register(["ingest", "publish"], [("ingest", "publish")],
                                    [("ingest", NoEdgesTo("publish"))])
    s.run("ingest")
    s.spawn("ingest", "clean")
    return s


def _max_nodes() -> Story:
    s = Story("MaxNodes").register(["retry"], promises=[("retry", MaxNodes(3))]).run("retry")
    s.spawn("retry", "attempt")
    return s.finish("retry")  # a live owner could be retried, and a retry counts afresh


def _max_parallel() -> Story:
    s = Story("MaxParallel").register(
        ["batch"], promises=[("batch", MaxParallel(2)), ("batch", OnlyNodes("work")),
                             ("batch", MaxNodes(4))])
    s.run("batch")
    ids = [s.spawn("batch", "work") for _ in range(4)]
    return s.run(*ids[:2])


def _shaped(name: str, shape: Shape) -> Callable[[], Story]:
    def build() -> Story:
        return Story(name).register(["A", "B"], [("A", "B")],
                                    [("A", shape), ("B", NoNewNodes())])
    return build


def _repeat_narrowing() -> Story:
    s = _shaped("Repeat", Shape(Repeat("M", 2, 5)))().run("A")
    for _ in range(3):
        s.spawn("A", "M")
    return s


def _loop() -> Story:
    s = _shaped("Loop", Shape(Loop("poll", 1, 4)))().run("A")
    s.spawn("A", "poll")
    return s


def _subgraph_during() -> Story:
    s = _shaped("seed 001", Shape(OneOf(Seq("N", "M"), Seq("J", "K"))))().run("A")
    s.spawn("A", "J")
    return s


def _violation() -> Story:
    s = Story("violation").register(["crawl"], promises=[("crawl", OnlyNodes("fetch"))])
    s.run("crawl")
    s.spawn("crawl", "fetch")
    return s.propose(PlanDiff(proposer="crawl", nodes=(
        NodeSpec(child_id("crawl", 1), "delete_everything", creator="crawl"),)))


SCENARIOS = (
    Scenario("unbounded", _unbounded),
    Scenario("no_new_nodes", _no_new_nodes),
    Scenario("no_new_edges", _no_new_edges),
    Scenario("only_nodes", _only_nodes),
    Scenario("only_edges", _only_edges),
    Scenario("no_edges_from", _no_edges_from),
    Scenario("no_edges_to", _no_edges_to),
    Scenario("max_nodes", _max_nodes),
    Scenario("max_parallel", _max_parallel),
    Scenario("shape_seq", _shaped("Seq", Shape(Seq("extract", "load")))),
    Scenario("shape_par", _shaped("Par", Shape(Par("left", "right")))),
    Scenario("shape_oneof", _shaped("OneOf", Shape(OneOf("heads", "tails")))),
    Scenario("shape_repeat", _shaped("Repeat", Shape(Repeat("M")))),
    Scenario("shape_repeat_narrowed", _repeat_narrowing),
    Scenario("shape_loop", _loop),
    Scenario("shape_any", _shaped("Any", Shape(Seq("plan", Any())))),
    Scenario("shape_subgraph", _shaped("seed 001", Shape(OneOf(Seq("N", "M"), Seq("J", "K"))))),
    Scenario("shape_subgraph_during", _subgraph_during),
    Scenario("violation", _violation),
)


def generate(out: Path = IMG) -> list[Path]:
    """Render every scenario's view to ``out/<name>.svg``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    return [render(view(s.build().plan), out / f"{s.name}.svg", "svg", promises=True)
            for s in SCENARIOS]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else IMG):
        print(path)
