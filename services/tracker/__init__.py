"""Saga tracker: gathers every system's outcome, decides the request's status, builds the report."""
