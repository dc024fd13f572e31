"""Waiting for a person without a process: seed 001's "wait for user input".

``publish`` drafts a document, then awaits the signal ``approve``. While it
waits no worker holds it: the task is dropped from its worker and the node is
*suspended* in Flow; when the signal arrives Flow runs the task again, which
replays its history (the draft is not written twice) and carries on with the
signal's payload. A signal sent before the task reached the wait is kept for
it. ``ctx.set_state`` makes the progress readable with ``plait query``.

    plait submit examples.approval:publish '"release notes"'   # prints the workflow id
    plait query publish-1a2b3c4d                # {"step": "waiting for approval", ...}
    plait signal publish-1a2b3c4d approve '{"by": "ana", "ok": true}'
    plait status publish-1a2b3c4d               # succeeded
"""

from __future__ import annotations

from pydantic import BaseModel

from plait import Context, OnlyNodes, task


class Decision(BaseModel):
    by: str = "someone"
    ok: bool = True


@task
def draft(ctx: Context, title: str) -> str:
    return f"# {title}\n\n(draft)"


@task
def release(ctx: Context, text: str, by: str) -> str:
    return f"released {text.splitlines()[0][2:]!r}, approved by {by}"


@task(promises=[OnlyNodes(draft, release)])
async def publish(ctx: Context, title: str) -> str:
    text = await ctx.spawn(draft, title)
    ctx.set_state({"step": "waiting for approval", "title": title})
    decision = Decision.model_validate(await ctx.signal("approve") or {})
    if not decision.ok:
        ctx.set_state({"step": "rejected", "by": decision.by})
        return f"{title!r} rejected by {decision.by}"
    ctx.set_state({"step": "releasing", "by": decision.by})
    return await ctx.spawn(release, text, decision.by)
