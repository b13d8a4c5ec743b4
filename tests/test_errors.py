"""The error table: total over every outcome a component reports, and consistent in itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deployments.engine import EngineErrorCode
from deployments.scheduler_actor import AcquireResult, AcquireStatus
from driftsched.core.request import RejectReason
from serve_app.errors import (
    CLIENT_TYPES,
    ERRORS,
    SERVER_TYPES,
    ErrorCode,
    GatewayError,
    acquire_error,
    engine_error,
    reject_error,
)

SERVE_APP = Path(__file__).resolve().parents[1] / "serve_app"


def test_every_code_has_one_answer():
    assert set(ERRORS) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_status_class_matches_error_type(code):
    kind = ERRORS[code]
    assert 400 <= kind.status < 600
    expected = CLIENT_TYPES if kind.status < 500 else SERVER_TYPES
    assert kind.type in expected, (code, kind)


@pytest.mark.parametrize("reason", list(RejectReason))
def test_every_rejection_reason_is_answered_with_its_own_code(reason):
    err = reject_error(reason, "detail", 2.0)
    assert (err.code, err.message, err.retry_after_s) == (reason.value, "detail", 2.0)
    assert err.status in {400, 401, 429, 503}


def test_a_rejection_without_a_reason_is_overload():
    assert reject_error(None, "", None).code is ErrorCode.OVERLOADED


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (AcquireResult(AcquireStatus.REJECTED, reason=RejectReason.TOKEN_QUOTA, detail="d",
                       retry_after_s=3.0), ErrorCode.TOKEN_QUOTA),
        (AcquireResult(AcquireStatus.EXPIRED), ErrorCode.QUEUE_TIMEOUT),
        (AcquireResult(AcquireStatus.CANCELLED), ErrorCode.CANCELLED),
    ],
)
def test_every_unsuccessful_acquire_outcome_has_an_error(result, code):
    err = acquire_error(result, 7.0)
    assert err.code is code
    assert (err.status, err.type) == (ERRORS[code].status, ERRORS[code].type)


def test_acquire_outcomes_are_all_covered_and_a_grant_is_no_error():
    covered = {AcquireStatus.REJECTED, AcquireStatus.EXPIRED, AcquireStatus.CANCELLED}
    assert covered | {AcquireStatus.GRANTED} == set(AcquireStatus)
    assert "7s" in acquire_error(AcquireResult(AcquireStatus.EXPIRED), 7.0).message
    with pytest.raises(ValueError, match="not an error"):
        acquire_error(AcquireResult(AcquireStatus.GRANTED, "r0"), 7.0)


@pytest.mark.parametrize("code", list(EngineErrorCode))
def test_every_engine_failure_has_an_answer(code):
    err = engine_error(code, "m")
    assert err.code == code.value and err.message == "m"
    assert (err.status >= 500) == (code is not EngineErrorCode.INVALID_REQUEST)


def _literal_status_type_pairs(path: Path) -> list[str]:
    """Calls in `path` that pass an int literal 4xx/5xx next to a string literal ending in "_error"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        consts = [a.value for a in node.args if isinstance(a, ast.Constant)]
        statuses = [c for c in consts if isinstance(c, int) and 400 <= c < 600]
        types = [c for c in consts if isinstance(c, str) and c.endswith("_error")]
        if statuses and types:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_module_but_the_table_writes_a_status_and_type():
    offenders = [hit for path in sorted(SERVE_APP.glob("*.py")) if path.name != "errors.py"
                 for hit in _literal_status_type_pairs(path)]
    assert offenders == []


def test_a_gateway_error_takes_status_and_type_from_the_table():
    err = GatewayError(ErrorCode.BODY_TOO_LARGE, "too big")
    assert (err.status, err.type, err.code, str(err)) == (413, "invalid_request_error", "body_too_large",
                                                          "too big")
