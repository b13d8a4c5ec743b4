"""Trace replay: a generic CSV format and loaders for the public traces in shared/traces.

Generic CSV: header ``arrival_s,tenant,category,prompt_tokens,max_tokens,output_tokens`` (any order; extra
columns are ignored: a request's tier comes with its tenant, as it does over HTTP). Bad rows raise
``TraceFormatError`` naming the file, line and column.

Public traces carry no tenant and no category, so both are assigned, seeded, from admission-time features
only (never from the true output length):

* tenants: drawn at random with the paper tenants' traffic shares (or given tenants, equal shares);
* categories: ``"random"`` draws from a fixed mix; ``"prompt_band"`` maps prompt length bands
  (``PROMPT_BANDS``) to categories, which keeps the trace's input-length/app-type correlation.

``max_tokens``: ``None`` uses one trace-wide cap (the largest output in the rows read, which reveals
nothing per request); a mapping sets a per-category cap, and outputs are clipped to it.

Prefix blocks: the Mooncake traces carry ``hash_ids``, remapped hashes of 512-token blocks (equal leading
ids, equal prefix); they become the items' ``prefix_blocks`` (`MOONCAKE_BLOCK_TOKENS`), whole blocks
only (the last id of a prompt that is not a multiple of 512 names a partial block, which no engine
shares). Their prompts run past the context of the models an L4 serves: ``max_prompt_tokens`` and
``max_request_tokens`` clip each prompt (to that many tokens; so that prompt + ``max_tokens`` fits) and
its blocks to the whole blocks that remain. The shared part of a prompt is its head, so a clip keeps it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path

import numpy as np

from driftsched.sim.perf_model import PerfModel
from driftsched.sim.workload import (
    CATEGORIES,
    PROFILES,
    TenantSpec,
    Workload,
    WorkloadItem,
    scale_to_load,
)

GENERIC_COLUMNS = ("arrival_s", "tenant", "category", "prompt_tokens", "max_tokens", "output_tokens")
PROMPT_BANDS: tuple[tuple[int, str], ...] = ((256, "qa"), (1024, "chat"), (2048, "code"))
BAND_TOP = "summarize"  # prompts at or above the last band bound
EPOCH = datetime(1970, 1, 1)  # naive: Azure stamps carry no zone; only differences matter
RANDOM_MIX = {"qa": 0.3, "chat": 0.3, "code": 0.15, "summarize": 0.15, "longform": 0.1}
MOONCAKE_BLOCK_TOKENS = 512  # tokens per `hash_ids` block (the trace's README)

Row = tuple[float, int, int, tuple[int, ...]]  # arrival_s, prompt tokens, output tokens, prefix blocks


class TraceFormatError(ValueError):
    """A trace file row that cannot be read; the message names file, line and column."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to turn a tenant-less trace into a workload; see the module docstring."""

    seed: int = 0
    limit: int | None = None
    tenants: tuple[TenantSpec, ...] | None = None
    category: str = "random"  # or "prompt_band"
    max_tokens: Mapping[str, int] | None = None
    perf: PerfModel | None = None  # with replicas and load: rescale arrivals to that load
    replicas: int = 1
    load: float | None = None
    max_prompt_tokens: int | None = None
    """Clip each prompt to this many tokens, and its prefix blocks to the whole blocks left."""
    max_request_tokens: int | None = None
    """The model's context: clip each prompt so that prompt + its ``max_tokens`` fits, blocks likewise."""


def _number(path: Path, line: int, column: str, raw: str | None, integer: bool = True) -> float:
    """Parse a non-negative number, or raise naming file, line and column."""
    try:
        value = (int(raw) if integer else float(raw)) if raw is not None else -1.0
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects NaN
        raise TraceFormatError(
            f"{path}:{line}: column {column!r}: expected a non-negative "
            f"{'integer' if integer else 'number'}, got {raw!r}"
        )
    return value


def _int(path: Path, line: int, column: str, raw: str | None) -> int:
    return int(_number(path, line, column, raw))


def load_csv(
    path: str | Path, tenants: Sequence[TenantSpec] | None = None, limit: int | None = None
) -> Workload:
    """Read a generic CSV trace; tenants not given default to tier 0, weight 1."""
    path = Path(path)
    items: list[WorkloadItem] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in GENERIC_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceFormatError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(items) >= limit:
                break
            if row["category"] not in CATEGORIES:
                raise TraceFormatError(
                    f"{path}:{line}: column 'category': {row['category']!r} is not one of {CATEGORIES}"
                )
            if not row["tenant"]:
                raise TraceFormatError(f"{path}:{line}: column 'tenant': empty")
            items.append(
                WorkloadItem(
                    _number(path, line, "arrival_s", row["arrival_s"], integer=False),
                    row["tenant"],
                    row["category"],
                    _int(path, line, "prompt_tokens", row["prompt_tokens"]),
                    _int(path, line, "max_tokens", row["max_tokens"]),
                    _int(path, line, "output_tokens", row["output_tokens"]),
                )
            )
    items.sort(key=lambda it: it.arrival_s)
    known = {t.name: t for t in tenants or ()}
    names = dict.fromkeys(it.tenant for it in items)
    specs = tuple(known.get(n, TenantSpec(n, tier=0, weight=1.0)) for n in names)
    return Workload(path.stem, items, specs)


