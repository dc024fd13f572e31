"""Promises: constraints on how a workflow's graph may still change.

A promise is attached to a node and binds that node and everything it creates,
transitively (its *scope*). Promises are only ever added. Each promise is plain
data (it travels in diffs and is stored in events); the plan pairs it with a
:class:`Tracker` that checks every diff proposed inside the scope.

A tracker's ``check`` returns ``None`` (nothing to record), a violation reason
(nothing changed), or a :class:`Pending` change that the plan commits once
every promise in force has accepted the diff, and aborts otherwise. That is
what keeps diffs atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from plait.protocol.names import TaskRef, task_name
from plait.protocol.shape import Expr, Task, check_deterministic, expr_from_dict
from plait.protocol.shape_match import ShapeMatcher


class Pending(Protocol):
    """A change a tracker accepted: the plan commits it, or aborts it when another
    promise refuses the same diff."""

    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Deferred:
    """A change made only at commit; aborting it has nothing to undo."""

    __slots__ = ("commit",)

    def __init__(self, commit: Callable[[], None]) -> None:
        self.commit = commit

    def abort(self) -> None:
        pass


Verdict = str | Pending | None
"""What a tracker says of a diff: a violation reason, a pending change, or nothing."""


class Staged(Protocol):
    """The part of a diff that falls inside a promise's scope, as the plan sees it."""

    @property
    def new_nodes(self) -> Sequence[tuple[str, str]]: ...  # (node id, task), in order
    @property
    def new_edges(self) -> Sequence[tuple[str, str]]: ...  # (src, dst)
    def task_of(self, node_id: str) -> str: ...
    def preds(self, node_id: str) -> Iterable[str]: ...


@dataclass(frozen=True, slots=True)
class Bound:
    """What a promise says about a live node's future creations (for ``?`` wildcards).

    ``closed`` means nothing may be created; ``tasks`` restricts labels; ``count``
    caps how many; ``shaped`` means a Shape placeholder already shows the future.
    """

    closed: bool = False
    tasks: frozenset[str] | None = None
    count: int | None = None
    shaped: bool = False


UNBOUNDED = Bound()


class Tracker:
    """Checks diffs against one promise attached to ``owner``. Stateless by default."""

    def __init__(self, promise: Promise, owner: str) -> None:
        self.promise = promise
        self.owner = owner

    def check(self, staged: Staged) -> Verdict:
        return None

    def adopt(self, staged: Staged) -> Verdict:
        """Account for nodes created in scope before the promise was made.

        Only counting and shape promises look back; the others bind the future.
        """
        return None

    def bound(self) -> Bound:
        return UNBOUNDED

    def renew(self) -> Tracker:
        """This tracker for a new attempt of its owner, which may take another path:
        stateless trackers stay, counting ones start afresh."""
        return self

    counts_nodes = False
    """Whether the tracker counts nodes (so that a node taken back from an earlier
    attempt's history must be shown to it again once it was renewed)."""

    def counted(self, node_id: str) -> bool:
        return False


