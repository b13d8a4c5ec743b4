"""The scheduler actor's class, driven directly (no Ray): idempotent acquire, grants and releases."""

from __future__ import annotations

import asyncio

from factories import make_ticket

from deployments.scheduler_actor import AcquireStatus, SchedulerActor
from driftsched.core.placement import Capacity
from driftsched.core.request import RejectReason

CONFIG = {"tenants": [{"name": "a"}], "scheduler": {"policy": "fifo"}}


def test_a_retried_acquire_joins_the_first_and_gets_the_same_grant():
    async def scenario():
        actor = SchedulerActor(CONFIG)
        await actor.report("r0", Capacity(1, 1, 10_000, (), 10_000))
        blocker = await actor.acquire(make_ticket(1), 5.0)
        first = asyncio.create_task(actor.acquire(make_ticket(2), 5.0))
        await asyncio.sleep(0.05)
        retry = asyncio.create_task(actor.acquire(make_ticket(2), 5.0))  # same request id
        await asyncio.sleep(0.05)
        await actor.release("r1", blocker.replica_id, 10)
        a, b = await asyncio.gather(first, retry)
        again = await actor.acquire(make_ticket(2), 5.0)  # after the grant: the grant again
        view = await actor.view()
        return blocker, a, b, again, view

    blocker, a, b, again, view = asyncio.run(scenario())
    assert blocker.status is AcquireStatus.GRANTED
    assert (a.status, a.replica_id) == (AcquireStatus.GRANTED, "r0") == (b.status, b.replica_id)
    assert (again.status, again.replica_id) == (AcquireStatus.GRANTED, "r0")
    assert view.stats.counters["a"].admitted == 2  # the retry admitted nothing twice


def test_every_way_a_wait_ends_is_a_typed_outcome():
    async def scenario():
        actor = SchedulerActor(CONFIG)
        expired = await actor.acquire(make_ticket(1), 0.05)  # no replica has reported: nothing to grant
        waiting = asyncio.create_task(actor.acquire(make_ticket(2), 5.0))
        await asyncio.sleep(0.05)
        await actor.cancel("r2")
        cancelled = await waiting
        rejected = await actor.acquire(make_ticket(3, tenant="nobody"), 5.0)
        resumed = await actor.resume(make_ticket(4, tenant="nobody"), "r0", 3, 5.0)  # cannot resume
        return expired, cancelled, rejected, resumed

    expired, cancelled, rejected, resumed = asyncio.run(scenario())
    assert (expired.status, expired.replica_id) == (AcquireStatus.EXPIRED, None)
    assert (cancelled.status, cancelled.replica_id) == (AcquireStatus.CANCELLED, None)
    assert (rejected.status, rejected.reason) == (AcquireStatus.REJECTED, RejectReason.UNKNOWN_TENANT)
    assert isinstance(rejected.reason, RejectReason)
    assert (resumed.status, resumed.reason) == (AcquireStatus.REJECTED, RejectReason.INVALID)
