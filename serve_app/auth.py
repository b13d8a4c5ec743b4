"""Who is calling: `Authorization: Bearer <key>` to a tenant name, or to the /metrics scraper.

Keys and the scrape token are held only as SHA-256 digests and every check compares the presented
value's digest against *every* stored digest with `hmac.compare_digest`, so timing reveals neither a
secret nor which tenant matched. Secrets never appear in logs or error messages. The scrape token and
the tenant keys are disjoint: a tenant key never opens /metrics (every tenant's figures).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from serve_app.config import AuthConfig

logger = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _bearer(authorization: str | None) -> bytes | None:
    """The digest of the secret in an `Authorization: Bearer <secret>` value; None if there is none."""
    if not authorization:
        return None
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return _digest(secret.strip())


def _sources(env: str | None, file: str | None) -> list[tuple[str, str]]:
    """(where, text) of a secret configured by environment variable and/or file; unset ones skipped."""
    sources: list[tuple[str, str]] = []
    if env and os.environ.get(env):
        sources.append((f"${env}", os.environ[env]))
    if file:
        sources.append((file, Path(file).read_text(encoding="utf-8")))
    return sources


def _parse_keys(where: str, text: str) -> dict[str, str]:
    """JSON {"<key>": "<tenant>"}; a key given twice in one document is refused, not silently merged."""

    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError(f"{where}: the same API key is listed twice; keep one entry per key")
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError:
        raise ValueError(f"{where}: expected JSON {{\"<key>\": \"<tenant>\"}}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{where}: expected a JSON object of key -> tenant strings")
    return data


def _merge_keys(keys: dict[str, str], where: str, more: Mapping[str, str]) -> None:
    """Add `more` to `keys`; an empty or padded key, or one key naming two tenants, is an error."""
    for key, tenant in more.items():
        if not key.strip() or key != key.strip():
            raise ValueError(f"{where}: an API key is empty or has surrounding whitespace; fix or remove it")
        if keys.get(key, tenant) != tenant:
            raise ValueError(f"{where}: an API key of tenant {tenant!r} is already the key of "
                             f"{keys[key]!r}; every key must name one tenant")
        keys[key] = tenant


class KeyStore:
    """Constant-time key -> tenant lookup (see module docstring)."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._entries = [(_digest(key), tenant) for key, tenant in keys.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant of an `Authorization` header value, or None."""
        presented = _bearer(authorization)
        if presented is None:
            return None
        found = None
        for digest, tenant in self._entries:  # no early exit
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found

    @classmethod
    def load(cls, config: AuthConfig, tenants: set[str]) -> KeyStore:
        """Demo keys, then the environment variable, then the file; unknown tenants are an error."""
        keys: dict[str, str] = {}
        _merge_keys(keys, "auth.demo_keys", config.demo_keys)
        for where, text in _sources(config.keys_env, config.keys_file):
            _merge_keys(keys, where, _parse_keys(where, text))
        unknown = sorted(set(keys.values()) - tenants)
        if unknown:
            raise ValueError(f"API keys name unknown tenants {unknown}; add them under core.tenants")
        logger.info("loaded API keys for %d tenants", len(set(keys.values())))
        return cls(keys)


MIN_TOKEN_CHARS = 16


class ScrapeToken:
    """The bearer token(s) that open GET /metrics, held as digests; none configured: /metrics is off.

    Every configured source counts (the demo token, the environment variable, the file), so a new
    token can be rolled out beside the old one before the old one goes.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(token) for token in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries a scrape token."""
        presented = _bearer(authorization)
        if presented is None:
            return False
        allowed = False
        for digest in self._digests:  # no early exit
            allowed |= hmac.compare_digest(presented, digest)
        return allowed

    @classmethod
    def load(cls, config: AuthConfig, keys: KeyStore) -> ScrapeToken:
        """The configured tokens; each must be long enough and must not be a tenant's API key."""
        sources = _sources(config.metrics_token_env, config.metrics_token_file)
        if config.demo_metrics_token is not None:
            sources.insert(0, ("auth.demo_metrics_token", config.demo_metrics_token))
        tokens = []
        for where, text in sources:
            token = text.strip()
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(f"{where}: the metrics token has {len(token)} characters; use at least "
                                 f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 24`)")
            if keys.tenant_for(f"Bearer {token}") is not None:
                raise ValueError(f"{where}: the metrics token is also a tenant's API key; use a separate "
                                 "secret, or any tenant could read every tenant's metrics")
            tokens.append(token)
        if not tokens:
            logger.warning("no metrics token configured: GET /metrics is disabled "
                           "(see auth.metrics_token_env)")
        return cls(tokens)
