"""Cache-aware placement on real vLLM (CPU build): one multi-turn workload through DriftSched, placed by
`driftsched` and by `most-free-kv`, side by side.

Two apps that differ only in `core.scheduler.placement.rule` are deployed together, each under its own
route prefix, each with two vLLM replicas (automatic prefix caching on, the engine's own KV blocks of
`KV_BLOCK` tokens, prompts hashed by the ingress in blocks of `HASH_BLOCK`) on a tiny random Llama
heavy enough (`--model`, default 512x4) that prefilling a long context takes a noticeable share of a
second on a CPU core, as it takes a noticeable share of a TTFT on a GPU. Each seed's workload is
replayed against both apps in turn, the order swapped every seed, so a machine that gets busier weighs
on both alike.

The workload is sessions arriving as a Poisson process (`--rate` per second), two tenants:

* ``chat``: a conversation of 4 to 8 turns under the tenant's shared system prompt (100 words); each
  turn sends every earlier message and answer back plus a new question (20 to 60 words) after a think
  time (exponential, mean 1 s), and is answered with 32 tokens;
* ``agent``: a task (60 to 100 words) of 4 to 8 steps whose context grows by a tool result (40 to 100
  words) per step, sent after the tool's run time (exponential, mean 0.3 s), each answered with 16
  tokens.

Turn k's prompt begins with turn k-1's whole prompt, so it finds that prefix cached only on the replica
that ran turn k-1 (or one that ran an earlier turn: a shorter prefix). The output lengths are fixed
through the benchmark-only `driftsched_target_tokens`, so the two placements do the same work.

Printed per placement (median over seeds, after a line per seed): the prefix-cache hit rate the
engines report (their `prefix_cache_hits / prefix_cache_queries` over the replay, read from /metrics:
every prompt lookup vLLM made), the hit rate of the requests (`usage.prompt_tokens_details.cached_tokens`
over prompt tokens), TTFT p50 and p90 (request sent to its first streamed text, seconds of wall time
here), E2E p50, and the busiest replica's share of the requests over the mean share; then the ratios
`driftsched` / `most-free-kv` of each seed, median over seeds. `--out DIR` writes DIR/summary.json and
DIR/results.md (`--results-md PATH` also writes the page there).

Run (takes the heavy lock in this repository's workflow; ~1.5 min start-up, then ~1 min per seed per
placement at the defaults on 2 cores):
    .venv/bin/python benchmarks/bench_prefix_live.py [--seeds 3] [--sessions 24] [--rate 0.8]
    [--model 512x4] [--out DIR] [--results-md PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RULES = ("most-free-kv", "driftsched")
PORT = 8766
MAX_MODEL_LEN = 4096
KV_BLOCK = 32
"""vLLM's KV block here (engine argument block_size): a prefix is reused in whole blocks of this size."""
HASH_BLOCK = 64
"""`core.scheduler.placement.block_tokens`: two of vLLM's blocks per hash (so a hash is cached whole)."""
SLOTS = 8
METRICS_TOKEN = "bench-prefix-live-metrics-token"
TENANTS = {"chat": ("sk-bench-chat", 1), "agent": ("sk-bench-agent", 2)}
"""Tenant -> (API key, tier)."""
_VOCABULARY = ("the scheduler admits requests from many tenants and orders them by policy while replicas "
               "pull work when they have free slots token latency throughput memory cache batch prefill "
               "decode model engine request response stream usage error quota tier weight fair share")
WORDS = _VOCABULARY.split()
"""Words the tiny model's tokenizer was trained on (`driftsched.tiny_model`), so they cost few tokens."""


