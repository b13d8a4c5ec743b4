"""Trace replay: the generic CSV format and the public traces in shared/traces."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from driftsched.sim.perf_model import PerfModel
from driftsched.sim.traces import (
    MOONCAKE_BLOCK_TOKENS,
    ReplayOptions,
    TraceFormatError,
    load_azure_conv,
    load_csv,
    load_mooncake,
    load_sharegpt_lengths,
)
from driftsched.sim.workload import CATEGORIES, TenantSpec, measured_capacity_rps

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
HEADER = "arrival_s,tenant,category,prompt_tokens,max_tokens,output_tokens,priority\n"


@pytest.fixture
def traces():
    if not TRACES.is_dir():
        pytest.skip(f"{TRACES} not present")
    return TRACES


def test_generic_csv_round_trip(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "1.5,b,code,100,512,300,\n0.5,a,qa,20,64,10,0\n")
    gold = TenantSpec("a", tier=2, weight=3.0)
    wl = load_csv(path, tenants=[gold])
    assert [it.tenant for it in wl.items] == ["a", "b"]
    assert wl.tenants == (gold, TenantSpec("b", tier=0, weight=1.0))


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("x,a,qa,1,1,1,", "arrival_s"),
        ("0,a,poetry,1,1,1,", "category"),
        ("0,a,qa,-3,1,1,", "prompt_tokens"),
        ("0,a,qa,1,1,1.5,", "output_tokens"),
    ],
)
def test_generic_csv_errors_name_file_line_column(tmp_path, row, column):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "0,a,qa,1,1,1,\n" + row + "\n")
    with pytest.raises(TraceFormatError, match=rf"bad\.csv:3: column '{column}'"):
        load_csv(path)


def test_generic_csv_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("arrival_s,tenant\n0,a\n")
    with pytest.raises(TraceFormatError, match="lacks column"):
        load_csv(path)


def check(wl, n):
    assert len(wl.items) == n
    assert wl.items[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in pairwise(wl.items))
    names = {t.name for t in wl.tenants}
    for it in wl.items:
        assert it.tenant in names and it.category in CATEGORIES
        assert 1 <= it.output_tokens <= it.max_tokens


def test_azure_conv(traces):
    wl = load_azure_conv(traces / "azure2023_conv.csv", ReplayOptions(limit=2000))
    check(wl, 2000)
    assert (wl.items[0].prompt_tokens, wl.items[0].output_tokens) == (374, 44)
    assert wl.items[1].arrival_s == pytest.approx(4.3145788)
    assert len({it.max_tokens for it in wl.items}) == 1  # one trace-wide cap leaks nothing


def test_azure_conv_full_span(traces):
    wl = load_azure_conv(traces / "azure2023_conv.csv")
    check(wl, 19_366)
    assert wl.items[-1].arrival_s == pytest.approx(3501.7, abs=0.1)


@pytest.mark.parametrize("name", ["mooncake_conversation.jsonl", "mooncake_synthetic.jsonl"])
def test_mooncake(traces, name):
    wl = load_mooncake(traces / name, ReplayOptions(limit=1000, category="prompt_band"))
    check(wl, 1000)
    bands = [(256, "qa"), (1024, "chat"), (2048, "code"), (10**9, "summarize")]
    for it in wl.items:  # bands come from prompt length only
        assert it.category == next(c for bound, c in bands if it.prompt_tokens < bound)


def test_sharegpt_poisson_and_caps(traces):
    caps = {"qa": 128, "chat": 512, "code": 1024, "summarize": 256, "longform": 1024}
    opts = ReplayOptions(limit=3000, seed=4, max_tokens=caps)
    wl = load_sharegpt_lengths(traces / "sharegpt8k_lengths.csv", opts, rate_rps=2.0)
    check(wl, 3000)
    assert all(it.max_tokens == caps[it.category] for it in wl.items)
    rate = (len(wl.items) - 1) / wl.items[-1].arrival_s
    assert rate == pytest.approx(2.0, rel=0.1)
    again = load_sharegpt_lengths(traces / "sharegpt8k_lengths.csv", opts, rate_rps=2.0)
    assert again.items == wl.items


def test_rescale_to_load(traces):
    perf = PerfModel()
    opts = ReplayOptions(limit=3000, perf=perf, replicas=2, load=1.2)
    wl = load_azure_conv(traces / "azure2023_conv.csv", opts)
    rate = (len(wl.items) - 1) / wl.items[-1].arrival_s
    assert rate == pytest.approx(1.2 * 2 * measured_capacity_rps(perf, wl.items), rel=1e-6)


def test_unknown_category_mode(traces):
    with pytest.raises(ValueError, match="prompt_band"):
        load_mooncake(traces / "mooncake_synthetic.jsonl", ReplayOptions(limit=5, category="x"))


def write_mooncake(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mooncake_hash_ids_become_whole_prefix_blocks(tmp_path):
    path = write_mooncake(
        tmp_path / "m.jsonl",
        [
            {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]},
            {"timestamp": 500, "input_length": 1024, "output_length": 7, "hash_ids": [0, 1]},
            {"timestamp": 900, "input_length": 300, "output_length": 2, "hash_ids": [0]},
            {"timestamp": 1000, "input_length": 600, "output_length": 2},
        ],
    )
    wl = load_mooncake(path)
    assert wl.block_tokens == MOONCAKE_BLOCK_TOKENS == 512
    # 1,100 tokens are two whole blocks (the third id names a partial one); 300 tokens, none.
    assert [it.prefix_blocks for it in wl.items] == [(0, 1), (0, 1), (), ()]


def test_prompt_clips_keep_the_head_blocks(tmp_path):
    path = write_mooncake(
        tmp_path / "m.jsonl",
        [
            {"timestamp": 0, "input_length": 5000, "output_length": 100, "hash_ids": list(range(10))},
            {"timestamp": 1, "input_length": 700, "output_length": 300, "hash_ids": [0, 11]},
        ],
    )
    clipped = load_mooncake(path, ReplayOptions(max_prompt_tokens=2000))
    assert [(it.prompt_tokens, it.prefix_blocks) for it in clipped.items] == [(2000, (0, 1, 2)), (700, (0,))]
    # max_tokens is the trace-wide cap, 300: a 2,048-token context leaves 1,748 for a prompt.
    fitted = load_mooncake(path, ReplayOptions(max_request_tokens=2048))
    assert [(it.prompt_tokens, it.prefix_blocks) for it in fitted.items] == [(1748, (0, 1, 2)), (700, (0,))]
    assert all(it.prompt_tokens + it.max_tokens <= 2048 for it in fitted.items)
    both = load_mooncake(path, ReplayOptions(max_prompt_tokens=1100, max_request_tokens=2048))
    assert [it.prompt_tokens for it in both.items] == [1100, 700]
    with pytest.raises(ValueError, match="no room for a prompt"):
        load_mooncake(path, ReplayOptions(max_request_tokens=300))


def test_mooncake_bad_hash_ids(tmp_path):
    path = write_mooncake(
        tmp_path / "bad.jsonl", [{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": ["a"]}]
    )
    with pytest.raises(TraceFormatError, match=r"bad\.jsonl:1: .*hash_ids"):
        load_mooncake(path)


def test_mooncake_conversation_prefixes(traces):
    opts = ReplayOptions(limit=3000, max_request_tokens=32_768)
    wl = load_mooncake(traces / "mooncake_conversation.jsonl", opts)
    assert all(len(it.prefix_blocks) == it.prompt_tokens // 512 for it in wl.items)
    assert all(it.prompt_tokens + it.max_tokens <= 32_768 for it in wl.items)
    assert max(it.prompt_tokens for it in wl.items) == 32_768 - wl.items[0].max_tokens  # some were clipped
    assert all(it.prefix_blocks[0] == 0 for it in wl.items if it.prefix_blocks)  # the shared first block
    heads = Counter(it.prefix_blocks[:2] for it in wl.items if len(it.prefix_blocks) >= 2)
    assert heads.most_common(2)[1][1] > 1  # beyond block 0, some conversations come back
    assert load_azure_conv(traces / "azure2023_conv.csv", ReplayOptions(limit=10)).block_tokens == 0
