"""Live benchmarks: an open-loop HTTP load generator, per-policy runs of the Serve app, simulator fidelity."""
