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
from driftsched.docs.pages import provenance_problems
from driftsched.sim.records import RunRecords
from driftsched.sim.report import policy_summary, run_span_s, summarize
from driftsched.sim.results_table import HEADER, results_table, summary_table
from driftsched.sim.setup import load_setup, on_config_tenants, tenant_map
from driftsched.sim.workload import TenantSpec, Workload, WorkloadItem

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def records(policy: str = "p") -> RunRecords:
    """Six requests over [0, 20] s: tenant a (objective 5 s) completes in 2 s and in 8 s and has one shed
    and one expired request; tenant b (no objective) completes in 3 s and in 10 s."""
    rows = [
        # tenant, arrival, first token, finish, output tokens, admitted, status
        ("a", 0.0, 0.5, 2.0, 100, True, "completed"),
        ("a", 1.0, 2.0, 9.0, 300, True, "completed"),
        ("a", 2.0, NAN, NAN, 50, False, "tenant_quota"),
        ("a", 3.0, NAN, NAN, 70, True, "expired"),
        ("b", 4.0, 5.0, 7.0, 200, True, "completed"),
        ("b", 10.0, 11.0, 20.0, 400, True, "completed"),
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


def test_shares_goodput_ttft_and_attainment_come_from_the_records():
    rec = records()
    assert run_span_s(rec) == 20.0  # first arrival 0 s, last finish 20 s
    summary = policy_summary(rec, {"a": 5.0})
    overall, a, b = summary["outcomes"], summary["per_tenant"]["a"], summary["per_tenant"]["b"]
    assert overall["completed_share"] == pytest.approx(4 / 6)
    assert overall["shed_share"] == pytest.approx(1 / 6)
    assert overall["expired_share"] == pytest.approx(1 / 6)
    # goodput: completed output tokens (100 + 300 + 200 + 400) and requests over the 20 s span
    assert overall["goodput_tokens_per_s"] == pytest.approx(1000 / 20)
    assert overall["goodput_requests_per_s"] == pytest.approx(4 / 20)
    assert a["goodput_tokens_per_s"] == pytest.approx(400 / 20)
    # tenant a: 1 of 4 requests completed within 5 s (the 8 s one is late, shed and expired miss)
    assert a["slo_attainment"] == pytest.approx(1 / 4)
    assert overall["slo_attainment"] == pytest.approx(1 / 4)  # only a has an objective
    assert "slo_attainment" not in b
    assert b["ttft_s"]["p50"] == pytest.approx(1.0)  # 1 s each
    assert a["ttft_s"]["p50"] == pytest.approx(0.75)  # 0.5 s and 1.0 s
    assert a["shed_share"] == pytest.approx(0.25) and a["expired_share"] == pytest.approx(0.25)
    # E2E p50 of a counts its expired request as infinitely late: 2, 8, inf -> 8
    assert a["e2e_s"]["p50"] == pytest.approx(8.0)


def test_without_objectives_there_is_no_attainment():
    summary = policy_summary(records())
    assert "slo_attainment" not in summary["outcomes"]
    assert all("slo_attainment" not in t for t in summary["per_tenant"].values())


def test_the_table_has_a_row_group_per_policy_with_every_tenant_and_figures_from_the_summary():
    summary = summarize([records("fifo"), records("sjf")], {"tenants": ["b", "a"]}, objectives={"a": 5.0})
    table = results_table(summary, ["sjf", "fifo"])
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in body] == ["**sjf**", "", "", "**fifo**", "", ""]
    assert [r[1] for r in body[:3]] == ["all", "b", "a"]  # the summary's tenant order
    all_row, b_row, a_row = body[:3]
    assert all_row[2:5] == ["66.7%", "16.7%", "16.7%"]
    assert all_row[5:7] == ["50", "0.20"]
    assert all_row[-1] == "25.0%" and a_row[-1] == "25.0%" and b_row[-1] == "–"
    assert a_row[8] == "∞"  # p99 of a: two of its four requests never finished


def test_the_summary_has_a_row_per_policy_and_attainment_only_for_tenants_with_an_objective():
    summary = summarize([records("fifo"), records("sjf")], {"tenants": ["b", "a"]}, objectives={"a": 5.0})
    lines = summary_table(summary, ["sjf", "fifo"]).splitlines()
    assert lines[0] == (
        "| policy | a: SLO attainment | goodput tok/s | E2E p50 (s) | TTFT p99 (s) | shed + expired |"
    )
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in body] == ["**sjf**", "**fifo**"]
    assert body[0][1] == "25.0%" and body[0][2] == "50" and body[0][-1] == "33.3%"


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
        "--load", "1.0", "--policies", "fifo,sjf-oracle", "--no-plots", "--out", str(tmp_path / "out"),
        "--results-md", str(target),
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
    assert rows["interactive"].split("|")[-2].strip().endswith("%")  # its latency_slo_s: attainment
    assert rows["batch"].split("|")[-2].strip() == "–"  # no objective


def test_bench_vllm_page_has_a_row_group_per_setup_and_its_provenance():
    from benchmarks import bench_vllm

    fig = {"overall": {"p50": 1.0, "p99": 2.5}, "tokens_per_s": 1234.0,
           "per_tenant": {t: {"p50": 0.5, "p99": 1.5} for t in bench_vllm.TENANTS}}
    text = bench_vllm.results_page({"vllm-fcfs": fig}, {"vllm-fcfs": fig}, [1, 2], "vLLM CPU build",
                                   "python benchmarks/bench_vllm.py --seeds 2")
    assert results.read_provenance(text)["Command"] == "`python benchmarks/bench_vllm.py --seeds 2`"
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 1 + len(bench_vllm.TENANTS)
    assert rows[0].split("|")[1:-1] == [" **vllm-fcfs** ", " all ", " 1.00 ", " 2.50 ", " 1.00 ", " 2.50 ",
                                        " 1,234 "]


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
