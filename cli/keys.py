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

from shared.crypto import IdentifierSeal
from shared.db import create_pool
from shared.rotation import SEALED, ResealCount, reseal
from shared.settings import SecretsSettings

if TYPE_CHECKING:
    from cli.stack import Secrets

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
) -> None:
    """Re-seal every stored identifier with the current key; safe beside running services."""
    if intake_db or tracker_db:
        seal = SecretsSettings().seal()
        targets = {"intake": intake_db, "tracker": tracker_db}
    else:
        from cli.stack import StackConfig

        secrets = _stack_secrets()
        seal = IdentifierSeal(secrets.identifier_key, secrets.extra_keys())
        config = StackConfig.from_env(_secrets_path().parent)
        targets = {s: f"{config.postgres_url}/{config.db_prefix}_{s}" for s in SEALED}
    left = 0
    for service, url in targets.items():
        if url is None:
            continue
        count = asyncio.run(_reseal(url, seal, service))
        typer.echo(f"{service}: {count.rewritten} re-sealed, {count.unopenable} opened by no key given")
        left += count.unopenable
    if left:
        raise typer.Exit(1)  # do not drop a key until this says 0


async def _reseal(url: str, seal: IdentifierSeal, service: str) -> ResealCount:
    pool = await create_pool(url, max_size=2)
    try:
        return await reseal(pool, seal, SEALED[service])
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
            "no embedded stack here: pass --intake-db/--tracker-db (keys from the environment)"
        )
    return Secrets.load_or_create(path)


def _secrets_path() -> Path:
    from cli.main import state_dir

    return state_dir() / "secrets.json"
