"""Shape expressions (DESIGN.md section 3, "Shape") and their determinism rules.

An expression denotes a set of labelled DAGs:

* a task name: one node of that task;
* ``Seq(a, b, ...)``: a's DAG, then b's: every sink of a is ordered before every
  source of b (by an edge or a path among the region's nodes);
* ``Par(a, b, ...)``: the disjoint union, with no edges between the parts;
* ``OneOf(a, b, ...)``: exactly one alternative;
* ``Repeat(a, min, max)``: k disjoint copies of a, min <= k <= max (a map);
* ``Loop(a, min, max)``: k copies of a in sequence, as in ``Seq(a, a, ...)``;
* ``Any()``: any DAG, the empty one included.

Determinism. The matcher places each node once, when it joins the region, from
its task (and, for a Repeat copy, its predecessors), so a promised shape must be
deterministic. With FIRST(e) the tasks that can be e's first node, and EXT(e) the
tasks that can still join e once e is complete, ``check_deterministic`` requires:

1. OneOf: the alternatives' FIRST sets are disjoint; at most one can be empty.
2. Par: the parts' task sets are disjoint (a node's part is chosen by its task).
3. Seq: a part's FIRST does not meet the EXT of an earlier part that may still be
   the current one (all parts between them can be empty); else a node could
   either continue the earlier part or start the later one.
4. Repeat and Loop: the body cannot be empty (empty copies cannot be counted).
   If more than one copy is allowed, a Repeat body must be *rooted* (one first
   node per copy), because a node joins the copy of its predecessors and a node
   without any starts a new copy; and a Loop body's EXT must not meet its FIRST.
5. ``Any()`` may hold any task, so rules 1-3 admit it only where nothing can
   follow or sit beside it: as the whole shape or as the tail of a Seq (as in
   ``Repeat(Seq(M, Any()))``). It never absorbs what follows: ``Seq(Any(), M)``
   is refused.

The incremental matcher lives in :mod:`plait.protocol.shape_match`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from plait.errors import ShapeError
from plait.protocol.names import task_name

__all__ = [
    "Any", "Expr", "Loop", "OneOf", "Par", "Repeat", "Seq", "Task", "check_deterministic",
    "expr_from_dict",
]


@dataclass(frozen=True)
class _Names:
    """A set of task names; ``every`` stands for the unknown tasks ``Any()`` admits."""

    names: frozenset[str] = frozenset()
    every: bool = False

    def __or__(self, other: _Names) -> _Names:
        return _Names(self.names | other.names, self.every or other.every)

    def __and__(self, other: _Names) -> _Names:
        if self.every:
            return other
        return self if other.every else _Names(self.names & other.names)

    def __contains__(self, task: object) -> bool:
        return self.every or task in self.names

    def __bool__(self) -> bool:
        return self.every or bool(self.names)

    def __str__(self) -> str:
        return "any task" if self.every else " or ".join(sorted(self.names)) or "nothing"


_NONE = _Names()
_EVERY = _Names(every=True)


@dataclass(frozen=True)
class _Info:
    nullable: bool
    tasks: _Names
    first: _Names
    ext: _Names
    rooted: bool


class Expr:
    """A shape expression: immutable and hashable; build it with the constructors."""

    def to_dict(self) -> dict[str, object]:
        raise NotImplementedError

    def children(self) -> tuple[Expr, ...]:
        return ()

    def _analyse(self) -> _Info:
        raise NotImplementedError

    def _ambiguity(self) -> str | None:
        return None

    @cached_property
    def _info(self) -> _Info:
        return self._analyse()

    @property
    def nullable(self) -> bool:
        """Whether the empty DAG is a member."""
        return self._info.nullable

    def tasks(self) -> frozenset[str]:
        """The named tasks that can appear; if `wildcard`, any other task can too."""
        return self._info.tasks.names

    @property
    def wildcard(self) -> bool:
        """Whether a node of any task may appear (an ``Any()`` is reachable)."""
        return self._info.tasks.every

    @property
    def empty_only(self) -> bool:
        """Whether no node at all can appear."""
        return not self._info.tasks


Part = Expr | str | Callable[..., object]


def _name(ref: object) -> str:
    try:
        return task_name(ref)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"not a task or shape: {ref!r} ({exc})") from exc


def _expr(part: object) -> Expr:
    return part if isinstance(part, Expr) else Task(_name(part))


def _arg(expr: Expr) -> str:
    return repr(expr.name) if isinstance(expr, Task) else repr(expr)


def _which(names: _Names) -> str:
    return "any task" if names.every else f"task {names}"


@dataclass(frozen=True, init=False, repr=False)
class Task(Expr):
    """One node of the named task (a name or a task function)."""

    name: str

    def __init__(self, name: str | Callable[..., object]) -> None:
        object.__setattr__(self, "name", _name(name))

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    def to_dict(self) -> dict[str, object]:
        return {"task": self.name}

    def _analyse(self) -> _Info:
        one = _Names(frozenset((self.name,)))
        return _Info(False, one, one, _NONE, True)


@dataclass(frozen=True, init=False, repr=False)
class _Group(Expr):
    parts: tuple[Expr, ...]
    key: ClassVar[str] = ""

    def __init__(self, *parts: Part) -> None:
        if not parts:
            raise ShapeError(f"{type(self).__name__}() needs at least one part")
        object.__setattr__(self, "parts", tuple(_expr(part) for part in parts))

    def __str__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(str, self.parts))})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(_arg, self.parts))})"

    def to_dict(self) -> dict[str, object]:
        return {self.key: [part.to_dict() for part in self.parts]}

    def children(self) -> tuple[Expr, ...]:
        return self.parts

    def _union(self, field: str) -> _Names:
        names = _NONE
        for part in self.parts:
            names |= getattr(part._info, field)
        return names


class Seq(_Group):
    """Parts one after another: each part's sinks before the next part's sources."""

    key = "seq"

    def _analyse(self) -> _Info:
        first, rooted = _NONE, True
        for part in self.parts:  # a node can only be first through empty parts
            first, rooted = first | part._info.first, rooted and part._info.rooted
            if not part.nullable:
                break
        ext = _NONE
        for part in self.parts:
            ext = part._info.ext | (ext if part.nullable else _NONE)
        nullable = all(part.nullable for part in self.parts)
        return _Info(nullable, self._union("tasks"), first, ext, rooted)

    def _ambiguity(self) -> str | None:
        for i, later in enumerate(self.parts):
            for earlier in reversed(self.parts[:i]):
                clash = earlier._info.ext & later._info.first
                if clash:
                    return (f"once {earlier} is complete, a node of {_which(clash)} "
                            f"could continue it or start {later}")
                if not earlier.nullable:
                    break
        return None


class Par(_Group):
    """Parts side by side, with no edges between them."""

    key = "par"

    def _analyse(self) -> _Info:
        live = [part for part in self.parts if not part.empty_only]
        rooted = len(live) <= 1 and all(part._info.rooted for part in live)
        nullable = all(part.nullable for part in self.parts)
        return _Info(nullable, self._union("tasks"), self._union("first"),
                     self._union("ext"), rooted)

    def _ambiguity(self) -> str | None:
        for i, one in enumerate(self.parts):
            for other in self.parts[i + 1:]:
                clash = one._info.tasks & other._info.tasks
                if clash:
                    return (f"parts {one} and {other} can both hold {_which(clash)}; "
                            "a node's part is chosen by its task")
        return None

    def part_for(self, task: str) -> int | None:
        """The part a node of `task` belongs to (unique in a deterministic Par)."""
        return next((i for i, part in enumerate(self.parts) if task in part._info.tasks), None)


class OneOf(_Group):
    """Exactly one of the alternatives, chosen by the task of its first node."""

    key = "oneof"

    def _analyse(self) -> _Info:
        nullable = any(part.nullable for part in self.parts)
        first = self._union("first")
        ext = self._union("ext") | (first if nullable else _NONE)
        rooted = all(part._info.rooted for part in self.parts)
        return _Info(nullable, self._union("tasks"), first, ext, rooted)

    def _ambiguity(self) -> str | None:
        for i, one in enumerate(self.parts):
            for other in self.parts[i + 1:]:
                clash = one._info.first & other._info.first
                if clash:
                    return f"alternatives {one} and {other} can both start with {_which(clash)}"
                if one.nullable and other.nullable:
                    return f"alternatives {one} and {other} can both be empty"
        return None


def _check_bounds(kind: str, low: object, high: object) -> None:
    if not isinstance(low, int) or isinstance(low, bool) or low < 0:
        raise ShapeError(f"{kind}: min must be an integer >= 0, got {low!r}")
    if high is not None and (not isinstance(high, int) or isinstance(high, bool) or high < low):
        raise ShapeError(f"{kind}: max must be None or an integer >= min ({low}), got {high!r}")


@dataclass(frozen=True, init=False, repr=False)
class _Counted(Expr):
    part: Expr
    min: int
    max: int | None
    key: ClassVar[str] = ""

    def __init__(self, part: Part, min: int = 0, max: int | None = None) -> None:
        _check_bounds(type(self).__name__, min, max)
        object.__setattr__(self, "part", _expr(part))
        object.__setattr__(self, "min", min)
        object.__setattr__(self, "max", max)

    def __str__(self) -> str:
        high = "*" if self.max is None else self.max
        return f"{type(self).__name__}({self.part}, {self.min}..{high})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_arg(self.part)}, min={self.min}, max={self.max})"

    def to_dict(self) -> dict[str, object]:
        return {self.key: self.part.to_dict(), "min": self.min, "max": self.max}

    def children(self) -> tuple[Expr, ...]:
        return (self.part,)

    @property
    def _many(self) -> bool:
        return self.max is None or self.max > 1

    def _analyse(self) -> _Info:
        body = self.part._info
        if self.max == 0:
            return _Info(True, _NONE, _NONE, _NONE, True)
        more = self.max is None or self.min < self.max  # a complete match can take a copy
        ext = body.ext | (body.first if more else _NONE)
        rooted = body.rooted and (isinstance(self, Loop) or self.max == 1)
        return _Info(self.min == 0 or body.nullable, body.tasks, body.first, ext, rooted)

    def _ambiguity(self) -> str | None:
        if self.part.nullable:
            return f"its body {self.part} can be empty, so copies cannot be counted"
        return None


class Repeat(_Counted):
    """min..max disjoint copies of a part (a map); max None is unbounded."""

    key = "repeat"

    def _ambiguity(self) -> str | None:
        problem = super()._ambiguity()
        if problem is None and self._many and not self.part._info.rooted:
            problem = (f"its body {self.part} can start with several nodes, but a node "
                       "joins the copy of its predecessors (none: a new copy)")
        return problem


class Loop(_Counted):
    """min..max copies of a part in sequence; max None is unbounded."""

    key = "loop"

    def _ambiguity(self) -> str | None:
        problem = super()._ambiguity()
        clash = self.part._info.ext & self.part._info.first
        if problem is None and self._many and clash:
            problem = (f"once a copy of {self.part} is complete, a node of {_which(clash)} "
                       "could continue it or start the next copy")
        return problem


@dataclass(frozen=True, repr=False)
class Any(Expr):
    """Any DAG, the empty one included."""

    def __str__(self) -> str:
        return "Any()"

    __repr__ = __str__

    def to_dict(self) -> dict[str, object]:
        return {"any": True}

    def _analyse(self) -> _Info:
        return _Info(True, _EVERY, _EVERY, _EVERY, False)


_GROUPS: dict[str, type[_Group]] = {"seq": Seq, "par": Par, "oneof": OneOf}
_COUNTED: dict[str, type[_Counted]] = {"repeat": Repeat, "loop": Loop}


def expr_from_dict(data: object) -> Expr:
    """The expression `Expr.to_dict` produced; raises ShapeError on anything else."""
    if isinstance(data, Mapping):
        keys = set(data)
        if keys == {"task"} and isinstance(data["task"], str) and data["task"]:
            return Task(data["task"])
        if keys == {"any"} and data["any"] is True:
            return Any()
        for key, group in _GROUPS.items():
            if keys == {key} and isinstance(data[key], list) and data[key]:
                return group(*(expr_from_dict(part) for part in data[key]))
        for key, counted in _COUNTED.items():
            if keys == {key, "min", "max"}:
                return counted(expr_from_dict(data[key]), data["min"], data["max"])
    raise ShapeError(f"not a shape expression: {data!r}")


def check_deterministic(expr: Expr) -> None:
    """Raise ShapeError, naming the clash, if `expr` cannot be matched greedily."""
    stack = [expr]
    while stack:
        current = stack.pop()
        problem = current._ambiguity()
        if problem:
            raise ShapeError(f"shape {expr} is not deterministic: in {current}, {problem}")
        stack.extend(reversed(current.children()))
