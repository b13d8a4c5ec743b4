"""The shared drift statistics actor: merges batches of observations, serves snapshots, persists them.

The scheduler actor hears each finished request's observed output length where it releases the
request's slot; it batches those observations in a local `DriftTracker` and sends the batch's snapshot
here about once a second (`merge`: one actor call per batch, not per request). A small batch merges
exactly as if its observations were fed here afterwards, in timestamp order (see
`driftsched.core.drift` for what merging guarantees in general). Ingresses read `snapshot` about once
a second and estimate from a local copy: no actor call per request.

**Idempotent pushes.** A batch is named by its sender (one scheduler actor instance) and a sequence
number 1, 2, 3, ... that the sender assigns once and reuses on every retry; a sender sends batch k + 1
only after batch k was acknowledged. The actor keeps the last number it applied per sender and ignores
any batch numbered at or below it, so a batch is applied at most once however often a retry (or a
late copy of a timed-out call) arrives. The guarantee holds for the `MAX_SENDERS` senders that pushed
most recently (older ones are forgotten, least recently pushed first). A snapshot carries these last
numbers (`applied`), so it states exactly which batches its statistics contain.

**Survival across restarts** (the actor is a named Ray actor with max_restarts=-1), two layers:

* with a snapshot location set (`deployments.snapshot_store`: a file, or a key in Redis), the
  snapshot is written there every `persist_every_s` when it changed, and a new instance restores it
  before it answers its first call (an unreachable store is tried `RESTORE_TRIES` times);
* every ingress keeps the last snapshot it read; when it sees a new instance (`boot_id` changed) it
  offers that copy with `seed`. The copy predates this boot, so the first seed becomes the *base
  under* the batches merged since boot: the new statistics are the copy, then the batches of this
  boot that the copy does not already contain (by `applied`). Later seeds of the same boot are
  ignored. Only a sender's first batch of this boot can be in the copy (it may be a retry
  of one the old instance applied; every later batch was made after an acknowledgement from this
  boot), so until the seed arrives the actor keeps each sender's first batch apart and the rest as
  one tracker (memory: that tracker and at most `MAX_SENDERS` batches; a sender first heard after
  that many others goes with the rest, as it almost surely started after this boot).
* An instance restored from the store ignores seeds: the store wins. Its `applied` numbers match its
  statistics exactly (the actor wrote both together), so retries are de-duplicated against it
  exactly; an ingress copy may be older or newer by a few seconds, and the two cannot be combined
  without counting the batches they share twice. At most `persist_every_s` of batches is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from deployments.snapshot_store import SnapshotStore, open_snapshot_store
from driftsched.core.config import DriftConfig
from driftsched.core.drift import DriftTracker

logger = logging.getLogger(__name__)

MAX_SENDERS = 1024  # last applied batch number per sender, least recently pushed forgotten first
RESTORE_TRIES = 3  # reads of an unreachable store before a new instance starts without it
RESTORE_RETRY_S = 1.0
SAVE_TIMEOUT_S = 10.0


@dataclass(slots=True, frozen=True)
class DriftSnapshot:
    """What `DriftActor.snapshot` answers."""

    boot_id: str
    """Names this instance: a new one means the actor restarted (an ingress then offers its copy)."""
    changes: int
    """Merges and seeds since this boot: a reader refreshes its copy when (boot_id, changes) moves."""
    state: dict[str, object]
    """The statistics (`DriftTracker.snapshot`) plus `applied`, the last batch applied per sender."""


class DriftActor:
    """Thin adapter around one shared `DriftTracker` (see module docstring)."""

    def __init__(
        self, drift_config: dict[str, object], snapshot_path: str | None = None,
        persist_every_s: float = 5.0, restore_retry_s: float = RESTORE_RETRY_S,
    ) -> None:
        """`snapshot_path`: where the snapshot is kept (`deployments.snapshot_store`), None for
        nowhere."""
        self._config = DriftConfig.model_validate(drift_config)
        self._store: SnapshotStore | None = open_snapshot_store(snapshot_path) if snapshot_path else None
        self._persist_every_s = persist_every_s
        self._restore_retry_s = restore_retry_s
        self.boot_id = uuid.uuid4().hex
        self._tracker = DriftTracker(self._config)
        self._applied: OrderedDict[str, int] = OrderedDict()
        # Until the seed: each sender's first batch of this boot, and the later batches merged.
        self._first: dict[str, tuple[int, dict[str, object]]] | None = {}
        self._later: DriftTracker | None = DriftTracker(self._config)
        self._dirty = False
        self._merges = 0
        self._restoring: asyncio.Task[None] | None = None
        self._persist_task: asyncio.Task[None] | None = None

    # -- calls -----------------------------------------------------------------------------------

    async def merge(self, sender: str, seq: int, snapshot: dict[str, object]) -> bool:
        """Fold `sender`'s batch `seq` in; False when it was applied before (a retry: ignored)."""
        await self._ready()
        if seq <= self._applied.get(sender, 0):
            return False
        batch = DriftTracker.restore(snapshot, self._config)
        self._tracker.merge(batch)
        self._record(sender, seq)
        if self._first is not None and self._later is not None:
            if sender in self._first or len(self._first) >= MAX_SENDERS:
                self._later.merge(batch)
            else:
                self._first[sender] = (seq, snapshot)
        self._dirty = True
        self._merges += 1
        return True

    async def snapshot(self) -> DriftSnapshot:
        """This boot, its changes so far, and the statistics with `applied`."""
        await self._ready()
        return DriftSnapshot(self.boot_id, self._merges, self._state())

    async def seed(self, snapshot: dict[str, object]) -> bool:
        """Lay an ingress's pre-boot copy under this boot's batches; False (ignored) after the first,
        and on an instance restored from the store."""
        await self._ready()
        if self._first is None or self._later is None:
            return False
        base = DriftTracker.restore(snapshot, self._config)
        base_applied = _applied_of(snapshot)
        for sender, (seq, batch) in self._first.items():
            if seq > base_applied.get(sender, 0):  # else the copy holds it: a retry across the restart
                base.merge(DriftTracker.restore(batch, self._config))
        base.merge(self._later)
        self._tracker, self._first, self._later = base, None, None
        for sender, seq in base_applied.items():
            if seq > self._applied.get(sender, 0):
                self._record(sender, seq)
        self._dirty = True
        self._merges += 1
        logger.info("drift statistics re-seeded from an ingress copy")
        return True

    # -- restore and persist ---------------------------------------------------------------------

    async def _ready(self) -> None:
        """Restore from the store once, before the first call is answered; keep the persist loop up."""
        if self._restoring is None:
            self._restoring = asyncio.get_running_loop().create_task(self._restore())
        await asyncio.shield(self._restoring)
        if self._store is not None and (self._persist_task is None or self._persist_task.done()):
            self._persist_task = asyncio.get_running_loop().create_task(self._persist_loop())

    async def _restore(self) -> None:
        store = self._store
        if store is None:
            return
        text = None
        for attempt in range(1, RESTORE_TRIES + 1):
            try:
                text = await store.load()
                break
            except OSError as exc:  # unreachable (Redis restarting, say): a few tries, then go without
                if attempt == RESTORE_TRIES:
                    logger.error("cannot read the drift snapshot at %s (%s); starting empty",
                                 store.where, exc)
                    return
                logger.warning("cannot read the drift snapshot at %s (%s); retrying", store.where, exc)
                await asyncio.sleep(self._restore_retry_s)
        if text is None:
            return
        try:
            data = json.loads(text)
            tracker = DriftTracker.restore(data, self._config)
            applied = _applied_of(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.exception("cannot restore drift snapshot from %s; starting empty", store.where)
            return
        self._tracker, self._applied = tracker, OrderedDict(applied)
        self._first = self._later = None  # the store wins over ingress copies
        logger.info("restored drift statistics from %s", store.where)

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(self._persist_every_s)
            if not self._dirty or self._store is None:
                continue
            self._dirty = False
            try:
                await asyncio.wait_for(self._store.save(json.dumps(self._state())), SAVE_TIMEOUT_S)
            except Exception:  # a background loop never dies silently: log, and write again next time
                self._dirty = True
                logger.exception("cannot persist drift statistics to %s; will retry", self._store.where)

    # -- internals -------------------------------------------------------------------------------

    def _record(self, sender: str, seq: int) -> None:
        self._applied[sender] = seq
        self._applied.move_to_end(sender)
        while len(self._applied) > MAX_SENDERS:
            self._applied.popitem(last=False)

    def _state(self) -> dict[str, object]:
        return {**self._tracker.snapshot(), "applied": dict(self._applied)}


def _applied_of(snapshot: dict[str, object]) -> dict[str, int]:
    """The last applied batch number per sender that a snapshot carries ({} for older snapshots)."""
    applied = snapshot.get("applied", {})
    if not isinstance(applied, dict):
        raise TypeError(f"a drift snapshot's `applied` must map senders to numbers, not {applied!r}")
    return {str(sender): int(seq) for sender, seq in applied.items()}
