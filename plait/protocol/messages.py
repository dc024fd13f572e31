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

from pydantic import BaseModel, ConfigDict, Field

# 2: Ack.more (one Ack for a batch of Finishes), which a version-1 peer would refuse.
# 3: GetHistory.upto, which a version-2 Flow would refuse (and the Submit's id in
#    the "submitted" event, which a version-3 client's retried Submit looks for).
# 4: Assign.resident_waits, which a version-3 supervisor would refuse.
# 5: Wait.spawns, History.resumed_at and Finish.version, which a version-4 peer
#    would refuse.
PROTOCOL_VERSION = 5

_ids = itertools.count(1)
_prefix = f"{os.getpid():x}-"


def new_id() -> str:
    """A correlation id unique within this process's lifetime (cheap: no uuid)."""
    return f"{_prefix}{next(_ids)}"


def _forked() -> None:
    # A forked worker must not repeat its zygote's ids: a supervisor routes answers by id.
    global _ids, _prefix
    _ids, _prefix = itertools.count(1), f"{os.getpid():x}-"


os.register_at_fork(after_in_child=_forked)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

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
    """Reply to a request that needs no data back. ``more`` lists further requests
    of the same peer that it answers too: Flow acknowledges the Finishes a
    supervisor sent together in one frame (only Finishes, so only supervisors,
    ever get a non-empty ``more``)."""

    type: Literal["ack"] = "ack"
    more: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list,
                                                              max_length=100_000)


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
    None; with ``ended_since``, only those that ended at or after that time on
    Flow's clock). Reply: :class:`StatusReply`; :class:`Error` ``not_found``."""

    type: Literal["get_status"] = "get_status"
    workflow_id: str | None = None
    ended_since: float | None = None


class RunInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

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
    at: int | None = Field(default=None, ge=1, le=2**63 - 1)  # events count from 1
    unfold: bool = False


class GraphReply(Message):
    type: Literal["graph_reply"] = "graph_reply"
    workflow_id: str
    seq: int
    graph: dict[str, Any]


class GetHistory(Message):
    """The workflow's event log (with ``upto``, its first ``upto`` events).
    Reply: :class:`HistoryReply`."""

    type: Literal["get_history"] = "get_history"
    workflow_id: str
    upto: int | None = Field(default=None, ge=1)


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
    """An attempt a supervisor still answers for. ``evicted``: no process of it runs
    it any more; only its durable Wait, which Flow has not acknowledged, is on its way
    (Flow must not take the attempt for lost, nor for running there)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    workflow_id: str
    node: str
    attempt: int
    evicted: bool = False


class TaskInfo(BaseModel):
    """What Flow needs to know of a task without importing its code."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    name: str
    queue: str = "default"
    retry: dict[str, Any] | None = None  # Retry.to_dict(); None = the default policy
    timeout: float | None = Field(None, gt=0)  # start-to-close, seconds
    schedule_to_start: float | None = Field(None, gt=0)  # seconds a ready node may wait
    heartbeat_timeout: float | None = Field(None, gt=0)  # between ctx.heartbeat() calls
    cache: bool = False  # reuse the recorded result of an identical call, across workflows
    version: str = ""  # part of the cache key: change it when the task's meaning changes

    @property
    def timed(self) -> bool:
        """Whether an attempt has timeouts that count from its start: then its
        supervisor tells Flow when a worker starts it (``TaskHeartbeat(started=True)``),
        and Flow arms them only then (not while it waits in the supervisor's queue)."""
        return bool(self.timeout or self.heartbeat_timeout)


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


class Recorded(BaseModel):
    """One value a task drew through a replay-safe helper, at ``seq`` of its attempt.

    ``kind`` is ``random``, ``now``, ``uuid4``, ``side_effect``, ``version``
    (``value`` is then ``[change_id, bool]``), ``step`` (``value`` is then
    ``{"i": step index, "fn": function name, "v": its value}``) or ``step_error``
    (a step that raised: ``"e"``, ``{"type", "message", "args"}``, instead of
    ``"v"``), ``side_effect_error`` (``{"type", "message", "args"}``: what a side
    effect raised), ``timed_out`` (whether a ``result(timeout=)`` gave up);
    ``site`` is the caller's ``file:line``, shown when a replay diverges.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    seq: int = Field(ge=0)
    kind: str
    value: Any = None
    site: str = ""


class PreviousChild(BaseModel):
    """A child an earlier attempt spawned at spawn sequence ``seq``: a new attempt
    that spawns the same task with the same inputs at that ``seq`` reuses it."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    seq: int
    id: str
    task: str
    inputs: dict[str, Any]


