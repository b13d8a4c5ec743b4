"""Scheduler actor throughput: grants/s and grant latency with a deep queue, over Ray (no HTTP).

One private Ray on 127.0.0.1 runs the real `SchedulerActor` (named privately, options as
`deployments/actors.py` gives the app's). Replicas are simulated by their reports alone: `--replicas`
of them report `--slots` free slots each, plus one request of their own that they are running, so none
is ever idle.

**The standing queue.** N tickets of a `backlog` tenant are submitted first (made by the core's
`Intake`, as the ingress makes them) under a client of their own that never collects its answers.
Their prompts are larger than any replica's free KV, so by the placement's fit rule they wait, queued,
for the whole run (a busy replica never takes them), and the callers' tickets (small prompts and
estimates, the top tier) rank ahead of them under `sjf` and `priority`. Every call the actor serves
therefore carries N queued tickets: the policy's heap, the deadline heap, N routes to an outbox, the
dispatcher finding the head fits nowhere. They go in ``submit`` calls of 10,000 tickets, as an
ingress's batching client would send them.

**The callers.** C caller loops (asyncio tasks in the driver process) each do: make a ticket, await
an acquire, send a release fire-and-forget with the ingress's timings. The callers spread over K
`SchedulerClient`s (``--clients``; deployments/scheduler_client.py, as K ingress replicas would have,
here all in the driver process), which coalesce them into ``submit`` / ``poll`` / ``release_many``
calls, as `serve_app/gateway.py` does. A release frees the slot at once (simulated capacity), so the
queue stays at N.

Printed per (N, C): grants/s over `--duration` seconds, p50/p99 grant latency (acquire called to grant
received, in the caller), the scheduler actor's CPU time per grant (its whole process: Ray's threads
and the Python code), and the Ray calls the clients made per grant. With C below the slots a caller
never waits for capacity, so the latency is the scheduler's own delay (Ray's call overhead, the
actor's loop, the dispatch).

``--floor`` adds, for the first N, the same loops making two empty calls (``ping``) per "grant": what
Ray's call path alone allows on the machine. ``--local`` drives the same class without Ray (one
asyncio loop, direct calls; its CPU column includes the callers): the pure-Python cost of the actor's
code, the ceiling the Ray shell sits under. ``--profile`` prints cProfile's top functions of the
actor's event loop (inside the Ray actor, or in-process with ``--local``).

    python benchmarks/bench_scheduler_actor.py [--queued 1000,10000,100000] [--callers 1,8,64,256]
        [--duration 4] [--clients 1] [--quick] [--floor] [--local] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import shutil
import statistics
import tempfile
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from deployments.scheduler_actor import AcquireResult, AcquireStatus, SchedulerActor, Submission
from deployments.scheduler_client import SchedulerClient
from deployments.telemetry import RequestTimings
from driftsched.core.config import CoreConfig
from driftsched.core.intake import Intake
from driftsched.core.placement import Capacity
from driftsched.core.request import Request, Ticket

KV_TOKENS = 4096  # each simulated replica's free KV; a backlog prompt is larger
CALLER_PROMPT, BACKLOG_PROMPT = 100, 6000
PARKED_TIMEOUT_S = 3600.0  # the backlog never expires during a run
CALL_TIMEOUT_S = 60.0
BACKLOG_CLIENT = "backlog"  # the standing queue's client: it never polls
BACKLOG_CALL = 10_000  # tickets per submit of the standing queue


def core_config(policy: str, queued: int) -> dict[str, Any]:
    """Two tenants: the callers' (tier 0) and the standing backlog's (tier 3); caps above the run."""
    cap = queued + 100_000
    return {
        "tenants": [{"name": "live", "tier": 0, "weight": 4.0, "max_queued": cap},
                    {"name": "backlog", "tier": 3, "weight": 1.0, "max_queued": cap}],
        "scheduler": {"policy": policy, "max_queued_total": cap, "max_request_tokens": 8192,
                      # as config.yaml: preemption on, so the dispatcher's preemption check runs too
                      "preemption": {"enabled": True, "wait_s": 2.0, "min_run_s": 1.0,
                                     "max_per_request": 1, "near_end_tokens": 32}},
    }


class Tickets:
    """Tickets as the ingress makes them (`Intake`), one template per tenant, fresh ids per call."""

    def __init__(self, config: dict[str, Any], prefix: str = "") -> None:
        intake = Intake(CoreConfig.model_validate(config))
        now = time.time()
        self._live = intake.ticket(Request("t", "live", CALLER_PROMPT, 64, now, category="qa"), now)
        self._backlog = intake.ticket(
            Request("t", "backlog", BACKLOG_PROMPT, 2048, now, category="longform"), now)
        self._prefix, self._n = prefix, 0

    def make(self, backlog: bool = False) -> Ticket:
        self._n += 1
        template = self._backlog if backlog else self._live
        rid = f"{self._prefix}{'b' if backlog else 'c'}{self._n}"
        return replace(template, request_id=rid, arrival_time=time.time())


def replica_capacity(slots: int, index: int) -> Capacity:
    """`slots` free slots and one running request of the replica's own (so it is never idle)."""
    return Capacity(max_slots=slots + 1, free_slots=slots, free_kv_tokens=KV_TOKENS,
                    active=(f"resident-{index}",), kv_capacity_tokens=2 * KV_TOKENS)


