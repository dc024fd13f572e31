"""The Scheduler: cron schedules that submit a workflow on every tick.

A schedule is a stored ``Submit`` (name, root, registration diff), a
:class:`~plait.actors.cron.Cron` expression and an overlap policy. Each tick
``T`` submits a copy as workflow ``f"{schedule}-{T as %Y%m%dT%H%MZ}"``: that
id is the tick's idempotency key (an id is never used twice), so a tick can
never start two runs, whatever crashes in between; and a run whose schedule
row was committed but not its own submission starts when Flow comes back.
After Flow was down, the ticks missed meanwhile fire once, as the latest of
them, never twice.

Overlap, when the schedule's previous run is still live at a tick: ``skip``
(the tick is dropped), ``queue`` (the run starts when the previous one ends; at
most one waits, later ticks are dropped), ``cancel`` (the previous run is
cancelled, and the new one starts once its end is committed). Runs of one
schedule therefore never overlap.

Schedules live in the ``schedules`` table, written through the Store like
everything else; replies leave after the commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pykka

from plait.actors.cron import Cron
from plait.actors.mail import Request, RunEnded, ScheduleChange, ScheduleDue, Write
from plait.actors.registry import Counters, Registry, safe_tell
from plait.actors.timers import Timers
from plait.protocol.codec import encode
from plait.protocol.diff import PlanDiff
from plait.protocol.messages import (
    Ack,
    AddSchedule,
    CancelWorkflow,
    Error,
    ListSchedules,
    Message,
    RemoveSchedule,
    ScheduleInfo,
    ScheduleList,
    Submit,
)
from plait.protocol.plan import Plan

__all__ = ["Schedule", "Scheduler", "run_id"]

log = logging.getLogger(__name__)

MAX_NAME = 100
StartRun = Callable[[str, Submit], bool]


def run_id(name: str, tick: float) -> str:
    """The workflow id of a schedule's run for one tick (its idempotency key)."""
    return f"{name}-{time.strftime('%Y%m%dT%H%MZ', time.gmtime(tick))}"


@dataclass
class Schedule:
    info: ScheduleInfo
    submit: Submit
    cron: Cron
    queued: float | None = None  # a tick waiting for the previous run to end

    def body(self) -> dict[str, Any]:
        return {"info": self.info.model_dump(), "submit": self.submit.model_dump(),
                "queued": self.queued}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Schedule:
        info = ScheduleInfo.model_validate(body["info"])
        return cls(info, Submit.model_validate(body["submit"]), Cron.parse(info.cron),
                   body.get("queued"))


