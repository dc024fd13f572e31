"""The ``plait`` command: parses arguments and calls the library, nothing more.

Exit codes are named by cause (:class:`Exit`) so that scripts can tell a
workflow that failed from a Flow that could not be reached.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import zmq

from plait import memory
from plait.cli_base import (
    STATUS_EXIT,
    Exit,
    Interrupted,
    UsageError,
    Verbs,
    client_of,
    client_options,
    event_seq,
    importable_cwd,
    interruptible,
    message_size_option,
    one_workflow,
    print_json,
    registration_of,
    scale,
    seconds,
)
from plait.cli_control import CONTROL_VERBS
from plait.client import FlowError, FlowUnavailable, NotFound, Run, outcome_error
from plait.errors import (
    DatabaseInUse,
    NonDeterminismError,
    PlaitError,
    PlanError,
    PromiseViolation,
    TaskFailed,
    WorkflowCancelled,
)
from plait.protocol.messages import FeedEvent, RunInfo

__all__ = ["Exit", "main"]

DEFAULT_DB = str(Path(".plait") / "flow.db")

# Most specific first: the first matching class decides the exit code.
ERROR_EXIT: list[tuple[type[BaseException], Exit]] = [
    (FlowUnavailable, Exit.UNREACHABLE), (NotFound, Exit.NOT_FOUND),
    (PromiseViolation, Exit.VIOLATED), (WorkflowCancelled, Exit.CANCELLED),
    (TaskFailed, Exit.FAILED), (PlanError, Exit.FAILED), (NonDeterminismError, Exit.FAILED),
    (UsageError, Exit.USAGE), (DatabaseInUse, Exit.USAGE), (TypeError, Exit.USAGE),
    (ValueError, Exit.USAGE), (zmq.ZMQError, Exit.USAGE), (PlaitError, Exit.ERROR),
]
FLOW_ERROR_EXIT = {"rejected": Exit.REFUSED, "invalid": Exit.USAGE}  # by Flow's error code


# --- small helpers -------------------------------------------------------------------


class _ReadyFile(threading.Event):
    """An Event that writes ``path`` when first set (how Cluster learns a child is
    ready). No thread waits on it: a supervisor forks its zygote only while it has
    one thread."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self._path = path

    def set(self) -> None:
        if self._path and not self.is_set():
            Path(self._path).write_text(str(os.getpid()))
        super().set()


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")


# --- verbs: processes ---------------------------------------------------------------------


def cmd_flow(args: argparse.Namespace) -> int:
    """Run Flow until SIGINT/SIGTERM."""
    from plait.actors.flow import FlowSettings, run_flow

    _setup_logging(args.log_level)
    memory.tune_gc()  # a process of its own: run_flow may also run inside a program
    settings = FlowSettings(db=args.db, host=args.host, port=args.port, feed_port=args.feed_port,
                            heartbeat_interval=args.heartbeat_interval,
                            heartbeat_timeout=args.heartbeat_timeout,
                            retry_scale=args.retry_scale,
                            max_message_size=args.max_message_size)
    if args.clock_file:  # tests move Flow's time by rewriting the file
        from plait.actors.clock import FileClock

        settings.clock = FileClock(args.clock_file)
    run_flow(settings, ready=_ReadyFile(args.ready_file))
    return Exit.OK


def cmd_supervisor(args: argparse.Namespace) -> int:
    """Run a supervisor until SIGINT/SIGTERM."""
    from plait.supervisor.daemon import SupervisorSettings, run_supervisor

    _setup_logging(args.log_level)
    memory.tune_gc()  # before its zygote is forked, which keeps the setting
    importable_cwd()
    sizes = {k: v for k, v in (("workers", args.workers), ("max_workers", args.max_workers),
                               ("prefetch", args.prefetch)) if v is not None}
    settings = SupervisorSettings(flow=args.flow, imports=args.imports, queues=args.queues,
                                  max_frame_size=args.max_message_size, **sizes)
    run_supervisor(settings, ready=_ReadyFile(args.ready_file))
    return Exit.OK


def cmd_dev(args: argparse.Namespace) -> int:
    """Flow (in this process) and one supervisor process, until Ctrl-C."""
    from plait.demo import examples_path, run_dev

    imports = args.imports or _default_imports()
    _setup_logging(args.log_level)  # before the supervisor is forked: it logs alike
    db = Path(args.db or DEFAULT_DB).resolve()
    paths = [p for p in [examples_path()] if p is not None]
    return run_dev(imports, port=args.port, workers=args.workers, db=db, paths=paths,
                   max_message_size=args.max_message_size)


