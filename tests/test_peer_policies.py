"""The peer schedulers' defining behaviour, and every policy on three estimates in the simulator.

Each peer emulates a scheduler users would pick instead (its module docstring names the source); these
tests pin the rule that makes it that scheduler. The contract every policy passes is in
`test_policies.py`.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from factories import make_scheduler, make_ticket

from driftsched.core.config import CoreConfig, PreemptionConfig
from driftsched.core.dispatch import Dispatcher
from driftsched.core.placement import Capacity, Placement
from driftsched.core.policy import preemption_for
from driftsched.core.request import Ticket
from driftsched.sim.perf_model import PerfModel
from driftsched.sim.simulator import ORACLE, UNCORRECTED, Simulation, core_config_for, estimate_variant
from driftsched.sim.workload import paper_workload
from policies import PEERS, POLICIES, DynamoEdfPolicy, LlmdFlowPolicy, make_policy


def drain(policy, now: float = 0.0) -> list[Ticket]:
    out = []
    while (t := policy.pop(now)) is not None:
        out.append(t)
    return out


def test_the_peers_are_registered_policies():
    assert set(PEERS) <= set(POLICIES)


# -- vllm-priority: strict priority, then arrival; preempts at once ------------------------------


def test_vllm_priority_orders_by_tier_then_arrival_whatever_the_size():
    policy = make_policy("vllm-priority")
    spec = [(2, 10.0), (0, 4000.0), (1, 1.0), (0, 5.0), (2, 1.0)]  # (tier, estimate) in arrival order
    for seq, (tier, estimate) in enumerate(spec, 1):
        policy.add(make_ticket(seq, tier=tier, estimate=estimate), float(seq))
    assert [t.request_id for t in drain(policy)] == ["r2", "r4", "r3", "r1", "r5"]


def _one_slot(policy: str, preemption: PreemptionConfig | None = None):
    scheduler, clock = make_scheduler(policy)
    placement = Placement(kv_watermark=0.0)
    placement.report("a", Capacity(1, 1, 10_000, None, 10_000), 0.0)
    cfg = preemption_for(scheduler.policy, preemption or PreemptionConfig())
    return scheduler, clock, Dispatcher(scheduler, placement, cfg, progress=lambda rid: 0)


def test_vllm_priority_declares_immediate_preemption_and_keeps_the_other_settings():
    configured = PreemptionConfig(max_candidates=3)
    cfg = preemption_for(make_policy("vllm-priority"), configured)
    assert cfg.enabled and cfg.wait_s == 0 and cfg.near_end_tokens == 0 and cfg.max_candidates == 3
    assert preemption_for(make_policy("priority"), configured) is configured  # ours declare nothing


@pytest.mark.parametrize(("policy", "preempts"), [("vllm-priority", True), ("priority", False)])
def test_a_more_important_arrival_takes_the_room_of_a_running_request_at_once(policy, preempts):
    scheduler, clock, dispatcher = _one_slot(policy)
    scheduler.admit(make_ticket(1, tier=3, estimate=1000, prompt_tokens=10, arrival=0.0))
    assert [t.request_id for t, _ in dispatcher.step().grants] == ["r1"]
    clock.now = 0.5
    scheduler.admit(make_ticket(2, tier=0, estimate=1000, prompt_tokens=10, arrival=0.5))
    step = dispatcher.step()  # no wait: the tier-0 head is placed the moment it arrives
    assert [t.request_id for t, _ in step.preempted] == (["r1"] if preempts else [])
    assert [t.request_id for t, _ in step.grants] == (["r2"] if preempts else [])


def test_vllm_priority_never_preempts_an_equal_or_more_important_request():
    scheduler, clock, dispatcher = _one_slot("vllm-priority")
    scheduler.admit(make_ticket(1, tier=1, estimate=1000, prompt_tokens=10, arrival=0.0))
    dispatcher.step()
    clock.now = 0.5
    scheduler.admit(make_ticket(2, tier=1, estimate=5, prompt_tokens=10, arrival=0.5))  # same tier, later
    scheduler.admit(make_ticket(3, tier=2, estimate=5, prompt_tokens=10, arrival=0.5))
    assert dispatcher.step().preempted == []


# -- llmd-flow: strict bands, token-fair flows, SLO deadline within a flow ------------------------


def test_llmd_flow_bands_are_strict():
    policy = make_policy("llmd-flow")
    low = make_ticket(1, tenant="a", tier=2, arrival=0.0)
    high = make_ticket(2, tenant="b", tier=0, arrival=100.0)  # far later, and due later too
    high.ttft_slo_s = 1000.0
    policy.add(low, 0.0)
    policy.add(high, 100.0)
    assert drain(policy) == [high, low]


def test_llmd_flow_shares_a_band_between_tenants_by_tokens_not_requests():
    policy = LlmdFlowPolicy()
    seq = 0
    for _ in range(400):  # "long" sends 3,000-token prompts, "short" 100-token ones, as fast as each other
        for tenant, prompt in (("long", 3000), ("short", 100)):
            seq += 1
            policy.add(make_ticket(seq, tenant=tenant, prompt_tokens=prompt, arrival=float(seq)), float(seq))
    served = collections.Counter()
    for _ in range(300):
        t = policy.pop(0.0)
        served[t.tenant] += policy.cost(t)
    assert served["long"] / served["short"] == pytest.approx(1.0, rel=0.05)
    assert served["short"] / policy.cost(make_ticket(0, prompt_tokens=100)) > 2 * (
        served["long"] / policy.cost(make_ticket(0, prompt_tokens=3000))
    )  # equal tokens: many more short requests


def test_llmd_flow_orders_a_flow_by_ttft_deadline_from_the_requests_objective():
    policy = make_policy("llmd-flow")
    relaxed = make_ticket(1, arrival=0.0)
    relaxed.ttft_slo_s = 30.0
    urgent = make_ticket(2, arrival=10.0)  # later, but due at 12 s
    urgent.ttft_slo_s = 2.0
    policy.add(relaxed, 0.0)
    policy.add(urgent, 10.0)
    assert drain(policy, 10.0) == [urgent, relaxed]


def test_llmd_flow_gives_a_returning_flow_no_burst():
    policy = LlmdFlowPolicy()
    seq = 0
    for _ in range(200):
        seq += 1
        policy.add(make_ticket(seq, tenant="busy", prompt_tokens=100), float(seq))
    for _ in range(150):  # "busy" alone for a long time
        policy.pop(0.0)
    for _ in range(40):  # "idle" comes back
        seq += 1
        policy.add(make_ticket(seq, tenant="idle", prompt_tokens=100), float(seq))
    first = [policy.pop(0.0).tenant for _ in range(20)]
    assert 8 <= first.count("idle") <= 12  # alternates from the lowest active counter, no catch-up


# -- dynamo-wspt: highest (1 + priority) / input tokens ------------------------------------------


def test_dynamo_wspt_serves_the_highest_weight_per_input_token_first():
    policy = make_policy("dynamo-wspt")  # priority = 3 - tier
    spec = [  # (tier, prompt tokens) -> weight (1 + priority) / tokens
        (0, 4000),  # 4 / 4000 = 0.001
        (3, 10),  # 1 / 10 = 0.1
        (0, 100),  # 4 / 100 = 0.04
        (2, 20),  # 2 / 20 = 0.1, arrived later than the tier-3 one
    ]
    for seq, (tier, prompt) in enumerate(spec, 1):
        t = make_ticket(seq, tier=tier, prompt_tokens=prompt, estimate=5000.0 / seq)  # estimates ignored
        policy.add(t, float(seq))
    assert [t.request_id for t in drain(policy)] == ["r2", "r4", "r3", "r1"]


# -- dynamo-edf: EDF within a class, deficit round robin on input tokens between classes ----------


def test_dynamo_edf_orders_a_class_by_deadline():
    policy = make_policy("dynamo-edf")
    late_due = make_ticket(1, tier=1, arrival=0.0)
    late_due.ttft_slo_s = 20.0
    soon_due = make_ticket(2, tier=1, arrival=5.0)
    soon_due.ttft_slo_s = 5.0
    policy.add(late_due, 0.0)
    policy.add(soon_due, 5.0)
    assert drain(policy, 5.0) == [soon_due, late_due]


@pytest.mark.parametrize("quanta", [(1000.0,), (4096.0, 2048.0, 1024.0)])
def test_dynamo_edf_shares_dispatch_between_classes_by_input_tokens_in_proportion_to_quanta(quanta):
    policy = DynamoEdfPolicy(quanta=quanta)
    prompts = {0: 700, 1: 300, 2: 2500}  # each class's requests have their own size
    seq = 0
    for _ in range(1500):
        for tier, prompt in prompts.items():
            seq += 1
            policy.add(make_ticket(seq, tier=tier, prompt_tokens=prompt, arrival=float(seq)), float(seq))
    served = collections.Counter()
    for _ in range(1500):
        t = policy.pop(0.0)
        served[t.tier] += t.prompt_tokens
    weights = [policy.quantum(tier) for tier in prompts]
    for tier in prompts:
        share = served[tier] / sum(served.values())
        assert share == pytest.approx(weights[tier] / sum(weights), rel=0.05)


def test_dynamo_edf_an_emptied_class_keeps_no_credit():
    policy = DynamoEdfPolicy(quanta=(1000.0,))
    policy.add(make_ticket(1, tier=0, prompt_tokens=100), 0.0)
    assert policy.pop(0.0).request_id == "r1"  # class 0 earned 1000, spent 100, and emptied
    # Had it kept its 900, its 1,800-token head would need one more visit and go before class 1's
    # 2,000-token head (two visits); from zero both need two, and class 1 is visited first.
    policy.add(make_ticket(2, tier=1, prompt_tokens=2000), 0.0)
    policy.add(make_ticket(3, tier=0, prompt_tokens=1800), 0.0)
    assert [t.request_id for t in drain(policy)] == ["r2", "r3"]


# -- three estimates: <policy>, <policy>-uncorrected, <policy>-oracle -------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("slo", ("slo", "corrected")),
        ("slo-oracle", ("slo", "oracle")),
        ("vllm-priority-uncorrected", ("vllm-priority", "uncorrected")),
        (ORACLE, ("sjf", "oracle")),
        (UNCORRECTED, ("sjf", "uncorrected")),
        ("policies.slo:SloPolicy-oracle", ("policies.slo:SloPolicy", "oracle")),
        ("nope-oracle", ("nope-oracle", "corrected")),  # not a policy: left for make_policy to refuse
    ],
)
def test_estimate_variant_names(name, expected):
    assert estimate_variant(name) == expected


PERF = PerfModel()


@pytest.fixture(scope="module")
def workload():
    return paper_workload(400, seed=5, replicas=1, load=1.2, perf=PERF)


def simulate(workload, policy):
    """The run with only the policy deciding: no early rejection, no queue deadline."""
    data = core_config_for(workload, PERF).model_dump()
    data["scheduler"]["admission"]["enabled"] = False
    config = CoreConfig.model_validate(data)
    return Simulation(workload, policy, PERF, 1, config, queue_timeout_s=3600.0).run()


@pytest.mark.parametrize("policy", ["slo", "dynamo-edf"])
def test_every_policy_runs_on_three_estimates(workload, policy):
    true = np.array([it.output_tokens for it in workload.items], dtype=float)
    corrected = simulate(workload, policy)
    uncorrected = simulate(workload, f"{policy}-uncorrected")
    oracle = simulate(workload, f"{policy}-oracle")
    assert np.array_equal(oracle.corrected_estimate, true)
    assert np.array_equal(uncorrected.corrected_estimate, uncorrected.raw_estimate)
    assert not np.array_equal(corrected.corrected_estimate, corrected.raw_estimate)  # it learned
    assert oracle.stats.policy == uncorrected.stats.policy == policy
    for run in (corrected, uncorrected, oracle):
        assert not np.isnan(run.finish).any()


def test_vllm_priority_preempts_in_the_simulator_and_every_request_still_finishes_once(workload):
    vllm, ours = simulate(workload, "vllm-priority"), simulate(workload, "priority")
    assert vllm.num_preemptions == 0  # the engine never ran out of KV on its own
    assert sum(c.preempted for c in vllm.stats.counters.values()) > 0
    assert sum(c.preempted for c in ours.stats.counters.values()) == 0
    assert not np.isnan(vllm.finish).any()
    assert sum(c.completed for c in vllm.stats.counters.values()) == len(workload.items)
