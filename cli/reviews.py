"""`lethe reviews`: records that may be someone else's, and the decisions on them."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.client import ApiClient

app = typer.Typer(
    help="Records that may be someone else's, waiting for a decision (compliance).", no_args_is_help=True
)


def _client() -> ApiClient:
    from cli.main import api  # the one place the CLI's token and URL are found

    return api()


@app.command("list")
def list_reviews(
    request_id: Annotated[str | None, typer.Option("--request", help="Only this request's.")] = None,
    state: Annotated[
        str | None, typer.Option(help="open, erasing, erased, restricted, unrestricted, kept or failed.")
    ] = "open",
) -> None:
    """Review items: what found the records, what speaks against them (masked), and why."""
    params = {k: v for k, v in (("request_id", request_id), ("state", state)) if v}
    response = _client().get("/v1/reviews", params=params)
    if response.status_code != 200:
        typer.echo(json.dumps(response.json(), indent=2))
        raise typer.Exit(1)
    items = response.json()
    for r in items:
        records = ", ".join(f"{n} {c}" for c, n in r["records"].items()) or "-"
        typer.echo(f"{r['id']}  {r['request_id']}  {r['system'] or '(request)'}  {r['state']}  {records}")
        typer.echo(f"    {r['explanation']}")
        if r["matched"]:
            typer.echo(f"    found by: {'; '.join(r['matched'])}")
        if r["conflicting"]:
            typer.echo(f"    but names: {'; '.join(r['conflicting'])}")
    typer.echo(f"{len(items)} review item(s)")


@app.command("decide")
def decide(
    review_id: str,
    reason: Annotated[str, typer.Option(help="Why (kept by Lethe; its digest is audited).")],
    erase: Annotated[bool, typer.Option("--erase", help="They are the subject's: erase them.")] = False,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave them (not the subject's, or excluded).")
    ] = False,
) -> None:
    """Decide one review item, once."""
    if erase == keep:
        raise typer.BadParameter("give --erase or --keep")
    response = _client().post(
        f"/v1/reviews/{review_id}", json={"decision": "erase" if erase else "keep", "reason": reason}
    )
    typer.echo(json.dumps(response.json(), indent=2))
    if response.status_code >= 400:
        raise typer.Exit(1)
