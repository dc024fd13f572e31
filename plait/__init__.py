"""plait: a durable workflow orchestration engine, from static to dynamic, with promises.

The public names (code outside the project relies on them); everything else may change.
"""

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