def _default_imports() -> list[str]:
    from plait.demo import EXAMPLE_MODULES, examples_path

    if examples_path() is None:
        raise ValueError("plait dev: pass --import MODULE (the examples are not available here)")
    return list(EXAMPLE_MODULES)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every example on a throw-away local cluster and draw their graphs."""
    from plait.demo import run_demo

    return run_demo(Path(args.out), timeout=args.timeout)


# --- verbs: client ------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a workflow; print its id (with --wait: its result)."""
    if args.wait_timeout is not None and not args.wait:
        raise UsageError("--wait-timeout goes with --wait")
    name, root, diff = registration_of(args.target, args.args, args.kw)
    with client_of(args) as client:
        run = client.submit_diff(name, root, diff.to_dict(), workflow_id=args.id)
        if not args.wait:
            if args.json:
                print_json({"workflow_id": run.id})
            else:
                print(run.id)
            return Exit.OK
        try:
            return _report_result(run, args)
        except (PlaitError, Interrupted, KeyboardInterrupt):
            # Its id (chosen by Flow) was printed nowhere yet: without it, nobody
            # could cancel, watch or draw the workflow, which runs on.
            print(f"plait submit: workflow {run.id} was submitted and runs on",
                  file=sys.stderr)
            raise


def _report_result(run: Run, args: argparse.Namespace) -> int:
    finished = run.wait(args.wait_timeout)
    if args.json:
        print_json({"workflow_id": run.id, "status": finished.status,
                     "output": finished.output, "error": finished.error})
    elif finished.status == "succeeded":
        print(json.dumps(finished.output, ensure_ascii=False, default=str))
    else:
        print(f"{run.id}: {outcome_error(finished)}", file=sys.stderr)
    return STATUS_EXIT.get(finished.status, Exit.ERROR)


def cmd_status(args: argparse.Namespace) -> int:
    """Show one workflow's status, or every workflow's."""
    with client_of(args) as client:
        runs = [client.run_info(args.workflow)] if args.workflow else client.runs()
    if args.json:
        print_json([r.model_dump(mode="json") for r in runs] if not args.workflow
                    else runs[0].model_dump(mode="json"))
    else:
        for line in _status_table(runs):
            print(line)
    return Exit.OK


def _status_table(runs: Sequence[RunInfo]) -> Iterator[str]:
    yield f"{'WORKFLOW':<36} {'STATUS':<10} {'NODES':>5}  NAME"
    for r in runs:
        yield f"{r.workflow_id:<36} {r.status:<10} {r.nodes:>5}  {r.name}"


def cmd_watch(args: argparse.Namespace) -> int:
    """Print the mutation feed live (one workflow's, or all); Ctrl-C stops."""
    with client_of(args) as client, interruptible(), client.watch(args.workflow) as feed:
        for event in feed:
            if args.json:
                print_json(event.model_dump(mode="json"))
            else:
                print(describe(event), flush=True)
    return Exit.OK


# One line per durable-execution event: a template over the event's fields.
EVENT_LINES = {
    "paused": "paused", "resumed": "resumed", "restart": "restart {node}",
    "signal": "signal {name} received", "delivered": "signal {name} delivered to {node}",
    "timer": "timer of {node} fired", "set_state": "{node} set its state",
    "recorded": "{node} recorded {count} value(s)", "heartbeat": "{node} heartbeat",
    "wait": "{node} waits", "undelivered": "{node} gave its signals back",
}


def describe(event: FeedEvent) -> str:
    """One line for a person, per feed event."""
    e = event.event
    kind = e.get("type")
    head = f"{event.workflow_id} #{event.seq:<4}"
    if kind == "snapshot":
        return f"{head} snapshot: {len(e['graph'].get('nodes', []))} nodes"
    if kind == "diff":
        diff = e.get("diff", {})
        if diff.get("attrs") and not (diff.get("nodes") or diff.get("edges")
                                      or diff.get("promises")):
            return f"{head} attributes: " + ", ".join(
                f"{a.get('node') or '->'.join(a.get('edge') or ('?',))}.{a.get('key')}="
                f"{json.dumps(a.get('value'), ensure_ascii=False, default=str)}"
                for a in diff["attrs"][:8])
        nodes = ", ".join(f"{n['id']} ({n['task']})" for n in diff.get("nodes", [])[:8])
        return (f"{head} diff by {diff.get('proposer') or 'registration'}: +{nodes or 'no nodes'}"
                f" +{len(diff.get('edges', []))} edges +{len(diff.get('promises', []))} promises")
    if kind == "state":
        return f"{head} {e.get('node')} -> {e.get('state')} (attempt {e.get('attempt')})"
    if kind == "violation":
        return f"{head} VIOLATION: {e.get('rejection', {}).get('reason')}"
    if kind == "workflow":
        return f"{head} workflow {e.get('status')}"
    if kind in EVENT_LINES:
        fields = {"node": "?", "name": "?", **e, "count": len(e.get("values") or ())}
        return f"{head} {EVENT_LINES[kind].format(**fields)}"
    return f"{head} {kind}"


