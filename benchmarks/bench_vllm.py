"""DriftSched in front of real vLLM (CPU build) vs vLLM's own scheduling, on one multi-tenant load.

The same open-loop load (Poisson arrivals, fixed seed) is replayed against five set-ups. All five sit
behind Ray Serve's HTTP proxy on 127.0.0.1 and receive the same streamed OpenAI-style
`/v1/completions` requests from the same client, so the comparison is about where the backlog waits:

* `driftsched-default`, `driftsched-sjf`, `driftsched-fifo`: the real Serve app (ingress, scheduler
  actor, vLLM replicas). Replicas take work only while vLLM has free slots, so the backlog waits in the
  scheduler and the policy picks who runs next. `default` takes the scheduler section of `config.yaml`
  (policy, its options, preemption): what a user gets out of the box.
* `vllm-fcfs`, `vllm-priority`: a bare Serve deployment (`VllmAlone`) wrapping one `AsyncLLM` per
  replica that hands every request to vLLM on arrival, so the backlog waits in vLLM's own queue
  (`scheduling_policy` fcfs, or priority with the tenant's tier as `priority=`, lower first).

Fairness: both sides run the same number of replicas with the same engine settings (`engine_args`,
including `max_num_seqs` = `--slots`, the per-replica cap on running sequences, and the same
`stream_interval`), count prompts with the model's tokenizer (BOS added), and generate the same
number of tokens per request: the benchmark-only `driftsched_target_tokens` becomes min_tokens =
max_tokens with ignore_eos on both sides (DriftSched never shows it to its estimator or scheduler).
The client checks `usage.completion_tokens` on every response. DriftSched's replicas take
`max_num_seqs` plus `engine_queue_slots` requests (`config.cpu.yaml`'s, or `--engine-queue-slots`):
the one or few beyond the running batch wait in vLLM's queue, as every request does under vLLM alone,
so a finished sequence is replaced at vLLM's next step. What remains different is the cost of
DriftSched itself (an extra ingress hop and the scheduler actor), which is part of what is measured.

The engine process stands for the GPU, so it gets a core of its own (`EnginePinning`; on both sides,
off with `--no-pin-engine`): on a 2-core machine the front-end processes otherwise take turns on the
engine's core, and DriftSched's extra ones (ingress, scheduler actor) then lengthen vLLM's steps,
which on an L4 run on the GPU, not on the host cores.

The engine is the bottleneck on any machine, as the GPU is on an L4 node: the engine's model is a tiny
random Llama just heavy enough (`--model auto`, `choose_model`) that vLLM's decode step with `--slots`
sequences takes at least `--engine-step-ms` on the engine's core. With the 2-layer test model on a fast
CPU a step takes ~1 ms, vLLM streams 3,000 tokens/s, and the front-end's core (proxy, ingress,
replica) limits every set-up instead, so no order can show. `--model HIDDENxLAYERS` fixes the model.

Sizing: output lengths of tens to hundreds of tokens make decode the bulk of the work, and
`stream_interval` batches streamed tokens so HTTP chunks stay few. The offered load is relative to
this machine: before the set-ups, a calibration deploys vLLM alone (fcfs), sends it a saturating
burst of the same mix and measures the output tokens per second it sustains; the arrival rate is then
`--load` (default 1.0) times that capacity over the mean output length of the load. So the run is
equally loaded on a fast machine and on a slow or busy one; a fixed rate (`--rate`, no calibration)
that offers 4x what the CPU decodes measures only how a long drain is ordered. All set-ups are
deployed first (each under its own route prefix, ~30 s per engine start), then each seed is
replayed against every set-up in turn (~100-150 s per replay at load 1.0 on 2 cores), the order rotated
by one per seed (`interleaved`), so that a machine that gets busier during the run weighs on every
set-up alike; an idle set-up costs next to nothing (its engine waits, its replicas heartbeat).
Reported as `driftsched simulate` and `driftsched bench live` report (`driftsched.sim.report`), each
set-up as a policy: over the steady window (arrivals from 10 % to 90 % of the replay), per tenant and
overall, the shares meeting the TTFT objective, the TPOT objective and both (the objectives of
DriftSched's tenants, their tiers', for every set-up alike), goodput (requests and output tokens that
met both, per second), TTFT (request sent to its first streamed text) and E2E (to `[DONE]`)
percentiles, plus the achieved output throughput (tokens / (last completion - first arrival)). With
`--seeds N` the load is replayed for N seeds: each figure is the median over them, and each set-up is
compared with vllm-fcfs seed by seed (goodput and tail ratios, attainment differences; mean and 95 %
interval). `--out DIR` writes `DIR/summary.json`: ``policies`` (a `policy_summary` per set-up, medians
over seeds), ``vs_vllm_fcfs``, ``window``, ``objectives``, the per-seed figures under ``runs``, and
under ``pooled`` the figures over every seed's steady window together (a tenant's p99 in one seed is
its worst request or two; pooled it rests on N times as many), and `DIR/results.md`, the same figures
as a Markdown results page with the command line, commit and machine (`--results-md PATH` writes it
there too: `docs/results/bench-vllm.md` for the documented run).

Run: .venv/bin/python benchmarks/bench_vllm.py [--requests 360] [--load 1.0 | --rate R] [--slots 4]
[--seeds 1] [--engine-queue-slots N] [--no-pin-engine] [--model auto | HIDDENxLAYERS]
[--engine-step-ms 5] [--out DIR] [--results-md PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# tenant -> (tier, API key, share of requests, category mix)
TENANTS: dict[str, tuple[int, str, float, dict[str, float]]] = {
    "interactive": (0, "sk-bench-interactive", 0.5, {"qa": 0.7, "chat": 0.3}),
    "batch": (1, "sk-bench-batch", 0.3, {"longform": 0.7, "chat": 0.3}),
    "free": (2, "sk-bench-free", 0.2, {"qa": 0.4, "chat": 0.3, "longform": 0.3}),
}
# category -> (prompt template, max_tokens, true output length range)
CATEGORIES: dict[str, tuple[str, int, tuple[int, int]]] = {
    "qa": ("What is the answer to question {i}?", 128, (32, 96)),
    "chat": ("Tell me about the scheduler and the queue, part {i}.", 384, (128, 320)),
    "longform": ("Write a report about token latency, section {i}.", 768, (400, 700)),
}
SETUPS = ("driftsched-default", "driftsched-sjf", "driftsched-fifo", "vllm-fcfs", "vllm-priority")
CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
CPU_CONFIG = CONFIG.with_name("config.cpu.yaml")
MAX_MODEL_LEN = 1024
STREAM_INTERVAL = 16  # tokens per streamed chunk, both sides (vLLM engine arg)
PORT = 8765
CALIBRATION_PER_SLOT = 16  # calibration burst: requests per running-sequence slot


@dataclass(slots=True, frozen=True)
class Item:
    """One request of the load: when, who, what, and its true output length (engine only)."""

    at_s: float
    tenant: str
    prompt: str
    max_tokens: int
    target: int


def make_load(n: int, rate: float, seed: int) -> list[Item]:
    """`n` requests, Poisson at `rate`/s; the same seed gives the same requests at any rate."""
    rng = random.Random(seed)
    names = list(TENANTS)
    shares = [TENANTS[t][2] for t in names]
    items, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        tenant = rng.choices(names, shares)[0]
        mix = TENANTS[tenant][3]
        category = rng.choices(list(mix), list(mix.values()))[0]
        template, max_tokens, (lo, hi) = CATEGORIES[category]
        items.append(Item(t, tenant, template.format(i=i), max_tokens, rng.randint(lo, hi)))
    return items


def engine_args(slots: int) -> dict[str, Any]:
    """vLLM settings shared by every set-up (scheduling_policy is added for vLLM alone)."""
    return {"dtype": "float32", "enforce_eager": True, "max_model_len": MAX_MODEL_LEN,
            "kv_cache_memory_bytes": 128 * 2**20, "stream_interval": STREAM_INTERVAL,
            "max_num_seqs": slots, "max_num_batched_tokens": MAX_MODEL_LEN,
            "disable_log_stats": True, "enable_log_requests": False}


def cpu_env(work: Path) -> dict[str, str]:
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
            "TMPDIR": str(work), "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
            "TOKENIZERS_PARALLELISM": "false"}


# -- the engine's model ----------------------------------------------------------------------------

# Tiny random Llamas (hidden size, layers), lightest first: `choose_model` takes the first whose decode
# step reaches the target on this machine's engine core.
MODEL_LADDER: tuple[tuple[int, int], ...] = ((128, 2), (256, 4), (512, 4), (512, 6), (768, 6), (1024, 8))
PROBE_TOKENS = 128  # tokens per sequence in a step probe (after a warm-up batch)
_PROBE = """
import json, sys, time
from vllm import LLM, SamplingParams
model, args, slots, tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = LLM(model, **args)
params = SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True)
llm.generate(["warm up"] * slots, params, use_tqdm=False)
started = time.perf_counter()
llm.generate([f"Write a report about token latency, section {i}." for i in range(4 * slots)], params,
             use_tqdm=False)
