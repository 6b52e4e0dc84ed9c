"""The workflows: one registry, one concern per workflow.

Imported by the runner in a fresh process whose ``WORKFLOW_LOCAL_DATA_DIR`` is already set, because
``Workflows()`` binds the process's world when the module is imported. vercel-workflow re-imports
this module inside its sandbox on every replay, so it imports nothing but the package itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from vercel.workflow import (
    BaseHook,
    FatalError,
    RetryableError,
    Workflows,
    get_step_metadata,
    get_writable,
    sleep,
)

wf = Workflows()


# -- sequential steps --------------------------------------------------------------------------
@wf.step
async def add(a: int, b: int) -> int:
    return a + b


@wf.step
async def double(x: int) -> int:
    return x * 2


@wf.workflow
async def sequential(a: int) -> int:
    total = await add(a, 1)
    return await double(total)


# -- fan-out -----------------------------------------------------------------------------------
@wf.step
async def square(x: int) -> int:
    return x * x


@wf.workflow
async def fan_out(n: int) -> int:
    squares = await asyncio.gather(*(square(i) for i in range(n)))
    return sum(squares)


# -- retries: RetryableError then success; a plain error then FatalError -------------------------
@wf.step
async def rate_limited(label: str) -> str:
    if get_step_metadata().attempt == 1:
        raise RetryableError(f"rate limited: {label}", retry_after=1)
    return f"{label} ok on attempt {get_step_metadata().attempt}"


@wf.workflow
async def retrying(label: str) -> str:
    return await rate_limited(label)


@wf.step(max_retries=3)
async def doomed(order: str) -> None:
    if get_step_metadata().attempt == 1:
        raise ValueError(f"card declined for {order}")
    raise FatalError(f"order {order} cannot be charged")


@wf.workflow
async def fatal(order: str) -> str:
    try:
        await doomed(order)
    except FatalError as error:
        return f"gave up: {error}"
    return "charged"


# -- a failing run: a step that exhausts its retries, uncaught ------------------------------------
@wf.step(max_retries=1)
async def always_fails(what: str) -> None:
    raise ValueError(f"{what} is broken")


@wf.workflow
async def failing(what: str) -> None:
    await add(1, 1)
    await always_fails(what)


# -- a payload big enough that vercel-workflow zstd-compresses it (spec version 5) -------------------
@wf.step
async def report(lines: int) -> str:
    return "\n".join(f"line {i}: all systems nominal" for i in range(lines))


@wf.workflow
async def bulky(lines: int) -> int:
    return len(await report(lines))


# -- a durable sleep -----------------------------------------------------------------------------
@wf.workflow
async def sleeper(seconds: int) -> str:
    await sleep(seconds)
    await double(seconds)
    return "woke"


# -- hooks: one resumed, one left waiting -----------------------------------------------------------
@dataclass
class Approval(BaseHook):
    approved: bool
    by: str


@wf.workflow
async def approval(token: str) -> str:
    async with Approval.wait(token=token, metadata={"token": token}) as hook:
        answer = await hook
    return f"approved={answer.approved} by {answer.by}"


# -- streams: chunks written and closed by a step; a write after the run completed -----------------
@wf.step
async def stream_words(words: list[str]) -> int:
    writable = get_writable()
    for word in words:
        await writable.write(word)
    await writable.close()
    return len(words)


@wf.workflow
async def streaming(words: list[str]) -> int:
    return await stream_words(words)


@wf.step
async def quick() -> str:
    return "quick"


@wf.step
async def straggler(delay: float) -> str:
    """Still running when its run completes; its stream write lands after the run's end."""
    await asyncio.sleep(delay)
    writable = get_writable(namespace="late")
    await writable.write("written after the run completed")
    await writable.drain()
    return "late"


@wf.workflow
async def racing(delay: float) -> str:
    fast = asyncio.ensure_future(quick())
    slow = asyncio.ensure_future(straggler(delay))
    done, _ = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    return done.pop().result()
