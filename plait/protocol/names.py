"""Turning task references (names or decorated functions) into task names."""

from __future__ import annotations

from typing import Any

TaskRef = Any
"""A task name, or a function decorated with ``@plait.task`` (or any callable)."""


def task_name(ref: TaskRef) -> str:
    """The registered name of a task reference.

    Promise and shape constructors accept functions as well as names, so that a
    rename is caught by the type checker instead of silently widening a promise.
    """
    if isinstance(ref, str):
        if not ref:
            raise ValueError("a task name cannot be empty")
        return ref
    name = getattr(ref, "__plait_task__", None) or getattr(ref, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"expected a task name or a task function, got {ref!r}")
    return name