print("STEP_MS", 1000 * (time.perf_counter() - started) / (4 * tokens))
"""


def probe_step_ms(model_dir: Path, slots: int, work: Path, core: int | None) -> float:
    """vLLM's decode step with `slots` sequences running on `model_dir`, in ms, measured in a child
    process on the engine's core (4 full batches of `PROBE_TOKENS` tokens)."""
    serving_only = ("stream_interval", "enable_log_requests")  # AsyncLLM's, not the offline LLM's
    args = {k: v for k, v in engine_args(slots).items() if k not in serving_only}
    env = {**os.environ, **cpu_env(work), "OMP_NUM_THREADS": "1"}  # as in a Ray actor of 1 CPU
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model_dir), json.dumps(args), str(slots), str(PROBE_TOKENS)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
        preexec_fn=None if core is None else (lambda: os.sched_setaffinity(0, {core})),
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("STEP_MS ")]
    if out.returncode or not lines:
        raise RuntimeError(f"the step probe of {model_dir} failed (exit {out.returncode}):\n"
                           f"{out.stderr[-2000:]}")
    return float(lines[-1].split()[1])


def parse_model(text: str) -> tuple[int, int]:
    """'512x6' -> (hidden size 512, 6 layers), a shape `build_tiny_model` accepts."""
    from driftsched.tiny_model import check_shape

    hidden, sep, layers = text.partition("x")
    if not (sep and hidden.isdigit() and layers.isdigit()):
        raise ValueError(f"--model takes HIDDENxLAYERS (e.g. 512x6) or auto, got {text!r}")
    check_shape(int(hidden), int(layers))
    return int(hidden), int(layers)


