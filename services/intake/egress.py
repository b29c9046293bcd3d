"""Outbound HTTP that cannot be turned against us (server-side request forgery): a callback URL
is a submitter's choice, so it must not reach loopback, private, link-local or reserved
addresses (Lethe's own API, the database, a cloud's metadata service at 169.254.169.254) unless
configuration admits them (`LETHE_CALLBACK_ALLOW_NETWORKS`: the tests and the embedded stack,
whose receivers are on this machine).

The check is made on the address actually connected to: the transport's network backend
resolves the name, keeps only permitted addresses and connects to one of them, so a name that
resolves differently a second later (DNS rebinding) gains nothing. TLS still verifies the
certificate against the name. Every send has a total deadline, and no body is read."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForbiddenTarget(ValueError):
    """The URL's host is, or resolves only to, addresses outbound calls may not reach."""


def networks(spec: str) -> list[Network]:
    """LETHE_CALLBACK_ALLOW_NETWORKS: comma-separated CIDRs (127.0.0.0/8,::1/128)."""
    allowed = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            allowed.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"LETHE_CALLBACK_ALLOW_NETWORKS: {part!r} is not a network (CIDR)") from None
    return allowed


class Egress:
    def __init__(self, allowed: Sequence[Network] = ()) -> None:
        self.allowed = list(allowed)

    def permitted(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        return ip.is_global or any(ip in n for n in self.allowed)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The host's addresses that may be reached; ForbiddenTarget if none may."""
        try:
            ipaddress.ip_address(host.strip("[]"))
            resolved = [host.strip("[]")]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise httpcore.ConnectError(f"cannot resolve the host: {exc.strerror}") from None
            resolved = list(dict.fromkeys(str(info[4][0]) for info in infos))
        usable = [a for a in resolved if self.permitted(a)]
        if not usable:
            raise ForbiddenTarget("resolves to a loopback, private, link-local or reserved address")
        return usable

    async def check_url(self, url: str) -> None:
        """For a request's callback_url at submission: refused at once if it can never be sent."""
        parts = urlsplit(url)
        await self.addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))

    def client(self, timeout_s: float = 10) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(retries=0)
        # httpx builds its connection pool with the default backend; the pool takes another (a
        # public parameter of httpcore), so the pool is rebuilt with the checking backend.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=CheckedBackend(self)
        )
        return httpx.AsyncClient(transport=transport, timeout=timeout_s, follow_redirects=False)


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the Egress permits, resolving the name itself."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception | None = None
        for address in await self.egress.addresses(host, port):
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError("no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenTarget("unix sockets are not a callback target")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
