"""DriftSched in front of real vLLM (CPU build) vs vLLM's own scheduling: a block protocol whose
verdicts survive a host that drifts.

Set-ups. All sit behind Ray Serve's HTTP proxy on 127.0.0.1 and receive the same streamed
OpenAI-style `/v1/completions` requests from the same client, so the comparison is about where the
backlog waits:

* `driftsched-default`, `driftsched-sjf`, `driftsched-fifo`: the real Serve app (ingress, scheduler
  actor, vLLM replicas). Replicas take work only while vLLM has free slots, so the backlog waits in the
  scheduler and the policy picks who runs next. `default` takes the scheduler section of `config.yaml`
  (policy, its options, preemption): what a user gets out of the box. `fifo` runs vLLM's own order, so
  what separates it from `vllm-fcfs` is DriftSched's data path.
* `vllm-fcfs`, `vllm-priority`: a bare Serve deployment (`VllmAlone`) wrapping one `AsyncLLM` per
  replica that hands every request to vLLM on arrival, so the backlog waits in vLLM's own queue
  (`scheduling_policy` fcfs, or priority with the tenant's tier as `priority=`, lower first).

By default the four the targets name run (`--setups` adds `driftsched-sjf`): a fifth set-up costs a
fifth more of the run and an engine's memory.

Fairness: both sides run the same number of replicas with the same engine settings (`engine_args`,
including `max_num_seqs` = `--slots` and the same `stream_interval`), count prompts with the model's
tokenizer, and generate the same number of tokens per request: the benchmark-only
`driftsched_target_tokens` becomes min_tokens = max_tokens with ignore_eos on both sides (DriftSched
never shows it to its estimator or scheduler). The client checks `usage.completion_tokens` on every
response (a mismatch or a failed request counts as missing both objectives, TTFT infinite).
DriftSched's replicas take `max_num_seqs` plus `engine_queue_slots` (`config.cpu.yaml`'s, or
`--engine-queue-slots`). The engine process stands for the GPU, so it gets a core of its own
(`EnginePinning`, on both sides; off with `--no-pin-engine`), and its model is a tiny random Llama
just heavy enough (`--model auto`, `choose_model`) that a decode step over `--slots` sequences takes
at least `--engine-step-ms`, so the engine and not the front-end is the bottleneck, as the GPU is on
an L4 node.

Protocol (`driftsched.bench.blocks`). Every set-up is deployed first (each under its own route
prefix; an idle one costs next to nothing). Each phase runs in *rounds*: a round is one segment of
arrivals, served once by every set-up in turn, the order rotated per round; each (set-up, round) is
a *block*. A block's requests all go to its set-up and the next block starts when the last of them
has finished, so one set-up's backlog never runs on the engine core beside another's, and every
block starts with empty queues for every set-up alike. The phases:

1. Saturation: a closed loop of `--concurrency` requests in flight (default twice the slots, the
   same for every set-up) for `--sat-block-s` per block; the output tokens streamed within the
   block after `SAT_WARMUP_S` (each request's tokens spread evenly from its first to its last) over
   that window are its throughput. vllm-fcfs's median over rounds is the host's *capacity* (the
   median, so that one block slowed by something else on the host does not set the load), the base
   of the loads below (`--rate` fixes the main phase's requests/s instead).
2. Main: `--rounds` blocks of `--block-s` at `--load` (default 0.75) of capacity: no set-up is
   overloaded on average, and queues still form in bursts.
3. Low load: `--low-rounds` blocks of `--low-block-s` at `--low-load` (default 0.3) for
   `--low-setups` (the overhead target's pair, driftsched-fifo and vllm-fcfs).

Four rounds by default in each phase: with four set-ups each then serves once in every position.
Every block's line and summary.json's ``blocks`` carry the host's 1-minute load average at its end,
to tell a block that shared the machine with something else.

Arrivals are bursty: the Azure LLM conversation trace's timestamps (`--trace`, the copy in
../shared/traces; Poisson arrivals where it is absent or with `--trace none`), a seeded stretch of
them rescaled to the phase's mean rate (`blocks.rescale_arrivals`) and cut into the rounds'
segments. Tenants, prompts and output lengths come from this benchmark's own mix, not the trace: the
trace's prompts (often thousands of tokens) would not fit the tiny model's 1,024-token context, and
prefill on the 2 CPU cores would then dominate; the mix's outputs (32-700 tokens) keep decode the
bulk of the work and a block of `--block-s` seconds tens of requests long.

Blocks of 30 s (not 60): the default run (~20 min on 2 cores with `--replicas 1`, a third of it
deploying and saturating) then gives each set-up 4 main blocks, where 60 s would give 2, and a
bootstrap over 2 blocks bounds nothing.

Figures (`driftsched.bench.block_figures`): per set-up and tenant, over its blocks pooled, the shares
meeting the TTFT objective, the TPOT objective and both (the tenants' tier objectives, judged as
`driftsched.sim.attainment` judges every report), TTFT p50 and p99 (request sent to its first
streamed text), and goodput (output tokens and requests that met both, per second of arrival span);
saturation throughput and its ratio to vllm-fcfs. Each comes with a bootstrap 95 % interval over
rounds (`--bootstrap` draws, seeded), comparisons paired by round. Verdicts on the issue's targets
are "met", "missed" or "unresolved" from those intervals, never from a point.

`--out DIR` writes `DIR/summary.json` (``protocol``, ``capacity``, ``saturation``, ``main``,
``low_load``, ``verdicts``, ``blocks``) and `DIR/results.md`, the results page with the command line,
commit and machine (`--results-md PATH` writes it there too: `docs/results/bench-vllm.md`).

Run: .venv/bin/python benchmarks/bench_vllm.py [--block-s 30] [--rounds 4] [--load 0.75 | --rate R]
[--sat-block-s 12] [--sat-rounds 4] [--concurrency N] [--low-load 0.3] [--low-block-s 20]
[--low-rounds 4] [--slots 4] [--replicas 1] [--setups ...] [--trace PATH | none]
[--model auto | HIDDENxLAYERS] [--out DIR] [--results-md PATH]. Smoke test (~8 min): --block-s 10
--rounds 2 --sat-block-s 8 --sat-rounds 2 --low-block-s 10 --low-rounds 2.
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
from collections.abc import Iterator, Sequence
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
DEFAULT_SETUPS = ("driftsched-default", "driftsched-fifo", "vllm-fcfs", "vllm-priority")
LOW_LOAD_SETUPS = ("driftsched-fifo", "vllm-fcfs")
REFERENCE = "vllm-fcfs"
"""The set-up every other is compared with: vLLM on its own, first come first served."""
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
CPU_CONFIG = CONFIG.with_name("config.cpu.yaml")
TRACE = ROOT.parent / "shared" / "traces" / "azure2023_conv.csv"
MAX_MODEL_LEN = 1024
STREAM_INTERVAL = 16  # tokens per streamed chunk, both sides (vLLM engine arg)
PORT = 8765
SAT_WARMUP_S = 2.0  # a saturation block's first seconds, while the closed loop fills the slots


@dataclass(slots=True, frozen=True)
class Item:
    """One request of the load: when (s from its segment's start), who, what, and its true output
    length (engine only)."""

    at_s: float
    tenant: str
    prompt: str
    max_tokens: int
    target: int


def make_load(times: Sequence[float], seed: int, first: int = 0) -> list[Item]:
    """One request per arrival time, tenant, category and output length drawn from the mix (seeded:
    the same seed and `first` give the same requests at any times); prompts numbered from `first`."""
    rng = random.Random(f"{seed}:{first}")
    names = list(TENANTS)
    shares = [TENANTS[t][2] for t in names]
    items = []
    for i, t in enumerate(times, start=first):
        tenant = rng.choices(names, shares)[0]
        mix = TENANTS[tenant][3]
        category = rng.choices(list(mix), list(mix.values()))[0]
        template, max_tokens, (lo, hi) = CATEGORIES[category]
        items.append(Item(t, tenant, template.format(i=i), max_tokens, rng.randint(lo, hi)))
    return items


def mean_output_tokens() -> float:
    """The mix's mean output length (tokens per request), from its shares and ranges."""
    total = 0.0
    for share, mix in ((spec[2], spec[3]) for spec in TENANTS.values()):
        for category, weight in mix.items():
            lo, hi = CATEGORIES[category][2]
            total += share * weight * (lo + hi) / 2
    return total


def trace_times(path: Path | None) -> list[float] | None:
    """The trace's arrival times (s from its first), or None where it is absent."""
    if path is None or not path.is_file():
        return None
    from driftsched.sim.traces import load_azure_conv

    return [it.arrival_s for it in load_azure_conv(path).items]


def arrivals(rate: float, duration_s: float, seed: int, trace: list[float] | None) -> list[float]:
    """`duration_s` seconds of arrivals at a mean of `rate`/s: a seeded stretch of the trace rescaled
    to that rate, or Poisson without a trace."""
    rng = random.Random(seed)
    if trace is None:
        times, t = [], rng.expovariate(rate)
        while t < duration_s:
            times.append(t)
            t += rng.expovariate(rate)
        return times
    from driftsched.bench.blocks import rescale_arrivals

    n = max(1, round(rate * duration_s))
    return rescale_arrivals(trace, rate, duration_s, start=rng.randrange(max(1, len(trace) - n - 1)))


def segments(rate: float, block_s: float, rounds: int, seed: int, trace: list[float] | None
             ) -> list[list[Item]]:
    """Each round's requests: arrivals cut into `rounds` segments of `block_s`, requests from the mix."""
    from driftsched.bench.blocks import cut

    parts = cut(arrivals(rate, block_s * rounds, seed, trace), block_s, rounds)
    out, first = [], 0
    for times in parts:
        out.append(make_load(times, seed, first))
        first += len(times)
    return out

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
    """What the client saw of one request: seconds from its block's start (NaN: never came), tokens
    generated, and how it ended ("completed", or what went wrong)."""

    tenant: str
    sent_s: float
    first_token_s: float
    done_s: float
    tokens: int
    status: str = "completed"


def _client(base_url: str) -> Any:
    import httpx

    return httpx.AsyncClient(base_url=base_url, timeout=600, limits=httpx.Limits(max_connections=1000))


async def _send(client: Any, item: Item, t0: float) -> Seen:
    """One streamed request, timed from `t0`; a failure or a wrong token count is a Seen, not a raise
    (one bad request must not end a run of many blocks)."""
    start, first = time.monotonic(), float("nan")
    body = {"model": "tiny-llama", "prompt": item.prompt, "max_tokens": item.max_tokens,
            "stream": True, "stream_options": {"include_usage": True},
            "driftsched_target_tokens": item.target}
    headers = {"authorization": f"Bearer {TENANTS[item.tenant][1]}"}
    usage, status = None, "completed"
    try:
        async with client.stream("POST", "/completions", headers=headers, json=body) as resp:
            if resp.status_code != 200:
                status = f"http_{resp.status_code}"
            else:
                async for line in resp.aiter_lines():
                    if line == "data: [DONE]":
                        break
                    if line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        usage = chunk.get("usage") or usage
                        if first != first and any(c.get("text") for c in chunk.get("choices") or ()):
                            first = time.monotonic()  # the first streamed text: time to first token
                if usage is None or usage.get("completion_tokens") != item.target:
                    status = f"usage {usage} for {item.target} tokens"
    except Exception as exc:  # recorded as a failed request
        status = f"error {type(exc).__name__}: {exc}"
    done = time.monotonic()
    if status != "completed":
        print(f"  request failed ({item.tenant}): {status}", flush=True)
        first, done = float("nan"), float("nan")
    return Seen(item.tenant, start - t0, first - t0, done - t0, item.target, status)


async def replay(items: Sequence[Item], base_url: str) -> list[Seen]:
    """Send one segment open-loop (each item at its `at_s`); returns once every request has ended."""
    async with _client(base_url) as client:
        t0 = time.monotonic()

        async def one(item: Item) -> Seen:
            await asyncio.sleep(max(0.0, t0 + item.at_s - time.monotonic()))
            return await _send(client, item, t0)

        return list(await asyncio.gather(*(one(it) for it in items)))


async def closed_loop(items: Iterator[Item], base_url: str, concurrency: int, block_s: float) -> list[Seen]:
    """`concurrency` requests in flight, each replaced as it ends, until `block_s`; the last ones are
    then let finish (the block's window ends at `block_s`, so they count only until then)."""
    async with _client(base_url) as client:
        t0 = time.monotonic()
        seen: list[Seen] = []

        async def worker() -> None:
            while time.monotonic() - t0 < block_s:
                seen.append(await _send(client, next(items), t0))
                if seen[-1].status != "completed":
                    await asyncio.sleep(0.5)  # a set-up that fails fast must not be flooded

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return seen


async def warm_up(base_url: str) -> None:
    async with _client(base_url) as client:
        await _send(client, Item(0.0, "interactive", "hello", 8, 8), time.monotonic())


# -- the phases ------------------------------------------------------------------------------------


def bench_tenants() -> list[dict[str, Any]]:
    """DriftSched's tenants in this benchmark (objectives: their tiers', `driftsched.core.slo`)."""
    return [{"name": name, "tier": spec[0], "weight": 4.0 / (1 + spec[0]), "max_queued": 5000}
            for name, spec in TENANTS.items()]


def bench_core() -> Any:
    """The core config of DriftSched's set-ups, whose objectives every set-up is judged against."""
    from driftsched.core.config import CoreConfig

    return CoreConfig.model_validate({"tenants": bench_tenants()})


def to_records(setup: str, seen: Sequence[Seen]) -> Any:
    """One block's requests as `RunRecords` (seconds from the block's start)."""
    import numpy as np

    from driftsched.sim.records import RunRecords

    n = len(seen)

    def col(values: list[float]) -> Any:
        return np.array(values, dtype=float)

    nan = np.full(n, float("nan"))
    return RunRecords(
        policy=setup, tenant=np.array([s.tenant for s in seen], dtype=str), category=["bench"] * n,
        prompt_tokens=nan.copy(), max_tokens=nan.copy(), output_tokens=col([s.tokens for s in seen]),
        arrival=col([s.sent_s for s in seen]), dispatch=nan.copy(),
        first_token=col([s.first_token_s for s in seen]), finish=col([s.done_s for s in seen]),
        raw_estimate=nan.copy(), corrected_estimate=nan.copy(), admitted=np.ones(n, dtype=bool),
        status=["completed" if s.status == "completed" else "error" for s in seen], extras={},
        estimator={"uncorrected": {"mae": float("nan"), "rmse": float("nan")},
                   "corrected": {"mae": float("nan"), "rmse": float("nan")}},
    )


def to_block(setup: str, round_: int, length_s: float, seen: Sequence[Seen]) -> Any:
    """One block judged against the tenants' objectives (`attainment.slo_flags`)."""
    import numpy as np

    from driftsched.bench.block_figures import Block
    from driftsched.sim.attainment import slo_flags

    rec = to_records(setup, seen)
    ttft_met, tpot_met = slo_flags(rec, bench_core().objectives())
    ttft = rec.first_token - rec.arrival
    return Block(setup, round_, length_s, rec.tenant, np.where(np.isnan(ttft), np.inf, ttft),
                 ttft_met, tpot_met, rec.output_tokens)


def throughput(setup: str, round_: int, block_s: float, seen: Sequence[Seen]) -> Any:
    """A saturation block's tokens streamed within [SAT_WARMUP_S, block_s]."""
    from driftsched.bench.block_figures import Throughput
    from driftsched.bench.blocks import window_tokens

    tokens = sum(window_tokens(s.first_token_s, s.done_s, s.tokens, SAT_WARMUP_S, block_s) for s in seen)
    return Throughput(setup, round_, block_s - SAT_WARMUP_S, tokens)


def url(setup: str) -> str:
    return f"http://127.0.0.1:{PORT}/{setup}/v1"


def run_phase(name: str, setups: Sequence[str], rounds: list[list[Item]], block_s: float
              ) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """Every round's segment served by every set-up in turn (order rotated per round)."""
    from driftsched.bench.block_figures import figures
    from driftsched.bench.block_report import share
    from driftsched.bench.blocks import round_orders

    blocks: dict[str, list[Any]] = {s: [] for s in setups}
    log = []
    for r, order in enumerate(round_orders(list(setups), len(rounds))):
        for setup in order:
            started = time.monotonic()
            seen = asyncio.run(replay(rounds[r], url(setup)))
            took = time.monotonic() - started
            block = to_block(setup, r, block_s, seen)
            blocks[setup].append(block)
            fig = figures([block], [0])
            failed = sum(s.status != "completed" for s in seen)
            load = os.getloadavg()[0]
            log.append({"phase": name, "round": r, "setup": setup, "requests": len(seen), "failed": failed,
                        "wall_s": took, "loadavg": load, **fig})
            print(f"{name} round {r} {setup:<20} {len(seen):>4} req, both met {share(fig['slo_both'])}, "
                  f"TTFT p50 {fig['ttft_p50']:.3f} p99 {fig['ttft_p99']:.3f} s, {took:.1f} s wall, load "
                  f"avg {load:.1f}" + (f", {failed} FAILED" if failed else ""), flush=True)
    return blocks, log


def run_saturation(setups: Sequence[str], rounds: int, block_s: float, concurrency: int, seed: int
                   ) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """Closed-loop blocks, the same request sequence for every set-up in a round."""
    from driftsched.bench.blocks import round_orders

    blocks: dict[str, list[Any]] = {s: [] for s in setups}
    log = []
    for r, order in enumerate(round_orders(list(setups), rounds)):
        for setup in order:
            items = iter(make_load([0.0] * 10_000, seed + 1000 * (r + 1)))
            started = time.monotonic()
            seen = asyncio.run(closed_loop(items, url(setup), concurrency, block_s))
            took = time.monotonic() - started
            block = throughput(setup, r, block_s, seen)
            blocks[setup].append(block)
            load = os.getloadavg()[0]
            log.append({"phase": "saturation", "round": r, "setup": setup, "requests": len(seen),
                        "tokens_in_window": block.tokens, "window_s": block.window_s, "wall_s": took,
                        "loadavg": load})
            print(f"saturation round {r} {setup:<20} {block.tokens / block.window_s:>7.0f} tok/s "
                  f"({len(seen)} req, {took:.1f} s wall, load avg {load:.1f})", flush=True)
    return blocks, log


# -- report ----------------------------------------------------------------------------------------


def results_page(summary: dict[str, Any], setup: str, command: str) -> str:
    """results.md (`driftsched.results`): provenance, the verdicts as its summary, then the main
    phase's figures, the saturation and low-load phases' and what they are."""
    from driftsched import results
    from driftsched.bench import block_report as br

    proto = summary["protocol"]
    objectives = ", ".join(f"{name} TTFT {o['ttft_s']:g} s, TPOT {1000 * o['tpot_s']:g} ms"
                           for name, o in summary["objectives"].items())
    notes = [
        f"Main phase: {proto['rounds']} rounds of {proto['block_s']:g} s at load {proto['load']:g} of "
        f"capacity ({summary['capacity']['tokens_per_s']:.0f} output tok/s, vllm-fcfs saturated, median "
        f"of its rounds; "
        f"{proto['rate']:.2f} requests/s), arrivals {proto['arrivals']}. Each figure over a set-up's "
        f"blocks pooled, with a bootstrap 95 % interval over rounds ({proto['bootstrap']} draws); "
        f"shares in %, TTFT from the request sent to its first streamed text, goodput the output tokens "
        f"of requests that met both objectives per second of arrivals. Objectives: {objectives}.",
        f"Saturation: {proto['sat_rounds']} rounds of {proto['sat_block_s']:g} s, {proto['concurrency']} "
        f"requests in flight for every set-up, output tokens/s from {SAT_WARMUP_S:g} s into each block "
        f"to its end; the ratio's interval is over rounds, paired.",
        results.markdown_table(br.saturation_header(REFERENCE),
                               br.saturation_rows(summary["saturation"], REFERENCE)),
        f"Low load: {proto['low_rounds']} rounds of {proto['low_block_s']:g} s at load {proto['low_load']:g} "
        f"({proto['low_rate']:.2f} requests/s).",
        results.markdown_table(br.PHASE_HEADER, br.phase_rows(summary["low_load"]), align=br.PHASE_ALIGN),
        "Verdicts: met where the whole interval meets the bound, missed where it all fails it, "
        "unresolved where it straddles it (`driftsched.bench.blocks`). Differences and ratios are of the "
        "set-up's figure to the one it is compared with, over the same rounds; an overhead bound is on "
        "how much slower DriftSched is (being faster meets it). Percentile intervals from a few rounds "
        "are narrower than they should be: two runs that agree on a verdict are the check.",
    ]
    main = results.markdown_table(br.PHASE_HEADER, br.phase_rows(summary["main"]), align=br.PHASE_ALIGN)
    verdicts = results.markdown_table(br.VERDICT_HEADER, br.verdict_rows(summary["verdicts"]), align="l" * 8)
    return results.page(results.provenance(command, setup), main, notes, verdicts)


def build_summary(sat: dict[str, list[Any]], main: dict[str, list[Any]], low: dict[str, list[Any]],
                  protocol: dict[str, Any], draws: int, seed: int) -> dict[str, Any]:
    """summary.json's figures: capacity, saturation, both phases per set-up and tenant, verdicts."""
    from driftsched.bench import block_figures as bf
    from driftsched.sim.report import objectives_doc

    return {
        "protocol": protocol,
        "capacity": {"tokens_per_s": protocol["capacity_tokens_per_s"],
                     "from": "vllm-fcfs saturation, median of its rounds"},
        "saturation": bf.saturation(sat, draws, seed, REFERENCE),
        "main": bf.phase_figures(main, list(TENANTS), draws, seed),
        "low_load": bf.phase_figures(low, list(TENANTS), draws, seed),
        "verdicts": bf.verdict_rows(main, low, sat, list(TENANTS), draws, seed),
        "objectives": objectives_doc(bench_core().objectives()),
    }


def print_summary(summary: dict[str, Any]) -> None:
    from driftsched.bench import block_report as br

    print("\nsaturation (output tok/s [95 % interval]):\n" + br.text_table(
        br.saturation_header(REFERENCE), br.saturation_rows(summary["saturation"], REFERENCE)))
    print("\nmain phase (shares in %, seconds; [95 % interval]):\n"
          + br.text_table(br.PHASE_HEADER, br.phase_rows(summary["main"])))
    print("\nlow load:\n" + br.text_table(br.PHASE_HEADER, br.phase_rows(summary["low_load"])))
    print("\nverdicts:\n" + br.text_table(br.VERDICT_HEADER, br.verdict_rows(summary["verdicts"])),
          flush=True)


# -- the run ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add = parser.add_argument
    add("--block-s", type=float, default=30.0, help="seconds of arrivals per block (main and low load)")
    add("--rounds", type=int, default=4, help="main-phase rounds (blocks per set-up)")
    add("--load", type=float, default=0.75, help="main phase: mean offered output tokens/s over capacity")
    add("--rate", type=float, default=None, help="main phase: mean requests/s instead of --load")
    add("--low-load", type=float, default=0.3, help="low-load phase: offered load over capacity")
    add("--low-block-s", type=float, default=20.0, help="seconds of arrivals per low-load block")
    add("--low-rounds", type=int, default=4, help="low-load rounds (0: no low-load phase)")
    add("--low-setups", default=",".join(LOW_LOAD_SETUPS), help="set-ups of the low-load phase")
    add("--sat-block-s", type=float, default=12.0, help="seconds per saturation block")
    add("--sat-rounds", type=int, default=4, help="saturation rounds")
    add("--concurrency", type=int, default=None, help="saturation: requests in flight (default 2x slots)")
    add("--bootstrap", type=int, default=1000, help="bootstrap draws per interval")
    add("--trace", default=str(TRACE), help="Azure conversation trace CSV for arrival times, or none")
    add("--slots", type=int, default=4, help="running sequences per replica (max_num_seqs)")
    add("--replicas", type=int, default=1, help="vLLM replicas, both sides")
    add("--engine-queue-slots", type=int, default=None,
        help="DriftSched replicas' engine_queue_slots (default: config.cpu.yaml's)")
    add("--no-pin-engine", dest="pin_engine", action="store_false",
        help="let the vLLM engine processes share every core with the rest (default: each gets a core of "
             "its own, as the model gets a GPU on an L4 node)")
    add("--model", default="auto", help="the engine's tiny model as HIDDENxLAYERS (e.g. 512x6), or auto: "
                                        "the lightest whose decode step reaches --engine-step-ms here")
    add("--engine-step-ms", type=float, default=5.0,
        help="with --model auto: the decode step (ms, --slots sequences) the model must take")
    add("--setups", default=",".join(DEFAULT_SETUPS), help="comma-separated subset of " + ", ".join(SETUPS))
    add("--seed", type=int, default=1, help="seeds the arrivals' stretch, the mix and the bootstrap")
    add("--out", type=Path, default=None, help="write DIR/summary.json and DIR/results.md")
    add("--results-md", type=Path, default=None, metavar="PATH",
        help="also write the Markdown results page to PATH (docs/results/bench-vllm.md)")
    args = parser.parse_args(argv)
    args.setups = args.setups.split(",")
    args.low_setups = [s for s in args.low_setups.split(",") if s in args.setups]
    if unknown := set(args.setups) - set(SETUPS):
        parser.error(f"unknown set-ups {sorted(unknown)}; choose from {', '.join(SETUPS)}")
    if REFERENCE not in args.setups:
        parser.error(f"--setups must include {REFERENCE}: capacity and every comparison are against it")
    if min(args.rounds, args.sat_rounds) < 1 or args.low_rounds < 0:
        parser.error("--rounds and --sat-rounds must be >= 1, --low-rounds >= 0")
    if not min(args.block_s, args.low_block_s, args.load, args.low_load, args.engine_step_ms) > 0:
        parser.error("--block-s, --low-block-s, --load, --low-load and --engine-step-ms must be > 0")
    if not args.sat_block_s > SAT_WARMUP_S:
        parser.error(f"--sat-block-s must be > {SAT_WARMUP_S} (the warm-up it leaves out)")
    if args.rate is not None and not args.rate > 0:
        parser.error("--rate must be > 0")
    if args.model != "auto":
        try:
            parse_model(args.model)
        except ValueError as exc:
            parser.error(str(exc))
    args.concurrency = args.concurrency or 2 * args.slots * args.replicas
    args.trace = None if args.trace == "none" else Path(args.trace)
    return args


def main() -> None:
    args = parse_args()
    if args.engine_queue_slots is None:
        args.engine_queue_slots = shipped_queue_slots()
    trace = trace_times(args.trace)
    arrivals_text = (f"the Azure conversation trace's timestamps ({args.trace.name}), rescaled"
                     if trace is not None else "Poisson (no trace)")
    print(f"arrivals: {arrivals_text}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-vllm-", dir="/tmp"))
    os.environ.update(cpu_env(work))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

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
    print(f"engine model: hidden {hidden} x {layers} layers" + (
        f" (decode step {step_ms:.2f} ms, target >= {args.engine_step_ms} ms)" if step_ms is not None else
        " (--model)"), flush=True)
    ray.init(_temp_dir=str(work / "ray"), _node_ip_address="127.0.0.1", include_dashboard=False,
             num_cpus=8, log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    log: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        for setup in args.setups:  # all up at once, each under its own prefix, so blocks can alternate
            side, policy = setup.split("-")
            build = driftsched_app if side == "driftsched" else vllm_alone_app
            app = build(model_dir, args.slots, args.replicas, policy, work, args.engine_queue_slots)
            serve.run(app, name=setup, route_prefix=f"/{setup}")
        pinning.pin(engines=args.replicas * len(args.setups))
        for setup in args.setups:
            asyncio.run(warm_up(url(setup)))
        print(f"deployed {len(args.setups)} set-ups in {time.monotonic() - started:.0f} s", flush=True)
        sat, sat_log = run_saturation(args.setups, args.sat_rounds, args.sat_block_s, args.concurrency,
                                      args.seed)
        from driftsched.bench.block_figures import rate

        capacity = statistics.median(rate(sat[REFERENCE], [r]) for r in range(args.sat_rounds))
        mean_tokens = mean_output_tokens()
        main_rate = args.rate if args.rate is not None else args.load * capacity / mean_tokens
        low_rate = main_rate * args.low_load / args.load
        print(f"capacity: vllm-fcfs sustains {capacity:.0f} output tok/s at {args.concurrency} in flight; "
              f"main phase {main_rate:.2f} requests/s, low load {low_rate:.2f} requests/s "
              f"(mean output {mean_tokens:.0f} tokens)", flush=True)
        main_rounds = segments(main_rate, args.block_s, args.rounds, args.seed, trace)
        main, main_log = run_phase("main", args.setups, main_rounds, args.block_s)
        low: dict[str, list[Any]] = {}
        low_log: list[dict[str, Any]] = []
        if args.low_rounds and args.low_setups:
            low_rounds = segments(low_rate, args.low_block_s, args.low_rounds, args.seed + 1, trace)
            low, low_log = run_phase("low-load", args.low_setups, low_rounds, args.low_block_s)
        log = sat_log + main_log + low_log
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"protocol wall time {time.monotonic() - started:.0f} s", flush=True)
    protocol = {"block_s": args.block_s, "rounds": args.rounds, "load": args.load, "rate": main_rate,
                "low_load": args.low_load, "low_rounds": args.low_rounds if low else 0, "low_rate": low_rate,
                "low_block_s": args.low_block_s,
                "sat_block_s": args.sat_block_s, "sat_rounds": args.sat_rounds,
                "concurrency": args.concurrency,
                "sat_warmup_s": SAT_WARMUP_S, "bootstrap": args.bootstrap, "seed": args.seed,
                "arrivals": arrivals_text, "capacity_tokens_per_s": capacity, "setups": args.setups,
                "replicas": args.replicas, "slots": args.slots, "engine_pinning": pinning.reason,
                "engine_model": {"hidden_size": hidden, "num_layers": layers, "step_ms": step_ms,
                                 "target_step_ms": args.engine_step_ms}}
    summary = build_summary(sat, main, low, protocol, args.bootstrap, args.seed)
    print_summary(summary)
    if args.out is not None:
        from driftsched.sim.report import write_summary

        args.out.mkdir(parents=True, exist_ok=True)
        write_summary({**summary, "blocks": log, "args": {k: str(v) for k, v in vars(args).items()}},
                      args.out)  # NaN and inf as null
        print(f"summary in {args.out / 'summary.json'}")
    from driftsched.results import command_line, write_page

    setup = (f"vLLM CPU build, tiny random Llama {hidden}x{layers}, {args.replicas} replica(s) x "
             f"{args.slots} slots; engine pinning {pinning.reason}")
    text = results_page(summary, setup, command_line("python benchmarks/bench_vllm.py", sys.argv[1:]))
    for path in write_page(text, [args.out / "results.md" if args.out else None, args.results_md]):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