def cpu_env(work: Path) -> dict[str, str]:
    """vLLM's CPU settings (docs in benchmarks/bench_vllm.py): one engine process, files under `work`."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
            "TMPDIR": str(work), "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
            "TOKENIZERS_PARALLELISM": "false"}


def parse_model(text: str) -> tuple[int, int]:
    """'512x4' -> (hidden size 512, 4 layers); ValueError for a shape `build_tiny_model` refuses."""
    from driftsched.tiny_model import check_shape

    hidden, sep, layers = text.partition("x")
    if not (sep and hidden.isdigit() and layers.isdigit()):
        raise ValueError(f"--model takes HIDDENxLAYERS, e.g. 512x4; got {text!r}")
    check_shape(int(hidden), int(layers))
    return int(hidden), int(layers)


# -- the workload ----------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Session:
    """One conversation or agent task: when it starts, its opening messages, and per turn the pause
    before it and the message it adds."""

    tenant: str
    start_s: float
    opening: tuple[tuple[str, str], ...]
    turns: tuple[tuple[float, str, str], ...]
    """(pause in seconds, role, content) per turn; the turn's answer is appended after it."""
    answer_tokens: int


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_sessions(n: int, rate: float, seed: int) -> list[Session]:
    """`n` sessions, Poisson at `rate` per second (module docstring); the same seed, the same sessions."""
    rng = random.Random(seed)
    system = "You are the support desk of a cloud provider. " + _words(random.Random(0), 100, 100)
    sessions, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        if rng.random() < 0.6:
            turns = tuple((rng.expovariate(1.0), "user", f"Question {i}.{k}: " + _words(rng, 20, 60))
                          for k in range(rng.randint(4, 8)))
            sessions.append(Session("chat", t, (("system", system),), turns, 32))
        else:
            task = f"Task {i}: " + _words(rng, 60, 100)
            steps = tuple((rng.expovariate(1 / 0.3), "tool", f"Result {i}.{k}: " + _words(rng, 40, 100))
                          for k in range(rng.randint(4, 8)))
            sessions.append(Session("agent", t, (("user", task),), steps, 16))
    return sessions


# -- the apps --------------------------------------------------------------------------------------


def app_args(model_dir: Path, rule: str, work: Path, heartbeat_s: float = 0.2,
             affinity_slack: float | None = None, kv_mib: int = 256) -> dict[str, Any]:
    """The application's args: two vLLM replicas with prefix caching, placement by `rule` (with the
    config's defaults, `affinity_slack` too unless given)."""
    placement: dict[str, Any] = {"rule": rule, "block_tokens": HASH_BLOCK}
    if affinity_slack is not None:
        placement["affinity_slack"] = affinity_slack
    return {
        "benchmark_mode": True,
        "auth": {"demo_keys": {key: name for name, (key, _) in TENANTS.items()}, "keys_env": None,
                 "demo_metrics_token": METRICS_TOKEN, "metrics_token_env": None},
        "core": {
            "tenants": [{"name": name, "tier": tier} for name, (_, tier) in TENANTS.items()],
            "scheduler": {"policy": "fifo", "max_queued_total": 5000, "max_request_tokens": MAX_MODEL_LEN,
                          "placement": placement},
        },
        "replicas": {"engine": "vllm", "num_replicas": 2, "model": str(model_dir),
                     "served_model_name": "tiny-llama", "max_num_seqs": SLOTS,
                     "max_num_batched_tokens": MAX_MODEL_LEN, "num_cpus": 1, "heartbeat_s": heartbeat_s,
                     "prefix_caching": True,
                     "engine_args": {"dtype": "float32", "enforce_eager": True,
                                     "max_model_len": MAX_MODEL_LEN, "kv_cache_memory_bytes": kv_mib * 2**20,
                                     "block_size": KV_BLOCK},
                     "env": cpu_env(work)},
        "gateway": {"queue_timeout_s": 600, "stall_timeout_s": 600, "drift_refresh_s": 0.5,
                    "ingress_max_ongoing_requests": 20000},
    }


# -- the client ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Seen:
    """One turn as the client saw it (seconds from the replay's start)."""

    session: int
    turn: int
    tenant: str
    replica: str
    sent_s: float
    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    cached_tokens: int


