"""The `lethe` command-line tool: run the embedded stack, seed data, submit and follow requests."""