class Promise:
    """Base of every promise. Subclasses are frozen dataclasses of plain data."""

    kind: ClassVar[str] = ""
    _kinds: ClassVar[dict[str, type[Promise]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = cls.__name__
        Promise._kinds[cls.kind] = cls

    def tracker(self, owner: str) -> Tracker:
        return Tracker(self, owner)

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Promise:
        raise NotImplementedError

    @property
    def schedules(self) -> bool:
        """True for promises the dispatcher enforces rather than the plan."""
        return False


def promise_from_dict(data: dict[str, Any]) -> Promise:
    """Rebuild a promise from its wire form; unknown kinds are a clear error."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise ValueError(f"a promise must be a mapping with a 'kind', got {data!r}")
    cls = Promise._kinds.get(data["kind"])
    if cls is None:
        raise ValueError(f"unknown promise kind {data['kind']!r}")
    try:
        return cls._from_fields({k: v for k, v in data.items() if k != "kind"})
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"malformed {data['kind']} promise {data!r}: {exc!r}") from exc


def _names(refs: Iterable[TaskRef]) -> tuple[str, ...]:
    return tuple(task_name(r) for r in refs)


def _tasks_text(nodes: Sequence[tuple[str, str]]) -> str:
    shown = ", ".join(f"{nid} ({task})" for nid, task in nodes[:5])
    return shown + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")


# --- structural promises ---------------------------------------------------


class _NoNewNodesTracker(Tracker):
    def check(self, staged: Staged) -> Verdict:
        if staged.new_nodes:
            return f"created {_tasks_text(staged.new_nodes)}"
        return None

    def bound(self) -> Bound:
        return Bound(closed=True)


@dataclass(frozen=True, slots=True, init=False)
class NoNewNodes(Promise):
    """Nothing in scope creates a node."""

    def __init__(self) -> None:
        pass

    def __str__(self) -> str:
        return "NoNewNodes()"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> NoNewNodes:
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def tracker(self, owner: str) -> Tracker:
        return _NoNewNodesTracker(self, owner)


EdgeRule = Callable[[str, str, Staged], bool]


class _EdgeRuleTracker(Tracker):
    """Accepts a diff when every edge it adds passes ``allowed(src, dst, staged)``."""

    def __init__(self, promise: Promise, owner: str, allowed: EdgeRule) -> None:
        super().__init__(promise, owner)
        self._allowed = allowed

    def check(self, staged: Staged) -> Verdict:
        for src, dst in staged.new_edges:
            if not self._allowed(src, dst, staged):
                return f"added edge {src} -> {dst} ({staged.task_of(src)} -> {staged.task_of(dst)})"
        return None


@dataclass(frozen=True, slots=True, init=False)
class NoNewEdges(Promise):
    """Nothing in scope adds an edge (including a data edge or a ``then``)."""

    def __init__(self) -> None:
        pass

    def __str__(self) -> str:
        return "NoNewEdges()"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> NoNewEdges:
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def tracker(self, owner: str) -> Tracker:
        return _EdgeRuleTracker(self, owner, lambda src, dst, staged: False)


class _OnlyNodesTracker(Tracker):
    promise: OnlyNodes

    def check(self, staged: Staged) -> Verdict:
        bad = [(nid, task) for nid, task in staged.new_nodes if task not in self.promise.tasks]
        return f"created {_tasks_text(bad)}" if bad else None

    def bound(self) -> Bound:
        return Bound(tasks=frozenset(self.promise.tasks))


@dataclass(frozen=True, slots=True, init=False)
class OnlyNodes(Promise):
    """Nodes created in scope run one of the given tasks."""

    tasks: tuple[str, ...]

    def __init__(self, *tasks: TaskRef) -> None:
        object.__setattr__(self, "tasks", _names(tasks))

    def __str__(self) -> str:
        return f"OnlyNodes({', '.join(self.tasks)})"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> OnlyNodes:
        return cls(*fields["tasks"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tasks": list(self.tasks)}

    def tracker(self, owner: str) -> Tracker:
        return _OnlyNodesTracker(self, owner)


@dataclass(frozen=True, slots=True, init=False)
class OnlyEdges(Promise):
    """Edges added in scope are among the given (src, dst) pairs of task names or node ids."""

    pairs: tuple[tuple[str, str], ...]

    def __init__(self, *pairs: tuple[TaskRef, TaskRef]) -> None:
        object.__setattr__(self, "pairs", tuple((task_name(s), task_name(d)) for s, d in pairs))

    def __str__(self) -> str:
        return f"OnlyEdges({', '.join(f'{s}->{d}' for s, d in self.pairs)})"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> OnlyEdges:
        return cls(*(tuple(p) for p in fields["pairs"]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pairs": [list(p) for p in self.pairs]}

    def tracker(self, owner: str) -> Tracker:
        pairs = self.pairs

        def allowed(src: str, dst: str, staged: Staged) -> bool:
            st, dt = staged.task_of(src), staged.task_of(dst)
            return any((src == s or st == s) and (dst == d or dt == d) for s, d in pairs)

        return _EdgeRuleTracker(self, owner, allowed)


def _endpoint_rule(name: str, at_src: bool) -> EdgeRule:
    """Forbids new edges whose source (or destination) is the node ``name`` or runs that task."""

    def allowed(src: str, dst: str, staged: Staged) -> bool:
        end = src if at_src else dst
        return end != name and staged.task_of(end) != name

    return allowed


@dataclass(frozen=True, slots=True, init=False)
class NoEdgesFrom(Promise):
    """No edge added in scope starts at the given node (id) or task."""

    node: str

    def __init__(self, node: TaskRef) -> None:
        object.__setattr__(self, "node", task_name(node))

    def __str__(self) -> str:
        return f"NoEdgesFrom({self.node})"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> NoEdgesFrom:
        return cls(fields["node"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node}

    def tracker(self, owner: str) -> Tracker:
        return _EdgeRuleTracker(self, owner, _endpoint_rule(self.node, at_src=True))


@dataclass(frozen=True, slots=True, init=False)
class NoEdgesTo(Promise):
    """No edge added in scope ends at the given node (id) or task."""

    node: str

    def __init__(self, node: TaskRef) -> None:
        object.__setattr__(self, "node", task_name(node))

    def __str__(self) -> str:
        return f"NoEdgesTo({self.node})"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> NoEdgesTo:
        return cls(fields["node"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node}

    def tracker(self, owner: str) -> Tracker:
        return _EdgeRuleTracker(self, owner, _endpoint_rule(self.node, at_src=False))


# --- counting and scheduling promises -------------------------------------


class _MaxNodesTracker(Tracker):
    promise: MaxNodes

    counts_nodes = True

    def __init__(self, promise: MaxNodes, owner: str) -> None:
        super().__init__(promise, owner)
        self.created = 0
        self._seen: set[str] = set()

    def counted(self, node_id: str) -> bool:
        return node_id in self._seen

    def _count(self, staged: Staged) -> Verdict:
        task = self.promise.task
        ids = [n for n, t in staged.new_nodes if task is None or t == task]
        if not ids:
            return None
        total = self.created + len(ids)
        if total > self.promise.n:
            return f"created node number {total} of at most {self.promise.n}"

        def commit() -> None:
            self.created = total
            self._seen.update(ids)

        return Deferred(commit)

    check = _count
    adopt = _count

    def renew(self) -> Tracker:
        return _MaxNodesTracker(self.promise, self.owner)

    def bound(self) -> Bound:
        # A per-task budget says nothing about other tasks, so only the plain form
        # bounds a wildcard; saying less is allowed, saying wrong is not.
        if self.promise.task is not None:
            return UNBOUNDED
        return Bound(count=self.promise.n - self.created)


@dataclass(frozen=True, slots=True, init=False)
class MaxNodes(Promise):
    """At most ``n`` nodes (of ``task``, if given) are ever created in scope.

    Nodes created before the promise was made count too. Only the form without a
    task bounds the ``?`` wildcard's count in the view.
    """

    n: int
    task: str | None

    def __init__(self, n: int, task: TaskRef | None = None) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"MaxNodes needs a non-negative integer, got {n!r}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "task", None if task is None else task_name(task))

    def __str__(self) -> str:
        return f"MaxNodes({self.n}{', ' + self.task if self.task else ''})"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> MaxNodes:
        return cls(fields["n"], fields.get("task"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "task": self.task}

    def tracker(self, owner: str) -> Tracker:
        return _MaxNodesTracker(self, owner)


@dataclass(frozen=True, slots=True, init=False)
class MaxParallel(Promise):
    """At most ``n`` nodes in scope (with ``label`` among their ``labels``
    attribute, if given) run at once, within one workflow.

    The plan records it; the dispatcher enforces it when it hands out work. The
    ``labels`` attribute is for scheduling; ``label`` is cosmetic (drawn).
    """

    n: int
    label: str | None

    def __init__(self, n: int, label: str | None = None) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"MaxParallel needs a positive integer, got {n!r}")
        if label is not None and not isinstance(label, str):
            raise ValueError(f"MaxParallel's label is a string, got {label!r}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "label", label)

    def __str__(self) -> str:
        return f"MaxParallel({self.n}{', ' + self.label if self.label else ''})"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> MaxParallel:
        label = fields.get("label")  # a stored one may predate the check: as text
        return cls(fields["n"], label if label is None else str(label))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "label": self.label}

    @property
    def schedules(self) -> bool:
        return True


# --- shapes ------------------------------------------------------------------


class ShapeTracker(Tracker):
    """Matches a Shape region incrementally; the plan asks it whether the region is complete."""

    promise: Shape

    counts_nodes = True

    def __init__(self, promise: Shape, owner: str) -> None:
        super().__init__(promise, owner)
        self.matcher = ShapeMatcher(promise.expr, owner)

    def counted(self, node_id: str) -> bool:
        return self.matcher.has(node_id)

    def check(self, staged: Staged) -> Verdict:
        return self.matcher.check(staged)

    adopt = check

    def bound(self) -> Bound:
        return Bound(shaped=True)

    def renew(self) -> Tracker:
        return ShapeTracker(self.promise, self.owner)


@dataclass(frozen=True, slots=True, init=False)
class Shape(Promise):
    """What the node creates, transitively, matches a shape expression.

    Until it has fully materialised the region is a placeholder in the plan:
    the promising node's successors wait for it to close.
    """

    expr: Expr

    def __init__(self, expr: Expr | TaskRef) -> None:
        expr = expr if isinstance(expr, Expr) else Task(task_name(expr))
        check_deterministic(expr)  # refuse an unenforceable shape when it is promised
        object.__setattr__(self, "expr", expr)

    def __str__(self) -> str:
        return f"Shape({self.expr})"

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Shape:
        return cls(expr_from_dict(fields["expr"]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "expr": self.expr.to_dict()}

    def tracker(self, owner: str) -> Tracker:
        return ShapeTracker(self, owner)


PROMISE_KINDS = tuple(Promise._kinds)
