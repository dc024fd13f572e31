"""Restarting a node and everything downstream of it, keeping history.

``restart(plan, n)`` takes the closure of ``n`` by edges and by lineage. A node
in it that some restarted node created is *superseded*: it becomes history
(cancelled, attempt kept) because its creator will run again and decide anew
whether to create it. If the creator's new attempt re-proposes it (same id,
same task and inputs) it is *revived* as a new attempt; if not, it stays as
the earlier attempt's record. Every other node of the closure is reset to
pending as a new attempt. Identities never vanish, so the as-of-now view keeps
telling the truth across a restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.protocol.diff import NodeState, Rejection

if TYPE_CHECKING:
    from plait.protocol.plan import Node, Outcome, Plan
    from plait.protocol.staging import Region

_BUSY = frozenset({NodeState.RUNNING, NodeState.SUSPENDED})
_UNSUCCESSFUL = frozenset({NodeState.FAILED, NodeState.CANCELLED})


def closure(plan: Plan, start: Node) -> list[Node]:
    """``start`` and every node after it by edges, below it by lineage, or after a
    placeholder it belongs to (a region's owner's successors outside the region
    wait for the region), in creation order."""
    seen = {start.id}
    stack = [start]
    while stack:
        node = stack.pop()
        for nid in (*node.succs, *node.children, *_after_regions(plan, node)):
            if nid not in seen:
                seen.add(nid)
                stack.append(plan.nodes[nid])
    return sorted((plan.nodes[n] for n in seen), key=lambda n: n.rank)


def _after_regions(plan: Plan, node: Node) -> list[str]:
    found = []
    for region in node.regions:
        for succ in plan.nodes[region.owner].succs:
            if region not in plan.nodes[succ].regions:
                found.append(succ)
    return found


def restart(plan: Plan, node_id: str, out: Outcome) -> Rejection | None:
    """Restart ``node_id`` and its downstream; fills ``out.ready`` / ``out.unready``."""
    nodes = closure(plan, plan.nodes[node_id])
    busy = [n.id for n in nodes if n.state in _BUSY]
    if busy:
        return Rejection("plan", f"cannot restart {node_id}: {', '.join(busy[:5])} still "
                                 f"running; cancel or wait first", None)
    members = {n.id for n in nodes}
    reset = [n for n in nodes if n.id == node_id or not _created_within(n, members)]
    resetting = {n.id for n in reset}
    for node in nodes:
        if node.id in resetting:
            _reset(plan, node)
        else:
            _supersede(plan, node, out)
    for node in reset:
        node.waiting = sum(1 for pred in node.preds if _holds(plan, plan.nodes[pred], node))
        if node.waiting == 0:
            node.state = NodeState.READY
            out.ready.append(node.id)
    return None


def blocked(plan: Plan, node_id: str) -> Rejection | None:
    """Why restarting ``node_id`` would hang, if it would: a node it resets runs
    after a node outside the restart that failed or was cancelled, which nothing
    runs again. Asked before an operator's restart only: a restart already stored
    is folded as it was applied."""
    nodes = closure(plan, plan.nodes[node_id])
    members = {n.id for n in nodes}
    creator = plan.nodes[node_id].creator
    while creator is not None:
        # The creator's outcome stays: the workflow would run the node again and end
        # as it did, with the creator's old error.
        if creator.state in _UNSUCCESSFUL and not creator.superseded:
            ended = "failed" if creator.state is NodeState.FAILED else "was cancelled"
            return Rejection("plan", f"cannot restart {node_id}: {creator.id}, which created "
                                     f"it, {ended}; restart {creator.id} instead", None)
        creator = creator.creator
    for node in nodes:
        if node.id != node_id and _created_within(node, members):
            continue  # superseded, not reset
        for pred_id in node.preds:
            pred = plan.nodes[pred_id]
            if pred_id not in members and not pred.superseded and pred.state in _UNSUCCESSFUL:
                ended = "failed" if pred.state is NodeState.FAILED else "was cancelled"
                return Rejection("plan", f"cannot restart {node_id}: {node.id} runs after "
                                         f"{pred_id}, which {ended}; restart {pred_id} (or a "
                                         f"node upstream of it) instead", None)
    return None


def _created_within(node: Node, members: set[str]) -> bool:
    creator = node.creator
    while creator is not None:
        if creator.id in members:
            return True
        creator = creator.creator
    return False


def _reset(plan: Plan, node: Node) -> None:
    if not node.live:
        plan.live_count += 1
        for region in _regions(node):
            region.live += 1
            region.closed = False
            region.faulted = False
    node.state = NodeState.PENDING
    plan.new_attempt(node)
    node.base_attempt = node.attempt
    node.output = None
    node.error = None
    node.superseded = False


def _supersede(plan: Plan, node: Node, out: Outcome) -> None:
    if node.live:
        plan.live_count -= 1
        for region in _regions(node):
            region.live -= 1  # never to zero here: the restarted owner is live again
        if node.state is NodeState.READY:
            out.unready.append(node.id)
        node.state = NodeState.CANCELLED
    node.superseded = True


def revive(plan: Plan, node: Node, out: Outcome) -> None:
    """A superseded node re-proposed by its creator's new attempt runs again."""
    _reset(plan, node)
    node.unclaimed = False  # its creator proposed it again
    node.scope_parent = node.creator  # its creator may make new promises this time
    node.waiting = sum(1 for pred in node.preds if _holds(plan, plan.nodes[pred], node))
    for succ_id in node.succs:
        succ = plan.nodes[succ_id]
        if succ.state in (NodeState.PENDING, NodeState.READY) and not succ.superseded:
            succ.waiting += 1
            if succ.state is NodeState.READY:
                succ.state = NodeState.PENDING
                out.unready.append(succ.id)


def _holds(plan: Plan, pred: Node, node: Node) -> bool:
    """Whether ``pred`` holds ``node`` back; superseded history holds nothing."""
    return not pred.superseded and not plan.satisfied(pred, node)


def _regions(node: Node) -> tuple[Region, ...]:
    return (*node.regions, *((node.region,) if node.region else ()))
