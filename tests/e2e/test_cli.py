"""The `lethe` command for people, against the running stack."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.stack import Stack
from tests.e2e.conftest import DEPLOYMENT_TOKEN, wait_final

pytestmark = pytest.mark.e2e
RUNNER = CliRunner()


@pytest.fixture
def env(stack: Stack) -> dict[str, str]:
    return {"LETHE_API_URL": stack.api_url, "LETHE_TOKEN": stack.secrets.admin_token}


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


def test_the_token_comes_from_the_option_the_variable_or_the_stacks_secrets(
    stack: Stack, api: httpx.Client
) -> None:
    api.post(
        "/v1/requests",
        json={
            "request_id": "cli-token",
            "type": "erasure",
            "identity_verified": True,
            "subject": {"emails": ["cli.token@example.com"]},
            "systems": ["mailing"],
        },
    )
    by_url = {"LETHE_API_URL": stack.api_url, "LETHE_STATE_DIR": str(stack.config.state_dir)}
    # The stack's own admin token, found in its state directory, works beside a deployment's.
    assert run(by_url, "status", "cli-token")[0] == 0
    assert run({**by_url, "LETHE_TOKEN": DEPLOYMENT_TOKEN}, "status", "cli-token")[0] == 0
    assert run(by_url, "--token", DEPLOYMENT_TOKEN, "status", "cli-token")[0] == 0


@pytest.mark.parametrize(
    ("args", "env_token", "names"),
    [
        (["--token", "lethe_nosuch_token"], None, "--token"),
        ([], "lethe_nosuch_token", "LETHE_TOKEN"),
        ([], "not a token at all", "LETHE_TOKEN"),
    ],
)
def test_a_refused_token_is_one_line_naming_where_it_came_from(
    stack: Stack, tmp_path: Path, args: list[str], env_token: str | None, names: str
) -> None:
    env = {"LETHE_API_URL": stack.api_url, "LETHE_STATE_DIR": str(tmp_path)}
    if env_token:
        env["LETHE_TOKEN"] = env_token
    code, out = run(env, *args, "report", "anything")
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert f"refused the token from {names}" in out and "LETHE_TOKEN" in out and "Traceback" not in out


def test_no_token_or_no_api_is_one_line_too(stack: Stack, tmp_path: Path) -> None:
    code, out = run({"LETHE_API_URL": stack.api_url, "LETHE_STATE_DIR": str(tmp_path)}, "list")
    assert code == 1 and "no API token" in out and "--token" in out and len(out.strip().splitlines()) == 1
    code, out = run({"LETHE_API_URL": "http://127.0.0.1:9", "LETHE_TOKEN": DEPLOYMENT_TOKEN}, "status", "x")
    assert code == 1 and "cannot reach the API" in out and len(out.strip().splitlines()) == 1


def test_a_role_that_may_not_is_told_so(stack: Stack) -> None:
    code, out = run(
        {"LETHE_API_URL": stack.api_url, "LETHE_TOKEN": DEPLOYMENT_TOKEN},
        "tokens",
        "create",
        "--role",
        "legal",
    )
    assert code == 1 and "may not do this" in out and "role compliance" in out


def test_seed_schema_and_bad_seed_file(tmp_path: Path) -> None:
    code, out = run({}, "seed", "--schema")
    assert code == 0 and json.loads(out)["title"] == "SeedFile"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"people": [{"label": "x", "billing": [{"account_id": "A"}]}]}))
    code, out = run({}, "seed", str(bad))
    assert code == 2 and "people.0.billing.0.customer_id" in out
