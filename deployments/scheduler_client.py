"""The ingress's side of the scheduler actor's batched calls: many acquires or releases per Ray call.

One `SchedulerClient` per ingress replica. Each request still awaits its own ``acquire`` (or
``resume``, for a run that was preempted, revoked or lost with its replica) and sends its own
``release``, but the client coalesces them: at most one ``submit`` and one ``release_many`` call
are in flight, and each carries everything buffered while the previous one was under way (no added
delay when idle: a lone acquire leaves on the event loop's next turn, a lone release at once). While
acquires are outstanding, one long ``poll`` is in flight; it returns as soon as the actor posts an
answer (grant, expiry, cancellation) to this client's outbox (see deployments/outbox.py), and its
answers resolve the waiting requests.

Every wait has a deadline: an acquire waits at most its queue timeout plus `restart_grace_s`, then
raises `ActorUnavailable`. The actor's answers carry an epoch; when it changes (the actor restarted,
or dropped this client's outbox) or a call fails because the actor died, every outstanding acquire is
submitted again with the queue time it has left (``submit`` is idempotent per request id). An acquire
given up (caller cancelled, deadline passed) after it was sent is withdrawn with ``cancel``. Releases
are fire-and-forget: a lost one is reclaimed by the scheduler's ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ray.exceptions import GetTimeoutError, RayActorError

from deployments.actors import ActorUnavailable
from deployments.handles import SchedulerCalls, cancel_call
from deployments.scheduler_actor import AcquireResult, AcquireStatus, Answers, Release, Resumption, Submission
from deployments.telemetry import RequestTimings
from driftsched.core.request import Ticket

logger = logging.getLogger(__name__)
T = TypeVar("T")

_LOST = (RayActorError, GetTimeoutError, TimeoutError)  # the call never answered: the actor died
_EXPIRED_HERE = AcquireResult(AcquireStatus.EXPIRED, detail="queue deadline passed before it was sent")


@dataclass(slots=True)
class _Acquire:
    ticket: Ticket
    queue_deadline: float  # monotonic; the queue timeout sent is what is left of it
    future: asyncio.Future[AcquireResult]
    resume: Resumption | None = None
    sent: bool = False


class SchedulerClient:
    """Batches one ingress's acquires and releases to the scheduler actor (see module docstring)."""

    def __init__(self, scheduler: SchedulerCalls, *, restart_grace_s: float = 10.0, poll_s: float = 5.0,
                 retry_s: float = 0.2, client_id: str | None = None) -> None:
        """`poll_s` must stay well under the actor's `client_grace_s` (30 s by default)."""
        self.scheduler = scheduler
        self.client_id = client_id or uuid.uuid4().hex
        self.restart_grace_s, self.poll_s, self.retry_s = restart_grace_s, poll_s, retry_s
        self._acquires: dict[str, _Acquire] = {}  # outstanding, sent or not
        self._unsent: dict[str, None] = {}  # ordered set: request ids for the next submit
        self._releases: list[Release] = []
        self._epoch: str | None = None
        self._submitting: asyncio.Task[None] | None = None
        self._polling: asyncio.Task[None] | None = None
        self._releasing: asyncio.Task[None] | None = None
        self.calls = {"submit": 0, "poll": 0, "release_many": 0, "cancel": 0}
        """Ray calls made, by method (benchmarks report calls per grant)."""

    # -- the ingress's calls ---------------------------------------------------------------------

    async def acquire(self, ticket: Ticket, queue_timeout_s: float) -> AcquireResult:
        """Admit `ticket` and wait for its answer; `ActorUnavailable` if none comes within the queue
        timeout plus the restart grace."""
        return await self._wait(ticket, queue_timeout_s, None)

    async def resume(self, ticket: Ticket, stopped: Resumption, queue_timeout_s: float) -> AcquireResult:
        """Queue a request whose run `stopped` again (preempted, revoked, or its replica failed) and
        wait for its next grant, batched like an acquire; `ActorUnavailable` as for ``acquire``."""
        return await self._wait(ticket, queue_timeout_s, stopped)

    async def _wait(
        self, ticket: Ticket, queue_timeout_s: float, stopped: Resumption | None
    ) -> AcquireResult:
        rid = ticket.request_id
        entry = _Acquire(ticket, time.monotonic() + queue_timeout_s,
                         asyncio.get_running_loop().create_future(), stopped)
        self._acquires[rid] = entry
        self._unsent[rid] = None
        self._flush_submits()
        try:
            return await asyncio.wait_for(entry.future, queue_timeout_s + self.restart_grace_s)
        except TimeoutError:
            self._give_up(entry)
            raise ActorUnavailable("scheduler did not answer in time") from None
        except asyncio.CancelledError:  # the caller went away
            self._give_up(entry)
            raise
        finally:
            self._acquires.pop(rid, None)

    def release(self, request_id: str, replica_id: str, output_tokens: int | None,
                timings: RequestTimings | None) -> None:
        """Fire-and-forget release, sent with the next ``release_many`` (`output_tokens`: the finished
        request's observed length, None when it ended otherwise)."""
        self._releases.append(Release(request_id, replica_id, output_tokens, timings))
        if self._releasing is None:
            self._flush_releases()

    async def flushed(self) -> None:
        """Return once every release handed over so far has been sent and answered (or lost)."""
        while self._releasing is not None:
            await asyncio.shield(self._releasing)

    # -- submit ----------------------------------------------------------------------------------

    def _flush_submits(self) -> None:
        """Start a ``submit`` of everything unsent, unless one is in flight (its end sends the rest)."""
        if self._submitting is None and self._unsent:
            self._submitting = asyncio.get_running_loop().create_task(self._submit())

    def _take_unsent(self) -> list[Submission]:
        """The unsent acquires still waiting, with the queue time each has left; those with none left
        are answered "expired" here, as the actor would answer them."""
        now, batch = time.monotonic(), []
        for rid in self._unsent:
            entry = self._acquires.get(rid)
            if entry is None or entry.future.done():
                continue
            left = entry.queue_deadline - now
            if left <= 0:
                entry.future.set_result(_EXPIRED_HERE)
                continue
            entry.sent = True
            batch.append(Submission(entry.ticket, left, entry.resume))
        self._unsent.clear()
        return batch

    async def _submit(self) -> None:
        # Built when the task first runs: every acquire made in the same event-loop turn joins it.
        batch = self._take_unsent()
        sent = [item.ticket.request_id for item in batch]
        try:
            if not batch:
                return
            self.calls["submit"] += 1
            answers = await self._ask(self.scheduler.submit.remote(self.client_id, batch))
        except _LOST as exc:
            logger.warning("scheduler submit of %d acquires failed (%s); sending again", len(batch),
                           type(exc).__name__)
            self._unsent = dict.fromkeys([*sent, *self._unsent])
            await asyncio.sleep(self.retry_s)
        except Exception as exc:  # the actor raised: these acquires fail with its error, as a call would
            logger.exception("scheduler submit of %d acquires failed", len(batch))
            for rid in sent:
                self._fail(rid, exc)
        else:
            self._answered(answers, sent)
            self._start_polling()
        finally:
            self._submitting = None
        self._flush_submits()

    # -- poll ------------------------------------------------------------------------------------

    def _start_polling(self) -> None:
        if self._acquires and (self._polling is None or self._polling.done()):
            self._polling = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        while self._acquires:
            try:
                self.calls["poll"] += 1
                answers = await self._ask(self.scheduler.poll.remote(self.client_id, self.poll_s),
                                          self.poll_s + self.restart_grace_s)
            except _LOST as exc:
                logger.warning("scheduler poll failed (%s); submitting %d outstanding acquires again",
                               type(exc).__name__, len(self._acquires))
                self._submit_again()
                await asyncio.sleep(self.retry_s)
                continue
            except Exception:  # a background loop never dies silently; the deadlines bound the waits
                logger.exception("scheduler poll failed")
                await asyncio.sleep(self.retry_s)
                continue
            self._answered(answers)

    # -- release ---------------------------------------------------------------------------------

    def _flush_releases(self) -> None:
        """Send the buffered releases now (the call leaves at once, even if this loop is closing)."""
        batch, self._releases = self._releases, []
        try:
            ref = self.scheduler.release_many.remote(batch)
        except RayActorError as exc:
            self._lost_releases(len(batch), exc)
            return
        self.calls["release_many"] += 1
        self._releasing = asyncio.get_running_loop().create_task(self._released(ref, len(batch)))

    async def _released(self, ref: Awaitable[None], count: int) -> None:
        try:
            await self._ask(ref)
        except Exception as exc:
            self._lost_releases(count, exc)
        finally:
            self._releasing = None
        if self._releases:
            self._flush_releases()

    @staticmethod
    def _lost_releases(count: int, exc: Exception) -> None:
        logger.warning("%d releases not delivered (%s); the scheduler's ledger reclaims them", count,
                       type(exc).__name__)

    # -- answers ---------------------------------------------------------------------------------

    def _answered(self, answers: Answers, sent: Sequence[str] = ()) -> None:
        epoch = answers.epoch
        for rid, answer in answers.results.items():  # an answer nobody waits for is dropped: see _give_up
            entry = self._acquires.pop(rid, None)
            if entry is not None and not entry.future.done():
                entry.future.set_result(answer)
        if epoch != self._epoch:
            if self._epoch is not None:  # answers posted under the old epoch are lost
                logger.warning("scheduler restarted (or dropped this client's outbox); submitting %d "
                               "outstanding acquires again", len(self._acquires))
                self._submit_again(skip=set(sent))
            self._epoch = epoch

    def _submit_again(self, skip: set[str] | frozenset[str] = frozenset()) -> None:
        for rid in self._acquires:
            if rid not in skip:
                self._unsent[rid] = None
        self._flush_submits()

    def _fail(self, rid: str, exc: Exception) -> None:
        entry = self._acquires.pop(rid, None)
        if entry is not None and not entry.future.done():
            entry.future.set_exception(exc)

    def _give_up(self, entry: _Acquire) -> None:
        """An acquire abandoned by its caller: withdraw it from the actor if it was sent (the actor
        frees a grant made meanwhile; one whose cancel is lost is reclaimed by the ledger)."""
        rid = entry.ticket.request_id
        self._acquires.pop(rid, None)
        self._unsent.pop(rid, None)
        if not entry.sent:
            return
        self.calls["cancel"] += 1
        try:
            self.scheduler.cancel.remote(rid)
        except RayActorError:
            logger.warning("cancel of %s not delivered", rid)

    async def _ask(self, ref: Awaitable[T], timeout_s: float | None = None) -> T:
        """A call's answer, within `timeout_s` (default: the restart grace), else it is cancelled."""
        try:
            return await asyncio.wait_for(ref, self.restart_grace_s if timeout_s is None else timeout_s)
        except TimeoutError:
            cancel_call(ref)
            raise
