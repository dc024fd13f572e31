"""The data a plan is made of and changed by: node and edge specs, diffs, rejections.

Everything here is plain, immutable data with an exact dict form, so that a
diff can be proposed in a worker, sent over the wire, stored as an event and
folded back into a plan without loss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from plait.protocol.promises import Promise, promise_from_dict

if TYPE_CHECKING:
    from plait.protocol.promises import Tracker

__all__ = [
    "AttrChange",
    "EdgeSpec",
    "NodeSpec",
    "NodeState",
    "PlanDiff",
    "Rejection",
    "child_id",
]

_MAX_ID = 64


class NodeState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    SUSPENDED = "suspended"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def child_id(creator: str, seq: int, key: str | None = None) -> str:
    """The deterministic id of the ``seq``-th node ``creator`` spawns (or of its ``key``).

    Replaying a creator re-derives the same ids, so a re-proposed spawn is
    recognised as already applied. Deep chains would grow ids without bound, so
    a long creator id is replaced by a digest of itself.
    """
    if len(creator) > _MAX_ID:
        creator = "~" + hashlib.blake2b(creator.encode(), digest_size=8).hexdigest()
    return f"{creator}/{key}" if key is not None else f"{creator}.{seq}"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node as proposed: identity, task, inputs, attributes, and who created it."""

    id: str
    task: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    creator: str | None = None
    key: str | None = None

    def same_as(self, other: NodeSpec) -> bool:
        """Identity and content agree (attributes are cosmetic and may differ)."""
        return (self.task, self.creator, dict(self.inputs)) == (
            other.task, other.creator, dict(other.inputs)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "task": self.task, "inputs": dict(self.inputs),
            "attrs": dict(self.attrs), "creator": self.creator, "key": self.key,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeSpec:
        return cls(
            id=str(d["id"]), task=str(d["task"]), inputs=dict(d.get("inputs") or {}),
            attrs=dict(d.get("attrs") or {}), creator=d.get("creator"), key=d.get("key"),
        )


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    """``src -> dst``: dst runs after src; ``data`` when dst consumes src's output."""

    src: str
    dst: str
    data: bool = False
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.src, self.dst)

    def with_attr(self, key: str, value: Any) -> EdgeSpec:
        return replace(self, attrs={**self.attrs, key: value})

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "data": self.data, "attrs": dict(self.attrs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EdgeSpec:
        return cls(str(d["src"]), str(d["dst"]), bool(d.get("data")), dict(d.get("attrs") or {}))


@dataclass(frozen=True, slots=True)
class AttrChange:
    """A cosmetic change to one node's or one edge's attribute."""

    key: str
    value: Any
    node: str | None = None
    edge: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "node": self.node,
                "edge": list(self.edge) if self.edge else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttrChange:
        edge = d.get("edge")
        return cls(str(d["key"]), d.get("value"), d.get("node"),
                   (str(edge[0]), str(edge[1])) if edge else None)


@dataclass(frozen=True, slots=True)
class PlanDiff:
    """One atomic change to a plan. ``proposer`` is the node whose task proposed it,
    or ``None`` for registration (a workflow's first diff) and operators."""

    proposer: str | None = None
    nodes: tuple[NodeSpec, ...] = ()
    edges: tuple[EdgeSpec, ...] = ()
    promises: tuple[tuple[str, Promise], ...] = ()
    attrs: tuple[AttrChange, ...] = ()

    def summary(self) -> dict[str, Any]:
        """A short description for violation reports."""
        return {
            "proposer": self.proposer,
            "nodes": [f"{n.id} ({n.task})" for n in self.nodes[:10]],
            "edges": [f"{e.src} -> {e.dst}" for e in self.edges[:10]],
            "promises": [f"{owner}: {p}" for owner, p in self.promises[:10]],
            "size": len(self.nodes) + len(self.edges) + len(self.promises) + len(self.attrs),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "proposer": self.proposer,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "promises": [[owner, p.to_dict()] for owner, p in self.promises],
            "attrs": [a.to_dict() for a in self.attrs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanDiff:
        """Parse a diff's dict form; anything malformed raises ``ValueError``."""
        try:
            return cls(
                proposer=d.get("proposer"),
                nodes=tuple(NodeSpec.from_dict(n) for n in d.get("nodes") or ()),
                edges=tuple(EdgeSpec.from_dict(e) for e in d.get("edges") or ()),
                promises=tuple(
                    (str(owner), promise_from_dict(p)) for owner, p in d.get("promises") or ()
                ),
                attrs=tuple(AttrChange.from_dict(a) for a in d.get("attrs") or ()),
            )
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"malformed diff: {exc!r}") from exc


RejectionKind = Literal["violation", "plan", "nondeterminism"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a diff was refused, or why a closing region broke its promise.

    ``kind`` says what the caller can do: a ``violation`` terminates the
    workflow; a ``plan`` error or ``nondeterminism`` fails the proposing task.
    """

    kind: RejectionKind
    reason: str
    proposer: str | None
    promise: str | None = None
    owner: str | None = None
    diff: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def broken(cls, tracker: Tracker, reason: str, *, proposer: str | None,
               diff: Mapping[str, Any] | None = None) -> Rejection:
        return cls("violation", reason, proposer, str(tracker.promise), tracker.owner,
                    dict(diff or {}))

    def message(self) -> str:
        if self.kind == "violation":
            return (f"{self.proposer} broke {self.promise} (promised by {self.owner}): "
                    f"{self.reason}")
        return f"{self.proposer}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "proposer": self.proposer,
                "promise": self.promise, "owner": self.owner, "diff": dict(self.diff)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rejection:
        return cls(d["kind"], d["reason"], d.get("proposer"), d.get("promise"),
                   d.get("owner"), dict(d.get("diff") or {}))
