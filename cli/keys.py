"""`lethe keys`: rotating the identifier key (README, Key rotation).

On a deployment, `reseal` takes its keys from the environment (LETHE_IDENTIFIER_KEY and
LETHE_IDENTIFIER_EXTRA_KEYS, as the services do) and the databases from --intake-db and
--tracker-db; on the embedded stack, from `.lethe/secrets.json` and the stack's databases."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from cryptography.fernet import Fernet
from pydantic import ValidationError

from shared.crypto import IdentifierSeal
from shared.db import create_pool
from shared.rotation import SEALED, ResealCount, reseal
from shared.service import settings_error
from shared.settings import IdentifierKeySettings
from shared.topics import SYSTEMS

if TYPE_CHECKING:
    from cli.stack import Secrets, Stack

app = typer.Typer(help="The identifier key: rotate it, re-seal what is stored.", no_args_is_help=True)


@app.command("new")
def new_key() -> None:
    """Print a new identifier key (a Fernet key)."""
    typer.echo(Fernet.generate_key().decode())


@app.command("rotate")
def rotate_embedded() -> None:
    """Embedded stack: a new sealing key; the old one keeps opening. Restart (`lethe up`), then
    `lethe keys reseal`, then `lethe keys forget-old` and restart again."""
    secrets = _stack_secrets()
    old = secrets.identifier_key
    secrets.identifier_key = Fernet.generate_key().decode()
    secrets.identifier_extra_keys = ",".join(filter(None, [old, secrets.identifier_extra_keys]))
    secrets.save(_secrets_path())
    typer.echo("new identifier key in .lethe/secrets.json; restart the stack, then: lethe keys reseal")


@app.command("forget-old")
def forget_old() -> None:
    """Embedded stack: drop the extra keys once `lethe keys reseal` left nothing they opened."""
    secrets = _stack_secrets()
    secrets.identifier_extra_keys = ""
    secrets.save(_secrets_path())
    typer.echo("old identifier keys dropped; restart the stack")


@app.command("reseal")
def reseal_command(
    intake_db: Annotated[str | None, typer.Option(help="Intake's database URL (a deployment).")] = None,
    tracker_db: Annotated[str | None, typer.Option(help="The tracker's database URL (a deployment).")] = None,
    worker_db: Annotated[
        list[str] | None, typer.Option(help="A worker's database URL (repeat for each worker).")
    ] = None,
) -> None:
    """Re-seal every stored identifier with the current key; safe beside running services."""
    if intake_db or tracker_db or worker_db:
        try:
            seal = IdentifierKeySettings().seal()  # LETHE_IDENTIFIER_KEY, LETHE_IDENTIFIER_EXTRA_KEYS
        except (ValidationError, ValueError) as exc:
            message = settings_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise typer.BadParameter(message) from None
        targets: list[tuple[str, str | None]] = [("intake", intake_db), ("tracker", tracker_db)]
        targets += [("worker", u) for u in worker_db or []]
    else:
        from cli.stack import Stack, StackConfig

        secrets = _stack_secrets()
        seal = IdentifierSeal(secrets.identifier_key, secrets.extra_keys())
        targets = list(sealed_databases(Stack(StackConfig.from_env(_secrets_path().parent))))
    left = 0
    for kind, url in targets:
        if url is None:
            continue
        count = asyncio.run(_reseal(url, seal, kind))
        typer.echo(f"{_where(url)}: {count.rewritten} re-sealed, {count.unopenable} opened by no key given")
        left += count.unopenable
    if left:
        raise typer.Exit(1)  # do not drop a key until this says 0


def _where(url: str) -> str:
    return url.rsplit("/", 1)[-1]  # the database's name, never its password


def sealed_databases(stack: Stack) -> list[tuple[str, str]]:
    """(kind of store, URL) of each of the embedded stack's databases that keep sealed values."""
    kinds = [("intake", "intake"), ("tracker", "tracker"), *(("worker", s) for s in SYSTEMS)]
    return [(kind, stack.database_url(service)) for kind, service in kinds]


async def _reseal(url: str, seal: IdentifierSeal, kind: str) -> ResealCount:
    pool = await create_pool(url, max_size=2)
    try:
        return await reseal(pool, seal, SEALED[kind])
    finally:
        await pool.close()


def current_seal() -> IdentifierSeal:
    """What opens what Lethe sealed (dead letters): LETHE_IDENTIFIER_KEY and
    LETHE_IDENTIFIER_EXTRA_KEYS where they are set, as the services read them, else the
    embedded stack's keys."""
    key = os.environ.get("LETHE_IDENTIFIER_KEY")
    if key:
        extra = os.environ.get("LETHE_IDENTIFIER_EXTRA_KEYS", "").split(",")
        return IdentifierSeal(key, [k.strip() for k in extra if k.strip()])
    if not _secrets_path().exists():
        raise typer.BadParameter(
            "LETHE_IDENTIFIER_KEY: needed to open what was sealed (no embedded stack here)"
        )
    secrets = _stack_secrets()
    return IdentifierSeal(secrets.identifier_key, secrets.extra_keys())


def _stack_secrets() -> Secrets:
    from cli.stack import Secrets

    path = _secrets_path()
    if not path.exists() or os.environ.get("LETHE_IDENTIFIER_KEY"):
        raise typer.BadParameter(
            "no embedded stack here: pass --intake-db, --tracker-db and --worker-db"
            " (keys from the environment)"
        )
    return Secrets.load_or_create(path)


def _secrets_path() -> Path:
    from cli.main import state_dir

    return state_dir() / "secrets.json"
