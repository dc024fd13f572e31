"""Seed 001's must-have workflows as plans: their views before, during and after.

Each story in examples/plans.py is rendered to DOT and SVG files (a person can
look at them under pytest's tmp_path) and its views are checked, including
the truthfulness invariant of DESIGN.md section 3 between every snapshot and
the final graph. The docs' drawings are regenerated here so they cannot rot.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from plait.protocol.render import render, to_dot
from plait.protocol.view import View, ViewNode

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "cancelled"}


def load(name: str, relative: str) -> ModuleType:
    """Import a repository script that is not part of the package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


plans = load("plait_example_plans", "examples/plans.py")
gen_promises = load("plait_docs_gen_promises", "docs/gen_promises.py")

Frame = tuple[str, View]


def write(frames: list[Frame], out: Path, name: str) -> None:
    """Every frame as DOT and SVG; the files must hold what the view holds."""
    for i, (_, frame) in enumerate(frames):
        dot = render(frame, out / f"{name}-{i}.dot").read_text(encoding="utf-8")
        assert dot == to_dot(frame)
        svg = render(frame, out / f"{name}-{i}.svg").read_text(encoding="utf-8")
        assert svg.lstrip().startswith(("<?xml", "<svg"))
        for node in frame.committed():
            assert node.task is not None
            assert node.task in svg


def phases(frames: list[Frame]) -> tuple[View, list[View], View]:
    labels = [label for label, _ in frames]
    assert labels[0] == "before"
    assert labels[-1] == "after"
    assert len(labels) >= 3
    assert all(label.startswith("during") for label in labels[1:-1])
    return frames[0][1], [f for _, f in frames[1:-1]], frames[-1][1]


def committed_sets(v: View) -> tuple[set[tuple[str, str | None]], set[tuple[str, str, str]]]:
    nodes = {(n.id, n.task) for n in v.committed()}
    edges: set[tuple[str, str, str]] = {
        (e.src, e.dst, e.kind) for e in v.edges if not e.provisional}
    return nodes, edges


def tasks(v: View) -> list[str]:
    return sorted(n.task or "" for n in v.committed())


def holders(v: View) -> list[ViewNode]:
    """This attempt's placeholders (not what a retry of a live owner may build)."""
    return [n for n in v.nodes if n.kind == "placeholder" and not n.attrs.get("retry")]


def fits(node: ViewNode, element: ViewNode) -> bool:
    if element.kind == "wildcard":
        return element.tasks is None or node.task in element.tasks
    return element.task == node.task


def assert_truthful(frames: list[Frame]) -> None:
    """DESIGN.md section 3: no snapshot promised less than what finally happened."""
    final = frames[-1][1]
    parent = {n.id: n.parent for n in final.committed()}
    final_nodes, final_edges = committed_sets(final)
    for label, snap in frames:
        nodes, edges = committed_sets(snap)
        assert nodes <= final_nodes, label
        assert edges <= final_edges, label
        open_ids = {n.id for n in snap.committed() if n.state not in TERMINAL}
        seen = {n.id for n in snap.committed()}
        for node in final.committed():
            if node.id in seen:
                continue
            ancestors, up = set(), parent[node.id]
            while up is not None:
                ancestors.add(up)
                up = parent[up]
            assert ancestors & open_ids, f"{label}: {node.id} has no open creator"
            assert any(p.parent in ancestors and fits(node, p) for p in snap.provisional()), (
                f"{label}: {node.id} ({node.task}) fits nothing provisional")


# --- pre-determined --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_static_plan_is_the_same_before_and_after(tmp_path: Path, seed: int) -> None:
    frames = plans.static(random.Random(seed))
    write(frames, tmp_path, "static")
    before, during, after = phases(frames)
    assert committed_sets(before) == committed_sets(after)
    assert committed_sets(after) == (
        {("start", "start"), ("1", "1"), ("2", "2"), ("end", "end")},
        {("start", "1", "edge"), ("start", "2", "edge"), ("2", "end", "edge")},
    )
    assert before.provisional() == []  # nothing may appear
    assert after.provisional() == []
    assert [before.node(n).state for n in ("start", "1", "2", "end")] == [
        "ready", "pending", "pending", "pending"]
    assert all(any(n.state == "running" for n in v.nodes) for v in during)
    assert {n.state for n in after.nodes} == {"succeeded"}
    assert_truthful(frames)