def cmd_graph(args: argparse.Namespace) -> int:
    """Print or write the as-of-now view (or as of --at SEQ)."""
    from plait.protocol.render import image, render, to_dot

    # With -o, the file's format is --format's or its suffix's: --json, as for
    # every verb, only shapes what is printed (it wrote JSON into plan.svg).
    fmt: str = args.format or ("json" if args.json else "dot")
    with client_of(args) as client:
        doc = client.graph(args.workflow, at=args.at, unfold=args.unfold).graph
    if args.output:
        path = render(doc, args.output, args.format)
        if args.json:
            print_json({"path": str(path)})
        else:
            print(path)
    elif fmt == "json":
        print(json.dumps(doc, indent=1, ensure_ascii=False))
    elif fmt == "dot":
        sys.stdout.write(to_dot(doc))
    else:
        sys.stdout.buffer.write(image(doc, fmt))
    return Exit.OK


def cmd_trace(args: argparse.Namespace) -> int:
    """Write one frame per applied diff into DIR (frame-0001-seq-5.svg, ...)."""
    from plait.protocol.render import render

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with client_of(args) as client:
        seqs = [e["seq"] for e in client.history(args.workflow) if e.get("type") == "diff"]
        for n, seq in enumerate(seqs, start=1):
            doc = client.graph(args.workflow, at=seq, unfold=args.unfold).graph
            written.append(render(doc, out / f"frame-{n:04d}-seq-{seq}.{args.format}",
                                  args.format))
    if args.json:
        print_json([str(p) for p in written])
    else:
        print(f"{len(written)} frames in {out}")
    return Exit.OK


