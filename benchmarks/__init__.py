"""Benchmark scripts, each run as ``.venv/bin/python benchmarks/bench_<name>.py``.

A package only so that tests import a script's functions as ``benchmarks.bench_<name>`` (pytest puts the
repository root on ``sys.path``); the scripts import nothing from each other.
"""
