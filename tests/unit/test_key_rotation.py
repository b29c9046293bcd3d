"""Rotating the identifier key: the new key seals, old keys still open, a value is re-sealed
without its identifiers changing, a bad extra key stops start-up naming its variable, and
`lethe keys rotate`/`forget-old` move the embedded stack's keys (the file stays private)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from typer.testing import CliRunner

from cli.main import app
from shared.crypto import IdentifierSeal, IdentifierSealError
from shared.identity import Identities
from shared.rotation import rotated
from shared.settings import SecretsSettings

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()
ALICE = Identities(emails=["alice@example.com"])


def test_the_new_key_seals_and_the_old_one_still_opens() -> None:
    sealed_before = IdentifierSeal(OLD).seal(ALICE)
    during = IdentifierSeal(NEW, [OLD])
    assert during.open(sealed_before) == ALICE
    assert IdentifierSeal(NEW).open(during.seal(ALICE)) == ALICE  # sealed with the new key
    resealed = during.rotate(sealed_before)
    assert IdentifierSeal(NEW).open(resealed) == ALICE
    with pytest.raises(IdentifierSealError):
        IdentifierSeal(OLD).open(resealed)
    with pytest.raises(IdentifierSealError):
        IdentifierSeal(NEW).rotate(IdentifierSeal(Fernet.generate_key().decode()).seal(ALICE))


def test_sealed_strings_anywhere_in_a_document_are_resealed_and_nothing_else() -> None:
    seal = IdentifierSeal(NEW, [OLD])
    evidence = IdentifierSeal(OLD).seal_text('{"masked": "a***@example.com"}')
    document = [{"review_id": "r1", "evidence": evidence, "groups": [["crm"]], "round": 2}]
    after = rotated(document, seal.rotate)
    assert after[0]["evidence"] != evidence and IdentifierSeal(NEW).open_text(after[0]["evidence"])
    assert {k: v for k, v in after[0].items() if k != "evidence"} == {
        k: v for k, v in document[0].items() if k != "evidence"
    }


def test_a_bad_extra_key_stops_the_service_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_IDENTIFIER_KEY", NEW)
    monkeypatch.setenv("LETHE_PSEUDONYM_KEY", "ab" * 32)
    monkeypatch.setenv("LETHE_IDENTIFIER_EXTRA_KEYS", f"{OLD},not-a-key")
    with pytest.raises(ValidationError, match="LETHE_IDENTIFIER_EXTRA_KEYS"):
        SecretsSettings()
    monkeypatch.setenv("LETHE_IDENTIFIER_EXTRA_KEYS", f" {OLD} ,")
    sealed = IdentifierSeal(OLD).seal(ALICE)
    assert SecretsSettings().seal().open(sealed) == ALICE


def test_the_embedded_stack_rotates_and_forgets_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("LETHE_IDENTIFIER_KEY", raising=False)
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"identifier_key": OLD}))
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "rotate"]).exit_code == 0
    stored = json.loads(path.read_text())
    assert stored["identifier_key"] not in (OLD, "") and stored["identifier_extra_keys"] == OLD
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert runner.invoke(app, ["keys", "forget-old"]).exit_code == 0
    assert json.loads(path.read_text())["identifier_extra_keys"] == ""


def test_reseal_without_a_stack_or_databases_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LETHE_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["keys", "reseal"])
    assert result.exit_code != 0 and "--intake-db" in result.output


def test_reseal_on_a_deployment_names_a_missing_key_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LETHE_IDENTIFIER_KEY", raising=False)
    result = CliRunner().invoke(app, ["keys", "reseal", "--intake-db", "postgresql://nowhere/x"])
    assert result.exit_code != 0 and "LETHE_IDENTIFIER_KEY" in result.output
    assert "Traceback" not in result.output