def cmd_history(args: argparse.Namespace) -> int:
    """Print the workflow's event log as JSON lines."""
    with client_of(args) as client:
        for event in client.history(args.workflow):
            print_json(event)
    return Exit.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a workflow."""
    with client_of(args) as client:
        status = client.cancel(args.workflow)
    cancelled = status == "cancelled"
    if args.json:
        print_json({"workflow_id": args.workflow, "cancelled": cancelled, "status": status})
    elif cancelled:
        print(f"cancelled {args.workflow}")
    else:  # idempotent, as for a cancelled one: the workflow runs no more either way
        print(f"{args.workflow} had already ended ({status}): nothing to cancel")
    return Exit.OK


# --- the parser ----------------------------------------------------------------------------


def _process_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    _log_option(p)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    return p


def _log_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   type=str.lower, help="logging level (default: info)")


def _dev_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=7100, help="Flow's port (feed: port + 1)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="task module to serve (repeatable; default: the examples)")
    p.add_argument("--db", help=f"SQLite file (default: {DEFAULT_DB})")
    _log_option(p)
    _size_option(p)


def _size_option(p: argparse.ArgumentParser) -> None:
    message_size_option(p, "largest message taken from a client or worker")


def _flow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file (default: {DEFAULT_DB})")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    p.add_argument("--port", type=int, default=7100, help="request port (default: 7100)")
    p.add_argument("--feed-port", type=int, default=None, help="feed port (default: port + 1)")
    p.add_argument("--heartbeat-interval", type=seconds, default=0.5, metavar="S",
                   help="seconds between heartbeats (default: 0.5)")
    p.add_argument("--heartbeat-timeout", type=seconds, default=3.0, metavar="S",
                   help="a supervisor silent this long is dead (default: 3)")
    p.add_argument("--retry-scale", type=scale, default=1.0, metavar="X",
                   help="multiply every retry delay by X (default: 1)")
    _size_option(p)
    p.add_argument("--clock-file", default=None, help=argparse.SUPPRESS)  # tests' clock


def _supervisor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow", default=os.environ.get("PLAIT_FLOW", "tcp://127.0.0.1:7100"),
                   metavar="ADDRESS", help="Flow's address (default: $PLAIT_FLOW or port 7100)")
    p.add_argument("--import", dest="imports", action="append", required=True,
                   metavar="MODULE", help="task module to import and serve (repeatable)")
    p.add_argument("--queue", dest="queues", action="append", default=None, metavar="NAME",
                   help="serve only the tasks on this queue, @task(queue=NAME) "
                        "(repeatable; default: every queue)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU)")
    p.add_argument("--max-workers", type=int, default=None,
                   help="workers allowed while tasks await others (default: 4 x workers)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="assignments queued beyond the free workers, to hide the round "
                        "trip to Flow (default: 48 x workers)")
    message_size_option(p, "largest message taken from a worker: as Flow's, or less")


def _submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="module:task", help="a task or Graph, as module:attr")
    p.add_argument("args", nargs="*", metavar="ARG_JSON",
                   help="positional arguments, as JSON (a non-JSON word is a string)")
    p.add_argument("--kw", action="append", default=[], metavar="NAME=JSON",
                   help="a keyword argument (repeatable)")
    p.add_argument("--id", default=None, help="the workflow id (default: NAME-<random>)")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument("--wait-timeout", type=seconds, default=None, metavar="S",
                   help="with --wait: give up after S seconds")


def _any_workflow(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", nargs="?", help="a workflow id (default: all)")


def _graph_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow")
    p.add_argument("--at", type=event_seq, default=None, metavar="SEQ",
                   help="as of this event (the latest view if the workflow has fewer)")
    p.add_argument("--format", choices=["dot", "svg", "png", "pdf", "json"], default=None,
                   help="default: -o's suffix (svg without one); to stdout, json with --json, "
                        "else dot")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--unfold", action="store_true", help="do not fold repeated siblings")


def _trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--format", choices=["svg", "png", "dot", "json"], default="svg")
    p.add_argument("--unfold", action="store_true", help="do not fold repeated siblings")


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="plait-demo", metavar="DIR",
                   help="where to write the pictures (default: ./plait-demo)")
    p.add_argument("--timeout", type=seconds, default=60.0, metavar="S",
                   help="give up on an example after S seconds (default: 60)")


VERBS: Verbs = {
    "dev": (cmd_dev, _dev_options, ""),
    "flow": (cmd_flow, _flow_options, "process"),
    "supervisor": (cmd_supervisor, _supervisor_options, "process"),
    "submit": (cmd_submit, _submit_options, "client"),
    "status": (cmd_status, _any_workflow, "client"),
    "watch": (cmd_watch, _any_workflow, "client"),
    "graph": (cmd_graph, _graph_options, "client"),
    "trace": (cmd_trace, _trace_options, "client"),
    "history": (cmd_history, one_workflow, "client"),
    "cancel": (cmd_cancel, one_workflow, "client"),
    "demo": (cmd_demo, _demo_options, ""),
    **CONTROL_VERBS,
}


def build_parser() -> argparse.ArgumentParser:
    codes = ", ".join(f"{int(c)} {c.name.lower().replace('_', ' ')}" for c in Exit)
    parser = argparse.ArgumentParser(
        prog="plait", description="plait: durable workflows, from static to dynamic, "
                                  "with promises.", epilog=f"exit codes: {codes}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    shared = {"client": [client_options()], "process": [_process_options()], "": []}
    for name, (command, options, kind) in VERBS.items():
        doc = (command.__doc__ or "").strip()
        p = verbs.add_parser(name, help=doc, description=doc, parents=shared[kind])
        options(p)
        p.set_defaults(func=command)
    return parser


def exit_code(exc: BaseException) -> Exit:
    """The exit code an exception escaping a verb means."""
    if isinstance(exc, FlowError) and not isinstance(exc, NotFound):
        return FLOW_ERROR_EXIT.get(exc.code, Exit.ERROR)
    for cls, code in ERROR_EXIT:
        if isinstance(exc, cls):
            return code
    return Exit.ERROR


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (KeyboardInterrupt, Interrupted):
        return Exit.INTERRUPTED
    except (PlaitError, TypeError, ValueError, OSError, zmq.ZMQError) as exc:
        # The process edge: say what went wrong in one line, exit by cause.
        print(f"plait {args.verb}: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
