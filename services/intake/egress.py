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
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes whose last 32 bits are an IPv4 address a translator (or the host itself) will
# reach: NAT64 (RFC 6052), IPv4-compatible (RFC 4291), SIIT (RFC 2765), IPv4-mapped. 6to4
# (2002::/16) embeds it elsewhere and is unwrapped with `sixtofour`.
EMBEDDING_IPV4 = tuple(
    ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96", "::ffff:0:0/96")
)
# Not public, yet `is_global` says otherwise on some Python releases, or the IPv4 address cannot
# be read from them: local-use NAT64 (RFC 8215), site-local, the 6to4 relay anycast.
DENIED = tuple(ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "fec0::/10", "192.88.99.0/24"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a connection to `ip` ends up at, if it carries one."""
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in n for n in EMBEDDING_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def public(ip: Address) -> bool:
    return ip.is_global and not ip.is_multicast and not any(ip in n for n in DENIED)


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
        inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        if any(a in n for a in (ip, inner) if a is not None for n in self.allowed):
            return True
        # Judged by the IPv4 address it leads to (::ffff:127.0.0.1 is loopback, 64:ff9b::a9fe:a9fe
        # the metadata service); the wrapper itself may be on the deny list (64:ff9b:1::/48).
        return public(inner or ip) and not any(ip in n for n in DENIED)

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