class Scheduler(pykka.ThreadingActor):
    """Owns the schedules; ``start_run(workflow_id, submit)`` starts a workflow
    (False if that id was ever used)."""

    def __init__(self, stored: list[dict[str, Any]], *, store: pykka.ActorRef[Any],
                 registry: Registry, counters: Counters, timers: Timers,
                 start_run: StartRun) -> None:
        super().__init__()
        self.store, self.registry, self.counters = store, registry, counters
        self.timers, self.start_run = timers, start_run
        self.schedules: dict[str, Schedule] = {}
        self.armed: set[float] = set()  # times a ScheduleDue is on its way for
        # name -> the last run of a schedule removed since Flow started: added again,
        # it still counts for overlap while it runs
        self.removed_runs: dict[str, str] = {}
        for body in stored:
            try:
                s = Schedule.from_body(body)
            except (ValueError, KeyError, TypeError):
                log.exception("scheduler: a stored schedule cannot be read; left as is")
                continue
            self.schedules[s.info.name] = s

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ScheduleDue):
            if message.at is None:  # Flow has just started: first what a crash cut short
                self._recover()
            self.armed.discard(message.at or 0.0)
            self._due()
        elif isinstance(message, RunEnded):
            self._ended(message.workflow_id)
        elif isinstance(message, Request):
            try:
                self._request(message.identity, message.message)
            except Exception as exc:  # the edge of a request: reply, never die (no more ticks)
                log.exception("scheduler: %s failed", type(message.message).__name__)
                self._write(message.identity, Error(id=message.message.id, code="internal",
                                                    reason=repr(exc)))
        else:
            return super().on_receive(message)
        return None

    def _request(self, identity: bytes, msg: Message) -> None:
        if isinstance(msg, AddSchedule):
            self._add(identity, msg)
        elif isinstance(msg, RemoveSchedule):
            removed = self.schedules.pop(msg.name, None)
            if removed is None:
                self._write(identity, Error(id=msg.id, code="not_found",
                                            reason=f"no schedule {msg.name!r}"))
            else:
                if removed.info.last_run is not None:
                    self.removed_runs[msg.name] = removed.info.last_run
                self._write(identity, Ack(id=msg.id), ScheduleChange(msg.name, None))
        elif isinstance(msg, ListSchedules):
            self._write(identity, ScheduleList(
                id=msg.id, schedules=[s.info for _, s in sorted(self.schedules.items())]))

    def _add(self, identity: bytes, msg: AddSchedule) -> None:
        """Add (or replace) a schedule; its first tick is the first after now."""
        try:
            s = self._parse(msg)
        except (ValueError, TypeError, KeyError) as exc:  # what a malformed diff raises
            self._write(identity, Error(id=msg.id, code="invalid", reason=str(exc)))
            return
        old = self.schedules.get(s.info.name)
        if old is not None:  # replaced: its runs so far still count for overlap
            s.info = s.info.model_copy(update={"last_run": old.info.last_run,
                                               "last_fired": old.info.last_fired})
            # A tick the old policy queued starts only if the new one queues too.
            s.queued = old.queued if s.info.overlap != "skip" else None
        else:  # added again after a removal: a run of the removed one still counts
            last = self.removed_runs.pop(s.info.name, None)
            if self._live(last):
                s.info = s.info.model_copy(update={"last_run": last})
        self.schedules[s.info.name] = s
        self._write(identity, Ack(id=msg.id), self._change(s))
        self._arm(s)

    def _parse(self, msg: AddSchedule) -> Schedule:
        info = msg.schedule
        if not info.name or len(info.name) > MAX_NAME:
            raise ValueError(f"a schedule name has 1 to {MAX_NAME} characters")
        cron = Cron.parse(info.cron)
        rejection = Plan().apply(replace(PlanDiff.from_dict(msg.submit.diff),
                                         proposer=None)).rejection
        if rejection is not None:
            raise ValueError(f"the workflow would be rejected: {rejection.message()}")
        nxt = cron.next_after(self.timers.now())
        info = info.model_copy(update={"next_fire": nxt, "last_fired": None,
                                       "last_run": None})
        return Schedule(info, msg.submit, cron)

    # --- ticks --------------------------------------------------------------------------

    def _due(self) -> None:
        """Fire every schedule whose next tick has come (once, however many passed)."""
        self.counters.add("schedule.checks")
        now = self.timers.now()
        for s in list(self.schedules.values()):
            before = s.body()
            if s.queued is not None and not self._live(s.info.last_run):
                self._start(s, s.queued)  # its previous run ended while Flow was down
            nxt = s.info.next_fire
            if nxt is not None and nxt <= now:
                tick = s.cron.last_at_or_before(now)
                s.info = s.info.model_copy(update={"next_fire": s.cron.next_after(now)})
                self._fire(s, tick)
            if s.body() != before:
                self._write(None, None, self._change(s))
            self._arm(s)

    def _recover(self) -> None:
        """Finish what Flow was doing when it went down. The schedule's change and its
        run's submission are committed apart: a run whose schedule row was committed
        first but not itself starts now, under its tick's id (``start_run`` refuses an
        id ever used, so no tick runs twice). A ``cancel`` overlap whose previous run
        is still live is told to cancel again (it waits for that run's end)."""
        for s in self.schedules.values():
            last = s.info.last_run
            if last is not None and self.start_run(last, s.submit):
                self.counters.add("schedule.recovered")
                log.warning("scheduler: run %s of schedule %s was lost in a crash; "
                            "started now", last, s.info.name)
            elif (s.queued is not None and s.info.overlap == "cancel" and last is not None
                  and self._live(last)):
                self.registry.tell(last, Request(b"", CancelWorkflow(workflow_id=last)))

    def _fire(self, s: Schedule, tick: float) -> None:
        previous = s.info.last_run
        if not self._live(previous):
            self._start(s, tick)
            return
        s.info = s.info.model_copy(update={"last_fired": tick})
        policy = s.info.overlap
        if policy == "skip" or s.queued is not None:
            self.counters.add("schedule.skipped")
            return
        s.queued = tick
        if policy == "cancel" and previous is not None:
            self.registry.tell(previous, Request(b"", CancelWorkflow(workflow_id=previous)))

    def _start(self, s: Schedule, tick: float) -> None:
        wf = run_id(s.info.name, tick)
        if self.start_run(wf, s.submit):
            self.counters.add("schedule.runs")
        else:
            self.counters.add("schedule.duplicate")  # that tick fired before
        s.queued = None
        s.info = s.info.model_copy(update={"last_run": wf, "last_fired": tick})

    def _ended(self, workflow_id: str) -> None:
        for s in self.schedules.values():
            if s.info.last_run == workflow_id and s.queued is not None:
                self._start(s, s.queued)
                self._write(None, None, self._change(s))

    def _live(self, workflow_id: str | None) -> bool:
        return workflow_id is not None and self.registry.is_live(workflow_id)

    def _arm(self, s: Schedule) -> None:
        """One timer per distinct tick time, however many schedules share it."""
        at = s.info.next_fire
        if at is None or at in self.armed:
            return
        self.armed.add(at)
        ref = self.actor_ref

        def due() -> None:  # on the timer thread: only a tell
            safe_tell(ref, ScheduleDue(at))

        self.timers.call_at(at, due)

    # --- storing and answering ----------------------------------------------------------

    @staticmethod
    def _change(s: Schedule) -> ScheduleChange:
        return ScheduleChange(s.info.name, s.body())

    def _write(self, identity: bytes | None, reply: Message | None,
               *changes: ScheduleChange) -> None:
        out = [(identity, encode(reply))] if identity and reply is not None else []
        self.store.tell(Write(out=out, schedules=changes))
