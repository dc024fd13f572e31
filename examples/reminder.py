"""A durable timer: ``await ctx.sleep(seconds)`` holds no process while it runs.

``remind`` notes when it was asked (a recorded ``ctx.now()``), sleeps, then
sends the reminder. During the sleep the task is not in any worker: Flow keeps
the timer in its database and runs the task again when it fires (after a Flow
restart too); the replay returns the recorded time and skips the finished
sleep, so the reminder knows how long it waited. The sleep may be a second or
a year.

    plait submit examples.reminder:remind '"stand up"' 2 --wait
"""

from __future__ import annotations

from plait import Context, OnlyNodes, task


@task
def send_reminder(ctx: Context, message: str, waited: float) -> str:
    return f"reminder: {message} (after {waited:g} s)"


@task(promises=[OnlyNodes(send_reminder)])
async def remind(ctx: Context, message: str, seconds: float = 2.0) -> str:
    asked = ctx.now()  # recorded: the replay after the sleep sees the same instant
    ctx.set_state({"sleeping until": asked.timestamp() + seconds})
    await ctx.sleep(seconds)
    waited = round((ctx.now() - asked).total_seconds())
    return await ctx.spawn(send_reminder, message, waited)
