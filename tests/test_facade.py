"""The public names of ``plait``: code outside the project relies on them.

A snapshot: adding, removing or renaming a public name must be a deliberate
change of this list (and of the README), never a side effect.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import plait

PUBLIC = [
    "Any", "Client", "Context", "Graph", "Loop", "MaxNodes", "MaxParallel", "MessageTooLarge",
    "NoEdgesFrom", "NoEdgesTo", "NoNewEdges", "NoNewNodes", "NonDeterminismError", "OneOf",
    "OnlyEdges",
    "OnlyNodes", "Par", "PlaitError", "PlanError", "PromiseViolation", "ProtocolError",
    "Repeat", "Retry", "Run", "Seq", "Shape", "StepFailed", "TaskFailed", "WorkflowCancelled",
    "task",
]


def test_the_public_names_are_exactly_these() -> None:
    assert plait.__all__ == PUBLIC


def test_the_list_is_sorted_and_every_name_resolves() -> None:
    assert plait.__all__ == sorted(plait.__all__)
    for name in plait.__all__:
        obj = getattr(plait, name)
        assert obj.__module__.startswith("plait."), name


def test_the_errors_share_one_root() -> None:
    for name in ("MessageTooLarge", "NonDeterminismError", "PlanError", "PromiseViolation",
                 "ProtocolError", "StepFailed", "TaskFailed", "WorkflowCancelled"):
        assert issubclass(getattr(plait, name), plait.PlaitError), name


def test_run_offers_every_operator_control() -> None:
    for method in ("result", "status", "graph", "history", "cancel", "pause", "resume",
                   "restart", "signal", "query", "states", "set_attrs", "cached"):
        assert callable(getattr(plait.Run, method)), method
    for method in ("submit", "runs", "watch", "schedules", "add_schedule", "remove_schedule"):
        assert callable(getattr(plait.Client, method)), method


# Every import statement calls builtins.__import__, even for a module imported before
# (some pydantic-core releases import asyncio themselves): this sees plait's own.
_IMPORTERS = """
import builtins, sys
importers = set()
real = builtins.__import__
def spy(name, globals=None, locals=None, fromlist=(), level=0):
    if name.split(".")[0] == "asyncio":
        importers.add((globals or {}).get("__name__", "?"))
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = spy
import IMPORTS
print(sorted(m for m in importers if m.split(".")[0] == "plait"), "plait.context" in sys.modules)
"""


def _plait_importing_asyncio(imports: str) -> str:
    out = subprocess.run([sys.executable, "-c", _IMPORTERS.replace("IMPORTS", imports)],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def test_importing_the_client_does_not_import_the_task_runtime() -> None:
    # The facade resolves its names on first use: a script, the CLI and Flow
    # start faster for not importing asyncio and the task runtime.
    assert _plait_importing_asyncio("plait.client, plait.cli") == "[] False"
    assert _plait_importing_asyncio("plait.context") == "['plait.context'] True"  # it can fail


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Workflow'"):
        plait.Workflow  # type: ignore[attr-defined]  # noqa: B018


def test_every_public_name_is_imported_at_once_or_on_first_use() -> None:
    eager = {name for name in plait.__all__ if name in vars(plait)} - set(plait._LAZY)
    assert eager | set(plait._LAZY) == set(plait.__all__)
    assert set(plait._LAZY) == {"Client", "Run", "Context"}


def test_task_stays_the_decorator_once_the_module_is_imported() -> None:
    # Importing a submodule sets the package's attribute of that name.
    code = "import plait.task, plait; print(callable(plait.task), type(plait.task).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["True", "function"]
