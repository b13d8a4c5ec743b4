"""OpenAI-style request bodies, response shapes and error bodies.

Only what DriftSched serves is modelled; unknown fields are ignored as OpenAI's SDK sends many.
Types are strict (a string is not a number). `category` is DriftSched's own optional field: a caller
may declare its request's category (one of `driftsched.core.config.CATEGORIES`), which the classifier
then takes as given. `driftsched_target_tokens` is a benchmark-only field:
the ingress passes it to the engine (simulated or vLLM) when benchmark mode is on, and nowhere else.

Latency objectives: OpenAI's `service_tier` picks the QoS tier within what the tenant may use, and the
headers `x-driftsched-ttft-ms` / `x-driftsched-tpot-ms` ask for stricter objectives than the tenant's
(`driftsched.core.slo`). Responses name the tier and the objectives the request is held to in the
`x-driftsched-*-target-ms` headers, and the body's `service_tier` says which tier it ran at.

Sessions: the optional header `x-session-id` (the name Dynamo, Ray Serve LLM and AIBrix accept) names
the caller's conversation or agent run. It is a placement hint only: requests of one session share a
growing prefix, so where the prompt is too short to hash a whole block the scheduler can still send it
to the replica that served the session last. A request without it is served the same way.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from deployments.engine import Usage
from driftsched.core.config import CATEGORIES
from driftsched.core.slo import SERVICE_TIERS

MAX_STOPS = 16
MAX_MESSAGES = 4096

TTFT_HEADER = "x-driftsched-ttft-ms"
"""Request header: a stricter time-to-first-token objective, in milliseconds."""
TPOT_HEADER = "x-driftsched-tpot-ms"
"""Request header: a stricter time-per-output-token objective, in milliseconds."""
TTFT_TARGET_HEADER = "x-driftsched-ttft-target-ms"
TPOT_TARGET_HEADER = "x-driftsched-tpot-target-ms"
TIER_HEADER = "x-driftsched-tier"
SESSION_HEADER = "x-session-id"
"""Request header: the caller's session (conversation, agent run), a cache-aware placement hint."""
MAX_SESSION_ID_CHARS = 128
"""Longest session id accepted: it is kept per session by the scheduler, so its size is bounded."""


class HeaderError(ValueError):
    """A request header with a value that cannot be used; `header` names it (the error's `param`)."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(message)
        self.header = header


def objective_asks(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """The (TTFT, TPOT) objectives in seconds a request asks for in its headers, None where absent.

    `HeaderError` for a value that is not a positive, finite number of milliseconds. Whether an ask is
    within the tenant's allowance is the intake's to decide (`driftsched.core.intake.Intake.objectives`).
    """
    asks: list[float | None] = []
    for header in (TTFT_HEADER, TPOT_HEADER):
        raw = headers.get(header)
        if raw is None:
            asks.append(None)
            continue
        try:
            ms = float(raw.strip())
        except ValueError:
            ms = math.nan
        if not (math.isfinite(ms) and ms > 0):
            raise HeaderError(header, f"{header} must be a positive number of milliseconds such as 800, "
                                      f"got {raw[:40]!r}")
        asks.append(ms / 1000)
    return asks[0], asks[1]


def session_id(headers: Mapping[str, str]) -> str | None:
    """The session a request names in `SESSION_HEADER`, None where absent.

    `HeaderError` unless it is 1 to `MAX_SESSION_ID_CHARS` printable ASCII characters (surrounding
    spaces ignored): the id is a key the scheduler keeps, and an empty or binary one is a client bug.
    """
    raw = headers.get(SESSION_HEADER)
    if raw is None:
        return None
    value = raw.strip()
    if not (0 < len(value) <= MAX_SESSION_ID_CHARS and value.isascii() and value.isprintable()):
        raise HeaderError(SESSION_HEADER, f"{SESSION_HEADER} must be 1 to {MAX_SESSION_ID_CHARS} printable "
                                          f"ASCII characters, got {len(raw)} characters starting "
                                          f"{raw[:20]!r}")
    return value


def tier_name(tier: int, tenant_tier: int) -> str:
    """OpenAI's `service_tier` for a request that ran at `tier` of a tenant whose own tier is
    `tenant_tier`: a better tier is ``priority``, a worse one ``flex``, its own ``default``."""
    return "priority" if tier < tenant_tier else "flex" if tier > tenant_tier else "default"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    """Sampling seed; a signed 64-bit integer."""
    stream: bool = False
    stream_options: dict[str, object] | None = None
    stop: str | list[str] | None = None
    """One stop string or up to MAX_STOPS of them."""
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    category: str | None = None
    """Declared category; wins over classification. None: classified from the prompt."""
    service_tier: str | None = None
    """OpenAI's service tier (`SERVICE_TIERS`); None or ``auto``/``default``: the tenant's tier."""
    driftsched_target_tokens: int | None = Field(default=None, ge=1)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(value)}")
        return value

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str | None) -> str | None:
        if value is not None and value not in CATEGORIES:
            valid = ", ".join(CATEGORIES)
            # No template context, so a value that looks like "{valid}" stays literal.
            raise PydanticCustomError(
                "unknown_category", f"{value[:40]!r} is not a category; use one of {valid}, or omit it"
            )
        return value

    @field_validator("service_tier")
    @classmethod
    def _known_service_tier(cls, value: str | None) -> str | None:
        if value is not None and value not in SERVICE_TIERS:
            valid = ", ".join(SERVICE_TIERS)
            message = f"{value[:40]!r} is not a service tier; use one of {valid}, or omit it"
            raise PydanticCustomError("unknown_service_tier", message)
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionBody(_Body):
    """POST /v1/completions."""

    prompt: str | list[str] = Field(min_length=1)

    def prompt_text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("only one prompt per request is supported")
            return self.prompt[0]
        return self.prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, object]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatBody(_Body):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def message_dicts(self) -> list[dict[str, str]]:
        """The messages as {"role", "content"} text, for `serve_app.prompts` to render."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage_dict(usage: Usage) -> dict[str, object]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens` where the engine reports its cache."""
    body: dict[str, object] = {"prompt_tokens": usage.prompt_tokens,
                               "completion_tokens": usage.completion_tokens,
                               "total_tokens": usage.total_tokens}
    if usage.cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return body


class ResponseShaper:
    """Builds one request's OpenAI response objects (chat or text completion)."""

    def __init__(self, chat: bool, model: str, service_tier: str | None = None) -> None:
        self.chat = chat
        self.model = model
        self.service_tier = service_tier
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, object]:
        base: dict[str, object] = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        if self.service_tier is not None:
            base["service_tier"] = self.service_tier
        return base

    def full(self, text: str, finish_reason: str | None, usage: Usage) -> dict[str, object]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": finish_reason}
            body = self._base("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            body = self._base("text_completion")
        return {**body, "choices": [choice], "usage": usage_dict(usage)}

    def chunk(self, text: str, finish_reason: str | None = None, first: bool = False) -> str:
        if self.chat:
            delta = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            body = self._base("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            body = self._base("text_completion")
        return sse({**body, "choices": [choice]})

    def usage_chunk(self, usage: Usage) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({**self._base(obj), "choices": [], "usage": usage_dict(usage)})


def sse(data: Mapping[str, object]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
