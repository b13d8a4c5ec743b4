"""The shared drift statistics actor: merges replicas' observations, serves snapshots, persists them.

Replicas batch observations into a local `DriftTracker` and send its snapshot here about once a second
(`merge`); a small batch merges exactly as if its observations were fed here afterwards, in timestamp
order (see `driftsched.core.drift` for what merging guarantees in general). Ingresses
read `snapshot` about once a second and estimate from a local copy — no actor call per request.

**Idempotent pushes.** A batch is named by its sender (a replica process) and a sequence number
1, 2, 3, … that the sender assigns once and reuses on every retry; a sender sends batch k + 1 only
after batch k was acknowledged. The actor keeps the last number it applied per sender and ignores
any batch numbered at or below it, so a batch is applied at most once however often a retry (or a
late copy of a timed-out call) arrives. The guarantee holds for the `MAX_SENDERS` senders that pushed
most recently (older ones are forgotten, least recently pushed first). A snapshot carries these last
numbers (`applied`), so it states exactly which batches its statistics contain.

**Survival across restarts** (the actor is a named Ray actor with max_restarts=-1), two layers:

* with `snapshot_path` set, the snapshot is written there (atomically) every `persist_every_s` when
  it changed, and a new instance restores it on start;
* every ingress keeps the last snapshot it read; when it sees a new instance (`boot_id` changed) it
  offers that copy with `seed`. The copy predates this boot, so the first seed becomes the *base
  under* the batches merged since boot: the new statistics are the copy, then the batches of this
  boot that the copy does not already contain (by `applied`). Later seeds of the same boot are
  ignored. Only a sender's first batch of this boot can be in the copy (it may be a retry
  of one the old instance applied; every later batch was made after an acknowledgement from this
  boot), so until the seed arrives the actor keeps each sender's first batch apart and the rest as
  one tracker (memory: that tracker and at most `MAX_SENDERS` batches; a sender first heard after
  that many others goes with the rest, as it almost surely started after this boot).
* An instance restored from disk ignores seeds: the file wins. Its `applied` numbers match its
  statistics exactly (the actor wrote both together), so retries are de-duplicated against it
  exactly; an ingress copy may be older or newer by a few seconds, and the two cannot be combined
  without counting the batches they share twice. At most `persist_every_s` of batches is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from driftsched.core.config import DriftConfig
from driftsched.core.drift import DriftTracker

logger = logging.getLogger(__name__)

MAX_SENDERS = 1024  # last applied batch number per sender, least recently pushed forgotten first


class DriftActor:
    """Thin adapter around one shared `DriftTracker` (see module docstring)."""

    def __init__(
        self, drift_config: dict[str, Any], snapshot_path: str | None = None,
        persist_every_s: float = 5.0,
    ) -> None:
        self._config = DriftConfig.model_validate(drift_config)
        self._path = Path(snapshot_path) if snapshot_path else None
        self._persist_every_s = persist_every_s
        self.boot_id = uuid.uuid4().hex
        self._tracker = DriftTracker(self._config)
        self._applied: OrderedDict[str, int] = OrderedDict()
        restored = self._load()
        # Until the seed: each sender's first batch of this boot, and the later batches merged.
        self._first: dict[str, tuple[int, dict[str, Any]]] | None = None if restored else {}
        self._later: DriftTracker | None = None if restored else DriftTracker(self._config)
        self._dirty = False
        self._merges = 0
        self._persist_task: asyncio.Task[None] | None = None

    def _load(self) -> bool:
        if self._path is None or not self._path.exists():
            return False
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            tracker = DriftTracker.restore(data, self._config)
            applied = _applied_of(data)
        except (OSError, ValueError, KeyError, TypeError):
            logger.exception("cannot restore drift snapshot from %s; starting empty", self._path)
            return False
        self._tracker, self._applied = tracker, OrderedDict(applied)
        logger.info("restored drift statistics from %s", self._path)
        return True

    async def merge(self, sender: str, seq: int, snapshot: dict[str, Any]) -> bool:
        """Fold a replica's batch `seq` in; False when it was applied before (a retry: ignored)."""
        self._ensure_persisting()
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

    async def snapshot(self) -> tuple[str, int, dict[str, Any]]:
        """(boot id, changes since boot, statistics): the tracker's snapshot plus `applied`."""
        self._ensure_persisting()
        return self.boot_id, self._merges, self._state()

    async def seed(self, snapshot: dict[str, Any]) -> bool:
        """Lay an ingress's pre-boot copy under this boot's batches; False (ignored) after the first."""
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

    def _record(self, sender: str, seq: int) -> None:
        self._applied[sender] = seq
        self._applied.move_to_end(sender)
        while len(self._applied) > MAX_SENDERS:
            self._applied.popitem(last=False)

    def _state(self) -> dict[str, Any]:
        return {**self._tracker.snapshot(), "applied": dict(self._applied)}

    def _ensure_persisting(self) -> None:
        if self._path is not None and (self._persist_task is None or self._persist_task.done()):
            self._persist_task = asyncio.get_running_loop().create_task(self._persist_loop())

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(self._persist_every_s)
            if not self._dirty or self._path is None:
                continue
            try:
                self._dirty = False
                self._path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._state()), encoding="utf-8")
                os.replace(tmp, self._path)
            except OSError:
                self._dirty = True
                logger.exception("cannot persist drift statistics to %s; will retry", self._path)


def _applied_of(snapshot: dict[str, Any]) -> dict[str, int]:
    """The last applied batch number per sender that a snapshot carries ({} for older snapshots)."""
    applied = snapshot.get("applied", {})
    if not isinstance(applied, dict):
        raise TypeError(f"a drift snapshot's `applied` must map senders to numbers, not {applied!r}")
    return {str(sender): int(seq) for sender, seq in applied.items()}