async def _turn(client: Any, session: Session, messages: list[dict[str, str]], t0: float,
                where: tuple[int, int]) -> tuple[Seen, str]:
    """Send one turn (`where`: session and turn numbers), streamed; what was seen, and the answer."""
    body = {"model": "tiny-llama", "messages": messages, "max_tokens": session.answer_tokens,
            "stream": True, "stream_options": {"include_usage": True},
            "driftsched_target_tokens": session.answer_tokens}
    headers = {"authorization": f"Bearer {TENANTS[session.tenant][0]}"}
    sent = time.monotonic()
    first, text, usage = math.nan, [], None
    async with client.stream("POST", "/chat/completions", headers=headers, json=body) as resp:
        resp.raise_for_status()
        replica = resp.headers["x-driftsched-replica"]
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                break
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                if choice["delta"].get("content"):
                    if math.isnan(first):
                        first = time.monotonic()
                    text.append(choice["delta"]["content"])
    done = time.monotonic()
    assert usage is not None and usage["completion_tokens"] == session.answer_tokens, usage
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    seen = Seen(*where, session.tenant, replica, sent - t0, first - sent, done - sent, usage["prompt_tokens"],
                cached)
    return seen, "".join(text)


async def _session(client: Any, number: int, session: Session, t0: float) -> list[Seen]:
    await asyncio.sleep(max(0.0, t0 + session.start_s - time.monotonic()))
    messages = [{"role": role, "content": content} for role, content in session.opening]
    seen = []
    for k, (pause, role, content) in enumerate(session.turns):
        await asyncio.sleep(pause)
        messages.append({"role": role, "content": content})
        turn, answer = await _turn(client, session, messages, t0, (number, k))
        seen.append(turn)
        messages.append({"role": "assistant", "content": answer})
    return seen


async def replay(sessions: list[Session], base_url: str) -> list[Seen]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=600,
                                 limits=httpx.Limits(max_connections=1000)) as client:
        t0 = time.monotonic()
        done = await asyncio.gather(*(_session(client, i, s, t0) for i, s in enumerate(sessions)))
    return [turn for session in done for turn in session]


def engine_counters(root: str) -> tuple[float, float]:
    """(query tokens, hit tokens) of the app's engines' prefix caches, summed, from /metrics."""
    import httpx

    headers = {"authorization": f"Bearer {METRICS_TOKEN}"}
    text = httpx.get(root + "/metrics", headers=headers, timeout=30).text
    totals = {"query": 0.0, "hit": 0.0}
    for line in text.splitlines():
        for kind in totals:
            if line.startswith(f"driftsched_replica_prefix_cache_{kind}_tokens_total{{"):
                totals[kind] += float(line.rsplit(" ", 1)[1])
    return totals["query"], totals["hit"]


def measured(root: str, sessions: list[Session]) -> dict[str, Any]:
    """Replay `sessions` against the app at `root`: the figures of the module docstring."""
    before = engine_counters(root)
    seen = asyncio.run(replay(sessions, root + "/v1"))
    time.sleep(1.0)  # the replicas' next heartbeats carry their counters to the scheduler
    after = engine_counters(root)
    queries, hits = after[0] - before[0], after[1] - before[1]
    ttft = sorted(s.ttft_s for s in seen)
    share = {r: sum(s.replica == r for s in seen) for r in {s.replica for s in seen}}
    tenants = {t: _hit_rate([s for s in seen if s.tenant == t]) for t in TENANTS}
    where = {(s.session, s.turn): s.replica for s in seen}
    later = [s for s in seen if s.turn > 0]
    kept = sum(where[(s.session, s.turn - 1)] == s.replica for s in later) / len(later) if later else None
    return {
        "engine_hit_rate": hits / queries if queries else None,
        "request_hit_rate": _hit_rate(seen),
        "tenant_hit_rate": tenants,
        "ttft_p50_s": _quantile(ttft, 0.5),
        "ttft_p90_s": _quantile(ttft, 0.9),
        "e2e_p50_s": _quantile(sorted(s.e2e_s for s in seen), 0.5),
        "replica_share_max_over_mean": max(share.values()) / statistics.mean(share.values()),
        "kept_on_previous_replica": kept,
        "requests": len(seen),
        "prompt_tokens": sum(s.prompt_tokens for s in seen),
        "turns": [asdict(s) for s in seen],
    }


