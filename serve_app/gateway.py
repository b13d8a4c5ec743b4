"""The per-request path between HTTP and the replicas: intake, acquire a slot, stream, release.

Actor calls per request on the hot path: at most two, fewer under load — ``acquire`` (admission +
wait for a grant) and ``release`` (fire-and-forget, carrying the observed length and timings) go
through this ingress's `SchedulerClient`, which coalesces them with every other request's into batched
``submit`` / ``poll`` / ``release_many`` calls (deployments/scheduler_client.py); the scheduler actor
feeds the observed length to the drift statistics from there. Tokens come straight back from the
granted replica through a streaming `DeploymentHandle`, which is sent the request and nothing of its
estimate. Classification and estimation run here, from a local copy of the drift statistics
refreshed in the background (no per-request call).

Every wait has a deadline: acquiring waits at most the queue timeout (plus a little for a scheduler
restart), and each token at most the stall timeout. A request that ends any way — finished, client
gone, replica failure, timeout — releases its slot exactly once.

The gateway sees the stream, so it measures each request's time to first token and its end, and
reports them on the release with the objectives its ticket was held to and the prompt tokens its engine
found in the prefix cache; the scheduler actor's request book judges them
(`deployments.telemetry.judge`) and counts the cache hits for /metrics and /v1/usage.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from dataclasses import dataclass, field, replace

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import RequestCancelledError

from deployments.actors import ActorUnavailable
from deployments.coalesce import merge_waiting
from deployments.engine import FinishReason, GenerationRequest, TokenDelta, Usage
from deployments.handles import GatewayScheduler, ReplicaHandle, ReplicaStream
from deployments.scheduler_actor import AcquireResult, AcquireStatus, Resumption
from deployments.scheduler_client import SchedulerClient
from deployments.telemetry import Outcome, RequestTimings
from driftsched.core.intake import Intake
from driftsched.core.request import RejectReason, Request, Ticket
from serve_app.config import GatewayConfig
from serve_app.errors import (
    ErrorCode,
    GatewayError,
    acquire_error,
    engine_error,
    reject_error,
    scheduler_unavailable,
)
from serve_app.prompts import RenderedPrompt
from serve_app.protocol import TPOT_HEADER, TTFT_HEADER

logger = logging.getLogger(__name__)

_RESTART_GRACE_S = 10.0  # extra time to reach a restarting scheduler before answering 503
_MAX_FAILOVERS = 2  # a request moved off this many failed replicas gets an error on the next failure


@dataclass(slots=True, frozen=True)
class Sampling:
    """The sampling options a client may set."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class Asks:
    """What a request asks of its latency objectives: OpenAI's `service_tier`, and stricter TTFT and
    TPOT objectives in seconds (from `serve_app.protocol.objective_asks`); None where it asks nothing."""

    service_tier: str | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None


class ParamError(GatewayError):
    """A `GatewayError` about one named input, a body field or a header (`param` of the error body)."""

    def __init__(self, code: ErrorCode, message: str, param: str) -> None:
        super().__init__(code, message)
        self.param = param


@dataclass(slots=True)
class Prepared:
    """A validated, classified, estimated request, ready to acquire a slot."""

    request: GenerationRequest
    ticket: Ticket
    """What the scheduler queues: category, raw and corrected estimates, and the rest."""
    tenant: str
    started: float
    grant: int = 0
    """The serial of its current grant (`AcquireResult.grant`), sent with each run."""


class RunEnd(enum.StrEnum):
    """How one run of a request on a replica ended (`Gateway._forward_run`)."""

    DONE = "done"  # finished: the final delta is on the lease
    ERROR = "error"  # an engine failure, already on the lease as an error
    PREEMPTED = "preempted"  # the scheduler took it off the replica: resume
    FAILED = "failed"  # the replica was lost: resume elsewhere


