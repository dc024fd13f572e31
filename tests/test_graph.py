"""Graph (static workflows) and registration diffs."""

from __future__ import annotations

from pathlib import Path

import pytest
import tasks_sample
from tasks_sample import add, double, fan_out, leaf

from plait.errors import PlaitError, PlanError
from plait.graph import Graph, registration
from plait.protocol.diff import EdgeSpec, NodeState, PlanDiff
from plait.protocol.plan import Plan
from plait.protocol.promises import MaxNodes, NoNewEdges, NoNewNodes
from plait.supervisor.daemon import import_tasks
from plait.task import InvalidArguments


def test_node_ids_are_keys_or_task_names_with_repeats() -> None:
    g = Graph("ids")
    refs = [g.add(add, 1, 1), g.add(add, 2, 2), g.add(double, 3, key="three"), g.add(add, 3, 3)]
    assert [r.id for r in refs] == ["add", "add#2", "three", "add#3"]
    with pytest.raises(PlanError, match="key 'three' is used twice"):
        g.add(double, 4, key="three")


def test_refs_are_data_edges_and_after_is_runs_after() -> None:
    g = Graph("edges")
    a = g.add(add, 1, 2)
    b = g.add(double, 5, after=[a])
    c = g.add(add, a, b, label="sum")
    assert g.edges == [EdgeSpec("add", "sample.double"),
                       EdgeSpec("add", "add#2", data=True),
                       EdgeSpec("sample.double", "add#2", data=True)]
    assert g.nodes[2].inputs == {"args": [{"$ref": "add"}, {"$ref": "sample.double"}],
                                 "kwargs": {}}
    assert g.nodes[2].attrs == {"label": "sum"}
    assert c.task == "add"
    assert g.sinks() == ["add#2"]
    assert g.root == "edges"  # no node: Flow takes the sinks' outputs
    same = Graph("add")
    same.add(add, 1, 1)
    assert same.root == "add#graph"


def test_after_takes_one_node_as_well_as_several() -> None:
    g = Graph("after")
    load = g.add(add, 1, 2, key="load")
    g.add(double, 5, after=load)
    g.add(double, 6, after="load")  # an id: not "l", "o", "a", "d"
    assert g.edges == [EdgeSpec("load", "sample.double"), EdgeSpec("load", "sample.double#2")]


def test_refs_must_belong_to_the_graph() -> None:
    g, other = Graph("g"), Graph("other")
    foreign = other.add(add, 1, 1)
    with pytest.raises(PlanError, match="not a node of this graph"):
        g.add(double, 1, after=[foreign])
    with pytest.raises(PlanError, match="not a node of this graph"):
        g.add(add, foreign, 1)
    g.add(add, 1, 1)  # now g has a node "add" too: the foreign ref still does not count
    with pytest.raises(PlanError, match="not a node of this graph"):
        g.add(add, foreign, 1)
    with pytest.raises(PlanError, match="not a node of this graph"):
        g.add(add, 1, 1, after=[foreign])
    with pytest.raises(InvalidArguments):
        g.add(add, "x", 1)


def test_static_graph_promises_no_changes_on_every_node() -> None:
    g = Graph("frozen", static=True)
    g.add(leaf, "a")
    g.add(fan_out, 2, promises=[MaxNodes(3)])
    assert g.promises == [
        ("leaf", NoNewNodes()), ("leaf", NoNewEdges()),
        ("fan_out", MaxNodes(10)), ("fan_out", MaxNodes(3)),
        ("fan_out", NoNewNodes()), ("fan_out", NoNewEdges())]


def test_registration_of_a_task() -> None:
    name, root, diff = registration(add, (2, 3), {})
    assert (name, root) == ("add", "add")
    (node,) = diff.nodes
    assert (node.id, node.task, node.creator, dict(node.inputs)) == (
        "add", "add", None, {"args": [2, 3], "kwargs": {}})
    assert diff.proposer is None
    assert diff.edges == ()
    _, _, diff = registration(leaf, ("x",))
    assert diff.promises == (("leaf", NoNewNodes()),)
    with pytest.raises(InvalidArguments, match="valid integer"):
        registration(add, ("two", 3))


def test_registration_by_module_attr_string() -> None:
    mod = tasks_sample.__name__
    assert registration(f"{mod}:add", (1, 2))[:2] == ("add", "add")
    name, root, diff = registration(f"{mod}:diamond")
    assert (name, root) == ("seed_001", "seed_001")
    assert [n.id for n in diff.nodes] == ["start", "1", "2", "end"]


@pytest.mark.parametrize(("target", "match"), [
    ("no_such_module_xyz:main", "cannot import module 'no_such_module_xyz'"),
    ("tasks_sample:missing", "has no 'missing'"),
    ("tasks_sample:not_a_task", "neither a task"),
    ("tasks_sample", "expected 'module:attr'"),
])
def test_registration_errors_are_clear(target: str, match: str) -> None:
    with pytest.raises(PlaitError, match=match) as raised:
        registration(target.replace("tasks_sample", tasks_sample.__name__))
    assert "task.py" not in str(raised.value)  # no location inside plait


@pytest.mark.parametrize(("source", "match"), [
    ("def broken(:\n", r"SyntaxError: .*\(.*broken_at_import_\w+\.py, line 1\)"),
    ("x = 1\nundefined_name\n", r"NameError: name 'undefined_name' is not defined "
                                 r"\(.*broken_at_import_\w+\.py, line 2\)"),
], ids=["syntax", "name"])
def test_a_module_that_fails_at_import_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, match: str) -> None:
    """Not only ImportError: whatever the module raises says what and where."""
    name = f"broken_at_import_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PlaitError, match=match):
        registration(f"{name}:main")
    with pytest.raises(PlaitError, match=match):
        import_tasks([name])


def test_a_graph_takes_no_submission_arguments() -> None:
    with pytest.raises(PlaitError, match="takes no arguments"):
        registration(tasks_sample.diamond, (1,))
    with pytest.raises(PlaitError, match="no nodes"):
        registration(Graph("empty"))


def test_registration_diff_applies_whole_to_a_plan() -> None:
    _, _, diff = registration(tasks_sample.seed_001())
    wire = PlanDiff.from_dict(diff.to_dict())
    assert wire == diff
    plan = Plan("wf")
    outcome = plan.apply(wire)
    assert outcome.ok
    assert outcome.ready == ["start"]
    assert plan.nodes["end"].state is NodeState.PENDING
    assert set(plan.edges) == {("start", "1"), ("start", "2"), ("1", "end"), ("2", "end")}
