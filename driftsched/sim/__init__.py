"""Simulation support: L4 performance model, engine state, synthetic workloads and trace replay."""