# --- random branching -------------------------------------------------------------------


def test_branching_ends_as_exactly_one_branch(tmp_path: Path) -> None:
    endings = set()
    for seed in range(8):
        frames = plans.branching(random.Random(seed))
        before, _, after = phases(frames)
        assert sorted((h.task, h.bounds) for h in holders(before)) == [
            ("heads", (0, 1)), ("tails", (0, 1))]
        assert before.node("done").state == "pending"
        ending = set(tasks(after)) & {"heads", "tails"}
        assert len(ending) == 1
        endings |= ending
        assert after.provisional() == []
        assert {n.state for n in after.nodes} == {"succeeded"}
        assert_truthful(frames)
    assert endings == {"heads", "tails"}  # both branches happen across seeds
    write(plans.branching(random.Random(0)), tmp_path, "branching")


def test_branching_done_waits_for_the_branch() -> None:
    frames = plans.branching(random.Random(3))
    for label, frame in frames:
        branch = [n for n in frame.committed() if n.task in ("heads", "tails")]
        if not branch or branch[0].state != "succeeded":
            assert frame.node("done").state == "pending", label


# --- random map -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 4])
def test_map_materialises_k_copies(tmp_path: Path, k: int) -> None:
    frames = plans.random_map(random.Random(k), k=k)
    write(frames, tmp_path, f"map-{k}")
    before, _, after = phases(frames)
    (holder,) = holders(before)
    assert (holder.task, holder.bounds, holder.provisional) == ("M", (0, None), True)
    assert "M ×0..∞" in to_dot(before)  # noqa: RUF001
    assert before.node("B").state == "pending"
    assert tasks(after) == sorted(["A", "B"] + ["M"] * k)
    assert after.provisional() == []
    assert {n.state for n in after.nodes} == {"succeeded"}
    if k:
        first = next(v for label, v in frames if "first M" in label)
        assert [h.bounds for h in holders(first)] == [(0, None)]  # more copies may come
        assert first.node("B").state == "pending"
    assert_truthful(frames)


def test_map_with_a_random_count() -> None:
    counts = set()
    for seed in range(6):
        frames = plans.random_map(random.Random(seed))
        counts.add(tasks(frames[-1][1]).count("M"))
        assert_truthful(frames)
    assert len(counts) > 1


# --- seed 001's subgraph promise -----------------------------------------------------------------


def test_subgraph_is_one_of_two_chains(tmp_path: Path) -> None:
    endings = set()
    for seed in range(6):
        frames = plans.subgraph(random.Random(seed))
        before, _, after = phases(frames)
        assert sorted(h.task or "" for h in holders(before)) == ["J", "K", "M", "N"]
        chain = tuple(t for t in tasks(after) if t not in ("A", "B"))
        assert chain in {("M", "N"), ("J", "K")}
        endings.add(chain)
        middle = next(v for label, v in frames if "created" in label)
        assert len(holders(middle)) == 1  # only the rest of the chosen alternative remains
        assert after.provisional() == []
        assert_truthful(frames)
    assert len(endings) == 2
    write(plans.subgraph(random.Random(0)), tmp_path, "subgraph")


# --- the docs ------------------------------------------------------------------------------------


def test_the_promise_drawings_regenerate(tmp_path: Path) -> None:
    written = gen_promises.generate(tmp_path)
    names = {p.name for p in written}
    assert names == {p.name for p in (ROOT / "docs" / "img").glob("*.svg")}
    text = (ROOT / "docs" / "promises.md").read_text(encoding="utf-8")
    for path in written:
        assert f"img/{path.name}" in text
        data = path.read_text(encoding="utf-8")
        assert "<svg" in data
        assert len(data) < 20_000
