"""Bearer tokens with roles.

A token reads `lethe_<id>_<secret>`: the id finds the row, the secret is compared in constant
time with its stored SHA-256 (tokens are 256-bit random, so a plain hash is enough: there is
nothing to brute-force). Tokens are shown once, when created, and never stored in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.intake.limits import retry_after
from shared.secrets import PLACEHOLDER

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS api_tokens (
        token_id text PRIMARY KEY,
        role text NOT NULL,
        secret_sha256 text NOT NULL,
        label text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz)""",
    "ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS last_used_at timestamptz",
    # A recipient's token (role recipient) acts for that recipient of the register only.
    "ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS recipient_id text",
)
BOOTSTRAP_LABEL = "bootstrap"
TOKEN_COOKIE = "lethe_token"  # noqa: S105 - the name of the cookie, not a token
MIN_SECRET_CHARS = 32


class Role(StrEnum):
    SUBMITTER = "submitter"
    COMPLIANCE = "compliance"
    LEGAL = "legal"
    RECIPIENT = "recipient"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    token_id: str
    role: Role
    recipient_id: str | None = None  # for role recipient: whose notices it may see and acknowledge


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_TOKEN_ID = re.compile(r"[^\x00-\x1f\x7f]{1,200}")  # ids of earlier tokens vary; never a control character


def parse(token: str) -> tuple[str, str] | None:
    """(id, secret) of `lethe_<id>_<secret>`; None for anything else, an id with a control
    character included (a cookie's NUL reached the database, which refused it: a 500, not a 401)."""
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != "lethe" or not _TOKEN_ID.fullmatch(parts[1]) or not parts[2]:
        return None
    return parts[1], parts[2]


async def create(
    pool: asyncpg.Pool, role: Role, label: str = "", token: str | None = None, recipient_id: str | None = None
) -> str:
    """A new token (or the given one, for bootstrap); idempotent for a given token."""
    token = token or f"lethe_{secrets.token_hex(6)}_{secrets.token_urlsafe(32).replace('_', '-')}"
    parsed = parse(token)
    if parsed is None:
        raise ValueError("token: must read lethe_<id>_<secret>")
    token_id, secret = parsed
    await pool.execute(
        "INSERT INTO api_tokens (token_id, role, secret_sha256, label, recipient_id) VALUES ($1,$2,$3,$4,$5)"
        " ON CONFLICT (token_id) DO UPDATE SET role = excluded.role, secret_sha256 = excluded.secret_sha256",
        token_id,
        role.value,
        _sha256(secret),
        label,
        recipient_id,
    )
    return token


def parse_bootstrap(spec: str, development: bool = False) -> list[tuple[Role, str]]:
    """LETHE_BOOTSTRAP_TOKENS=role:token,role:token. A token whose secret is short or a
    placeholder (`lethe_x_y`, `…change-me…`) is refused outside a development stack: it is what
    an example file or a first try leaves behind, and it opens the API."""
    entries = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        role, sep, token = item.partition(":")
        if not sep or role not in Role.__members__.values() or parse(token) is None:
            raise ValueError(
                "LETHE_BOOTSTRAP_TOKENS: each entry must read role:lethe_<id>_<secret>, "
                f"role one of {', '.join(r.value for r in Role)}"
            )
        if role == Role.RECIPIENT:  # it must name its recipient: made with `lethe tokens create`
            raise ValueError("LETHE_BOOTSTRAP_TOKENS: a recipient token is made with POST /v1/tokens")
        secret = token.split("_", 2)[2]
        if not development and (len(secret) < MIN_SECRET_CHARS or PLACEHOLDER.search(token)):
            raise ValueError(
                f"LETHE_BOOTSTRAP_TOKENS: the {role} token is a placeholder or too short (its secret needs"
                f" {MIN_SECRET_CHARS}+ random characters; e.g. lethe_admin_$(openssl rand -hex 32))"
            )
        entries.append((Role(role), token))
    return entries


async def sync_bootstrap(pool: asyncpg.Pool, entries: list[tuple[Role, str]]) -> int:
    """Provision the configured bootstrap tokens, and revoke the ones provisioned earlier that are
    no longer configured: a token removed from the configuration must stop working. Returns how
    many were revoked."""
    for role, token in entries:
        await create(pool, role, BOOTSTRAP_LABEL, token)
    configured = [parsed[0] for _, t in entries if (parsed := parse(t))]
    status: str = await pool.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE label = $1 AND revoked_at IS NULL"
        " AND NOT token_id = ANY($2::text[])",
        BOOTSTRAP_LABEL,
        configured,
    )
    return int(status.split()[-1])


async def listing(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT token_id, role, label, created_at, last_used_at, revoked_at FROM api_tokens"
        " ORDER BY created_at, token_id LIMIT 1000"
    )
    return rows


