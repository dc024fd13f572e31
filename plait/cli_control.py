"""The operator's verbs: pause, resume, restart, signal, query, attrs, schedule.

Each is one request to Flow through :class:`~plait.client.Client` (the same
calls as ``Run.pause()`` and friends); :mod:`plait.cli` puts them in its verb
table. A control Flow refuses (the workflow has ended, the node is running)
exits with ``Exit.REFUSED``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from plait.cli_base import (
    Exit,
    Verbs,
    client_of,
    client_options,
    done,
    keyword,
    one_workflow,
    parse_arg,
    print_json,
    registration_of,
)
from plait.client import OVERLAP
from plait.protocol.messages import ScheduleInfo
from plait.run import attr_changes

__all__ = ["CONTROL_VERBS"]


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a workflow: no new task starts; running ones finish."""
    with client_of(args) as client:
        client.pause(args.workflow)
    return done(args, f"paused {args.workflow}", {"workflow_id": args.workflow, "paused": True})


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused workflow."""
    with client_of(args) as client:
        client.resume(args.workflow)
    return done(args, f"resumed {args.workflow}",
                {"workflow_id": args.workflow, "paused": False})


def cmd_restart(args: argparse.Namespace) -> int:
    """Run a node and everything downstream of it again (earlier attempts stay as history)."""
    with client_of(args) as client:
        client.restart(args.workflow, args.node)
    return done(args, f"restarted {args.node} in {args.workflow}",
                {"workflow_id": args.workflow, "node": args.node, "restarted": True})


def cmd_signal(args: argparse.Namespace) -> int:
    """Send a signal (with an optional JSON payload) to a workflow; kept until awaited."""
    payload = parse_arg(args.payload) if args.payload is not None else None
    with client_of(args) as client:
        client.signal(args.workflow, args.name, payload)
    return done(args, f"sent {args.name} to {args.workflow}",
                {"workflow_id": args.workflow, "signal": args.name, "payload": payload})


def cmd_query(args: argparse.Namespace) -> int:
    """Print the state a workflow's tasks set with ctx.set_state (latest, or per node)."""
    with client_of(args) as client:
        reply = client.query(args.workflow)
    if args.json:
        print_json({"workflow_id": args.workflow, "state": reply.state, "nodes": reply.nodes})
    elif args.nodes:
        for node, value in reply.nodes.items():
            print(f"{node}\t{_text(value)}")
    else:
        print(_text(reply.state))
    return Exit.OK


def cmd_attrs(args: argparse.Namespace) -> int:
    """Change cosmetic attributes (color, label...) of a node or an edge."""
    attrs = dict(keyword(a) for a in args.attrs)
    edge = (args.edge[0], args.edge[1]) if args.edge else None
    changes = attr_changes(args.node, edge, attrs)
    with client_of(args) as client:
        client.set_attrs(args.workflow, changes)
    where = args.node if edge is None else f"{edge[0]} -> {edge[1]}"
    return done(args, f"set {', '.join(attrs)} on {where} in {args.workflow}",
                {"workflow_id": args.workflow, "changes": [c.to_dict() for c in changes]})


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# --- schedules ------------------------------------------------------------------------------


def cmd_schedule(args: argparse.Namespace) -> int:
    """Manage cron schedules: add, ls, rm."""
    return cmd_schedule_ls(args)


def cmd_schedule_add(args: argparse.Namespace) -> int:
    """Submit module:task on every tick of a cron expression (UTC)."""
    name, root, diff = registration_of(args.target, args.args, args.kw)
    with client_of(args) as client:
        info = client.add_schedule_diff(args.name, args.cron, args.target, name, root,
                                        diff.to_dict(), overlap=args.overlap)
    return done(args, f"scheduled {args.name}: {args.cron} {args.target}, next run at "
                      f"{_when(info.next_fire)}", info.model_dump(mode="json"))


def cmd_schedule_ls(args: argparse.Namespace) -> int:
    """List the cron schedules."""
    with client_of(args) as client:
        schedules = client.schedules()
    if args.json:
        print_json([s.model_dump(mode="json") for s in schedules])
    else:
        for line in _schedule_table(schedules):
            print(line)
    return Exit.OK


def cmd_schedule_rm(args: argparse.Namespace) -> int:
    """Remove a cron schedule (its runs so far are left alone)."""
    with client_of(args) as client:
        client.remove_schedule(args.name)
    return done(args, f"removed schedule {args.name}", {"name": args.name, "removed": True})


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _schedule_table(schedules: Sequence[ScheduleInfo]) -> Iterator[str]:
    yield f"{'NAME':<20} {'CRON':<16} {'OVERLAP':<8} {'NEXT':<21} {'LAST RUN':<32} TARGET"
    for s in schedules:
        yield (f"{s.name:<20} {s.cron:<16} {s.overlap:<8} {_when(s.next_fire):<21} "
               f"{s.last_run or '-':<32} {s.target}")


# --- options -----------------------------------------------------------------------------------


def _restart_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow")
    p.add_argument("node", help="the node id (see `plait graph WORKFLOW --json`)")


def _signal_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow")
    p.add_argument("name", help="the signal's name, as in ctx.signal(NAME)")
    p.add_argument("payload", nargs="?", default=None, metavar="JSON",
                   help="its payload (a non-JSON word is a string; default: null)")


def _query_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow")
    p.add_argument("--nodes", action="store_true", help="every node's latest state")


def _attrs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="the node to change")
    where.add_argument("--edge", nargs=2, metavar=("SRC", "DST"), help="the edge to change")
    p.add_argument("attrs", nargs="+", metavar="KEY=JSON",
                   help="attributes, e.g. color='\"red\"' label=checked (null unsets)")


def _schedule_options(p: argparse.ArgumentParser) -> None:
    subs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    shared = [client_options()]
    add = subs.add_parser("add", parents=shared, help=cmd_schedule_add.__doc__,
                          description=cmd_schedule_add.__doc__)
    add.add_argument("name", help="the schedule's name (its runs are NAME-<tick>)")
    add.add_argument("cron", help='five fields, UTC ("*/5 * * * *"), or @hourly, @daily...')
    add.add_argument("target", metavar="module:task", help="a task or Graph, as module:attr")
    add.add_argument("args", nargs="*", metavar="ARG_JSON", help="positional arguments, JSON")
    add.add_argument("--kw", action="append", default=[], metavar="NAME=JSON",
                     help="a keyword argument (repeatable)")
    add.add_argument("--overlap", choices=OVERLAP, default="skip",
                     help="a tick while the last run is live: skip it (default), queue it, "
                          "or cancel the live run")
    add.set_defaults(func=cmd_schedule_add)
    for verb, command in (("ls", cmd_schedule_ls), ("rm", cmd_schedule_rm)):
        doc = (command.__doc__ or "").strip()
        sub = subs.add_parser(verb, parents=shared, help=doc, description=doc)
        if verb == "rm":
            sub.add_argument("name")
        sub.set_defaults(func=command)


# "schedule" has its own shared options, per action
CONTROL_VERBS: Verbs = {
    "pause": (cmd_pause, one_workflow, "client"),
    "resume": (cmd_resume, one_workflow, "client"),
    "restart": (cmd_restart, _restart_options, "client"),
    "signal": (cmd_signal, _signal_options, "client"),
    "query": (cmd_query, _query_options, "client"),
    "attrs": (cmd_attrs, _attrs_options, "client"),
    "schedule": (cmd_schedule, _schedule_options, ""),
}
