"""Every message plait processes exchange, as frozen pydantic models.

A message is a msgpack map with ``v`` (protocol version), ``type`` and ``id``
(the correlation id: a reply carries its request's id). Each class's docstring
is its spec: who sends it, what answers it, and which errors it can get.
Replies to a request that cannot be honoured are :class:`Error` with a stable
``code`` (see :mod:`plait.protocol.codec` for the codes of the edge).

Payload fields (``diff``, ``graph``, ``inputs``, ``output``) are plain data:
msgpack-able values, never code.
"""

from __future__ import annotations

import itertools
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1

_ids = itertools.count(1)
_prefix = f"{os.getpid():x}-"


def new_id() -> str:
    """A correlation id unique within this process's lifetime (cheap: no uuid)."""
    return f"{_prefix}{next(_ids)}"


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: int = PROTOCOL_VERSION
    id: str = Field(default_factory=new_id, max_length=128)


# --- generic replies ---------------------------------------------------------


class Error(Message):
    """Reply to any request that failed. ``code`` is stable (``malformed``,
    ``too_large``, ``unknown_type``, ``invalid``, ``bad_version``, ``not_found``,
    ``rejected``, ``unavailable``, ``internal``); ``reason`` is for people."""

    type: Literal["error"] = "error"
    code: str
    reason: str
    detail: dict[str, Any] = Field(default_factory=dict)


class Ack(Message):
    """Reply to a request that needs no data back."""

    type: Literal["ack"] = "ack"


class Heartbeat(Message):
    """Liveness, both ways between Flow and each supervisor (and worker). No reply."""

    type: Literal["heartbeat"] = "heartbeat"


# --- client -> Flow ------------------------------------------------------------


class Submit(Message):
    """Start a workflow. ``diff`` is its registration (first) diff, applied whole
    before anything runs; ``root`` names the node whose result is the workflow's.
    Reply: :class:`Submitted`; :class:`Error` ``rejected`` if the diff is invalid,
    ``invalid`` if the workflow id is taken."""

    type: Literal["submit"] = "submit"
    workflow_id: str | None = None
    name: str
    root: str
    diff: dict[str, Any]


class Submitted(Message):
    type: Literal["submitted"] = "submitted"
    workflow_id: str


class GetStatus(Message):
    """Ask for one workflow's status (or every workflow's, when ``workflow_id`` is
    None). Reply: :class:`StatusReply`; :class:`Error` ``not_found``."""

    type: Literal["get_status"] = "get_status"
    workflow_id: str | None = None


class RunInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow_id: str
    name: str
    status: Literal["running", "paused", "succeeded", "failed", "cancelled", "violated"]
    created: float
    finished: float | None = None
    nodes: int = 0


class StatusReply(Message):
    type: Literal["status_reply"] = "status_reply"
    runs: list[RunInfo]


class AwaitResult(Message):
    """Wait for a workflow to finish. Reply (when it has): :class:`WorkflowResult`;
    :class:`Error` ``not_found``. The client's timeout is its own."""

    type: Literal["await_result"] = "await_result"
    workflow_id: str


class WorkflowResult(Message):
    """A finished workflow: ``status`` and the root's output, or ``error`` as
    ``{"type", "message", ...}`` (a violation carries its promise, owner, proposer)."""

    type: Literal["workflow_result"] = "workflow_result"
    workflow_id: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None


class GetGraph(Message):
    """The as-of-now view, or the view as of sequence number ``at``.
    Reply: :class:`GraphReply` (``graph`` is the JSON document of the view)."""

    type: Literal["get_graph"] = "get_graph"
    workflow_id: str
    at: int | None = None
    unfold: bool = False


class GraphReply(Message):
    type: Literal["graph_reply"] = "graph_reply"
    workflow_id: str
    seq: int
    graph: dict[str, Any]


class GetHistory(Message):
    """The workflow's event log. Reply: :class:`HistoryReply`."""

    type: Literal["get_history"] = "get_history"
    workflow_id: str


class HistoryReply(Message):
    type: Literal["history_reply"] = "history_reply"
    workflow_id: str
    events: list[dict[str, Any]]


class CancelWorkflow(Message):
    """Cancel a workflow: running tasks are told to stop, nothing more is
    scheduled. Reply: :class:`Ack`; :class:`Error` ``not_found``."""

    type: Literal["cancel_workflow"] = "cancel_workflow"
    workflow_id: str


