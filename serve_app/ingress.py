"""The HTTP ingress deployment: OpenAI-style endpoints, auth, errors, streaming, metrics.

Endpoints: POST /v1/completions, POST /v1/chat/completions (streamed as SSE or not), GET /v1/models,
GET /v1/usage (the calling tenant's own figures), GET /healthz (ok or degraded, no tenant data), and
GET /metrics (every tenant's figures: the scrape token only, see `serve_app.auth`). The per-request
path lives in `serve_app.gateway`; this module maps HTTP to it and its outcomes to status codes:
400 invalid body, objective or session header, 401 missing/unknown key, 429 over quota, 503
overloaded or scheduler unavailable, 504 queue deadline passed, 502 replica failure. An accepted
request's response headers name its tier and the objectives it is held to (`serve_app.protocol`).
"""

# Deliberately no `from __future__ import annotations` here: Serve's class-based FastAPI view cannot
# resolve string annotations, so `request: Request` would become a required query parameter.

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException

from deployments.actors import ActorNames, ActorUnavailable, call
from deployments.engine import TokenDelta
from deployments.handles import ReplicaHandle
from driftsched.core.drift import DriftTracker
from driftsched.core.intake import Intake
from serve_app.config import AppConfig
from serve_app.errors import ErrorCode, GatewayError, scheduler_unavailable
from serve_app.gateway import Asks, Gateway, Lease, ParamError, Sampling
from serve_app.metrics import render
from serve_app.prompts import make_prompts
from serve_app.protocol import (
    SSE_DONE,
    TIER_HEADER,
    TPOT_TARGET_HEADER,
    TTFT_TARGET_HEADER,
    ChatBody,
    CompletionBody,
    HeaderError,
    ResponseShaper,
    error_body,
    objective_asks,
    session_id,
    sse,
    tier_name,
)

logger = logging.getLogger(__name__)


def _unauthorized() -> GatewayError:
    return GatewayError(ErrorCode.INVALID_API_KEY, "missing or unknown API key")


app = FastAPI(title="DriftSched")


_ROUTING_ERRORS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}


@app.exception_handler(HTTPException)
async def _routing_error(request: Request, exc: HTTPException) -> Response:
    """The framework's own refusals (unknown path, wrong method) carry the OpenAI error body too."""
    code = _ROUTING_ERRORS.get(exc.status_code)
    if code is None:  # routing raises no other status; leave anything else as the framework answers it
        return await http_exception_handler(request, exc)
    response = _error(GatewayError(code, str(exc.detail)))
    response.headers.update(exc.headers or {})  # 405 names the allowed methods
    return response


def _too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(ErrorCode.BODY_TOO_LARGE,
                        f"the request body is {size} bytes; the limit is {limit} (gateway.max_body_bytes)")


def _error(err: GatewayError, param: str | None = None) -> JSONResponse:
    """`err` as an OpenAI error body; `param` names the offending body field, where there is one."""
    headers = {}
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return JSONResponse(error_body(err.message, err.type, err.code, param), err.status, headers=headers)