class PreviousStep(BaseModel):
    """A durable step (``ctx.step``) an earlier attempt completed as its ``index``-th
    step: a new attempt whose step of that index calls the same function gets
    ``value`` back without running it."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    index: int = Field(ge=0)
    name: str
    value: Any = None


class History(BaseModel):
    """What a resumed (or retried) node's task replays from.

    ``recorded``, ``signals`` (``[seq, payload]`` pairs) and ``timers`` (seqs of
    fired sleeps) belong to the current attempt only, so that a retry draws fresh
    values; ``results`` holds every finished child of the node; ``previous``
    lists earlier attempts' children and ``steps`` their completed durable steps;
    ``heartbeat`` is the details the attempt started with; ``resumed_at`` is
    ``[record seq, spawn seq]`` of the attempt's last wait, the point this
    execution resumes from: until the replay gets there, it is still replaying,
    even where no record tells it so (a ``ctx.version`` before the spawns of a
    wait for children takes the old path).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    recorded: list[Recorded] = Field(default_factory=list)
    results: dict[str, NodeResult] = Field(default_factory=dict)
    signals: list[tuple[int, Any]] = Field(default_factory=list)
    timers: list[int] = Field(default_factory=list)
    previous: list[PreviousChild] = Field(default_factory=list)
    steps: list[PreviousStep] = Field(default_factory=list)
    heartbeat: Any = None
    resumed_at: tuple[int, int] | None = None


class Assign(Message):
    """Flow -> supervisor -> worker: run one attempt of one node. ``inputs`` are
    the node's arguments with data edges already resolved to outputs. ``history``
    is set when the node resumes after a suspension or retries: the task body
    runs again and replays it (completed children are never run again).
    ``resident_waits`` False: the task gives up its worker whenever it waits (a
    node under a ``MaxParallel`` limit, which gives up its slot meanwhile and must
    queue for one to go on)."""

    type: Literal["assign"] = "assign"
    workflow_id: str
    node: str
    attempt: int
    task: str
    inputs: dict[str, Any]
    idempotency_key: str
    history: History | None = None
    resident_waits: bool = True


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
    recorded: list[Recorded] = Field(default_factory=list)


class Proposed(Message):
    """``ok`` when applied (or already applied); else ``rejection`` (a violation
    terminates the workflow, a plan error fails the proposing task)."""

    type: Literal["proposed"] = "proposed"
    workflow_id: str
    node: str
    ok: bool
    rejection: dict[str, Any] | None = None


class Wait(Message):
    """Worker -> Flow: the node awaits ``handles`` (nodes), or a durable ``timer``
    (seconds; Flow's clock decides when it fires), or the signal ``signal``;
    ``seq`` is the record sequence of a timer or signal wait, and where a wait for
    handles stands among the records; ``spawns`` is the spawn seq then (a replay
    is not past the wait until it has spawned as much: see ``History.resumed_at``).

    ``resident`` is set by the supervisor: True while the worker keeps the task in
    memory (reply :class:`Resolved` as soon as the wait is satisfied, at once if it
    is); False when the worker was evicted (timers and signals always are): Flow
    replies :class:`Ack`, the node is suspended without a process, and when the
    wait is satisfied Flow assigns it again with its :class:`History`.

    ``diff`` carries the task's proposals not yet sent (the children it awaits,
    say), applied first exactly as a :class:`Propose` would be: one round trip
    instead of two. If they are refused, the reply is the :class:`Proposed` a
    Propose would have had, and the node does not wait (a task evicted meanwhile
    cannot raise the refusal: Flow fails the node as the task would have).
    """

    type: Literal["wait"] = "wait"
    workflow_id: str
    node: str
    attempt: int
    handles: list[str] = Field(default_factory=list)
    timer: float | None = None
    signal: str | None = None
    seq: int = 0
    spawns: int = 0
    resident: bool = True
    recorded: list[Recorded] = Field(default_factory=list)
    diff: dict[str, Any] | None = None


class NodeResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    state: str
    output: Any = None
    error: dict[str, Any] | None = None


class Resolved(Message):
    type: Literal["resolved"] = "resolved"
    workflow_id: str
    node: str
    results: dict[str, NodeResult] = Field(default_factory=dict)
    value: Any = None  # a signal's payload


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
    recorded: list[Recorded] = Field(default_factory=list)
    version: str = ""  # of the task code that ran (a caching task's result is kept by it)


class TaskHeartbeat(Message):
    """Worker -> Flow: the attempt is alive; ``details`` are kept for a retry
    (``ctx.heartbeat(details)``). ``started`` (from the supervisor) says that an
    attempt which waited in its queue has just started in a worker: its
    start-to-close timeout counts from now. Reply: :class:`Ack`."""

    type: Literal["task_heartbeat"] = "task_heartbeat"
    workflow_id: str
    node: str
    attempt: int
    details: Any = None
    started: bool = False


