"""Validating a diff against a plan before anything changes (and placeholder regions).

:class:`Staging` checks the plan's structural rules on one diff and presents the
diff's new parts to the promise trackers; only if every check passes does the
plan commit it. All work is proportional to the diff (plus, for an edge into an
existing node, the search of what lies downstream of that node).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from plait.protocol.diff import EdgeSpec, NodeSpec, NodeState, PlanDiff, Rejection
from plait.protocol.promises import ShapeTracker, Staged, Tracker, Verdict

if TYPE_CHECKING:
    from plait.protocol.plan import Node, Plan

_PROPOSING = frozenset({NodeState.RUNNING, NodeState.SUSPENDED})
_NOT_STARTED = frozenset({NodeState.PENDING, NodeState.READY})


class Region:
    """The placeholder of a Shape promise: the promising node and what it creates.

    ``live`` counts the region's nodes that could still add to it; when it falls
    to zero the region closes, must match its shape, and releases the owner's
    successors (``waiters``) that were held back by it.
    """

    __slots__ = ("closed", "faulted", "live", "owner", "trackers", "waiters")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.live = 0
        self.closed = False
        self.faulted = False  # a node of it failed or was cancelled: not judged at close
        self.trackers: list[ShapeTracker] = []
        self.waiters: dict[str, None] = {}  # an ordered set


class _Failed(Exception):
    """Internal: carries a rejection out of the validation steps."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection


