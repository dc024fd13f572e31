"""The Context: what a running task sees of its workflow, and how it changes it.

A task proposes graph mutations (spawns, runs-after edges, promises) through
its Context. They are batched into one :class:`PlanDiff` and sent only when
the task has to: when it waits (they ride on ``Wait.diff``, applied before
the wait) or when it finishes (on ``Finish.diff``). So ``ctx.map`` over a thousand
items is one diff, and a task that never awaits sends one message.

Durability (see :mod:`plait.replay`): a Context built from an Assign's
``History`` replays it. Spawns re-derive their ids (re-proposals of known
nodes are no-ops for Flow), children whose result is in the history are
awaited without asking Flow, and replay-safe helpers return recorded values.
Values recorded anew ride on the next Propose, Wait or Finish.

The Context talks to Flow through a :class:`Transport` (the worker process's
socket thread in production, a fake in tests). Each wait is written once as a
generator of requests, driven by a blocking loop (``.result()`` in sync tasks)
or an awaiting one (``await`` in async tasks).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random as _random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

from plait.errors import PlaitError, PlanError, PromiseViolation, TaskFailed, WorkflowCancelled
from plait.handles import Durable, Gathered, Handle, Step
from plait.protocol.diff import AttrChange, EdgeSpec, NodeSpec, PlanDiff, Rejection
from plait.protocol.messages import (
    Error,
    History,
    Message,
    NodeResult,
    Propose,
    Proposed,
    Recorded,
    Resolved,
    SetState,
    TaskHeartbeat,
    Wait,
)
from plait.protocol.promises import Promise
from plait.replay import (
    ChildIds,
    Evicted,
    Recorder,
    StepFailure,
    call_site,
    sdk_file,
    spawn_divergence,
    value_adapter,
)
from plait.task import (
    InvalidArguments,
    Task,
    as_data,
    as_task,
    checked_output,
    encode_inputs,
    nodes_after,
    ref_of,
)

__all__ = ["Context", "Durable", "Gathered", "Handle", "Recorder", "Transport"]

T = TypeVar("T")
Steps = Generator[Message, Message, Any]

sdk_file(__file__)


_IN_STEP: ContextVar[str | None] = ContextVar("plait_in_step", default=None)
_TAKERS_PRUNED_AT = 64  # finished coroutines are forgotten beyond this many takers


class Transport(Protocol):
    """How a Context reaches Flow.

    ``request`` is one request, one reply (as a future, which fails with
    :class:`WorkflowCancelled` if the attempt is cancelled while it waits, or
    with the private ``Evicted`` when the worker drops the task). ``send`` is
    fire-and-forget from the task's side (the supervisor sees to its Ack).
    ``cancelled`` and ``evicted`` say so between requests.
    """

    def request(self, message: Propose | Wait) -> Future[Message]: ...

    def send(self, message: TaskHeartbeat | SetState) -> None: ...

    @property
    def cancelled(self) -> bool: ...

    @property
    def evicted(self) -> bool: ...


class Context:
    """A running attempt's view of its workflow. Built by the worker, passed first."""

    def __init__(self, *, workflow_id: str, node_id: str, transport: Transport,
                 attempt: int = 1, idempotency_key: str | None = None,
                 history: History | None = None) -> None:
        self._workflow_id = workflow_id
        self._node_id = node_id
        self._attempt = attempt
        self._idempotency_key = idempotency_key or f"{workflow_id}/{node_id}"
        self._transport = transport
        self.recorder = Recorder(history, node_id, spawns=lambda: self._seq)
        self._ids = ChildIds(node_id, attempt, history.previous if history else ())
        self._results: dict[str, NodeResult] = dict(history.results) if history else {}
        self.heartbeat_details: Any = history.heartbeat if history else None
        self._seq = 0  # the spawn seq
        # asyncio tasks that took record or spawn numbers, the latest taker last
        self._takers: OrderedDict[asyncio.Task[Any], None] = OrderedDict()
        self._prune_at = _TAKERS_PRUNED_AT
        self._spawned: dict[str, NodeSpec] = {}
        self._sites: dict[str, str] = {}  # child id -> file:line of its spawn
        self._after_me: set[str] = set()  # nodes that cannot start before this task ends
        self._nodes: list[NodeSpec] = []
        self._edges: list[EdgeSpec] = []
        self._promises: list[tuple[str, Promise]] = []
        self._attrs: dict[tuple[str, str | None], AttrChange] = {}
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

    @property
    def replaying(self) -> bool:
        """True while this execution re-walks recorded history (handy to skip logging)."""
        return self.recorder.replaying

    def _check(self, takes: str | None = None) -> None:
        """Whether ctx may be used now; ``takes`` names a call that takes the next
        record or spawn number."""
        step = _IN_STEP.get()
        if step is not None:
            raise PlaitError(f"step {step} uses ctx: a step's function must not "
                             f"(a replay returns its value without running it)")
        if self._transport.evicted:
            raise Evicted
        if self._transport.cancelled:
            raise WorkflowCancelled(f"workflow {self._workflow_id} was cancelled "
                                    f"(node {self._node_id})")
        if takes is not None:
            self._in_turn(takes)

    def _in_turn(self, call: str) -> None:
        """Records and spawns are numbered in the order their calls run. Coroutines
        run concurrently (asyncio.gather, create_task) take their numbers in an order
        that timing decides once a call has made one of them pause, and a replay,
        whose recorded calls do not pause, would hand the numbers out differently:
        wrong values, or a divergence that is none. So a coroutine that took a number
        may take another only if every coroutine that took one since has finished.
        (Each taking its first number before it pauses is replayed alike:
        ``asyncio.gather(ctx.step(a), ctx.step(b))``, a spawn in each of several
        gathered coroutines.)"""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop in this thread: one line of calls
            return
        if task is None:
            return
        takers = self._takers
        if task in takers:
            for other in reversed(takers):
                if other is task:
                    break
                if not other.done():
                    raise PlaitError(
                        f"{call} at {call_site()} interleaves with durable calls of "
                        f"another coroutine still running, in an order timing decides: "
                        f"a replay would not repeat it. Make durable calls (steps, "
                        f"spawns, recorded values, sleeps) from one coroutine, or let "
                        f"the gathered ones end first (asyncio.gather(..., "
                        f"return_exceptions=True) waits for all of them)")
            takers.move_to_end(task)
        else:
            takers[task] = None
            if len(takers) > self._prune_at:  # amortised: a scan per doubling
                for done in [t for t in takers if t.done()]:
                    del takers[done]
                self._prune_at = max(_TAKERS_PRUNED_AT, 2 * len(takers))

    # --- proposing --------------------------------------------------------------------

    def spawn(self, fn: Any, *args: Any, after: Iterable[Any] | Handle = (), key: str | None = None,
              **attrs: Any) -> Handle:
        """Create a child node running ``fn(*args)``; it may run concurrently with this task.

        Keywords naming a parameter of ``fn`` are its keyword arguments; the
        others are node attributes (``color``, ``label``...), plain data. Handles
        among the arguments become data edges; ``after`` (one node or several)
        adds runs-after edges. ``key`` names the child: its id is
        ``<this node>/<key>`` (so a key has no ``/``) instead of a spawn number.
        """
        return self._spawn(fn, args, after, key, attrs, then=False, site=call_site())

    def then(self, fn: Any, *args: Any, after: Iterable[Any] | Handle = (), key: str | None = None,
             **attrs: Any) -> Handle:
        """Like :meth:`spawn`, with an edge from this node: the child runs after this task."""
        return self._spawn(fn, args, after, key, attrs, then=True, site=call_site())

    def map(self, fn: Any, items: Iterable[Any]) -> list[Handle]:
        """One child per item (``fn(item)``), all in one diff."""
        site = call_site()
        t = as_task(fn)
        # All at once only for items already there: a generator may spawn as it
        # goes, and its children's ids (their spawn order) must stay as they were.
        if t is not None and isinstance(items, list | tuple | range) and items:
            self._check(takes="ctx.map()")
            encoded = t.encode_items(items)
            if encoded is not None:
                return [self._add(t, t.name, inputs, [], [], None, {}, then=False, site=site)
                        for inputs in encoded]
        # One by one: an invalid item is named, with the children before it batched.
        return [self._spawn(fn, (item,), (), None, {}, then=False, site=site) for item in items]

    def promise(self, *promises: Promise) -> None:
        """Promise how this node's part of the graph may still change (binds its children)."""
        self._check()
        for p in promises:
            if not isinstance(p, Promise):
                raise TypeError(f"ctx.promise() takes promises, got {p!r}")
            self._promises.append((self._node_id, p))

    def _spawn(self, fn: Any, args: Sequence[Any], after: Iterable[Any] | Handle, key: str | None,
               keywords: dict[str, Any], *, then: bool, site: str) -> Handle:
        self._check(takes="ctx.then()" if then else "ctx.spawn()")
        t = as_task(fn)
        kwargs, attrs = t.split_keywords(keywords) if t is not None else ({}, keywords)
        name, inputs, refs = encode_inputs(fn, args, kwargs)
        afters = [a if isinstance(a, str) else ref_of(a) or _not_a_node(a)
                  for a in nodes_after(after)]
        if key is not None:
            key = _checked_key(key)
        # Checked here, at the call: found unencodable when the diff is sent, an
        # attribute failed the task at its next await, or killed its worker at Finish.
        attrs = {k: as_data(v, f"attribute {k}=") for k, v in attrs.items()}
        return self._add(t, name, inputs, refs, afters, key, attrs, then=then, site=site)

    def _add(self, t: Task[Any, Any] | None, name: str, inputs: dict[str, Any],
             refs: list[str], afters: list[str], key: str | None, attrs: dict[str, Any],
             *, then: bool, site: str) -> Handle:
        """Batch one encoded spawn; a second identical spawn is the same node."""
        self._seq += 1
        nid = self._ids.derive(self._seq, key, name, inputs)
        spec = NodeSpec(nid, name, inputs, attrs, creator=self._node_id, key=key)
        known = self._spawned.get(nid)
        if known is not None:
            if not known.same_as(spec):
                raise PlanError(f"{self._node_id} spawned two different nodes with id {nid}")
            return Handle(self, nid, name, t)
        if then:
            afters = [self._node_id, *afters]
        self._spawned[nid] = spec
        self._sites[nid] = site
        self._nodes.append(spec)
        if refs or afters:  # a map's children have neither: skip the work
            self._edges += [EdgeSpec(r, nid, data=True) for r in refs]
            self._edges += [EdgeSpec(a, nid) for a in afters if a not in refs]
            if then or self._after_me.intersection(refs + afters):
                self._after_me.add(nid)
        if t is not None and t.promises:
            self._promises += [(nid, p) for p in t.promises]
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

    def flush(self) -> None:
        """Propose what is batched now (a replaying worker does so before Finish, so
        that a divergent spawn is reported at its line, not as a failed Finish)."""
        self._drive(self._propose_steps())

    def take_recorded(self) -> list[Recorded]:
        """Values recorded since the last message (the worker's Finish carries them)."""
        return self.recorder.take()

    # --- state and liveness -------------------------------------------------------------

    def set_state(self, value: Any) -> None:
        """Publish a queryable state for this node (``Run.query()`` reads it at once).
        A replay does not publish again what its first execution did: queries would
        see the state go back, and the history would hold it twice."""
        self._check()
        value = as_data(value, "state")
        if self.recorder.replaying:
            return
        self._transport.send(SetState(workflow_id=self._workflow_id, node=self._node_id,
                                      attempt=self._attempt, value=value))

    def heartbeat(self, details: Any = None) -> None:
        """Say this long task is alive; ``details`` (data) are kept for a retry, which
        finds the last ones in ``ctx.heartbeat_details``. Also a cancellation point."""
        self._check()
        if details is not None:
            self.heartbeat_details = as_data(details, "heartbeat details")
        # Alive either way; a replay's details are older than what its first
        # execution sent, and would become what a retry resumes from.
        self._transport.send(TaskHeartbeat(
            workflow_id=self._workflow_id, node=self._node_id, attempt=self._attempt,
            details=None if self.recorder.replaying else self.heartbeat_details))

    # --- recorded values ------------------------------------------------------------------

    def random(self) -> float:
        """A float in [0, 1), recorded (replay returns the same value)."""
        self._check(takes="ctx.random()")
        return float(self.recorder.record("random", _random.random, call_site()))

    def now(self) -> datetime:
        """The current UTC time, recorded."""
        self._check(takes="ctx.now()")
        when = self.recorder.record("now", lambda: datetime.now(UTC).isoformat(), call_site())
        return datetime.fromisoformat(when)

    def uuid4(self) -> uuid.UUID:
        """A random UUID, recorded."""
        self._check(takes="ctx.uuid4()")
        return uuid.UUID(self.recorder.record("uuid4", lambda: str(uuid.uuid4()), call_site()))

    def side_effect(self, fn: Callable[[], T], returns: Any = None) -> T:
        """Run ``fn`` once and record its value (replay returns it without running ``fn``).

        The value is recorded as data and read back as ``returns`` (default: the
        return annotation of ``fn``, else plain data), so the first run and a
        replay see the same thing. What ``fn`` raises is recorded too: a replay
        raises it again (as for :meth:`step`) without running ``fn``.
        """
        self._check(takes="ctx.side_effect()")
        adapter = value_adapter(fn, returns)

        def check(value: Any) -> Any:
            return checked_output(adapter, value, f"side_effect {getattr(fn, '__name__', fn)}")

        return cast(T, adapter.validate_python(
            self.recorder.side_effect(fn, check, call_site())))

    def version(self, change_id: str) -> bool:
        """Whether to take the new code path of change ``change_id``.

        True on a first execution; a replay of history written by code without
        this call returns False (the old path), and the choice is recorded, so
        one attempt keeps to one path for good.
        """
        self._check(takes="ctx.version()")
        return self.recorder.version(change_id, call_site())

    # --- durable steps --------------------------------------------------------------------

    def step(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Step[Any]:
        """A durable step: ``await ctx.step(fn, *args)`` / ``ctx.step(fn, *args).result()``
        runs ``fn(*args, **kwargs)`` in this task and goes on once its value is
        durably recorded; a replay, or a retry after this worker died, gets the
        value back without running ``fn`` again. Lighter than a child task (no node,
        no other worker); ``fn`` may be async (then ``await`` the step) and must not
        use ``ctx``. Its value is recorded as data and read back as ``fn``'s return
        annotation."""
        self._check()
        if not callable(fn):
            raise TypeError(f"ctx.step() takes a function, got {fn!r}")
        return Step(self, fn, args, kwargs, call_site())

    def _step(self, s: Step[Any]) -> Any:
        if s.done:
            return self._kept(s)
        if s.running is not None:
            raise PlaitError(f"step {s.name} is being awaited by another coroutine: "
                             f"await it too, rather than result()")
        if inspect.iscoroutinefunction(s.fn):
            raise PlaitError(f"{s.name} is async: `await ctx.step(...)` it")
        seq, index, done, value = self._begin_step(s)
        if not done:
            try:
                with self._inside(s):
                    out = s.fn(*s.args, **s.kwargs)
            except Exception as exc:  # recorded, then raised to the body
                s.done, s.value = True, self._step_failed(s, seq, index, exc)
                raise
            if inspect.isawaitable(out):
                if inspect.iscoroutine(out):
                    out.close()
                raise PlaitError(f"{s.name} returned an awaitable: `await ctx.step(...)` it")
            value = self._step_done(s, seq, index, out)
            self._drive(self._propose_steps(always=True))
        return self._end_step(s, value)

    async def _await_step(self, s: Step[Any]) -> Any:
        while s.running is not None:  # awaited concurrently: its first await runs it
            await asyncio.shield(s.running)
            if s.interrupted is not None:  # that await failed after fn had run
                raise s.interrupted
        if s.done:
            return self._kept(s)
        s.running, s.interrupted = asyncio.get_running_loop().create_future(), None
        try:
            return await self._run_step(s)
        except Exception as exc:
            # fn ran, and its value may be recorded: the others must not run it again
            # (a cancelled await, a BaseException, lets the next one run it instead).
            s.interrupted = None if s.done else exc
            raise
        finally:
            s.running.set_result(None)
            s.running = None

    async def _run_step(self, s: Step[Any]) -> Any:
        seq, index, done, value = self._begin_step(s)
        if not done:
            try:
                with self._inside(s):
                    out = s.fn(*s.args, **s.kwargs)
                    if inspect.isawaitable(out):
                        out = await out
            except Exception as exc:
                s.done, s.value = True, self._step_failed(s, seq, index, exc)
                raise
            value = self._step_done(s, seq, index, out)
            await self._adrive(self._propose_steps(always=True))
        return self._end_step(s, value)

    def _begin_step(self, s: Step[Any]) -> tuple[int, int, bool, Any]:
        self._check(takes=f"ctx.step({s.name})")
        return self.recorder.step(s.name, s.site)

    @classmethod
    def _end_step(cls, s: Step[Any], value: Any) -> Any:
        """The recorded value read back as ``fn`` returns it, kept on the Step (or
        the recorded failure, raised)."""
        s.done = True
        s.value = value if isinstance(value, StepFailure) else (
            value_adapter(s.fn).validate_python(value))
        return cls._kept(s)

    @staticmethod
    def _kept(s: Step[Any]) -> Any:
        if isinstance(s.value, StepFailure):
            raise s.value.exception()
        return s.value

    @staticmethod
    @contextmanager
    def _inside(s: Step[Any]) -> Iterator[None]:
        """While a step's function runs, ``ctx`` refuses to be used: what it would
        record would not be there when a replay skips the function. A context
        variable, not an attribute: concurrent steps (``asyncio.gather``) each run
        in a task of their own."""
        token = _IN_STEP.set(s.name)
        try:
            yield
        finally:
            _IN_STEP.reset(token)

    def _step_failed(self, s: Step[Any], seq: int, index: int, exc: Exception) -> StepFailure:
        # No commit of its own: nothing replays this attempt before its next message
        # (which carries the record) reaches Flow, and a retry runs the step anew.
        failure = StepFailure.of(exc)
        self.recorder.step_failed(seq, index, s.name, failure, s.site)
        failure.raised = exc  # this run raises the exception itself, traceback and all
        return failure

    def _step_done(self, s: Step[Any], seq: int, index: int, out: Any) -> Any:
        value = checked_output(value_adapter(s.fn), out, f"step {s.name}")
        self.recorder.step_done(seq, index, s.name, value, s.site)
        return value

    # --- durable waits --------------------------------------------------------------------

    def sleep(self, seconds: float) -> Durable:
        """A durable timer: ``await ctx.sleep(s)`` / ``ctx.sleep(s).result()``.

        The worker is freed while it runs; Flow's clock fires it, even across restarts.
        """
        self._check(takes="ctx.sleep()")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"ctx.sleep() takes seconds >= 0, got {seconds!r}")
        site = call_site()
        seq, fired, _ = self.recorder.wait("sleep", site)
        return Durable(self, "sleep", seq, site, seconds=float(seconds),
                       done=fired or seconds == 0)

    def signal(self, name: str) -> Durable:
        """Wait for the signal ``name`` (``Run.signal``); its result is the payload.

        Signals sent before the wait are kept for it; the worker is freed meanwhile.
        """
        self._check(takes="ctx.signal()")
        if not isinstance(name, str) or not name:
            raise ValueError(f"ctx.signal() takes a signal name, got {name!r}")
        site = call_site()
        seq, delivered, payload = self.recorder.wait("signal", site)
        return Durable(self, "signal", seq, site, name=name, done=delivered, value=payload)

    # --- waiting -------------------------------------------------------------------------

    def gather(self, handles: Iterable[Handle], *, return_exceptions: bool = False) -> Gathered:
        """All these handles' results, in order; the first failure is raised unless
        ``return_exceptions``, in which case failures are returned in place."""
        self._check()
        return Gathered(self, list(handles), return_exceptions)

    def _propose_steps(self, always: bool = False) -> Generator[Message, Message, None]:
        """Propose what is batched; with ``always``, even nothing (a durable step:
        the recorded values go, and Flow answers only after committing them)."""
        diff = self.take_diff()
        if diff is None and not always:
            return
        diff = diff or PlanDiff(proposer=self._node_id)
        reply = yield Propose(workflow_id=self._workflow_id, node=self._node_id,
                              attempt=self._attempt, diff=diff.to_dict(),
                              recorded=self.recorder.take())
        self._on_proposed(reply)

    def _wait_steps(self, handles: Sequence[Handle]) -> Steps:
        self._check()
        ids = list(dict.fromkeys(h.id for h in handles))
        missing = [nid for nid in ids if nid not in self._results]
        unsent = {n.id for n in self._nodes}.intersection(ids)
        if not missing and not unsent:
            return
        for nid in missing:
            if nid in self._after_me:
                raise PlanError(f"{self._node_id} cannot wait for {nid}: it runs after "
                                f"{self._node_id} finishes")
        if not missing:
            # A replay re-proposes known children before using their recorded
            # results, so that Flow tells a divergent spawn before its result is trusted.
            yield from self._propose_steps()
            return
        reply = yield self._wait(handles=missing, seq=self.recorder.seq, spawns=self._seq)
        self._on_resolved(reply, missing)

    def _wait(self, **what: Any) -> Wait:
        """A Wait carrying the proposals not sent yet: Flow applies them first, so a
        spawn-then-await is one round trip."""
        diff = self.take_diff()
        return Wait(workflow_id=self._workflow_id, node=self._node_id, attempt=self._attempt,
                    recorded=self.recorder.take(), diff=diff.to_dict() if diff else None,
                    **what)

    def _durable_steps(self, w: Durable) -> Steps:
        self._check()
        if w.done:
            return w.value
        reply = yield self._wait(timer=w.seconds, signal=w.name, seq=w.seq, spawns=self._seq)
        self._on_resolved(reply, [])
        assert isinstance(reply, Resolved)
        w.done, w.value = True, reply.value
        return w.value

    def _drive(self, steps: Steps, timeout: float | None = None) -> Any:
        try:
            request = next(steps)
            while True:
                future = self._transport.request(request)  # type: ignore[arg-type]
                request = steps.send(future.result(timeout))
        except StopIteration as stop:
            return stop.value

    async def _adrive(self, steps: Steps) -> Any:
        # Concurrent awaits (asyncio.gather over handles) take turns, so that a
        # Wait never reaches Flow before the message carrying the spawns it names.
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            try:
                request = next(steps)
                while True:
                    future = self._transport.request(request)  # type: ignore[arg-type]
                    request = steps.send(await asyncio.wrap_future(future))
            except StopIteration as stop:
                return stop.value

    def _values(self, handles: Sequence[Handle], return_exceptions: bool,
                timeout: float | None) -> list[Any]:
        if timeout is None:
            self._drive(self._wait_steps(handles))
        else:
            # Whether it timed out is recorded: a replay, whose results are all
            # there at once, would otherwise return where the first run raised, skip
            # the body's except, and diverge from the history it goes on to read.
            self._check(takes="result(timeout=)")

            def timed_out() -> bool:
                try:
                    self._drive(self._wait_steps(handles), timeout)
                except TimeoutError:
                    return True
                return False

            if self.recorder.timed_out(timed_out, call_site()):
                raise TimeoutError(f"no result within {timeout}s")
            self._drive(self._wait_steps(handles))  # known by now, or a replay's wait
        return self._outcomes(handles, return_exceptions)

    async def _await_values(self, handles: Sequence[Handle],
                            return_exceptions: bool) -> list[Any]:
        await self._adrive(self._wait_steps(handles))
        return self._outcomes(handles, return_exceptions)

    async def _await_one(self, handle: Handle) -> Any:
        return (await self._await_values([handle], False))[0]

    def _durable(self, w: Durable) -> Any:
        return self._drive(self._durable_steps(w))

    async def _await_durable(self, w: Durable) -> Any:
        return await self._adrive(self._durable_steps(w))

    def _on_proposed(self, reply: Message) -> None:
        if isinstance(reply, Error):
            raise PlaitError(f"Flow refused the proposal of {self._node_id}: "
                             f"{reply.code}: {reply.reason}")
        if not isinstance(reply, Proposed):
            raise PlaitError(f"expected a Proposed reply, got {type(reply).__name__}")
        if not reply.ok:
            rej = Rejection.from_dict(reply.rejection or {
                "kind": "plan", "reason": "rejected without a reason", "proposer": None})
            if rej.kind == "nondeterminism":
                raise spawn_divergence(self._node_id, rej.reason, self._sites)
            if rej.kind == "violation":
                raise PromiseViolation(rej.message(), promise=rej.promise or "",
                                       owner=rej.owner, proposer=rej.proposer,
                                       diff=dict(rej.diff))
            raise PlanError(rej.message())

    def _on_resolved(self, reply: Message, expected: list[str]) -> None:
        if isinstance(reply, Proposed):  # the proposals the Wait carried were refused
            self._on_proposed(reply)
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
                values.append(h.outcome(self._results[h.id]))
            except (TaskFailed, WorkflowCancelled, PlaitError) as exc:
                if not return_exceptions:
                    raise
                values.append(exc)
        return values


def _checked_key(key: Any) -> str:
    # A child's id is "creator/key": a "/" in a key could name a grandchild's id.
    text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
    if not isinstance(text, str) or not text or "/" in text:
        raise InvalidArguments(f"key= takes a non-empty string without '/' (or an int), "
                               f"got {key!r}")
    return text


def _not_a_node(value: Any) -> str:
    raise TypeError(f"after= takes handles, node references or node ids, got {value!r}")
