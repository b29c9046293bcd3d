"""`lethe notices`: what recipients were told (Art. 19): tasks for compliance, webhooks that
failed or wait for an acknowledgement, and closing one with a note."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.client import ApiClient

app = typer.Typer(help="Notices to recipients (compliance).", no_args_is_help=True)


def _client() -> ApiClient:
    from cli.main import api  # the one place the CLI's token and URL are found

    return api()


@app.command("list")
def list_notices(
    state: Annotated[
        str | None, typer.Option(help="pending, delivered, acknowledged or failed.")
    ] = "pending",
    request_id: Annotated[str | None, typer.Option("--request", help="Only this request's.")] = None,
    overdue: Annotated[bool, typer.Option(help="Only acknowledgements missing past their time.")] = False,
) -> None:
    """Notices, oldest tasks first in the dashboard; here newest first."""
    params = {k: v for k, v in (("state", state), ("request_id", request_id)) if v}
    if overdue:
        params["overdue"] = "true"
    response = _client().get("/v1/notices", params=params)
    if response.status_code != 200:
        typer.echo(json.dumps(response.json(), indent=2))
        raise typer.Exit(1)
    items = response.json()
    for n in items:
        categories = ", ".join(f"{c['system']}/{c['category']}" for c in n["categories"])
        typer.echo(
            f"{n['id']}  {n['request_id']}  {n['recipient_id']}  {n['channel']}  {n['state']}  {categories}"
        )
        if n["contact"]:
            typer.echo(f"    tell: {n['contact']}")
        if n["identifiers"]:
            typer.echo(f"    to find the person: {json.dumps(n['identifiers'])}")
        if n["last_error"]:
            typer.echo(f"    last error ({n['attempts']} tries): {n['last_error']}")
        if n["must_acknowledge"] and n["state"] != "acknowledged":
            typer.echo(
                f"    acknowledgement required by {n['acknowledge_by']}{' (OVERDUE)' if n['overdue'] else ''}"
            )
    typer.echo(f"{len(items)} notice(s)")


@app.command("close")
def close(
    notice_id: str,
    note: Annotated[
        str, typer.Option(help="How the recipient was told (kept by Lethe; its digest is audited).")
    ],
) -> None:
    """Close a notice: the recipient was told another way, or its acknowledgement is in hand."""
    response = _client().post(f"/v1/notices/{notice_id}/close", json={"note": note})
    typer.echo(json.dumps(response.json(), indent=2))
    if response.status_code != 200:
        raise typer.Exit(1)


@app.command("schema")
def schema() -> None:
    """The JSON Schema of the body a recipient's webhook receives (deploy/notice.schema.json)."""
    from shared.contracts.notices import NoticeBody

    typer.echo(json.dumps(NoticeBody.model_json_schema(), indent=2))