def _build(name: str, rows: list[Row], opts: ReplayOptions, block_tokens: int = 0) -> Workload:
    """Assign tenants, categories and max_tokens to (arrival_s, prompt, output, blocks) rows; clip prompts."""
    rng = np.random.default_rng(opts.seed)
    n = len(rows)
    if opts.tenants:
        tenants, shares = opts.tenants, [1.0 / len(opts.tenants)] * len(opts.tenants)
    else:
        tenants, shares = tuple(p.spec for p in PROFILES), [p.share for p in PROFILES]
    tenant_of = rng.choice(len(tenants), size=n, p=shares).tolist()
    if opts.category == "random":
        cats = rng.choice(len(CATEGORIES), size=n, p=[RANDOM_MIX[c] for c in CATEGORIES]).tolist()
        category = [CATEGORIES[c] for c in cats]
    elif opts.category == "prompt_band":
        category = [next((c for b, c in PROMPT_BANDS if p < b), BAND_TOP) for _, p, _, _ in rows]
    else:
        raise ValueError(f"category={opts.category!r}: choose 'random' or 'prompt_band'")
    trace_cap = max((o for _, _, o, _ in rows), default=1)
    items = []
    for (t, prompt, output, blocks), ti, cat in zip(rows, tenant_of, category, strict=True):
        cap = trace_cap if opts.max_tokens is None else opts.max_tokens[cat]
        out = min(cap, max(1, output))
        prompt = min(max(1, prompt), _prompt_limit(opts, cap))
        if block_tokens:
            blocks = blocks[: prompt // block_tokens]
        items.append(WorkloadItem(t, tenants[ti].name, cat, prompt, cap, out, prefix_blocks=blocks))
    items.sort(key=lambda it: it.arrival_s)
    if opts.load is not None:
        items = scale_to_load(items, opts.perf or PerfModel(), opts.replicas, opts.load)
    return Workload(name, items, tuple(tenants), block_tokens=block_tokens)


def _prompt_limit(opts: ReplayOptions, max_tokens: int) -> int:
    """The longest prompt `opts` allows beside ``max_tokens`` (a very large number when unclipped)."""
    limit = opts.max_prompt_tokens if opts.max_prompt_tokens is not None else 1 << 62
    if opts.max_request_tokens is not None:
        limit = min(limit, opts.max_request_tokens - max_tokens)
    if limit < 1:
        raise ValueError(
            f"no room for a prompt: max_prompt_tokens={opts.max_prompt_tokens}, max_request_tokens="
            f"{opts.max_request_tokens} and max_tokens={max_tokens}; raise the limits or cap max_tokens"
        )
    return limit


def load_azure_conv(path: str | Path, opts: ReplayOptions = ReplayOptions()) -> Workload:
    """Azure LLM inference trace 2023 (TIMESTAMP, ContextTokens, GeneratedTokens): seconds from first."""
    path = Path(path)

    def rows() -> Iterator[tuple[float, int, int]]:
        with path.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
                except (ValueError, TypeError) as exc:
                    raise TraceFormatError(f"{path}:{line}: column 'TIMESTAMP': {exc}") from exc
                prompt = _int(path, line, "ContextTokens", row["ContextTokens"])
                output = _int(path, line, "GeneratedTokens", row["GeneratedTokens"])
                yield (stamp - EPOCH).total_seconds(), prompt, output

    data = list(islice(rows(), opts.limit))
    start = min((t for t, _, _ in data), default=0.0)
    return _build(path.stem, [(t - start, p, o, ()) for t, p, o in data], opts)


def load_mooncake(path: str | Path, opts: ReplayOptions = ReplayOptions()) -> Workload:
    """Mooncake FAST'25 JSONL trace (timestamp in ms, input_length, output_length, optional hash_ids)."""
    path = Path(path)
    size = MOONCAKE_BLOCK_TOKENS

    def rows() -> Iterator[Row]:
        with path.open() as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                    prompt = int(rec["input_length"])
                    ids = rec.get("hash_ids", [])
                    if not isinstance(ids, list) or not all(type(h) is int for h in ids):
                        raise TypeError(f"hash_ids must be a list of integers, got {ids!r:.60}")
                    output = int(rec["output_length"])
                    yield rec["timestamp"] / 1000.0, prompt, output, tuple(ids[: prompt // size])
                except (ValueError, KeyError, TypeError) as exc:
                    raise TraceFormatError(f"{path}:{line}: {type(exc).__name__}: {exc}") from exc

    return _build(path.stem, list(islice(rows(), opts.limit)), opts, block_tokens=size)


def load_sharegpt_lengths(
    path: str | Path, opts: ReplayOptions = ReplayOptions(), rate_rps: float = 1.0
) -> Workload:
    """ShareGPT length statistics (num_prefill_tokens, num_decode_tokens): seeded Poisson arrivals."""
    path = Path(path)

    def rows() -> Iterator[tuple[int, int]]:
        with path.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                prompt = _int(path, line, "num_prefill_tokens", row["num_prefill_tokens"])
                yield prompt, _int(path, line, "num_decode_tokens", row["num_decode_tokens"])

    data = list(islice(rows(), opts.limit))
    gaps = np.random.default_rng([opts.seed, 1]).exponential(1.0 / rate_rps, len(data))
    times = (np.cumsum(gaps) - gaps[0]).tolist() if data else []
    return _build(path.stem, [(t, p, o, ()) for t, (p, o) in zip(times, data, strict=True)], opts)
