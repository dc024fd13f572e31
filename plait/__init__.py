"""plait: a durable workflow orchestration engine, from static to dynamic, with promises.

The public names (code outside the project relies on them); everything else may change.
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from plait.client import Client, Run
    from plait.context import Context
    from plait.errors import (
        NonDeterminismError,
        PlaitError,
        PlanError,
        PromiseViolation,
        ProtocolError,
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

# Imported now, not on first use: importing the module plait.task (as the worker
# does) sets the package's attribute ``task``, which must stay the decorator.
from plait.task import Retry, task

__all__ = [
    "Any",
    "Client",
    "Context",
    "Graph",
    "Loop",
    "MaxNodes",
    "MaxParallel",
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
    "TaskFailed",
    "WorkflowCancelled",
    "task",
]

# Where each public name lives. They are imported on first use, so that a program
# importing only ``plait.client`` (a script, the CLI, Flow) does not also pay for
# the task runtime and asyncio: a fifth of the import time of a cold start.
_WHERE = {
    "Any": "plait.protocol.shape",
    "Client": "plait.client",
    "Context": "plait.context",
    "Graph": "plait.graph",
    "Loop": "plait.protocol.shape",
    "MaxNodes": "plait.protocol.promises",
    "MaxParallel": "plait.protocol.promises",
    "NoEdgesFrom": "plait.protocol.promises",
    "NoEdgesTo": "plait.protocol.promises",
    "NoNewEdges": "plait.protocol.promises",
    "NoNewNodes": "plait.protocol.promises",
    "NonDeterminismError": "plait.errors",
    "OneOf": "plait.protocol.shape",
    "OnlyEdges": "plait.protocol.promises",
    "OnlyNodes": "plait.protocol.promises",
    "Par": "plait.protocol.shape",
    "PlaitError": "plait.errors",
    "PlanError": "plait.errors",
    "PromiseViolation": "plait.errors",
    "ProtocolError": "plait.errors",
    "Repeat": "plait.protocol.shape",
    "Run": "plait.client",
    "Seq": "plait.protocol.shape",
    "Shape": "plait.protocol.promises",
    "TaskFailed": "plait.errors",
    "WorkflowCancelled": "plait.errors",
}


# Not seen by type checkers, for which a module __getattr__ would make every
# misspelt name valid.
if not typing.TYPE_CHECKING:

    def __getattr__(name: str) -> typing.Any:
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module 'plait' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
