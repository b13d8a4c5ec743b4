"""Soak: sustained streaming overload on simulated replicas; do memory and per-request tables stay flat?

One private Ray + Serve on 127.0.0.1 runs the app with two simulated L4 replicas. The pool's capacity
is computed from the config (the performance model's saturated throughput of a replica for this
workload, times the replicas, over the time scale; the time scale is chosen so that capacity is
`--capacity-rps`). Streaming requests then arrive open-loop (Poisson, seeded) at `--load` (1.5) times
that capacity for `--minutes`, over at most `--connections` client connections. Overload is shed as
designed: 503 when the system queue is full, 504 when a queued request's deadline passes.

Printed at the start (after a warm-up), every minute and at the end (after the load has drained):
the resident memory of every Ray process of the session (by actor or deployment name) and the sizes of
the scheduler actor's per-request tables (`SchedulerActor.table_sizes`). The ingress keeps only its
batching client's table of acquires still waiting for an answer (each request otherwise lives in its
own task), so only its memory is shown. Last: the
outcome counts and a verdict line — tables flat (end <= start + slack), every request answered, no
hang, no unexpected error — with the RSS growth of the whole session and of its largest grower.

A request preempted mid-stream that finds no slot again within its queue deadline ends its stream with
an error event ("stream error queue_timeout"): an answer, counted apart from the shed ones. The slack
is what the lazily pruned heaps may hold without leaking: the policy's and the dispatcher's are rebuilt
only past 2 x live + 64 entries, and grants made while the backlog drains add to them, so their bound
is 3 x the pool's slots + 64 + the system queue, whatever the duration; every other table drains to 0.

Run: .venv/bin/python benchmarks/bench_soak.py [--minutes 10] [--load 1.5] [--capacity-rps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from driftsched.bench.service import APP_NAME, LocalServe

KEYS = {"sk-soak-a": "a", "sk-soak-b": "b"}
PROMPT_WORDS = 200  # about 250 prompt tokens (approx_token_count: ~4 characters a token)
OUTPUT_TOKENS = (16, 160)  # uniform range of driftsched_target_tokens
QUEUE_TIMEOUT_S = 4.0
REQUEST_TIMEOUT_S = 60.0  # a request still open this long after it was sent has hung


def app_args(time_scale: float, slots: int) -> dict[str, Any]:
    return {
        "benchmark_mode": True,
        "auth": {"demo_keys": KEYS, "keys_env": None},
        "core": {
            "tenants": [{"name": "a", "tier": 0, "weight": 2.0, "max_queued": 10_000},
                        {"name": "b", "tier": 1, "weight": 1.0, "max_queued": 10_000}],
            "scheduler": {"policy": "sjf", "max_queued_total": 4 * slots,
                          "preemption": {"enabled": True, "wait_s": 0.5, "min_run_s": 0.3,
                                         "near_end_tokens": 8}},
        },
        "replicas": {"num_replicas": 2, "max_num_seqs": slots, "model": "llama-3.1-8b-fp8",
                     "time_scale": time_scale, "stream_interval_s": 0.1, "heartbeat_s": 0.5},
        "gateway": {"queue_timeout_s": QUEUE_TIMEOUT_S, "stall_timeout_s": 30.0},
    }


def modelled_rps(slots: int, replicas: int) -> float:
    """Requests/s the pool sustains in modelled time for this workload (performance model)."""
    from deployments.replica_config import ReplicaConfig, perf_model_for

    perf = perf_model_for(ReplicaConfig(model="llama-3.1-8b-fp8", max_num_seqs=slots))
    prompt, output = PROMPT_WORDS * 1.25, sum(OUTPUT_TOKENS) / 2
    return replicas * perf.saturated_throughput_rps(prompt, output, prompt + output / 2)


# -- what is measured ------------------------------------------------------------------------------

def ray_processes() -> dict[int, tuple[str, float]]:
    """pid -> (name, RSS MiB) of every process this driver started (Ray's daemons and workers)."""
    import psutil  # type: ignore[import-untyped]  # Ray vendors it; importable once ray is imported

    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            argv, rss = proc.cmdline(), proc.memory_info().rss / 2**20
        except psutil.Error:  # exited meanwhile
            continue
        if argv and argv[0].startswith("ray::"):
            name = argv[0].split()[0].removeprefix("ray::").split(".")[0]  # "Actor.method" while busy
        else:
            script = next((a for a in argv if a.endswith(".py")), argv[0] if argv else proc.name())
            name = os.path.basename(script)
        out[proc.pid] = (name, rss)
    return out


@dataclass
class Sample:
    label: str
    tables: dict[str, int]
    rss: dict[int, tuple[str, float]]


async def sample(scheduler: Any, label: str) -> Sample:
    return Sample(label, await scheduler.table_sizes.remote(), ray_processes())


def print_sample(s: Sample, outcomes: Counter[str]) -> None:
    total = sum(r for _, r in s.rss.values())
    print(f"\n== {s.label}: RSS {total:.0f} MiB in {len(s.rss)} processes; outcomes {dict(outcomes)}")
    print("   tables: " + ", ".join(f"{k}={v}" for k, v in s.tables.items()))


def print_rss(start: Sample, end: Sample) -> tuple[float, str]:
    """Per-process RSS start -> end; returns the whole session's growth % and the largest grower."""
    print(f"\n{'process':<44} {'pid':>7} {'start MiB':>10} {'end MiB':>9} {'growth':>8}")
    worst, worst_name = -100.0, "-"
    for pid, (name, rss) in sorted(end.rss.items(), key=lambda kv: kv[1][0]):
        before = start.rss.get(pid)
        if before is None:
            print(f"{name[:44]:<44} {pid:>7} {'(new)':>10} {rss:9.1f}")
            continue
        growth = 100 * (rss - before[1]) / before[1]
        if growth > worst:
            worst, worst_name = growth, f"{name} (pid {pid})"
        print(f"{name[:44]:<44} {pid:>7} {before[1]:10.1f} {rss:9.1f} {growth:+7.1f}%")
    both = [pid for pid in end.rss if pid in start.rss]
    before_total = sum(start.rss[p][1] for p in both)
    after_total = sum(end.rss[p][1] for p in both)
    return 100 * (after_total - before_total) / before_total, f"{worst_name} {worst:+.1f}%"


# -- the load --------------------------------------------------------------------------------------

@dataclass
class Load:
    url: str
    rate_rps: float
    outcomes: Counter[str] = field(default_factory=Counter)
    sent: int = 0


def _body(rng: random.Random) -> dict[str, Any]:
    words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(PROMPT_WORDS))
    target = rng.randint(*OUTPUT_TOKENS)
    return {"prompt": f"Summarise: {words}", "max_tokens": OUTPUT_TOKENS[1], "stream": True,
            "driftsched_target_tokens": target}


