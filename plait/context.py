"""The Context: what a running task sees of its workflow, and how it changes it.

A task proposes graph mutations (spawns, runs-after edges, promises, state)
through its Context. They are batched into one :class:`PlanDiff` and sent only
when the task has to: before it waits for a node (``Propose`` then ``Wait``)
or when it finishes (the rest rides on ``Finish.diff``). So ``ctx.map`` over a
thousand items is one diff, and a task that never awaits sends one message.

The Context talks to Flow through a :class:`Transport` (the worker process's
socket thread in production, a fake in tests). The same wait logic serves
``await handle`` in async tasks and ``handle.result()`` in sync ones: it is
written once as a generator of requests, driven by either a blocking or an
awaiting loop.
"""

from __future__ import annotations

import asyncio
import random as _random
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, overload

from pydantic import ValidationError

from plait.errors import (
    NonDeterminismError,
    PlaitError,
    PlanError,
    PromiseViolation,
    TaskFailed,
    WorkflowCancelled,
)
from plait.protocol.diff import AttrChange, EdgeSpec, NodeSpec, PlanDiff, Rejection, child_id
from plait.protocol.messages import Error, Message, NodeResult, Propose, Proposed, Resolved, Wait
from plait.protocol.promises import Promise
from plait.task import InvalidOutput, Task, as_data, as_task, encode_inputs, ref_of

__all__ = ["Context", "Gathered", "Handle", "Recorder", "Transport"]

T = TypeVar("T")
Steps = Generator[Message, Message, None]


class Transport(Protocol):
    """How a Context reaches Flow: one request, one reply (as a future).

    The future fails with :class:`WorkflowCancelled` if the attempt is
    cancelled while it waits; ``cancelled`` says so between requests.
    """

    def request(self, message: Propose | Wait) -> Future[Message]: ...

    @property
    def cancelled(self) -> bool: ...


class Recorder:
    """Where non-deterministic values come from (the replay seam).

    This one computes each value and keeps it in ``values``, in call order.
    Replay (the durability issue) substitutes a recorder that returns the
    values recorded by an earlier attempt instead of computing them again.
    """

    def __init__(self) -> None:
        self.values: list[tuple[str, Any]] = []

    def record(self, kind: str, produce: Callable[[], T]) -> T:
        value = produce()
        self.values.append((kind, value))
        return value


class Handle:
    """A node this task spawned: await it (``await h``) or block on ``h.result()``."""

    __slots__ = ("_ctx", "_task", "id", "task")

    def __init__(self, ctx: Context, node_id: str, task_name: str,
                 task: Task[Any, Any] | None) -> None:
        self._ctx = ctx
        self._task = task
        self.id = node_id
        self.task = task_name

    @property
    def __plait_ref__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<Handle {self.id} ({self.task})>"

    def __await__(self) -> Generator[Any, None, Any]:
        return self._ctx._await_one(self).__await__()

    def result(self, timeout: float | None = None) -> Any:
        """Wait (blocking the worker) for this node; its output, or its failure raised."""
        return self._ctx._values([self], False, timeout)[0]

    def done(self) -> bool:
        """Whether this task already knows the node's result (never asks Flow)."""
        return self.id in self._ctx._results

    def decode(self, output: Any) -> Any:
        if self._task is None:
            return output
        try:
            return self._task.decode_output(output)
        except ValidationError as exc:
            raise InvalidOutput(f"{self.id} ({self.task}) output {output!r} does not match "
                                f"its return annotation: {exc}") from exc


class Gathered(Sequence[Any]):
    """Several handles' results: ``await ctx.gather(hs)`` in async tasks; in sync
    ones, ``.result()`` or simply use it as a list (which waits on first use)."""

    def __init__(self, ctx: Context, handles: Sequence[Handle], return_exceptions: bool) -> None:
        self._ctx = ctx
        self._handles = list(handles)
        self._return_exceptions = return_exceptions
        self._values: list[Any] | None = None

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self._ctx._await_values(self._handles, self._return_exceptions).__await__()

    def result(self, timeout: float | None = None) -> list[Any]:
        if self._values is None:
            self._values = self._ctx._values(self._handles, self._return_exceptions, timeout)
        return self._values

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self.result()[index]

    def __len__(self) -> int:
        return len(self._handles)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.result())


