"""Builders for tests, the demo and benchmarks: tiny random checkpoints with their chat
templates, and sample documents. Never imported by the service itself."""