def choose_model(spec: str, target_ms: float, slots: int, work: Path, core: int | None
                 ) -> tuple[Path, tuple[int, int], float | None]:
    """The engine's model: the one `spec` names, or (spec "auto") the lightest of `MODEL_LADDER`
    whose decode step takes at least `target_ms` here (the heaviest if none does). Returns its
    directory, (hidden size, layers) and the measured step (None when it was named)."""
    from driftsched.tiny_model import build_tiny_model

    def build(hidden: int, layers: int) -> Path:
        return build_tiny_model(work / f"tiny-llama-{hidden}x{layers}", hidden_size=hidden, num_layers=layers)

    if spec != "auto":
        hidden, layers = parse_model(spec)
        return build(hidden, layers), (hidden, layers), None
    for hidden, layers in MODEL_LADDER:
        model_dir = build(hidden, layers)
        step_ms = probe_step_ms(model_dir, slots, work, core)
        print(f"model probe: hidden {hidden} x {layers} layers, decode step {step_ms:.2f} ms", flush=True)
        if step_ms >= target_ms:
            break
    return model_dir, (hidden, layers), step_ms


# -- the engine's core ------------------------------------------------------------------------------


class EnginePinning:
    """Gives each vLLM engine process a CPU core of its own; every other process shares the rest.

    The engine process stands for the GPU: on an L4 node the model steps on the GPU, not on the host
    cores that Serve's proxy, the ingress and the scheduler actor use. On a 2-core machine without
    pinning, those processes take turns on the engine's core, and whichever front-end runs more of them
    (DriftSched's ingress and scheduler actor) slows the engine's steps for reasons an L4 would not
    share. The pinning is the same for every set-up. Construct before `ray.init` (Ray's processes
    inherit the driver's CPU set), call `pin()` after each deployment is up.
    """

    def __init__(self, engines: int, enabled: bool = True) -> None:
        cores = sorted(os.sched_getaffinity(0))
        rest, self.engine_cores = cores[:len(cores) - engines], cores[len(cores) - engines:]
        if not enabled or not rest:
            self.engine_cores = []
            self.reason = ("off (--no-pin-engine)" if not enabled else
                           f"off: {engines} engine(s) need fewer than the {len(cores)} cores here")
            return
        self.reason = f"engine core(s) {self.engine_cores}, everything else on {rest}"
        os.sched_setaffinity(0, rest)

    def pin(self, engines: int | None = None, timeout_s: float = 60.0) -> None:
        """Pin every thread of each of this driver's vLLM engine processes (`engines` of them, default
        one per engine core) to an engine core, round robin (set-ups that replay in turn share them)."""
        if not self.engine_cores:
            return
        expected = len(self.engine_cores) if engines is None else engines
        deadline = time.monotonic() + timeout_s
        while len(pids := _engine_processes()) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"found {len(pids)} vLLM engine processes, expected "
                                   f"{expected}; run with --no-pin-engine")
            time.sleep(0.5)
        for i, pid in enumerate(sorted(pids)):
            core = self.engine_cores[i % len(self.engine_cores)]
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), {core})