class Staging:
    """One diff, checked against one plan; what it would add, once validated."""

    def __init__(self, plan: Plan, diff: PlanDiff, *, stored: bool = False) -> None:
        self.plan = plan
        self.diff = diff
        self.stored = stored  # folded from the events (see Plan.apply)
        self.new_node_specs: list[NodeSpec] = []
        self.new_edge_specs: list[EdgeSpec] = []
        self.new_trackers: list[tuple[str, Tracker]] = []
        self.revived: list[Node] = []  # superseded by a restart, proposed again
        self._back: set[str] | None = None
        self.claimed: list[Node] = []  # an earlier attempt's children, proposed again
        self._specs: dict[str, NodeSpec] = {}
        self._in: dict[str, list[str]] = {}
        self._out: dict[str, list[str]] = {}
        self._nodes_view: list[tuple[str, str]] | None = None
        self._edges_view: list[tuple[str, str]] | None = None

    # --- the Staged protocol, as promise trackers see the diff ---------------

    @property
    def new_nodes(self) -> Sequence[tuple[str, str]]:
        if self._nodes_view is None:  # asked once per tracker: build it once
            self._nodes_view = [(s.id, s.task) for s in self.new_node_specs]
        return self._nodes_view

    @property
    def new_edges(self) -> Sequence[tuple[str, str]]:
        if self._edges_view is None:
            self._edges_view = [(e.src, e.dst) for e in self.new_edge_specs]
        return self._edges_view

    def task_of(self, node_id: str) -> str:
        spec = self._specs.get(node_id)
        return spec.task if spec is not None else self.plan.nodes[node_id].task

    def preds(self, node_id: str) -> Iterable[str]:
        node = self.plan.nodes.get(node_id)
        existing = node.preds if node is not None else []
        return [*existing, *self._in.get(node_id, ())]

    # --- validation -----------------------------------------------------------

    def validate(self) -> Rejection | None:
        try:
            self._check_proposer()
            self._stage_nodes()
            self._stage_edges()
            self._stage_promises()
            self._check_attrs()
        except _Failed as failed:
            return failed.rejection
        return None

    def is_empty(self) -> bool:
        return not (self.new_node_specs or self.new_edge_specs or self.new_trackers
                    or self.diff.attrs or self.revived or self.claimed)

    def _fail(self, reason: str, kind: str = "plan") -> _Failed:
        return _Failed(Rejection(kind, reason, self.diff.proposer,  # type: ignore[arg-type]
                                 diff=self.diff.summary()))

    def violation(self, tracker: Tracker, reason: str) -> Rejection:
        return Rejection.broken(tracker, reason, proposer=self.diff.proposer,
                                diff=self.diff.summary())

    def _exists(self, node_id: str) -> bool:
        return node_id in self.plan.nodes or node_id in self._specs

    def _check_proposer(self) -> None:
        proposer = self.diff.proposer
        if proposer is None:
            return
        node = self.plan.nodes.get(proposer)
        if node is None:
            raise self._fail(f"unknown proposer {proposer!r}")
        if node.state not in _PROPOSING:
            raise self._fail(f"{proposer} is {node.state.value}; only a running task proposes")

    def _stage_nodes(self) -> None:
        proposer = self.diff.proposer
        for spec in self.diff.nodes:
            known = self.plan.nodes.get(spec.id)
            if known is not None:
                if not known.spec.same_as(spec):
                    raise self._fail(
                        f"node {spec.id} was {known.task}{dict(known.inputs)} and is now proposed "
                        f"as {spec.task}{dict(spec.inputs)}", "nondeterminism")
                if known.superseded and spec.creator == proposer:
                    self.revived.append(known)
                elif known.unclaimed and spec.creator == proposer:
                    self.claimed.append(known)
                continue
            if spec.id in self._specs:
                raise self._fail(f"node {spec.id} is proposed twice in one diff")
            if proposer is not None and spec.creator != proposer:
                raise self._fail(f"{proposer} cannot create {spec.id} on behalf of {spec.creator}")
            if spec.creator is not None and not self._exists(spec.creator):
                raise self._fail(f"node {spec.id} names unknown creator {spec.creator}")
            self._check_labels(spec.id, spec.attrs.get("labels"))
            self._specs[spec.id] = spec
            self.new_node_specs.append(spec)

    def _stage_edges(self) -> None:
        # A revived node runs again from pending: an edge into it is an edge into a
        # node that has not started (the commit revives it before adding edges).
        revived = {n.id for n in self.revived}
        for edge in self.diff.edges:
            if edge.key in self.plan.edges or edge.dst in self._out.get(edge.src, ()):
                continue
            for end in (edge.src, edge.dst):
                if not self._exists(end):
                    raise self._fail(f"edge {edge.src} -> {edge.dst} names unknown node {end}")
            dst = self.plan.nodes.get(edge.dst)
            if dst is not None and dst.state not in _NOT_STARTED and dst.id not in revived:
                raise self._fail(f"edge {edge.src} -> {edge.dst}: {edge.dst} has already started")
            if edge.src == edge.dst or self._reaches(edge.dst, edge.src):
                raise self._fail(f"edge {edge.src} -> {edge.dst} would close a cycle")
            self._out.setdefault(edge.src, []).append(edge.dst)
            self._in.setdefault(edge.dst, []).append(edge.src)
            self.new_edge_specs.append(edge)

    def successors(self, node_id: str) -> Iterator[str]:
        node = self.plan.nodes.get(node_id)
        if node is not None:
            yield from node.succs
        yield from self._out.get(node_id, ())

    def _region_exits(self, node_id: str) -> Iterator[str]:
        """What waits for the node without an edge: the successors of the owner of
        an open Shape region it is in (outside that region) wait for it to close."""
        for region in self._regions_of(node_id):
            if not region.closed:
                for succ in self.successors(region.owner):
                    if region not in self._regions_of(succ):
                        yield succ

    def _regions_of(self, node_id: str) -> tuple[Region, ...]:
        node = self.plan.nodes.get(node_id)
        if node is not None:
            return node.regions
        spec = self._specs.get(node_id)
        if spec is None or spec.creator is None:
            return ()
        creator = self.plan.nodes.get(spec.creator)
        if creator is None:
            return self._regions_of(spec.creator)
        return creator.child_regions

    def _reaches(self, start: str, goal: str) -> bool:
        # Started nodes cannot gain predecessors, so a path that matters runs
        # only through nodes downstream of `start`: usually a handful. A region's
        # waiting counts as an edge (else: a node after the region's owner, made a
        # predecessor of a node in the region, and all three wait for ever).
        seen = {start}
        stack = [start]
        while stack:
            node = stack.pop()
            exits = () if self.stored else self._region_exits(node)
            for succ in itertools.chain(self.successors(node), exits):
                if succ == goal:
                    return True
                if succ not in seen:
                    seen.add(succ)
                    stack.append(succ)
        return False

    def _stage_promises(self) -> None:
        proposer = self.diff.proposer
        for owner, promise in self.diff.promises:
            if not self._exists(owner):
                raise self._fail(f"promise {promise} names unknown node {owner}")
            node = self.plan.nodes.get(owner)
            # A task promises for itself and for what it creates (a replay re-proposes
            # promises about children that already exist).
            mine = owner == proposer or owner in self._specs or (
                node is not None and node.creator is not None and node.creator.id == proposer)
            if proposer is not None and not mine:
                raise self._fail(f"{proposer} cannot make a promise for {owner}")
            if node is not None and any(t.promise == promise for t in node.trackers):
                continue
            if any(o == owner and t.promise == promise for o, t in self.new_trackers):
                continue
            if node is not None and not node.live and not self.stored \
                    and node.id not in self._taken_back:
                # Its region would open empty and never close: the promise unjudged,
                # its placeholder drawn for ever, and a node after the owner waiting.
                raise self._fail(f"{owner} has ended: a new promise for it ({promise}) "
                                 "could never be kept or broken")
            self.new_trackers.append((owner, promise.tracker(owner)))

    def _check_labels(self, node_id: str, labels: Any) -> None:
        """``labels`` is what MaxParallel limits read: a list of strings (an int made
        the node's queueing fail, a string matched its substrings)."""
        if labels is not None and not self.stored and not (isinstance(labels, list | tuple)
                                       and all(isinstance(x, str) for x in labels)):
            raise self._fail(f"{node_id}'s labels must be a list of strings, got {labels!r}")

    def _check_attrs(self) -> None:
        for change in self.diff.attrs:
            if change.node is not None and change.key == "labels":
                self._check_labels(change.node, change.value)
            if change.node is not None and not self._exists(change.node):
                raise self._fail(f"attribute change names unknown node {change.node}")
            target = change.node or (change.edge[1] if change.edge else None)
            if target is not None and not self._in_scope(target):
                raise self._fail(f"{self.diff.proposer} cannot change attributes of {target}: "
                                 "a task changes only itself and what it created")
            edge = change.edge
            if (edge is not None and edge not in self.plan.edges
                    and edge[1] not in self._out.get(edge[0], ())):
                raise self._fail(f"attribute change names unknown edge {change.edge}")

    def _in_scope(self, node_id: str) -> bool:
        """Whether the proposer (None: an operator) may touch ``node_id``."""
        proposer = self.diff.proposer
        if proposer is None or node_id in self._specs:
            return True
        node: Node | None = self.plan.nodes[node_id]
        while node is not None:
            if node.id == proposer:
                return True
            node = node.creator
        return False

    # --- which promises see what ----------------------------------------------

    def scoped_for(self, tracker: Tracker) -> Staged:
        """The diff as ``tracker`` sees it. A counting promise renewed for a new attempt
        (of its owner, or of an ancestor's restart) also sees the nodes this diff takes
        back from history, with what they created since, unless it counted them."""
        if not (self.claimed or self.revived) or not tracker.counts_nodes:
            return self
        # In the diff's order: each node taken back, with its branch, where the diff
        # names it, among the diff's new nodes (all taken back first, a Seq whose
        # first part the retry made anew was refused).
        where = {spec.id: i for i, spec in enumerate(self.diff.nodes)}
        placed: list[tuple[int, int, str, str]] = []
        seen: set[str] = set()
        for node in (*self.claimed, *self.revived):
            for k, n in enumerate((node, *self._in_scope_below(node))):
                if n.id not in seen and not tracker.counted(n.id):
                    seen.add(n.id)
                    placed.append((where[node.id], k, n.id, n.task))
        if not placed:
            return self
        placed += [(where[spec.id], 0, spec.id, spec.task) for spec in self.new_node_specs]
        placed.sort(key=lambda p: (p[0], p[1]))
        members = [(node_id, task) for _, _, node_id, task in placed]
        return _Members(self, tracker.owner, members, known=tracker.counted)

    def outside_shapes(self, asked: list[Tracker]) -> list[Tracker]:
        """Shape promises of regions this diff adds edges into from outside their
        scope: an edge between two of a region's nodes changes its shape, whoever adds it."""
        seen = {id(t) for t in asked}
        found: list[Tracker] = []
        for _, dst in self.new_edges:
            node = self.plan.nodes.get(dst)
            for region in node.regions if node is not None else ():
                for tracker in region.trackers:
                    if id(tracker) not in seen:
                        seen.add(id(tracker))
                        found.append(tracker)
        return found

    def edges_only(self) -> Staged:
        return _Members(self, None, [], self.new_edges)

    # --- promises made in this diff -------------------------------------------

    def adopt(self, owner: str, tracker: Tracker) -> Verdict:
        """Let a new promise look at what its scope already holds: the owner's
        existing descendants, and this diff's nodes when the owner proposed it."""
        node = self.plan.nodes.get(owner)
        members: list[tuple[str, str]] = []
        if node is not None:
            members = [(n.id, n.task) for n in self._in_scope_below(node)]
        if owner == self.diff.proposer:
            members += self.new_nodes
        return tracker.adopt(_Members(self, owner, members))

    @property
    def _taken_back(self) -> set[str]:
        """The nodes this diff takes back from history (set once validated)."""
        if self._back is None:
            self._back = {n.id for n in (*self.claimed, *self.revived)}
        return self._back

    def _in_scope_below(self, root: Node) -> list[Node]:
        """``root``'s descendants in scope, in creation order. History (an earlier
        attempt's child, a superseded one) is out of it with everything it created,
        unless this diff takes it back: then it and its branch are in again. (Judged
        node by node, a history child's own children were counted, and a child
        taken back in this very diff was not.)"""
        back = self._taken_back
        found: list[Node] = []
        stack = [root]
        while stack:
            for child_id in stack.pop().children:
                child = self.plan.nodes[child_id]
                if (child.unclaimed or child.superseded) and child.id not in back:
                    continue
                found.append(child)
                stack.append(child)
        return _in_order(found)


