"""A sequence inside a simulated engine, its progress counters, and what one engine step reports.

A decoding sequence's counters are lazy: while it decodes, ``generated`` and ``computed`` are its values
when it started decoding plus the ticks its engine's ``DecodeClock`` has run since (see
``driftsched.sim.engine``), so that a step need not touch every sequence in the batch.

``blocks`` are the prompt's chained prefix-block hashes (`driftsched.core.prefix`), in the engine's
``block_tokens``; an engine without prefix caching ignores them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


class DecodeClock:
    """Count of decode steps one engine has run; lazy decoders read their progress from it."""

    __slots__ = ("ticks",)

    def __init__(self) -> None:
        self.ticks = 0


class EngineSequence:
    """One request inside the engine: prompt, true output length, and progress so far."""

    __slots__ = (
        "_admitted",
        "_clock",
        "_computed",
        "_entry",
        "_generated",
        "_order",
        "_pinned",
        "_since",
        "blocks",
        "cached_tokens",
        "output_tokens",
        "prompt_tokens",
        "request_id",
    )

    def __init__(
        self, request_id: Hashable, prompt_tokens: int, output_tokens: int, blocks: tuple[int, ...] = ()
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.blocks = blocks
        self.cached_tokens = 0
        """Prompt tokens the first admission found in the engine's prefix cache (not prefilled)."""
        self._admitted = False
        self._pinned = 0  # leading `blocks` this sequence holds a reference to in its engine's cache
        self._generated = 0  # while decoding: the values at tick `_since` of `_clock`
        self._computed = 0
        self._clock: DecodeClock | None = None  # set while decoding in an engine
        self._since = 0
        self._order = 0  # admission order into the running batch
        self._entry: tuple[int, int, EngineSequence] | None = None  # its live finish-heap entry

    @property
    def started(self) -> bool:
        """Whether an engine has admitted it to its running batch (a waiting one that never was can be
        taken back at no cost)."""
        return self._admitted

    @property
    def generated(self) -> int:
        clock = self._clock
        return self._generated if clock is None else self._generated + clock.ticks - self._since

    @property
    def computed(self) -> int:
        """Tokens whose KV is cached."""
        clock = self._clock
        return self._computed if clock is None else self._computed + clock.ticks - self._since

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    def __repr__(self) -> str:
        return (
            f"EngineSequence({self.request_id!r}, {self.prompt_tokens}, {self.output_tokens}, "
            f"generated={self.generated}, computed={self.computed})"
        )


@dataclass(slots=True)
class StepEvents:
    """What one ``step()`` call did: iterations run, tokens sampled, sequences that changed state."""

    num_iterations: int = 0
    num_tokens: int = 0
    first_token: list[EngineSequence] = field(default_factory=list)
    finished: list[EngineSequence] = field(default_factory=list)
    preempted: list[EngineSequence] = field(default_factory=list)
