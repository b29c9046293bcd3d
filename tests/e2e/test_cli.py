"""The `lethe` command for people, against the running stack."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.stack import Stack
from tests.e2e.conftest import wait_final

pytestmark = pytest.mark.e2e
RUNNER = CliRunner()


@pytest.fixture
def env(stack: Stack) -> dict[str, str]:
    return {"LETHE_API_URL": stack.api_url, "LETHE_API_TOKEN": stack.secrets.admin_token}


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = RUNNER.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_submit_status_report_list_and_audit(env: dict[str, str], stack: Stack, api: httpx.Client) -> None:
    code, out = run(
        env, "submit", "--request-id", "cli-1", "--email", "cli.person@example.com", "--system", "mailing"
    )
    assert code == 0 and json.loads(out)["status"] in ("received", "in_progress")
    wait_final(api, "cli-1")
    code, out = run(env, "status", "cli-1")
    assert code == 0 and json.loads(out)["status"] == "completed"
    code, out = run(env, "report", "cli-1")
    assert code == 0 and "Request cli-1" in out and "[mailing] done" in out
    code, out = run(env, "report", "cli-1", "--json")
    assert code == 0 and json.loads(out)["systems"][0]["system"] == "mailing"
    code, out = run(env, "list")
    assert code == 0 and "cli-1" in out
    code, out = run(env, "list", "--overdue")
    assert code == 0 and "cli-1" not in out
    code, out = run(env, "audit", "cli-1")
    assert code == 0 and "audit chain verified" in out
    code, out = run(env, "extend", "cli-1", "--months", "1", "--reason", "too late now")
    assert code == 1 and "finished" in out
    code, out = run(env, "status", "no-such-request")
    assert code == 1 and "no such request" in out


def test_seed_schema_and_bad_seed_file(tmp_path: Path) -> None:
    code, out = run({}, "seed", "--schema")
    assert code == 0 and json.loads(out)["title"] == "SeedFile"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"people": [{"label": "x", "billing": [{"account_id": "A"}]}]}))
    code, out = run({}, "seed", str(bad))
    assert code == 2 and "people.0.billing.0.customer_id" in out
