"""GET /metrics only for the scrape token, GET /v1/usage for a tenant's own figures.

The first tests are plain units (the latency quantiles, the usage report from a real scheduler core);
the rest run the real Serve app on 127.0.0.1 and talk HTTP.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from conftest import DEMO_KEYS, METRICS_HEADERS, METRICS_TOKEN, app_args
from factories import make_scheduler, make_ticket

from deployments.telemetry import LATENCY_BUCKETS_S, Histogram, RequestBook, RequestTimings
from deployments.usage import tenant_usage
from driftsched.core.config import TenantConfig

GOLD, BRONZE, TINY = ({t: k for k, t in DEMO_KEYS.items()}[name] for name in ("gold", "bronze", "tiny"))
ARGS = app_args(**{"replicas.seed": 1207})  # its own scheduler actor (named by the config's fingerprint)
MODEL = "driftsched-sim"


# ---------------------------------------------------------------- units


def test_histogram_quantiles_interpolate_within_buckets() -> None:
    hist = Histogram()
    assert hist.quantile(0.5) is None
    for _ in range(10):
        hist.observe(0.3)  # bucket (0.25, 0.5]
    assert hist.quantile(0.5) == pytest.approx(0.25 + 0.25 * 0.5)
    assert hist.quantile(1.0) == pytest.approx(0.5)
    hist.observe(1_000.0)  # past the last bound: the +Inf bucket answers the highest finite bound
    assert hist.quantile(0.99) == LATENCY_BUCKETS_S[-1]
    assert hist.quantile(0.5) <= hist.quantile(0.9) <= hist.quantile(0.99)


def test_usage_report_holds_one_tenant_only() -> None:
    limited = TenantConfig(name="a", requests_per_minute=60, tokens_per_minute=6000)
    core, clock = make_scheduler("fifo", limited, TenantConfig(name="b"))
    book = RequestBook()
    for seq in (1, 2, 3):
        assert core.admit(make_ticket(seq, "a", estimate=20.0, prompt_tokens=10)).admitted
    assert core.admit(make_ticket(4, "b")).admitted
    done = core.dispatch()
    assert done is not None and done.request_id == "r1"
    core.complete("r1", 7, observe=False)
    assert core.dispatch() is not None  # a2 running, a3 and b1 queued
    book.record(RequestTimings("a", queue_wait_s=0.02, ttft_s=0.1, e2e_s=0.4, output_tokens=7,
                               prompt_tokens=10))
    book.record(RequestTimings("b", e2e_s=9.0, output_tokens=99, prompt_tokens=55, outcome="timeout"))

    usage = tenant_usage(core, book, "a")
    assert usage is not None
    body = usage.to_json()
    assert body["tenant"] == "a" and body["object"] == "usage"
    assert body["requests"]["admitted"] == 3 and body["requests"]["completed"] == 1
    assert (body["queued"], body["running"]) == (1, 1)
    assert body["tokens"] == {"prompt": 10, "completion": 7}
    assert body["outcomes"] == {"ok": 1}
    assert body["latency_s"]["e2e"]["count"] == 1 and 0.25 <= body["latency_s"]["e2e"]["p50"] <= 0.5
    # three requests and their estimated tokens charged at t=0; the bucket refills at 1 request/s
    assert body["quota"]["requests_per_minute"] == {"limit": 60, "left": 57.0}
    assert body["quota"]["tokens_per_minute"]["limit"] == 6000
    clock.advance(2.0)
    assert tenant_usage(core, book, "a").to_json()["quota"]["requests_per_minute"]["left"] == 59.0  # type: ignore[union-attr]
    assert '"b"' not in json.dumps(body) and "9.0" not in json.dumps(body)
    other = tenant_usage(core, book, "b")
    assert other is not None and other.quota["requests_per_minute"] is None  # unlimited
    assert other.tokens == {"prompt": 55, "completion": 99} and other.outcomes == {"timeout": 1}
    assert tenant_usage(core, book, "nobody") is None


# ---------------------------------------------------------------- the live app


@pytest.fixture(scope="module")
def root(serve_cluster: Any) -> str:
    return serve_cluster.deploy(ARGS).removesuffix("/v1")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _complete(root: str, key: str, prompt: str, tokens: int) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens}
    return httpx.post(root + "/v1/completions", json=body, headers=_bearer(key), timeout=30)


def _usage(root: str, key: str) -> dict[str, Any]:
    resp = httpx.get(root + "/v1/usage", headers=_bearer(key), timeout=10)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.mark.slow
def test_metrics_answers_the_scrape_token_and_no_tenant_key(root: str) -> None:
    assert _error(httpx.get(root + "/metrics", timeout=10), 401)["code"] == "missing_metrics_token"
    for key in (GOLD, BRONZE, "not-a-key-at-all-123"):
        error = _error(httpx.get(root + "/metrics", headers=_bearer(key), timeout=10), 403)
        assert error["code"] == "invalid_metrics_token" and error["type"] == "permission_error"
        assert key not in error["message"]
    resp = httpx.get(root + "/metrics", headers=METRICS_HEADERS, timeout=10)
    assert resp.status_code == 200
    assert "driftsched_scheduler_up 1.0" in resp.text
    assert 'driftsched_policy_info{policy="sjf"}' in resp.text
    # the scrape token is no tenant key either
    _error(httpx.get(root + "/v1/usage", headers=METRICS_HEADERS, timeout=10), 401)
    _error(httpx.get(root + "/v1/models", headers=METRICS_HEADERS, timeout=10), 401)


@pytest.mark.slow
def test_health_is_public_and_names_no_tenant(root: str) -> None:
    resp = httpx.get(root + "/healthz", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "policy": "sjf"}


@pytest.mark.slow
def test_usage_needs_a_tenant_key(root: str) -> None:
    assert _error(httpx.get(root + "/v1/usage", timeout=10), 401)["code"] == "invalid_api_key"
    _error(httpx.get(root + "/v1/usage", headers=_bearer("sk-test-nobody"), timeout=10), 401)
    _error(httpx.get(root + "/v1/usage", headers={"Authorization": GOLD}, timeout=10), 401)  # no scheme


def _wait_completed(root: str, key: str, completed: int) -> dict[str, Any]:
    """Usage once `completed` requests are counted (the release that counts them is fire-and-forget)."""
    deadline = time.monotonic() + 10
    while True:
        usage = _usage(root, key)
        if usage["requests"]["completed"] >= completed or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)


@pytest.mark.slow
def test_each_tenant_sees_its_own_usage_only(root: str) -> None:
    before = {key: _usage(root, key) for key in (GOLD, BRONZE, TINY)}
    replies = [_complete(root, GOLD, f"gold question number {i}", 5 + i) for i in range(3)]
    replies.append(_complete(root, BRONZE, "a bronze question", 4))
    assert [r.status_code for r in replies] == [200] * 4
    gold_prompt = sum(r.json()["usage"]["prompt_tokens"] for r in replies[:3])
    gold_completion = sum(r.json()["usage"]["completion_tokens"] for r in replies[:3])
    tiny = [_complete(root, TINY, "tiny", 2).status_code for _ in range(3)]
    assert tiny.count(429) >= 1, tiny  # 2 requests/min

    gold = _wait_completed(root, GOLD, before[GOLD]["requests"]["completed"] + 3)
    bronze = _wait_completed(root, BRONZE, before[BRONZE]["requests"]["completed"] + 1)
    assert gold["tenant"] == "gold" and bronze["tenant"] == "bronze"
    assert gold["requests"]["completed"] - before[GOLD]["requests"]["completed"] == 3
    assert gold["outcomes"]["ok"] - before[GOLD]["outcomes"].get("ok", 0) == 3
    assert gold["tokens"]["completion"] - before[GOLD]["tokens"]["completion"] == gold_completion
    assert gold["tokens"]["prompt"] - before[GOLD]["tokens"]["prompt"] == gold_prompt
    assert bronze["requests"]["completed"] - before[BRONZE]["requests"]["completed"] == 1
    assert (bronze["tokens"]["completion"] - before[BRONZE]["tokens"]["completion"]
            == replies[3].json()["usage"]["completion_tokens"])
    assert (gold["queued"], gold["running"]) == (0, 0)
    for stage in ("queue_wait", "ttft", "e2e"):
        figures = gold["latency_s"][stage]
        assert figures["count"] >= 3
        assert 0 <= figures["p50"] <= figures["p90"] <= figures["p99"]
    assert gold["quota"]["requests_per_minute"] is None  # gold has no quota

    tiny_usage = _usage(root, TINY)
    rejected = tiny_usage["requests"]["rejected"].get("tenant_request_quota", 0)
    assert rejected - before[TINY]["requests"]["rejected"].get("tenant_request_quota", 0) == tiny.count(429)
    assert tiny_usage["quota"]["requests_per_minute"]["limit"] == 2
    assert tiny_usage["quota"]["requests_per_minute"]["left"] < 1

    for key, own, others in ((GOLD, "gold", ("bronze", "tiny")), (BRONZE, "bronze", ("gold", "tiny")),
                             (TINY, "tiny", ("gold", "bronze"))):
        text = httpx.get(root + "/v1/usage", headers=_bearer(key), timeout=10).text
        assert f'"{own}"' in text
        for other in others:
            assert other not in text, f"{own}'s usage mentions {other}"


@pytest.mark.slow
def test_metrics_is_off_without_a_token(serve_cluster: Any, root: str) -> None:
    """Last in the module: it redeploys the app with no metrics token."""
    serve_cluster.deploy(app_args(**{"replicas.seed": 1207, "auth.demo_metrics_token": None}))
    error = _error(httpx.get(root + "/metrics", headers=METRICS_HEADERS, timeout=10), 404)
    assert error["code"] == "metrics_disabled"
    assert "auth.metrics_token_env" in error["message"] and METRICS_TOKEN not in error["message"]
    assert _usage(root, GOLD)["tenant"] == "gold"  # the tenant side is unaffected
