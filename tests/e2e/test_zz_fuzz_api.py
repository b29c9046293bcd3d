"""Fuzz the HTTP API from its own OpenAPI document with schemathesis: whatever the input, no
5xx and no answer that breaks the documented schema. Runs last: it leaves odd data behind."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from cli.stack import Stack

pytestmark = pytest.mark.e2e


def test_no_server_error_and_no_schema_violation(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.secrets.admin_token}"}
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json", headers=headers)
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

        check()
        fuzzed.append(operation.label)
    assert len(fuzzed) >= 12, fuzzed
