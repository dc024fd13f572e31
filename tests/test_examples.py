"""Every example, end to end through real Flow, supervisor and worker processes.

Each test checks the workflow's result, its final graph, and (where it is the
point of the example) the as-of-now view at registration, before anything ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e
import pytest

from examples import random_map, subgraph, weekly_email
from plait.client import Run
from plait.demo import EXAMPLE_MODULES
from plait.errors import PromiseViolation, TaskFailed
from plait.protocol.render import to_dot
from plait.testing import Cluster, wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with e2e.cluster(EXAMPLE_MODULES, workers=2) as c:
        yield c


def finish(cluster: Cluster, target: Any, *args: Any, **kwargs: Any) -> tuple[Run, Any]:
    run = cluster.client.submit(target, *args, **kwargs)
    return run, run.result(timeout=e2e.RESULT_TIMEOUT)


def at_registration(run: Run) -> dict[str, Any]:
    """The view right after the first diff: the plan before anything ran."""
    first = next(e["seq"] for e in run.history() if e["type"] == "diff")
    return run.graph(at=first, unfold=True)


def placeholders(graph: dict[str, Any]) -> list[dict[str, Any]]:
    """Provisional nodes that stand for a Shape's residue (not ``?`` wildcards)."""
    return [n for n in graph["nodes"] if n["provisional"] and n.get("kind") == "placeholder"]


def provisional_tasks(graph: dict[str, Any]) -> list[str]:
    return sorted(n["task"] for n in placeholders(graph))


def states(run: Run, node: str, state: str) -> list[dict[str, Any]]:
    return [e for e in run.history()
            if e["type"] == "state" and e["node"] == node and e["state"] == state]


def seq_of(run: Run, node: str, state: str) -> int:
    return int(states(run, node, state)[0]["seq"])


def test_static_dag_is_known_before_it_runs(cluster: Cluster) -> None:
    run, output = finish(cluster, "examples.static:pipeline")
    dag = {("start", "1"), ("start", "2"), ("2", "end")}
    before_nodes, before_edges = e2e.committed(at_registration(run))
    assert set(before_nodes) == {"start", "1", "2", "end"}
    assert before_edges == dag
    assert [n for n in at_registration(run)["nodes"] if n["provisional"]] == []
    nodes, edges = e2e.committed(run.graph(unfold=True))
    assert {n: s for n, (_, s, _) in nodes.items()} == dict.fromkeys(
        ["start", "1", "2", "end"], "succeeded")
    assert edges == dag
    assert output == {"1": 10, "end": "end"}
    assert seq_of(run, "end", "running") > seq_of(run, "2", "succeeded")


@pytest.mark.parametrize(("p_heads", "side"), [(1.0, "heads"), (0.0, "tails")])
def test_branching_ends_as_one_of_two_dags(cluster: Cluster, p_heads: float, side: str) -> None:
    run, output = finish(cluster, "examples.branching:coin", p_heads)
    assert output == side
    assert provisional_tasks(at_registration(run)) == ["heads", "tails"]
    nodes, edges = e2e.committed(run.graph(unfold=True))
    assert nodes == {"coin": ("coin", "succeeded", None), "coin.1": (side, "succeeded", "coin")}
    assert edges == {("coin", "coin.1")}


def test_branching_at_random(cluster: Cluster) -> None:
    run, output = finish(cluster, "examples.branching:coin")
    nodes, _ = e2e.committed(run.graph(unfold=True))
    assert output in ("heads", "tails")
    assert sorted(task for task, _, _ in nodes.values()) == sorted(["coin", output])


@pytest.mark.parametrize("copies", [0, 3])
def test_random_map_is_a_then_m_star_then_b(cluster: Cluster, copies: int) -> None:
    run, output = finish(cluster, random_map.build(copies))
    assert output == f"A -> M x{copies} -> B"
    (placeholder,) = placeholders(at_registration(run))
    assert (placeholder["task"], placeholder["bounds"]) == ("mapped", {"min": 0, "max": None})
    nodes, edges = e2e.committed(run.graph(unfold=True))
    ms = sorted(n for n, (task, _, _) in nodes.items() if task == "mapped")
    assert ms == [f"A.{i}" for i in range(1, copies + 1)]
    assert all(nodes[m] == ("mapped", "succeeded", "A") for m in ms)
    assert ("A", "B") in edges
    b_starts = seq_of(run, "B", "running")
    assert all(seq_of(run, m, "succeeded") < b_starts for m in ms)


def test_random_map_at_random(cluster: Cluster) -> None:
    run, output = finish(cluster, "examples.random_map:workflow")
    nodes, _ = e2e.committed(run.graph(unfold=True))
    copies = sum(1 for task, _, _ in nodes.values() if task == "mapped")
    assert output == f"A -> M x{copies} -> B"


def test_map_reduce_returns_a_collection_and_its_sum(cluster: Cluster) -> None:
    run, output = finish(cluster, "examples.map_reduce:map_reduce", [1, 2, 3, 4])
    assert output == {"squares": [1, 4, 9, 16], "total": 30}
    nodes, edges = e2e.committed(run.graph(unfold=True))
    squares = sorted(n for n, (task, _, _) in nodes.items() if task == "square")
    (total,) = [n for n, (task, _, _) in nodes.items() if task == "total"]
    assert len(squares) == 4
    assert {(s, total) for s in squares} <= edges


