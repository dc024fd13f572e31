"""Helpers shared by the end-to-end tests: paths, clusters, and a feed mirror.

Not a conftest: the tests import it explicitly, so that what each test relies
on is visible at the top of the file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from plait.protocol.messages import FeedEvent
from plait.testing import Cluster

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for _path in (str(ROOT), str(TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)  # the client imports examples.* and e2e_tasks too

RESULT_TIMEOUT = 90.0  # generous for a loaded 2-core machine; fast when things work


def cluster(imports: Iterable[str] = ("e2e_tasks",), **kwargs: Any) -> Cluster:
    """A Cluster that can import the examples and the tests' task modules."""
    return Cluster(list(imports), paths=[ROOT, TESTS], cwd=str(ROOT), **kwargs)


def committed(graph: Mapping[str, Any]) -> tuple[dict[str, tuple[Any, ...]], set[tuple[str, str]]]:
    """The real (not provisional) part of a view document: nodes and runs-after/data edges."""
    nodes = {n["id"]: (n["task"], n["state"], n["parent"])
             for n in graph["nodes"] if not n["provisional"]}
    edges = {(e["src"], e["dst"]) for e in graph["edges"]
             if not e["provisional"] and e["kind"] in ("edge", "data")}
    return nodes, edges


class Mirror:
    """What a feed subscriber knows: a snapshot plus every event folded into it."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[Any, ...]] = {}
        self.edges: set[tuple[str, str]] = set()
        self.seqs: list[int] = []
        self.status: str | None = None

    def fold(self, message: FeedEvent) -> None:
        self.seqs.append(message.seq)
        event = message.event
        kind = event["type"]
        if kind == "snapshot":
            self.nodes, self.edges = committed(event["graph"])
        elif kind == "diff":
            for n in event["diff"]["nodes"]:
                self.nodes[n["id"]] = (n["task"], "pending", n["creator"])
            self.edges |= {(e["src"], e["dst"]) for e in event["diff"]["edges"]}
        elif kind == "state":
            task, _, parent = self.nodes[event["node"]]
            self.nodes[event["node"]] = (task, event["state"], parent)
        elif kind == "workflow":
            self.status = event["status"]