class _Members:
    """A Staged view of chosen nodes as if new, with the edges among them (and the
    owner), or of just some edges."""

    def __init__(self, staging: Staging, owner: str | None, members: list[tuple[str, str]],
                 edges: Sequence[tuple[str, str]] | None = None,
                 known: Callable[[str], bool] = lambda node_id: False) -> None:
        self._staging = staging
        ids = {m[0] for m in members} | ({owner} if owner else set())
        self.new_nodes: Sequence[tuple[str, str]] = members
        # Edges from nodes the tracker already counted matter too (a replay reclaims
        # a chain one diff at a time), and edges to them: a replay may reclaim in
        # another order, and an outsider may have joined two nodes while they were
        # history.
        if edges is None:
            seen = dict.fromkeys(
                [*((p, m) for m, _ in members for p in staging.preds(m) if p in ids or known(p)),
                 *((m, s) for m, _ in members for s in staging.successors(m)
                   if s not in ids and known(s))])
            # And the diff's own edges among those and the nodes counted before.
            seen.update(dict.fromkeys(e for e in staging.new_edges
                                      if all(end in ids or known(end) for end in e)))
            edges = list(seen)
        self.new_edges: Sequence[tuple[str, str]] = edges

    def task_of(self, node_id: str) -> str:
        return self._staging.task_of(node_id)

    def preds(self, node_id: str) -> Iterable[str]:
        return self._staging.preds(node_id)


def _in_order(nodes: list[Node]) -> list[Node]:
    """Creation order, but never a node before one it runs after: a node a retry took
    back keeps its first rank, older than the retry's new node it now follows (its
    match came first, and an honest Seq was refused)."""
    ids = {n.id for n in nodes}
    waiting = {n.id: sum(1 for p in n.preds if p in ids) for n in nodes}
    ready = [(n.rank, n.id, n) for n in nodes if not waiting[n.id]]
    heapq.heapify(ready)
    ordered: list[Node] = []
    by_id = {n.id: n for n in nodes}
    while ready:
        _, _, node = heapq.heappop(ready)
        ordered.append(node)
        for succ in node.succs:
            if succ in waiting:
                waiting[succ] -= 1
                if not waiting[succ]:
                    heapq.heappush(ready, (by_id[succ].rank, succ, by_id[succ]))
    return ordered if len(ordered) == len(nodes) else sorted(nodes, key=lambda n: n.rank)