def interleaved(setups: list[str], i: int) -> list[str]:
    """The order the set-ups replay the `i`-th seed in: rotated by one per seed, so that each runs
    first, second, ... equally often and a machine that slows or speeds up during the run weighs on
    every set-up alike (the old way, one set-up's seeds after another's, gave drift to one side)."""
    k = i % len(setups)
    return setups[k:] + setups[:k]


def _engine_processes() -> list[int]:
    """Live vLLM engine-core processes started under this driver (Ray's processes descend from it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("VLLM::EngineCor") and _descends_from(int(entry), os.getpid()):
            found.append(int(entry))
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


# -- the two applications --------------------------------------------------------------------------


def shipped_queue_slots() -> int:
    """`config.cpu.yaml`'s `engine_queue_slots`: what DriftSched's vLLM replicas take beyond
    `max_num_seqs` as shipped (the replica config's own default is 0)."""
    from driftsched.bench.live import load_app_args

    return int(load_app_args(CPU_CONFIG)["replicas"].get("engine_queue_slots", 0))


def default_scheduler() -> dict[str, Any]:
    """config.yaml's scheduler section: policy, options and preemption as shipped."""
    from driftsched.bench.live import load_app_args

    scheduler = load_app_args(CONFIG)["core"]["scheduler"]
    keep = ("policy", "policy_options", "preemption", "kv_watermark")
    return {k: v for k, v in scheduler.items() if k in keep}


def driftsched_app(model_dir: Path, slots: int, replicas: int, policy: str, work: Path,
                   queue_slots: int = 0) -> Any:
    from serve_app.app import build_app

    scheduler: dict[str, Any] = default_scheduler() if policy == "default" else {"policy": policy}

    vllm_args = engine_args(slots)
    for key in ("max_num_seqs", "max_num_batched_tokens", "disable_log_stats", "enable_log_requests"):
        vllm_args.pop(key)  # the replica config sets these itself, to the same values
    return build_app({
        "benchmark_mode": True,
        "auth": {"demo_keys": {spec[1]: name for name, spec in TENANTS.items()}, "keys_env": None},
        "core": {
            "tenants": bench_tenants(),
            "scheduler": {**scheduler, "max_queued_total": 5000, "max_request_tokens": MAX_MODEL_LEN},
        },
        "replicas": {"engine": "vllm", "num_replicas": replicas, "model": str(model_dir),
                     "served_model_name": "tiny-llama", "max_num_seqs": slots,
                     "engine_queue_slots": queue_slots,
                     "max_num_batched_tokens": MAX_MODEL_LEN, "num_cpus": 1, "heartbeat_s": 0.2,
                     "engine_args": vllm_args, "env": cpu_env(work)},
        "gateway": {"queue_timeout_s": 600, "stall_timeout_s": 600, "drift_refresh_s": 0.5,
                    "ingress_max_ongoing_requests": 20000},
    })


def vllm_alone_app(model_dir: Path, slots: int, replicas: int, policy: str, work: Path,
                   queue_slots: int = 0) -> Any:
    """A bare Serve deployment: HTTP in, `AsyncLLM.generate` at once, SSE out. No scheduling of its own.
    (`queue_slots` is DriftSched's replica setting; here vLLM's queue takes everything anyway.)"""
    del queue_slots
    from ray import serve
    from starlette.responses import StreamingResponse

    tiers = {spec[1]: spec[0] for spec in TENANTS.values()}

    class VllmAlone:
        def __init__(self, model: str, args: dict[str, Any]) -> None:
            from transformers import AutoTokenizer
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **args))
            self.count = 0

        async def __call__(self, request: Any) -> StreamingResponse:
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt
            from vllm.sampling_params import RequestOutputKind

            body = await request.json()
            tier = tiers[request.headers["authorization"].removeprefix("Bearer ")]
            n = min(body["max_tokens"], body["driftsched_target_tokens"])
            params = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True,
                                    output_kind=RequestOutputKind.DELTA)
            prompt = TokensPrompt(prompt_token_ids=self.tokenizer.encode(body["prompt"]))
            self.count += 1
            stream = self.engine.generate(prompt, params, f"req-{self.count}", priority=tier)
            return StreamingResponse(self._sse(stream), media_type="text/event-stream")

        async def _sse(self, stream: Any) -> Any:
            generated = 0
            async for out in stream:  # closing this generator (client gone) aborts the request
                delta = out.outputs[0]
                generated += len(delta.token_ids)
                choice = {"index": 0, "text": delta.text, "finish_reason": delta.finish_reason}
                yield f"data: {json.dumps({'object': 'text_completion', 'choices': [choice]})}\n\n"
            usage = {"prompt_tokens": len(out.prompt_token_ids or ()), "completion_tokens": generated}
            yield f"data: {json.dumps({'object': 'text_completion', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        def __del__(self) -> None:
            self.engine.shutdown()

    # backlog goes to vLLM's queue, not Serve's: the replica accepts everything the load sends
    return serve.deployment(VllmAlone, num_replicas=replicas, max_ongoing_requests=20000,
                            ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": cpu_env(work)}},
                            ).bind(str(model_dir), {**engine_args(slots), "scheduling_policy": policy})


