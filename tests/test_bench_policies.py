"""benchmarks/bench_policies.py: a variant's options reach the policy the simulation runs."""

from __future__ import annotations

from benchmarks import bench_policies as bench


def test_variant_options_reach_the_simulated_policy(monkeypatch):
    built = []

    class Recording(bench.Simulation):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.scheduler.policy)

    monkeypatch.setattr(bench, "Simulation", Recording)
    variants = ('bounded:{"horizon_s": 7, "size_ref": 500}', "bounded", 'relative:{"max_wait_s": 30}')
    case = bench.Case("paper", 1.0, 1, 200, 2, "llama-3.1-8b-bf16", 600.0, variants, bench.TRACES)
    summaries = bench.run_case(case)
    assert list(summaries) == list(variants)
    assert [type(p).name for p in built] == ["bounded", "bounded", "relative"]
    assert (built[0].horizon_s, built[0].size_ref) == (7, 500)
    assert (built[1].horizon_s, built[1].size_ref) == (600, 75_000)  # the defaults
    assert built[2].max_wait_s == 30
