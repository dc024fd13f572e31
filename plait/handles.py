"""What a task waits on: child handles, gathered handles, and durable waits.

All three work the same way in both kinds of task: ``await`` them in an
``async def`` task, call ``.result()`` in a plain ``def`` one (``Gathered``
also behaves as the list of its values). Creating one sends nothing; waiting
on it does, through the :class:`~plait.context.Context` that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from pydantic import ValidationError

from plait.errors import TaskFailed, WorkflowCancelled
from plait.protocol.messages import NodeResult
from plait.replay import sdk_file
from plait.task import InvalidOutput, Task

if TYPE_CHECKING:
    import asyncio

    from plait.context import Context

__all__ = ["Durable", "Gathered", "Handle", "Step"]

T = TypeVar("T")

sdk_file(__file__)


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

    def outcome(self, result: NodeResult) -> Any:
        """The node's output (typed), or its failure or cancellation raised."""
        if result.state == "succeeded":
            return self.decode(result.output)
        if result.state == "cancelled":
            raise WorkflowCancelled(f"{self.id} ({self.task}) was cancelled")
        err = result.error or {}
        raise TaskFailed(f"{self.id} ({self.task}) failed: {err.get('type', 'Error')}: "
                         f"{err.get('message', result.state)}", node=self.id,
                         attempts=int(err.get("attempts") or 0), cause=err.get("type"))

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


class Durable:
    """A durable wait, ``ctx.sleep(seconds)`` or ``ctx.signal(name)``.

    Its record seq is taken when it is created. Waiting on it (``await w`` or
    ``w.result()``) returns at once if the history says it is over (the timer
    fired, the signal's payload is recorded); otherwise the task tells Flow what
    it waits for and its worker drops it: the task stops at that point (nothing
    more runs, ``finally`` blocks aside) and Flow runs it again, replaying, once
    the timer fires or the signal arrives. ``result()`` is the signal's payload
    (None for a sleep).
    """

    __slots__ = ("_ctx", "done", "kind", "name", "seconds", "seq", "site", "value")

    def __init__(self, ctx: Context, kind: Literal["sleep", "signal"], seq: int, site: str, *,
                 seconds: float | None = None, name: str | None = None, done: bool = False,
                 value: Any = None) -> None:
        self._ctx = ctx
        self.kind = kind
        self.seq = seq
        self.site = site
        self.seconds = seconds
        self.name = name
        self.done = done
        self.value = value

    def __repr__(self) -> str:
        what = f"sleep({self.seconds:g})" if self.kind == "sleep" else f"signal({self.name!r})"
        return f"<Durable {what} seq={self.seq}{' done' if self.done else ''}>"

    def __await__(self) -> Generator[Any, None, Any]:
        return self._ctx._await_durable(self).__await__()

    def result(self) -> Any:
        """Wait (the worker drops the task unless the wait is already over)."""
        return self._ctx._durable(self)


class Step(Generic[T]):
    """A durable step, ``ctx.step(fn, *args, **kwargs)``.

    Waiting on it (``await step`` or ``step.result()``) runs ``fn`` and returns
    its value once Flow has durably recorded it. When the task runs again
    (replayed after its worker dropped it, or a retry after its worker died) a
    completed step returns the recorded value without running ``fn``. A step
    that raises records its failure: the task sees the exception, a replay of
    the same attempt raises it again without running ``fn``, and a retry runs
    the step again.
    """

    __slots__ = ("_ctx", "args", "done", "fn", "interrupted", "kwargs", "name", "running",
                 "site", "value")

    def __init__(self, ctx: Context, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], site: str) -> None:
        self._ctx = ctx
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.name = str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
        self.site = site
        self.done = False  # waited on once: its value is kept (a second wait runs nothing)
        self.value: Any = None
        # Set while the first ``await`` runs it: awaits meanwhile (asyncio.gather) wait
        # for that one instead of running the step again.
        self.running: asyncio.Future[None] | None = None
        self.interrupted: Exception | None = None  # why that await ended without a value

    def __repr__(self) -> str:
        return f"<Step {self.name} at {self.site}>"

    def __await__(self) -> Generator[Any, None, T]:
        return self._ctx._await_step(self).__await__()

    def result(self) -> T:
        """Run the step (unless it completed before) and return its recorded value."""
        return self._ctx._step(self)
