"""Mailing list: lists, subscribers, consent records and the suppression list."""