class Context:
    """A running attempt's view of its workflow. Built by the worker, passed first."""

    def __init__(self, *, workflow_id: str, node_id: str, transport: Transport,
                 attempt: int = 1, idempotency_key: str | None = None,
                 recorder: Recorder | None = None) -> None:
        self._workflow_id = workflow_id
        self._node_id = node_id
        self._attempt = attempt
        self._idempotency_key = idempotency_key or f"{workflow_id}/{node_id}"
        self._transport = transport
        self.recorder = recorder or Recorder()
        self._seq = 0
        self._results: dict[str, NodeResult] = {}
        self._spawned: dict[str, NodeSpec] = {}
        self._after_me: set[str] = set()  # nodes that cannot start before this task ends
        self._nodes: list[NodeSpec] = []
        self._edges: list[EdgeSpec] = []
        self._promises: list[tuple[str, Promise]] = []
        self._attrs: dict[tuple[str, str | None], AttrChange] = {}
        self.heartbeat_details: Any = None
        self._turn: asyncio.Lock | None = None

    # --- identity -------------------------------------------------------------------

    @property
    def workflow_id(self) -> str:
        return self._workflow_id

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts of this node: use it for external side effects."""
        return self._idempotency_key

    def _check(self) -> None:
        if self._transport.cancelled:
            raise WorkflowCancelled(f"workflow {self._workflow_id} was cancelled "
                                    f"(node {self._node_id})")

    # --- proposing --------------------------------------------------------------------

    def spawn(self, fn: Any, *args: Any, after: Iterable[Any] = (), key: str | None = None,
              **attrs: Any) -> Handle:
        """Create a child node running ``fn(*args)``; it may run concurrently with this task.

        Keywords naming a parameter of ``fn`` are its keyword arguments; the
        others are node attributes (``color``, ``label``...). Handles among the
        arguments become data edges; ``after`` adds runs-after edges.
        """
        return self._spawn(fn, args, after, key, attrs, then=False)

    def then(self, fn: Any, *args: Any, after: Iterable[Any] = (), key: str | None = None,
             **attrs: Any) -> Handle:
        """Like :meth:`spawn`, with an edge from this node: the child runs after this task."""
        return self._spawn(fn, args, after, key, attrs, then=True)

    def map(self, fn: Any, items: Iterable[Any]) -> list[Handle]:
        """One child per item (``fn(item)``), all in one diff."""
        return [self._spawn(fn, (item,), (), None, {}, then=False) for item in items]

    def promise(self, *promises: Promise) -> None:
        """Promise how this node's part of the graph may still change (binds its children)."""
        self._check()
        for p in promises:
            if not isinstance(p, Promise):
                raise TypeError(f"ctx.promise() takes promises, got {p!r}")
            self._promises.append((self._node_id, p))

    def set_state(self, value: Any) -> None:
        """Publish a queryable state for this node (the node attribute ``state``)."""
        self._check()
        self._set_attr("state", value)

    def heartbeat(self, details: Any = None) -> None:
        """Say this long task is alive; ``details`` are kept as the node's ``heartbeat``.

        Also a cancellation point: a cancelled task raises WorkflowCancelled here.
        """
        self._check()
        self.heartbeat_details = details
        if details is not None:
            self._set_attr("heartbeat", details)

    def _set_attr(self, key: str, value: Any) -> None:
        self._attrs[(key, self._node_id)] = AttrChange(key, as_data(value, key), self._node_id)

    def _spawn(self, fn: Any, args: Sequence[Any], after: Iterable[Any], key: str | None,
               keywords: dict[str, Any], *, then: bool) -> Handle:
        self._check()
        t = as_task(fn)
        kwargs, attrs = t.split_keywords(keywords) if t is not None else ({}, keywords)
        name, inputs, refs = encode_inputs(fn, args, kwargs)
        self._seq += 1
        nid = child_id(self._node_id, self._seq, key)
        spec = NodeSpec(nid, name, inputs, attrs, creator=self._node_id, key=key)
        known = self._spawned.get(nid)
        if known is not None:
            if not known.same_as(spec):
                raise PlanError(f"{self._node_id} spawned two different nodes with id {nid}")
            return Handle(self, nid, name, t)
        afters = [self._node_id] if then else []
        afters += [a if isinstance(a, str) else ref_of(a) or _not_a_node(a) for a in after]
        self._spawned[nid] = spec
        self._nodes.append(spec)
        self._edges += [EdgeSpec(r, nid, data=True) for r in refs]
        self._edges += [EdgeSpec(a, nid) for a in afters if a not in refs]
        self._promises += [(nid, p) for p in (t.promises if t is not None else ())]
        if then or self._after_me.intersection(refs + afters):
            self._after_me.add(nid)
        return Handle(self, nid, name, t)

    def take_diff(self) -> PlanDiff | None:
        """The proposals batched so far (and forget them), or None if there are none."""
        if not (self._nodes or self._edges or self._promises or self._attrs):
            return None
        diff = PlanDiff(proposer=self._node_id, nodes=tuple(self._nodes),
                        edges=tuple(self._edges), promises=tuple(self._promises),
                        attrs=tuple(self._attrs.values()))
        self._nodes, self._edges, self._promises, self._attrs = [], [], [], {}
        return diff

    # --- recorded values ------------------------------------------------------------------

    def random(self) -> float:
        """A float in [0, 1), recorded (replay returns the same value)."""
        self._check()
        return self.recorder.record("random", _random.random)

    def now(self) -> datetime:
        """The current UTC time, recorded."""
        self._check()
        return self.recorder.record("now", lambda: datetime.now(UTC))

    def uuid4(self) -> uuid.UUID:
        """A random UUID, recorded."""
        self._check()
        return self.recorder.record("uuid4", uuid.uuid4)

    def side_effect(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` once and record its value (replay returns it without running ``fn``)."""
        self._check()
        return self.recorder.record("side_effect", fn)

    # --- waiting -------------------------------------------------------------------------

    def gather(self, handles: Iterable[Handle], *, return_exceptions: bool = False) -> Gathered:
        """All these handles' results, in order; the first failure is raised unless
        ``return_exceptions``, in which case failures are returned in place."""
        self._check()
        return Gathered(self, list(handles), return_exceptions)

    def _wait_steps(self, handles: Sequence[Handle]) -> Steps:
        self._check()
        missing = list(dict.fromkeys(h.id for h in handles if h.id not in self._results))
        if not missing:
            return
        for nid in missing:
            if nid in self._after_me:
                raise PlanError(f"{self._node_id} cannot wait for {nid}: it runs after "
                                f"{self._node_id} finishes")
        diff = self.take_diff()
        if diff is not None:
            reply = yield Propose(workflow_id=self._workflow_id, node=self._node_id,
                                  attempt=self._attempt, diff=diff.to_dict())
            self._on_proposed(reply)
        reply = yield Wait(workflow_id=self._workflow_id, node=self._node_id,
                           attempt=self._attempt, handles=missing)
        self._on_resolved(reply, missing)

    def _values(self, handles: Sequence[Handle], return_exceptions: bool,
                timeout: float | None) -> list[Any]:
        steps = self._wait_steps(handles)
        try:
            request = next(steps)
            while True:
                future = self._transport.request(request)  # type: ignore[arg-type]
                request = steps.send(future.result(timeout))
        except StopIteration:
            pass
        return self._outcomes(handles, return_exceptions)

    async def _await_values(self, handles: Sequence[Handle],
                            return_exceptions: bool) -> list[Any]:
        # Concurrent awaits (asyncio.gather over handles) take turns, so that a
        # Wait never overtakes the Propose that creates the nodes it names.
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            steps = self._wait_steps(handles)
            try:
                request = next(steps)
                while True:
                    future = self._transport.request(request)  # type: ignore[arg-type]
                    request = steps.send(await asyncio.wrap_future(future))
            except StopIteration:
                pass
        return self._outcomes(handles, return_exceptions)

    async def _await_one(self, handle: Handle) -> Any:
        return (await self._await_values([handle], False))[0]

    def _on_proposed(self, reply: Message) -> None:
        if isinstance(reply, Error):
            raise PlaitError(f"Flow refused the proposal of {self._node_id}: "
                             f"{reply.code}: {reply.reason}")
        if not isinstance(reply, Proposed):
            raise PlaitError(f"expected a Proposed reply, got {type(reply).__name__}")
        if not reply.ok:
            raise _rejection_error(Rejection.from_dict(reply.rejection or {
                "kind": "plan", "reason": "rejected without a reason", "proposer": None}))

    def _on_resolved(self, reply: Message, expected: list[str]) -> None:
        if isinstance(reply, Error):
            raise PlaitError(f"Flow refused the wait of {self._node_id}: "
                             f"{reply.code}: {reply.reason}")
        if not isinstance(reply, Resolved):
            raise PlaitError(f"expected a Resolved reply, got {type(reply).__name__}")
        self._results.update(reply.results)
        absent = [nid for nid in expected if nid not in self._results]
        if absent:
            raise PlaitError(f"Flow resolved the wait of {self._node_id} without {absent}")

    def _outcomes(self, handles: Sequence[Handle], return_exceptions: bool) -> list[Any]:
        values = []
        for h in handles:
            try:
                values.append(self._outcome(h))
            except (TaskFailed, WorkflowCancelled, PlaitError) as exc:
                if not return_exceptions:
                    raise
                values.append(exc)
        return values

    def _outcome(self, h: Handle) -> Any:
        result = self._results[h.id]
        if result.state == "succeeded":
            return h.decode(result.output)
        if result.state == "cancelled":
            raise WorkflowCancelled(f"{h.id} ({h.task}) was cancelled")
        err = result.error or {}
        raise TaskFailed(f"{h.id} ({h.task}) failed: {err.get('type', 'Error')}: "
                         f"{err.get('message', result.state)}", node=h.id,
                         attempts=int(err.get("attempts") or 0), cause=err.get("type"))


def _not_a_node(value: Any) -> str:
    raise TypeError(f"after= takes handles, node references or node ids, got {value!r}")


def _rejection_error(rej: Rejection) -> PlaitError:
    if rej.kind == "violation":
        return PromiseViolation(rej.message(), promise=rej.promise or "", owner=rej.owner,
                                proposer=rej.proposer, diff=dict(rej.diff))
    if rej.kind == "nondeterminism":
        return NonDeterminismError(rej.message())
    return PlanError(rej.message())
