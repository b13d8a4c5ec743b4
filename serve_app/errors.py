"""Every error the service answers, in one table: code -> (HTTP status, OpenAI error type).

Components report outcomes as values (`RejectReason`, `AcquireStatus`, an engine's `EngineErrorCode`);
this module is the one boundary that turns them into HTTP. A `GatewayError` is built from a code and a
message only, so no other place chooses a status or a type. Types follow the status class: 4xx answers
carry a client type (the caller can fix or retry the request), 5xx a server type.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from deployments.engine import EngineErrorCode
from deployments.scheduler_actor import AcquireResult, AcquireStatus
from driftsched.core.request import RejectReason


class ErrorCode(enum.StrEnum):
    """The `code` of every error body the service sends."""

    # admission (the values of `RejectReason`)
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_TENANT = "unknown_tenant"
    REQUEST_QUOTA = "tenant_request_quota"
    TOKEN_QUOTA = "tenant_token_quota"
    TENANT_QUEUE_FULL = "tenant_queue_full"
    OVERLOADED = "system_overloaded"
    SLO_UNREACHABLE = "slo_unreachable"
    SYSTEM_SLO_UNREACHABLE = "system_slo_unreachable"
    TIER_HOLDBACK = "tier_holdback"
    # the HTTP layer
    INVALID_BODY = "invalid_body"
    BODY_TOO_LARGE = "body_too_large"
    MODEL_NOT_FOUND = "model_not_found"
    INVALID_API_KEY = "invalid_api_key"
    NOT_FOUND = "not_found"  # no such path
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # GET /metrics: the scrape token only
    METRICS_DISABLED = "metrics_disabled"
    MISSING_METRICS_TOKEN = "missing_metrics_token"
    INVALID_METRICS_TOKEN = "invalid_metrics_token"
    # waiting for a slot
    QUEUE_TIMEOUT = "queue_timeout"
    SCHEDULER_UNAVAILABLE = "scheduler_unavailable"
    CANCELLED = "cancelled"
    RESUME_FAILED = "resume_failed"
    # running on a replica (engine failures carry the values of `EngineErrorCode`)
    REPLICA_FAILED = "replica_failed"
    REPLICA_STALLED = "replica_stalled"
    REPLICA_ERROR = "replica_error"
    ENGINE_DEAD = "engine_dead"
    ENGINE_ERROR = "engine_error"
    ENGINE_ABORTED = "engine_aborted"
    INTERNAL = "internal_error"


@dataclass(slots=True, frozen=True)
class ErrorKind:
    """How one code is answered."""

    status: int
    type: str


CLIENT_TYPES = frozenset({"invalid_request_error", "authentication_error", "permission_error",
                          "rate_limit_error", "cancelled"})
SERVER_TYPES = frozenset({"api_error", "overloaded_error", "timeout_error"})

_INVALID = ErrorKind(400, "invalid_request_error")
_RATE = ErrorKind(429, "rate_limit_error")
_OVERLOADED = ErrorKind(503, "overloaded_error")
_UPSTREAM = ErrorKind(502, "api_error")
_TIMEOUT = ErrorKind(504, "timeout_error")

ERRORS: dict[ErrorCode, ErrorKind] = {
    ErrorCode.INVALID_REQUEST: _INVALID,
    ErrorCode.UNKNOWN_TENANT: ErrorKind(401, "authentication_error"),
    ErrorCode.REQUEST_QUOTA: _RATE,
    ErrorCode.TOKEN_QUOTA: _RATE,
    ErrorCode.TENANT_QUEUE_FULL: _RATE,
    ErrorCode.OVERLOADED: _OVERLOADED,
    # SLO admission (driftsched.core.admission): a tenant above its fair share is told to slow down
    # (429, as for a quota); a pool short even for the tenants within theirs is the service's (503)
    ErrorCode.SLO_UNREACHABLE: _RATE,
    ErrorCode.SYSTEM_SLO_UNREACHABLE: _OVERLOADED,
    ErrorCode.TIER_HOLDBACK: _RATE,
    ErrorCode.INVALID_BODY: _INVALID,
    ErrorCode.BODY_TOO_LARGE: ErrorKind(413, "invalid_request_error"),
    ErrorCode.MODEL_NOT_FOUND: ErrorKind(404, "invalid_request_error"),
    ErrorCode.INVALID_API_KEY: ErrorKind(401, "authentication_error"),
    ErrorCode.NOT_FOUND: ErrorKind(404, "invalid_request_error"),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorKind(405, "invalid_request_error"),
    ErrorCode.METRICS_DISABLED: ErrorKind(404, "invalid_request_error"),
    ErrorCode.MISSING_METRICS_TOKEN: ErrorKind(401, "authentication_error"),
    ErrorCode.INVALID_METRICS_TOKEN: ErrorKind(403, "permission_error"),  # a credential, not this one
    ErrorCode.QUEUE_TIMEOUT: _TIMEOUT,
    ErrorCode.SCHEDULER_UNAVAILABLE: _OVERLOADED,
    ErrorCode.CANCELLED: ErrorKind(499, "cancelled"),  # nginx's "client closed request": nobody reads it
    ErrorCode.RESUME_FAILED: _UPSTREAM,
    ErrorCode.REPLICA_FAILED: _UPSTREAM,
    ErrorCode.REPLICA_STALLED: _TIMEOUT,
    ErrorCode.REPLICA_ERROR: _UPSTREAM,
    ErrorCode.ENGINE_DEAD: _OVERLOADED,
    ErrorCode.ENGINE_ERROR: _UPSTREAM,
    ErrorCode.ENGINE_ABORTED: _OVERLOADED,
    ErrorCode.INTERNAL: ErrorKind(500, "api_error"),
}

class GatewayError(Exception):
    """A request failed: its code, and the HTTP status and OpenAI error type the table gives it."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        kind = ERRORS[code]
        self.status, self.type, self.code, self.message = kind.status, kind.type, code, message
        self.retry_after_s = retry_after_s


def scheduler_unavailable() -> GatewayError:
    """The scheduler actor did not answer within the caller's deadline (it is restarting)."""
    return GatewayError(ErrorCode.SCHEDULER_UNAVAILABLE, "the scheduler is restarting; retry shortly", 1.0)


def reject_error(reason: RejectReason | None, detail: str, retry_after_s: float | None) -> GatewayError:
    """An admission rejection (a missing reason is taken as overload)."""
    return GatewayError(ErrorCode((reason or RejectReason.OVERLOADED).value), detail, retry_after_s)


def acquire_error(result: AcquireResult, queue_timeout_s: float) -> GatewayError:
    """A non-granted `acquire` outcome (`queue_timeout_s`: the deadline it waited under)."""
    if result.status is AcquireStatus.REJECTED:
        return reject_error(result.reason, result.detail, result.retry_after_s)
    if result.status is AcquireStatus.EXPIRED:
        return GatewayError(ErrorCode.QUEUE_TIMEOUT,
                            f"no replica slot within {queue_timeout_s:g}s; retry later")
    if result.status is AcquireStatus.CANCELLED:
        return GatewayError(ErrorCode.CANCELLED, "request cancelled")
    raise ValueError(f"{result.status} is not an error")


def engine_error(code: EngineErrorCode, message: str) -> GatewayError:
    """An engine's failure (every `EngineErrorCode` value is an `ErrorCode`)."""
    return GatewayError(ErrorCode(code.value), message)
