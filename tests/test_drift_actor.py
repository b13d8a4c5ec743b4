"""The drift actor's class, driven directly in asyncio (no Ray), plus one restart through Ray.

Pushes are idempotent per (sender, batch number); a seed after a restart goes under the batches of the
new boot and never counts a batch twice; the snapshot file round-trips and wins over seeds; a corrupt
file starts the actor empty, and so does a store that stays unreachable (after a few tries). The Redis
store is tested on a real Redis in tests/test_snapshot_store.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from deployments.drift_actor import RESTORE_TRIES, DriftActor
from driftsched.core.config import DriftConfig
from driftsched.core.drift import DriftTracker

DRIFT = {"half_life_s": 600.0, "shift_window": 32}
CONFIG = DriftConfig.model_validate(DRIFT)
T0 = 1_000_000.0

Observation = tuple[str, str, int, float, float, float, float]


def observations(n: int, start: int = 0, tenant: str = "a", ratio: float = 2.0) -> list[Observation]:
    """n finished requests one second apart: estimate 100, observed `ratio` times that."""
    return [(tenant, "qa", 0, 100.0, 100.0, 100.0 * ratio + i % 3, T0 + start + i) for i in range(n)]


def batch(obs: list[Observation]) -> dict[str, Any]:
    """A replica's batch snapshot of these observations."""
    tracker = DriftTracker(CONFIG)
    for o in obs:
        tracker.observe(*o)
    return tracker.snapshot()


def count(state: dict[str, Any]) -> int:
    return DriftTracker.restore(state, CONFIG).totals().count


async def state_of(actor: DriftActor) -> dict[str, Any]:
    return (await actor.snapshot()).state


def reference(obs: list[Observation]) -> DriftTracker:
    """Every observation fed once, in timestamp order: what the shared statistics should equal."""
    tracker = DriftTracker(CONFIG)
    for o in sorted(obs, key=lambda o: o[-1]):
        tracker.observe(*o)
    return tracker


def assert_same_factors(state: dict[str, Any], expected: DriftTracker) -> None:
    got = DriftTracker.restore(state, CONFIG)
    for tenant in ("a", "b"):
        now = T0 + 200
        assert got.factor(tenant, "qa", 0, now) == pytest.approx(expected.factor(tenant, "qa", 0, now))
    assert got.totals().count == expected.totals().count


# ---------------------------------------------------------------- idempotent pushes


def test_a_retried_batch_is_applied_once_and_reported_as_a_duplicate():
    async def scenario() -> tuple[list[bool], dict[str, Any]]:
        actor = DriftActor(DRIFT)
        first, second = batch(observations(3)), batch(observations(2, start=3))
        answers = [
            await actor.merge("r1:x", 1, first),
            await actor.merge("r1:x", 1, first),  # retry after a timeout that had been applied
            await actor.merge("r1:x", 2, second),
            await actor.merge("r1:x", 1, first),  # a late copy of the timed-out call
            await actor.merge("r2:y", 1, first),  # another sender's batch 1 is its own
        ]
        return answers, await state_of(actor)

    answers, state = asyncio.run(scenario())
    assert answers == [True, False, True, False, True]
    assert count(state) == 3 + 2 + 3
    assert state["applied"] == {"r1:x": 2, "r2:y": 1}


# ---------------------------------------------------------------- re-seeding after a restart


def test_seed_goes_under_the_batches_of_the_new_boot_and_later_seeds_are_ignored():
    before, after_a, after_b = observations(40), observations(5, start=40), observations(4, 45, "b")

    async def scenario() -> tuple[list[bool], dict[str, Any], dict[str, Any]]:
        old = DriftActor(DRIFT)
        await old.merge("r1:x", 1, batch(before))
        copy = await state_of(old)  # what an ingress held when the old instance died

        new = DriftActor(DRIFT)
        await new.merge("r1:x", 2, batch(after_a))
        await new.merge("r2:y", 1, batch(after_b))
        seeded = [await new.seed(copy), await new.seed(copy), await new.seed(batch(before))]
        again = await new.merge("r1:x", 2, batch(after_a))  # a retry after the seed
        return [*seeded, again], copy, await state_of(new)

    answers, copy, state = asyncio.run(scenario())
    assert answers == [True, False, False, False]
    assert count(copy) == 40
    assert count(state) == 40 + 5 + 4  # nothing the new boot learned was wiped, nothing doubled
    assert_same_factors(state, reference(before + after_a + after_b))
    assert state["applied"] == {"r1:x": 2, "r2:y": 1}