# --- supervisor <-> Flow ---------------------------------------------------------


class AttemptRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow_id: str
    node: str
    attempt: int


class TaskInfo(BaseModel):
    """What Flow needs to know of a task without importing its code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    queue: str = "default"
    retry: dict[str, Any] | None = None  # Retry.to_dict(); None = the default policy
    timeout: float | None = None  # start-to-close, seconds


class Hello(Message):
    """A supervisor joins (or rejoins after Flow restarted): the tasks it serves,
    its free ``slots``, and the attempts its workers are running, so that Flow
    does not run them twice. Reply: :class:`Welcome`."""

    type: Literal["hello"] = "hello"
    supervisor_id: str
    tasks: list[TaskInfo]
    slots: int = Field(ge=0)
    running: list[AttemptRef] = Field(default_factory=list)


class Welcome(Message):
    type: Literal["welcome"] = "welcome"
    heartbeat_interval: float
    heartbeat_timeout: float


class Credit(Message):
    """The supervisor has ``n`` more free worker slots. No reply."""

    type: Literal["credit"] = "credit"
    n: int = Field(ge=1)


class Assign(Message):
    """Flow -> supervisor -> worker: run one attempt of one node. ``inputs`` are
    the node's arguments with data edges already resolved to outputs."""

    type: Literal["assign"] = "assign"
    workflow_id: str
    node: str
    attempt: int
    task: str
    inputs: dict[str, Any]
    idempotency_key: str


class CancelTask(Message):
    """Flow -> supervisor: stop this attempt (cooperatively, then by signal)."""

    type: Literal["cancel_task"] = "cancel_task"
    workflow_id: str
    node: str
    attempt: int


class Propose(Message):
    """Worker -> Flow: a diff proposed by a running node (its batched spawns and
    promises). Reply: :class:`Proposed`."""

    type: Literal["propose"] = "propose"
    workflow_id: str
    node: str
    attempt: int
    diff: dict[str, Any]


class Proposed(Message):
    """``ok`` when applied (or already applied); else ``rejection`` (a violation
    terminates the workflow, a plan error fails the proposing task)."""

    type: Literal["proposed"] = "proposed"
    workflow_id: str
    node: str
    ok: bool
    rejection: dict[str, Any] | None = None


class Wait(Message):
    """Worker -> Flow: the node awaits these nodes. Reply: :class:`Resolved`, sent
    as soon as every one of them has finished (at once if they have)."""

    type: Literal["wait"] = "wait"
    workflow_id: str
    node: str
    attempt: int
    handles: list[str]


class NodeResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state: str
    output: Any = None
    error: dict[str, Any] | None = None


class Resolved(Message):
    type: Literal["resolved"] = "resolved"
    workflow_id: str
    node: str
    results: dict[str, NodeResult]


class Finish(Message):
    """Worker -> Flow: an attempt ended. ``diff`` carries proposals not yet sent;
    ``error`` is ``{"type", "message", "traceback", "retryable"}`` on failure.
    Counted only for the node's current attempt; duplicates are acknowledged and
    dropped. Reply: :class:`Ack`."""

    type: Literal["finish"] = "finish"
    workflow_id: str
    node: str
    attempt: int
    ok: bool
    output: Any = None
    error: dict[str, Any] | None = None
    diff: dict[str, Any] | None = None


class WorkerReady(Message):
    """Worker -> supervisor: this worker process is up and idle."""

    type: Literal["worker_ready"] = "worker_ready"
    pid: int


# --- the mutation feed -------------------------------------------------------------


class FeedEvent(Message):
    """Published on the feed, topic = workflow id: one applied change with the
    workflow's sequence number (a diff, a state change, a violation, the end)."""

    type: Literal["feed_event"] = "feed_event"
    workflow_id: str
    seq: int
    event: dict[str, Any]


AnyMessage = Annotated[
    Error | Ack | Heartbeat | Submit | Submitted | GetStatus | StatusReply | AwaitResult
    | WorkflowResult | GetGraph | GraphReply | GetHistory | HistoryReply | CancelWorkflow
    | Hello | Welcome | Credit | Assign | CancelTask | Propose | Proposed | Wait | Resolved
    | Finish | WorkerReady | FeedEvent,
    Field(discriminator="type"),
]

MESSAGE_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(AnyMessage)
MESSAGE_TYPES: frozenset[str] = frozenset(
    cls.model_fields["type"].default
    for cls in Message.__subclasses__()
)
