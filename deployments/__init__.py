"""Ray Serve shells around the scheduling core: engines, LLM replicas, scheduler and drift actors."""