async def sse_events(shaper: ResponseShaper, lease: Lease, first: TokenDelta | GatewayError | None,
                     include_usage: bool, coalesce: bool) -> AsyncIterator[str]:
    """A streamed response's SSE events, from its lease's first item on.

    With `coalesce`, each chunk carries every delta already waiting on the lease (`Lease.next_merged`):
    each chunk costs an ASGI message to the proxy and a write to the client whatever its size, so a
    stream that fell behind catches up in one; one that keeps up sends each delta at once, as it comes.
    """
    following = lease.next_merged if coalesce else lease.next
    item, is_first = lease.merge_waiting(first) if coalesce else first, True
    try:
        while item is not None:
            if isinstance(item, GatewayError):
                yield sse(error_body(item.message, item.type, item.code))
                return
            yield shaper.chunk(item.text, item.finish_reason, first=is_first)
            is_first = False
            if item.usage is not None:
                if include_usage:
                    yield shaper.usage_chunk(item.usage)
                yield SSE_DONE
                return
            item = await following()
    finally:
        lease.cancel()  # no-op once the stream finished; stops the replica if the client left


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    """FastAPI ingress (see module docstring)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async __init__; mypy wants None
        self, config: dict[str, object], actors: ActorNames, llm: ReplicaHandle
    ) -> None:
        from serve_app.auth import KeyStore, ScrapeToken

        self.config = AppConfig.model_validate(config)
        core = self.config.core
        self.keys = KeyStore.load(self.config.auth, {t.name for t in core.tenants})
        self.scrape_token = ScrapeToken.load(self.config.auth, self.keys)
        self.intake = Intake(core)
        self.objectives = core.objectives()
        self.scheduler, self.drift = actors.scheduler(), actors.drift()
        self.gateway = Gateway(self.intake, self.config.gateway, self.scheduler, llm,
                               self.config.benchmark_mode)
        self.model_name = self.config.replicas.served_model_name
        self.prompts = make_prompts(self.config.replicas, core.scheduler.placement.block_tokens)
        self.rejected: Counter[str] = Counter()
        self._drift_copy: dict[str, object] | None = None
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_drift())

    # -- endpoints -------------------------------------------------------------------------------

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        if self.keys.tenant_for(request.headers.get("authorization")) is None:
            return self._refuse(_unauthorized())
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": 0, "owned_by": "driftsched"}]})

    @app.get("/healthz")
    async def healthz(self) -> Response:
        try:
            policy = await call(lambda: self.scheduler.ping.remote(), time.monotonic() + 2.0)
        except ActorUnavailable:
            return JSONResponse({"status": "degraded", "scheduler": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "policy": policy})

    @app.get("/v1/usage")
    async def usage(self, request: Request) -> Response:
        """The calling tenant's own usage (deployments/usage.py), from one scheduler call."""
        tenant = self.keys.tenant_for(request.headers.get("authorization"))
        if tenant is None:
            return self._refuse(_unauthorized())
        try:
            usage = await call(lambda: self.scheduler.usage.remote(tenant), time.monotonic() + 3.0,
                               what="scheduler")
        except ActorUnavailable:
            return _error(scheduler_unavailable())
        if usage is None:  # a key names a tenant the scheduler does not know: a deployment mismatch
            return _error(GatewayError(ErrorCode.UNKNOWN_TENANT, f"no usage is kept for tenant {tenant!r}"))
        return JSONResponse(usage.to_json())

    @app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        """Every tenant's figures: only for the scrape token (auth.metrics_token_*), never a tenant key."""
        refused = self._metrics_refusal(request.headers.get("authorization"))
        if refused is not None:
            return self._refuse(refused)
        try:
            view = await call(lambda: self.scheduler.view.remote(), time.monotonic() + 3.0)
        except ActorUnavailable:
            view = None
        drift = self.intake.estimator.tracker.stats(time.time())
        return Response(render(view, drift, self.rejected, self.objectives), media_type=CONTENT_TYPE_LATEST)

    def _metrics_refusal(self, authorization: str | None) -> GatewayError | None:
        if not self.scrape_token.enabled:
            env = self.config.auth.metrics_token_env
            return GatewayError(ErrorCode.METRICS_DISABLED,
                                "GET /metrics is disabled: no metrics token is configured; set the "
                                f"variable named by auth.metrics_token_env ({env}), "
                                "auth.metrics_token_file or auth.demo_metrics_token")
        if not authorization:
            return GatewayError(ErrorCode.MISSING_METRICS_TOKEN,
                                "GET /metrics needs Authorization: Bearer <metrics token>")
        if not self.scrape_token.allows(authorization):
            return GatewayError(ErrorCode.INVALID_METRICS_TOKEN,
                                "this credential may not read /metrics; use the metrics token")
        return None

    # -- the request path ------------------------------------------------------------------------

    def _refuse(self, err: GatewayError, param: str | None = None) -> JSONResponse:
        self.rejected[err.code] += 1
        return _error(err, param)

    async def _serve(self, request: Request, chat: bool) -> Response:
        tenant = self.keys.tenant_for(request.headers.get("authorization"))
        if tenant is None:
            return self._refuse(_unauthorized())
        limit = self.config.gateway.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return self._refuse(_too_large(int(declared), limit))
        body_bytes = await request.body()
        if len(body_bytes) > limit:
            return self._refuse(_too_large(len(body_bytes), limit))
        try:
            raw = json.loads(body_bytes)
            body = (ChatBody if chat else CompletionBody).model_validate(raw)
            # Rendering and tokenising a long prompt takes a while: off the event loop, so it does not
            # stall every other stream of this ingress.
            if isinstance(body, ChatBody):
                prompt = await asyncio.to_thread(self.prompts.chat, body.message_dicts())
            else:
                prompt = await asyncio.to_thread(self.prompts.completion, body.prompt_text())
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            return self._refuse(GatewayError(ErrorCode.INVALID_BODY, f"{where}: {problem['msg']}"),
                                param=where or None)
        except ValueError as exc:  # bad JSON, or a body shape we do not serve
            return self._refuse(GatewayError(ErrorCode.INVALID_BODY, str(exc)))
        except RecursionError:  # e.g. thousands of nested arrays: the parser gives up, the body is bad
            return self._refuse(GatewayError(ErrorCode.INVALID_BODY, "the JSON body is nested too deeply"))
        if body.model is not None and body.model != self.model_name:
            return self._refuse(GatewayError(ErrorCode.MODEL_NOT_FOUND,
                                             f"model {body.model!r} does not exist"))
        try:
            ttft_ask, tpot_ask = objective_asks(request.headers)
            session = session_id(request.headers)
        except HeaderError as exc:
            return self._refuse(GatewayError(ErrorCode.INVALID_REQUEST, str(exc)), param=exc.header)
        max_tokens = body.max_tokens or getattr(body, "max_completion_tokens", None)
        default = self.config.gateway.default_max_tokens if chat else 16
        try:
            sampling = Sampling(body.temperature, body.top_p, body.seed, tuple(body.stops()))
            prepared = self.gateway.prepare(tenant, prompt, max_tokens, default, sampling,
                                            body.driftsched_target_tokens, body.category,
                                            Asks(body.service_tier, ttft_ask, tpot_ask), session)
        except ParamError as err:
            return self._refuse(err, param=err.param)
        except GatewayError as err:
            return self._refuse(err)
        try:
            replica, queue_wait = await self.gateway.acquire(prepared)
        except GatewayError as err:
            return _error(err)
        lease = self.gateway.start(prepared, replica, queue_wait)
        ticket = prepared.ticket
        shaper = ResponseShaper(chat, self.model_name,
                                tier_name(ticket.tier, self.intake.tenants[tenant].tier))
        headers = {"x-driftsched-request-id": prepared.request.request_id,
                   "x-driftsched-category": ticket.category,
                   "x-driftsched-estimated-tokens": f"{ticket.corrected_estimate:.1f}",
                   "x-driftsched-replica": replica,
                   TIER_HEADER: str(ticket.tier),
                   TTFT_TARGET_HEADER: f"{ticket.ttft_slo_s * 1000:g}",
                   TPOT_TARGET_HEADER: f"{ticket.tpot_slo_s * 1000:g}"}
        try:
            first = await lease.next()
        except asyncio.CancelledError:
            lease.cancel()
            raise
        if isinstance(first, GatewayError):
            return _error(first)
        if body.stream:
            events = sse_events(shaper, lease, first, body.include_usage(),
                                self.config.gateway.coalesce_chunks)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            text: list[str] = []
            item: TokenDelta | GatewayError | None = first
            while item is not None:
                if isinstance(item, GatewayError):
                    return _error(item)
                text.append(item.text)
                if item.usage is not None:
                    return JSONResponse(shaper.full("".join(text), item.finish_reason, item.usage),
                                        headers=headers)
                item = await lease.next_merged()
        except asyncio.CancelledError:
            lease.cancel()
            raise
        return _error(GatewayError(ErrorCode.REPLICA_ERROR, "the replica ended early"))

    # -- drift statistics copy -------------------------------------------------------------------

    async def _refresh_drift(self) -> None:
        drift_config = self.config.core.estimator.drift
        seen: tuple[str, int] | None = None
        while True:
            await asyncio.sleep(self.config.gateway.drift_refresh_s)
            try:
                latest = await asyncio.wait_for(self.drift.snapshot.remote(), 5.0)
                boot, merges, snap = latest.boot_id, latest.changes, latest.state
                if seen is not None and boot != seen[0] and self._drift_copy:
                    # A new instance: offer the pre-restart copy even if batches reached it first;
                    # the actor lays the first copy under them (or ignores it: see DriftActor).
                    await asyncio.wait_for(self.drift.seed.remote(self._drift_copy), 5.0)
                    seen = None
                    continue
                if (boot, merges) != seen:
                    self.intake.estimator.tracker = DriftTracker.restore(snap, drift_config)
                    self._drift_copy, seen = snap, (boot, merges)
            except (RayActorError, TimeoutError) as exc:
                logger.warning("drift refresh failed (%s); keeping the local copy", type(exc).__name__)
            except Exception:
                logger.exception("drift refresh failed; keeping the local copy")
