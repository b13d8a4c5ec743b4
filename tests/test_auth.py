"""The key store and the /metrics scrape token (serve_app/auth.py): sources, bad input, constant time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app import auth
from serve_app.auth import KeyStore, ScrapeToken
from serve_app.config import AuthConfig

TENANTS = {"gold", "bronze"}
TOKEN = "scrape-token-0123456789"


def _config(**fields: object) -> AuthConfig:
    return AuthConfig.model_validate({"keys_env": None, "metrics_token_env": None, **fields})


def _store(**fields: object) -> KeyStore:
    return KeyStore.load(_config(**fields), TENANTS)


# ---------------------------------------------------------------- key store: sources


def test_demo_keys_map_bearer_headers_to_tenants() -> None:
    store = _store(demo_keys={"sk-gold": "gold", "sk-bronze": "bronze"})
    assert len(store) == 2
    assert store.tenant_for("Bearer sk-gold") == "gold"
    assert store.tenant_for("bearer  sk-bronze ") == "bronze"  # scheme case and padding do not matter
    bad = (None, "", "Bearer", "Bearer ", "Basic sk-gold", "sk-gold", "Bearer sk-gol", "Bearer sk-gold2")
    for header in bad:
        assert store.tenant_for(header) is None, header


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DS_KEYS", json.dumps({"sk-env": "bronze"}))
    store = _store(demo_keys={"sk-gold": "gold"}, keys_env="TEST_DS_KEYS")
    assert store.tenant_for("Bearer sk-env") == "bronze"
    assert store.tenant_for("Bearer sk-gold") == "gold"  # the sources add up


def test_an_unset_or_empty_environment_variable_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_DS_KEYS", raising=False)
    assert len(_store(keys_env="TEST_DS_KEYS")) == 0
    monkeypatch.setenv("TEST_DS_KEYS", "")
    assert len(_store(keys_env="TEST_DS_KEYS")) == 0


def test_keys_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"sk-file-1": "gold", "sk-file-2": "bronze"}))
    store = _store(keys_file=str(path))
    assert (store.tenant_for("Bearer sk-file-1"), store.tenant_for("Bearer sk-file-2")) == ("gold", "bronze")


# ---------------------------------------------------------------- key store: bad input


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "expected JSON"),
    ('["sk-a", "gold"]', "JSON object of key -> tenant"),
    ('{"sk-a": 1}', "JSON object of key -> tenant"),
    ('{"sk-a": "gold", "sk-a": "bronze"}', "listed twice"),
    ('{"sk-a": "gold", "sk-a": "gold"}', "listed twice"),
    ('{"": "gold"}', "empty or has surrounding whitespace"),
    ('{"   ": "gold"}', "empty or has surrounding whitespace"),
    ('{" sk-a": "gold"}', "empty or has surrounding whitespace"),
    ('{"sk-a": "silver"}', "unknown tenants ['silver']"),
], ids=["not-json", "list", "non-string", "dup-two-tenants", "dup-same-tenant", "empty", "blank", "padded",
        "unknown-tenant"])
def test_bad_key_files_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _store(keys_file=str(path))


def test_one_key_naming_two_tenants_across_sources_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"sk-shared": "bronze"}))
    with pytest.raises(ValueError, match="every key must name one tenant") as info:
        _store(demo_keys={"sk-shared": "gold"}, keys_file=str(path))
    assert "sk-shared" not in str(info.value), "a key must never appear in an error message"
    path.write_text(json.dumps({"sk-shared": "gold"}))  # the same key for the same tenant is fine
    store = _store(demo_keys={"sk-shared": "gold"}, keys_file=str(path))
    assert store.tenant_for("Bearer sk-shared") == "gold"


def test_an_empty_demo_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        _store(demo_keys={"": "gold"})


# ---------------------------------------------------------------- constant time


def _counting_compare(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = auth.hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    return calls


def test_every_lookup_compares_every_stored_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(demo_keys={f"sk-{i}": "gold" for i in range(5)})
    calls = _counting_compare(monkeypatch)
    for header in ("Bearer sk-0", "Bearer sk-4", "Bearer nobody"):
        calls.clear()
        store.tenant_for(header)
        assert len(calls) == 5, f"{header}: the lookup stopped early (timing would tell which key matched)"


def test_the_scrape_token_check_compares_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_DS_TOKEN", "scrape-token-from-env-xyz")
    token = ScrapeToken.load(_config(demo_metrics_token=TOKEN, metrics_token_env="TEST_DS_TOKEN"), _store())
    calls = _counting_compare(monkeypatch)
    assert token.allows(f"Bearer {TOKEN}") and len(calls) == 2
    calls.clear()
    assert not token.allows("Bearer wrong-token-0123456789") and len(calls) == 2


# ---------------------------------------------------------------- the scrape token


def test_no_token_configured_disables_metrics() -> None:
    token = ScrapeToken.load(_config(), _store())
    assert not token.enabled
    assert not token.allows("Bearer anything-at-all-long")
    assert not token.allows(None)


def test_token_sources_demo_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("scrape-token-from-file-abc\n")  # a trailing newline, as `echo` writes it
    monkeypatch.setenv("TEST_DS_TOKEN", "scrape-token-from-env-xyz")
    token = ScrapeToken.load(
        _config(demo_metrics_token=TOKEN, metrics_token_env="TEST_DS_TOKEN", metrics_token_file=str(path)),
        _store(),
    )
    assert token.enabled
    for secret in (TOKEN, "scrape-token-from-env-xyz", "scrape-token-from-file-abc"):
        assert token.allows(f"Bearer {secret}"), secret
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer scrape-token"):
        assert not token.allows(header), header


def test_a_tenant_key_never_opens_metrics() -> None:
    keys = _store(demo_keys={"sk-gold-0123456789": "gold"})
    token = ScrapeToken.load(_config(demo_metrics_token=TOKEN), keys)
    assert not token.allows("Bearer sk-gold-0123456789")
    with pytest.raises(ValueError, match="also a tenant's API key") as info:
        ScrapeToken.load(_config(demo_metrics_token="sk-gold-0123456789"), keys)
    assert "sk-gold-0123456789" not in str(info.value)


def test_short_tokens_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_DS_TOKEN", "short")
    with pytest.raises(ValueError, match=r"\$TEST_DS_TOKEN: the metrics token has 5 characters"):
        ScrapeToken.load(_config(metrics_token_env="TEST_DS_TOKEN"), _store())
    path = tmp_path / "token"
    path.write_text("   \n")
    with pytest.raises(ValueError, match="has 0 characters"):
        ScrapeToken.load(_config(metrics_token_file=str(path)), _store())
    with pytest.raises(ValueError, match="at least 16 characters"):
        _config(demo_metrics_token="short")  # caught when the app config is built