# -- the client ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Seen:
    """What the client saw of one request: seconds from the replay's start, and tokens generated."""

    tenant: str
    sent_s: float
    first_token_s: float
    done_s: float
    tokens: int


async def replay(items: list[Item], base_url: str) -> tuple[list[Seen], float]:
    """Send the load; returns what was seen of each request and the output tokens per second."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=600,
                                 limits=httpx.Limits(max_connections=1000)) as client:
        async def one(item: Item, t0: float) -> Seen:
            await asyncio.sleep(max(0.0, t0 + item.at_s - time.monotonic()))
            start, first, usage = time.monotonic(), float("nan"), None
            body = {"model": "tiny-llama", "prompt": item.prompt, "max_tokens": item.max_tokens,
                    "stream": True, "stream_options": {"include_usage": True},
                    "driftsched_target_tokens": item.target}
            headers = {"authorization": f"Bearer {TENANTS[item.tenant][1]}"}
            async with client.stream("POST", "/completions", headers=headers, json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if line == "data: [DONE]":
                        break
                    if line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        usage = chunk.get("usage") or usage
                        if first != first and any(c.get("text") for c in chunk.get("choices") or ()):
                            first = time.monotonic()  # the first streamed text: time to first token
            done = time.monotonic()
            assert usage is not None and usage["completion_tokens"] == item.target, (usage, item)
            return Seen(item.tenant, start - t0, first - t0, done - t0, item.target)

        await one(Item(0.0, "interactive", "hello", 8, 8), time.monotonic())  # warm-up
        t0 = time.monotonic()
        seen = list(await asyncio.gather(*(one(it, t0) for it in items)))
        return seen, sum(it.target for it in items) / (time.monotonic() - t0)


def calibrate(model_dir: Path, slots: int, replicas: int, work: Path, pinning: EnginePinning) -> float:
    """Output tokens/s vLLM alone (fcfs) sustains here: a burst of the load's mix, all sent at once."""
    from ray import serve

    burst = [Item(0.0, it.tenant, it.prompt, it.max_tokens, it.target)
             for it in make_load(CALIBRATION_PER_SLOT * slots * replicas, 1.0, seed=0)]
    serve.run(vllm_alone_app(model_dir, slots, replicas, "fcfs", work), name="calibration", route_prefix="/")
    pinning.pin()
    try:
        _, tokens_per_s = asyncio.run(replay(burst, f"http://127.0.0.1:{PORT}/v1"))
    finally:
        serve.delete("calibration")
    return tokens_per_s


# -- report ----------------------------------------------------------------------------------------
# The same figures as `driftsched simulate` and `driftsched bench live` (`driftsched.sim.report`): each
# replay becomes per-request records, judged against the objectives of the tenants DriftSched runs
# (`bench_core`), over the steady window; both sides are judged alike.

REFERENCE = "vllm-fcfs"
"""The set-up every other is compared with, seed by seed: vLLM on its own, first come first served."""


def bench_tenants() -> list[dict[str, Any]]:
    """DriftSched's tenants in this benchmark (objectives: their tiers', `driftsched.core.slo`)."""
    return [{"name": name, "tier": spec[0], "weight": 4.0 / (1 + spec[0]), "max_queued": 5000}
            for name, spec in TENANTS.items()]


