"""Open-loop, multi-tenant, streaming load against an OpenAI-compatible endpoint (httpx).

Arrivals are open-loop: request *i* is sent at its workload arrival time multiplied by `time_scale`
(or at Poisson times at `rate_rps`), whether or not earlier ones have answered. Each workload tenant is
mapped onto a service tenant and sends with that tenant's API key. Every request streams
(`POST /v1/completions`, `stream: true`, usage in the last chunk), so the first token is timed.

What the service may see: the item's `prompts.intake_fields` (the prompt synthesised to the item's
prompt length with its category's content cue, the declared ``category``, ``max_tokens``), the same
inputs the simulator gives its intake, and — only as the benchmark-only body field
`driftsched_target_tokens`, which a benchmark-mode service hands to the simulated engine alone — the
item's true output length. Nothing else of the truth leaves this module.

Bounds: at most `len(items)` requests; nothing is sent after `duration_s`; every request is cut at
`timeout_s`; whatever is still open at last send + `timeout_s` is cancelled. Times are recorded on the
monotonic clock from the first send and reported in workload seconds (divided by `time_scale`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from driftsched.bench.prompts import intake_fields
from driftsched.sim.records import RunRecords
from driftsched.sim.workload import WorkloadItem

NAN = float("nan")


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send and as whom: `keys` is service tenant -> key, `tenant_map` workload -> service."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    keys: Mapping[str, str]
    tenant_map: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    send_target_tokens: bool = True

    def key_for(self, workload_tenant: str) -> str:
        service = self.tenant_map.get(workload_tenant, workload_tenant)
        key = self.keys.get(service)
        if key is None:
            raise ValueError(
                f"workload tenant {workload_tenant!r} maps to service tenant {service!r}, which has no "
                f"API key; add --keys {service}=<key> or --tenant-map {workload_tenant}=<tenant with a key>"
            )
        return key


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Pacing and bounds of one load run (see module docstring)."""

    time_scale: float = 1.0
    rate_rps: float | None = None
    duration_s: float | None = None
    timeout_s: float = 300.0
    seed: int = 0
    max_connections: int = 2048
    progress: bool = True
    block_tokens: int = 0
    """The workload's prefix block size (`Workload.block_tokens`): items' prefix blocks become shared text."""


@dataclass(slots=True)
class LiveRecord:
    """What the client saw of one request; times in real seconds from the first send."""

    tenant: str
    category: str
    scheduled_s: float
    send_s: float = NAN
    first_token_s: float = NAN
    last_token_s: float = NAN
    tokens: int = 0
    status: str = "not_sent"
    http_status: int | None = None
    service_category: str | None = None
    estimate: float = NAN


@dataclass(slots=True)
class LoadResult:
    records: list[LiveRecord]
    wall_s: float

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.records:
            out[rec.status] = out.get(rec.status, 0) + 1
        return dict(sorted(out.items()))


def send_times(items: Sequence[WorkloadItem], options: LoadOptions) -> list[float]:
    """Real seconds after the start at which each item is sent."""
    if options.rate_rps is not None:
        if options.rate_rps <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {options.rate_rps}")
        gaps = np.random.default_rng([options.seed, 7]).exponential(1.0 / options.rate_rps, len(items))
        return (np.cumsum(gaps) - gaps[0]).tolist() if items else []
    start = items[0].arrival_s if items else 0.0
    return [(it.arrival_s - start) * options.time_scale for it in items]


