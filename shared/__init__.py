"""Lethe's library: contracts, Kafka and outbox helpers, and the worker runtime.

Every service imports from here; nothing here imports a service.
"""
