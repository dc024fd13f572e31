"""Replay: the record cursor of one task execution, and how its children get ids.

A task body may run several times for one node. Within an attempt it runs
again every time the attempt resumes after its worker dropped it (a durable
wait, or an eviction while it awaited children): Flow assigns it again with a
:class:`~plait.protocol.messages.History`, and the body replays it from the
top. A new attempt (a retry after a failure) also runs the body from the top,
but draws fresh values: only its children are matched with earlier attempts'.

Two counters number what an execution does, both from 0 at the top of the body:
the *spawn seq* (child ids, see :class:`ChildIds`) and the *record seq*, taken
by every replay-safe call (``random``, ``now``, ``uuid4``, ``side_effect``,
``version``, ``step``, a handle's ``result(timeout=)``) and by every durable
wait (``sleep``, ``signal``).
Durable steps also count among themselves (the *step index*): a new attempt
gets back, without running it, every step an earlier attempt completed at the
same index with the same function. The
:class:`Recorder` walks the record seq: a value recorded at that seq is
returned instead of computed, and a call of another kind is a divergence
(:class:`~plait.errors.NonDeterminismError` naming both and the caller's
``file:line``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import typing
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import PydanticSchemaGenerationError, TypeAdapter

from plait.errors import NonDeterminismError, StepFailed
from plait.protocol.diff import child_id
from plait.protocol.messages import History, PreviousChild, Recorded

__all__ = ["ChildIds", "Evicted", "Recorder", "call_site", "sdk_file", "spawn_divergence",
           "value_adapter"]


class Evicted(BaseException):
    """Raised at the await point of a task whose worker dropped it (it resumes later).

    A BaseException, like ``KeyboardInterrupt``, so that a task's own
    ``except Exception`` cannot swallow it; ``finally`` blocks and context
    managers still run. Workers catch it and report nothing for the attempt.
    """


# --- call sites ---------------------------------------------------------------------

_SDK_FILES: set[str] = {__file__}


def sdk_file(path: str) -> None:
    """Declare a module of the SDK: call sites are looked for beyond its frames."""
    _SDK_FILES.add(path)


def call_site() -> str:
    """``file:line`` of the innermost caller outside the SDK (the task's own line)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename in _SDK_FILES:
        frame = frame.f_back
    path = frame.f_code.co_filename
    here = os.getcwd()
    if path.startswith(here + os.sep):
        path = path[len(here) + 1:]
    return f"{path}:{frame.f_lineno}"


# --- the record cursor ---------------------------------------------------------------------


def _describe(rec: Recorded) -> str:
    if rec.kind == "version" and _is_pair(rec.value):
        what = f"version({rec.value[0]!r})"
    elif rec.kind in ("step", "step_error") and isinstance(rec.value, dict):
        what = f"step({rec.value.get('fn')})"
    elif rec.kind == "side_effect_error":
        what = "side_effect()"
    else:
        what = f"{rec.kind}()"
    return f"{what} at {rec.site}" if rec.site else what


def _is_pair(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2


_MAX_MESSAGE = 4000  # characters of a failed step's message kept in its record
_INT_RANGE = range(-(2**63), 2**64)  # what msgpack encodes


def _plain(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value in _INT_RANGE
    return value is None or isinstance(value, str | float | bool)


class StepFailure:
    """What a durable step's function raised, as recorded (a ``step_error`` record):
    its type (``module.Name``), message, and arguments when they are plain scalars."""

    __slots__ = ("error", "raised")

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        self.raised: BaseException | None = None  # the exception itself, in the run that raised it

    @classmethod
    def of(cls, exc: BaseException) -> StepFailure:
        kind = type(exc)
        try:
            message = str(exc)
        except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure itself
            message = kind.__name__
        args = list(exc.args)
        return cls({"type": f"{kind.__module__}.{kind.__qualname__}",
                    "message": message[:_MAX_MESSAGE],
                    "args": args if all(_plain(a) for a in args) else None})

    def exception(self) -> BaseException:
        """The exception again, as an instance of its own type when that type is already
        imported (nothing is imported on the history's word): built by its constructor
        from the recorded arguments if that gives the recorded message back, else
        without running any constructor, with the recorded message and arguments. An
        ``except`` of its type catches it either way; :class:`~plait.errors.StepFailed`
        when the type is not found."""
        if self.raised is not None:
            return self.raised
        name = str(self.error.get("type", ""))
        message = str(self.error.get("message", ""))
        args = self.error.get("args")
        module, _, qualname = name.rpartition(".")
        found: Any = sys.modules.get(module)
        for part in qualname.split(".") if found is not None and qualname else ():
            found = getattr(found, part, None)
        if not (isinstance(found, type) and issubclass(found, Exception)):
            return StepFailed(name, message)
        if isinstance(args, list):
            try:
                rebuilt = found(*args)
                if str(rebuilt) == message:
                    return rebuilt
            except Exception:  # noqa: BLE001 - a constructor that wants other arguments
                pass
        try:
            return _as_recorded(found, message, tuple(args) if isinstance(args, list)
                                else (message,))
        except Exception:  # noqa: BLE001 - a type that cannot be made without its __init__
            return StepFailed(name, message)


_REPLAYED: weakref.WeakKeyDictionary[type, type[Exception]] = weakref.WeakKeyDictionary()


def _as_recorded(kind: type[Exception], message: str, args: tuple[Any, ...]) -> Exception:
    """An instance of a subclass of ``kind`` (named like it) whose ``str`` is the
    recorded message, made without running ``kind``'s ``__init__``."""
    replayed = _REPLAYED.get(kind)
    if replayed is None:
        replayed = _REPLAYED[kind] = type(kind.__name__, (kind,), {
            "__module__": kind.__module__, "__qualname__": kind.__qualname__,
            "__str__": lambda self: self._plait_message})
    exc = replayed.__new__(replayed, *args)
    exc.args = args
    exc._plait_message = message  # type: ignore[attr-defined]
    return exc


_NO_HISTORY = History()  # a first execution's: built once, not per task (it is frozen)


class Recorder:
    """The record seq of one execution, replaying the attempt's history.

    ``values`` lists every record of this execution in order, replayed or new;
    new ones also wait in an outbox (:meth:`take`) until the next message to
    Flow carries them. ``replaying`` is True while the history holds records at
    or beyond the current seq, or the execution is not yet back at the wait it
    resumes from (it has not caught up with its history yet).
    """

    def __init__(self, history: History | None = None, node: str = "?",
                 spawns: Callable[[], int] = lambda: 0) -> None:
        h = history or _NO_HISTORY
        self._node = node
        self._spawns = spawns  # the execution's spawn seq now
        self._resumed_at = h.resumed_at
        self._past: dict[int, Recorded] = {r.seq: r for r in h.recorded}
        self._timers = set(h.timers)
        self._signals: dict[int, Any] = {int(seq): payload for seq, payload in h.signals}
        self._horizon = max([*self._past, *self._timers, *self._signals], default=-1)
        self._steps = {s.index: s for s in h.steps}  # completed by earlier attempts
        self._step_index = 0
        self._versions: dict[str, bool] = {}  # change id -> the path taken
        self.seq = 0
        self.values: list[Recorded] = []
        self._outbox: list[Recorded] = []

    @property
    def replaying(self) -> bool:
        if self.seq <= self._horizon:
            return True
        if self._resumed_at is None:
            return False
        # Not yet back where the execution last waited: before that wait's records
        # or spawns (a wait for children leaves no record of its own).
        seq, spawns = self._resumed_at
        if self.seq < seq or self._spawns() < spawns:
            return True
        self._resumed_at = None  # past it for good: both only grow
        return False

    def take(self) -> list[Recorded]:
        """The values recorded since the last call (to ride on the next message)."""
        out, self._outbox = self._outbox, []
        return out

    def record(self, kind: str, produce: Callable[[], Any], site: str) -> Any:
        """The value at the next seq: the recorded one on replay, else ``produce()``,
        which must return plain data (it is recorded as such)."""
        seq = self.seq
        past = self._past.get(seq)
        if past is not None and past.kind == kind:
            return self._consume(past)
        self._check_free(seq, f"{kind}()", site)
        return self._new(kind, produce(), site)

    def side_effect(self, produce: Callable[[], Any], check: Callable[[Any], Any],
                    site: str) -> Any:
        """``ctx.side_effect``: like :meth:`record`, and what ``produce`` raised is
        recorded too (``side_effect_error``), so that a replay raises it again
        rather than calling the outside world a second time, and maybe taking the
        other branch of the body's ``except``. ``check`` turns the value into the
        data recorded; what it refuses (a bug, failing the attempt) is not recorded."""
        seq = self.seq
        past = self._past.get(seq)
        if past is not None and past.kind == "side_effect":
            return self._consume(past)
        if past is not None and past.kind == "side_effect_error" \
                and isinstance(past.value, dict):
            raise StepFailure(self._consume(past)).exception()
        self._check_free(seq, "side_effect()", site)
        try:
            value = produce()
        except Exception as exc:
            self._new("side_effect_error", StepFailure.of(exc).error, site)
            raise
        return self._new("side_effect", check(value), site)

    def timed_out(self, wait: Callable[[], bool], site: str) -> bool:
        """``result(timeout=)``: whether the wait gave up, recorded (``timed_out``)
        so that a replay gives up where the first run did. History written before
        these were recorded holds another call at this seq: nothing is taken, and
        the wait (whose results the replay has) is not timed."""
        seq = self.seq
        past = self._past.get(seq)
        if past is not None and past.kind == "timed_out":
            return bool(self._consume(past))
        if self._held(seq):
            return False
        return bool(self._new("timed_out", wait(), site))

    def version(self, change_id: str, site: str) -> bool:
        """``ctx.version``: True for code that is new to this execution's history.
        One answer per change id for the whole execution: a later call past the
        history gets the path an earlier one took inside it, not a mix of both."""
        seq = self.seq
        past = self._past.get(seq)
        if past is not None and past.kind == "version" and _is_pair(past.value) \
                and past.value[0] == change_id:
            decided = self._versions[change_id] = bool(self._consume(past)[1])
            return decided
        if self._held(seq):
            # The history was written by code without this call: take the old path
            # and leave this seq to the old code's call that recorded it.
            return self._versions.setdefault(change_id, False)
        decided = self._versions.setdefault(change_id, not self.replaying)
        return bool(self._new("version", [change_id, decided], site)[1])

    def step(self, name: str, site: str) -> tuple[int, int, bool, Any]:
        """Take the record seq and the step index of a durable step (``ctx.step``
        calling function ``name``): ``(seq, index, done, value)``. ``done`` if this
        attempt's history or an earlier attempt completed it; its value then."""
        seq, index = self.seq, self._step_index
        self._step_index += 1
        past = self._past.get(seq)
        if past is not None and past.kind == "step" and isinstance(past.value, dict) \
                and past.value.get("fn") == name:
            return seq, index, True, self._consume(past).get("v")
        if past is not None and past.kind == "step_error" and isinstance(past.value, dict) \
                and past.value.get("fn") == name and isinstance(past.value.get("e"), dict):
            return seq, index, True, StepFailure(self._consume(past)["e"])
        self._check_free(seq, f"step({name})", site)
        self.seq += 1
        earlier = self._steps.get(index)
        if earlier is not None and earlier.name == name:
            self.step_done(seq, index, name, earlier.value, site)  # durable already
            return seq, index, True, earlier.value
        self._steps = {}  # the body took another path: every later step runs anew
        return seq, index, False, None

    def step_done(self, seq: int, index: int, name: str, value: Any, site: str) -> None:
        """Record a step's value at the seq :meth:`step` took (the function ran in
        between; it may not use ``ctx``, so it took no seq of its own)."""
        rec = Recorded(seq=seq, kind="step", value={"i": index, "fn": name, "v": value},
                       site=site)
        self.values.append(rec)
        self._outbox.append(rec)

    def step_failed(self, seq: int, index: int, name: str, failure: StepFailure,
                    site: str) -> None:
        """Record that a step's function raised, so that a replay of this attempt
        raises it again instead of running the function: the body caught it and took
        a path that depends on it. A retry (a new attempt) runs the step anew."""
        rec = Recorded(seq=seq, kind="step_error",
                       value={"i": index, "fn": name, "e": failure.error}, site=site)
        self.values.append(rec)
        self._outbox.append(rec)

    def wait(self, kind: Literal["sleep", "signal"], site: str) -> tuple[int, bool, Any]:
        """Take the seq of a durable wait: ``(seq, already satisfied?, signal payload)``."""
        seq = self.seq
        if kind == "sleep" and seq in self._timers:
            self.seq += 1
            return seq, True, None
        if kind == "signal" and seq in self._signals:
            self.seq += 1
            return seq, True, self._signals[seq]
        self._check_free(seq, f"{kind}()", site)
        self.seq += 1
        return seq, False, None

    def _consume(self, past: Recorded) -> Any:
        self.seq += 1
        self.values.append(past)
        return past.value

    def _new(self, kind: str, value: Any, site: str) -> Any:
        rec = Recorded(seq=self.seq, kind=kind, value=value, site=site)
        self.seq += 1
        self.values.append(rec)
        self._outbox.append(rec)
        return value

    def _held(self, seq: int) -> bool:
        """Whether the history holds a call at ``seq`` (a value, a sleep, a signal)."""
        return seq in self._past or seq in self._timers or seq in self._signals

    def _check_free(self, seq: int, actual: str, site: str) -> None:
        past = self._past.get(seq)
        if past is not None:
            expected = _describe(past)
        elif seq in self._timers:
            expected = "sleep()"
        elif seq in self._signals:
            expected = "signal()"
        else:
            return
        raise NonDeterminismError(
            f"{self._node}: replay diverged at record seq {seq}: the history has "
            f"{expected}, this run calls {actual} at {site}",
            expected=expected, actual=actual, call_site=site)


# --- child ids across attempts -----------------------------------------------------------


class ChildIds:
    """Child ids: ``child_id(node, seq, key)``, reconciled with earlier attempts.

    A spawn at seq ``k`` with the task and inputs of a child an earlier attempt
    spawned at ``k`` (or under the same key) reuses that child's id, so its
    result is reused instead of recomputed. A different spawn whose natural id
    an earlier attempt already used gets ``natural@attempt``, so the earlier
    child stays in the graph as that attempt's history.
    """

    def __init__(self, node: str, attempt: int, previous: Iterable[PreviousChild] = ()) -> None:
        self._node = node
        self._attempt = attempt
        # Indexed once: a spawn looks at the few earlier children at its seq or
        # with its id, never at all of them (a retried map spawns thousands).
        self._by_seq: dict[int, list[tuple[int, PreviousChild]]] = {}
        self._by_id: dict[str, tuple[int, PreviousChild]] = {}
        # Natural id -> the children made under it (``natural``, ``natural@attempt``):
        # a keyed child's seq is not known (-1), its id is all there is.
        self._by_natural: dict[str, list[tuple[int, PreviousChild]]] = {}
        for i, p in enumerate(previous):
            self._by_seq.setdefault(p.seq, []).append((i, p))
            self._by_id.setdefault(p.id, (i, p))
            stripped = _AT_ATTEMPT.sub("", p.id)
            if stripped != p.id:
                self._by_natural.setdefault(stripped, []).append((i, p))

    def derive(self, seq: int, key: str | None, task: str, inputs: Mapping[str, Any]) -> str:
        natural = child_id(self._node, seq, key)
        candidates = [*self._by_seq.get(seq, ()), *self._by_natural.get(natural, ())]
        if natural in self._by_id:  # a key that ends in @N itself is an id as it is
            candidates.append(self._by_id[natural])
        for _, p in sorted(candidates, key=lambda c: c[0]):  # the earliest listed wins
            if p.task == task and dict(p.inputs) == dict(inputs):
                return p.id
        return f"{natural}@{self._attempt}" if natural in self._by_id else natural


# What a later attempt's different spawn appends (attempt 2 on: the first never does)
_AT_ATTEMPT = re.compile(r"@(?:[2-9]|[1-9]\d+)$")

# --- side effects' values ---------------------------------------------------------------


def value_adapter(fn: Callable[..., Any], returns: Any = None) -> TypeAdapter[Any]:
    """How a side effect's value is recorded and read back: as ``returns``, else as
    ``fn``'s return annotation, else as plain data."""
    hint = _return_hint(fn) if returns is None else returns
    try:
        return _adapter(hint)
    except TypeError:  # an unhashable hint: built every time
        return _build_adapter(hint)


# get_type_hints evaluates every annotation, which a durable step paid per value.
# Weak keys: a lambda or closure passed per call must not be kept alive here.
_HINTS: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


def _return_hint(fn: Callable[..., Any]) -> Any:
    target = getattr(fn, "__func__", fn)  # a bound method: its function's hints
    if "return" not in getattr(target, "__annotations__", {}):
        return Any  # a lambda, a builtin, or no annotation
    try:
        return _HINTS[target]
    except (KeyError, TypeError):  # not seen yet, or not weakly referenceable
        pass
    try:
        hint = typing.get_type_hints(target).get("return", Any)
    except (NameError, TypeError, AttributeError):  # an unresolvable hint
        return Any  # not cached: it may resolve later
    with contextlib.suppress(TypeError):
        _HINTS[target] = hint
    return hint


@functools.lru_cache(maxsize=256)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    # A TypeAdapter costs a schema build: once per return type, not once per value.
    return _build_adapter(hint)


def _build_adapter(hint: Any) -> TypeAdapter[Any]:
    try:
        return TypeAdapter(hint)
    except PydanticSchemaGenerationError:
        return TypeAdapter(Any)


# --- spawns Flow found divergent ---------------------------------------------------------

_REDEFINED = re.compile(r"node (\S+) was (.+) and is now proposed as (.+)$")


def spawn_divergence(node: str, reason: str, sites: Mapping[str, str]) -> NonDeterminismError:
    """Flow's "nondeterminism" rejection of a re-proposed spawn, told at the spawn's line.

    Flow says ``node X was A and is now proposed as B``; ``sites`` maps this
    execution's child ids to the ``file:line`` that spawned them.
    """
    match = _REDEFINED.search(reason)
    if match is None:
        child = next((c for c in sorted(sites, key=len, reverse=True) if c in reason), None)
        site = sites.get(child or "", "?")
        return NonDeterminismError(f"{node}: replay diverged at {site}: {reason}",
                                   call_site=site)
    child, expected, actual = match.groups()
    site = sites.get(child, "?")
    return NonDeterminismError(
        f"{node}: replay diverged at {site}: the history has child {child} = {expected}, "
        f"this run spawns {actual} there", expected=expected, actual=actual, call_site=site)