def test_a_batch_resent_across_the_restart_is_not_counted_twice_by_the_seed():
    applied_before, unacked, later = observations(30), observations(6, 30), observations(3, 36)

    async def scenario() -> dict[str, Any]:
        old = DriftActor(DRIFT)
        await old.merge("r1:x", 1, batch(applied_before))
        await old.merge("r1:x", 2, batch(unacked))  # applied, but the answer was lost in the crash
        copy = await state_of(old)
        new = DriftActor(DRIFT)
        assert await new.merge("r1:x", 2, batch(unacked))  # the retry: new to this instance
        assert await new.merge("r1:x", 3, batch(later))
        assert await new.merge("r2:y", 1, batch(observations(2, 39, "b")))
        assert await new.seed(copy)
        return await state_of(new)

    state = asyncio.run(scenario())
    assert count(state) == 30 + 6 + 3 + 2
    assert_same_factors(state, reference(applied_before + unacked + later + observations(2, 39, "b")))


def test_a_seed_brings_the_snapshot_version_forward_so_every_ingress_refreshes():
    async def scenario() -> tuple[int, int]:
        actor = DriftActor(DRIFT)
        await actor.merge("r1:x", 1, batch(observations(2)))
        changes_before = (await actor.snapshot()).changes
        await actor.seed(batch(observations(5, start=-10)))
        return changes_before, (await actor.snapshot()).changes

    before, after = asyncio.run(scenario())
    assert after > before


# ---------------------------------------------------------------- persistence


def test_snapshot_file_round_trips_and_wins_over_seeds(tmp_path: Path):
    path = tmp_path / "state" / "drift.json"
    obs = observations(20)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[bool], int]:
        first = DriftActor(DRIFT, str(path), persist_every_s=0.02)
        await first.merge("r1:x", 1, batch(obs))
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        saved = await state_of(first)

        restarted = DriftActor(DRIFT, str(path))
        restored = await state_of(restarted)
        answers = [
            await restarted.seed(batch(observations(50, start=-100))),  # the file wins
            await restarted.merge("r1:x", 1, batch(obs)),  # a retry is known from the file
            await restarted.merge("r1:x", 2, batch(observations(1, start=20))),
        ]
        return saved, restored, answers, count(await state_of(restarted))

    saved, restored, answers, final = asyncio.run(scenario())
    assert restored == saved
    assert json.loads(path.read_text()) == saved
    assert answers == [False, False, True]
    assert final == 21


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 1, "nodes": [], "errors": []}',
        '{"version": 5, "nodes": [], "errors": [], "applied": [1]}',
    ],
)
def test_a_corrupt_snapshot_file_starts_empty_with_a_log(tmp_path: Path, text: str, caplog: Any):
    path = tmp_path / "drift.json"
    path.write_text(text)

    async def scenario() -> tuple[int, bool]:
        actor = DriftActor(DRIFT, str(path), persist_every_s=60)
        empty = count(await state_of(actor))
        return empty, await actor.seed(batch(observations(4)))  # an empty boot takes a seed

    with caplog.at_level(logging.ERROR, logger="deployments.drift_actor"):
        empty, seeded = asyncio.run(scenario())
    assert empty == 0 and seeded
    assert any("cannot restore drift snapshot" in r.getMessage() for r in caplog.records)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_store_is_tried_a_few_times_then_the_actor_starts_empty_and_takes_a_seed(
    caplog: Any,
):
    location = f"redis://127.0.0.1:{closed_port()}/driftsched:drift"  # connection refused

    async def scenario() -> tuple[list[bool], int]:
        actor = DriftActor(DRIFT, location, persist_every_s=60, restore_retry_s=0.01)
        answers = await asyncio.gather(  # calls that arrive during the restore all wait for it
            actor.merge("s:1", 1, batch(observations(2))), actor.seed(batch(observations(30, start=-40))))
        return list(answers), count(await state_of(actor))

    with caplog.at_level(logging.WARNING, logger="deployments.drift_actor"):
        answers, total = asyncio.run(scenario())
    assert answers == [True, True] and total == 32  # the seed went under the batch of this boot
    messages = [r.getMessage() for r in caplog.records]
    assert sum("retrying" in m for m in messages) == RESTORE_TRIES - 1
    assert sum("starting empty" in m for m in messages) == 1


# ---------------------------------------------------------------- through Ray


@pytest.mark.slow
def test_statistics_survive_a_ray_restart_of_the_actor(serve_cluster: Any):
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    from deployments.actors import drift_actor

    actor = drift_actor(f"test.drift.{time.monotonic_ns()}", DRIFT, None)
    assert ray.get(actor.merge.remote("r1:x", 1, batch(observations(10))))
    first = ray.get(actor.snapshot.remote())
    boot, copy = first.boot_id, first.state
    ray.kill(actor, no_restart=False)
    new_boot, deadline = boot, time.monotonic() + 30
    while new_boot == boot and time.monotonic() < deadline:  # the same handle, a new instance
        try:
            new_boot = ray.get(actor.snapshot.remote(), timeout=5).boot_id
        except (RayActorError, GetTimeoutError):
            time.sleep(0.2)
    assert new_boot != boot
    assert ray.get(actor.merge.remote("r1:x", 2, batch(observations(3, start=10))))
    assert ray.get(actor.seed.remote(copy))  # what an ingress does when it sees the new boot
    assert count(ray.get(actor.snapshot.remote()).state) == 13
    ray.kill(actor, no_restart=True)