def bench_core() -> Any:
    """The core config of DriftSched's set-ups, whose objectives every set-up is judged against."""
    from driftsched.core.config import CoreConfig

    return CoreConfig.model_validate({"tenants": bench_tenants()})


def to_records(setup: str, seen: list[Seen], tokens_per_s: float) -> Any:
    """One replay as `RunRecords` (seconds of wall time from its start; every request completed, as the
    client asserts)."""
    import numpy as np

    from driftsched.sim.records import RunRecords

    n = len(seen)

    def col(values: list[float]) -> Any:
        return np.array(values, dtype=float)

    nan = np.full(n, float("nan"))
    return RunRecords(
        policy=setup, tenant=np.array([s.tenant for s in seen]), category=["bench"] * n,
        prompt_tokens=nan.copy(), max_tokens=nan.copy(), output_tokens=col([s.tokens for s in seen]),
        arrival=col([s.sent_s for s in seen]), dispatch=nan.copy(),
        first_token=col([s.first_token_s for s in seen]), finish=col([s.done_s for s in seen]),
        raw_estimate=nan.copy(), corrected_estimate=nan.copy(), admitted=np.ones(n, dtype=bool),
        status=["completed"] * n, extras={"tokens_per_s": tokens_per_s},
        estimator={"uncorrected": {"mae": float("nan"), "rmse": float("nan")},
                   "corrected": {"mae": float("nan"), "rmse": float("nan")}},
    )


def figures(records: Any, window: tuple[float, float] | None = (0.1, 0.9)) -> dict[str, Any]:
    """One replay's (or the pooled records') summary: `driftsched.sim.report.policy_summary`."""
    from driftsched.sim.attainment import STEADY_WINDOW
    from driftsched.sim.report import policy_summary

    summary = policy_summary(records, bench_core().objectives(), STEADY_WINDOW if window else None)
    summary.pop("estimator", None)  # the client cannot see the service's estimates
    return summary


