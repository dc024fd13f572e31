"""The incremental Shape matcher: does a promise's region still fit its shape?

Matching (``ShapeMatcher``), for the region R of nodes created in the scope:

* Nodes are placed in creation order. A Seq moves on only when its current part
  is complete and the node's task can start a later part; a OneOf is chosen by
  its first node, a Par part by task, a Repeat copy by the node's predecessors
  (none: a new copy); a Loop starts a copy when the current one is complete.
* Only edges between region nodes count. Edges from or to other nodes (the
  promising node included) are ignored, and other nodes never order region nodes.
* An edge between region nodes must go forward: within one part, into a later Seq
  part or Loop copy; never between Par parts or Repeat copies, never backwards.
* A node with no predecessor in its own Seq part (Loop copy) must, in the diff
  that creates it, have an edge from every sink of the previous non-empty part.
  Among the region's nodes that is what "ordered by an edge or a path" means for
  such a node; a node with a predecessor in its part is ordered through it.
* After each diff R can still be completed; ``complete()`` checks membership.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Protocol, TypeVar

from plait.protocol.shape import (
    Any,
    Expr,
    Loop,
    OneOf,
    Par,
    Repeat,
    Seq,
    Task,
    _Group,
    check_deterministic,
)

__all__ = ["ShapeMatcher", "StagedRegion", "Tentative"]

class StagedRegion(Protocol):
    """One diff, as the plan shows it to a matcher before applying it."""

    @property
    def new_nodes(self) -> Sequence[tuple[str, str]]:
        """(node id, task name) of the nodes joining the region, in creation order."""
        ...

    @property
    def new_edges(self) -> Sequence[tuple[str, str]]:
        """Every edge (src, dst) the diff adds, wherever its ends are."""
        ...

    def preds(self, node_id: str) -> Iterable[str]:
        """A node's predecessors, this diff's edges included."""
        ...



_K = TypeVar("_K")
_V = TypeVar("_V")


class _Misfit(Exception):
    """A node does not fit; a None reason asks for the generic "expected ..." message."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


