"""The shared drift statistics actor: merges replicas' observations, serves snapshots, persists them.

Replicas batch observations into a local `DriftTracker` and send its snapshot here about once a second
(`merge`); a small batch merges exactly as if its observations were fed here afterwards, in timestamp
order (see `driftsched.core.drift` for what merging guarantees in general). Ingresses
read `snapshot` about once a second and estimate from a local copy — no actor call per request.

Survival across restarts (the actor is a named Ray actor with max_restarts=-1), two layers:

* with `snapshot_path` set, the statistics are written there (atomically) every `persist_every_s`
  when they changed, and a new instance restores them on start;
* every ingress keeps the last snapshot it read; when it sees a new, empty instance (`boot_id`
  changed, nothing restored) it re-seeds it with `seed`, which only applies to an empty tracker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from driftsched.core.config import DriftConfig
from driftsched.core.drift import DriftTracker

logger = logging.getLogger(__name__)


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
        self._tracker = self._load() or DriftTracker(self._config)
        self._dirty = False
        self._merges = 0
        self._persist_task: asyncio.Task[None] | None = None

    def _load(self) -> DriftTracker | None:
        if self._path is None or not self._path.exists():
            return None
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            tracker = DriftTracker.restore(data, self._config)
        except (OSError, ValueError, KeyError, TypeError):
            logger.exception("cannot restore drift snapshot from %s; starting empty", self._path)
            return None
        logger.info("restored drift statistics from %s", self._path)
        return tracker

    async def merge(self, snapshot: dict[str, Any]) -> None:
        """Fold a replica's batch of observations in."""
        self._ensure_persisting()
        self._tracker.merge(DriftTracker.restore(snapshot, self._config))
        self._dirty = True
        self._merges += 1

    async def snapshot(self) -> tuple[str, int, dict[str, Any]]:
        """(boot id, merges since boot, statistics) for ingresses' local copies."""
        self._ensure_persisting()
        return self.boot_id, self._merges, self._tracker.snapshot()

    async def seed(self, snapshot: dict[str, Any]) -> bool:
        """Re-seed an empty tracker from an ingress's copy; False (ignored) if it holds data."""
        if self._tracker.totals().count > 0:
            return False
        self._tracker.merge(DriftTracker.restore(snapshot, self._config))
        self._dirty = True
        logger.info("drift statistics re-seeded from an ingress copy")
        return True

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
                tmp.write_text(json.dumps(self._tracker.snapshot()), encoding="utf-8")
                os.replace(tmp, self._path)
            except OSError:
                self._dirty = True
                logger.exception("cannot persist drift statistics to %s; will retry", self._path)
