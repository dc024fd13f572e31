"""Tasks: the ``@task`` decorator, retry policies, and the registry of tasks by name.

A task is a plain function (``def`` or ``async def``) whose first parameter is
the :class:`~plait.context.Context`. Decorating it registers it under a name and
attaches what Flow needs to know without importing code (queue, retry policy,
timeouts, caching) and what the plan needs (promises made about every node of
the task).

Arguments and results cross process boundaries as JSON-able data, validated
against the function's annotations with pydantic twice: when a node is proposed
(so a wrong type fails in the proposing process, before anything is recorded)
and when it runs (so a worker never trusts the wire).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import traceback
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from pydantic import PydanticSchemaGenerationError, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from plait.errors import PlaitError
from plait.protocol.messages import TaskInfo
from plait.protocol.promises import Promise

__all__ = [
    "InvalidArguments",
    "InvalidOutput",
    "Retry",
    "Task",
    "UnknownTask",
    "as_data",
    "as_task",
    "encode_inputs",
    "get_task",
    "import_user_module",
    "ref_of",
    "registered",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")

_ANY: TypeAdapter[Any] = TypeAdapter(Any)


class InvalidArguments(PlaitError, TypeError):
    """A task was given arguments its signature or annotations do not accept."""

    code = "invalid_arguments"


class InvalidOutput(PlaitError, TypeError):
    """A task returned a value its return annotation does not accept, or no data."""

    code = "invalid_output"


class UnknownTask(PlaitError, LookupError):
    """No task of that name is registered (or served) here."""

    code = "unknown_task"


# --- retry policy ---------------------------------------------------------------


def _exc_name(exc: type[BaseException] | str) -> str:
    return exc if isinstance(exc, str) else exc.__name__


@dataclass(frozen=True, slots=True, init=False)
class Retry:
    """How often and how soon a failed attempt is retried.

    Attempt ``n`` (1-based) that fails waits ``min(initial * backoff**(n-1),
    maximum)`` seconds before attempt ``n+1``, up to ``max_attempts`` attempts.
    Exceptions named in ``non_retryable`` (classes or class names; subclasses
    count) fail the node at once.
    """

    max_attempts: int = 3
    initial: float = 1.0
    backoff: float = 2.0
    maximum: float = 60.0
    non_retryable: tuple[str, ...] = field(default=())

    def __init__(self, max_attempts: int = 3, initial: float = 1.0, backoff: float = 2.0,
                 maximum: float = 60.0,
                 non_retryable: Iterable[type[BaseException] | str] | type[BaseException] | str
                 = ()) -> None:
        if max_attempts < 1:
            raise ValueError("Retry.max_attempts must be at least 1")
        if not (0 <= initial < math.inf and 0 <= maximum < math.inf and 1 <= backoff < math.inf):
            raise ValueError("Retry needs finite initial >= 0, maximum >= 0 and backoff >= 1")
        object.__setattr__(self, "max_attempts", int(max_attempts))
        object.__setattr__(self, "initial", float(initial))
        object.__setattr__(self, "backoff", float(backoff))
        object.__setattr__(self, "maximum", float(maximum))
        if isinstance(non_retryable, str | type):  # one: a name is not its letters
            non_retryable = [non_retryable]
        object.__setattr__(self, "non_retryable", tuple(_exc_name(e) for e in non_retryable))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return float(min(self.initial * self.backoff ** max(attempt - 1, 0), self.maximum))

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried under this policy (attempts aside)."""
        names = {cls.__name__ for cls in type(exc).__mro__}
        return not names.intersection(self.non_retryable)

    def to_dict(self) -> dict[str, Any]:
        return {"max_attempts": self.max_attempts, "initial": self.initial,
                "backoff": self.backoff, "maximum": self.maximum,
                "non_retryable": list(self.non_retryable)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Retry:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


DEFAULT_RETRY = Retry()


# --- references to nodes inside arguments ---------------------------------------------


def ref_of(value: Any) -> str | None:
    """The node id a handle or node reference stands for, or None for plain data."""
    ref = getattr(type(value), "__plait_ref__", None)
    return str(value.__plait_ref__) if ref is not None else None


def nodes_after(after: Any) -> Iterable[Any]:
    """``after=``: one node (a handle, a node reference, an id) or several; a lone
    id is not iterated into its characters."""
    return [after] if isinstance(after, str) or ref_of(after) is not None else after


def _has_ref(value: Any) -> bool:
    if ref_of(value) is not None:
        return True
    if isinstance(value, list | tuple):
        return any(_has_ref(v) for v in value)
    if isinstance(value, dict):
        return any(_has_ref(v) for v in value.values())
    return False


def _encode_refs(value: Any, refs: dict[str, None]) -> Any:
    """Replace handles (anywhere inside lists and dicts) by ``{"$ref": id}``;
    ``refs`` collects their ids in order (a dict, so a reduce over 10,000 handles
    stays linear)."""
    node = ref_of(value)
    if node is not None:
        refs[node] = None
        return {"$ref": node}
    if isinstance(value, list | tuple):
        return [_encode_refs(v, refs) for v in value]
    if isinstance(value, dict):
        return {k: _encode_refs(v, refs) for k, v in value.items()}
    return as_data(value, "argument")


def as_data(value: Any, what: str) -> Any:
    try:
        return _ANY.dump_python(value, mode="json")
    except PydanticSerializationError as exc:
        raise InvalidArguments(f"{what} {value!r} is not JSON-able data: {exc}") from exc


def checked_output(adapter: TypeAdapter[Any], value: Any, what: str) -> Any:
    """What ``what`` returned, checked against its return type, as JSON-able data to
    record: a value of the wrong type is refused here, before it is recorded (dumped
    unchecked, pydantic only warns, and every replay would fail on it)."""
    try:
        return adapter.dump_python(adapter.validate_python(value), mode="json")
    except ValidationError as exc:
        raise InvalidOutput(f"{what} returned {value!r}: {_first_error(exc)}") from exc
    except PydanticSerializationError as exc:
        raise InvalidOutput(f"{what} returned {value!r}, which is not data: {exc}") from exc


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first['msg']}" if where else str(first["msg"])


