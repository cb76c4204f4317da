"""Measurements of a decoded model or an artifact: evaluation (loss, bpb, KL divergence), fidelity
statistics, pre-artifact error metrics, byte accounting and code bytes."""
