"""Tenant authentication: `Authorization: Bearer <key>` to a tenant name.

Keys are held only as SHA-256 digests and every lookup compares the presented key's digest against
*every* stored digest with `hmac.compare_digest`, so timing reveals neither a key nor which tenant
matched. Keys never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from serve_app.config import AuthConfig

logger = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyStore:
    """Constant-time key -> tenant lookup (see module docstring)."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._entries = [(_digest(key), tenant) for key, tenant in keys.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant of an `Authorization` header value, or None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = _digest(key.strip())
        found = None
        for digest, tenant in self._entries:  # no early exit
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found

    @classmethod
    def load(cls, config: AuthConfig, tenants: set[str]) -> KeyStore:
        """Demo keys, then the environment variable, then the file; unknown tenants are an error."""
        keys = dict(config.demo_keys)
        sources: list[tuple[str, str]] = []
        if config.keys_env and os.environ.get(config.keys_env):
            sources.append((f"${config.keys_env}", os.environ[config.keys_env]))
        if config.keys_file:
            sources.append((config.keys_file, Path(config.keys_file).read_text(encoding="utf-8")))
        for where, text in sources:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{where}: expected JSON {{\"<key>\": \"<tenant>\"}}") from None
            if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in data.items()
            ):
                raise ValueError(f"{where}: expected a JSON object of key -> tenant strings")
            keys.update(data)
        unknown = sorted(set(keys.values()) - tenants)
        if unknown:
            raise ValueError(f"API keys name unknown tenants {unknown}; add them under core.tenants")
        logger.info("loaded API keys for %d tenants", len(set(keys.values())))
        return cls(keys)
