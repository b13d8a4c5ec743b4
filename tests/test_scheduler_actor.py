"""The scheduler actor's class, driven directly (no Ray): idempotent submits, every way a wait ends, and
the drift feedback its releases carry to a real `DriftActor` (in-process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from factories import make_ticket

from deployments.drift_actor import DriftActor
from deployments.scheduler_actor import AcquireStatus, Release, Resumption, SchedulerActor, Submission
from deployments.telemetry import Outcome, RequestTimings
from driftsched.core.drift import DriftTracker
from driftsched.core.placement import Capacity
from driftsched.core.request import RejectReason

CONFIG = {"tenants": [{"name": "a"}], "scheduler": {"policy": "fifo"}}
ONE_SLOT = Capacity(1, 1, 10_000, (), 10_000)


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_submit_sent_again_admits_nothing_twice_and_gets_the_same_grant():
    async def scenario() -> tuple[Any, ...]:
        actor = SchedulerActor(CONFIG)
        await actor.report("r0", ONE_SLOT)
        first = await actor.submit("c", [Submission(make_ticket(1), 5.0), Submission(make_ticket(2), 5.0)])
        again = await actor.submit("c", [Submission(make_ticket(2), 5.0)])  # still waiting: nothing new
        await actor.release_many([Release("r1", "r0", 10)])
        polled = await actor.poll("c", 1.0)
        after = await actor.submit("c", [Submission(make_ticket(2), 5.0)])  # after the grant: it again
        return first, again, polled, after, await actor.view()

    first, again, polled, after, view = asyncio.run(scenario())
    assert set(first.results) == {"r1"} and first.results["r1"].status is AcquireStatus.GRANTED
    assert again.results == {} and again.epoch == first.epoch
    assert (polled.results["r2"].status, polled.results["r2"].replica_id) == (AcquireStatus.GRANTED, "r0")
    assert (after.results["r2"].status, after.results["r2"].replica_id) == (AcquireStatus.GRANTED, "r0")
    assert view.stats.counters["a"].admitted == 2  # the re-submits admitted nothing twice


def test_every_way_a_wait_ends_is_a_typed_outcome():
    async def scenario() -> tuple[Any, ...]:
        actor = SchedulerActor(CONFIG)
        await actor.submit("c", [Submission(make_ticket(1), 0.05)])  # no replica: nothing to grant
        expired = (await actor.poll("c", 2.0)).results["r1"]  # the maintenance loop expires it
        await actor.submit("c", [Submission(make_ticket(2), 5.0)])
        await actor.cancel("r2")
        cancelled = (await actor.poll("c", 1.0)).results["r2"]
        rejected = (await actor.submit("c", [Submission(make_ticket(3, tenant="nobody"), 5.0)])).results["r3"]
        stopped = Resumption("r0", 1, 3)
        resumed = (await actor.submit("c", [Submission(make_ticket(4, tenant="nobody"), 5.0, stopped)])
                   ).results["r4"]  # cannot resume
        return expired, cancelled, rejected, resumed

    expired, cancelled, rejected, resumed = asyncio.run(scenario())
    assert (expired.status, expired.replica_id) == (AcquireStatus.EXPIRED, None)
    assert (cancelled.status, cancelled.replica_id) == (AcquireStatus.CANCELLED, None)
    assert (rejected.status, rejected.reason) == (AcquireStatus.REJECTED, RejectReason.UNKNOWN_TENANT)
    assert isinstance(rejected.reason, RejectReason)
    assert (resumed.status, resumed.reason) == (AcquireStatus.REJECTED, RejectReason.INVALID)


class LossyLink:
    """The drift actor behind a link whose first `lose` replies are lost after the batch was applied
    (a timeout on the caller's side): what a retry must not count twice."""

    def __init__(self, actor: DriftActor, lose: int) -> None:
        self.actor, self.lose = actor, lose
        self.calls: list[tuple[str, int, bool]] = []

    async def merge(self, sender: str, seq: int, snapshot: dict[str, Any]) -> bool:
        applied = await self.actor.merge(sender, seq, snapshot)
        self.calls.append((sender, seq, applied))
        if self.lose:
            self.lose -= 1
            raise TimeoutError("the reply was lost")
        return applied


def test_releases_feed_observations_to_the_drift_actor_in_numbered_batches_counted_once():
    drift = DriftActor({"half_life_s": 600.0})
    link = LossyLink(drift, lose=1)

    async def scenario() -> tuple[dict[str, Any], dict[str, int]]:
        actor = SchedulerActor(CONFIG, drift=link, drift_push_s=0.02)
        await actor.report("r0", Capacity(8, 8, 100_000, (), 100_000))
        tickets = [make_ticket(i, estimate=100.0) for i in range(1, 7)]
        answers = await actor.submit("c", [Submission(t, 5.0) for t in tickets])
        assert all(a.status is AcquireStatus.GRANTED for a in answers.results.values())
        timings = RequestTimings("a", outcome=Outcome.OK, output_tokens=250)
        await actor.release_many([Release(f"r{i}", "r0", 250, timings) for i in range(1, 5)])
        await actor.release_many([Release("r5", "r0", None), Release("r6", "r0", None),  # aborted
                                  Release("r99", "r0", 40)])  # granted by an earlier instance

        async def acknowledged() -> bool:
            return (await actor.table_sizes())["drift_pending"] == 0 and len(link.calls) >= 2

        await until(acknowledged)
        return (await drift.snapshot()).state, await actor.table_sizes()

    state, sizes = asyncio.run(scenario())
    sender = link.calls[0][0]
    assert sender.startswith("scheduler:")
    assert link.calls[:2] == [(sender, 1, True), (sender, 1, False)]  # re-sent under its number, once
    assert state["applied"] == {sender: 1}
    tracker = DriftTracker.restore(state)
    assert tracker.totals().count == 4  # the finished ones; aborted and unknown ones teach nothing
    (row,) = [r for r in tracker.stats() if (r.tenant, r.category) == ("a", "chat")]
    assert row.count == 4 and row.mean_drift_raw == 150.0  # observed 250 against the estimate 100
    assert sizes["core_in_flight"] == 0


@pytest.mark.parametrize(("rule", "second_goes_to"), [("driftsched", "cached"), ("most-free-kv", "roomier")])
def test_the_actor_places_by_the_configured_rule(rule, second_goes_to):
    """The live placement is the configured one: a second request with the first one's prefix goes
    back to the replica holding it under `driftsched`, to the one with more free KV under `most-free-kv`."""
    config = {**CONFIG, "scheduler": {"policy": "fifo", "placement": {"rule": rule}}}
    blocks = (11, 12, 13, 14)  # 4 x 256 tokens of prefix

    def ticket(seq: int) -> Any:
        t = make_ticket(seq, prompt_tokens=1100)
        t.prefix_blocks = blocks
        return t

    async def scenario() -> tuple[str, str]:
        actor = SchedulerActor(config)
        for replica in ("x", "y"):
            await actor.report(replica, Capacity(4, 4, 100_000, (), 100_000))
        first = (await actor.submit("c", [Submission(ticket(1), 5.0)])).results["r1"].replica_id
        assert first is not None
        await actor.release_many([Release("r1", first, 20)])
        other = "y" if first == "x" else "x"
        await actor.report(first, Capacity(4, 4, 90_000, (), 100_000))  # now the fuller one
        await actor.report(other, Capacity(4, 4, 100_000, (), 100_000))
        second = (await actor.submit("c", [Submission(ticket(2), 5.0)])).results["r2"].replica_id
        return first, second

    first, second = asyncio.run(scenario())
    assert second == (first if second_goes_to == "cached" else ("y" if first == "x" else "x"))