def _hit_rate(seen: list[Seen]) -> float | None:
    prompt = sum(s.prompt_tokens for s in seen)
    return sum(s.cached_tokens for s in seen) / prompt if prompt else None


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted `values`, linear between ranks."""
    pos = q * (len(values) - 1)
    lo = math.floor(pos)
    return values[lo] + (values[min(lo + 1, len(values) - 1)] - values[lo]) * (pos - lo)


# -- report ----------------------------------------------------------------------------------------

COLUMNS = (("engine_hit_rate", "hit rate (engines)", "{:.3f}"),
           ("request_hit_rate", "hit rate (requests)", "{:.3f}"),
           ("ttft_p50_s", "TTFT p50 s", "{:.3f}"), ("ttft_p90_s", "TTFT p90 s", "{:.3f}"),
           ("e2e_p50_s", "E2E p50 s", "{:.3f}"),
           ("replica_share_max_over_mean", "max share / mean", "{:.2f}"),
           ("kept_on_previous_replica", "kept on previous turn's replica", "{:.2f}"))
RATIOS = (("engine_hit_rate", "hit rate (engines)"), ("ttft_p50_s", "TTFT p50"), ("ttft_p90_s", "TTFT p90"))


def _median(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def summarize(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over seeds per placement, and the median of each seed's driftsched / most-free-kv ratio."""
    medians = {rule: {key: _median([run[key] for run in by_seed.values()]) for key, _, _ in COLUMNS}
               for rule, by_seed in runs.items()}
    for rule, by_seed in runs.items():
        medians[rule]["tenant_hit_rate"] = {
            t: _median([run["tenant_hit_rate"][t] for run in by_seed.values()]) for t in TENANTS}
    ratios: dict[str, float | None] = {}
    if set(RULES) <= set(runs):
        ours, base = runs["driftsched"], runs["most-free-kv"]
        for key, _ in RATIOS:
            ratios[key] = _median([ours[s][key] / base[s][key] if ours[s][key] is not None and base[s][key]
                                   else None for s in ours if s in base])
    return {"placements": medians, "driftsched_over_most_free_kv": ratios}


def table(summary: dict[str, Any]) -> str:
    from driftsched.results import markdown_table

    header = ["placement", *(title for _, title, _ in COLUMNS), *(f"hit rate {t}" for t in TENANTS)]
    rows = [[rule, *(_cell(fig[key], fmt) for key, _, fmt in COLUMNS),
             *(_cell(fig["tenant_hit_rate"][t], "{:.3f}") for t in TENANTS)]
            for rule, fig in summary["placements"].items()]
    return markdown_table(header, rows)


