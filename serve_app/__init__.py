"""The DriftSched Ray Serve application: OpenAI-style HTTP ingress and the application builder."""
