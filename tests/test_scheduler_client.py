"""`SchedulerClient` with the real `SchedulerActor` over a real (private, local) Ray: batched acquires
and releases, every way an acquire ends, an actor restart, and a client that stops polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from factories import make_ticket

from deployments.scheduler_actor import AcquireStatus, Release, Submission
from deployments.scheduler_client import SchedulerClient
from driftsched.core.placement import Capacity
from driftsched.core.request import RejectReason

pytestmark = pytest.mark.slow

CONFIG = {"tenants": [{"name": "a", "max_queued": 1000}],
          "scheduler": {"policy": "fifo", "max_queued_total": 1000}}


@pytest.fixture
def actor(serve_cluster: Any) -> Any:
    """A fresh scheduler actor, as the app makes it, with a client grace of 1 s."""
    import ray

    from deployments.actors import scheduler_actor

    handle = scheduler_actor(f"test.scheduler.{time.monotonic_ns()}", CONFIG, 60.0, 1.0)
    yield handle
    ray.kill(handle, no_restart=True)


def slots(free: int) -> Capacity:
    return Capacity(max_slots=max(free, 1), free_slots=free, free_kv_tokens=1_000_000)


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def sizes(actor: Any) -> dict[str, int]:
    return await actor.table_sizes.remote()  # type: ignore[no-any-return]


def test_concurrent_acquires_and_releases_travel_in_few_calls(actor: Any):
    async def scenario() -> tuple[list[Any], dict[str, int], dict[str, int]]:
        await actor.report.remote("r0", slots(200))
        client = SchedulerClient(actor)
        results = await asyncio.gather(*(client.acquire(make_ticket(i), 30.0) for i in range(200)))
        for i, result in enumerate(results):
            client.release(f"r{i}", result.replica_id, 5, None)

        async def drained() -> bool:
            return (await sizes(actor))["granted"] == 0

        await until(drained)
        return results, dict(client.calls), await sizes(actor)

    results, calls, after = asyncio.run(scenario())
    assert all((r.status, r.replica_id) == (AcquireStatus.GRANTED, "r0") for r in results)
    # acquires made in one event-loop turn share one submit; the first release leaves at once, the
    # rest wait for it and go together: 3 calls, not 400
    assert calls["submit"] == 1 and calls["release_many"] <= 2 and calls["cancel"] == 0
    assert after["core_in_flight"] == after["ledger_granted"] == after["routes"] == 0


def test_queued_acquires_are_answered_by_the_poll_as_slots_free(actor: Any):
    async def scenario() -> tuple[list[Any], dict[str, int]]:
        await actor.report.remote("r0", slots(3))
        client = SchedulerClient(actor)

        async def one(i: int) -> Any:
            result = await client.acquire(make_ticket(i), 30.0)
            await asyncio.sleep(0.02)
            client.release(f"r{i}", result.replica_id, 5, None)
            return result

        results = await asyncio.gather(*(one(i) for i in range(30)))
        return results, dict(client.calls)

    results, calls = asyncio.run(scenario())
    assert all(r.status is AcquireStatus.GRANTED for r in results)
    assert calls["poll"] >= 1  # 27 waited for a slot: their grants came through the poll
    assert max(r.queue_wait_s for r in results) > 0.02  # a grant from the outbox carries its wait


def test_a_rejection_and_a_grant_in_one_batch(actor: Any):
    async def scenario() -> list[Any]:
        await actor.report.remote("r0", slots(1))
        client = SchedulerClient(actor)
        return await asyncio.gather(client.acquire(make_ticket(1, tenant="nobody"), 5.0),
                                    client.acquire(make_ticket(2), 5.0))

    rejected, granted = asyncio.run(scenario())
    assert (rejected.status, rejected.reason) == (AcquireStatus.REJECTED, RejectReason.UNKNOWN_TENANT)
    assert (granted.status, granted.replica_id) == (AcquireStatus.GRANTED, "r0")


def test_a_queue_deadline_is_answered_expired_by_the_actor(actor: Any):
    async def scenario() -> tuple[Any, float, dict[str, int]]:
        await actor.report.remote("r0", slots(0))  # nothing free: the ticket waits
        client = SchedulerClient(actor)
        began = time.monotonic()
        result = await client.acquire(make_ticket(1), 0.5)
        return result, time.monotonic() - began, await sizes(actor)

    result, took, after = asyncio.run(scenario())
    assert (result.status, result.detail) == (AcquireStatus.EXPIRED, "queue deadline passed")
    assert 0.5 <= took < 2.0  # the maintenance loop expires it within 0.2 s of its deadline
    assert after["core_queued"] == after["routes"] == after["outbox_answers"] == 0


def test_a_cancelled_acquire_is_withdrawn_from_the_queue(actor: Any):
    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        await actor.report.remote("r0", slots(0))
        client = SchedulerClient(actor)
        waiting = asyncio.create_task(client.acquire(make_ticket(1), 30.0))

        async def queued() -> bool:
            return (await sizes(actor))["core_queued"] == 1

        await until(queued)
        waiting.cancel()  # the HTTP client went away

        async def withdrawn() -> bool:
            s = await sizes(actor)
            return s["core_queued"] == s["routes"] == s["outbox_answers"] == 0

        await until(withdrawn)  # the CANCELLED answer went to the outbox and was collected
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return dict(client.calls), await sizes(actor)

    calls, after = asyncio.run(scenario())
    assert calls["cancel"] == 1 and after["granted"] == 0


def test_outstanding_acquires_are_submitted_again_after_an_actor_restart(actor: Any):
    import ray

    async def scenario() -> tuple[list[Any], str, str, dict[str, int]]:
        free = 0

        async def heartbeat() -> None:  # what a replica does; it re-registers after the restart
            while True:
                with contextlib.suppress(ray.exceptions.RayActorError):
                    await actor.report.remote("r0", slots(free))
                await asyncio.sleep(0.1)

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.2)
        client = SchedulerClient(actor, retry_s=0.1)
        pending = [asyncio.create_task(client.acquire(make_ticket(i), 60.0)) for i in range(20)]

        async def queued() -> bool:
            return (await sizes(actor))["core_queued"] == 20

        await until(queued)
        first_epoch = client._epoch
        ray.kill(actor, no_restart=False)
        await asyncio.sleep(0.5)
        free = 50  # the restarted instance has room
        results = await asyncio.wait_for(asyncio.gather(*pending), 30.0)
        beat.cancel()
        return results, first_epoch or "", client._epoch or "", dict(client.calls)

    results, before, after, calls = asyncio.run(scenario())
    assert all((r.status, r.replica_id) == (AcquireStatus.GRANTED, "r0") for r in results)
    assert before.split(".")[0] != after.split(".")[0]  # a new instance
    assert calls["submit"] >= 2


def test_a_client_that_stops_polling_has_its_outbox_dropped_and_grants_freed(actor: Any):
    async def scenario() -> tuple[dict[str, int], dict[str, int], Any]:
        await actor.report.remote("r0", slots(1))
        t1, t2, t3 = make_ticket(1), make_ticket(2), make_ticket(3)
        # a client that submits, takes the grant it is answered with, then dies (never polls)
        answers = await actor.submit.remote("ghost", [Submission(t, 30.0) for t in (t1, t2, t3)])
        assert answers.results["r1"].status is AcquireStatus.GRANTED
        await actor.release_many.remote([Release("r1", "r0", 5)])  # r2 is granted into the outbox
        held = await sizes(actor)
        await asyncio.sleep(1.0 + 0.6)  # the grace, then the maintenance loop's next round
        dropped = await sizes(actor)
        fresh = await SchedulerClient(actor).acquire(make_ticket(4), 5.0)  # the freed slot is usable
        return held, dropped, fresh

    held, dropped, fresh = asyncio.run(scenario())
    assert held["outboxes"] == 1 and held["outbox_answers"] == 1 and held["routes"] == 1
    assert held["granted"] == 1 and held["core_queued"] == 1
    assert dropped["outboxes"] == dropped["routes"] == dropped["outbox_answers"] == 0
    assert dropped["granted"] == dropped["ledger_granted"] == dropped["core_queued"] == 0
    assert dropped["core_in_flight"] == 0
    assert (fresh.status, fresh.replica_id) == (AcquireStatus.GRANTED, "r0")
