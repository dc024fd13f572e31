"""plait: a durable workflow orchestration engine, from static to dynamic, with promises.

The public names (code outside the project relies on them); everything else may change.
"""

from __future__ import annotations

import importlib
import typing

from plait.errors import (
    MessageTooLarge,
    NonDeterminismError,
    PlaitError,
    PlanError,
    PromiseViolation,
    ProtocolError,
    StepFailed,
    TaskFailed,
    WorkflowCancelled,
)
from plait.graph import Graph
from plait.protocol.promises import (
    MaxNodes,
    MaxParallel,
    NoEdgesFrom,
    NoEdgesTo,
    NoNewEdges,
    NoNewNodes,
    OnlyEdges,
    OnlyNodes,
    Shape,
)
from plait.protocol.shape import Any, Loop, OneOf, Par, Repeat, Seq
from plait.task import Retry, task

if typing.TYPE_CHECKING:
    from plait.client import Client, Run
    from plait.context import Context

__all__ = [
    "Any",
    "Client",
    "Context",
    "Graph",
    "Loop",
    "MaxNodes",
    "MaxParallel",
    "MessageTooLarge",
    "NoEdgesFrom",
    "NoEdgesTo",
    "NoNewEdges",
    "NoNewNodes",
    "NonDeterminismError",
    "OneOf",
    "OnlyEdges",
    "OnlyNodes",
    "Par",
    "PlaitError",
    "PlanError",
    "PromiseViolation",
    "ProtocolError",
    "Repeat",
    "Retry",
    "Run",
    "Seq",
    "Shape",
    "StepFailed",
    "TaskFailed",
    "WorkflowCancelled",
    "task",
]

# Imported on first use, so that a program importing only ``plait.client`` (a
# script, the CLI, Flow) does not also import asyncio and the task context, and
# one that only defines tasks does not import the client.
_LAZY = {"Client": "plait.client", "Run": "plait.client", "Context": "plait.context"}

# Not seen by type checkers, for which a module __getattr__ would make every
# misspelt name valid.
if not typing.TYPE_CHECKING:

    def __getattr__(name: str) -> typing.Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'plait' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
