"""The plan: one uniform graph of task instances, changed only by diffs.

Nodes are task instances; an edge ``a -> b`` means *b runs after a*. There are
no special node kinds: a map is a node that creates many nodes, a branch is a
node that creates one of several. Every change is a :class:`PlanDiff`, which
:meth:`Plan.apply` validates and applies atomically or rejects whole with a
:class:`Rejection` that says why.

The plan is deterministic and does no I/O; time never enters it. It is
mutable for speed: validating and applying a diff costs O(size of the diff),
never O(size of the plan), so the workflow's size does not tax each task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from plait.protocol import restart
from plait.protocol.diff import (
    AttrChange,
    EdgeSpec,
    NodeSpec,
    NodeState,
    PlanDiff,
    Rejection,
)
from plait.protocol.promises import Bound, Pending, Promise, ShapeTracker, Tracker
from plait.protocol.staging import Region, Staging

__all__ = ["Node", "Outcome", "Plan"]

TERMINAL = frozenset({NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED})
STARTED = TERMINAL | {NodeState.RUNNING, NodeState.SUSPENDED}
LIVE_PROPOSER = frozenset({NodeState.RUNNING, NodeState.SUSPENDED})

_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.PENDING: frozenset({NodeState.READY, NodeState.CANCELLED}),
    NodeState.READY: frozenset({NodeState.RUNNING, NodeState.PENDING, NodeState.CANCELLED}),
    NodeState.RUNNING: frozenset(
        {NodeState.SUSPENDED, NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED,
         NodeState.READY}
    ),
    NodeState.SUSPENDED: frozenset(
        {NodeState.READY, NodeState.RUNNING, NodeState.FAILED, NodeState.CANCELLED}
    ),
}


class Node:
    """One task instance. Mutable: its state changes, its identity never does."""

    __slots__ = (
        "attempt", "attrs", "base_attempt", "children", "creator", "error", "id", "inputs", "key",
        "output", "preds", "rank", "region", "regions", "retired", "scope_parent", "spec", "state",
        "succs", "superseded", "task", "trackers", "unclaimed", "waiting",
    )

    def __init__(self, spec: NodeSpec, creator: Node | None, rank: int) -> None:
        self.spec = spec
        self.rank = rank  # creation order
        self.id = spec.id
        self.task = spec.task
        self.inputs = spec.inputs
        self.key = spec.key
        self.attrs: dict[str, Any] = dict(spec.attrs)
        self.creator = creator
        self.state = NodeState.PENDING
        self.attempt = 1
        # The first attempt of the node's current run: an operator's restart (or a
        # revival) starts a run whose retries count afresh under the task's policy.
        self.base_attempt = 1
        self.output: Any = None
        self.error: str | None = None
        self.preds: list[str] = []
        self.succs: list[str] = []
        self.children: list[str] = []
        self.trackers: list[Tracker] = []
        # The creator's counting promises as the attempt that made (or last re-proposed)
        # this node left them: they judge what this line creates while it is history.
        self.retired: list[Tracker] = []
        self.waiting = 0
        # Regions this node lies inside (Shape placeholders of its ancestors), and its own.
        self.regions: tuple[Region, ...] = ()
        self.region: Region | None = None
        # Nearest ancestor that may carry promises: skips finished, promise-less ones.
        self.scope_parent: Node | None = creator
        self.superseded = False  # history of a restarted creator, until re-proposed
        self.unclaimed = False  # made by an earlier attempt of its creator, not (yet) re-proposed

    @property
    def live(self) -> bool:
        return self.state not in TERMINAL

    @property
    def child_regions(self) -> tuple[Region, ...]:
        """The Shape regions a node it creates lies inside: the ones it is in, and
        its own."""
        return self.regions + ((self.region,) if self.region else ())

    @property
    def tries(self) -> int:
        """Attempts in the current run, this one included (what retry policies count)."""
        return self.attempt - self.base_attempt + 1

    def __repr__(self) -> str:
        return f"Node({self.id!r}, {self.task!r}, {self.state.value})"


@dataclass
class Outcome:
    """What a diff or a state change did: which nodes became ready (or stopped
    being ready), and any promise broken on the way."""

    rejection: Rejection | None = None
    ready: list[str] = field(default_factory=list)
    unready: list[str] = field(default_factory=list)
    violations: list[Rejection] = field(default_factory=list)
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.rejection is None and not self.violations


class Plan:
    """A workflow's graph, its promises and its placeholders."""

    def __init__(self, workflow_id: str = "") -> None:
        self.workflow_id = workflow_id
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str], EdgeSpec] = {}
        self.order: list[str] = []  # creation order, for stable views
        self.seq = 0  # number of diffs applied
        self.live_count = 0
        self.has_history = False  # some attempt was left behind (retry, restart)
        self.violations: list[Rejection] = []
        self.rejected: list[tuple[Rejection, PlanDiff]] = []

    # --- queries ------------------------------------------------------------

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def in_force(self, node: Node) -> Iterator[Tracker]:
        """Every tracker whose scope holds ``node``: its own and its ancestors'."""
        current: Node | None = node
        while current is not None:
            yield from current.trackers
            current = self._next_scope(current)

    def _next_scope(self, node: Node) -> Node | None:
        # Path compression: a finished ancestor without promises can never gain one.
        parent = node.scope_parent
        while parent is not None and not parent.trackers and not parent.live:
            parent = parent.scope_parent
        node.scope_parent = parent
        return parent

    def bound(self, node: Node) -> Bound:
        """The tightest statement the promises in force make about ``node``'s future
        creations; the view draws a ``?`` wildcard from it."""
        tasks: frozenset[str] | None = None
        count: int | None = None
        trackers = list(self.in_force(node))
        earlier: set[int] = set()
        if self.has_history:
            # A line an owner's retry left behind is judged by that attempt's trackers
            # (see _for_history). The view draws no placeholder of theirs: a Shape
            # among them bounds nothing here (saying less never lies).
            judged = self._for_history(node, trackers)
            earlier = {id(t) for t in judged} - {id(t) for t in trackers}
            trackers = judged
        for tracker in trackers:
            b = tracker.bound()
            if b.shaped and id(tracker) in earlier:
                continue
            if b.closed or b.shaped:
                return b
            if b.tasks is not None:
                tasks = b.tasks if tasks is None else tasks & b.tasks
            # A live owner may yet be retried, and a retry counts afresh: its budget
            # bounds one attempt, not what may still appear.
            if b.count is not None and not self.nodes[tracker.owner].live:
                count = b.count if count is None else min(count, b.count)
        if count == 0 or tasks == frozenset():
            return Bound(closed=True)
        return Bound(tasks=tasks, count=count)

    def limits(self, node_id: str) -> list[tuple[str, int]]:
        """MaxParallel limits binding a node, as (key, n); the dispatcher enforces them."""
        node = self.nodes[node_id]
        found = []
        labels = node.attrs.get("labels")
        labels = labels if isinstance(labels, list | tuple) else ()  # stored before checks
        for tracker in self.in_force(node.creator) if node.creator else ():
            promise = tracker.promise
            if promise.schedules:
                label = getattr(promise, "label", None)
                if label is None or label in labels:
                    key = f"{self.workflow_id}:{tracker.owner}:{promise}"
                    found.append((key, int(getattr(promise, "n", 0))))
        return found

    # --- diffs --------------------------------------------------------------

    def apply(self, diff: PlanDiff, *, stored: bool = False) -> Outcome:
        """Validate ``diff`` and apply it whole, or reject it whole. ``stored``: a diff
        folded from the events, applied when it was recorded: checks added since
        for what a proposer may send do not refuse it again, nor does a promise
        judged differently now (the workflow must rebuild as it ran)."""
        staging = Staging(self, diff, stored=stored)
        rejection = staging.validate()
        if rejection is None:
            rejection = self._check_promises(staging)
            if stored and rejection is not None and rejection.kind == "violation":
                rejection = None  # its trackers stay as they were; the nodes are applied
        if rejection is not None:
            self.rejected.append((rejection, diff))
            if rejection.kind == "violation":
                self.violations.append(rejection)
            return Outcome(rejection=rejection)
        if staging.is_empty():
            return Outcome(duplicate=True)
        return self._commit(staging)

    def _check_promises(self, staging: Staging) -> Rejection | None:
        pending: list[Pending] = []
        try:
            rejection = self._ask_trackers(staging, pending)
        except BaseException:
            for change in reversed(pending):
                change.abort()
            raise
        if rejection is None:
            for change in pending:
                change.commit()
        else:
            for change in reversed(pending):
                change.abort()
        return rejection

    def _ask_trackers(self, staging: Staging, pending: list[Pending]) -> Rejection | None:
        proposer = self.nodes.get(staging.diff.proposer or "")
        trackers = list(self.in_force(proposer)) if proposer is not None else []
        if proposer is not None and self.has_history:
            trackers = self._for_history(proposer, trackers)
        asked = [(t, staging.scoped_for(t)) for t in trackers]
        asked += [(t, staging.edges_only()) for t in staging.outside_shapes(trackers)]
        for tracker, staged in asked:
            if not (staged.new_nodes or staged.new_edges):
                continue
            verdict = tracker.check(staged)
            if isinstance(verdict, str):
                return staging.violation(tracker, verdict)
            if verdict is not None:
                pending.append(verdict)
        for owner, tracker in staging.new_trackers:
            verdict = staging.adopt(owner, tracker)
            if isinstance(verdict, str):
                return staging.violation(tracker, verdict)
            if verdict is not None:
                pending.append(verdict)
        return None

    def _commit(self, staging: Staging) -> Outcome:
        out = Outcome()
        for node in staging.revived:
            restart.revive(self, node, out)
        for node in staging.claimed:
            node.unclaimed = False
        for spec in staging.new_node_specs:
            self._add_node(spec)
        for owner, tracker in staging.new_trackers:
            self._attach(self.nodes[owner], tracker)
        for edge in staging.new_edge_specs:
            self._add_edge(edge, out)
        for node in (*staging.revived, *(self.nodes[s.id] for s in staging.new_node_specs)):
            if node.waiting == 0 and node.state is NodeState.PENDING:
                node.state = NodeState.READY
                out.ready.append(node.id)
        for change in staging.diff.attrs:
            self._set_attr(change)
        self.seq += 1
        return out

    def _add_node(self, spec: NodeSpec) -> None:
        creator = self.nodes[spec.creator] if spec.creator is not None else None
        node = Node(spec, creator, len(self.order))
        if creator is not None:
            creator.children.append(node.id)
            node.regions = creator.child_regions
        for region in node.regions:
            region.live += 1
        self.live_count += 1
        self.nodes[node.id] = node
        self.order.append(node.id)

    def _attach(self, node: Node, tracker: Tracker) -> None:
        node.trackers.append(tracker)
        if not isinstance(tracker, ShapeTracker):
            return
        if node.region is None:
            region = Region(node.id)
            node.region = region
            below = self.descendants(node)
            region.live = node.live + sum(1 for n in below if n.live)
            for n in below:
                n.regions = (*n.regions, region)
        node.region.trackers.append(tracker)

    def descendants(self, node: Node) -> list[Node]:
        """``node``'s descendants by lineage, in creation order."""
        found: list[Node] = []
        stack = [self.nodes[c] for c in node.children]
        while stack:
            current = stack.pop()
            found.append(current)
            stack.extend(self.nodes[c] for c in current.children)
        found.sort(key=lambda n: n.rank)
        return found

    def _add_edge(self, edge: EdgeSpec, out: Outcome) -> None:
        src, dst = self.nodes[edge.src], self.nodes[edge.dst]
        self.edges[(edge.src, edge.dst)] = edge
        src.succs.append(dst.id)
        dst.preds.append(src.id)
        if not self.satisfied(src, dst):
            dst.waiting += 1
            if dst.state is NodeState.READY:
                dst.state = NodeState.PENDING
                out.unready.append(dst.id)

    def satisfied(self, src: Node, dst: Node) -> bool:
        """Whether ``src`` no longer holds ``dst`` back; registers ``dst`` to be
        released by ``src``'s region when it is ``src``'s placeholder that holds it."""
        if src.state is not NodeState.SUCCEEDED:
            return False
        region = src.region
        if region is None or region.closed or region in dst.regions:
            return True
        region.waiters[dst.id] = None  # at most once: a restart counts its waits anew
        return False

    def _set_attr(self, change: AttrChange) -> None:
        if change.edge is not None:
            edge = self.edges[change.edge]
            self.edges[change.edge] = edge.with_attr(change.key, change.value)
        elif change.node is not None:
            self.nodes[change.node].attrs[change.key] = change.value

    # --- state changes -------------------------------------------------------

    def set_state(
        self, node_id: str, state: NodeState, *, output: Any = None, error: str | None = None
    ) -> Outcome:
        """Move a node along its life cycle; returns the nodes this made ready."""
        node = self.nodes[node_id]
        if state not in _TRANSITIONS.get(node.state, frozenset()):
            raise ValueError(f"{node_id}: cannot go from {node.state.value} to {state.value}")
        out = Outcome()
        was_live = node.live
        if state is NodeState.READY and node.state is NodeState.RUNNING:
            self.new_attempt(node)  # a retry; resuming a suspended node keeps its attempt
        node.state = state
        node.output = output if state is NodeState.SUCCEEDED else node.output
        node.error = error if state is NodeState.FAILED else node.error
        if state is NodeState.SUCCEEDED:
            for succ in node.succs:
                self._release_if(node, self.nodes[succ], out)
        if was_live and not node.live:
            self.live_count -= 1
            self._leave_regions(node, out)
        return out

    def _release_if(self, src: Node, dst: Node, out: Outcome) -> None:
        if self.satisfied(src, dst):
            self._release(dst, out)

    def _release(self, dst: Node, out: Outcome) -> None:
        dst.waiting -= 1
        if dst.waiting == 0 and dst.state is NodeState.PENDING:
            dst.state = NodeState.READY
            out.ready.append(dst.id)

    def _for_history(self, proposer: Node, trackers: list[Tracker]) -> list[Tracker]:
        """What a line left behind by an owner's new attempt still creates belongs to
        the attempt that made the line: the owner's counting promises judge it as that
        attempt left them (the renewed ones will count the line if it is reclaimed)."""
        owners = {t.owner for t in trackers if t.counts_nodes}
        if not owners:
            return trackers  # only counting promises judge a line by its attempt
        past = self._history_lines(proposer, owners)
        if not past:
            return trackers
        chosen: list[Tracker] = []
        for tracker in trackers:
            line = past.get(tracker.owner) if tracker.counts_nodes else None
            if line is not None:
                chosen.extend(t for t in line.retired if t.promise == tracker.promise)
            else:
                chosen.append(tracker)
        return chosen

    def _history_lines(self, node: Node, owners: set[str]) -> dict[str, Node]:
        """Which of ``owners`` a new attempt of left ``node``'s line behind as history,
        each with its child on the line (the node that attempt's promises were
        counting). The walk up the line ends at the last of them: above it no owner
        matters (a deep line of creators costs no more than its owners' depth)."""
        lines: dict[str, Node] = {}
        left = owners - {node.id}  # its own promises count what it creates now
        current: Node | None = node
        while left and current is not None and current.creator is not None:
            creator = current.creator.id
            if creator in left:
                left.discard(creator)
                if current.unclaimed or current.superseded:
                    lines[creator] = current
            current = current.creator
        return lines

    def new_attempt(self, node: Node) -> None:
        """``node`` runs again as a new attempt, which may take another path: what the
        earlier attempt created is history until re-proposed, and the promises that
        count what the node creates start counting afresh."""
        node.attempt += 1
        self.has_history = self.has_history or bool(node.children)
        retired = [t for t in node.trackers if t.counts_nodes]
        for child_id in node.children:
            child = self.nodes[child_id]
            # A child already unclaimed belongs to an earlier attempt, which keeps
            # judging its line: the attempt ending now never counted it.
            if not child.unclaimed:
                child.unclaimed = True
                child.retired = retired
        node.trackers = [t.renew() for t in node.trackers]
        if node.region is not None:
            node.region.trackers = [t for t in node.trackers if isinstance(t, ShapeTracker)]
            node.region.faulted = False

    def _leave_regions(self, node: Node, out: Outcome) -> None:
        own = (node.region,) if node.region else ()
        faulted = node.state is not NodeState.SUCCEEDED
        for region in (*node.regions, *own):
            region.faulted = region.faulted or faulted
            region.live -= 1
            if region.live == 0:
                self._close(region, out)

    def _close(self, region: Region, out: Outcome) -> None:
        region.closed = True
        owner = self.nodes[region.owner]
        # A region cut short by a failure or a cancel is not judged: an honest
        # workflow that fails is a failure, not a broken promise.
        if owner.state is NodeState.SUCCEEDED and not region.faulted:
            for tracker in region.trackers:
                reason = tracker.matcher.complete()
                if reason is not None:
                    violation = Rejection.broken(tracker, reason, proposer=owner.id)
                    self.violations.append(violation)
                    out.violations.append(violation)
        for waiter in region.waiters:
            self._release(self.nodes[waiter], out)
        region.waiters.clear()

    def restart(self, node_id: str, *, operator: bool = False) -> Outcome:
        """Run ``node_id`` and everything downstream of it again (see :mod:`restart`).
        An ``operator``'s restart is also refused when it would wait for ever."""
        out = Outcome()
        out.rejection = (restart.blocked(self, node_id) if operator else None) \
            or restart.restart(self, node_id, out)
        return out

    def cancel(self) -> list[str]:
        """Cancel every live node; returns those that had started (to be stopped)."""
        started = []
        out = Outcome()
        for node_id in self.order:
            node = self.nodes[node_id]
            if node.live:
                if node.state in STARTED:
                    started.append(node_id)
                node.state = NodeState.CANCELLED
                self.live_count -= 1
                self._leave_regions(node, out)
        return started

    def is_settled(self) -> bool:
        """No node is live: the workflow has nothing left to do."""
        return self.live_count == 0

    def promises_of(self, node_id: str) -> list[Promise]:
        return [t.promise for t in self.nodes[node_id].trackers]
