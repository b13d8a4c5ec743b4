"""Config loading and validation messages; the classifier's rules."""

from __future__ import annotations

import pytest

from driftsched.core.classify import Classifier
from driftsched.core.config import load_core_config, parse_core_config
from driftsched.core.errors import ConfigError

YAML = """
tenants:
  - {name: chatbot, tier: 0, weight: 4, requests_per_minute: 600}
  - {name: batch, tier: 3, weight: 1, tokens_per_minute: 200000}
scheduler:
  policy: aging
  policy_options: {age_step_s: 5}
estimator:
  priors: {qa: 40, chat: 300}
  drift: {half_life_s: 120, shift_window: 16, shift_min_samples: 8}
"""


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "core.yaml"
    path.write_text(YAML)
    cfg = load_core_config(path)
    assert [t.name for t in cfg.tenants] == ["chatbot", "batch"]
    assert cfg.scheduler.policy_options == {"age_step_s": 5}
    assert cfg.estimator.priors["chat"] == 300 and cfg.estimator.drift.shift_window == 16


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tenants": []}, "at least one tenant"),
        ({"tenants": [{"name": "a"}, {"name": "a"}]}, "repeated: ['a']"),
        ({"tenants": [{"name": "a", "weight": 0}]}, "must be > 0, got 0.0"),
        ({"tenants": [{"name": "a", "max_queued": 0}]}, "must be >= 1, got 0"),
        ({"tenants": [{"name": "a b"}]}, "tenants.0.name"),
        ({"tenants": [{"name": "a", "wieght": 2}]}, "wieght"),
        ({"tenants": [{"name": "a"}], "estimator": {"priors": {"qa": -3}}}, "{'qa': -3.0}"),
        (
            {"tenants": [{"name": "a"}], "estimator": {"drift": {"shift_min_samples": 40}}},
            "lower shift_min_samples or enlarge shift_window",
        ),
        ({"tenants": [{"name": "a"}], "classifier": {"short_below": 600}}, "short_below"),
    ],
)
def test_validation_messages_state_value_and_fix(data, message):
    with pytest.raises(ConfigError) as info:
        parse_core_config(data)
    assert message in str(info.value)


def test_non_mapping_yaml_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_core_config(path)


@pytest.mark.parametrize(
    ("given", "prompt", "max_tokens", "text", "expected"),
    [
        ("longform", 10, 10, "fix this python bug", "longform"),  # the caller's category wins
        ("nonsense", 10, 500, None, "chat"),  # an unknown given category is ignored
        (None, 50, 500, "Here is my code:\n```py\nx=1\n```", "code"),
        (None, 50, 500, "Please summarize the following", "summarize"),
        (None, 50, 500, "Write a detailed report on tides", "longform"),
        (None, 3000, 500, None, "summarize"),
        (None, 50, 32, None, "qa"),
        (None, 50, 500, "hello there", "chat"),
    ],
)
def test_category_rules(given, prompt, max_tokens, text, expected):
    assert Classifier().category(given, prompt, max_tokens, text) == expected

