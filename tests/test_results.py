"""Results that commands write: the figures of the results table computed from hand-made records
(`driftsched.sim.report`), the Markdown page with its provenance (`driftsched.results`), the
simulator's shipped-config setup (`driftsched.sim.setup`) and the pages `driftsched simulate` and
benchmarks/bench_vllm.py write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftsched import results
from driftsched.cli import main
from driftsched.core.config import CoreConfig
from driftsched.core.slo import Objectives
from driftsched.docs.pages import provenance_problems
from driftsched.sim.records import RunRecords
from driftsched.sim.report import summarize
from driftsched.sim.results_table import HEADER, results_table, summary_table, window_and_objectives
from driftsched.sim.setup import load_setup, on_config_tenants, tenant_map
from driftsched.sim.workload import TenantSpec, Workload, WorkloadItem

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


OBJECTIVES = {"a": Objectives(ttft_s=1.0, tpot_s=0.05), "b": Objectives(ttft_s=2.0, tpot_s=0.02)}


def records(policy: str = "p") -> RunRecords:
    """Six requests over [0, 20] s: tenant a completes two (both meet its objectives), has one
    rejected (over quota) and one expired; tenant b completes two (the second misses its TPOT)."""
    rows = [
        # tenant, arrival, first token, finish, output tokens, admitted, status
        ("a", 0.0, 0.5, 2.0, 100, True, "completed"),  # TTFT 0.5 s, TPOT 1.5 / 99 s
        ("a", 1.0, 2.0, 9.0, 300, True, "completed"),  # TTFT 1.0 s (= the objective), TPOT 7 / 299 s
        ("a", 2.0, NAN, NAN, 50, False, "tenant_request_quota"),
        ("a", 3.0, NAN, NAN, 70, True, "expired"),
        ("b", 4.0, 5.0, 7.0, 200, True, "completed"),  # TPOT 2 / 199 s
        ("b", 10.0, 11.0, 20.0, 400, True, "completed"),  # TPOT 9 / 399 s > 0.02 s: missed
    ]
    n = len(rows)

    def col(k: int) -> np.ndarray:
        return np.array([r[k] for r in rows], dtype=float)

    return RunRecords(
        policy=policy,
        tenant=np.array([r[0] for r in rows]),
        category=["chat"] * n,
        prompt_tokens=np.full(n, 10.0),
        max_tokens=np.full(n, 512.0),
        output_tokens=col(4),
        arrival=col(1),
        dispatch=col(2),
        first_token=col(2),
        finish=col(3),
        raw_estimate=np.full(n, 100.0),
        corrected_estimate=np.full(n, 100.0),
        admitted=np.array([r[5] for r in rows]),
        status=[r[6] for r in rows],
    )


def _summary() -> dict:
    meta = {"tenants": ["b", "a"]}
    return summarize([records("fifo"), records("sjf")], meta, objectives=OBJECTIVES, window=None)


def test_the_table_has_a_row_group_per_policy_with_every_tenant_and_figures_from_the_summary():
    table = results_table(_summary(), ["sjf", "fifo"])
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in body] == ["**sjf**", "", "", "**fifo**", "", ""]
    assert [r[1] for r in body[:3]] == ["all", "b", "a"]  # the summary's tenant order
    all_row, b_row, a_row = body[:3]
    column = {name: k for k, name in enumerate(HEADER)}
    # attainment leaves out the request rejected for its tenant's own doing: 5 judged
    assert [all_row[column[c]] for c in ("TTFT met", "TPOT met", "both met")] == ["80.0%", "60.0%", "60.0%"]
    # goodput over the whole arrival span (window None: 10 s): requests 1, 2 and 5, 600 tokens
    assert all_row[column["goodput tok/s"]] == "60" and all_row[column["goodput req/s"]] == "0.30"
    assert [all_row[column[c]] for c in ("rejected", "shed", "expired")] == ["16.7%", "0.0%", "16.7%"]
    assert b_row[column["both met"]] == "50.0%" and a_row[column["both met"]] == "66.7%"
    assert a_row[column["E2E p99 (s)"]] == "∞"  # a's expired request never finished
    assert a_row[column["TTFT p99 (s)"]] == "∞"  # nor got a first token
    assert b_row[column["TTFT p50 (s)"]] == "1.00"


def test_the_summary_has_a_row_per_policy_with_each_tenants_attainment():
    lines = summary_table(_summary(), ["sjf", "fifo"]).splitlines()
    assert lines[0] == (
        "| policy | b: both met | a: both met | goodput tok/s | TTFT p99 (s) | E2E p99 (s) | shed + expired |"
    )
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in body] == ["**sjf**", "**fifo**"]
    assert body[0][1:4] == ["50.0%", "66.7%", "60"] and body[0][-1] == "16.7%"


def test_the_summary_shows_the_goodput_ratio_to_fifo_when_there_is_an_interval():
    summary = _summary()
    summary["vs_fifo"] = {"sjf": {"goodput_tokens_ratio": {"value": 1.1, "ci95": [1.02, 1.18], "n": 5}}}
    lines = summary_table(summary, ["fifo", "sjf"]).splitlines()
    assert "goodput vs fifo" in lines[0]
    assert "1 (reference)" in lines[2] and "1.10× [1.02, 1.18]" in lines[3]


def test_the_page_note_states_the_window_and_each_tenants_objectives():
    summary = summarize([records("fifo")], {}, objectives=OBJECTIVES)
    note = window_and_objectives(summary)
    assert "from 10 % to 90 % of the arrival span (1.0–9.0 s, 4 requests per policy)" in note
    assert "b TTFT 2 s, TPOT 20 ms" in note and "a TTFT 1 s, TPOT 50 ms" in note
    assert "no attainment" in window_and_objectives(summarize([records("fifo")], {}))


def test_a_page_states_its_provenance_and_the_docs_check_accepts_it(tmp_path):
    source = results.provenance(results.command_line("driftsched", ["simulate", "--out", "x y"]), "modelled")
    assert source.command == "driftsched simulate --out 'x y'"
    assert source.machine.endswith("; modelled") and "cores" in source.machine
    text = results.page(source, "| a |\n| ---: |\n| 1 |", ["a note"])
    assert results.read_provenance(text)["Command"] == f"`{source.command}`"
    page = tmp_path / "docs" / "results" / "x.md"
    assert results.write_page(text, [None, page]) == [page]
    if source.commit != "unknown":  # a git checkout
        assert provenance_problems(page, tmp_path) == []
    page.write_text(text.replace("- Machine:", "- Hardware:"))
    assert provenance_problems(page, tmp_path) == ["docs/results/x.md: no '- Machine: ...' line"]


def test_the_commit_is_marked_dirty_when_a_tracked_file_changed(tmp_path):
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    clean = results.git_commit(tmp_path)
    assert len(clean) >= 7 and "+" not in clean
    (tmp_path / "untracked").write_text("new")
    assert results.git_commit(tmp_path) == clean
    (tmp_path / "f").write_text("2")
    assert results.git_commit(tmp_path) == clean + "+dirty"


def _workload() -> Workload:
    names = ["support-bot", "code-assist"]
    items = [WorkloadItem(float(i), t, "chat", 10, 64, 32) for i, t in enumerate(names)]
    return Workload("w", items, (TenantSpec("support-bot", 0, 4.0), TenantSpec("code-assist", 1, 3.0)))


def test_the_shipped_l4_config_sets_core_replicas_model_deadline_and_tenants():
    setup = load_setup(ROOT / "config.l4.yaml")
    assert setup.model == "llama-3.1-8b-fp8"  # the FP8 checkpoint's performance model
    assert setup.replicas is not None and setup.queue_timeout_s is not None
    assert setup.engine is not None and setup.engine["max_num_seqs"] >= 1
    mapping = tenant_map(_workload(), setup.core, {})
    assert mapping == {"support-bot": "interactive", "code-assist": "batch"}
    workload, core = on_config_tenants(_workload(), setup.core, mapping, kv_capacity_tokens=1000)
    assert [it.tenant for it in workload.items] == ["interactive", "batch"]
    assert core.tenants == setup.core.tenants  # quotas, queue limits and objectives as shipped
    assert core.scheduler.max_request_tokens == 1000


def test_tenants_that_do_not_map_fall_back_or_fail_by_name():
    core = CoreConfig.model_validate({"tenants": [{"name": "gold"}]})
    assert tenant_map(_workload(), core, {}) is None  # the workload's own tenants are used then
    with pytest.raises(ValueError, match=r"\['code-assist'\]"):
        tenant_map(_workload(), core, {"support-bot": "gold"})


def test_simulate_writes_results_md_in_out_and_at_results_md(tmp_path, capsys):
    target = tmp_path / "docs" / "results" / "simulate.md"
    argv = [
        "simulate", "--config", str(ROOT / "config.l4.yaml"), "--workload", "paper", "--requests", "300",
        "--load", "1.0", "--policies", "fifo,sjf-oracle", "--seeds", "1", "--no-plots",
        "--out", str(tmp_path / "out"), "--results-md", str(target),
    ]
    assert main(argv) == 0
    text = target.read_text()
    assert (tmp_path / "out" / "results.md").read_text() == text
    stated = results.read_provenance(text)
    assert stated["Command"] == "`" + results.command_line("driftsched", argv) + "`"
    assert "modelled NVIDIA L4, llama-3.1-8b-fp8" in stated["Machine"]
    assert "**fifo**" in text and "**sjf-oracle**" in text and "sjf-uncorrected" not in text
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("|  | ")}
    assert set(rows) == {"interactive", "batch", "free"}  # the config's tenants
    both = 1 + HEADER.index("both met")  # split("|") starts with the text before the first "|"
    assert all(row.split("|")[both].strip().endswith("%") for row in rows.values())  # all judged
    assert "| policy | interactive: both met | batch: both met | free: both met |" in text
    # the config's objectives: interactive its tier's, batch and free their own
    assert "interactive TTFT 1.5 s, TPOT 100 ms" in text and "batch TTFT 30 s, TPOT 200 ms" in text
    assert "Steady window: the requests that arrived from 10 % to 90 %" in text


def test_bench_vllm_reports_every_figure_with_its_interval_and_the_verdicts():
    from benchmarks import bench_vllm
    from driftsched.bench.block_figures import Throughput

    rounds = bench_vllm.segments(1.5, 20.0, 3, seed=1, trace=None)

    def block(setup: str, r: int, late_s: float):  # every interactive request's first token `late_s` in
        seen = [bench_vllm.Seen(it.tenant, it.at_s, it.at_s + (late_s if it.tenant == "interactive" else 0.5),
                                it.at_s + late_s + 0.01 * it.target, it.target) for it in rounds[r]]
        return bench_vllm.to_block(setup, r, 20.0, seen)

    late = {"driftsched-default": 1.0, "driftsched-fifo": 3.0, "vllm-fcfs": 3.0, "vllm-priority": 1.2}
    main = {setup: [block(setup, r, s) for r in range(3)] for setup, s in late.items()}
    low = {setup: main[setup] for setup in ("driftsched-fifo", "vllm-fcfs")}
    sat = {setup: [Throughput(setup, r, 13.0, 6000.0 + 100 * r) for r in range(3)] for setup in late}
    protocol = {"block_s": 20.0, "rounds": 3, "load": 0.75, "rate": 1.5, "low_load": 0.3, "low_rounds": 3,
                "low_rate": 0.6, "low_block_s": 20.0, "sat_block_s": 15.0, "sat_rounds": 3, "concurrency": 8,
                "bootstrap": 200,
                "arrivals": "Poisson (no trace)", "capacity_tokens_per_s": 460.0}
    summary = bench_vllm.build_summary(sat, main, low, protocol, 200, 1)
    fcfs, ours = summary["main"]["vllm-fcfs"], summary["main"]["driftsched-default"]
    # interactive's TTFT objective is 1.5 s (tier 0): missed by every request at 3 s, met by all at 1 s
    assert fcfs["per_tenant"]["interactive"]["slo"]["both"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert ours["per_tenant"]["interactive"]["slo"]["both"]["value"] == 1.0
    assert ours["per_tenant"]["interactive"]["ttft_s"]["p99"]["value"] == pytest.approx(1.0)
    assert len(ours["all"]["goodput"]["tokens_per_s"]["ci95"]) == 2
    assert summary["saturation"]["driftsched-default"]["ratio_to_vllm_fcfs"] == pytest.approx(1.0)
    verdicts = {(v["target"], v["versus"], v["tenant"]): v["verdict"] for v in summary["verdicts"]}
    assert verdicts[("SLO attainment", "vllm-fcfs", "interactive")] == "met"
    assert verdicts[("interactive TTFT", "vllm-priority", "interactive")] == "met"  # 1.0 vs 1.2 s
    text = bench_vllm.results_page(summary, "vLLM CPU build", "python benchmarks/bench_vllm.py --rounds 3")
    assert results.read_provenance(text)["Command"] == "`python benchmarks/bench_vllm.py --rounds 3`"
    assert "## Summary" in text and "| target | set-up | versus | tenant | figure |" in text
    assert "| **vllm-fcfs** | all |" in text and "interactive TTFT 1.5 s, TPOT 100 ms" in text
    assert "| set-up | output tok/s | ratio to vllm-fcfs |" in text


def test_bench_live_writes_its_page_in_out_and_at_results_md(tmp_path):
    import argparse

    from driftsched.bench.command import write_live_page

    summary = summarize([records("fifo"), records("sjf")], {"workload": "paper", "requests": 6, "seed": 0,
                                                           "config": "config.yaml"})
    target = tmp_path / "bench-live.md"
    args = argparse.Namespace(out=tmp_path / "out", results_md=target,
                              command_line="driftsched bench live --workload paper --out out")
    write_live_page(args, summary, ["sjf"], "live Ray Serve app, 2 simulated NVIDIA L4 replicas")
    text = target.read_text()
    assert (tmp_path / "out" / "results.md").read_text() == text
    assert results.read_provenance(text)["Command"] == "`driftsched bench live --workload paper --out out`"
    assert "**sjf**" in text and "**fifo**" not in text  # the policies it ran, in their order
