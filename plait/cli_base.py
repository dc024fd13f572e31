"""What every ``plait`` verb shares: exit codes, argument parsing helpers, the
client options, and how a verb prints data.

Kept apart from :mod:`plait.cli` so that the verb modules (:mod:`plait.cli`,
:mod:`plait.cli_control`) can share it without importing each other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from typing import Any

from plait.client import Client
from plait.errors import PlaitError
from plait.protocol.codec import DEFAULT_MAX_SIZE
from plait.protocol.diff import PlanDiff
from plait.stopping import on_signals

__all__ = ["STATUS_EXIT", "Command", "Exit", "Interrupted", "Options", "UsageError", "Verbs",
           "client_of", "client_options", "done", "importable_cwd", "interruptible", "keyword",
           "one_workflow", "parse_arg", "print_json", "registration_of", "scale", "seconds"]

Options = Callable[[argparse.ArgumentParser], None]
Command = Callable[[argparse.Namespace], int]
# verb -> (command, its options, shared options: "client", "process" or "" for none)
Verbs = dict[str, tuple[Command, Options, str]]


class Exit(IntEnum):
    """The process exit codes of every verb."""

    OK = 0
    ERROR = 1  # anything else (the message says what)
    USAGE = 2  # bad arguments, unknown target, unreadable input
    UNREACHABLE = 3  # Flow did not answer
    FAILED = 4  # the workflow (or the submitted plan) failed
    VIOLATED = 5  # the workflow broke a promise
    CANCELLED = 6  # the workflow was cancelled
    NOT_FOUND = 7  # no such workflow (node, schedule)
    REFUSED = 8  # Flow refused the control (the workflow has ended, the node is running...)
    INTERRUPTED = 130  # Ctrl-C


STATUS_EXIT = {"succeeded": Exit.OK, "failed": Exit.FAILED, "violated": Exit.VIOLATED,
               "cancelled": Exit.CANCELLED}


class UsageError(PlaitError):
    """The command line names something that does not exist or cannot be used."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while a verb was blocking."""


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, default=str), flush=True)


def done(args: argparse.Namespace, text: str, data: dict[str, Any]) -> int:
    """Report a control that worked: ``data`` as JSON with --json, else ``text``."""
    if args.json:
        print_json(data)
    else:
        print(text, flush=True)
    return Exit.OK


def client_of(args: argparse.Namespace) -> Client:
    return Client(args.flow, feed=args.feed, timeout=args.timeout,
                  max_message_size=args.max_message_size)


def parse_arg(text: str) -> Any:
    """A command-line argument: JSON if it parses, else the string itself, unless
    it was meant as JSON (an object, a list, a quoted string): sent as a string,
    a typo became a signal payload that no retry can take back."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip()[:1] in ("{", "[", '"'):
            raise UsageError(f"{text!r} is not valid JSON ({exc.msg}, column {exc.colno})"
                             ) from None
        return text


def keyword(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"expected NAME=JSON, got {text!r}")
    return name, parse_arg(value)


def importable_cwd() -> None:
    # Like celery and uvicorn: "module:task" names a module of the project the
    # command runs in, even when the console script's directory is elsewhere.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def registration_of(target: str, args: Sequence[str],
                    kwargs: Sequence[str]) -> tuple[str, str, PlanDiff]:
    """The registration of ``module:attr`` with arguments as typed on the command line;
    a target that cannot be imported or used is a usage error."""
    from plait.graph import registration

    importable_cwd()
    keywords = dict(keyword(k) for k in kwargs)
    try:
        return registration(target, [parse_arg(a) for a in args], keywords)
    except PlaitError as exc:
        raise UsageError(str(exc)) from exc


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block (handlers restored after)."""
    def interrupt(sig: signal.Signals) -> None:
        raise Interrupted(sig.name)

    with on_signals(interrupt):
        yield


def one_workflow(p: argparse.ArgumentParser) -> None:
    """The options of a verb about one workflow."""
    p.add_argument("workflow")


def message_size(text: str) -> int:
    """A message size limit: a positive number of bytes."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if size < 1024:
        raise argparse.ArgumentTypeError(f"{size} bytes is too small for any message "
                                         "(at least 1024)")
    return size


def seconds(text: str) -> float:
    """A duration: a positive, finite number of seconds (inf overflowed a poll,
    0 or less read as "Flow unreachable", nan broke the arithmetic)."""
    return _finite(text, "a positive, finite number of seconds", zero=False)


def scale(text: str) -> float:
    """A factor of zero or more (finite)."""
    return _finite(text, "a finite number of zero or more", zero=True)


def _finite(text: str, what: str, *, zero: bool) -> float:
    """A finite number above zero (or from zero, with ``zero``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not ((value >= 0 if zero else value > 0) and value < math.inf):
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def event_seq(text: str) -> int:
    """A workflow's event sequence number: its events are numbered from 1."""
    try:
        seq = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an event number: {text!r}") from None
    if not 1 <= seq < 2**63:
        raise argparse.ArgumentTypeError(f"{seq} is not an event number (events are "
                                         "numbered from 1)")
    return seq


def message_size_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--max-message-size BYTES``: ``what`` says which messages it bounds."""
    p.add_argument("--max-message-size", type=message_size, default=DEFAULT_MAX_SIZE,
                   metavar="BYTES", help=f"{what} (default: {DEFAULT_MAX_SIZE:,})")


def client_options() -> argparse.ArgumentParser:
    """The options of every verb that talks to Flow (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--flow", default=None, metavar="ADDRESS",
                   help="Flow's address (default: $PLAIT_FLOW, else tcp://127.0.0.1:7100)")
    p.add_argument("--feed", default=None, metavar="ADDRESS",
                   help="Flow's feed address (default: $PLAIT_FEED unless --flow names "
                        "another Flow than $PLAIT_FLOW, else Flow's port + 1)")
    p.add_argument("--timeout", type=seconds, default=10.0, metavar="S",
                   help="seconds to wait for Flow to answer (default: 10)")
    message_size_option(p, "largest request sent: as Flow's --max-message-size")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p
