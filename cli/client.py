"""How the `lethe` command reaches the API: which URL, which token, and one clear line (never a
traceback) when the API is not there or refuses the token.

The token is the first of: `--token`, `LETHE_TOKEN`, the admin token that `lethe up` keeps in
its state directory (`.lethe/secrets.json`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer

HOW_TO_SET = "pass --token lethe_<id>_<secret> or set LETHE_TOKEN"


@dataclass(frozen=True)
class Credentials:
    token: str | None
    source: str  # said in errors, so a user knows which token was refused


def find_credentials(option: str | None, state_dir: Path) -> Credentials:
    if option:
        return Credentials(option.strip(), "--token")
    if os.environ.get("LETHE_TOKEN"):
        return Credentials(os.environ["LETHE_TOKEN"].strip(), "LETHE_TOKEN")
    secrets_file = state_dir / "secrets.json"
    try:
        token = json.loads(secrets_file.read_text()).get("admin_token")
    except (OSError, ValueError, AttributeError):
        token = None
    if token:
        return Credentials(token, f"{secrets_file} (the admin token `lethe up` provisions)")
    return Credentials(None, "nowhere")


def api_url() -> str:
    return os.environ.get("LETHE_API_URL", f"http://127.0.0.1:{os.environ.get('LETHE_HTTP_PORT', '8080')}")


def fail(message: str) -> typer.Exit:
    typer.echo(f"lethe: {message}", err=True)
    return typer.Exit(1)


class ApiClient(httpx.Client):
    """An httpx client that turns what a user cannot act on from a traceback into one line."""

    def __init__(self, base_url: str, credentials: Credentials, timeout_s: float = 10) -> None:
        headers = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else {}
        super().__init__(base_url=base_url, headers=headers, timeout=timeout_s)
        self.credentials = credentials

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        try:
            response = super().send(request, **kwargs)
        except httpx.TransportError as exc:
            raise fail(
                f"cannot reach the API at {self.base_url} ({type(exc).__name__}): is `lethe up` running?"
                " LETHE_API_URL points elsewhere"
            ) from None
        if response.status_code == 401:
            if self.credentials.token is None:
                raise fail(f"no API token: {HOW_TO_SET}, or start the stack with `lethe up`")
            raise fail(
                f"the API refused the token from {self.credentials.source}: {_detail(response)}; {HOW_TO_SET}"
            )
        if response.status_code == 403:
            raise fail(f"the token from {self.credentials.source} may not do this ({_detail(response)})")
        return response


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or response.reason_phrase)
