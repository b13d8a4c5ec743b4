"""Clocks: the core never reads time itself; a clock is injected."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that returns the current time in seconds."""

    def __call__(self) -> float: ...


def monotonic_clock() -> float:
    """Wall-clock time for the live service."""
    return time.monotonic()


class ManualClock:
    """A clock moved by hand: the simulator's virtual time and the tests' time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward (never backward)."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backward (got {seconds})")
        self.now += seconds
