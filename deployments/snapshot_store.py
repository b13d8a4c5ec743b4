"""Where the drift actor keeps its snapshot: a local file, or a key in Redis.

`gateway.drift_snapshot_path` names the place, and `open_snapshot_store` picks the store from it:

* a file path (the local default): written atomically (a temporary file, then a rename), so a reader
  sees the previous snapshot or the new one, never half of one. On a multi-node cluster the file would
  have to be on storage every node mounts, as a restarted drift actor may come up on any node.
* ``redis://host[:port]/key``: one Redis string value (``SET`` replaces it whole, ``GET`` reads it). On
  GKE this is the Redis the RayService already runs for GCS fault tolerance, reachable from every pod,
  so a restarted drift actor finds the snapshot wherever it lands. The password is never written in the
  URL (config is not secret); it is read from the environment variable `REDIS_PASSWORD_ENV` of the
  drift actor's process, where the deployment puts it from a Secret, and sent with ``AUTH``.

The Redis client is the smallest one that serves: RESP2 over one asyncio connection per operation,
commands ``AUTH``, ``GET`` and ``SET`` (https://redis.io/docs/latest/develop/reference/protocol-spec/).
A snapshot is written every few seconds at most, so a connection per write costs nothing that matters,
and there is no connection state to repair after Redis restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

REDIS_PASSWORD_ENV = "DRIFTSCHED_REDIS_PASSWORD"
"""Environment variable holding the password of a ``redis://`` snapshot location (unset: no AUTH)."""
REDIS_DEFAULT_PORT = 6379


class SnapshotStore(Protocol):
    """Reads and replaces one snapshot text."""

    @property
    def where(self) -> str:
        """The location, for log lines (never a secret)."""

    async def load(self) -> str | None:
        """The stored snapshot, None if there is none yet; raises OSError if the store is unreachable."""

    async def save(self, text: str) -> None:
        """Replace the stored snapshot with `text` (all or nothing); raises OSError on failure."""


def open_snapshot_store(location: str, env: Mapping[str, str] | None = None) -> SnapshotStore:
    """The store for `location` (see module docstring); ValueError, naming the fix, if it is malformed.

    `env` is where a Redis password is looked up (default: this process's environment); building a
    store does no I/O.
    """
    if "://" not in location:
        if not location.strip():
            raise ValueError("the drift snapshot location is empty; give a file path or redis://host:port/key")
        return FileSnapshotStore(Path(location))
    url = urlsplit(location)
    if url.scheme != "redis":
        raise ValueError(f"drift snapshot location {location!r}: only file paths and redis:// URLs are "
                         "supported")
    if url.password is not None or url.username:
        raise ValueError("a redis:// drift snapshot location must not carry credentials; put the "
                         f"password in the environment variable {REDIS_PASSWORD_ENV}")
    key = url.path.lstrip("/")
    if not url.hostname or not key or url.query or url.fragment:
        raise ValueError(f"drift snapshot location {location!r}: write it as redis://host[:port]/key")
    try:
        port = url.port or REDIS_DEFAULT_PORT
    except ValueError:
        raise ValueError(f"drift snapshot location {location!r} has an invalid port") from None
    password = (os.environ if env is None else env).get(REDIS_PASSWORD_ENV) or None
    return RedisSnapshotStore(url.hostname, port, key, password)


@dataclass(frozen=True, slots=True)
class FileSnapshotStore:
    """A snapshot in one local file, replaced atomically."""

    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    async def load(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    async def save(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)


class RedisError(OSError):
    """Redis answered with an error (e.g. a wrong password), or with something that is not RESP."""


@dataclass(frozen=True, slots=True)
class RedisSnapshotStore:
    """A snapshot as one Redis string value (see module docstring)."""

    host: str
    port: int
    key: str
    password: str | None = None
    timeout_s: float = 5.0

    @property
    def where(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.key}"

    async def load(self) -> str | None:
        value = await self._command(b"GET", self.key.encode())
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise RedisError(f"GET {self.key} answered {value!r}, not a string")
        return value.decode("utf-8")

    async def save(self, text: str) -> None:
        answer = await self._command(b"SET", self.key.encode(), text.encode("utf-8"))
        if answer != b"OK":
            raise RedisError(f"SET {self.key} answered {answer!r}")

    async def _command(self, *args: bytes) -> bytes | int | None:
        """Run one command on a fresh connection (after AUTH when a password is set); its reply."""
        try:
            return await asyncio.wait_for(self._exchange(args), self.timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{self.where} did not answer within {self.timeout_s:g}s") from None

    async def _exchange(self, args: tuple[bytes, ...]) -> bytes | int | None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            if self.password is not None:
                writer.write(encode_command(b"AUTH", self.password.encode()))
            writer.write(encode_command(*args))
            await writer.drain()
            if self.password is not None:
                await read_reply(reader)  # an error reply (wrong password) raises here
            return await read_reply(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def encode_command(*args: bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


async def read_reply(reader: asyncio.StreamReader) -> bytes | int | None:
    """One RESP2 reply that is not an array: simple string, error (raised), integer or bulk string."""
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError("the connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisError(body.decode("utf-8", "replace"))
    try:
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            return None if size < 0 else (await reader.readexactly(size + 2))[:-2]
    except (ValueError, asyncio.IncompleteReadError):
        raise RedisError(f"a malformed or cut reply {line[:40]!r}") from None
    raise RedisError(f"unexpected reply {line[:40]!r}")
