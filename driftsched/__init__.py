"""DriftSched: QoS-aware, drift-correcting scheduling for multi-tenant LLM inference."""

__version__ = "0.1.0"