def request_body(item: WorkloadItem, target: Target, block_tokens: int = 0) -> dict[str, object]:
    """The `POST /v1/completions` body of one item: its `intake_fields`, then transport options."""
    fields = intake_fields(item, block_tokens)
    body: dict[str, object] = {
        "prompt": fields.prompt_text,
        "max_tokens": fields.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if fields.category is not None:
        body["category"] = fields.category
    if target.model is not None:
        body["model"] = target.model
    if target.send_target_tokens:
        body["driftsched_target_tokens"] = max(1, min(item.output_tokens, item.max_tokens))
    return body


async def _one(
    client: httpx.AsyncClient,
    url: str,
    key: str,
    body: dict[str, object],
    rec: LiveRecord,
    t0: float,
    timeout_s: float,
    session_id: str | None = None,
) -> None:
    rec.send_s = time.monotonic() - t0
    counted = 0
    try:
        async with asyncio.timeout(timeout_s):
            headers = {"Authorization": f"Bearer {key}"}
            if session_id is not None:
                headers["x-session-id"] = session_id
            async with client.stream("POST", url, json=body, headers=headers) as resp:
                rec.http_status = resp.status_code
                if resp.status_code != 200:
                    rec.status = f"http_{resp.status_code}:{_error_code(await resp.aread())}"
                    return
                rec.service_category = resp.headers.get("x-driftsched-category")
                rec.estimate = float(resp.headers.get("x-driftsched-estimated-tokens", NAN))
                rec.status = "truncated"  # until [DONE]
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        rec.status = "completed"
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        rec.status = f"stream_error:{chunk['error'].get('code')}"
                        return
                    if chunk.get("usage"):
                        rec.tokens = int(chunk["usage"]["completion_tokens"])
                    choices = chunk.get("choices") or ()
                    if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
                        rec.last_token_s = time.monotonic() - t0
                        if math.isnan(rec.first_token_s):
                            rec.first_token_s = rec.last_token_s
                        counted += 1
                if rec.tokens == 0:
                    rec.tokens = counted  # no usage chunk: one token per content chunk
    except TimeoutError:
        rec.status = "timeout"
    except httpx.HTTPError as exc:
        rec.status = f"error:{type(exc).__name__}"
    except (ValueError, KeyError) as exc:  # a malformed body or chunk
        rec.status = f"bad_response:{type(exc).__name__}"


def _error_code(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"].get("code") or "error")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "error"


async def run_load(
    items: Sequence[WorkloadItem],
    target: Target,
    options: LoadOptions,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadResult:
    """Send `items` open-loop to `target`; returns one record per item (unsent ones say so)."""
    from tqdm import tqdm

    times = send_times(items, options)
    records = [LiveRecord(it.tenant, it.category, t) for it, t in zip(items, times, strict=True)]
    keys = [target.key_for(it.tenant) for it in items]  # fail before sending anything
    url = target.base_url.rstrip("/") + "/completions"
    limits = httpx.Limits(
        max_connections=options.max_connections, max_keepalive_connections=options.max_connections
    )
    timeout = httpx.Timeout(options.timeout_s, connect=min(10.0, options.timeout_s))
    bar = tqdm(total=len(items), unit="req", disable=None if options.progress else True, leave=False)
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout, transport=transport) as client:
        t0 = time.monotonic()
        for item, rec, key, at in zip(items, records, keys, times, strict=True):
            if options.duration_s is not None and at > options.duration_s:
                break
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(
                _one(client, url, key, request_body(item, target, options.block_tokens), rec, t0,
                     options.timeout_s, item.session_id)
            )
            task.add_done_callback(lambda _t: bar.update(1))
            tasks.append(task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=options.timeout_s + 5.0)
            for task in pending:  # belt and braces: each request already has its own timeout
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        wall = time.monotonic() - t0
    bar.close()
    return LoadResult(records, wall)


def to_records(
    policy: str,
    items: Sequence[WorkloadItem],
    result: LoadResult,
    time_scale: float,
    estimator: dict[str, dict[str, float]] | None = None,
    extras: dict[str, object] | None = None,
) -> RunRecords:
    """Report records of the sent requests, in workload seconds; observed tokens stand for the truth.

    Rows are the sent items in workload order, a prefix of `items` (sending stops at the first item
    past the duration), so row *i* is item *i*. A row's category is the service's (its
    ``x-driftsched-category``) where it answered, else the item's own.
    """
    sent = [(it, r) for it, r in zip(items, result.records, strict=True) if r.status != "not_sent"]

    def col(values: list[float]) -> np.ndarray:
        return np.array(values, dtype=float)

    done = [r.status == "completed" for _, r in sent]
    finish = col([r.last_token_s if d else NAN for (_, r), d in zip(sent, done, strict=True)]) / time_scale
    makespan = float(np.nanmax(finish)) if any(done) else NAN  # first send to last token
    return RunRecords(
        policy=policy,
        tenant=np.array([it.tenant for it, _ in sent]),
        category=[r.service_category or it.category for it, r in sent],
        prompt_tokens=col([it.prompt_tokens for it, _ in sent]),
        max_tokens=col([it.max_tokens for it, _ in sent]),
        output_tokens=col([r.tokens if d else NAN for (_, r), d in zip(sent, done, strict=True)]),
        arrival=col([r.send_s for _, r in sent]) / time_scale,
        dispatch=np.full(len(sent), NAN),
        first_token=col([r.first_token_s for _, r in sent]) / time_scale,
        finish=finish,
        raw_estimate=np.full(len(sent), NAN),
        corrected_estimate=col([r.estimate for _, r in sent]),
        admitted=np.array([r.http_status == 200 for _, r in sent], dtype=bool),
        status=[r.status for _, r in sent],
        extras={
            "sent": len(sent),
            "statuses": result.statuses(),
            "wall_s": result.wall_s,
            "makespan_s": makespan,
            **(extras or {}),
        },
        estimator=estimator,
    )