class BenchSchedulerActor(SchedulerActor):
    """The real actor plus what the benchmark needs: withdrawing the backlog, CPU time, profiles.

    Its clients are never dropped (`client_grace_s` 1e9): the backlog's client does not poll."""

    def __init__(self, core_config: dict[str, Any], replica_timeout_s: float) -> None:
        super().__init__(core_config, replica_timeout_s, client_grace_s=1e9)
        self._profile: cProfile.Profile | None = None

    async def withdraw(self, client_id: str) -> int:
        """Cancel everything still waiting for `client_id` and drop its answers; how many were queued."""
        box = self._outboxes.box(client_id, self._clock())
        waiting = list(box.waiting)
        for rid in waiting:
            self._withdraw(rid)
        self._pump()
        box.take()
        return len(waiting)

    async def cpu_seconds(self) -> float:
        """CPU time of this process so far (Ray's threads and the event loop)."""
        return time.process_time()

    async def profile(self, enable: bool) -> str:
        """Start cProfile on the event loop's thread, or stop it and return the top functions."""
        if enable:
            self._profile = cProfile.Profile()
            self._profile.enable()
            return ""
        if self._profile is None:
            return ""
        self._profile.disable()
        out = io.StringIO()
        pstats.Stats(self._profile, stream=out).sort_stats("tottime").print_stats(20)
        self._profile = None
        return out.getvalue()


@dataclass(slots=True)
class Cell:
    queued: int
    callers: int
    grants: int
    seconds: float
    latencies: list[float]
    actor_cpu_s: float
    path: str
    calls: int = 0
    """Ray calls the batching clients made (none for the floor's pings)."""

    def row(self) -> str:
        lat = sorted(self.latencies) or [float("nan")]
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        rate = self.grants / self.seconds
        cpu_us = 1e6 * self.actor_cpu_s / max(1, self.grants)
        calls = f" {self.calls / max(1, self.grants):>11.2f}" if self.calls else f" {'':>11}"
        return (f"{self.queued:>9,} {self.callers:>8} {self.path:>11} {rate:>10,.0f} {p50 * 1e3:>9.2f} "
                f"{p99 * 1e3:>9.2f} {cpu_us:>14,.0f}{calls}")


HEADER = (f"{'queued':>9} {'callers':>8} {'path':>11} {'grants/s':>10} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'actor CPU/grant':>14} {'calls/grant':>11}")

Acquire = Callable[[Ticket, int], Awaitable[AcquireResult]]
Release = Callable[[str, str, RequestTimings, int], None]  # each given the caller's index