class SetState(Message):
    """Worker -> Flow: ``ctx.set_state(value)``, readable by :class:`Query` at once.
    Reply: :class:`Ack`."""

    type: Literal["set_state"] = "set_state"
    workflow_id: str
    node: str
    attempt: int
    value: Any = None


class Evict(Message):
    """Supervisor -> worker: drop the waiting task (it will be replayed later)."""

    type: Literal["evict"] = "evict"
    workflow_id: str
    node: str
    attempt: int


class WorkerReady(Message):
    """Worker -> supervisor: this worker process is up and idle."""

    type: Literal["worker_ready"] = "worker_ready"
    pid: int


class Retract(Message):
    """Supervisor -> worker: give back this attempt if it has not started. It was
    sent ahead, to start as soon as the worker's current attempt ends, and its
    current task now waits (or another worker is idle). Reply: :class:`Retracted`."""

    type: Literal["retract"] = "retract"
    workflow_id: str
    node: str
    attempt: int


class Retracted(Message):
    """Worker -> supervisor: ``ok`` if the attempt was given back unstarted; if not,
    it had started (or ended) already, and the messages before this one said so."""

    type: Literal["retracted"] = "retracted"
    workflow_id: str
    node: str
    attempt: int
    ok: bool


# --- operator controls: client -> Flow ---------------------------------------------


class PauseWorkflow(Message):
    """No new task of the workflow starts; running ones finish. Reply: Ack."""

    type: Literal["pause_workflow"] = "pause_workflow"
    workflow_id: str


class ResumeWorkflow(Message):
    """Undo a pause. Reply: Ack."""

    type: Literal["resume_workflow"] = "resume_workflow"
    workflow_id: str


class RestartNode(Message):
    """Run ``node`` and everything downstream of it (by edges and by lineage) again,
    as new attempts; earlier attempts stay as history. Reply: Ack; Error
    ``not_found`` or ``rejected`` (a node that is still running)."""

    type: Literal["restart_node"] = "restart_node"
    workflow_id: str
    node: str


class SetAttrs(Message):
    """Cosmetic changes (``AttrChange`` dicts) applied as an operator diff. Reply: Ack."""

    type: Literal["set_attrs"] = "set_attrs"
    workflow_id: str
    changes: list[dict[str, Any]]


class SendSignal(Message):
    """Deliver a signal; kept until a task awaits it. Reply: Ack."""

    type: Literal["send_signal"] = "send_signal"
    workflow_id: str
    name: str
    payload: Any = None


class Query(Message):
    """Read the state tasks set with ``ctx.set_state``. Reply: :class:`QueryReply`."""

    type: Literal["query"] = "query"
    workflow_id: str


class QueryReply(Message):
    """``state`` is the latest value any node set; ``nodes`` maps node -> its latest."""

    type: Literal["query_reply"] = "query_reply"
    workflow_id: str
    state: Any = None
    nodes: dict[str, Any] = Field(default_factory=dict)


class ScheduleInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    name: str
    cron: str
    overlap: Literal["skip", "queue", "cancel"] = "skip"
    target: str
    last_fired: float | None = None
    next_fire: float | None = None
    last_run: str | None = None


class AddSchedule(Message):
    """Submit ``submit`` (its name, root and registration diff) on every cron tick.
    A tick missed while Flow was down fires once, never twice; runs of one schedule
    never overlap unless ``overlap`` says how. Reply: Ack; Error ``invalid`` for a
    bad cron expression."""

    type: Literal["add_schedule"] = "add_schedule"
    schedule: ScheduleInfo
    submit: Submit


class RemoveSchedule(Message):
    """Reply: Ack; Error ``not_found``."""

    type: Literal["remove_schedule"] = "remove_schedule"
    name: str


class ListSchedules(Message):
    """Reply: :class:`ScheduleList`."""

    type: Literal["list_schedules"] = "list_schedules"


class ScheduleList(Message):
    type: Literal["schedule_list"] = "schedule_list"
    schedules: list[ScheduleInfo]


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
    | Finish | WorkerReady | FeedEvent | TaskHeartbeat | SetState | Evict | PauseWorkflow
    | ResumeWorkflow | RestartNode | SetAttrs | SendSignal | Query | QueryReply | AddSchedule
    | RemoveSchedule | ListSchedules | ScheduleList | Retract | Retracted,
    Field(discriminator="type"),
]

# Decoding validates against the one class a frame's ``type`` names. Schemas are
# built on first use (``defer_build``): a process pays only for what it receives,
# and starts faster.
MESSAGE_CLASSES: dict[str, type[Message]] = {
    cls.model_fields["type"].default: cls for cls in Message.__subclasses__()}
MESSAGE_TYPES: frozenset[str] = frozenset(MESSAGE_CLASSES)
