"""Static workflows and registration diffs.

A :class:`Graph` is a workflow whose nodes are all known before anything runs:
submitting it applies the whole graph as the workflow's first diff. Its nodes
are the workflow's nodes (no synthetic root). Its tasks may still spawn
children at run time, unless ``static=True`` promises they will not.

:func:`registration` builds that first diff for anything a client submits: a
task (one root node), a Graph, or a ``"module:attr"`` string naming either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from plait.errors import PlaitError, PlanError
from plait.protocol.diff import EdgeSpec, NodeSpec, PlanDiff
from plait.protocol.promises import NoNewEdges, NoNewNodes, Promise
from plait.task import Task, as_task, encode_inputs, import_user_module, nodes_after, ref_of

__all__ = ["Graph", "NodeRef", "registration"]


class NodeRef:
    """A node of a Graph; pass it as an argument (data edge) or in ``after=``."""

    __slots__ = ("graph", "id", "task")

    def __init__(self, graph: Graph, node_id: str, task: str) -> None:
        self.graph = graph
        self.id = node_id
        self.task = task

    @property
    def __plait_ref__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<NodeRef {self.graph.name}:{self.id} ({self.task})>"


class Graph:
    """A workflow known in full before it runs: ``g.add(task, *args, ...)`` per node."""

    def __init__(self, name: str, static: bool = False) -> None:
        if not name:
            raise PlaitError("a Graph needs a name")
        self.name = name
        self.static = static
        self.nodes: list[NodeSpec] = []
        self.edges: list[EdgeSpec] = []
        self.promises: list[tuple[str, Promise]] = []
        self._ids: set[str] = set()

    def add(self, fn: Any, *args: Any, key: str | None = None, after: Iterable[Any] | NodeRef = (),
            promises: Sequence[Promise] = (), **attrs: Any) -> NodeRef:
        """Add a node running ``fn(*args)``; its id is ``key`` or the task name
        (``name#2``, ``name#3``... for repeats). Keywords naming a parameter of
        ``fn`` are its arguments, the others node attributes."""
        t = as_task(fn)
        kwargs, attrs = t.split_keywords(attrs) if t is not None else ({}, attrs)
        name, inputs, refs = encode_inputs(fn, args, kwargs)
        preds = [self._own(a) for a in nodes_after(after)]
        for ref in refs:
            if ref not in self._ids or _foreign(self, (args, kwargs)):
                raise PlanError(f"{self.name}: an argument refers to {ref}, "
                                f"not a node of this graph")
        nid = self._new_id(key or name, explicit=key is not None)
        self.nodes.append(NodeSpec(nid, name, inputs, attrs, creator=None, key=key))
        self.edges += [EdgeSpec(r, nid, data=True) for r in refs]
        self.edges += [EdgeSpec(p, nid) for p in dict.fromkeys(preds) if p not in refs]
        own = [*(t.promises if t is not None else ()), *promises]
        if self.static:
            own += [NoNewNodes(), NoNewEdges()]
        for p in own:
            if (nid, p) not in self.promises:
                self.promises.append((nid, p))
        return NodeRef(self, nid, name)

    def _new_id(self, base: str, *, explicit: bool) -> str:
        nid, n = base, 1
        while nid in self._ids:
            if explicit:
                raise PlanError(f"{self.name}: key {base!r} is used twice")
            n += 1
            nid = f"{base}#{n}"
        self._ids.add(nid)
        return nid

    def _own(self, ref: Any) -> str:
        nid = ref if isinstance(ref, str) else ref_of(ref)
        if nid is None or nid not in self._ids or _foreign(self, ref):
            raise PlanError(f"{self.name}: after= names {ref!r}, not a node of this graph")
        return nid

    def sinks(self) -> list[str]:
        """Nodes no edge leaves, in the order they were added."""
        sources = {e.src for e in self.edges}
        return [n.id for n in self.nodes if n.id not in sources]

    @property
    def root(self) -> str:
        """The ``root`` a Submit carries for this graph: a name no node has, which
        tells Flow that the workflow's output is its single sink's, else a dict of
        its sinks' outputs (a Graph has no root node of its own)."""
        if not self.nodes:
            raise PlaitError(f"graph {self.name} has no nodes")
        root = self.name
        while root in self._ids:
            root += "#graph"
        return root

    def diff(self) -> PlanDiff:
        """The whole graph as one registration diff."""
        return PlanDiff(proposer=None, nodes=tuple(self.nodes), edges=tuple(self.edges),
                        promises=tuple(self.promises))


def _foreign(graph: Graph, value: Any) -> bool:
    """Whether ``value`` holds a node reference of another graph (ids may coincide)."""
    if isinstance(value, NodeRef):
        return value.graph is not graph
    if isinstance(value, list | tuple):
        return any(_foreign(graph, v) for v in value)
    if isinstance(value, dict):
        return any(_foreign(graph, v) for v in value.values())
    return False


def _resolve(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PlaitError(f"{target!r}: expected 'module:attr' (for example 'myapp.tasks:main')")
    obj: Any = import_user_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PlaitError(f"{target!r}: module {module_name!r} has no {attr!r}") from exc
    return obj


def registration(target: Any, args: Sequence[Any] = (),
                 kwargs: Mapping[str, Any] | None = None) -> tuple[str, str, PlanDiff]:
    """``(workflow name, root node id, first diff)`` for a task, a Graph or "module:attr"."""
    obj = _resolve(target) if isinstance(target, str) else target
    kwargs = dict(kwargs or {})
    if isinstance(obj, Graph):
        if args or kwargs:
            raise PlaitError(f"graph {obj.name} takes no arguments; pass them to Graph.add")
        return obj.name, obj.root, obj.diff()
    if isinstance(obj, Task):
        inputs, refs = obj.encode_inputs(args, kwargs)
        if refs:
            raise PlaitError(f"{obj.name}: a submitted task's arguments must be data, not handles")
        node = NodeSpec(obj.name, obj.name, inputs, {}, creator=None)
        diff = PlanDiff(proposer=None, nodes=(node,),
                        promises=tuple((obj.name, p) for p in obj.promises))
        return obj.name, obj.name, diff
    raise PlaitError(f"{target!r} is neither a task (decorated with @plait.task) nor a Graph")
