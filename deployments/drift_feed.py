"""The scheduler actor's side of drift feedback: finished requests' observations, batched to the drift actor.

When an ingress releases a finished request, the scheduler actor still holds its ticket (tenant,
category, prompt bucket, raw and corrected estimate) and the release carries the observed output
length: one observation, made where both halves already are. `DriftFeed` folds observations into a
local `DriftTracker` batch and sends the batch's snapshot to the drift statistics actor every
`push_s` (`DriftActor.merge`: one call per batch, never per request).

Batches are numbered 1, 2, 3, ... under one sender name per feed (the scheduler actor names it after
its epoch, so a restarted scheduler starts a new sequence) and sent one at a time: a batch whose push
failed or timed out is sent again under the same number until the drift actor acknowledges it (applied
now, or before), and only then is the next one sealed. So none is counted twice, and a retry costs
nothing but the call. Memory stays bounded however long the drift actor is away: the unacknowledged
batch plus the one filling, each a `DriftTracker`, which keeps at most `shift_window` observations per
statistics node.

Plain asyncio, no Ray: the sink is anything with the drift actor's ``merge`` (in the app, a
`deployments.actors.DriftActorLink`; in tests, a `DriftActor` driven in-process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from driftsched.core.config import DriftConfig
from driftsched.core.drift import DriftTracker
from driftsched.core.request import Ticket

logger = logging.getLogger(__name__)

DRIFT_PUSH_S = 1.0
"""How often the scheduler actor sends its batch of observations to the drift actor."""
PUSH_TIMEOUT_S = 10.0


class DriftSink(Protocol):
    """Where batches go: the drift statistics actor's ``merge``."""

    async def merge(self, sender: str, seq: int, snapshot: dict[str, object]) -> bool:
        """Apply batch `seq` of `sender`; False if it had been applied before."""


@dataclass(slots=True, frozen=True)
class _Sealed:
    """A batch under its number, kept until the drift actor acknowledges it."""

    seq: int
    snapshot: dict[str, object]
    size: int


class DriftFeed:
    """Batches observations and sends them, numbered and one at a time (see module docstring)."""

    def __init__(self, config: DriftConfig, sender: str, *, push_s: float = DRIFT_PUSH_S,
                 timeout_s: float = PUSH_TIMEOUT_S, wall_clock: Callable[[], float] = time.time) -> None:
        self.sender = sender
        self.push_s, self.timeout_s = push_s, timeout_s
        self._config = config
        self._wall_clock = wall_clock  # drift statistics decay on wall time, as the ingresses read them
        self._batch = DriftTracker(config)
        self._filling = 0
        self._seq = 0
        self._unacked: _Sealed | None = None
        self.sent = 0
        """Observations acknowledged by the drift actor so far."""

    @property
    def pending(self) -> int:
        """Observations not yet acknowledged (sealed or filling)."""
        return self._filling + (self._unacked.size if self._unacked is not None else 0)

    def observe(self, ticket: Ticket, output_tokens: int) -> None:
        """A request of `ticket` finished with `output_tokens` in all (earlier preempted runs included)."""
        self._batch.observe(ticket.tenant, ticket.category, ticket.bucket, ticket.raw_estimate,
                            ticket.corrected_estimate, float(output_tokens), self._wall_clock())
        self._filling += 1

    async def push(self, sink: DriftSink) -> None:
        """Send the unacknowledged batch, or seal the filling one under the next number and send it.

        Raises what the call raised (the batch stays unacknowledged, to be sent again as it is)."""
        if self._unacked is None:
            if self._filling == 0:
                return
            self._seq += 1
            self._unacked = _Sealed(self._seq, self._batch.snapshot(), self._filling)
            self._batch, self._filling = DriftTracker(self._config), 0
        batch = self._unacked
        applied = await asyncio.wait_for(sink.merge(self.sender, batch.seq, batch.snapshot), self.timeout_s)
        if not applied:
            logger.info("drift batch %d had already been applied; not counted twice", batch.seq)
        self._unacked = None
        self.sent += batch.size

    async def run(self, sink: DriftSink) -> None:
        """Push every `push_s` for ever; a failed push is logged and retried (never ends the loop)."""
        while True:
            await asyncio.sleep(self.push_s)
            try:
                await self.push(sink)
            except Exception as exc:  # the batch stays unacknowledged and is re-sent as it is
                logger.warning("drift push failed (%s: %s); will re-send batch %d", type(exc).__name__,
                               exc, self._seq)