# --- the task object --------------------------------------------------------------------


class Task(Generic[P, R]):
    """A registered task. Calling it calls the function (handy in unit tests)."""

    __plait_task__: str
    __name__: str  # copied from the function, like the rest of functools.update_wrapper
    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(self, fn: Callable[P, R], *, name: str | None = None,
                 retry: Retry | None = None, promises: Sequence[Promise] = (),
                 queue: str = "default", timeout: float | None = None,
                 schedule_to_start: float | None = None, heartbeat_timeout: float | None = None,
                 cache: bool = False, version: str = "") -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name or fn.__name__
        self.__plait_task__ = self.name
        self.retry = retry
        self.promises = tuple(promises)
        self.queue = queue
        for what, seconds in (("timeout", timeout), ("schedule_to_start", schedule_to_start),
                              ("heartbeat_timeout", heartbeat_timeout)):
            if seconds is not None and not 0 < seconds < math.inf:
                raise PlaitError(f"task {self.name}: {what} must be a positive, finite "
                                 f"number of seconds, got {seconds!r}")
        self.timeout = timeout
        self.schedule_to_start = schedule_to_start
        self.heartbeat_timeout = heartbeat_timeout
        self.cache = cache
        self.version = version
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise PlaitError(f"task {self.name}: the first parameter must be the Context")
        self.params = params[1:]
        self._adapters: dict[str, TypeAdapter[Any]] | None = None
        self._items: TypeAdapter[list[Any]] | None = None  # map's whole-list adapter
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        # The parameters a call may fill by position alone, if there are no others.
        self._positional = (tuple(p.name for p in self.params)
                            if all(p.kind in positional for p in self.params) else None)
        self._keywords = frozenset(p.name for p in self.params if p.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<plait task {self.name} ({self.fn.__module__}.{self.fn.__qualname__})>"

    @property
    def module(self) -> str:
        return str(self.fn.__module__)

    def info(self) -> TaskInfo:
        """What Flow learns of this task from a supervisor's Hello."""
        return TaskInfo(name=self.name, queue=self.queue,
                        retry=self.retry.to_dict() if self.retry else None, timeout=self.timeout,
                        schedule_to_start=self.schedule_to_start,
                        heartbeat_timeout=self.heartbeat_timeout, cache=self.cache,
                        version=self.version)

    def policy(self) -> Retry:
        return self.retry or DEFAULT_RETRY

    # --- annotations ---------------------------------------------------------------

    def adapters(self) -> dict[str, TypeAdapter[Any]]:
        """One pydantic adapter per parameter (key ``"return"`` for the result).

        Built on first use so that annotations may name classes defined later
        in the module (forward references).
        """
        if self._adapters is None:
            try:
                hints = typing.get_type_hints(self.fn, include_extras=True)
            except (NameError, TypeError) as exc:
                raise PlaitError(f"task {self.name}: cannot resolve annotations: {exc}") from exc
            names = [p.name for p in self.params] + ["return"]
            try:
                self._adapters = {n: TypeAdapter(hints.get(n, Any)) for n in names}
            except PydanticSchemaGenerationError as exc:
                raise PlaitError(f"task {self.name}: an annotation is not data: {exc}") from exc
        return self._adapters

    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        try:
            return self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{self.name}(): {exc}") from exc

    def _apply(self, args: Sequence[Any], kwargs: Mapping[str, Any],
               one: Callable[[str, TypeAdapter[Any], Any], Any]
               ) -> tuple[list[Any], dict[str, Any]]:
        """Bind a call, apply ``one(param, adapter, value)`` to every argument but
        the Context, and return the positional and keyword arguments converted."""
        names = self._positional
        if names is not None and not kwargs and len(args) == len(names):
            # Every parameter passed by position, the common case (a map over items):
            # nothing for inspect's bind to check, and it was a third of a spawn.
            adapters = self.adapters()
            return [one(n, adapters[n], v) for n, v in zip(names, args, strict=True)], {}
        bound = self._bind(args, kwargs)
        self._convert(bound, one)
        return list(bound.args[1:]), dict(bound.kwargs)

    def _convert(self, bound: inspect.BoundArguments,
                 one: Callable[[str, TypeAdapter[Any], Any], Any]) -> None:
        adapters = self.adapters()
        kinds = {p.name: p.kind for p in self.params}
        for pname, value in list(bound.arguments.items())[1:]:
            adapter = adapters[pname]
            if kinds[pname] is inspect.Parameter.VAR_POSITIONAL:
                bound.arguments[pname] = tuple(one(pname, adapter, v) for v in value)
            elif kinds[pname] is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[pname] = {k: one(f"{pname}[{k}]", adapter, v)
                                          for k, v in value.items()}
            else:
                bound.arguments[pname] = one(pname, adapter, value)

    def split_keywords(self, keywords: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``spawn``/``add`` keywords into the task's keyword arguments (those
        naming one of its parameters) and node attributes (everything else)."""
        if not keywords:
            return {}, {}
        names = self._keywords
        kwargs = {k: v for k, v in keywords.items() if k in names}
        return kwargs, {k: v for k, v in keywords.items() if k not in names}

    def encode_inputs(self, args: Sequence[Any],
                      kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Validate a call's arguments and turn them into node inputs.

        Returns ``{"args", "kwargs"}`` as JSON-able data and the node ids that
        handles among the arguments refer to (each becomes a data edge). An
        argument holding a handle is checked when the node runs, not now: its
        value does not exist yet.
        """
        refs: dict[str, None] = {}

        def one(pname: str, adapter: TypeAdapter[Any], value: Any) -> Any:
            if _has_ref(value):
                return _encode_refs(value, refs)
            try:
                return adapter.dump_python(adapter.validate_python(value), mode="json")
            except ValidationError as exc:
                raise InvalidArguments(
                    f"{self.name}(): argument {pname}={value!r}: {_first_error(exc)}") from exc
            except PydanticSerializationError as exc:
                raise InvalidArguments(
                    f"{self.name}(): argument {pname} is not JSON-able data: {exc}") from exc

        positional, keywords = self._apply(args, kwargs, one)
        return {"args": positional, "kwargs": keywords}, list(refs)

    def encode_items(self, items: Sequence[Any]) -> list[dict[str, Any]] | None:
        """The inputs of ``self(item)`` for every item, as :meth:`encode_inputs` makes
        them, or None where that is needed instead: the task takes other than one
        positional parameter, an item holds a handle, or the list type does not
        take every item as it is (the per-item path then says which, and why).

        One pydantic call validates and dumps the whole list: a map over 10,000
        items spent half of its spawns' time in the per-item calls around pydantic.
        """
        if self._positional is None or len(self._positional) != 1 or any(
                map(_has_ref, items)):
            return None
        adapter = self._items_adapter()
        try:
            dumped = adapter.dump_python(adapter.validate_python(items), mode="json")
        except (ValidationError, PydanticSerializationError):
            return None
        if len(dumped) != len(items):  # a validator omitted an item (PydanticOmit)
            return None
        return [{"args": [value], "kwargs": {}} for value in dumped]

    def _items_adapter(self) -> TypeAdapter[list[Any]]:
        if self._items is None:
            self.adapters()  # first: its errors for annotations that are not data
            hint = typing.get_type_hints(self.fn, include_extras=True).get(
                self._positional[0] if self._positional else "", Any)
            self._items = TypeAdapter(list[hint])  # type: ignore[valid-type]
        return self._items

    def decode_inputs(self, inputs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Node inputs (refs already resolved by Flow) to validated Python arguments."""
        args, kwargs = inputs.get("args", []), inputs.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InvalidArguments(f"{self.name}(): inputs must be {{'args': [], 'kwargs': {{}}}}")

        def one(pname: str, adapter: TypeAdapter[Any], value: Any) -> Any:
            try:
                return adapter.validate_python(value)
            except ValidationError as exc:
                raise InvalidArguments(
                    f"{self.name}(): argument {pname}={value!r}: {_first_error(exc)}") from exc

        return self._apply(args, kwargs, one)

    def encode_output(self, value: Any) -> Any:
        """A result, checked against the return annotation, as JSON-able data."""
        if ref_of(value) is not None:
            raise InvalidOutput(f"{self.name} returned a handle; await it and return its result")
        return checked_output(self.adapters()["return"], value, self.name)

    def decode_output(self, data: Any) -> Any:
        """A recorded result back to the return annotation's Python type."""
        return self.adapters()["return"].validate_python(data)


# --- the registry and the decorator ---------------------------------------------------------

# Every task ever decorated in this process, and the latest one per name. Two
# modules may use one name (tests and examples do); a supervisor refuses to
# serve both (see ``registered``), since Flow knows tasks by name only.
_ALL: dict[tuple[str, str], Task[Any, Any]] = {}
_BY_NAME: dict[str, Task[Any, Any]] = {}


def _register(t: Task[Any, Any]) -> None:
    _ALL[(t.module, t.fn.__qualname__)] = t
    _BY_NAME[t.name] = t


def get_task(name: str) -> Task[Any, Any] | None:
    """The task registered last under ``name``, if any."""
    return _BY_NAME.get(name)


def as_task(target: Any) -> Task[Any, Any] | None:
    """``target`` if it is a task, the registered task it names, else None."""
    if isinstance(target, Task):
        return target
    return get_task(target) if isinstance(target, str) else None


def import_user_module(name: str) -> ModuleType:
    """Import a module of the user's (tasks, graphs). Whatever its import raises
    becomes one PlaitError that says where: a process edge prints one line, and a
    module that fails at import (a SyntaxError, a NameError...) is the user's to fix."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # any error of the user's code, converted, never dropped
        where = ""
        if isinstance(exc, SyntaxError):
            where = f" ({exc.filename}, line {exc.lineno})" if exc.filename else ""
        else:
            frames = traceback.extract_tb(exc.__traceback__)
            # The user's frames only: a module that is not there has none.
            own = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
            if own:
                where = f" ({own[-1].filename}, line {own[-1].lineno})"
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise PlaitError(f"cannot import module {name!r}: {type(exc).__name__}: "
                         f"{detail}{where}") from exc


def registered(modules: Iterable[str] | None = None) -> list[Task[Any, Any]]:
    """Registered tasks; with ``modules``, those defined in these modules or packages,
    whose names must then be unique (PlaitError names the two definitions)."""
    if modules is None:
        return list(_BY_NAME.values())
    roots = tuple(modules)
    served: dict[str, Task[Any, Any]] = {}
    for t in _ALL.values():
        if not any(t.module == m or t.module.startswith(m + ".") for m in roots):
            continue
        other = served.setdefault(t.name, t)
        if other is not t:
            raise PlaitError(f"task name {t.name!r} is defined twice: in "
                             f"{other.module}.{other.fn.__qualname__} and "
                             f"{t.module}.{t.fn.__qualname__}; pass @task(name=...)")
    return list(served.values())


def encode_inputs(target: Any, args: Sequence[Any],
                  kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """Task name, node inputs and referenced node ids for a call of ``target``.

    ``target`` is a task or a task name; a name not registered here (a task
    another supervisor serves) is accepted, its arguments only checked to be data.
    """
    t = as_task(target)
    if t is not None:
        return (t.name, *t.encode_inputs(args, kwargs))
    if not isinstance(target, str) or not target:
        raise PlaitError(f"{target!r} is not a task: decorate it with @plait.task")
    refs: dict[str, None] = {}
    inputs = {"args": _encode_refs(list(args), refs),
              "kwargs": {k: _encode_refs(v, refs) for k, v in kwargs.items()}}
    return target, inputs, list(refs)


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(*, name: str | None = None, retry: Retry | None = None,
         promises: Sequence[Promise] = (), queue: str = "default",
         timeout: float | None = None, schedule_to_start: float | None = None,
         heartbeat_timeout: float | None = None, cache: bool = False,
         version: str = "") -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, *, name: str | None = None,
         retry: Retry | None = None, promises: Sequence[Promise] = (), queue: str = "default",
         timeout: float | None = None, schedule_to_start: float | None = None,
         heartbeat_timeout: float | None = None, cache: bool = False,
         version: str = "") -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Register a function as a task: ``@task`` or ``@task(name=..., retry=..., ...)``.

    ``timeout`` (start-to-close), ``schedule_to_start`` (how long a ready node
    may wait for a worker) and ``heartbeat_timeout`` (longest silence between
    ``ctx.heartbeat()`` calls) are seconds; a timed-out attempt fails, retryably.
    ``cache=True`` lets Flow reuse the recorded result of an identical call (same
    task, ``version`` and inputs), across workflows: change ``version`` when the
    task's meaning changes. ``queue`` names where it runs: a supervisor started with
    ``--queue`` serves only the tasks on the queues it lists (without, every queue).
    """

    def wrap(f: Callable[P, R]) -> Task[P, R]:
        t = Task(f, name=name, retry=retry, promises=promises, queue=queue, timeout=timeout,
                 schedule_to_start=schedule_to_start, heartbeat_timeout=heartbeat_timeout,
                 cache=cache, version=version)
        _register(t)
        return t

    return wrap(fn) if fn is not None else wrap
