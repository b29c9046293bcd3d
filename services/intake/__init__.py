"""Intake: the HTTP API, the request store with its transactional outbox, and the relay."""
