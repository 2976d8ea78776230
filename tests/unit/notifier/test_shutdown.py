"""The notifier's loops stop at shutdown even when a cancellation is lost on the way."""

import asyncio
import contextlib

from errand_notifier.server import stop_tasks


async def _loses_its_first_cancellation(stopped: list[bool]) -> None:
    """Like the relay when the Redis client swallowed the cancellation of a read: it
    reads on as if nothing happened."""
    with contextlib.suppress(asyncio.CancelledError):  # lost below our code
        await asyncio.sleep(3600)
    try:
        await asyncio.sleep(3600)
    finally:
        stopped.append(True)


async def _ignores_cancellation(release: asyncio.Event) -> None:
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


async def test_a_task_whose_cancellation_was_lost_is_cancelled_again_and_stops() -> None:
    stopped: list[bool] = []
    task = asyncio.create_task(_loses_its_first_cancellation(stopped))
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)  # both started
    running = await stop_tasks([task, plain], timeout_s=30)
    assert running == set()
    assert task.cancelled()
    assert plain.cancelled()
    assert stopped == [True]


async def test_a_task_that_ignores_every_cancellation_is_given_back_after_the_wait() -> None:
    release = asyncio.Event()
    stubborn = asyncio.create_task(_ignores_cancellation(release))
    await asyncio.sleep(0)
    running = await stop_tasks([stubborn], timeout_s=0.3)
    assert running == {stubborn}
    assert not stubborn.done()
    release.set()  # not left for the event loop's end
    await stubborn