@pytest.mark.parametrize(("prefer", "tasks"), [("NM", ("N", "M")), ("JK", ("J", "K"))])
def test_subgraph_is_one_of_two_shapes(cluster: Cluster, prefer: str,
                                       tasks: tuple[str, str]) -> None:
    run, _ = finish(cluster, subgraph.build(prefer))
    assert provisional_tasks(at_registration(run)) == ["J", "K", "M", "N"]
    nodes, edges = e2e.committed(run.graph(unfold=True))
    assert {n: t for n, (t, _, _) in nodes.items()} == {
        "A": "prepare", "X": "choose", "B": "finish", "X.1": tasks[0], "X.2": tasks[1]}
    assert {("A", "X"), ("X", "B"), ("X.1", "X.2")} <= edges
    assert seq_of(run, "B", "running") > seq_of(run, "X.2", "succeeded")


def test_broken_promise_terminates_the_workflow_in_red(cluster: Cluster) -> None:
    run = cluster.client.submit("examples.broken_promise:liar")
    with pytest.raises(PromiseViolation) as caught:
        run.result(timeout=e2e.RESULT_TIMEOUT)
    assert (caught.value.owner, caught.value.proposer) == ("liar", "liar")
    assert run.status() == "violated"
    assert [e["type"] for e in run.history()].count("violation") == 1
    graph = run.graph()
    assert graph["violations"]
    nodes, _ = e2e.committed(graph)
    assert "exfiltrate" not in {task for task, _, _ in nodes.values()}
    assert "#d32f2f" in to_dot(graph)  # red


def _attempts(run: Run) -> dict[str, int]:
    """How many attempts of each node started (a resumed wait is not a new one)."""
    started: dict[str, set[int]] = {}
    for e in run.history():
        if e["type"] == "state" and e["state"] == "running":
            started.setdefault(e["node"], set()).add(e["attempt"])
    return {node: len(attempts) for node, attempts in started.items()}


def test_weekly_email_retries_until_it_succeeds(cluster: Cluster, tmp_path: Path) -> None:
    seed, outbox = 3, str(tmp_path / "outbox")
    assert weekly_email.fails(seed, 1, 0.75)
    assert not weekly_email.fails(seed, 2, 0.75)
    run, output = finish(cluster, "examples.weekly_email:weekly_email", seed=seed,
                         outbox=outbox)
    assert output == 5
    assert weekly_email.sent(outbox) == dict.fromkeys(weekly_email.ORGS[:5], 1)  # once each
    attempts = _attempts(run)
    assert attempts["weekly_email"] == 2  # the workflow failed once, then succeeded
    assert attempts["weekly_email.1"] == 1  # the organisations were not fetched again
    emails = {f"weekly_email.{i}": org for i, org in enumerate(weekly_email.ORGS[:5], start=2)}
    for node, org in emails.items():
        assert attempts[node] == (2 if len(org) % 2 == 0 else 1), org
        assert len(states(run, node, "succeeded")) == 1


def test_weekly_email_fails_when_every_attempt_fails(cluster: Cluster) -> None:
    seed = 0
    assert all(weekly_email.fails(seed, n, 0.75) for n in range(1, 6))
    run = cluster.client.submit("examples.weekly_email:weekly_email", seed=seed, orgs=2)
    with pytest.raises(TaskFailed) as caught:
        run.result(timeout=e2e.RESULT_TIMEOUT)
    assert caught.value.cause == "ZeroDivisionError"
    assert _attempts(run)["weekly_email"] == 5


def test_checkout_s_retry_reuses_its_committed_steps(cluster: Cluster) -> None:
    run, output = finish(cluster, "examples.checkout:checkout", "order-7", 25)
    assert output == ["order-7/stock", "order-7/paid-25", "order-7/courier"]
    assert _attempts(run)["checkout"] == 2
    commits = [(e["attempt"], [v["value"]["fn"] for v in e["values"] if v["kind"] == "step"])
               for e in run.history() if e["type"] == "recorded"]
    # Each step that ran was committed on its own; the retry got reserve and charge
    # back without running them, and they rode along with book's commit.
    assert commits == [(1, ["reserve"]), (1, ["charge"]), (2, ["reserve", "charge", "book"])]
    nodes, _ = e2e.committed(run.graph(unfold=True))
    assert list(nodes) == ["checkout"]  # steps are no nodes


def test_reminder_sleeps_durably_then_reminds(cluster: Cluster) -> None:
    run, output = finish(cluster, "examples.reminder:remind", "stretch", 0.5)
    assert output.startswith("reminder: stretch (after ")
    nodes, _ = e2e.committed(run.graph(unfold=True))
    assert nodes == {"remind": ("remind", "succeeded", None),
                     "remind.1": ("send_reminder", "succeeded", "remind")}
    assert [e["type"] for e in run.history()].count("timer") == 1
    slept = states(run, "remind", "suspended")[0]["wait"]
    assert slept["resident"] is False  # the sleep held no worker


def test_approval_waits_for_a_signal_without_a_process(cluster: Cluster) -> None:
    run = cluster.client.submit("examples.approval:publish", "release notes")
    wait_for(lambda: run.query() == {"step": "waiting for approval", "title": "release notes"},
             e2e.RESULT_TIMEOUT)
    waiting = wait_for(lambda: [e["wait"] for e in states(run, "publish", "suspended")
                                if e["wait"].get("signal")], e2e.RESULT_TIMEOUT)[0]
    assert (waiting["signal"], waiting["resident"]) == ("approve", False)  # no worker holds it
    run.signal("approve", {"by": "ana", "ok": True})
    assert run.result(timeout=e2e.RESULT_TIMEOUT) == "released 'release notes', approved by ana"
    assert run.query() == {"step": "releasing", "by": "ana"}
    nodes, _ = e2e.committed(run.graph(unfold=True))
    assert sorted(task for task, _, _ in nodes.values()) == ["draft", "publish", "release"]
    assert len(states(run, "publish.1", "running")) == 1  # the draft was written once
