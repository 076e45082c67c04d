"""Target URLs, and the refusal of internal addresses (SSRF).

A URL is checked when an endpoint is created or changed, and its host is checked again before
requests are sent (resolved at most every ``resolve_ttl`` seconds), so a name that starts
resolving to an internal address later is refused then too. Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import trio

from tether.engine import InvalidParameter

MAX_URL = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_url(url: object) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL; :class:`InvalidParameter` otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise InvalidParameter("url", f"must be a URL of 1 to {MAX_URL} characters")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidParameter("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidParameter("url", f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidParameter("url", "must use http or https")
    host = parts.hostname
    if not host:
        raise InvalidParameter("url", "must name a host")
    return host, port if port is not None else (443 if parts.scheme == "https" else 80)


#: How a refused private target can be allowed, named in the refusal so nobody has to search.
PRIVATE_HINT = (
    "start the server with `tether serve --allow-private-webhooks` to allow loopback and "
    "private targets (development and tests)"
)


def internal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or ``None`` if it is one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for reason in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, "is_" + reason):
            return reason.replace("_", "-")
    if not address.is_global:
        return "internal"
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidParameter("url", f"host '{host}' does not resolve ({exc})") from None
    found: list[IPAddress] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone
        found.append(ipaddress.ip_address(text))
    if not found:
        raise InvalidParameter("url", f"host '{host}' does not resolve")
    return found


async def check_url(url: object, allow_private: bool) -> str:
    """``url`` if it is an http(s) URL whose host resolves only to public addresses.

    With ``allow_private`` the host is not resolved at all (tests, local development).
    """
    await approved_addresses(url, allow_private)
    assert isinstance(url, str)
    return url


async def approved_addresses(url: object, allow_private: bool) -> tuple[str, ...]:
    """The addresses a request to ``url`` may connect to, as :func:`check_url` checked them.

    Empty with ``allow_private`` (nothing is resolved: connect by name). Connecting to these
    rather than resolving the name again keeps a rebinding DNS answer from swapping an
    internal address in between the check and the connection.
    """
    host, port = parse_url(url)
    if allow_private:
        return ()
    addresses = await resolve(host, port)
    for address in addresses:
        reason = internal_reason(address)
        if reason is not None:
            raise InvalidParameter(
                "url", f"host '{host}' resolves to a {reason} address ({address}), refused; "
                f"{PRIVATE_HINT}",
            )
    return tuple(dict.fromkeys(str(a) for a in addresses))


class AddressGuard:
    """Re-checks hosts before delivery, remembering a host's verdict for ``ttl`` seconds.

    The verdict carries the addresses that were checked: the request connects to one of
    those (with the URL's host as Host header and TLS server name), never to a fresh answer.
    """

    def __init__(self, allow_private: bool, ttl: float, max_hosts: int = 10_000) -> None:
        self.allow_private = allow_private
        self._ttl = ttl
        self._max = max_hosts
        self._verdicts: dict[str, tuple[float, str | None, tuple[str, ...]]] = {}

    async def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be sent to now, or ``None`` if it may."""
        return (await self.check(url))[0]

    async def check(self, url: str) -> tuple[str | None, tuple[str, ...]]:
        """``(refusal, addresses)``: why ``url`` may not be sent to now (``None`` if it may),
        and the approved addresses to connect to (empty: connect by name, private allowed)."""
        if self.allow_private:
            return None, ()
        now = trio.current_time()
        cached = self._verdicts.get(url)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        addresses: tuple[str, ...] = ()
        try:
            addresses = await approved_addresses(url, allow_private=False)
            verdict: str | None = None
        except InvalidParameter as exc:
            verdict = exc.reason
        if len(self._verdicts) >= self._max:
            self._verdicts.clear()
        self._verdicts[url] = (now + self._ttl, verdict, addresses)
        return verdict, addresses
