"""The sign-in page: a browser carries an API token as a cookie.

The token is checked against the store before any cookie is set, so a page elsewhere cannot
sign a person in with a string of its choosing, and the form is defended against cross-site
posting twice over: a double-submit token (a random value both in a SameSite=Strict cookie and
in the form, which a page on another site can neither read nor have sent), and the browser's
own Sec-Fetch-Site header where it gives one. Cookies are Secure unless LETHE_DEVELOPMENT."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.intake import auth
from services.intake.auth import TOKEN_COOKIE
from services.intake.limits import retry_after
from services.intake.pages import TEMPLATES

pages = APIRouter(include_in_schema=False)
CSRF_COOKIE = "lethe_login_csrf"
SESSION_S = 8 * 3600
FORM_S = 3600  # a sign-in form left open longer is refused, and shown again


def _safe_next(target: str) -> str:
    """Only a path on this site: never another site after signing in (an open redirect)."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok else "/dashboard"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int, path: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=not request.app.state.development,
    )


def _form(request: Request, next: str, message: str = "", status: int = 200) -> HTMLResponse:
    """The form with a fresh double-submit token, in the page and in its cookie."""
    csrf = secrets.token_urlsafe(32)
    page = TEMPLATES.get_template("login.html").render(next=_safe_next(next), csrf=csrf, message=message)
    response = HTMLResponse(page, status_code=status)
    _set_cookie(request, response, CSRF_COOKIE, csrf, FORM_S, "/login")
    return response


def _cross_site(request: Request, csrf: str) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), csrf.encode()):
        return True
    # Browsers that say where a request comes from: only this site's own pages may post here.
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


@pages.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/dashboard") -> HTMLResponse:
    return _form(request, next)


@pages.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/dashboard",
) -> Response:
    if _cross_site(request, csrf):
        return _form(request, next, "The sign-in form expired or was not this site's: sign in again.", 403)
    # A valid token signs in even from an address over its failure budget (see auth.verify_from).
    caller, wait = await auth.verify_from(request, token)
    if caller is None and wait:
        response = _form(request, next, "Too many failed sign-ins from this address: wait and retry.", 429)
        response.headers.update(retry_after(wait))
        return response
    if caller is None:
        return _form(request, next, "That token is not valid (unknown, revoked or mistyped).", 401)
    signed_in = RedirectResponse(_safe_next(next), status_code=303)
    _set_cookie(request, signed_in, TOKEN_COOKIE, token.strip(), SESSION_S, "/")
    signed_in.delete_cookie(CSRF_COOKIE, path="/login")
    return signed_in