@dataclass(slots=True)
class _Produced:
    """What a request has generated so far, over all its runs (what a resumed run continues from)."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Lease:
    """A running request: deltas, then None (done) or a GatewayError, arrive on `deltas`.

    The replica stream is consumed by a task started when the slot was granted, so the slot is
    released even if the HTTP response never starts; `cancel` (client gone) stops it early.
    `next_merged` is `next` with the deltas already waiting behind the first merged into it
    (`deployments.coalesce`): a reader that fell behind catches up in one chunk, one that keeps up
    gets each delta alone and at once.
    """

    deltas: asyncio.Queue[TokenDelta | GatewayError | None]
    task: asyncio.Task[None]
    _held: list[TokenDelta | GatewayError | None] = field(default_factory=list)
    """An item taken off `deltas` by a merge it may not join; it comes next, before `deltas`."""

    async def next(self) -> TokenDelta | GatewayError | None:
        if self._held:
            return self._held.pop()
        return await self.deltas.get()

    async def next_merged(self) -> TokenDelta | GatewayError | None:
        """The next item, with every mergeable delta already queued behind it merged in; never waits
        for more than the first."""
        return self.merge_waiting(await self.next())

    def merge_waiting(self, item: TokenDelta | GatewayError | None) -> TokenDelta | GatewayError | None:
        """`item` (just taken from this lease) with the mergeable deltas queued behind it merged in.

        A final delta closes the merge (`deployments.coalesce`); an item that may not join one (None,
        a GatewayError, an error delta) is kept back and comes next, alone."""
        if not isinstance(item, TokenDelta):
            return item
        return merge_waiting(item, self.deltas, self._held)

    def cancel(self) -> None:
        self.task.cancel()


class Gateway:
    """Owns the ingress side of one request's life (see module docstring)."""

    def __init__(self, intake: Intake, config: GatewayConfig, scheduler: GatewayScheduler,
                 llm: ReplicaHandle, benchmark_mode: bool) -> None:
        self.intake, self.config = intake, config
        self.scheduler, self.llm = scheduler, llm
        self.client = SchedulerClient(scheduler, restart_grace_s=_RESTART_GRACE_S)
        self.benchmark_mode = benchmark_mode

    def prepare(self, tenant: str, prompt: RenderedPrompt, max_tokens: int | None,
                default_max_tokens: int, sampling: Sampling, target_tokens: int | None,
                category: str | None = None, asks: Asks = Asks(), session: str | None = None) -> Prepared:
        """Validate, classify and estimate a counted prompt; raises GatewayError(400) for invalid input.

        `category` is the caller's declared one (already checked against `CATEGORIES`); the classifier
        takes it as given, and classifies the prompt when it is None. `target_tokens` (benchmark mode
        only) goes to the engine and nowhere else: the estimator and the scheduler never see it.
        `asks` become the ticket's tier and objectives; an ask outside the tenant's allowance is a
        `ParamError` naming its header. The ticket carries the prompt's prefix hashes and `session`
        (the caller's `x-session-id`), the latter scoped to the tenant: two tenants' session "1" are
        two sessions (tenant names cannot contain "/", so the scoped id is unambiguous).
        """
        started = time.monotonic()
        prompt_tokens = prompt.num_tokens
        limit = self.intake.max_request_tokens
        if max_tokens is None:
            max_tokens = max(1, min(default_max_tokens, limit - prompt_tokens))
        rid = uuid.uuid4().hex
        request = Request(rid, tenant, prompt_tokens, max_tokens, time.time(), category=category,
                          prompt_text=prompt.text, service_tier=asks.service_tier,
                          ttft_slo_s=asks.ttft_s, tpot_slo_s=asks.tpot_s, prefix_blocks=prompt.prefix_blocks,
                          session_id=None if session is None else f"{tenant}/{session}")
        rejection = self.intake.validate(request)
        if rejection is not None:
            if rejection.reason is RejectReason.INVALID:
                self._check_asks(request)
            raise reject_error(rejection.reason, rejection.detail, None)
        ticket = self.intake.ticket(request, time.time())
        gen = GenerationRequest(
            rid, prompt.text, prompt_tokens, max_tokens, ticket.category, sampling.temperature,
            list(sampling.stop), target_tokens if self.benchmark_mode else None,
            top_p=sampling.top_p, seed=sampling.seed, prompt_token_ids=prompt.token_ids,
        )
        return Prepared(gen, ticket, tenant, started)

    def _check_asks(self, request: Request) -> None:
        """Raise a `ParamError` naming the objective header whose ask alone the intake refuses."""
        for header, asked, alone in (
            (TTFT_HEADER, request.ttft_slo_s, replace(request, tpot_slo_s=None)),
            (TPOT_HEADER, request.tpot_slo_s, replace(request, ttft_slo_s=None)),
        ):
            if asked is None:
                continue
            try:
                self.intake.objectives(alone)
            except ValueError as exc:
                raise ParamError(ErrorCode.INVALID_REQUEST, f"{header}: {exc}", header) from None

    async def acquire(self, prepared: Prepared) -> tuple[str, float]:
        """Wait for a grant: (replica id, queue wait); GatewayError for 429/503/504."""
        timeout = self.config.queue_timeout_s
        try:  # a cancellation (client went away while queued) is withdrawn by the client
            result = await self.client.acquire(prepared.ticket, timeout)
        except ActorUnavailable:
            raise scheduler_unavailable() from None
        if result.status is AcquireStatus.GRANTED and result.replica_id is not None:
            prepared.grant = result.grant
            return result.replica_id, result.queue_wait_s
        if result.status is AcquireStatus.EXPIRED:
            self.release(prepared, "", None, timings_for(prepared, outcome=Outcome.TIMEOUT))
        raise acquire_error(result, timeout)

    def release(self, prepared: Prepared, replica_id: str, output_tokens: int | None,
                timings: RequestTimings) -> None:
        """Fire-and-forget release, batched (a lost one is reclaimed by the scheduler's ledger)."""
        timings.ended_s = time.time()
        self.client.release(prepared.request.request_id, replica_id, output_tokens, timings)

    def start(self, prepared: Prepared, replica_id: str, queue_wait_s: float) -> Lease:
        """Start streaming from the granted replica (see `Lease`)."""
        out: asyncio.Queue[TokenDelta | GatewayError | None] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(
            self._pump(prepared, replica_id, queue_wait_s, out))
        return Lease(out, task)

    async def _pump(self, prepared: Prepared, replica_id: str, queue_wait_s: float,
                    out: asyncio.Queue[TokenDelta | GatewayError | None]) -> None:
        """Stream the granted replica's deltas onto `out`, resuming elsewhere when a run is cut short.

        A run that ends "preempted", or whose replica is lost, is resumed: the scheduler queues the
        request again with the tokens generated so far appended to its prompt, and the stream goes on
        from the next grant. The client sees one stream and one `usage` (its own prompt, every
        generated token).
        """
        timings = timings_for(prepared, queue_wait_s=queue_wait_s, outcome=Outcome.CLIENT_DISCONNECT,
                              prompt_tokens=prepared.request.prompt_tokens)
        output_tokens: int | None = None
        run, produced, failovers = prepared.request, _Produced(), 0
        response: ReplicaStream | None = None
        try:
            while True:
                run = replace(run, grant=prepared.grant)
                response = self.llm.options(stream=True).generate.remote(run, target_replica=replica_id)
                end = await self._forward_run(prepared, replica_id, response, produced, timings, out,
                                              may_fail_over=failovers < _MAX_FAILOVERS)
                if end is RunEnd.ERROR:
                    return  # released as not completed: an engine failure teaches drift nothing
                if end is RunEnd.DONE:
                    output_tokens = timings.output_tokens
                    break
                response.cancel()
                failed = end is RunEnd.FAILED
                failovers += failed
                replica_id = await self._resume(prepared, replica_id, timings.output_tokens, failed)
                run = resumed_request(prepared.request, "".join(produced.text), produced.token_ids,
                                      timings.output_tokens)
            out.put_nowait(None)
        except GatewayError as err:  # could not resume within the queue deadline
            queue_timeout = err.code is ErrorCode.QUEUE_TIMEOUT
            timings.outcome = Outcome.TIMEOUT if queue_timeout else Outcome.RESUME_FAILED
            out.put_nowait(err)
        except StopAsyncIteration:
            timings.outcome = Outcome.REPLICA_ERROR
            out.put_nowait(GatewayError(ErrorCode.REPLICA_ERROR, "the replica ended early"))
        except TimeoutError:
            timings.outcome = Outcome.TIMEOUT
            out.put_nowait(GatewayError(ErrorCode.REPLICA_STALLED,
                                        f"no token for {self.config.stall_timeout_s:g}s"))
        except (RayActorError, RayTaskError, RequestCancelledError) as exc:
            timings.outcome = Outcome.REPLICA_ERROR
            logger.warning("request %s failed on replica %s: %s", prepared.request.request_id,
                           replica_id, type(exc).__name__)
            out.put_nowait(GatewayError(ErrorCode.REPLICA_FAILED,
                                        "the replica serving this request failed; retry"))
        except asyncio.CancelledError:  # the client went away: nobody reads `out` any more
            raise
        except Exception:  # never end the pump without a terminal item: the client would wait for ever
            timings.outcome = Outcome.REPLICA_ERROR
            logger.exception("request %s failed on replica %s", prepared.request.request_id, replica_id)
            out.put_nowait(GatewayError(ErrorCode.INTERNAL, "the request failed inside the gateway; retry"))
        finally:
            if output_tokens is None and response is not None:
                response.cancel()
            self.release(prepared, replica_id, output_tokens, timings)

    async def _forward_run(self, prepared: Prepared, replica_id: str, response: ReplicaStream,
                           produced: _Produced, timings: RequestTimings,
                           out: asyncio.Queue[TokenDelta | GatewayError | None],
                           may_fail_over: bool) -> RunEnd:
        """Forward one run's deltas onto `out`; returns how it ended (`RunEnd`; FAILED only when
        `may_fail_over`, else the replica's loss propagates as its error)."""
        started = False
        while True:
            # A granted replica that never answers is unreachable (dead, or no longer routable): give
            # up on it after start_timeout_s, not the much longer stall timeout.
            limit = self.config.stall_timeout_s if started else self.config.start_timeout_s
            try:
                delta = await asyncio.wait_for(response.__anext__(), limit)
            except (TimeoutError, RayActorError, RayTaskError, RequestCancelledError,
                    StopAsyncIteration) as exc:
                if not may_fail_over or (started and isinstance(exc, TimeoutError)):
                    raise  # a stall mid-stream is the replica's answer, not its loss
                logger.warning("request %s: replica %s lost (%s); resuming elsewhere",
                               prepared.request.request_id, replica_id, type(exc).__name__)
                return RunEnd.FAILED
            started = True
            if delta.error is not None:
                timings.outcome = Outcome.ENGINE_ERROR
                out.put_nowait(engine_error(delta.error.code, delta.error.message))
                return RunEnd.ERROR
            if delta.num_tokens or delta.text:
                if timings.ttft_s is None:
                    timings.ttft_s = time.monotonic() - prepared.started
                timings.output_tokens += delta.num_tokens
                produced.text.append(delta.text)
                produced.token_ids.extend(delta.token_ids or ())
            if delta.finish_reason == FinishReason.PREEMPTED:
                if delta.num_tokens or delta.text:
                    out.put_nowait(replace(delta, finish_reason=None))
                return RunEnd.PREEMPTED
            if delta.finish_reason is not None:
                if delta.usage is not None:  # the client's own prompt, every generated token
                    prompt_tokens = prepared.request.prompt_tokens
                    cached = delta.usage.cached_tokens  # of a resumed run's longer prompt: its own part
                    timings.cached_tokens = None if cached is None else min(cached, prompt_tokens)
                    delta = replace(delta, usage=Usage(prompt_tokens, timings.output_tokens,
                                                       timings.cached_tokens))
                if delta.timing is not None:
                    timings.engine_queue_s = delta.timing.queued_s
                    timings.engine_ttft_s = delta.timing.first_token_s
                out.put_nowait(delta)
                timings.outcome = Outcome.OK
                timings.e2e_s = time.monotonic() - prepared.started
                return RunEnd.DONE
            out.put_nowait(delta)

    async def _resume(self, prepared: Prepared, replica_id: str, generated: int, failed: bool) -> str:
        """Queue a preempted, revoked (or failed-over) request again and wait for its next grant,
        batched with the ingress's other submissions.

        GatewayError if none comes within the queue deadline."""
        timeout = self.config.queue_timeout_s
        stopped = Resumption(replica_id, prepared.grant, generated, failed)
        try:
            result: AcquireResult = await self.client.resume(prepared.ticket, stopped, timeout)
        except ActorUnavailable:
            raise scheduler_unavailable() from None
        if result.status is AcquireStatus.GRANTED and result.replica_id is not None:
            prepared.grant = result.grant
            return result.replica_id
        if result.status is AcquireStatus.EXPIRED:
            raise GatewayError(ErrorCode.QUEUE_TIMEOUT,
                               f"the preempted request found no replica slot within {timeout:g}s")
        # a rejected or withdrawn resume is this service's failure, not the client's
        raise GatewayError(ErrorCode.RESUME_FAILED, result.detail or "could not resume")


