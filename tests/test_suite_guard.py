"""The guard in tests/conftest.py: a test without the `slow` marker cannot start Ray or vLLM unnoticed, so
`make test-fast` (`-m "not slow"`) stays free of them; `slow` tests get the long timeout.

The guard runs on a copy of conftest.py in a pytest subprocess. Starting Ray is stood in for by what every
Ray start does first, spawning an executable named `gcs_server`, so this check costs no Ray start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

SUITE = """
import subprocess
import sys
import types

import pytest


def _spawn_gcs_server(tmp_path):
    gcs = tmp_path / "gcs_server"
    gcs.write_text("#!/bin/sh\\n")
    gcs.chmod(0o755)
    subprocess.run([str(gcs)], check=True)


def test_a_uses_serve_cluster(serve_cluster):
    raise AssertionError("the guard stops this test before the fixture starts Ray")


def test_b_starts_ray(tmp_path):
    _spawn_gcs_server(tmp_path)


def test_c_imports_vllm():
    sys.modules["vllm"] = types.ModuleType("vllm")


@pytest.mark.slow
def test_d_slow_may_start_ray_and_has_the_long_timeout(tmp_path, request):
    _spawn_gcs_server(tmp_path)
    assert request.node.get_closest_marker("timeout").args == (600,)


def test_e_what_was_started_before_a_test_is_not_its_doing():
    assert "vllm" in sys.modules
"""


def test_unmarked_tests_that_start_ray_or_vllm_fail_with_a_hint_and_slow_ones_pass(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    slow: starts Ray or vLLM\n")
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=3)  # b and c pass, then fail at teardown
    hint = "but is not marked slow: add `@pytest.mark.slow`*"
    result.stdout.fnmatch_lines_random([
        "*ERROR at setup of test_a_uses_serve_cluster*",
        f"*test_a_uses_serve_cluster uses serve_cluster {hint}",
        "*ERROR at teardown of test_b_starts_ray*",
        f"*test_b_starts_ray started Ray {hint}",
        "*ERROR at teardown of test_c_imports_vllm*",
        f"*test_c_imports_vllm started vLLM {hint}",
    ])
