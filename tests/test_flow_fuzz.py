"""10,000 hostile frames at Flow's socket: every one is answered with an Error or
dropped and counted, and Flow still runs a workflow afterwards.

The corpus mixes random bytes, truncated and bit-flipped valid frames, valid
maps with wrong field types, missing or extra fields, bad versions, unknown
types, msgpack extension types, deep nesting, multipart messages, frames over
the configured size limit, messages only Flow sends (which Flow refuses), and
answers (which Flow must never answer). Each frame is classified here with the
same codec, so the test knows exactly which reply, if any, each one deserves.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from flowkit import FakeSupervisor, Peer, diff, spec
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_serializer

from plait.actors.flow import Flow, FlowSettings
from plait.errors import ProtocolError
from plait.protocol.codec import correlation_of, decode, encode, pack, unpack
from plait.protocol.diff import NodeSpec
from plait.protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    AddSchedule,
    Assign,
    AttemptRef,
    AwaitResult,
    CancelTask,
    Credit,
    Error,
    Evict,
    FeedEvent,
    Finish,
    GetGraph,
    Hello,
    History,
    ListSchedules,
    Message,
    NodeResult,
    PauseWorkflow,
    Propose,
    Query,
    QueryReply,
    Recorded,
    RemoveSchedule,
    Resolved,
    RestartNode,
    ResumeWorkflow,
    Retract,
    Retracted,
    ScheduleInfo,
    ScheduleList,
    SendSignal,
    SetAttrs,
    SetState,
    Submit,
    Submitted,
    TaskHeartbeat,
    TaskInfo,
    Wait,
    Welcome,
    WorkflowResult,
)

N = 10_000
LIMIT = 64 * 1024
ANSWERS = (Error, Ack)  # Flow never answers an answer
TO_FLOW = (Submit, AwaitResult, GetGraph, Hello, Credit, Propose, Wait, Finish, TaskHeartbeat,
           SetState, SendSignal, Query, PauseWorkflow, ResumeWorkflow, RestartNode, SetAttrs,
           AddSchedule, RemoveSchedule, ListSchedules)
CODES = {"malformed", "too_large", "bad_version", "unknown_type", "invalid"}

SEEDS: list[Message] = [
    Submit(name="wf", root="a", diff=diff(spec("a", "a", 1, x=[1, 2]), spec("b"),
                                          edges=[("a", "b")])),
    AwaitResult(workflow_id="w"), GetGraph(workflow_id="w", at=3),
    Hello(supervisor_id="s", tasks=[TaskInfo(name="t", retry={"max_attempts": 2})], slots=2,
          running=[AttemptRef(workflow_id="w", node="n", attempt=1)]),
    Credit(n=3), Propose(workflow_id="w", node="n", attempt=1, diff=diff(spec("n.1"))),
    Wait(workflow_id="w", node="n", attempt=1, handles=["n.1", "n.2"]),
    Finish(workflow_id="w", node="n", attempt=1, ok=False,
           error={"type": "E", "message": "m", "retryable": True}),
    Assign(workflow_id="w", node="n", attempt=1, task="t", inputs={}, idempotency_key="k"),
    Submitted(workflow_id="w"), Welcome(heartbeat_interval=1, heartbeat_timeout=3),
    CancelTask(workflow_id="w", node="n", attempt=1), WorkflowResult(workflow_id="w",
                                                                     status="x"),
    Resolved(workflow_id="w", node="n", results={}),
    FeedEvent(workflow_id="w", seq=1, event={}),
    Error(code="x", reason="y"), Ack(),
    # durable execution and operator controls
    Wait(workflow_id="w", node="n", attempt=1, timer=5.0, seq=2, resident=False,
         recorded=[Recorded(seq=0, kind="random", value=0.5, site="f.py:3")]),
    TaskHeartbeat(workflow_id="w", node="n", attempt=1, details={"i": 3}),
    SetState(workflow_id="w", node="n", attempt=1, value=[1]),
    SendSignal(workflow_id="w", name="go", payload={"ok": True}), Query(workflow_id="w"),
    PauseWorkflow(workflow_id="w"), ResumeWorkflow(workflow_id="w"),
    RestartNode(workflow_id="w", node="n"),
    SetAttrs(workflow_id="w", changes=[{"key": "color", "value": "red", "node": "n"}]),
    AddSchedule(schedule=ScheduleInfo(name="s", cron="* * * * *", target="m:t"),
                submit=Submit(name="t", root="t", diff=diff(spec("t")))),
    RemoveSchedule(name="s"), ListSchedules(),
    Assign(workflow_id="w", node="n", attempt=2, task="t", inputs={}, idempotency_key="k",
           history=History(results={"n.1": NodeResult(state="succeeded", output=1)},
                           timers=[1], signals=[(2, "x")])),
    Evict(workflow_id="w", node="n", attempt=1), QueryReply(workflow_id="w"),
    ScheduleList(schedules=[]), Retract(workflow_id="w", node="n", attempt=1),
    Retracted(workflow_id="w", node="n", attempt=1, ok=True),
]

WRONG = [None, 7, -1, 2.5, "s", b"bytes", [1, "x"], {"k": "v"}, True, "x" * 300]


def fresh(msg: Message) -> dict[str, Any]:
    """The dict form of ``msg`` with a new, unique correlation id."""
    return {**msg.model_dump(mode="python"), "id": f"fz-{next(_serial)}"}


_serial = iter(range(10**9))


def mutate(rng: random.Random) -> list[bytes]:
    """One hostile message (a list of frames)."""
    base = fresh(rng.choice(SEEDS))
    frame = pack(base)
    kind = rng.randrange(14)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 120))]
    if kind == 1:
        return [frame[:rng.randrange(len(frame))]]
    if kind == 2:
        raw = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return [bytes(raw)]
    if kind in (3, 4):
        field = rng.choice([k for k in base if k != "id"])
        return [pack({**base, field: rng.choice(WRONG)})]
    if kind == 5:
        field = rng.choice([k for k in base if k not in ("id", "v", "type")] or ["type"])
        return [pack({k: v for k, v in base.items() if k != field})]
    if kind == 6:
        return [pack({**base, "surprise": 1})]
    if kind == 7:
        v = PROTOCOL_VERSION
        return [pack({**base, "v": rng.choice([0, v - 1, v + 1, str(v), None])})]
    if kind == 8:
        return [pack({**base, "type": rng.choice(["nope", "", "Submit", 3])})]
    if kind == 9:
        return [rng.choice([pack([1, 2]), pack(5), pack("x"), pack(None), b"",
                            msgpack.packb(msgpack.ExtType(1, b"x")), pack({1: 2}),
                            b"\x91" * 3000 + b"\x00"])]
    if kind == 10:
        return [frame, rng.randbytes(8)] if rng.random() < 0.5 else [b"", frame]
    if kind == 11 and rng.random() < 0.02:
        return [pack({**base, "pad": "x" * rng.randrange(LIMIT, 3 * LIMIT)})]
    return [frame]  # an untouched seed: refused, ignored or skipped by its type


def expected(frames: list[bytes]) -> list[tuple[str, str | None]] | None:
    """Per frame (a message may carry several), ("error", code) or ("ignored", None)
    as Flow must handle it; None if one is a valid request to Flow, which this test
    does not send (other tests cover them)."""
    verdicts = [_verdict(frame) for frame in frames]
    return None if None in verdicts else [v for v in verdicts if v is not None]


def _verdict(frame: bytes) -> tuple[str, str | None] | None:
    try:
        msg = decode(frame, max_size=LIMIT)
    except ProtocolError as exc:
        return ("error", exc.code)
    except TypeError:  # the codec chokes on a non-string "type": Flow answers "malformed"
        return ("error", "malformed")
    if isinstance(msg, ANSWERS):
        return ("ignored", None)
    if isinstance(msg, TO_FLOW):
        return None
    return ("error", "invalid")


@pytest.fixture
def flow(tmp_path: Any) -> Iterator[Flow]:
    f = Flow(FlowSettings(db=str(tmp_path / "flow.db"), port=0, max_message_size=LIMIT,
                          heartbeat_timeout=30.0, retry_scale=0.001)).start()
    try:
        yield f
    finally:
        f.stop()


def test_ten_thousand_hostile_frames(flow: Flow) -> None:
    rng = random.Random(20240601)
    peer = Peer(flow.endpoint)
    want: Counter[str] = Counter()
    ids: set[str] = set()
    replies: list[Message] = []
    sent = ignored = frames_sent = 0
    try:
        while sent < N:
            frames = mutate(rng)
            verdicts = expected(frames)
            if verdicts is None:
                continue
            peer.send_raw(*frames)
            sent += 1
            frames_sent += len(frames)
            for frame, verdict in zip(frames, verdicts, strict=True):
                if verdict[0] == "ignored":
                    ignored += 1
                else:
                    want[verdict[1] or ""] += 1
                    corr = correlation_of(frame)
                    if corr is not None and verdict[1] != "too_large":
                        ids.add(corr)
            while peer.sock.poll(0):
                replies.append(decode(peer.sock.recv()))
        errors = sum(want.values())
        while len(replies) < errors:
            assert peer.sock.poll(10_000), f"{len(replies)} of {errors} errors answered"
            replies.append(decode(peer.sock.recv()))
        assert not peer.sock.poll(100)  # and nothing more: answers were not answered
        assert all(isinstance(r, Error) and r.code in CODES for r in replies)
        assert Counter(r.code for r in replies if isinstance(r, Error)) == want
        assert ids <= {r.id for r in replies}  # errors carry the request's id when it had one
        counts = flow.counters.snapshot()
        assert counts["frames"] == frames_sent
        assert counts["errors"] == errors
        assert counts.get("ignored", 0) == ignored
        assert all(counts.get(f"error.{code}", 0) == n for code, n in want.items())
    finally:
        peer.close()
    serves_a_workflow(flow)


def test_oversized_frame_gets_its_id_back(flow: Flow) -> None:
    peer = Peer(flow.endpoint)
    try:
        big = Submit(name="wf", root="a", diff={"pad": "x" * (2 * LIMIT)})
        reply = peer.request(big)
        assert isinstance(reply, Error)
        assert reply.code == "too_large"
        assert len(encode(big)) > LIMIT
    finally:
        peer.close()
    serves_a_workflow(flow)


def _nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def test_values_nested_too_deep_are_refused_and_flow_serves_on(flow: Flow) -> None:
    """A value near msgpack's own limit decoded; Flow stored it a few levels deeper,
    and the commit failed (Flow stopped) or the reply did (the keeper died)."""
    for levels in (200, 264):  # Flow takes 256 levels; what it answers, deeper, decodes
        assert decode(pack({"v": PROTOCOL_VERSION, "id": "ok", "type": "send_signal",
                            "workflow_id": "w", "name": "go", "payload": _nested(levels)}))
    peer = Peer(flow.endpoint)
    try:
        submitted = peer.request(Submit(name="w", root="a", diff=diff(spec("a", "idle", 1)),
                                        workflow_id="w"))  # a task nobody serves: it waits
        assert isinstance(submitted, Submitted)
        for levels in (1021, 300):
            peer.send_raw(pack({"v": PROTOCOL_VERSION, "id": f"deep-{levels}",
                                "type": "set_attrs", "workflow_id": "w", "changes": [
                                    {"key": "color", "value": _nested(levels), "node": "a"}]}))
            reply = peer.next(Error, timeout=5)
            assert reply.id == f"deep-{levels}"
            assert isinstance(reply, Error)
            assert (reply.code, reply.reason) == ("malformed", "values nest deeper than 256 "
                                                               "levels")
    finally:
        peer.close()
    serves_a_workflow(flow)


@pytest.mark.parametrize("msg", SEEDS, ids=lambda m: m.type)
def test_encode_packs_what_model_dump_gives(msg: Message) -> None:
    """encode reads fields itself (model_dump is slow on big Any values): same map,
    nested models included, and it decodes back to an equal message."""
    assert encode(msg) == pack(msg.model_dump(mode="python"))
    assert decode(encode(msg)) == msg


def test_encode_packs_models_inside_any_values_and_refuses_other_objects() -> None:
    recorded = Recorded(seq=1, kind="random", value=0.25, site="f.py:1")
    node = NodeSpec("n", "t", {"args": [1]})  # a dataclass: model_dump gives its fields
    event = FeedEvent(workflow_id="w", seq=1, event={"deep": [recorded], "node": node})
    assert encode(event) == pack(event.model_dump(mode="python"))
    assert unpack(encode(event))["event"]["deep"] == [recorded.model_dump()]
    with pytest.raises(TypeError, match="cannot encode object"):
        encode(FeedEvent(workflow_id="w", seq=1, event={"x": object()}))


class _Decision(BaseModel):
    """A user's model, as a signal's payload may be: it says how it dumps."""

    model_config = ConfigDict(extra="allow")
    approved: bool
    at: datetime
    secret: str = Field(default="s3cret", exclude=True)

    @field_serializer("at")
    def _iso(self, at: datetime) -> str:
        return at.isoformat()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def verdict(self) -> str:
        return "yes" if self.approved else "no"


def test_encode_lets_a_user_s_model_dump_itself() -> None:
    payload = _Decision(approved=True, at=datetime(2026, 12, 6, tzinfo=UTC), note="extra")
    signal = SendSignal(workflow_id="w", name="approve", payload=payload)
    assert encode(signal) == pack(signal.model_dump(mode="python"))
    assert unpack(encode(signal))["payload"] == {
        "approved": True, "at": "2026-12-06T00:00:00+00:00", "note": "extra", "verdict": "yes"}


def serves_a_workflow(flow: Flow) -> None:
    client, sup = Peer(flow.endpoint), FakeSupervisor(flow.endpoint, ["a"])
    try:
        submitted = client.request(Submit(name="after", root="a", diff=diff(spec("a", "a", 1))))
        assert submitted.type == "submitted", submitted
        sup.finish(sup.assign(), "still here")
        done = client.request(AwaitResult(workflow_id=submitted.workflow_id))
        assert (done.status, done.output) == ("succeeded", "still here")
    finally:
        client.close()
        sup.close()
