"""Retention rules as policy as code: one versioned YAML file, validated at start-up."""