class _Journal:
    """Applies changes and, when recording, remembers how to undo them.

    check() applies a diff for real, tentatively: the plan then commits it (the
    journal is dropped) or aborts it (the journal undoes it). Reading the
    matcher's own state stays simple, and the cost is that of the diff, never
    of the region.
    """

    def __init__(self, record: bool = True) -> None:
        self._undo: list[Callable[[], object]] | None = [] if record else None

    def _remember(self, undo: Callable[[], object]) -> None:
        if self._undo is not None:
            self._undo.append(undo)

    def assign(self, obj: object, attr: str, value: object) -> None:
        self._remember(partial(setattr, obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def put(self, table: dict[_K, _V], key: _K, value: _V) -> None:
        if key in table:
            self._remember(partial(table.__setitem__, key, table[key]))
        else:
            self._remember(partial(table.pop, key))
        table[key] = value

    def pop(self, table: dict[_K, _V], key: _K) -> None:
        if key in table:
            self._remember(partial(table.__setitem__, key, table.pop(key)))

    def add(self, items: set[str], item: str) -> None:
        if item not in items:
            self._remember(partial(items.discard, item))
            items.add(item)

    def discard(self, items: set[str], item: str) -> None:
        if item in items:
            self._remember(partial(items.add, item))
            items.discard(item)

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()


class _Node:
    """A matched node: its position (the instances from the root down) and how deep
    its deepest successor reaches (it is a sink of every deeper instance)."""

    __slots__ = ("id", "path", "succ_depth", "task")

    def __init__(self, node_id: str, task: str, path: tuple[_Inst, ...]) -> None:
        self.id, self.task, self.path = node_id, task, path
        self.succ_depth = -1

    def inside(self, inst: _Inst) -> bool:
        return len(self.path) > inst.depth and self.path[inst.depth] is inst


class _Ctx:
    """The node being placed, and the path of instances chosen for it so far."""

    __slots__ = ("journal", "node", "path", "preds", "task")

    def __init__(self, journal: _Journal, node: str, task: str, preds: list[_Node]) -> None:
        self.journal, self.node, self.task, self.preds = journal, node, task, preds
        self.path: list[_Inst] = []


class _Inst:
    """One instance of a sub-expression being matched. Instances form a tree; a node's
    path runs from the root to its leaf. Children of a Seq or Loop keep their sinks
    and the previous non-empty sibling, to check the ordering of the next one."""

    __slots__ = ("depth", "expr", "index", "prev", "sinks")

    def __init__(self, expr: Expr, depth: int, index: int, prev: _Inst | None,
                 tracked: bool) -> None:
        self.expr, self.depth, self.index, self.prev = expr, depth, index, prev
        self.sinks: set[str] | None = set() if tracked else None
        self._setup()

    def _setup(self) -> None:
        """Initialise the state of this kind of instance."""

    def sub(self, expr: Expr, index: int, prev: _Inst | None = None) -> _Inst:
        tracked = isinstance(self, _SeqInst | _LoopInst)
        return _INSTANCES[type(expr)](expr, self.depth + 1, index, prev, tracked)

    def place(self, ctx: _Ctx) -> None:
        """Put the node here or below, or raise _Misfit. Changes happen only once the
        recursive call succeeded, so that after a misfit the state is still the one the
        generic "expected ..." message describes."""
        raise NotImplementedError

    def done(self) -> bool:
        """Whether the nodes matched here form a member."""
        raise NotImplementedError

    def full(self) -> bool:
        """Whether no node can be added here any more."""
        raise NotImplementedError

    def residual(self) -> Expr | None:
        """What may still be added here; None when full."""
        raise NotImplementedError


def _combine(kind: type[_Group], items: list[Expr]) -> Expr | None:
    return None if not items else items[0] if len(items) == 1 else kind(*items)


class _TaskInst(_Inst):
    __slots__ = ("node",)
    expr: Task

    def _setup(self) -> None:
        self.node: str | None = None

    def place(self, ctx: _Ctx) -> None:
        ctx.path.append(self)
        if self.node is not None or ctx.task != self.expr.name:
            raise _Misfit()
        ctx.journal.assign(self, "node", ctx.node)

    def done(self) -> bool:
        return self.node is not None

    full = done

    def residual(self) -> Expr | None:
        return None if self.node is not None else self.expr


class _AnyInst(_Inst):
    __slots__ = ()

    def place(self, ctx: _Ctx) -> None:
        ctx.path.append(self)

    def done(self) -> bool:
        return True

    def full(self) -> bool:
        return False

    def residual(self) -> Expr | None:
        return self.expr


class _SeqInst(_Inst):
    __slots__ = ("cur",)
    expr: Seq

    def _setup(self) -> None:
        self.cur: _Inst | None = None

    def place(self, ctx: _Ctx) -> None:
        ctx.path.append(self)
        cur, parts = self.cur, self.expr.parts
        if cur is not None and not cur.done():
            cur.place(ctx)
            return
        for k in range(0 if cur is None else cur.index + 1, len(parts)):
            if ctx.task in parts[k]._info.first:  # determinism: cur cannot take it
                part = self.sub(parts[k], k, prev=cur)
                part.place(ctx)
                ctx.journal.assign(self, "cur", part)
                return
            if not parts[k].nullable:
                break
        if cur is None:
            raise _Misfit()
        cur.place(ctx)

    def _rest(self) -> tuple[Expr, ...]:
        return self.expr.parts[0 if self.cur is None else self.cur.index + 1:]

    def done(self) -> bool:
        return (self.cur is None or self.cur.done()) and all(p.nullable for p in self._rest())

    def full(self) -> bool:
        return (self.cur is None or self.cur.full()) and all(p.empty_only for p in self._rest())

    def residual(self) -> Expr | None:
        if self.cur is None:
            return None if self.expr.empty_only else self.expr
        head = self.cur.residual()
        rest = [part for part in self._rest() if not part.empty_only]
        return _combine(Seq, [head, *rest] if head is not None else rest)


class _ParInst(_Inst):
    __slots__ = ("parts",)
    expr: Par

    def _setup(self) -> None:
        self.parts: dict[int, _Inst] = {}

    def place(self, ctx: _Ctx) -> None:
        ctx.path.append(self)
        k = self.expr.part_for(ctx.task)
        if k is None:
            raise _Misfit()
        part = self.parts.get(k)
        if part is not None:
            part.place(ctx)
            return
        part = self.sub(self.expr.parts[k], k)
        part.place(ctx)
        ctx.journal.put(self.parts, k, part)

    def done(self) -> bool:
        return all(self.parts[k].done() if k in self.parts else part.nullable
                   for k, part in enumerate(self.expr.parts))

    def full(self) -> bool:
        return all(self.parts[k].full() if k in self.parts else part.empty_only
                   for k, part in enumerate(self.expr.parts))

    def residual(self) -> Expr | None:
        if not self.parts:
            return None if self.expr.empty_only else self.expr
        items = [self.parts[k].residual() if k in self.parts else part
                 for k, part in enumerate(self.expr.parts)]
        return _combine(Par, [item for item in items if item and not item.empty_only])


class _OneOfInst(_Inst):
    __slots__ = ("chosen",)
    expr: OneOf

    def _setup(self) -> None:
        self.chosen: _Inst | None = None

    def place(self, ctx: _Ctx) -> None:
        ctx.path.append(self)
        if self.chosen is not None:
            self.chosen.place(ctx)
            return
        for k, alt in enumerate(self.expr.parts):
            if ctx.task in alt._info.first:
                chosen = self.sub(alt, k)
                chosen.place(ctx)
                ctx.journal.assign(self, "chosen", chosen)
                return
        raise _Misfit()

    def done(self) -> bool:
        return self.expr.nullable if self.chosen is None else self.chosen.done()

    def full(self) -> bool:
        return self.expr.empty_only if self.chosen is None else self.chosen.full()

    def residual(self) -> Expr | None:
        if self.chosen is None:
            return None if self.expr.empty_only else self.expr
        return self.chosen.residual()


class _RepeatInst(_Inst):
    """Copies are found through nodes' paths, so only counters and the copies that
    can still grow (`open`, for the residual) are kept: O(1) per node."""

    __slots__ = ("count", "incomplete", "last", "open")
    expr: Repeat

    def _setup(self) -> None:
        self.count = self.incomplete = 0
        self.last: _Inst | None = None
        self.open: dict[int, _Inst] = {}

    def place(self, ctx: _Ctx) -> None:
        ctx.path.append(self)
        copy, linked = self._copy_for(ctx)
        if copy is None:
            self._start_copy(ctx)
            return
        was_done = copy.done()
        try:
            copy.place(ctx)
        except _Misfit as misfit:
            if linked and misfit.reason is None and ctx.task in self.expr.part._info.first:
                raise _Misfit(f"node {ctx.node} (task {ctx.task}) would start a copy of "
                              f"{self.expr} but has a predecessor in another copy; copies "
                              "must not be linked") from None
            raise
        if was_done != copy.done():
            ctx.journal.assign(self, "incomplete", self.incomplete + (1 if was_done else -1))
        if copy.full():
            ctx.journal.pop(self.open, copy.index)

    def _copy_for(self, ctx: _Ctx) -> tuple[_Inst | None, bool]:
        copies = {id(p.path[self.depth + 1]): p.path[self.depth + 1]
                  for p in ctx.preds if p.inside(self)}
        if len(copies) > 1:
            raise _Misfit(f"node {ctx.node} (task {ctx.task}) has predecessors in "
                          f"{len(copies)} copies of {self.expr}; copies must not be linked")
        if copies:  # with one copy at most, there is no other copy to be linked to
            return next(iter(copies.values())), self.expr._many
        single = self.expr.max is not None and self.expr.max <= 1
        return (self.last if single else None), False

    def _start_copy(self, ctx: _Ctx) -> None:
        expr, journal = self.expr, ctx.journal
        if ctx.task not in expr.part._info.first:
            if ctx.task in expr.part._info.tasks:
                raise _Misfit(f"node {ctx.node} (task {ctx.task}) has no predecessor in "
                              f"the copy of {expr} it would continue")
            raise _Misfit()
        if expr.max is not None and self.count >= expr.max:
            raise _Misfit(f"node {ctx.node} (task {ctx.task}) would start copy "
                          f"{self.count + 1} of {expr}, which allows at most {expr.max}")
        copy = self.sub(expr.part, self.count)
        copy.place(ctx)
        journal.assign(self, "count", self.count + 1)
        journal.assign(self, "last", copy)
        if not copy.full():
            journal.put(self.open, copy.index, copy)
        if not copy.done():
            journal.assign(self, "incomplete", self.incomplete + 1)

    def done(self) -> bool:
        enough = self.count >= self.expr.min or self.expr.part.nullable
        return enough and self.incomplete == 0

    def full(self) -> bool:
        return self.expr.max is not None and self.count >= self.expr.max and not self.open

    def residual(self) -> Expr | None:
        counts: dict[Expr, int] = {}
        for k in sorted(self.open):  # the residual of a copy that can grow is never None
            rest = self.open[k].residual()
            if rest is not None:
                counts[rest] = counts.get(rest, 0) + 1
        items = [rest if n == 1 else Repeat(rest, n, n) for rest, n in counts.items()]
        expr = self.expr
        more = None if expr.max is None else expr.max - self.count
        if more != 0:
            items.append(Repeat(expr.part, max(0, expr.min - self.count), more))
        return _combine(Par, items)


class _LoopInst(_Inst):
    __slots__ = ("count", "cur")
    expr: Loop

    def _setup(self) -> None:
        self.count = 0
        self.cur: _Inst | None = None

    def place(self, ctx: _Ctx) -> None:
        ctx.path.append(self)
        expr, cur = self.expr, self.cur
        body = expr.part._info
        starts = ctx.task in body.first
        room = expr.max is None or self.count < expr.max
        if cur is not None and not (cur.done() and starts and room):
            if starts and not room and cur.done() and ctx.task not in body.ext:
                raise _Misfit(f"node {ctx.node} (task {ctx.task}) would start copy "
                              f"{self.count + 1} of {expr}, which allows at most {expr.max}")
            cur.place(ctx)
            return
        if not (starts and room):
            raise _Misfit()
        copy = self.sub(expr.part, self.count, prev=cur)
        copy.place(ctx)
        ctx.journal.assign(self, "cur", copy)
        ctx.journal.assign(self, "count", self.count + 1)

    def done(self) -> bool:
        enough = self.count >= self.expr.min or self.expr.part.nullable
        return enough and (self.cur is None or self.cur.done())

    def full(self) -> bool:
        at_max = self.expr.max is not None and self.count >= self.expr.max
        return at_max and (self.cur is None or self.cur.full())

    def residual(self) -> Expr | None:
        expr = self.expr
        more = None if expr.max is None else expr.max - self.count
        head = None if self.cur is None else self.cur.residual()
        tail = Loop(expr.part, max(0, expr.min - self.count), more) if more != 0 else None
        return _combine(Seq, [item for item in (head, tail) if item is not None])


_INSTANCES: dict[type[Expr], Callable[[Expr, int, int, _Inst | None, bool], _Inst]] = {
    Task: _TaskInst, Any: _AnyInst, Seq: _SeqInst, Par: _ParInst, OneOf: _OneOfInst,
    Repeat: _RepeatInst, Loop: _LoopInst,
}


def _expected(rest: Expr | None) -> str:
    return "nothing more" if rest is None else str(rest._info.first)


class Tentative:
    """A diff the matcher accepted and applied, until committed (call it) or aborted."""

    __slots__ = ("_journal", "_matcher")

    def __init__(self, matcher: ShapeMatcher, journal: _Journal) -> None:
        self._matcher: ShapeMatcher | None = matcher
        self._journal = journal

    def _settle(self) -> ShapeMatcher:
        if self._matcher is None:
            raise RuntimeError("stale change: already committed or aborted")
        matcher, self._matcher = self._matcher, None
        matcher._pending = False
        return matcher

    def __call__(self) -> None:
        self._settle()

    def commit(self) -> None:
        self._settle()

    def abort(self) -> None:
        self._settle()
        self._journal.rollback()


class ShapeMatcher:
    """Checks, diff by diff, that a promise's region grows into a member of its shape.

    `check` costs O(size of the diff): no work grows with the nodes already matched.
    """

    def __init__(self, expr: Expr, owner: str) -> None:
        check_deterministic(expr)
        self.expr, self.owner = expr, owner
        self._root = _INSTANCES[type(expr)](expr, 0, 0, None, False)
        self._nodes: dict[str, _Node] = {}
        self._last: str | None = None
        self._pending = False

    def has(self, node_id: str) -> bool:
        """Whether ``node_id`` was matched into the region."""
        return node_id in self._nodes

    @property
    def matched_count(self) -> int:
        """How many region nodes have been matched."""
        return len(self._nodes)

    def check(self, staged: StagedRegion) -> str | Tentative:
        """A violation reason (the matcher unchanged), or the diff applied tentatively:
        the caller must then call the result (commit) or its ``abort()``, before the
        next check. So the plan checks every promise before committing any."""
        if self._pending:
            raise RuntimeError("check() while an earlier change is neither committed nor aborted")
        journal = _Journal()
        try:
            reason = self._apply(staged, journal)
        except BaseException:
            journal.rollback()
            raise
        if reason is not None:
            journal.rollback()
            return reason
        self._pending = True
        return Tentative(self, journal)

    def complete(self) -> str | None:
        """None if the closed region is a member of the shape, else why not."""
        if self._root.done():
            return None
        after = f" after {self._last}" if self._last else " (nothing matched)"
        return f"region closed incomplete: expected {_expected(self._root.residual())}{after}"

    def remaining(self) -> Expr | None:
        """What may still be added (None: nothing); nullable unless still required."""
        return self._root.residual()

    def _apply(self, staged: StagedRegion, journal: _Journal) -> str | None:
        placed: list[tuple[_Node, list[str]]] = []
        for node_id, task in staged.new_nodes:
            preds = list(staged.preds(node_id))
            reason = self._place(node_id, task, preds, journal)
            if reason is not None:
                return reason
            placed.append((self._nodes[node_id], preds))
        for src, dst in staged.new_edges:
            reason = self._add_edge(src, dst, journal)
            if reason is not None:
                return reason
        for node, preds in placed:  # after all edges: sinks and sources are final
            reason = self._check_order(node, preds)
            if reason is not None:
                return reason
        return None

    def _place(self, node_id: str, task: str, preds: list[str], journal: _Journal) -> str | None:
        if node_id in self._nodes:
            return f"node {node_id} joined the region twice"
        ctx = _Ctx(journal, node_id, task, [self._nodes[p] for p in preds if p in self._nodes])
        try:
            self._root.place(ctx)
        except _Misfit as misfit:
            after = f" after {self._last}" if self._last else ""
            return misfit.reason or (f"node {node_id} (task {task}) does not fit {self.expr}"
                                     f"{after}: expected {_expected(self._root.residual())}")
        node = _Node(node_id, task, tuple(ctx.path))
        journal.put(self._nodes, node_id, node)
        for inst in node.path:
            if inst.sinks is not None:
                journal.add(inst.sinks, node_id)
        journal.assign(self, "_last", task)
        return None

    def _add_edge(self, src: str, dst: str, journal: _Journal) -> str | None:
        u, v = self._nodes.get(src), self._nodes.get(dst)
        if u is None or v is None:
            return None  # an end outside the region: not the shape's business
        if u is v:
            return f"edge {src} -> {dst} is a cycle"
        depth = 0
        while depth + 1 < min(len(u.path), len(v.path)) and u.path[depth + 1] is v.path[depth + 1]:
            depth += 1
        if depth + 1 < len(u.path) and depth + 1 < len(v.path):  # else: inside one Any()
            reason = _edge_problem(u, v, depth)
            if reason is not None:
                return reason
        for k in range(u.succ_depth + 1, depth + 1):  # u stops being a sink down to depth
            sinks = u.path[k].sinks
            if sinks is not None:
                journal.discard(sinks, src)
        if depth > u.succ_depth:
            journal.assign(u, "succ_depth", depth)
        return None

    def _check_order(self, node: _Node, preds: list[str]) -> str | None:
        region = {p for p in preds if p in self._nodes}
        for k in range(len(node.path) - 1):
            part = node.path[k + 1]
            prev = part.prev
            if prev is None or prev.sinks is None:
                continue
            if any(self._nodes[p].inside(part) for p in region):
                continue  # not a source of its part: ordered through that predecessor
            if len(prev.sinks) <= len(region) and prev.sinks <= region:
                continue
            missing = sorted(prev.sinks - region)
            named = ", ".join(f"{m} (task {self._nodes[m].task})" for m in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            return (f"node {node.id} (task {node.task}) starts {part.expr} in "
                    f"{node.path[k].expr} but is not ordered after {named}{more}: it needs "
                    f"an edge from every sink of {prev.expr}")
        return None


def _edge_problem(u: _Node, v: _Node, depth: int) -> str | None:
    inst, a, b = u.path[depth], u.path[depth + 1], v.path[depth + 1]
    edge = f"edge {u.id} -> {v.id} ({u.task} -> {v.task})"
    if isinstance(inst, _SeqInst | _LoopInst):
        return None if a.index < b.index else f"{edge} goes backwards in {inst.expr}"
    if isinstance(inst, _ParInst):
        return f"{edge} links parallel parts of {inst.expr}"
    return f"{edge} links two copies of {inst.expr}"
