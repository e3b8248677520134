"""The egress guard: the one way the server fetches a URL that a user supplied.

`fetch()` resolves the host once, refuses the request when ANY resolved address is not a public unicast address
(loopback, private, link-local such as the 169.254.169.254 metadata service, carrier-grade NAT, multicast,
reserved, unspecified, IPv4-mapped forms of those) unless the operator allowed its network, and then connects to
the address it checked: the name is never resolved again, so a DNS answer that changes between check and use
(rebinding) cannot redirect the connection. Redirects are followed by hand, each hop checked the same way.

Today no server route fetches user-supplied URLs (engine URLs and the artifact store come from the operator's
configuration); any feature that does must call `fetch()`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from shipyard.errors import InvalidRequest, PayloadTooLarge

__all__ = ["EgressPolicy", "EgressRefused", "FetchResult", "check_address", "fetch", "resolve_checked"]

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(InvalidRequest):
    """The URL points somewhere the server may not fetch from."""


@dataclass(frozen=True)
class EgressPolicy:
    """Which non-public networks the operator allows (config `auth.egress_allow`); none by default."""

    allow: tuple[Network, ...] = ()
    max_bytes: int = 10 * 1024 * 1024
    timeout: float = 10.0
    max_redirects: int = 3
    schemes: frozenset[str] = field(default_factory=lambda: frozenset({"http", "https"}))

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], **kwargs: object) -> EgressPolicy:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs), **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FetchResult:
    status: int
    headers: dict[str, str]
    content: bytes
    url: str  # the final URL, after redirects
    address: str  # the address actually connected to


def check_address(address: str, policy: EgressPolicy) -> IPAddress:
    """The address, if a fetch may connect to it; else EgressRefused."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in policy.allow):
        return ip
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        raise EgressRefused(
            f"Refused to fetch from {ip}: not a public address (loopback, private, link-local or reserved).",
            code="egress_refused",
        )
    return ip


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(host: str, port: int, policy: EgressPolicy, resolver: Resolver | None = None) -> IPAddress:
    """Resolve once; every address must pass (a mixed public/private answer is refused); return the first."""
    try:
        addresses = await (resolver or _system_resolver)(host, port)
    except OSError as exc:
        raise EgressRefused(f"Cannot resolve '{host}': {exc}.", code="egress_unresolvable") from None
    if not addresses:
        raise EgressRefused(f"'{host}' has no address.", code="egress_unresolvable")
    checked = [check_address(a, policy) for a in addresses]
    return checked[0]


def _split(url: str, policy: EgressPolicy) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in policy.schemes or not parts.hostname:
        raise EgressRefused(f"Only {', '.join(sorted(policy.schemes))} URLs with a host can be fetched.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EgressRefused("The URL's port is invalid.") from None
    return parts.scheme, parts.hostname, port


async def _one(
    client: httpx.AsyncClient, url: str, ip: IPAddress, port: int, host: str, policy: EgressPolicy
) -> tuple[httpx.Response, bytes]:
    parts = urlsplit(url)
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    pinned = parts._replace(netloc=f"{literal}:{port}").geturl()
    default = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    headers = {"host": host if default else f"{host}:{port}"}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
    response = await client.send(request, stream=True)
    chunks, total = [], 0
    try:
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > policy.max_bytes:
                raise PayloadTooLarge(f"The fetched body is over {policy.max_bytes} bytes.", code="egress_too_large")
            chunks.append(chunk)
    finally:
        await response.aclose()
    return response, b"".join(chunks)


async def fetch(url: str, policy: EgressPolicy | None = None, resolver: Resolver | None = None) -> FetchResult:
    """GET a user-supplied URL through the guard (see the module's docstring)."""
    policy = policy or EgressPolicy()
    async with httpx.AsyncClient(timeout=policy.timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            _, host, port = _split(url, policy)
            ip = await resolve_checked(host, port, policy, resolver)
            try:
                response, content = await _one(client, url, ip, port, host, policy)
            except httpx.HTTPError as exc:
                raise EgressRefused(f"Fetching the URL failed: {type(exc).__name__}.", code="egress_failed") from None
            location = response.headers.get("location")
            if response.is_redirect and location:
                url = urljoin(url, location)
                continue
            return FetchResult(response.status_code, dict(response.headers), content, url, str(ip))
    raise EgressRefused(f"More than {policy.max_redirects} redirects.", code="egress_redirects")