def combine(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per-seed figures of every set-up -> the medians over seeds (``policies``), and every set-up
    against `REFERENCE` paired by seed (``vs_vllm_fcfs``, `driftsched.sim.seeds.versus`)."""
    from driftsched.sim.report import objectives_doc
    from driftsched.sim.seeds import aggregate, versus

    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    docs = [{"seed": seed,
             "policies": {name: by_seed[seed] for name, by_seed in runs.items() if seed in by_seed}}
            for seed in seeds]
    median = aggregate(docs)["median"]
    first = next(iter(median["policies"].values()), {})
    return {
        "policies": median["policies"],
        "tenants": list(TENANTS),
        "window": {"from_share": 0.1, "to_share": 0.9, **first.get("window", {})},
        "objectives": objectives_doc(bench_core().objectives()),
        "vs_" + REFERENCE.replace("-", "_"): versus(docs, REFERENCE),
    }


def pooled_figures(records: dict[str, list[Any]]) -> dict[str, Any]:
    """Per set-up, the figures over every seed's steady window together: a tenant's p99 over one
    seed's ~70-180 requests is its worst one or two; pooled it rests on N times as many. Rates
    (goodput) do not pool (each seed has its own clock) and are left out."""
    from driftsched.sim.attainment import in_window, steady_window
    from driftsched.sim.records import concat

    out = {}
    for name, parts in records.items():
        windowed = [rec.select(in_window(rec, steady_window(rec))) for rec in parts]
        fig = figures(concat(windowed), window=None)
        fig.pop("goodput", None)
        for tenant in fig["per_tenant"].values():
            tenant.pop("goodput", None)
        out[name] = fig
    return out


def row(name: str, fig: dict[str, Any]) -> str:
    """A printed line: each tenant's share meeting both objectives, goodput, TTFT p99, E2E p50 / p99."""
    both = "".join(f"{_share(fig['per_tenant'].get(t, {}).get('slo', {}).get('both')):>9}" for t in TENANTS)
    goodput = (fig.get("goodput") or {}).get("tokens_per_s", float("nan"))
    rate = fig.get("tokens_per_s", float("nan"))
    return (f"{name:<20}{both}{goodput:>10.0f}{fig['ttft_s']['p99']:>10.2f}"
            f"{fig['e2e_s']['p50']:>9.2f} / {fig['e2e_s']['p99']:<7.2f}{rate:>8.0f}")


ROW_HEADER = (f"{'set-up':<20}" + "".join(f"{t[:8]:>9}" for t in TENANTS) + f"{'goodput':>10}{'TTFT p99':>10}"
              f"{'E2E p50 / p99':>17}{'tok/s':>8}")


def _share(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def pooled_table(pooled: dict[str, Any]) -> str:
    """The pooled figures as a Markdown table: per set-up and tenant, attainment and the tails."""
    from driftsched.results import markdown_table

    header = ["set-up", "tenant", "both met", "TTFT p99 (s)", "E2E p50 (s)", "E2E p99 (s)"]
    rows = []
    for name, fig in pooled.items():
        for tenant in ("all", *TENANTS):
            cells = fig if tenant == "all" else fig["per_tenant"].get(tenant)
            if cells is None:
                continue
            rows.append([f"**{name}**" if tenant == "all" else "", tenant,
                         _share((cells.get("slo") or {}).get("both")), f"{cells['ttft_s']['p99']:.2f}",
                         f"{cells['e2e_s']['p50']:.2f}", f"{cells['e2e_s']['p99']:.2f}"])
    return markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


def results_page(summary: dict[str, Any], pooled: dict[str, Any] | None, seeds: list[int], setup: str,
                 command: str) -> str:
    """results.md (see `driftsched.results`): provenance, the summary and the table of
    `driftsched simulate` (set-ups as policies), the pooled table with several seeds, what they are."""
    from driftsched import results
    from driftsched.sim.results_table import LEGEND, results_table, summary_table, window_and_objectives

    notes = [
        f"{len(seeds)} seed(s) {seeds[0]}..{seeds[-1]}: each figure is the median over the seeds; the "
        f"goodput ratio to {REFERENCE} is the mean over seeds of each seed's ratio, with its 95 % interval.",
        "Seconds of wall time on this machine, from the request sent to its first streamed text (TTFT) "
        "and to `[DONE]` (E2E).",
        window_and_objectives(summary),
        LEGEND,
    ]
    if pooled:
        notes += ["Pooled: the figures over every seed's steady window together.", pooled_table(pooled)]
    return results.page(results.provenance(command, setup), results_table(summary), notes,
                        summary_table(summary, reference=REFERENCE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=360)
    parser.add_argument("--load", type=float, default=1.0,
                        help="offered output tokens/s over the capacity measured by a calibration burst")
    parser.add_argument("--rate", type=float, default=None,
                        help="mean arrivals per second instead (no calibration; --load is ignored)")
    parser.add_argument("--slots", type=int, default=4, help="running sequences per replica (max_num_seqs)")
    parser.add_argument("--replicas", type=int, default=1, help="vLLM replicas, both sides")
    parser.add_argument("--engine-queue-slots", type=int, default=None,
                        help="DriftSched replicas' engine_queue_slots (default: config.cpu.yaml's)")
    parser.add_argument("--no-pin-engine", dest="pin_engine", action="store_false",
                        help="let the vLLM engine processes share every core with the rest (default: "
                             "each gets a core of its own, as the model gets a GPU on an L4 node)")
    parser.add_argument("--model", default="auto",
                        help="the engine's tiny model as HIDDENxLAYERS (e.g. 512x6), or auto: the lightest "
                             "whose decode step reaches --engine-step-ms on this machine")
    parser.add_argument("--engine-step-ms", type=float, default=5.0,
                        help="with --model auto: the decode step (ms, --slots sequences) the model must take")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="comma-separated subset of " + ", ".join(SETUPS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="replay seeds seed..seed+N-1; report medians")
    parser.add_argument("--out", type=Path, default=None, help="write DIR/summary.json and DIR/results.md")
    parser.add_argument("--results-md", type=Path, default=None, metavar="PATH",
                        help="also write the Markdown results page to PATH (docs/results/bench-vllm.md)")
    args = parser.parse_args()
    setups = args.setups.split(",")
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown set-ups {sorted(unknown)}; choose from {', '.join(SETUPS)}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.engine_queue_slots is None:
        args.engine_queue_slots = shipped_queue_slots()
    if args.model != "auto":
        try:
            parse_model(args.model)
        except ValueError as exc:
            parser.error(str(exc))
    if not args.engine_step_ms > 0:
        parser.error("--engine-step-ms must be > 0")
    if (args.load if args.rate is None else args.rate) <= 0:  # --load is ignored when --rate is given
        parser.error("--load and --rate must be > 0")

    work = Path(tempfile.mkdtemp(prefix="bench-vllm-", dir="/tmp"))
    os.environ.update(cpu_env(work))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"default set-up: {default_scheduler()}", flush=True)
    pinning = EnginePinning(args.replicas, args.pin_engine)  # before ray.init: Ray's processes inherit it
    print(f"engine pinning: {pinning.reason}", flush=True)
    engine_core = pinning.engine_cores[0] if pinning.engine_cores else None
    try:
        model_dir, (hidden, layers), step_ms = choose_model(
            args.model, args.engine_step_ms, args.slots, work, engine_core)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    model = {"hidden_size": hidden, "num_layers": layers, "step_ms": step_ms,
             "target_step_ms": args.engine_step_ms}
    print(f"engine model: hidden {hidden} x {layers} layers" + (
        f" (decode step {step_ms:.2f} ms, target >= {args.engine_step_ms} ms)" if step_ms is not None else
        " (--model)"), flush=True)
    ray.init(_temp_dir=str(work / "ray"), _node_ip_address="127.0.0.1", include_dashboard=False,
             num_cpus=8, log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    records: dict[str, list[Any]] = {}  # every seed's records, per set-up
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        rate = args.rate
        if rate is None:
            capacity = calibrate(model_dir, args.slots, args.replicas, work, pinning)
            sample = make_load(args.requests, 1.0, args.seed)
            rate = args.load * capacity / statistics.mean(it.target for it in sample)
            print(f"calibration: vLLM alone (fcfs) sustains {capacity:.0f} output tok/s here; "
                  f"load {args.load} -> {rate:.2f} requests/s", flush=True)
        loads = {seed: make_load(args.requests, rate, seed) for seed in seeds}
        for seed, items in loads.items():
            tokens = sum(it.target for it in items)
            print(f"load seed {seed}: {len(items)} requests, {tokens} output tokens over "
                  f"{items[-1].at_s:.1f}s ({tokens / items[-1].at_s:.0f} tok/s offered), {args.replicas} "
                  f"replica(s) x {args.slots} slots, stream_interval {STREAM_INTERVAL}", flush=True)
        for setup in setups:  # all up at once, each under its own prefix, so seeds can interleave
            side, policy = setup.split("-")
            build = driftsched_app if side == "driftsched" else vllm_alone_app
            app = build(model_dir, args.slots, args.replicas, policy, work, args.engine_queue_slots)
            serve.run(app, name=setup, route_prefix=f"/{setup}")
        pinning.pin(engines=args.replicas * len(setups))
        for i, seed in enumerate(seeds):
            for setup in interleaved(setups, i):
                seen, tokens_per_s = asyncio.run(
                    replay(loads[seed], f"http://127.0.0.1:{PORT}/{setup}/v1"))
                rec = to_records(setup, seen, tokens_per_s)
                runs.setdefault(setup, {})[seed] = figures(rec)
                records.setdefault(setup, []).append(rec)
                print(f"seed {seed} " + row(setup, runs[setup][seed]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    summary = combine(runs)
    print(f"\nmedian over seeds {seeds} (both objectives met per tenant; goodput, tok/s; seconds):\n"
          + ROW_HEADER)
    print("\n".join(row(name, fig) for name, fig in summary["policies"].items()))
    from driftsched.sim.seeds import format_versus

    versus = summary["vs_" + REFERENCE.replace("-", "_")]
    print("\n" + format_versus(versus, REFERENCE))
    pooled = pooled_figures(records)
    if len(seeds) > 1:
        print(f"\npooled over seeds {seeds}:\n" + ROW_HEADER)
        print("\n".join(row(name, fig) for name, fig in pooled.items()))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        from driftsched.sim.report import write_summary

        doc = {**summary, "pooled": pooled, "seeds": seeds,
               "runs": {k: {str(s): v for s, v in r.items()} for k, r in runs.items()},
               "rate": rate, "engine_pinning": pinning.reason, "engine_model": model,
               "args": {k: str(v) for k, v in vars(args).items()}}
        write_summary(doc, args.out)  # NaN and inf as null
        print(f"summary in {args.out / 'summary.json'}")
    from driftsched.results import command_line, write_page

    setup = (f"vLLM CPU build, tiny random Llama {hidden}x{layers}, {args.replicas} replica(s) x "
             f"{args.slots} slots; engine pinning {pinning.reason}")
    text = results_page(summary, pooled if len(seeds) > 1 else None, seeds, setup,
                        command_line("python benchmarks/bench_vllm.py", sys.argv[1:]))
    for path in write_page(text, [args.out / "results.md" if args.out else None, args.results_md]):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
