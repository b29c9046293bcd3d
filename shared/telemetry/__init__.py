"""Traces, metrics and the health endpoints: OpenTelemetry in every service, nothing personal
in any span attribute or metric label."""
