"""Drawing views: labels, the visual grammar, escaping, and files through Graphviz."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from plait import demo
from plait.errors import GraphvizMissing
from plait.protocol.diff import AttrChange, EdgeSpec, NodeSpec, PlanDiff
from plait.protocol.plan import Plan
from plait.protocol.render import STATE_COLOURS, node_label, quote, render, to_dot
from plait.protocol.view import PROVISIONAL, View, ViewEdge, ViewNode, view


def committed(node_id: str, task: str | None = None, state: str = "pending",
              **attrs: object) -> ViewNode:
    return ViewNode(node_id, task or node_id, state, attrs=dict(attrs))


def wildcard(parent: str, tasks: list[str] | None = None, hi: int | None = None) -> ViewNode:
    return ViewNode(f"?:{parent}", None, PROVISIONAL, parent, True, {}, "wildcard", tasks,
                    (0, hi))


def holder(owner: str, task: str, lo: int, hi: int | None, **attrs: object) -> ViewNode:
    return ViewNode(f"~:{owner}:0", task, PROVISIONAL, owner, True, dict(attrs), "placeholder",
                    None, (lo, hi))


def line_of(dot: str, node_id: str) -> str:
    (line,) = [ln for ln in dot.splitlines() if ln.strip().startswith(quote(node_id) + " [")]
    return line


def parses(dot: str) -> None:
    """Graphviz accepts the text (it exits non-zero on a syntax error)."""
    subprocess.run(["dot", "-Tsvg", "-o", "/dev/null"], input=dot.encode(), check=True,
                   capture_output=True, timeout=60)


# --- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(("node", "label"), [
    (wildcard("A"), "?"),
    (wildcard("A", ["fetch", "parse"]), "? {fetch|parse}"),
    (wildcard("A", None, 3), "? ≤3"),
    (wildcard("A", ["x"], 0), "? {x} ≤0"),
    (holder("A", "M", 0, None), "M ×0..∞"),  # noqa: RUF001
    (holder("A", "M", 2, 5), "M ×2..5"),  # noqa: RUF001
    (holder("A", "M", 1, 1), "M"),
    (holder("A", "heads", 0, 1, choice="A:0:0"), "heads"),
    (holder("A", "M", 0, 1), "M ×0..1"),  # noqa: RUF001
    (holder("A", "poll", 1, 3, loop=True), "poll ×1..3 in sequence"),  # noqa: RUF001
    (committed("A"), "A"),
    (committed("A.0", "M"), "M\nA.0"),
    (committed("A.0", "M", attempt=2), "M\nA.0\nattempt 2"),
])
def test_labels(node: ViewNode, label: str) -> None:
    assert node_label(node) == label


def test_folded_label_counts_members_and_states() -> None:
    node = ViewNode("A.0..×3", "M", "running", "A", attrs={"states": {"succeeded": 2,  # noqa: RUF001
                                                                      "running": 1}},
                    members=["A.0", "A.1", "A.2"])
    assert node_label(node) == "M ×3\n1 running · 2 succeeded"  # noqa: RUF001


def test_long_ids_are_shortened_from_the_left() -> None:
    label = node_label(committed("root.0.1.2.3.4.5.6.7.8.9", "M"))
    assert label.splitlines()[1].startswith("…")
    assert label.endswith(".8.9")


# --- the visual grammar -----------------------------------------------------------------------


def grammar_view() -> View:
    nodes = [committed(s, state=s) for s in STATE_COLOURS]
    nodes += [committed("bad", violation="A broke OnlyNodes(fetch)"), wildcard("running"),
              holder("running", "M", 0, None)]
    edges = [ViewEdge("pending", "ready"), ViewEdge("ready", "running", kind="data"),
             ViewEdge("running", "succeeded", kind="lineage"),
             ViewEdge("running", "?:running", provisional=True)]
    return View("wf", 3, nodes, edges)


def test_states_are_fill_colours() -> None:
    dot = to_dot(grammar_view())
    for state, colour in STATE_COLOURS.items():
        assert f"fillcolor={quote(colour)}" in line_of(dot, state)


def test_edge_styles_follow_the_grammar() -> None:
    dot = to_dot(grammar_view())
    assert re.search(r'"pending" -> "ready";', dot)
    assert '"ready" -> "running" [penwidth=2];' in dot
    assert re.search(r'"running" -> "succeeded" \[style=dashed, color=grey50', dot)
    assert '"running" -> "?:running" [style=dotted, color=grey50];' in dot


def test_provisional_nodes_are_dotted_grey_and_violations_red() -> None:
    dot = to_dot(grammar_view())
    for node_id in ("?:running", "~:running:0"):
        assert 'style="dotted,rounded"' in line_of(dot, node_id)
        assert "color=grey50" in line_of(dot, node_id)
    assert "shape=ellipse" in line_of(dot, "?:running")
    bad = line_of(dot, "bad")
    assert 'color="#d32f2f"' in bad
    assert "penwidth=2.5" in bad
    assert "⚠ A broke OnlyNodes(fetch)" in bad
    parses(dot)


def test_violations_and_rejected_proposals_are_drawn_red() -> None:
    v = grammar_view()
    v.violations = [{"kind": "violation", "reason": "created x (rm)", "proposer": "bad",
                     "promise": "OnlyNodes(fetch)", "owner": "bad", "diff": {}}]
    v.rejected = [{"rejection": v.violations[0], "nodes": [{"id": "x", "task": "rm",
                                                            "parent": "bad"}],
                   "edges": [{"src": "pending", "dst": "x"}]}]
    dot = to_dot(v)
    assert "violated: bad broke OnlyNodes(fetch):\\ncreated x (rm)" in dot
    assert '"bad" -> "!0:x" [style=dashed, color="#d32f2f"];' in dot
    assert '"pending" -> "!0:x"' in dot
    parses(dot)


def test_choices_are_grouped_in_a_cluster() -> None:
    v = View("wf", 1, [committed("coin"), holder("coin", "heads", 0, 1, choice="coin:0:0"),
                       ViewNode("~:coin:1", "tails", PROVISIONAL, "coin", True,
                                {"choice": "coin:0:1"}, "placeholder", None, (0, 1))])
    dot = to_dot(v)
    assert dot.count("subgraph cluster_choice_") == 1
    assert 'label="one of"' in dot
    parses(dot)


# --- escaping ---------------------------------------------------------------------------------


def test_quote_escapes_quotes_backslashes_and_newlines() -> None:
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert quote("\\N") == '"\\\\N"'  # not Graphviz's "node name" escape


def test_control_characters_and_long_text_still_make_a_picture() -> None:
    """A carriage return was dropped (so "cr\\rx" and "crx" drew as one node), a NUL
    failed the whole picture, and Graphviz refuses a quoted string over 16,384
    characters (a long promises tooltip)."""
    assert quote("a\r\nb\rc\x00d") == '"a\\nb\\nc\ufffdd"'
    long = "x\\" * 9_000  # 18,000 characters, every other one escaped
    pieces = quote(long)
    assert pieces.count('" + "') == 3
    v = View("w", 1, [committed("cr\rx", "t"), committed("crx", "t"),
                      committed("nul\x00", "t"), committed("long", long)], [])
    dot = to_dot(v)
    parses(dot)
    assert len({line.split(" [")[0] for line in dot.splitlines()
                if line.startswith('  "') and " [label=" in line}) == 4  # four nodes


def test_hostile_names_cannot_break_the_dot_text() -> None:
    evil = 'x" ]; "injected" [label="gotcha'
    v = View(evil, 1, [committed(evil, evil + "\\l\n{<>|}"), wildcard(evil, [evil])],
             [ViewEdge(evil, f"?:{evil}", provisional=True)])
    dot = to_dot(v)
    parses(dot)
    assert '"injected" [' not in dot
    assert dot.count(" -> ") == 1
    svg = subprocess.run(["dot", "-Tplain"], input=dot.encode(), check=True,
                         capture_output=True, timeout=60).stdout.decode()
    assert svg.count("\nnode ") == 2


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["svg", "png", "dot", "json"])
def test_render_writes_each_format(tmp_path: Path, fmt: str) -> None:
    v = grammar_view()
    path = render(v, tmp_path / f"view.{fmt}")
    data = path.read_bytes()
    assert data
    if fmt == "svg":
        assert b"<svg" in data
        assert "M ×0..∞".encode() in data  # noqa: RUF001
    elif fmt == "png":
        assert data.startswith(b"\x89PNG")
    elif fmt == "dot":
        assert data.decode() == to_dot(v)
    else:
        assert json.loads(data) == v.to_json()


def test_render_takes_a_json_document_and_an_explicit_format(tmp_path: Path) -> None:
    v = grammar_view()
    path = render(v.to_json(), tmp_path / "view.txt", format="dot")
    assert path.read_text() == to_dot(v)


def test_render_refuses_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render(grammar_view(), tmp_path / "view.gif")


def test_without_graphviz_a_picture_is_a_clear_error_and_the_demo_falls_back_to_dot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on it
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz"):
        render(grammar_view(), tmp_path / "view.svg")
    assert not (tmp_path / "view.svg").exists()
    drawn = demo._draw(grammar_view().to_json(), tmp_path / "demo")
    assert (drawn.name, drawn.read_text()) == ("demo.dot", to_dot(grammar_view()))


def test_a_record_shape_is_drawn_as_a_box(tmp_path: Path) -> None:
    """A record parses its label for fields: a label with | or { (the user's, or
    the view's own) made Graphviz refuse the whole picture."""
    plan = Plan("w")
    diff = PlanDiff(None, (NodeSpec("a", "t", attrs={"shape": "Mrecord", "label": "in|{out"}),))
    assert plan.apply(diff).ok
    assert 'shape="box"' in line_of(to_dot(view(plan)), "a")
    render(view(plan), tmp_path / "view.svg")  # dot accepts it
    assert (tmp_path / "view.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))


def test_cosmetic_attributes_and_cache_marks_are_drawn() -> None:
    plan = Plan("w")
    diff = PlanDiff(None, (NodeSpec("a", "t", attrs={"color": "blue", "label": "hello"}),
                           NodeSpec("b", "t")),
                    (EdgeSpec("a", "b", attrs={"label": "then", "color": "purple"}),))
    assert plan.apply(diff).ok
    assert plan.apply(PlanDiff(None, attrs=(AttrChange("cached", True, node="b"),))).ok
    dot = to_dot(view(plan))
    assert 'color="blue"' in dot
    assert "hello" in dot
    assert 'label="then"' in dot
    assert 'color="purple"' in dot
    assert "from cache" in dot
    edge = view(plan).to_json()["edges"][0]
    assert edge["attrs"] == {"label": "then", "color": "purple"}
