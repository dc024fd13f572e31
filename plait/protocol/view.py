"""The as-of-now view of a plan: what is committed, and what may still appear.

A view is the plan's committed nodes and edges plus *provisional* elements for
every place the graph may still grow: a Shape placeholder's residual expression
(``M x0..inf``, narrowing as copies appear) and a ``?`` wildcard successor for
every live node whose future creations no Shape describes (labelled or counted
when ``OnlyNodes`` or ``MaxNodes`` bound them). The view never lies: whatever
the workflow still creates fits one of its provisional elements (DESIGN.md
section 3). Repeated siblings fold into one ``task xN`` node unless unfolded.

:class:`View` is also the JSON document the Flow sends to clients; building
one costs O(nodes + edges) of the plan, with small constants.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from plait.protocol.diff import NodeState, PlanDiff, Rejection
from plait.protocol.shape import Any as AnyShape
from plait.protocol.shape import Expr, Loop, OneOf, Par, Repeat, Seq, Task

if TYPE_CHECKING:
    from plait.protocol.plan import Node, Plan
    from plait.protocol.shape_match import ShapeMatcher
    from plait.protocol.staging import Region

__all__ = ["FOLD_THRESHOLD", "PROVISIONAL", "View", "ViewEdge", "ViewNode", "view"]

PROVISIONAL = "provisional"
FOLD_THRESHOLD = 8
TIMES = "\u00d7"  # folded ids read "A.0..×20"  # noqa: RUF003
REJECTED_SHOWN = 20  # nodes and edges kept per rejected proposal

EdgeKind = Literal["edge", "lineage", "data"]
ProvisionalKind = Literal["wildcard", "placeholder"]

# The state a folded node shows: the one a person most needs to see.
_URGENCY = {
    s: i for i, s in enumerate((
        NodeState.RUNNING, NodeState.SUSPENDED, NodeState.FAILED, NodeState.READY,
        NodeState.PENDING, NodeState.CANCELLED, NodeState.SUCCEEDED,
    ))
}
_NO_IDS: frozenset[str] = frozenset()


@dataclass(slots=True)
class ViewNode:
    """One node of the view: committed, folded (``members``) or provisional."""

    id: str
    task: str | None
    state: str
    parent: str | None = None
    provisional: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    kind: ProvisionalKind | None = None
    tasks: list[str] | None = None  # a wildcard's allowed tasks; None: any task
    bounds: tuple[int, int | None] | None = None  # provisional: how many may appear
    members: list[str] | None = None  # folded: the committed nodes it stands for

    @property
    def count(self) -> int:
        return len(self.members) if self.members is not None else 1

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "task": self.task, "state": self.state, "parent": self.parent,
            "provisional": self.provisional, "attrs": dict(self.attrs),
        }
        if self.provisional:
            lo, hi = self.bounds or (0, None)
            d["kind"] = self.kind
            d["bounds"] = {"min": lo, "max": hi}
            if self.kind == "wildcard":
                d["tasks"] = None if self.tasks is None else list(self.tasks)
        if self.members is not None:
            d["count"] = len(self.members)
            d["members"] = list(self.members)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ViewNode:
        bounds = d.get("bounds")
        tasks = d.get("tasks")
        members = d.get("members")
        return cls(
            id=str(d["id"]), task=d.get("task"), state=str(d["state"]),
            parent=d.get("parent"), provisional=bool(d.get("provisional")),
            attrs=dict(d.get("attrs") or {}), kind=d.get("kind"),
            tasks=None if tasks is None else [str(t) for t in tasks],
            bounds=None if bounds is None else (int(bounds["min"]), bounds.get("max")),
            members=None if members is None else [str(m) for m in members],
        )


@dataclass(frozen=True, slots=True)
class ViewEdge:
    """``src -> dst``: runs-after (``edge``/``data``) or who created whom (``lineage``)."""

    src: str
    dst: str
    provisional: bool = False
    kind: EdgeKind = "edge"
    attrs: Mapping[str, Any] = field(default_factory=dict)  # cosmetic: color, label

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "provisional": self.provisional,
                "kind": self.kind, "attrs": dict(self.attrs)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ViewEdge:
        return cls(str(d["src"]), str(d["dst"]), bool(d.get("provisional")),
                   d.get("kind", "edge"), dict(d.get("attrs") or {}))


@dataclass(slots=True)
class View:
    """A snapshot of a plan as of ``seq``: the contract between plan, Flow and clients.

    ``rejected`` lists refused proposals (``{"rejection", "nodes", "edges"}``): they
    never entered the plan, but a person debugging a violation wants to see them.
    """

    workflow_id: str
    seq: int
    nodes: list[ViewNode] = field(default_factory=list)
    edges: list[ViewEdge] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def node(self, node_id: str) -> ViewNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def committed(self) -> list[ViewNode]:
        return [n for n in self.nodes if not n.provisional]

    def provisional(self) -> list[ViewNode]:
        return [n for n in self.nodes if n.provisional]

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id, "seq": self.seq,
            "nodes": [n.to_json() for n in self.nodes],
            "edges": [e.to_json() for e in self.edges],
            "violations": [dict(v) for v in self.violations],
            "rejected": [dict(r) for r in self.rejected],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> View:
        """Rebuild a view from its JSON document (as a client receives it)."""
        return cls(
            workflow_id=str(d.get("workflow_id", "")), seq=int(d.get("seq", 0)),
            nodes=[ViewNode.from_json(n) for n in d.get("nodes") or ()],
            edges=[ViewEdge.from_json(e) for e in d.get("edges") or ()],
            violations=[dict(v) for v in d.get("violations") or ()],
            rejected=[dict(r) for r in d.get("rejected") or ()],
        )


def view(plan: Plan, unfold: bool = False, fold_threshold: int = FOLD_THRESHOLD) -> View:
    """The as-of-now view of ``plan``; ``unfold`` shows every node on its own."""
    marks = _marks(plan)
    fold = {} if unfold else _fold(plan, fold_threshold, marks.keys())
    builder = _Builder(plan, fold, marks)
    builder.committed()
    builder.placeholders()
    builder.wildcards()
    return builder.result()


# --- marking rejections ----------------------------------------------------------


def _marks(plan: Plan) -> dict[str, dict[str, str]]:
    """Attributes that flag the nodes whose proposals broke a promise or were refused."""
    marks: dict[str, dict[str, str]] = {}
    for rejection in plan.violations:
        if rejection.proposer in plan.nodes:
            marks.setdefault(rejection.proposer, {})["violation"] = rejection.message()
    for rejection, _ in plan.rejected:
        if rejection.kind != "violation" and rejection.proposer in plan.nodes:
            marks.setdefault(rejection.proposer, {})["rejected"] = rejection.message()
    return marks


def _rejected(plan: Plan) -> list[dict[str, Any]]:
    return [_rejected_entry(rejection, diff) for rejection, diff in plan.rejected]


def _rejected_entry(rejection: Rejection, diff: PlanDiff) -> dict[str, Any]:
    return {
        "rejection": rejection.to_dict(),
        "nodes": [{"id": n.id, "task": n.task, "parent": n.creator}
                  for n in diff.nodes[:REJECTED_SHOWN]],
        "edges": [{"src": e.src, "dst": e.dst} for e in diff.edges[:REJECTED_SHOWN]],
    }


# --- folding -----------------------------------------------------------------------


def _shown_attrs(attrs: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), repr(v)) for k, v in attrs.items()))


def _fold(plan: Plan, threshold: int, marked: Iterable[str]) -> dict[str, list[Node]]:
    """Node id -> its fold group, for groups of more than ``threshold`` siblings
    that share creator, task, predecessors and successors.

    Nodes carrying promises, placeholders or marks stay on their own: they say
    something their siblings do not.
    """
    skip = set(marked)
    groups: dict[tuple[Any, ...], list[Node]] = {}
    for node in plan.nodes.values():
        if node.creator is None or node.trackers or node.region is not None or node.id in skip:
            continue
        key = (node.creator.id, node.task,
               frozenset(node.preds) if node.preds else _NO_IDS,
               frozenset(node.succs) if node.succs else _NO_IDS,
               # What the view shows of a node on its own: a colour, a label, cached,
               # a retry. Siblings alike in it still fold (a map's shared labels).
               _shown_attrs(node.attrs) if node.attrs else (), node.attempt,
               # An earlier attempt's child may still gain children under that
               # attempt's promises: it folds only with that attempt's others (their
               # bound is not a claimed sibling's, nor another attempt's).
               id(node.retired) if node.unclaimed else None)
        members = groups.get(key)
        if members is None:
            groups[key] = [node]
        else:
            members.append(node)
    return {m.id: members for members in groups.values() if len(members) > threshold
            for m in members}


def _folded_node(members: list[Node], parent: str | None) -> ViewNode:
    states: dict[str, int] = {}
    for m in members:
        states[m.state.value] = states.get(m.state.value, 0) + 1
    state = min((NodeState(s) for s in states), key=_URGENCY.__getitem__)
    first = members[0]
    return ViewNode(
        id=f"{first.id}..{TIMES}{len(members)}", task=first.task, state=state.value, parent=parent,
        attrs={"states": states}, members=[m.id for m in members],
    )


# --- building ------------------------------------------------------------------------


class _Builder:
    """Accumulates one view; ``shown`` maps a committed node id to its view node id."""

    def __init__(self, plan: Plan, fold: dict[str, list[Node]],
                 marks: dict[str, dict[str, str]]) -> None:
        self.plan = plan
        self.fold = fold
        self.marks = marks
        self.shown: dict[str, str] = {}
        self.nodes: list[ViewNode] = []
        self.edges: dict[tuple[str, str], ViewEdge] = {}
        self.live_groups: dict[str, Node] = {}  # view id -> a live node it stands for

    def result(self) -> View:
        plan = self.plan
        return View(
            workflow_id=plan.workflow_id, seq=plan.seq, nodes=self.nodes,
            edges=list(self.edges.values()),
            violations=[v.to_dict() for v in plan.violations], rejected=_rejected(plan),
        )

    def _edge(self, src: str, dst: str, kind: EdgeKind = "edge",
              provisional: bool = False, attrs: Mapping[str, Any] | None = None) -> None:
        key = (src, dst)
        known = self.edges.get(key)
        if known is None or (known.kind == "edge" and kind == "data"):
            self.edges[key] = ViewEdge(src, dst, provisional, kind, attrs or {})

    # --- committed nodes and edges -----------------------------------------------

    def committed(self) -> None:
        for node in self.plan.nodes.values():
            self._show(node)
        shown = self.shown
        for (src, dst), spec in self.plan.edges.items():
            s, d = shown[src], shown[dst]
            if s != d:
                self._edge(s, d, "data" if spec.data else "edge", attrs=spec.attrs)
        for node in self.plan.nodes.values():
            if node.creator is not None:
                s, d = shown[node.creator.id], shown[node.id]
                if s != d and (s, d) not in self.edges:
                    self.edges[(s, d)] = ViewEdge(s, d, False, "lineage")

    def _show(self, node: Node) -> None:
        parent = None if node.creator is None else self.shown[node.creator.id]
        members = self.fold.get(node.id)
        if members is None:
            self.shown[node.id] = node.id
            self.nodes.append(ViewNode(node.id, node.task, node.state.value, parent,
                                       attrs=self._attrs(node)))
            if node.live:
                self.live_groups[node.id] = node
            return
        if members[0] is node:
            folded = _folded_node(members, parent)
            self.nodes.append(folded)
            for m in members:
                self.shown[m.id] = folded.id
        view_id = self.shown[node.id]
        if node.live and view_id not in self.live_groups:
            self.live_groups[view_id] = node

    def _attrs(self, node: Node) -> dict[str, Any]:
        attrs = dict(node.attrs)
        if node.attempt > 1:
            attrs["attempt"] = node.attempt
        if node.error is not None:
            attrs["error"] = node.error
        if node.trackers:
            attrs["promises"] = [str(t.promise) for t in node.trackers]
        mark = self.marks.get(node.id)
        if mark:
            attrs.update(mark)
        return attrs

    # --- provisional elements -------------------------------------------------------

    def placeholders(self) -> None:
        for node in self.plan.nodes.values():
            region = node.region
            if region is not None and not region.closed:
                self._placeholder(node, region)

    def _placeholder(self, owner: Node, region: Region) -> None:
        exits_to = [self.shown[s] for s in owner.succs
                    if region not in self.plan.nodes[s].regions]
        expander = _Expander(owner.id)
        for tracker in region.trackers:
            residual = tracker.matcher.remaining()
            groups: list[tuple[Expr, Bounds, str | None]] = (
                [] if residual is None else [(residual, (1, 1), None)])
            if _may_start_over(owner, tracker.promise.expr, residual, tracker.matcher):
                groups.append((tracker.promise.expr, (0, None), None))
            for n, (expr, bounds, choice) in enumerate(groups):
                first = len(expander.nodes)
                entries, exits = expander.expand(expr, bounds, choice)
                for leaf_node in expander.nodes[first:] if n else ():
                    leaf_node.attrs["retry"] = True
                expander.edges.extend((owner.id, entry) for entry in entries)
                for leaf in exits:
                    expander.edges.extend((leaf, succ) for succ in exits_to)
        self.nodes.extend(expander.nodes)
        for src, dst in expander.edges:
            self._edge(src, dst, provisional=True)

    def wildcards(self) -> None:
        for view_id, node in self.live_groups.items():
            bound = self.plan.bound(node)
            if bound.closed or bound.shaped:
                continue
            wid = f"?:{view_id}"
            tasks = None if bound.tasks is None else sorted(bound.tasks)
            self.nodes.append(ViewNode(
                wid, None, PROVISIONAL, view_id, provisional=True, kind="wildcard",
                tasks=tasks, bounds=(0, bound.count),
            ))
            self._edge(view_id, wid, provisional=True)


Bounds = tuple[int, int | None]


def _may_start_over(owner: Node, expr: Expr, residual: Expr | None,
                    matcher: ShapeMatcher) -> bool:
    """Whether to show that a retry of the live owner may build the shape afresh:
    only when it has matched something the residual alone would not allow again."""
    if not owner.live or matcher.matched_count == 0:
        return False
    if residual is None:
        return True
    open_ended = isinstance(residual, Repeat | Loop) and residual.max is None
    return not (residual.wildcard or (open_ended and expr.tasks() <= residual.tasks()))


def _times(a: Bounds, b: Bounds) -> Bounds:
    hi = None if a[1] is None or b[1] is None else a[1] * b[1]
    return (a[0] * b[0], hi)


class _Expander:
    """Turns a residual shape into provisional nodes (one per leaf occurrence) and
    the provisional edges among them; ``expand`` returns (entries, exits)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.nodes: list[ViewNode] = []
        self.edges: list[tuple[str, str]] = []
        self._choices = 0

    def _leaf(self, task: str | None, bounds: Bounds, choice: str | None) -> list[str]:
        node_id = f"~:{self.owner}:{len(self.nodes)}"
        attrs: dict[str, Any] = {} if choice is None else {"choice": choice}
        if task is None:
            self.nodes.append(ViewNode(node_id, None, PROVISIONAL, self.owner, True, attrs,
                                       "wildcard", None, (0, None)))
        else:
            self.nodes.append(ViewNode(node_id, task, PROVISIONAL, self.owner, True, attrs,
                                       "placeholder", None, bounds))
        return [node_id]

    def expand(self, expr: Expr, bounds: Bounds,
               choice: str | None) -> tuple[list[str], list[str]]:
        if isinstance(expr, Task):
            leaf = self._leaf(expr.name, bounds, choice)
            return leaf, leaf
        if isinstance(expr, AnyShape):
            leaf = self._leaf(None, bounds, choice)
            return leaf, leaf
        if isinstance(expr, Seq):
            return self._chain(expr.parts, bounds, choice)
        if isinstance(expr, Par):
            return self._side_by_side(expr.parts, bounds, choice)
        if isinstance(expr, OneOf):
            return self._alternatives(expr.parts, bounds, choice)
        if isinstance(expr, Repeat | Loop):
            return self._repeat(expr, bounds, choice)
        raise TypeError(f"cannot draw shape {expr!r}")

    def _chain(self, parts: Iterable[Expr], bounds: Bounds,
               choice: str | None) -> tuple[list[str], list[str]]:
        entries: list[str] = []
        exits: list[str] = []
        for part in parts:
            first, last = self.expand(part, bounds, choice)
            if not first:
                continue
            if not entries:
                entries = first
            self.edges.extend(_pairs(exits, first))
            exits = last
        return entries, exits

    def _side_by_side(self, parts: Iterable[Expr], bounds: Bounds,
                      choice: str | None) -> tuple[list[str], list[str]]:
        entries: list[str] = []
        exits: list[str] = []
        for part in parts:
            first, last = self.expand(part, bounds, choice)
            entries += first
            exits += last
        return entries, exits

    def _alternatives(self, parts: Iterable[Expr], bounds: Bounds,
                      choice: str | None) -> tuple[list[str], list[str]]:
        # Each alternative may not materialise at all: its nodes are at least 0.
        group = f"{self.owner}:{self._choices}"
        self._choices += 1
        entries: list[str] = []
        exits: list[str] = []
        for i, part in enumerate(parts):
            first, last = self.expand(part, (0, bounds[1]), f"{group}:{i}")
            entries += first
            exits += last
        return entries, exits

    def _repeat(self, expr: Repeat | Loop, bounds: Bounds,
                choice: str | None) -> tuple[list[str], list[str]]:
        start = len(self.nodes)
        entries, exits = self.expand(expr.part, _times(bounds, (expr.min, expr.max)), choice)
        if isinstance(expr, Loop):
            for node in self.nodes[start:]:
                node.attrs["loop"] = True
        return entries, exits


def _pairs(srcs: list[str], dsts: list[str]) -> Iterator[tuple[str, str]]:
    return ((s, d) for s in srcs for d in dsts)