async def drive(acquire: Acquire, release: Release, tickets: Tickets, callers: int,
                duration: float) -> tuple[int, float, list[float]]:
    """C closed loops of acquire -> release for `duration` s: (grants, seconds, grant latencies).
    Both are given the caller's index (which batching client it uses)."""
    latencies: list[float] = []
    stop = time.perf_counter() + duration

    async def loop(caller: int) -> None:
        while time.perf_counter() < stop:
            ticket = tickets.make()
            start = time.perf_counter()
            result = await acquire(ticket, caller)
            latency = time.perf_counter() - start
            if result.status is not AcquireStatus.GRANTED or result.replica_id is None:
                raise RuntimeError(f"caller not granted: {result}")
            latencies.append(latency)
            release(ticket.request_id, result.replica_id,
                    RequestTimings("live", queue_wait_s=result.queue_wait_s, output_tokens=1,
                                   prompt_tokens=CALLER_PROMPT), caller)

    began = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(callers)))
    return len(latencies), time.perf_counter() - began, latencies


async def measure(actor: Any, call: Callable[[Any], Awaitable[Any]], args: argparse.Namespace,
                  tickets: Tickets, queued: int, handle: Any) -> list[Cell]:
    """Register the replicas, queue the backlog, then one cell per caller count.

    `call(x)` awaits a method call's result: a Ray ObjectRef, or a coroutine in-process; `handle` is
    what a `SchedulerClient` calls (``handle.method.remote(...)``)."""
    await asyncio.gather(*(call(actor.report(f"replica-{i}", replica_capacity(args.slots, i)))
                           for i in range(args.replicas)))
    began = time.perf_counter()
    for start in range(0, queued, BACKLOG_CALL):
        chunk = [Submission(tickets.make(backlog=True), PARKED_TIMEOUT_S)
                 for _ in range(min(BACKLOG_CALL, queued - start))]
        answers = await call(actor.submit(BACKLOG_CLIENT, chunk))
        if answers.results:  # each must wait: granted, it would not be a standing queue
            raise RuntimeError(f"backlog tickets answered at once: {list(answers.results.values())[:3]}")
    print(f"  ({queued:,} tickets queued in {time.perf_counter() - began:.1f}s)", flush=True)

    releasing: set[asyncio.Future[Any]] = set()
    clients = [SchedulerClient(handle) for _ in range(args.clients)]

    def batched_acquire(ticket: Ticket, caller: int) -> Awaitable[AcquireResult]:
        return clients[caller % len(clients)].acquire(ticket, CALL_TIMEOUT_S)

    def batched_release(rid: str, replica: str, timings: RequestTimings, caller: int) -> None:
        clients[caller % len(clients)].release(rid, replica, 1, timings)

    granted = AcquireResult(AcquireStatus.GRANTED, "none")

    async def ping(_ticket: Ticket, _caller: int) -> AcquireResult:
        await call(actor.ping())
        return granted

    def ping_release(_rid: str, _replica: str, _timings: RequestTimings, _caller: int) -> None:
        task = asyncio.ensure_future(call(actor.ping()))
        releasing.add(task)
        task.add_done_callback(releasing.discard)

    path = f"batched x{len(clients)}"
    cells = []
    for callers in args.callers:
        calls = sum(sum(c.calls.values()) for c in clients)
        if args.profile:
            await call(actor.profile(True))
        cpu = await call(actor.cpu_seconds())
        grants, seconds, latencies = await drive(batched_acquire, batched_release, tickets, callers,
                                                 args.duration)
        cpu = await call(actor.cpu_seconds()) - cpu
        await asyncio.gather(*(c.flushed() for c in clients))
        calls = sum(sum(c.calls.values()) for c in clients) - calls
        await asyncio.sleep(0.1)  # the last releases land
        sizes = await call(actor.table_sizes())
        if sizes["core_queued"] != queued or sizes["granted"]:
            raise RuntimeError(f"the queue moved or grants leaked: {sizes}")
        cells.append(Cell(queued, callers, grants, seconds, latencies, cpu, path, calls))
        print(cells[-1].row(), flush=True)
        if args.profile:
            print(await call(actor.profile(False)), flush=True)
        if args.floor and queued == args.queued[0]:  # two empty calls a grant: the transport's limit
            cpu = await call(actor.cpu_seconds())
            floor = await drive(ping, ping_release, tickets, callers, args.duration)
            floor_cell = Cell(queued, callers, *floor, await call(actor.cpu_seconds()) - cpu, "2 x ping")
            print(floor_cell.row(), flush=True)
    withdrawn = await call(actor.withdraw(BACKLOG_CLIENT))
    if withdrawn != queued:
        raise RuntimeError(f"{withdrawn:,} backlog tickets were still queued, not {queued:,}")
    return cells