def timings_for(prepared: Prepared, outcome: Outcome, queue_wait_s: float | None = None,
                prompt_tokens: int = 0) -> RequestTimings:
    """A request's timings, carrying the objectives its ticket holds it to and its wall-clock arrival."""
    ticket = prepared.ticket
    return RequestTimings(prepared.tenant, queue_wait_s=queue_wait_s, outcome=outcome,
                          prompt_tokens=prompt_tokens, ttft_slo_s=ticket.ttft_slo_s,
                          tpot_slo_s=ticket.tpot_slo_s, arrival_s=ticket.arrival_time)


def resumed_request(original: GenerationRequest, text: str, token_ids: list[int],
                    generated: int) -> GenerationRequest:
    """The request that continues `original` after `generated` output tokens (`text`, `token_ids`).

    The new run's prompt is the original prompt followed by what was generated (vLLM's prefix caching
    makes that prefill cheap), its budgets shrink by the tokens already produced.
    """
    ids = None
    if original.prompt_token_ids is not None:
        ids = [*original.prompt_token_ids, *token_ids]
    target = None if original.target_tokens is None else max(1, original.target_tokens - generated)
    return replace(
        original,
        prompt=original.prompt + text,
        prompt_tokens=original.prompt_tokens + generated,
        max_tokens=original.max_tokens - generated,
        target_tokens=target,
        prompt_token_ids=ids,
    )