def ratio_line(summary: dict[str, Any]) -> str:
    ratios = summary["driftsched_over_most_free_kv"]
    return "driftsched / most-free-kv (median of the seeds' ratios): " + ", ".join(
        f"{title} {_cell(ratios.get(key), '{:.2f}')}x" for key, title in RATIOS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sessions", type=int, default=24, help="sessions per seed")
    parser.add_argument("--rate", type=float, default=0.8, help="sessions starting per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3, help="seeds seed..seed+N-1; medians over them")
    parser.add_argument("--model", default="512x4", help="the tiny model as HIDDENxLAYERS")
    parser.add_argument("--heartbeat-s", type=float, default=0.2, help="replicas' report interval")
    parser.add_argument("--kv-mib", type=int, default=256, help="each engine's KV cache, MiB")
    parser.add_argument("--affinity-slack", type=float, default=None,
                        help="core.scheduler.placement.affinity_slack (only driftsched reads it; "
                             "default: the config's)")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/summary.json and DIR/results.md")
    parser.add_argument("--results-md", type=Path, default=None, metavar="PATH",
                        help="also write the results page here")
    args = parser.parse_args(argv)
    try:
        hidden, layers = parse_model(args.model)
    except ValueError as exc:
        parser.error(str(exc))
    if args.sessions < 1 or args.seeds < 1 or not args.rate > 0:
        parser.error("--sessions and --seeds must be >= 1, --rate > 0")

    work = Path(tempfile.mkdtemp(prefix="bench-prefix-live-", dir="/tmp"))
    os.environ.update(cpu_env(work))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    from driftsched.tiny_model import build_tiny_model
    from serve_app.app import build_app

    seeds = list(range(args.seed, args.seed + args.seeds))
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    try:
        model_dir = build_tiny_model(work / "model", hidden_size=hidden, num_layers=layers)
        ray.init(_temp_dir=str(work / "ray"), _node_ip_address="127.0.0.1", include_dashboard=False,
                 num_cpus=8, log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        started = time.monotonic()
        for rule in RULES:
            config = app_args(model_dir, rule, work, args.heartbeat_s, args.affinity_slack, args.kv_mib)
            serve.run(build_app(config), name=rule, route_prefix=f"/{rule}")
        print(f"both apps up in {time.monotonic() - started:.0f}s: 2 vLLM replicas each, tiny Llama "
              f"{hidden}x{layers}, KV block {KV_BLOCK}, hash block {HASH_BLOCK}", flush=True)
        for i, seed in enumerate(seeds):
            sessions = make_sessions(args.sessions, args.rate, seed)
            for rule in RULES if i % 2 == 0 else RULES[::-1]:  # each goes first every other seed
                run = measured(f"http://127.0.0.1:{PORT}/{rule}", sessions)
                runs.setdefault(rule, {})[seed] = run
                print(f"seed {seed} {rule}: {run['requests']} requests, " + ", ".join(
                    f"{title} {_cell(run[key], fmt)}" for key, title, fmt in COLUMNS), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(runs)
    print(f"\nmedian over seeds {seeds} ({args.sessions} sessions per seed at {args.rate}/s):\n")
    print(table(summary))
    print("\n" + ratio_line(summary))
    from driftsched import results

    command = results.command_line("python benchmarks/bench_prefix_live.py",
                                   sys.argv[1:] if argv is None else argv)
    setup = (f"vLLM CPU build, tiny random Llama {hidden}x{layers}, 2 replicas x {SLOTS} slots per "
             "placement, prefix caching on")
    notes = [ratio_line(summary),
             f"{len(seeds)} seeds {seeds[0]}..{seeds[-1]}, {args.sessions} sessions each (about 60 % chat, "
             f"40 % agent) starting at {args.rate}/s; each figure is the median over the seeds. Hit rate "
             "(engines): the engines' own prefix-cache hits over lookups during the replay; (requests): "
             "cached over prompt tokens of the requests, as their usage reports them. TTFT and E2E: wall "
             "seconds here, from the request sent to its first streamed text and to its end. Max share / "
             "mean: the busiest replica's requests over the mean per replica. Kept: the share of turns "
             "after a session's first that ran on the replica of the turn before."]
    page = results.page(results.provenance(command, setup), table(summary), notes)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {**summary, "seeds": seeds, "args": {k: str(v) for k, v in vars(args).items()},
               "runs": {r: {str(s): v for s, v in by.items()} for r, by in runs.items()}}
        (args.out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    for path in results.write_page(page, [args.out / "results.md" if args.out else None, args.results_md]):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
