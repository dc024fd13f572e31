"""``Run``: a handle on one workflow, and the operator's controls over it.

Everything here is one request to Flow through the :class:`~plait.client.Client`
that made the handle; a Run holds no state of its own beyond the workflow id,
so a handle built from an id typed by hand (``client.run("weekly-1a2b")``) is
as good as the one ``submit`` returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.client_errors import outcome_error
from plait.protocol.diff import AttrChange
from plait.protocol.messages import RunInfo, WorkflowResult

if TYPE_CHECKING:
    from plait.client import Client

__all__ = ["Run", "attr_changes"]


def attr_changes(node: str | None, edge: tuple[str, str] | None,
                 attrs: dict[str, Any]) -> list[AttrChange]:
    """Cosmetic changes to exactly one node or one edge (a value of None unsets it)."""
    if (node is None) == (edge is None):
        raise ValueError("set_attrs: name exactly one node= or edge=(src, dst)")
    if not attrs:
        raise ValueError("set_attrs: no attributes given")
    where = (str(edge[0]), str(edge[1])) if edge is not None else None
    return [AttrChange(key, value, node=node, edge=where) for key, value in attrs.items()]


class Run:
    """A handle on one submitted workflow."""

    def __init__(self, client: Client, workflow_id: str) -> None:
        self.client = client
        self.id = workflow_id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    # --- outcome and inspection -------------------------------------------------------

    def result(self, timeout: float | None = None) -> Any:
        """The workflow's output once it succeeded; raises ``TaskFailed``,
        ``PromiseViolation`` or ``WorkflowCancelled`` when it did not (a replay
        that diverged from its history raises a ``TaskFailed`` that is also a
        ``NonDeterminismError``), and ``ResultTimeout`` if ``timeout`` seconds pass
        first."""
        finished = self.wait(timeout)
        if finished.status == "succeeded":
            return finished.output
        raise outcome_error(finished)

    def wait(self, timeout: float | None = None) -> WorkflowResult:
        """The finished workflow's result message, whatever its status."""
        return self.client.await_result(self.id, timeout)

    def info(self) -> RunInfo:
        return self.client.run_info(self.id)

    def status(self) -> str:
        """One of running, paused, succeeded, failed, cancelled, violated."""
        return self.info().status

    def graph(self, at: int | None = None, *, unfold: bool = False) -> dict[str, Any]:
        """The as-of-now view as its JSON document (or as of sequence number ``at``)."""
        return self.client.graph(self.id, at=at, unfold=unfold).graph

    def history(self) -> list[dict[str, Any]]:
        """The workflow's event log, oldest first."""
        return self.client.history(self.id)

    def cached(self) -> list[str]:
        """Ids of the nodes served from the cache (``@task(cache=True)``) instead of run."""
        return [n["id"] for n in self.graph(unfold=True)["nodes"]
                if not n["provisional"] and n.get("attrs", {}).get("cached")]

    def query(self, node: str | None = None) -> Any:
        """The latest value set with ``ctx.set_state`` (by any node, or by ``node``);
        None if nothing was set. Reading it never affects the workflow."""
        reply = self.client.query(self.id)
        return reply.state if node is None else reply.nodes.get(node)

    def states(self) -> dict[str, Any]:
        """Every node's latest ``ctx.set_state`` value, by node id."""
        return dict(self.client.query(self.id).nodes)

    # --- controls -----------------------------------------------------------------------

    def cancel(self) -> str:
        """Running tasks are told to stop (then killed after a grace period); nothing
        further is scheduled. Returns the status: "cancelled", or how the workflow
        had already ended."""
        return self.client.cancel(self.id)

    def pause(self) -> None:
        """No new task of this workflow starts until :meth:`resume`; running ones finish."""
        self.client.pause(self.id)

    def resume(self) -> None:
        self.client.resume(self.id)

    def restart(self, node: str) -> None:
        """Run ``node`` and everything downstream of it again, as new attempts (the
        earlier ones stay in the history). A finished workflow runs again."""
        self.client.restart(self.id, node)

    def signal(self, name: str, payload: Any = None) -> None:
        """Deliver the signal ``name`` (with data ``payload``) to the task that awaits
        ``ctx.signal(name)``, now or later: a signal sent first is kept for it."""
        self.client.signal(self.id, name, payload)

    def set_attrs(self, node: str | None = None, *, edge: tuple[str, str] | None = None,
                  **attrs: Any) -> None:
        """Cosmetic attributes (``color``, ``label``...) of one node or one edge."""
        self.client.set_attrs(self.id, attr_changes(node, edge, attrs))