async def revoke(pool: asyncpg.Pool, token_id: str) -> asyncpg.Record | None:
    """Idempotent: revoking a revoked token keeps its first revocation time."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE token_id = $1"
        " RETURNING token_id, role, label, created_at, last_used_at, revoked_at",
        token_id,
    )
    return row


def client_address(request: Request) -> str:
    """The peer's address (uvicorn puts a trusted proxy's X-Forwarded-For here; see
    FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else "unknown"


# The token and, at most once a minute (a write per request would cost every call), its last use.
_AUTHENTICATE = """
WITH token AS (
    SELECT token_id, role, secret_sha256, recipient_id FROM api_tokens
     WHERE token_id = $1 AND revoked_at IS NULL),
used AS (UPDATE api_tokens SET last_used_at = now() WHERE token_id IN (SELECT token_id FROM token)
         AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))
SELECT role, secret_sha256, recipient_id FROM token"""

BEARER = HTTPBearer(auto_error=False, description="A Lethe API token: lethe_<id>_<secret>")


async def verify(pool: asyncpg.Pool, token: str) -> Caller | None:
    """The caller a token names, or None for a malformed, unknown, revoked or wrong one."""
    parsed = parse(token.strip())
    if parsed is None:
        return None
    token_id, secret = parsed
    row = await pool.fetchrow(_AUTHENTICATE, token_id)
    # Compare even when the id is unknown, so timing does not tell which ids exist.
    stored = row["secret_sha256"] if row else "0" * 64
    if not hmac.compare_digest(stored, _sha256(secret)) or row is None:
        return None
    return Caller(token_id, Role(row["role"]), row["recipient_id"])


def failure_wait(request: Request) -> float:
    """How long this client address must wait after too many failed authentications (0: none).
    Counted per address, never per token: failures naming someone's token id must not slow
    that token down."""
    wait: float = request.app.state.auth_failures.wait(client_address(request))
    return wait


def record_failure(request: Request) -> None:
    request.app.state.auth_failures.allow(client_address(request))


async def verify_from(request: Request, token: str) -> tuple[Caller | None, float]:
    """The caller a token names, else None and how long its address must wait (0: no wait yet,
    and this failure counted).

    The token is verified even when its address is over its failure budget: behind a proxy or a
    NAT every client shares one address, and refusing them all unseen would let anyone lock out
    everyone (requests with legal deadlines included) by sending bad tokens. This gives a
    guesser nothing: a generated secret is 256 random bits (a bootstrap one 32+ random
    characters), far beyond guessing at any rate, so the lookup (a primary key and a
    constant-time compare) is all an over-budget guess costs. Failures past the budget are not
    counted: the address's bucket is already empty, and counting would only add work."""
    caller = await verify(request.app.state.ctx.pool, token)
    if caller is not None:
        return caller, 0.0
    if wait := failure_wait(request):
        return None, wait
    record_failure(request)
    return None, 0.0


async def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    token = credentials.credentials if credentials else request.cookies.get(TOKEN_COOKIE, "")
    if not token.strip():  # no credentials at all: a browser on its way to sign in, not a guess
        raise HTTPException(
            401, "authorization: a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    caller, wait = await verify_from(request, token)
    if caller is None and wait:
        raise HTTPException(
            429, "authorization: too many failed attempts from this address", headers=retry_after(wait)
        )
    if caller is None:
        raise HTTPException(
            401, "authorization: invalid or revoked token", headers={"WWW-Authenticate": "Bearer"}
        )
    wait = request.app.state.rate_limiter.allow(caller.token_id)
    if wait:
        raise HTTPException(429, "rate limit exceeded for this token", headers=retry_after(wait))
    return caller


def require(*roles: Role, admin: bool = True) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency admitting the given roles and admin (who may do everything else:
    `admin=False` for what only the role itself may say, such as a recipient's acknowledgement)."""
    allowed = {*roles, Role.ADMIN} if admin else set(roles)

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(BEARER),  # noqa: B008
    ) -> Caller:
        caller = await authenticate(request, credentials)
        if caller.role not in allowed:
            raise HTTPException(403, f"role {caller.role.value} may not do this")
        request.state.caller = caller  # for handlers whose answer depends on who asks
        return caller

    return dependency


def caller_of(request: Request) -> Caller:
    """Who is calling, as the route's guard found it. A route without a guard has no caller:
    that is a programming error, and fails closed."""
    caller = getattr(request.state, "caller", None)
    if not isinstance(caller, Caller):
        raise RuntimeError("caller_of: the route is not guarded (auth.guarded)")
    return caller


def guarded(*roles: Role, admin: bool = True) -> dict[str, Any]:
    """Route options: the role check, and the roles in the OpenAPI document (`x-roles`), from
    which the tests derive what every role may and may not call."""
    allowed = (*roles, Role.ADMIN) if admin else roles
    return {
        "dependencies": [Depends(require(*roles, admin=admin))],
        "openapi_extra": {"x-roles": sorted({r.value for r in allowed})},
    }