async def one(client: httpx.AsyncClient, load: Load, body: dict[str, Any], key: str) -> None:
    """Send one streaming request and count how it ended."""
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            async with client.stream("POST", load.url, json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    load.outcomes[str(resp.status_code)] += 1
                    return
                last = ""
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        last = line[6:]
        if last == "[DONE]":
            load.outcomes["200 done"] += 1
        else:
            code = json.loads(last).get("error", {}).get("code") if last.startswith("{") else None
            load.outcomes[f"stream error {code}"] += 1
    except TimeoutError:
        load.outcomes["hang"] += 1
    except httpx.PoolTimeout:
        load.outcomes["no connection"] += 1
    except httpx.HTTPError as exc:
        load.outcomes[f"client error {type(exc).__name__}"] += 1


async def drive(load: Load, seconds: float, connections: int, seed: int,
                on_minute: Any) -> None:
    """Open-loop Poisson arrivals for `seconds`, then wait for every request to end."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, pool=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        next_send, next_report = start, start + 60.0
        while next_send < start + seconds:
            await asyncio.sleep(max(0.0, next_send - time.monotonic()))
            task = asyncio.create_task(one(client, load, _body(rng), rng.choice(list(KEYS))))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            load.sent += 1
            next_send += rng.expovariate(load.rate_rps)
            if time.monotonic() >= next_report:
                next_report += 60.0
                await on_minute(f"minute {round((time.monotonic() - start) / 60)}")
        await on_minute("end of load")
        print(f"\nsent {load.sent} in {time.monotonic() - start:.0f}s; draining {len(tasks)} open requests")
        if tasks:
            await asyncio.wait(tasks)


async def soak(opts: argparse.Namespace, base_url: str, scheduler: Any, capacity_rps: float,
               slack: int) -> bool:
    load = Load(base_url + "/completions", opts.load * capacity_rps)
    print(f"offered load {load.rate_rps:.1f} req/s ({opts.load:g} x capacity) for {opts.minutes:g} min, "
          f"at most {opts.connections} connections")
    warm = Load(load.url, 0.0)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        rng = random.Random(opts.seed + 1)
        await asyncio.gather(*(one(client, warm, _body(rng), key) for key in list(KEYS) * 8))
    print(f"warm-up: {dict(warm.outcomes)}")
    await asyncio.sleep(QUEUE_TIMEOUT_S + 1.0)
    start = await sample(scheduler, "start")
    print_sample(start, load.outcomes)

    async def on_minute(label: str) -> None:
        print_sample(await sample(scheduler, label), load.outcomes)

    t0 = time.monotonic()
    await drive(load, opts.minutes * 60, opts.connections, opts.seed, on_minute)
    took = time.monotonic() - t0
    await asyncio.sleep(QUEUE_TIMEOUT_S + 2.0)  # expired deadlines leave the scheduler's heap
    end = await sample(scheduler, "end (drained)")
    print_sample(end, load.outcomes)
    rss_growth, worst = print_rss(start, end)

    outcomes = load.outcomes
    done = outcomes["200 done"]
    shed = {k: v for k, v in outcomes.items() if k in ("429", "503", "504")}
    cut = {k: v for k, v in outcomes.items() if k.startswith("stream error")}
    unexpected = {k: v for k, v in outcomes.items() if k != "200 done" and k not in shed and k not in cut}
    print(f"\noutcomes of {load.sent} requests: 200 done {done} ({done / took:.1f}/s vs capacity "
          f"{capacity_rps:.1f}/s), shed {shed}, ended by an error event {cut}, other {unexpected}, "
          f"hangs {outcomes['hang']}")
    grown = {k: (start.tables.get(k, 0), v) for k, v in end.tables.items()
             if v > start.tables.get(k, 0) + slack}
    answered = sum(outcomes.values()) == load.sent
    ok = not grown and not unexpected and answered
    print(f"verdict: {'PASS' if ok else 'FAIL'}: tables {'flat' if not grown else f'grew {grown}'} "
          f"(slack {slack}); every request answered: {answered}; hangs {outcomes['hang']}; "
          f"unexpected {sum(unexpected.values())}; streams cut {sum(cut.values())}; "
          f"RSS growth {rss_growth:+.1f}% (session), largest {worst}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=1.5, help="offered load / pool capacity")
    parser.add_argument("--capacity-rps", type=float, default=10.0,
                        help="pool capacity in real requests/s (sets the simulated replicas' time scale)")
    parser.add_argument("--slots", type=int, default=8, help="max_num_seqs of each of the 2 replicas")
    parser.add_argument("--connections", type=int, default=256, help="most client connections at once")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()

    modelled = modelled_rps(opts.slots, 2)
    time_scale = modelled / opts.capacity_rps
    args = app_args(time_scale, opts.slots)
    print(f"pool: 2 simulated llama-3.1-8b-fp8 replicas x {opts.slots} slots; modelled {modelled:.2f} req/s "
          f"at L4 speed; time_scale {time_scale:.3f} -> capacity {opts.capacity_rps:g} req/s")
    with LocalServe() as local:
        import ray
        from ray import serve

        from deployments.actors import NAMESPACE, ActorRole, actor_name
        from serve_app.app import build_app
        from serve_app.config import parse_app_config

        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        fingerprint = parse_app_config(args).fingerprint()
        scheduler = ray.get_actor(actor_name(APP_NAME, ActorRole.SCHEDULER, fingerprint), namespace=NAMESPACE)
        slots = 2 * opts.slots
        slack = 3 * slots + 64 + args["core"]["scheduler"]["max_queued_total"]
        ok = asyncio.run(soak(opts, local.root + "/v1", scheduler, opts.capacity_rps, slack))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
