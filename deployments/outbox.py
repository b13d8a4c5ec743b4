"""Outboxes: where the scheduler actor leaves the answers of batched callers until they collect them.

An ingress's `SchedulerClient` sends many acquires in one call (`SchedulerActor.submit`) and collects
their answers with one long poll (`SchedulerActor.poll`), instead of parking one Ray call per request.
Each submitted request is *routed* to its client's outbox; when the dispatcher grants, expires or
withdraws it, the answer is posted there and wakes the client's poll.

A client that has not polled for a grace period is presumed dead: `Outboxes.drop_stale` removes its
outbox and routes and hands them to the actor, which frees what they held. Each outbox has an `epoch`
(the actor's, plus a serial): a client that sees it change knows that its answers were lost (the actor
restarted, or dropped its outbox) and submits its outstanding requests again.

Plain asyncio, no Ray: the actor is the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Outbox(Generic[T]):
    """One client's answers not yet collected, and the requests still routed to it."""

    __slots__ = ("_polling", "_polls", "_wake", "answers", "client", "epoch", "seen", "waiting")

    def __init__(self, client: str, epoch: str, now: float) -> None:
        self.client, self.epoch = client, epoch
        self.answers: dict[str, T] = {}
        self.waiting: set[str] = set()  # routed here, not answered yet
        self.seen = now  # when a submit or a poll last touched it
        self._wake: asyncio.Future[None] | None = None  # the waiting poll's
        self._polls = 0  # polls started; only the latest one takes answers
        self._polling = 0  # polls under way

    def post(self, request_id: str, answer: T) -> None:
        self.waiting.discard(request_id)
        self.answers[request_id] = answer
        self._notify()

    def take(self) -> dict[str, T]:
        answers, self.answers = self.answers, {}
        return answers

    @property
    def polling(self) -> bool:
        return self._polling > 0

    async def poll(self, wait_s: float, clock: Callable[[], float]) -> dict[str, T]:
        """Everything posted so far, at once if there is any, else the first answers within `wait_s`
        ({} if none came). A newer poll supersedes this one: it returns {} and leaves the answers."""
        self._polls += 1
        mine = self._polls
        self._polling += 1
        self._notify()  # an older poll still waiting gives way
        try:
            deadline = clock() + wait_s
            while not self.answers and mine == self._polls:
                left = deadline - clock()
                if left <= 0:
                    break
                self._wake = asyncio.get_running_loop().create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake, left)
            return self.take() if mine == self._polls else {}
        finally:
            self._polling -= 1
            self.seen = clock()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


class Outboxes(Generic[T]):
    """Every client's outbox, and which outbox each routed request's answer goes to."""

    def __init__(self, epoch: str) -> None:
        self._epoch = epoch
        self._boxes: dict[str, Outbox[T]] = {}
        self._routes: dict[str, tuple[Outbox[T], float]] = {}  # request id -> (outbox, routed at)
        self._made = 0

    def box(self, client: str, now: float) -> Outbox[T]:
        """`client`'s outbox (a new one, with a new epoch, if it had none), marked seen at `now`."""
        box = self._boxes.get(client)
        if box is None:
            self._made += 1
            box = self._boxes[client] = Outbox(client, f"{self._epoch}.{self._made}", now)
        box.seen = now
        return box

    def existing(self, client: str) -> Outbox[T] | None:
        """`client`'s outbox if it has one (none is made)."""
        return self._boxes.get(client)

    def route(self, request_id: str, box: Outbox[T], since: float) -> None:
        """Send `request_id`'s answer to `box` (moving it from another outbox if it was routed there)."""
        old = self._routes.get(request_id)
        if old is not None:
            old[0].waiting.discard(request_id)
        self._routes[request_id] = (box, since)
        box.waiting.add(request_id)

    def route_of(self, request_id: str) -> tuple[Outbox[T], float] | None:
        return self._routes.get(request_id)

    def pop_route(self, request_id: str) -> tuple[Outbox[T], float] | None:
        """The outbox `request_id`'s answer goes to and when it was routed there; None if not routed."""
        return self._routes.pop(request_id, None)

    def drop_stale(self, now: float, grace_s: float) -> list[Outbox[T]]:
        """Remove the outboxes of clients that have not polled for `grace_s` (none is polling now),
        with their routes; the caller frees what their answers and waiting requests hold."""
        stale = [box for box in self._boxes.values() if not box.polling and now - box.seen > grace_s]
        for box in stale:
            del self._boxes[box.client]
            for request_id in box.waiting:
                self._routes.pop(request_id, None)
        return stale

    def sizes(self) -> dict[str, int]:
        return {"outboxes": len(self._boxes),
                "outbox_answers": sum(len(box.answers) for box in self._boxes.values()),
                "routes": len(self._routes)}