# -- over Ray, or in-process ------------------------------------------------------------------------

class _Methods:
    """`actor.method(...)` for a Ray actor handle: returns the ObjectRef of ``method.remote(...)``."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._handle, name).remote  # type: ignore[no-any-return]


async def _await(x: Any) -> Any:
    return await x


class LocalHandle:
    """``handle.method.remote(...)`` for an in-process actor: a task running the method."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._actor, name)
        return types.SimpleNamespace(remote=lambda *a: asyncio.ensure_future(method(*a)))


def run_ray(args: argparse.Namespace) -> list[Cell]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    temp_dir = tempfile.mkdtemp(prefix="dsbench-actor-", dir="/tmp")
    ray.init(_temp_dir=temp_dir, _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=4,
             log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})

    async def one(queued: int) -> list[Cell]:
        config = core_config(args.policy, queued)
        handle: Any = ray.remote(BenchSchedulerActor).options(
            name=f"bench-scheduler-{queued}", namespace="driftsched-bench", max_restarts=0,
            max_concurrency=100_000, num_cpus=0,
        ).remote(config, 1e9)
        try:
            return await measure(_Methods(handle), _await, args, Tickets(config), queued, handle)
        finally:
            ray.kill(handle)

    try:
        print(HEADER, flush=True)
        return [cell for queued in args.queued for cell in asyncio.run(one(queued))]
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_local(args: argparse.Namespace) -> list[Cell]:
    async def one(queued: int) -> list[Cell]:
        config = core_config(args.policy, queued)
        actor = BenchSchedulerActor(config, 1e9)
        return await measure(actor, _await, args, Tickets(config), queued, LocalHandle(actor))

    print(HEADER + "   (in-process, no Ray; CPU includes the callers)", flush=True)
    return [cell for queued in args.queued for cell in asyncio.run(one(queued))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", default="1000,10000,100000", help="standing queue depths N")
    parser.add_argument("--callers", default="1,8,64,256", help="concurrent caller loops C")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per (N, C) cell")
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--slots", type=int, default=16, help="free slots per replica")
    parser.add_argument("--policy", default="sjf", choices=("sjf", "priority"),
                        help="a policy that ranks the callers ahead of the backlog")
    parser.add_argument("--clients", type=int, default=1,
                        help="batching SchedulerClients the callers spread over (ingress replicas)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=1000, C=1,8, 1 s cells")
    parser.add_argument("--local", action="store_true", help="drive the class in-process, no Ray")
    parser.add_argument("--profile", action="store_true", help="cProfile the actor's event loop")
    parser.add_argument("--floor", action="store_true",
                        help="after each cell, the same loops with two empty calls (ping) per grant")
    args = parser.parse_args()
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    if args.quick:
        args.queued, args.callers, args.duration = "1000", "1,8", 1.0
    args.queued = [int(n) for n in args.queued.split(",")]
    args.callers = [int(c) for c in args.callers.split(",")]
    total = sum(c.grants for c in (run_local(args) if args.local else run_ray(args)))
    print(f"\n{total:,} grants in all; {args.replicas} replicas x {args.slots} slots, policy "
          f"{args.policy}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
