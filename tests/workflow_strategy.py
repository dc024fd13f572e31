"""Random workflows over the whole static-to-dynamic spectrum, a driver that plays them
on the pure plan, and the check of the view's truthfulness invariant (DESIGN.md §3).

A :class:`Workflow` is plain data: a registration diff (static nodes, edges and
promises) and, per node id, a :class:`Behaviour`: the diffs its task proposes
when it runs (spawns with edges and promises, promises about itself, handles it
awaits) and how many of its attempts fail first. Node ids are derived with
``child_id(creator, n)`` for the creator's n-th spawn (1-based, as the runtime's
Context counts), so the same program can drive the real runtime: a generic task
looks up its node id and performs the steps through its Context.

A retry may take another path (``Behaviour.paths``: earlier children reclaimed by
id, new ones ``child_id(node, k)@2``), and an operator may restart a finished node
(``Workflow.restarts``) so that it and its downstream run again.

``workflows()`` generates *honest* programs (every promise in force is kept, in
every interleaving, for every attempt) and, with ``breaking=True``, programs that
break exactly one promise at a random step (or, from an outsider node, a region's
shape by an edge, or the plan's attribute scope); :attr:`Workflow.broken` says which.
``play`` runs one on a :class:`Plan` in a random interleaving and records a view
snapshot after every step; ``check_snapshot`` checks one snapshot against the final graph.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from plait.errors import ShapeError
from plait.protocol import shape as sh
from plait.protocol.diff import (
    AttrChange,
    EdgeSpec,
    NodeSpec,
    NodeState,
    PlanDiff,
    Rejection,
    child_id,
)
from plait.protocol.plan import Plan
from plait.protocol.promises import (
    MaxNodes,
    MaxParallel,
    NoEdgesFrom,
    NoEdgesTo,
    NoNewEdges,
    NoNewNodes,
    OnlyEdges,
    OnlyNodes,
    Promise,
    Shape,
)
from plait.protocol.restart import closure
from plait.protocol.view import view

__all__ = [
    "TASKS", "Behaviour", "Break", "Run", "Spawn", "Step", "Workflow", "check_snapshot",
    "examples", "play", "promises", "shape_exprs", "workflows",
]

TASKS = ("a", "b", "c", "d")
FOREIGN = "z"  # a task no honest workflow creates
OUTSIDER = "rx"  # a static node a breaking workflow adds to meddle with others' nodes
MAX_NODES = 24  # keeps one example fast; the spectrum matters more than the size
MAX_DEPTH = 3
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# A retry renews its node's own MaxNodes (and Shape): the generator spends the renewed
# budget. False: a retry spends what is left over all attempts (honest either way).
RENEW_BUDGETS = True


@functools.cache
def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """``st.integers``, cached: the generator draws thousands of them per example."""
    return st.integers(lo, hi)


@functools.cache
def one_of(items: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """``st.sampled_from``, cached."""
    return st.sampled_from(items)


def examples(n: int) -> int:
    """``n`` examples under the ``ci`` hypothesis profile, few under ``dev``."""
    return max(10, n // 20) if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else n


# --- the program: plain data ----------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """One child: its id, task, the nodes it runs after, and promises made about it."""

    id: str
    task: str
    after: tuple[str, ...] = ()
    data: bool = False  # the edges carry data: the child's inputs refer to their sources
    promises: tuple[Promise, ...] = ()

    def spec(self, creator: str) -> NodeSpec:
        refs = [{"$ref": src} for src in self.after] if self.data else []
        return NodeSpec(self.id, self.task, {"args": refs, "kwargs": {}}, {}, creator)


@dataclass(frozen=True)
class Step:
    """One proposal of a running task, then (optionally) awaiting some handles."""

    spawns: tuple[Spawn, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()
    promises: tuple[Promise, ...] = ()  # about the proposer itself
    wait: tuple[str, ...] = ()
    attrs: tuple[AttrChange, ...] = ()

    def diff(self, proposer: str) -> PlanDiff:
        edges = [EdgeSpec(src, s.id, s.data) for s in self.spawns for src in s.after]
        edges += [EdgeSpec(src, dst) for src, dst in self.edges]
        promised = [(proposer, p) for p in self.promises]
        promised += [(s.id, p) for s in self.spawns for p in s.promises]
        return PlanDiff(proposer, tuple(s.spec(proposer) for s in self.spawns), tuple(edges),
                        tuple(promised), self.attrs)


@dataclass(frozen=True)
class Behaviour:
    """What a node's task does: its steps, and after how many steps each failing
    execution fails (then it is retried). Execution k runs ``paths[k - 2]`` (the last
    path for later ones; ``steps`` if there are none): a retry may take another path,
    re-proposing some earlier children (reclaimed) and spawning new ones."""

    steps: tuple[Step, ...] = ()
    failures: tuple[int, ...] = ()
    paths: tuple[tuple[Step, ...], ...] = ()

    def program(self, execution: int) -> tuple[Step, ...]:
        if execution <= 1 or not self.paths:
            return self.steps
        return self.paths[min(execution - 1, len(self.paths)) - 1]

    def every_step(self) -> Iterable[Step]:
        yield from self.steps
        for path in self.paths:
            yield from path


@dataclass(frozen=True)
class Break:
    """The one promise a breaking workflow breaks: ``promise`` (its ``str``) made by
    ``owner``, by ``node``'s step number ``step``, or when the region closes. An
    outsider's break waits until the nodes it ``needs`` exist (and, for an edge into a
    region, until that region exists) and holds ``hold`` back until it is proposed; a
    break of ``kind`` "plan" breaks a rule of the plan, not a promise."""

    node: str
    step: int
    promise: str
    owner: str
    at_close: bool = False
    how: str = ""
    needs: tuple[str, ...] = ()
    hold: tuple[str, ...] = ()
    kind: str = "violation"


@dataclass(frozen=True)
class Workflow:
    registration: PlanDiff
    behaviours: Mapping[str, Behaviour]
    broken: Break | None = None
    cancel_after: int | None = None  # an operator cancels after this many steps
    restarts: tuple[int, ...] = ()  # an operator restarts a finished node at these steps

    def behaviour(self, node_id: str) -> Behaviour:
        return self.behaviours.get(node_id, _IDLE)

    def node_ids(self) -> list[str]:
        """Every node an honest run creates."""
        found = [n.id for n in self.registration.nodes]
        for b in self.behaviours.values():
            found += [s.id for step in b.every_step() for s in step.spawns]
        return list(dict.fromkeys(found))

    def to_dict(self) -> dict[str, Any]:
        def step(s: Step) -> dict[str, Any]:
            return {"spawns": [{"id": c.id, "task": c.task, "after": list(c.after),
                                "data": c.data, "promises": [p.to_dict() for p in c.promises]}
                               for c in s.spawns],
                    "edges": [list(e) for e in s.edges],
                    "promises": [p.to_dict() for p in s.promises], "wait": list(s.wait),
                    "attrs": [a.to_dict() for a in s.attrs]}

        return {
            "registration": self.registration.to_dict(),
            "behaviours": {n: {"steps": [step(s) for s in b.steps],
                               "failures": list(b.failures),
                               "paths": [[step(s) for s in p] for p in b.paths]}
                           for n, b in self.behaviours.items()},
            "broken": None if self.broken is None else vars(self.broken),
            "cancel_after": self.cancel_after,
            "restarts": list(self.restarts),
        }


_IDLE = Behaviour()


# --- promises and shapes as hypothesis strategies ---------------------------------------


def shape_exprs(tasks: Iterable[str] = TASKS, depth: int = 3) -> st.SearchStrategy[sh.Expr]:
    """Small shape expressions (deterministic or not) over ``tasks``, nested at most
    ``depth`` deep."""
    return _exprs(tuple(sorted(set(tasks))), depth)


@st.composite
def _exprs(draw: st.DrawFn, names: tuple[str, ...], depth: int) -> sh.Expr:
    # A hand-rolled recursion: st.recursive throws away draws that grow too big.
    choice = draw(ints(0, 9)) if depth > 0 else 0
    if choice <= 3:
        return sh.Any() if draw(ints(0, 7)) == 7 else sh.Task(draw(one_of(names)))
    if choice <= 7:
        group = (sh.Seq, sh.Par, sh.OneOf, sh.Seq)[choice - 4]
        return group(*(draw(_exprs(names, depth - 1)) for _ in range(draw(ints(1, 3)))))
    low = draw(ints(0, 2))
    high = draw(st.none() | ints(max(low, 1), low + 2))
    return (sh.Repeat, sh.Loop)[choice - 8](draw(_exprs(names, depth - 1)), low, high)


@st.composite
def deterministic_exprs(draw: st.DrawFn, tasks: Iterable[str] = TASKS) -> sh.Expr:
    """A shape expression Shape accepts (falls back to a simple one if the draw clashes)."""
    expr = draw(shape_exprs(tasks))
    try:
        sh.check_deterministic(expr)
    except ShapeError:
        names = sorted(set(tasks))
        expr = sh.Seq(*map(sh.Task, names[: draw(st.integers(1, len(names)))]))
    return expr


def promises() -> st.SearchStrategy[Promise]:
    """Any promise of the catalogue, with random arguments."""
    task = st.sampled_from(TASKS)
    return st.one_of(
        st.just(NoNewNodes()), st.just(NoNewEdges()),
        st.lists(task, min_size=1, max_size=3).map(lambda ts: OnlyNodes(*ts)),
        st.lists(st.tuples(task, task), min_size=1, max_size=3).map(lambda ps: OnlyEdges(*ps)),
        task.map(NoEdgesFrom), task.map(NoEdgesTo),
        st.builds(MaxNodes, st.integers(0, 10), st.none() | task),
        st.builds(MaxParallel, st.integers(1, 10), st.none() | st.sampled_from(["io", "gpu"])),
        deterministic_exprs().map(Shape),
    )


# --- what a generated node may do: the promises in force over its scope ------------------


@dataclass
class _Budget:
    """A MaxNodes in force, shared by its whole scope: generation spends it."""

    left: int
    task: str | None
    owner: str = ""  # whose promise: a retry of the owner renews it


@dataclass(frozen=True)
class _Ctx:
    in_force: tuple[tuple[Promise, str], ...] = ()
    allowed: frozenset[str] | None = None
    budgets: tuple[_Budget, ...] = ()
    no_nodes: bool = False
    no_edges: bool = False
    edge_rules: tuple[Promise, ...] = ()
    depth: int = 0
    in_shape: bool = False

    def bind(self, owner: str, promised: Iterable[Promise]) -> _Ctx:
        ctx = self
        for p in promised:
            ctx = replace(ctx, in_force=(*ctx.in_force, (p, owner)))
            if isinstance(p, NoNewNodes):
                ctx = replace(ctx, no_nodes=True)
            elif isinstance(p, NoNewEdges):
                ctx = replace(ctx, no_edges=True)
            elif isinstance(p, OnlyNodes):
                mine = frozenset(p.tasks)
                ctx = replace(ctx, allowed=mine if ctx.allowed is None else ctx.allowed & mine)
            elif isinstance(p, MaxNodes):
                ctx = replace(ctx, budgets=(*ctx.budgets, _Budget(p.n, p.task, owner)))
            elif isinstance(p, OnlyEdges | NoEdgesFrom | NoEdgesTo):
                ctx = replace(ctx, edge_rules=(*ctx.edge_rules, p))
        return ctx

    def tasks(self) -> list[str]:
        return [t for t in TASKS if self.allowed is None or t in self.allowed]

    def room(self, task: str) -> int:
        """How many more ``task`` nodes the scope may create."""
        if self.no_nodes or (self.allowed is not None and task not in self.allowed):
            return 0
        return min((b.left for b in self.budgets if b.task in (None, task)), default=99)

    def spend(self, task: str) -> None:
        for b in self.budgets:
            if b.task in (None, task):
                b.left -= 1

    def edge_ok(self, src: tuple[str, str], dst: tuple[str, str]) -> bool:
        """Whether the edge (src id, task) -> (dst id, task) keeps every edge promise."""
        return not self.no_edges and all(edge_allowed(p, src, dst) for p in self.edge_rules)


def edge_allowed(p: Promise, src: tuple[str, str], dst: tuple[str, str]) -> bool:
    """The meaning of the edge promises, written independently of promises.py."""
    if isinstance(p, NoNewEdges):
        return False
    if isinstance(p, NoEdgesFrom):
        return p.node not in src
    if isinstance(p, NoEdgesTo):
        return p.node not in dst
    if isinstance(p, OnlyEdges):
        return any(s in src and d in dst for s, d in p.pairs)
    return True


# --- shapes: members, sizes ---------------------------------------------------------------


def nullable(e: sh.Expr) -> bool:
    """Whether the empty DAG is a member (independently of shape.py)."""
    if isinstance(e, sh.Task):
        return False
    if isinstance(e, sh.Any):
        return True
    if isinstance(e, sh.Seq | sh.Par):
        return all(nullable(p) for p in e.parts)
    if isinstance(e, sh.OneOf):
        return any(nullable(p) for p in e.parts)
    assert isinstance(e, sh.Repeat | sh.Loop)
    return e.min == 0 or e.max == 0 or nullable(e.part)


def max_size(e: sh.Expr) -> float:
    """The most nodes a member can have (inf when unbounded)."""
    if isinstance(e, sh.Task):
        return 1
    if isinstance(e, sh.Any):
        return float("inf")
    if isinstance(e, sh.Seq | sh.Par):
        return sum(max_size(p) for p in e.parts)
    if isinstance(e, sh.OneOf):
        return max(max_size(p) for p in e.parts)
    assert isinstance(e, sh.Repeat | sh.Loop)
    body = max_size(e.part)
    if e.max == 0 or body == 0:
        return 0
    return float("inf") if e.max is None else e.max * body


def has_any(e: sh.Expr) -> bool:
    return isinstance(e, sh.Any) or any(has_any(c) for c in e.children())


class _Member:
    """A random member of an expression as a DAG: (task, predecessor indices) in a
    creation order the matcher accepts (topological, part by part)."""

    def __init__(self, draw: st.DrawFn, any_tasks: list[str], cap: int) -> None:
        self.draw = draw
        self.any_tasks = any_tasks
        self.cap = cap
        self.nodes: list[tuple[str, tuple[int, ...]]] = []

    def build(self, e: sh.Expr, preds: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
        """Adds e's nodes after ``preds``; returns (sinks, whether anything was added)."""
        if isinstance(e, sh.Task):
            self.nodes.append((e.name, preds))
            return (len(self.nodes) - 1,), True
        if isinstance(e, sh.Any):
            k = self.draw(ints(0, 2)) if self.any_tasks else 0
            for _ in range(k):
                self.nodes.append((self.draw(one_of(tuple(self.any_tasks))), preds))
            return (tuple(range(len(self.nodes) - k, len(self.nodes))), True) if k else (preds,
                                                                                       False)
        if isinstance(e, sh.OneOf):
            return self.build(self.draw(one_of(e.parts)), preds)
        if isinstance(e, sh.Seq):
            return self._chain(e.parts, preds)
        if isinstance(e, sh.Par):
            return self._side(e.parts, preds)
        assert isinstance(e, sh.Repeat | sh.Loop)
        hi = e.min + 2 if e.max is None else e.max
        if len(self.nodes) >= self.cap:
            hi = e.min
        k = self.draw(ints(e.min, max(e.min, min(hi, e.min + 2))))
        parts = (e.part,) * k
        return self._chain(parts, preds) if isinstance(e, sh.Loop) else self._side(parts, preds)

    def _chain(self, parts: Iterable[sh.Expr],
               preds: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
        cur, added = preds, False
        for part in parts:
            sinks, some = self.build(part, cur)
            if some:
                cur, added = sinks, True
        return cur, added

    def _side(self, parts: Iterable[sh.Expr],
              preds: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
        sinks: tuple[int, ...] = ()
        added = False
        for part in parts:
            s, some = self.build(part, preds)
            if some:
                sinks, added = sinks + s, True
        return (sinks, True) if added else (preds, False)


# --- the generator ----------------------------------------------------------------------------

Member = list[tuple[str, tuple[int, ...]]]


@dataclass(eq=False)
class _Site:
    """A place where a breaking variant may break a promise: the node keeps the steps
    ``keep``, then proposes ``make()`` (or, ``at_close``, just stops creating)."""

    node: str
    keep: tuple[Step, ...]
    promise: Promise | None  # None: a rule of the plan
    owner: str
    make: Callable[[], Step]
    at_close: bool = False
    how: str = ""
    needs: tuple[str, ...] = ()
    hold: tuple[str, ...] = ()


class _Gen:
    """Generates one workflow top-down; budgets are spent as nodes are generated, so
    every interleaving of the finished program keeps every MaxNodes."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.behaviours: dict[str, Behaviour] = {}
        self.spawned: dict[str, int] = {}
        self.total = 0
        self.tasks: dict[str, str] = {}
        self.sites: list[_Site] = []

    def flip(self, p: float = 0.5) -> bool:
        # True on high draws: hypothesis shrinks towards 0, i.e. towards fewer features.
        return self.draw(ints(0, 99)) >= 100 - p * 100

    def new_id(self, creator: str) -> str:
        # 1-based, as the runtime's Context counts its spawns.
        seq = self.spawned.get(creator, 0) + 1
        self.spawned[creator] = seq
        return child_id(creator, seq)

    def failures(self, steps: Iterable[Step] = ()) -> tuple[int, ...]:
        """After how many steps each failing attempt fails (usually none fails)."""
        steps = list(steps)
        if not self.flip(0.15):
            return ()
        return tuple(self.draw(st.lists(ints(0, len(steps)), min_size=1, max_size=2)))

    # --- promises ----------------------------------------------------------------------

    def pick_promises(self, owner: str, ctx: _Ctx, most: int) -> list[Promise]:
        """Up to ``most`` non-Shape promises about ``owner``."""
        kinds = one_of(("NoNewNodes", "NoNewEdges", "OnlyNodes", "OnlyEdges", "NoEdgesFrom",
                        "NoEdgesTo", "MaxNodes", "MaxNodesTask", "MaxParallel"))
        return [self.promise(self.draw(kinds), owner, ctx)
                for _ in range(self.draw(ints(0, most)))]

    def promise(self, kind: str, owner: str, ctx: _Ctx) -> Promise:
        task = one_of(tuple(ctx.tasks()) or TASKS)
        made: dict[str, Callable[[], Promise]] = {
            "NoNewNodes": NoNewNodes,
            "NoNewEdges": NoNewEdges,
            "OnlyNodes": lambda: OnlyNodes(*self.draw(
                st.lists(task, min_size=1, max_size=3, unique=True))),
            "OnlyEdges": lambda: OnlyEdges(*self.draw(st.lists(
                st.tuples(one_of(TASKS), one_of(TASKS)), min_size=1,
                max_size=3))),
            "NoEdgesFrom": lambda: NoEdgesFrom(self.draw(one_of((*TASKS, owner)))),
            "NoEdgesTo": lambda: NoEdgesTo(self.draw(one_of(TASKS))),
            "MaxNodes": lambda: MaxNodes(self.draw(ints(0, 5))),
            "MaxNodesTask": lambda: MaxNodes(self.draw(ints(0, 3)), self.draw(task)),
            "MaxParallel": lambda: MaxParallel(self.draw(ints(1, 3)),
                                               self.draw(st.none() | st.just("io"))),
        }
        return made[kind]()

    # --- nodes -------------------------------------------------------------------------

    def node(self, me: str, task: str, ctx: _Ctx) -> tuple[Promise, ...]:
        """Generates the behaviour of node ``me`` (``ctx`` holds the promises made about it
        so far); returns further promises to make about it as it is created."""
        self.tasks[me] = task
        if ctx.depth < MAX_DEPTH and self.flip(0.3):
            runtime = self.flip(0.4)
            made = self.shaped(me, ctx, runtime)
            if made is not None:
                return () if runtime else (made,)
        if ctx.depth >= MAX_DEPTH or self.total >= MAX_NODES:
            self.behaviours[me] = Behaviour(failures=self.failures())
            return ()
        self.dynamic(me, ctx)
        return ()

    def dynamic(self, me: str, ctx: _Ctx) -> None:
        """A node that spawns children over a few steps, may await them, and may make
        promises about itself at a random step (``announce``)."""
        runtime = self.pick_promises(me, ctx, 2) if self.flip(0.35) else []
        if not runtime and self.flip(0.2):
            self.rerouted(me, ctx)
            return
        n_steps = self.draw(ints(0, 3))
        announce = self.draw(ints(0, n_steps)) if runtime else n_steps + 1
        full = ctx.bind(me, runtime)
        # Before the announcement: the promises bind me only when they are made, but
        # they bind my children whenever those create (conservatively: always).
        before = replace(full, no_nodes=ctx.no_nodes, no_edges=ctx.no_edges,
                         in_force=ctx.in_force)
        waits = self.flip(0.3)
        children: list[str] = []
        steps: list[Step] = []
        for i in range(max(n_steps, announce + 1 if runtime else 0)):
            own = before if i < announce else full
            self.break_sites(me, steps, own if i > announce else before)
            spawns = self.spawns(me, own, full, children, waits) if i < n_steps else ()
            children += [s.id for s in spawns]
            wait = tuple(c for c in children if waits and self.flip(0.5))
            steps.append(Step(spawns, (), tuple(runtime) if i == announce else (), wait))
        self.break_sites(me, steps, full if runtime else before)
        self.behaviours[me] = Behaviour(tuple(steps), self.failures(steps))

    def spawns(self, me: str, own: _Ctx, full: _Ctx, earlier: list[str],
               waits: bool) -> tuple[Spawn, ...]:
        made: list[Spawn] = []
        for _ in range(self.draw(ints(0, 3))):
            # An awaiting parent never orders its children after itself: no deadlock.
            sources = ([] if waits else [me]) + earlier + [s.id for s in made]
            spawn = self.child(me, own, full, lambda: self.new_id(me), sources)
            if spawn is None:
                break
            made.append(spawn)
        return tuple(made)

    def child(self, me: str, own: _Ctx, full: _Ctx, new_id: Callable[[], str],
              sources: list[str]) -> Spawn | None:
        """One new child of ``me`` (and its own program), if the promises leave room."""
        tasks = [t for t in own.tasks() if own.room(t) > 0]
        if not tasks or self.total >= MAX_NODES:
            return None
        task = self.draw(one_of(tuple(tasks)))
        own.spend(task)
        self.total += 1
        cid = new_id()
        after = tuple(s for s in sources if self.flip(0.3)
                      and own.edge_ok((s, self.tasks[s]), (cid, task)))
        # Children obey every promise of mine (``full``), but a break may only
        # target those certainly made before the child can run (``own``).
        child = replace(full, depth=full.depth + 1, in_force=own.in_force)
        promised = tuple(self.pick_promises(cid, child, 2)) if self.flip(0.3) else ()
        extra = self.node(cid, task, child.bind(cid, promised))
        return Spawn(cid, task, after, self.flip(0.5), promised + extra)

    # --- retries that take another path ----------------------------------------------

    def rerouted(self, me: str, ctx: _Ctx) -> None:
        """A node whose first execution spawns a few children and fails; the retry runs
        another honest program: at spawn k it re-proposes the first execution's k-th
        child (reclaimed: same id, task, inputs) or spawns a new one with the id
        ``child_id(me, k)@2``, as the runtime's Context does; a third execution, if the
        second fails too, replays the second. Children the retry does not reclaim are
        leaves (they still run, as history, and create nothing)."""
        waits = self.flip(0.3)
        first: list[Step] = []
        children: list[str] = []
        for _ in range(self.draw(ints(1, 3))):
            self.break_sites(me, first, ctx)
            spawns = self.spawns(me, ctx, ctx, children, waits)
            children += [s.id for s in spawns]
            first.append(Step(spawns, wait=tuple(c for c in children
                                                  if waits and self.flip(0.5))))
        earlier = [s for step in first for s in step.spawns]
        mine = self.renewed(me, ctx, [s for s in earlier if self.subtree(s.id)])
        again: list[Spawn] = []
        base = [] if waits else [me]
        keep = [self.subtree(s.id) or self.flip(0.5) for s in earlier]
        for s, kept in zip(earlier, keep, strict=True):
            if RENEW_BUDGETS and kept and not self.subtree(s.id):
                mine.spend(s.task)  # a reclaimed leaf counts once more, first
        for k in range(1, len(earlier) + self.draw(ints(0, 2)) + 1):
            old = earlier[k - 1] if k <= len(earlier) else None
            if old is not None and keep[k - 1]:
                again.append(old)
                continue
            new_id = functools.partial("{}@2".format, child_id(me, k))
            spawn = self.child(me, mine, mine, new_id, base + [s.id for s in again])
            if spawn is not None:
                again.append(spawn)
        second = self.split(again, waits)
        failures: tuple[int, ...] = (len(first),)
        if self.flip(0.3):
            failures += (self.draw(ints(0, len(second))),)
        self.behaviours[me] = Behaviour(tuple(first), failures, (tuple(second),))

    def renewed(self, me: str, ctx: _Ctx, kept: list[Spawn]) -> _Ctx:
        """``ctx`` for a retry of ``me``: its own budgets start afresh (less what the
        reclaimed children with descendants may count again), the others go on."""
        if not RENEW_BUDGETS:
            return ctx
        counted = [t for s in kept for t in self.subtree_tasks(s.id)]
        budgets = []
        for b in ctx.budgets:
            if b.owner == me:
                total = self.budget_of(ctx, b)
                b = _Budget(total - sum(1 for t in counted if b.task in (None, t)), b.task, me)
            budgets.append(b)
        return replace(ctx, budgets=tuple(budgets))

    def budget_of(self, ctx: _Ctx, budget: _Budget) -> int:
        found = [p.n for p, owner in ctx.in_force if isinstance(p, MaxNodes)
                 and owner == budget.owner and p.task == budget.task]
        return min(found)

    def subtree_tasks(self, node_id: str) -> list[str]:
        """The tasks of ``node_id`` and of everything it may create, over every path."""
        found = [self.tasks[node_id]]
        for step in self.behaviours.get(node_id, _IDLE).every_step():
            for s in step.spawns:
                found += self.subtree_tasks(s.id)
        return found

    def subtree(self, node_id: str) -> bool:
        """Whether ``node_id`` may create anything."""
        return len(self.subtree_tasks(node_id)) > 1

    def split(self, spawns: list[Spawn], waits: bool) -> list[Step]:
        """``spawns`` over one to three steps, in order."""
        cuts = sorted(self.draw(ints(0, len(spawns))) for _ in range(self.draw(ints(0, 2))))
        steps: list[Step] = []
        for lo, hi in zip([0, *cuts], [*cuts, len(spawns)], strict=True):
            done = [s.id for s in spawns[:hi]]
            steps.append(Step(tuple(spawns[lo:hi]), wait=tuple(
                c for c in done if waits and self.flip(0.5))))
        return steps

    # --- breaking steps -------------------------------------------------------------------

    def break_sites(self, me: str, steps: list[Step], ctx: _Ctx) -> None:
        """Records how ``me``, after ``steps``, could break each promise in force."""
        for promise, owner in ctx.in_force:
            make = self.breaker(me, promise, ctx)
            if make is not None:
                self.sites.append(_Site(me, tuple(steps), promise, owner, make,
                                        how=type(promise).__name__))

    def breaker(self, me: str, p: Promise, ctx: _Ctx) -> Callable[[], Step] | None:
        """A step that breaks ``p`` whatever else has happened (ids are drawn late, after
        every honest spawn, so they never collide)."""
        task = (ctx.tasks() or list(TASKS))[0]
        mine = self.tasks[me]

        def one(t: str, after: tuple[str, ...] = ()) -> Callable[[], Step]:
            return lambda: Step((Spawn(self.new_id(me), t, after),))

        if isinstance(p, NoNewNodes):
            return one(task)
        if isinstance(p, NoNewEdges):
            return one(task, (me,))
        if isinstance(p, OnlyNodes):
            return one(next(t for t in (*TASKS, FOREIGN) if t not in p.tasks))
        if isinstance(p, MaxNodes):
            t = p.task or task
            n = p.n + 1
            return None if n > 6 else lambda: Step(tuple(Spawn(self.new_id(me), t)
                                                           for _ in range(n)))
        if isinstance(p, NoEdgesTo):
            return one(p.node, (me,))
        if isinstance(p, NoEdgesFrom):
            if p.node in (me, mine):
                return one(task, (me,))
            src = p.node

            def two() -> Step:
                first = Spawn(self.new_id(me), src)
                return Step((first, Spawn(self.new_id(me), task, (first.id,))))

            return two
        if isinstance(p, OnlyEdges):
            bad = next((t for t in (*TASKS, FOREIGN)
                        if not edge_allowed(p, (me, mine), ("", t))), None)
            return None if bad is None else one(bad, (me,))
        return None

    # --- shapes --------------------------------------------------------------------------

    def shaped(self, me: str, ctx: _Ctx, runtime: bool) -> Shape | None:
        """Makes ``me`` a Shape owner that, with delegates, creates a random member, if
        the promises in force allow it. The Shape is made as ``me`` is created or, if
        ``runtime``, at a random step of its own (adopting what exists by then)."""
        tasks = ctx.tasks()
        if not tasks or ctx.no_nodes:
            return None
        names = self.draw(st.lists(one_of(tuple(tasks)), min_size=1, max_size=3, unique=True))
        expr = self.draw(deterministic_exprs(names))
        builder = _Member(self.draw, tasks, cap=8)
        builder.build(expr, ())
        nodes = builder.nodes
        if not self.affordable(nodes, ctx):
            return None
        for t, _ in nodes:
            ctx.spend(t)
        self.total += len(nodes)
        promise = Shape(expr)
        creators, ids = self.delegate(me, nodes)
        steps = self.member_steps(me, creators, ids, nodes)
        at = self.draw(ints(0, len(steps[me]))) if runtime else -1
        if runtime:
            own = steps[me]
            steps[me] = ([*own, Step(promises=(promise,))] if at == len(own) else
                         [*own[:at], replace(own[at], promises=(promise,)), *own[at + 1:]])
        for node_id in ids:
            self.behaviours[node_id] = Behaviour(failures=self.failures())
        for creator, own in steps.items():
            self.behaviours[creator] = Behaviour(tuple(own), self.failures(own))
        self.shape_sites(me, promise, nodes, steps, at, ctx)
        self.outsider_sites(me, promise, nodes, creators, ids)
        return promise

    def outsider_sites(self, me: str, promise: Shape, nodes: Member, creators: list[str],
                       ids: list[str]) -> None:
        """An outsider adds an edge between two unrelated members that ``me`` creates:
        the region no longer matches its shape (without ``Any()``, no member has it)."""
        if has_any(promise.expr):
            return
        below = [set(preds) for _, preds in nodes]
        for preds in below:  # every member's ancestors in the member DAG
            for p in list(preds):
                preds |= below[p]
        pairs = tuple((i, j) for i in range(len(nodes)) for j in range(len(nodes))
                      if i != j and creators[i] == creators[j] == me
                      and i not in below[j] and j not in below[i])
        if not pairs:
            return
        i, j = self.draw(one_of(pairs))
        edge = (ids[i], ids[j])
        self.sites.append(_Site(OUTSIDER, (), promise, me, lambda: Step(edges=(edge,)),
                                how="Shape/outsider-edge", needs=edge, hold=(ids[j],)))

    def affordable(self, nodes: Member, ctx: _Ctx) -> bool:
        if len(nodes) > 10 or self.total + len(nodes) > MAX_NODES:
            return False
        for b in ctx.budgets:
            if sum(1 for t, _ in nodes if b.task in (None, t)) > b.left:
                return False
        # Member ids are fresh, so edge promises can only name their tasks.
        return all(ctx.edge_ok(("", nodes[p][0]), ("", t)) for t, preds in nodes for p in preds)

    def delegate(self, me: str, nodes: Member) -> tuple[list[str], list[str]]:
        """Who creates each member node: ``me`` a prefix, then the last node created hands
        the rest on (every earlier node exists by the time that node runs)."""
        creators: list[str] = []
        ids: list[str] = []
        creator, start = me, 0
        while start < len(nodes):
            end = self.draw(ints(start + 1, len(nodes))) if self.flip(0.4) else len(nodes)
            for i in range(start, end):
                creators.append(creator)
                ids.append(self.new_id(creator))
                self.tasks[ids[-1]] = nodes[i][0]
            creator, start = ids[end - 1], end
        return creators, ids

    def member_steps(self, me: str, creators: list[str], ids: list[str],
                     nodes: Member) -> dict[str, list[Step]]:
        """Each creator's steps: its member nodes in order, a few per diff, each created
        with an edge from every predecessor (sinks of the previous part)."""
        steps: dict[str, list[Step]] = {me: []}
        for k, (task, preds) in enumerate(nodes):
            own = steps.setdefault(creators[k], [])
            spawn = Spawn(ids[k], task, tuple(ids[p] for p in preds), self.flip(0.5))
            if own and creators[k - 1] == creators[k] and self.flip(0.5):
                own[-1] = replace(own[-1], spawns=(*own[-1].spawns, spawn))
            else:
                own.append(Step((spawn,)))
        return steps

    def shape_sites(self, me: str, promise: Shape, nodes: Member,
                    steps: dict[str, list[Step]], at: int, ctx: _Ctx) -> None:
        """Ways to break a Shape: a node of a task it has no room for, more nodes than
        any member has, or (when the empty DAG is no member) nothing at all."""
        expr = promise.expr
        own = steps[me]
        # Breaking steps of the owner come after a runtime Shape is made.
        first = at + 1 if at >= 0 else 0
        if not has_any(expr):
            foreign = next(t for t in (*ctx.tasks(), *TASKS, FOREIGN) if t not in expr.tasks())
            creator = self.draw(one_of(tuple(sorted(steps))))
            theirs = steps[creator]
            low = first if creator == me else 0
            keep = tuple(theirs[:self.draw(ints(min(low, len(theirs)), len(theirs)))])
            self.sites.append(_Site(creator, keep, promise, me, lambda: Step((Spawn(
                self.new_id(creator), foreign),)), how="Shape/foreign"))
        size = max_size(expr)
        mine = sum(len(s.spawns) for s in own)
        if size - mine <= 4:
            extra = next(t for t in (*ctx.tasks(), *expr.tasks()) if t in expr.tasks())
            n = int(size) + 1 - mine
            self.sites.append(_Site(me, tuple(own), promise, me, lambda: Step(tuple(
                Spawn(self.new_id(me), extra) for _ in range(n))), how="Shape/extra"))
        if not nullable(expr):
            keep = (Step(promises=(promise,)),) if at >= 0 else ()
            self.sites.append(_Site(me, keep, promise, me, Step, at_close=True,
                                    how="Shape/empty"))


@st.composite
def workflows(draw: st.DrawFn, breaking: bool = False) -> Workflow:
    """A random workflow: honest, or (``breaking``) breaking one promise at a random step.

    The spectrum: ``static`` registers a few nodes with NoNewNodes/NoNewEdges,
    ``dynamic`` one root that creates everything, ``mixed`` anything in between.
    """
    gen = _Gen(draw)
    mode = draw(one_of(("static", "mixed", "mixed", "dynamic", "dynamic")))
    n_static = 1 if mode == "dynamic" else draw(ints(0 if mode == "mixed" else 1, 4))
    statics = [f"r{i}" for i in range(n_static)]
    tasks = [draw(one_of(TASKS)) for _ in statics]
    edges = tuple(EdgeSpec(statics[i], statics[j]) for i in range(n_static)
                  for j in range(i + 1, n_static) if gen.flip(0.35))
    promised: list[tuple[str, Promise]] = []
    for node_id, task in zip(statics, tasks, strict=True):
        made: list[Promise] = []
        if mode == "static" or (mode == "mixed" and gen.flip(0.3)):
            made = [NoNewNodes(), NoNewEdges()]
        elif mode == "mixed" or gen.flip(0.5):
            made = gen.pick_promises(node_id, _Ctx(), 2)
        made += gen.node(node_id, task, _Ctx().bind(node_id, made))
        promised += [(node_id, p) for p in made]
    if breaking and (statics or gen.tasks):
        # An outsider changing a node it did not create: a plan rule, not a promise.
        target = draw(one_of(tuple(sorted({*statics, *gen.tasks}))))
        gen.sites.append(_Site(OUTSIDER, (), None, "", lambda: Step(attrs=(
            AttrChange("color", "red", node=target),)), how="attrs/outsider",
            needs=(target,)))
    behaviours = gen.behaviours
    broken = None
    if breaking and gen.sites:
        # Uniform over the kinds of break first: static workflows offer many NoNewNodes.
        kinds = tuple(sorted({s.how for s in gen.sites}))
        kind = draw(one_of(kinds))
        if "Shape/outsider-edge" in kinds and gen.flip(0.5):
            kind = "Shape/outsider-edge"  # rare (unrelated members needed): favoured
        site = draw(one_of(tuple(s for s in gen.sites if s.how == kind)))
        old = behaviours.get(site.node, _IDLE)
        steps = site.keep if site.at_close else (*site.keep, site.make())
        behaviours = {**behaviours, site.node: Behaviour(
            steps, tuple(f for f in old.failures if f <= len(site.keep)))}
        broken = Break(site.node, len(site.keep), "" if site.promise is None else
                       str(site.promise), site.owner, site.at_close, site.how, site.needs,
                       site.hold, "plan" if site.promise is None else "violation")
        if site.node == OUTSIDER:
            statics, tasks = [*statics, OUTSIDER], [*tasks, TASKS[0]]
    registration = PlanDiff(None, tuple(NodeSpec(n, t, {"args": [], "kwargs": {}}, {}, None)
                                        for n, t in zip(statics, tasks, strict=True)),
                            edges, tuple(promised))
    cancel_after = draw(ints(0, 40)) if not breaking and gen.flip(0.05) else None
    restarts: tuple[int, ...] = ()
    if not breaking and gen.flip(0.4):
        restarts = tuple(sorted(draw(st.lists(ints(1, 30), min_size=1, max_size=2))))
    return Workflow(registration, behaviours, broken, cancel_after, restarts)


# --- the driver: a random interleaving on the pure plan ------------------------------------


@dataclass
class Run:
    """What playing a workflow did: the final plan, a view snapshot after every step
    (with the owners of the Shape regions open at that moment), every rejection or
    violation (``where``: "apply" or "close"), and what a break may be reported as."""

    plan: Plan
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    regions: list[frozenset[str]] = field(default_factory=list)
    refusals: list[tuple[str, Rejection]] = field(default_factory=list)
    early: list[str] = field(default_factory=list)  # nodes that started too soon
    expected: set[tuple[str, str]] = field(default_factory=set)
    break_proposed: bool = False
    steps: int = 0
    # Operator restarts done: (number of snapshots taken before it, the nodes it reset
    # or superseded, those it superseded), and how many the plan refused (busy).
    restarts: list[tuple[int, frozenset[str], frozenset[str]]] = field(default_factory=list)
    refused_restarts: int = 0

    def reopened(self, index: int) -> set[str]:
        """Nodes a restart may bring back to life after snapshot ``index``: all it
        touched if it came later, and the history it superseded (revived when its
        creator re-proposes it) if it came earlier."""
        found: set[str] = set()
        for at, touched, superseded in self.restarts:
            found |= touched if at > index else superseded
        return found


class _Player:
    def __init__(self, workflow: Workflow, rng: random.Random, snapshots: bool) -> None:
        self.wf = workflow
        self.rng = rng
        self.take = snapshots
        self.run = Run(Plan("wf"))
        self.made: dict[str, list[Promise]] = {}
        self.pointer: dict[str, int] = {}
        self.execs: dict[str, int] = {}  # executions started (a restart goes on counting)
        self.awaiting: dict[str, tuple[str, ...]] = {}
        self.restarts = list(workflow.restarts)

    @property
    def plan(self) -> Plan:
        return self.run.plan

    def snap(self) -> None:
        if self.take:
            # A JSON round trip: a deep copy that also proves the document is JSON.
            self.run.snapshots.append(json.loads(json.dumps(view(self.plan, unfold=True)
                                                            .to_json())))
            self.run.regions.append(frozenset(
                n.id for n in self.plan.nodes.values() if n.region and not n.region.closed))

    def apply(self, diff: PlanDiff) -> None:
        out = self.plan.apply(diff)
        if out.rejection is not None:
            self.run.refusals.append(("apply", out.rejection))
        else:
            for owner, p in diff.promises:
                self.made.setdefault(owner, []).append(p)
        self.run.refusals += [("close", v) for v in out.violations]

    def set_state(self, node_id: str, state: NodeState) -> None:
        out = self.plan.set_state(node_id, state)
        self.run.refusals += [("close", v) for v in out.violations]

    def candidates(self) -> list[str]:
        found = []
        for node_id in self.plan.order:
            state = self.plan.nodes[node_id].state
            if self.held(node_id, state):
                continue
            if state in (NodeState.READY, NodeState.RUNNING) or (
                    state is NodeState.SUSPENDED and all(
                        not self.plan.nodes[h].live for h in self.awaiting[node_id])):
                found.append(node_id)
        return found

    def held(self, node_id: str, state: NodeState) -> bool:
        """An outsider's break waits for what it needs and holds back what it must
        find unstarted (an edge's destination)."""
        broken = self.wf.broken
        if broken is None or self.run.break_proposed or not (broken.needs or broken.hold):
            return False
        if state is NodeState.READY and node_id in broken.hold:
            return True
        if node_id != broken.node or state is not NodeState.RUNNING or (
                self.pointer[node_id] != broken.step):
            return False
        if any(n not in self.plan.nodes for n in broken.needs):
            return True
        regions = self.plan.nodes[broken.needs[-1]].regions
        return bool(broken.owner) and not any(r.owner == broken.owner for r in regions)

    def act(self, node_id: str) -> None:
        node = self.plan.nodes[node_id]
        if node.state is NodeState.READY:
            self.pointer[node_id] = 0
            self.execs[node_id] = self.execs.get(node_id, 0) + 1
            self.check_order(node_id)
            self.set_state(node_id, NodeState.RUNNING)
            return
        if node.state is NodeState.SUSPENDED:
            self.set_state(node_id, NodeState.RUNNING)
            return
        behaviour = self.wf.behaviour(node_id)
        done = self.pointer[node_id]
        failures = behaviour.failures
        execution = self.execs[node_id]
        steps = behaviour.program(execution)
        if execution <= len(failures) and failures[execution - 1] == done:
            self.set_state(node_id, NodeState.READY)  # this attempt fails: a retry
        elif done < len(steps):
            self.propose(node_id, done, steps[done])
        else:
            self.set_state(node_id, NodeState.SUCCEEDED)

    def restart(self) -> None:
        """An operator restarts a random finished node (and its downstream); the plan
        refuses while any of it runs, and the operator gives up."""
        self.restarts.pop(0)
        done = [n for n in self.plan.order if self.plan.nodes[n].state is NodeState.SUCCEEDED]
        if not done:
            return
        target = self.rng.choice(done)
        touched = [n.id for n in closure(self.plan, self.plan.nodes[target])]
        busy = [n for n in touched if self.plan.nodes[n].state in (NodeState.RUNNING,
                                                                    NodeState.SUSPENDED)]
        out = self.plan.restart(target)
        if (out.rejection is not None) != bool(busy):
            self.run.early.append(f"restart of {target} refused={out.rejection}, busy={busy}")
        if out.rejection is not None:
            self.run.refused_restarts += 1
            return
        superseded = frozenset(n for n in touched if self.plan.nodes[n].superseded)
        self.run.restarts.append((len(self.run.snapshots), frozenset(touched), superseded))
        self.snap()

    def check_order(self, node_id: str) -> None:
        """A node starts only after its predecessors succeeded and, for a predecessor
        that owns a Shape region it is not part of, after that region closed."""
        node = self.plan.nodes[node_id]
        for pred_id in node.preds:
            pred = self.plan.nodes[pred_id]
            if pred.superseded:
                # restart.py: superseded history holds nothing (its creator may never
                # re-propose it); reported, as a node may then run before its revival.
                continue
            region = pred.region
            if pred.state is not NodeState.SUCCEEDED or (
                    region is not None and not region.closed and region not in node.regions):
                self.run.early.append(f"{node_id} started before {pred_id} was done")

    def propose(self, node_id: str, index: int, step: Step) -> None:
        self.pointer[node_id] = index + 1
        diff = step.diff(node_id)
        broken = self.wf.broken
        if broken and not broken.at_close and (node_id, index) == (broken.node, broken.step):
            self.run.break_proposed = True
            self.run.expected |= breaks(self.plan, self.made, diff)
        before = len(self.run.refusals)
        self.apply(diff)
        if step.wait and len(self.run.refusals) == before:
            self.awaiting[node_id] = step.wait
            self.set_state(node_id, NodeState.SUSPENDED)

    def play(self, limit: int) -> Run:
        broken = self.wf.broken
        if broken is not None:
            self.run.expected.add((broken.promise, broken.owner))
        self.apply(self.wf.registration)
        self.snap()
        while self.run.steps < limit and not self.run.refusals:
            if self.run.steps == self.wf.cancel_after:
                self.plan.cancel()
                self.snap()
                break
            if self.restarts and self.restarts[0] <= self.run.steps:
                self.restart()
            found = self.candidates()
            if not found and self.restarts:
                self.restart()  # the operator restarts a finished workflow
                continue
            if not found:
                break
            self.act(self.rng.choice(found))
            self.run.steps += 1
            self.snap()
        if self.run.refusals:
            self.plan.cancel()  # a violation terminates the workflow
            self.snap()
        return self.run


def play(workflow: Workflow, rng: random.Random, *, snapshots: bool = True,
         limit: int = 2000) -> Run:
    """Plays ``workflow`` on a fresh plan, picking a random startable node at each step:
    start it, resume it, let it propose its next step, fail an attempt, or finish it."""
    return _Player(workflow, rng, snapshots).play(limit)


def _ancestors(plan: Plan, node_id: str) -> list[str]:
    found = []
    node = plan.nodes.get(node_id)
    while node is not None:
        found.append(node.id)
        node = node.creator
    return found


def breaks(plan: Plan, made: Mapping[str, list[Promise]],
           diff: PlanDiff) -> set[tuple[str, str]]:
    """The promises in force for ``diff.proposer`` that ``diff`` breaks, as (str, owner):
    an oracle written from DESIGN.md, independently of promises.py. A Shape in force
    counts as broken whenever the diff adds anything (the generator breaks shapes only
    on purpose)."""
    new_nodes = [n for n in diff.nodes if n.id not in plan.nodes]
    new_edges = [e for e in diff.edges if e.key not in plan.edges]
    tasks = {n.id: n.task for n in new_nodes}

    def end(node_id: str) -> tuple[str, str]:
        return (node_id, tasks[node_id] if node_id in tasks else plan.nodes[node_id].task)

    found = set()
    for owner in _ancestors(plan, diff.proposer or ""):
        for p in made.get(owner, ()):
            if isinstance(p, NoNewNodes | OnlyNodes | MaxNodes | Shape):
                hit = _node_promise_broken(plan, owner, p, new_nodes) or (
                    isinstance(p, Shape) and bool(new_edges))
            else:
                hit = any(not edge_allowed(p, end(e.src), end(e.dst)) for e in new_edges)
            if hit:
                found.add((str(p), owner))
    return found


def _node_promise_broken(plan: Plan, owner: str, p: Promise, new: list[NodeSpec]) -> bool:
    if isinstance(p, NoNewNodes | Shape):
        return bool(new)
    if isinstance(p, OnlyNodes):
        return any(n.task not in p.tasks for n in new)
    assert isinstance(p, MaxNodes)
    fits = [n for n in new if p.task in (None, n.task)]
    if not fits:
        return False
    inside = sum(1 for n in plan.nodes.values() if p.task in (None, n.task)
                 and n.id != owner and owner in _ancestors(plan, n.id))
    return inside + len(fits) > p.n


# --- the truthfulness invariant -----------------------------------------------------------


def check_snapshot(snap: Mapping[str, Any], final: Mapping[str, Any],
                   regions: Iterable[str] | None = None,
                   reopened: Iterable[str] = ()) -> list[str]:
    """Everything wrong with view JSON ``snap`` as a statement about the final graph
    (the view JSON of the finished plan), per DESIGN.md section 3:

    1. every committed node (id, task, parent; a terminal state) and edge of ``snap``
       is in ``final``; an edge added later ends at a node that had not started;
    2. every node of ``final`` not committed in ``snap`` has a nearest ancestor
       committed and live in ``snap``, and fits a provisional element there: that
       ancestor's ``?`` wildcard (task allowed, at most ``bounds.max`` such nodes), or,
       inside an open Shape region of an ancestor-or-self, one of its placeholders (or
       an ``Any()`` wildcard) for the node's task, at most the sum of their maxima.

    ``regions`` names the owners of Shape regions open at the snapshot; if omitted, the
    owners of placeholders are taken. ``reopened`` names the nodes an operator's restart
    brings back to life after the snapshot (``Run.reopened``): a restart runs finished
    nodes again as new attempts and revives the history it superseded, an act from
    outside that no view can foresee. Their identity, lineage and edges must still
    persist (identities never vanish); only their terminal state may change, and what
    they create on their new run is not judged against the snapshot.
    """
    errors: list[str] = []
    committed = {n["id"]: n for n in snap["nodes"] if not n["provisional"]}
    provisional = [n for n in snap["nodes"] if n["provisional"]]
    nodes = {n["id"]: n for n in final["nodes"] if not n["provisional"]}
    edges = {(e["src"], e["dst"]): e["kind"] for e in final["edges"] if not e["provisional"]}
    if regions is None:
        regions = {n["parent"] for n in provisional if n.get("kind") == "placeholder"}
    again = set(reopened)
    errors += _kept(snap, committed, nodes, edges, again)
    errors += _fits(committed, provisional, nodes, set(regions), again)
    return errors


def _kept(snap: Mapping[str, Any], committed: Mapping[str, Any], nodes: Mapping[str, Any],
          edges: Mapping[tuple[str, str], str], reopened: set[str]) -> list[str]:
    errors = []
    for node_id, n in committed.items():
        f = nodes.get(node_id)
        if f is None:
            errors.append(f"committed node {node_id} vanished")
        elif (f["task"], f["parent"]) != (n["task"], n["parent"]):
            errors.append(f"node {node_id} changed from {n['task']}/{n['parent']} "
                          f"to {f['task']}/{f['parent']}")
        elif n["state"] in TERMINAL and f["state"] != n["state"] and node_id not in reopened:
            errors.append(f"node {node_id} was {n['state']} and is now {f['state']}")
    shown = set()
    for e in snap["edges"]:
        if e["provisional"]:
            continue
        key = (e["src"], e["dst"])
        kind = edges.get(key)
        if e["kind"] != "lineage":
            shown.add(key)
        if kind is None or (e["kind"] != "lineage" and kind != e["kind"]):
            errors.append(f"committed {e['kind']} {key} is {kind or 'missing'} at the end")
    for key, kind in edges.items():
        dst = committed.get(key[1])
        if (kind != "lineage" and key not in shown and dst is not None
                and dst["state"] not in ("pending", "ready")):
            errors.append(f"edge {key} appeared after {key[1]} started ({dst['state']})")
    return errors


def _fits(committed: Mapping[str, Any], provisional: list[Mapping[str, Any]],
          nodes: Mapping[str, Any], regions: set[str], reopened: set[str]) -> list[str]:
    errors = []
    by_parent: dict[str, list[Mapping[str, Any]]] = {}
    for p in provisional:
        by_parent.setdefault(p["parent"], []).append(p)
    wild_count: dict[str, int] = {}
    shaped_count: dict[tuple[str, str], int] = {}
    for node_id, f in nodes.items():
        if node_id in committed:
            continue
        anchor = f["parent"]
        while anchor is not None and anchor not in committed:
            anchor = nodes[anchor]["parent"]
        if anchor is None:
            errors.append(f"{node_id} ({f['task']}) has no committed ancestor")
            continue
        if anchor in reopened:
            continue
        if committed[anchor]["state"] in TERMINAL:
            errors.append(f"{node_id} ({f['task']}) descends from {anchor}, which was "
                          f"{committed[anchor]['state']}")
            continue
        where = _fit(f["task"], anchor, committed, by_parent, regions)
        if where is None:
            errors.append(f"{node_id} ({f['task']}) fits nothing the view showed under "
                          f"{anchor} or its open regions")
        elif where[0] == "?":
            wild_count[anchor] = wild_count.get(anchor, 0) + 1
        else:
            key = (where[1], f["task"])
            shaped_count[key] = shaped_count.get(key, 0) + 1
    for anchor, count in wild_count.items():
        most = _wildcard(by_parent, anchor)["bounds"]["max"]  # type: ignore[index]
        if most is not None and count > most:
            errors.append(f"{count} nodes appeared under {anchor}, its wildcard said <= {most}")
    for (owner, task), count in shaped_count.items():
        leaves = by_parent.get(owner, [])
        if any(p["kind"] == "wildcard" for p in leaves):
            continue
        maxima = [p["bounds"]["max"] for p in leaves if p["task"] == task]
        if None not in maxima and count > sum(maxima):
            errors.append(f"{count} {task} nodes appeared in {owner}'s region, its "
                          f"placeholders allow {sum(maxima)}")
    return errors


def _wildcard(by_parent: Mapping[str, list[Mapping[str, Any]]],
              anchor: str) -> Mapping[str, Any] | None:
    return next((p for p in by_parent.get(anchor, ()) if p["kind"] == "wildcard"), None)


def _fit(task: str, anchor: str, committed: Mapping[str, Any],
         by_parent: Mapping[str, list[Mapping[str, Any]]],
         regions: set[str]) -> tuple[str, str] | None:
    """Which provisional element a new ``task`` node below ``anchor`` fits: ("?", anchor)
    for the anchor's own wildcard, ("shape", owner) for an open region's element."""
    if anchor not in regions:
        wild = _wildcard(by_parent, anchor)
        if wild is not None and (wild["tasks"] is None or task in wild["tasks"]):
            return ("?", anchor)
    owner: str | None = anchor
    while owner is not None:
        if owner in regions:
            for p in by_parent.get(owner, ()):
                if p["kind"] == "wildcard" or p["task"] == task:
                    return ("shape", owner)
        owner = committed[owner]["parent"]
    return None
