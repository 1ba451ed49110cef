"""Where merchant notifications may go (docs/merchant-notifications.md): https, public addresses only.

A notification URL is checked twice. When it is given (an order's ``notify_url``, a merchant's
default), an IP literal in a refused range, or a name that resolves only to refused addresses, is
refused; a name that cannot be resolved at that moment is accepted. When sending, the name is
resolved once, the first public address is kept, and the connection goes to that address: a second
lookup (DNS rebinding) cannot send the signed body elsewhere.

Refused: loopback, private, link-local (cloud metadata at 169.254.169.254 among them), shared
(100.64/10), multicast, reserved, unspecified, and every other address that is not globally
routable, IPv4-mapped IPv6 included. Only the local stack may allow ``http`` (and loopback), by an
explicit setting.

    >>> refusal_when_given("https://10.0.0.7/notify")
    'private_address'
    >>> refusal_when_given("https://merchant.invalid/notify") is None   # unresolvable now: accepted
    True
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]
# The shape of a notification URL an order may give: https, a host name whose last label starts
# with a letter (an IP literal is never a merchant's server), an optional port, no fragment.
HTTPS_URL_PATTERN = r"^https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[1-9][0-9]{0,3})?([/?][^\s#]*)?$"


class NotifyUrlRefused(ValueError):
    """A notification URL that must not be used; ``reason`` is a stable label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unresolvable(OSError):
    """The URL's name has no address right now (it may have later)."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(str(exc)) from None
    return [str(info[4][0]) for info in found]


def address_refusal(address: str, allow_loopback: bool = False) -> str | None:
    """Why a connection must not go to ``address``; None for a public one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not_an_address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "loopback_address"
    if ip.is_multicast:
        return "multicast_address"
    if ip.is_link_local:
        return "link_local_address"
    if ip.is_private:
        return "private_address"
    if not ip.is_global:
        return "reserved_address"
    return None


def _parts(url: str, allow_loopback_http: bool) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise NotifyUrlRefused("malformed_url") from None
    host = parts.hostname
    if not host:
        raise NotifyUrlRefused("malformed_url")
    if parts.scheme == "https":
        return parts.scheme, host, port or 443
    if parts.scheme == "http" and allow_loopback_http:
        return parts.scheme, host, port or 80
    raise NotifyUrlRefused("not_https")


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _check_addresses(scheme: str, addresses: list[str], allow_loopback_http: bool) -> str:
    """The first address a connection may go to, or NotifyUrlRefused with the first reason."""
    reasons = []
    for address in addresses:
        reason = address_refusal(address, allow_loopback=allow_loopback_http)
        if reason is None and scheme == "http" and not ipaddress.ip_address(address.split("%", 1)[0]).is_loopback:
            reason = "http_outside_loopback"
        if reason is None:
            return address
        reasons.append(reason)
    raise NotifyUrlRefused(reasons[0] if reasons else "no_address")


def refusal_when_given(url: str, allow_loopback_http: bool = False, resolve: Resolver = system_resolver) -> str | None:
    """Why ``url`` is refused as a notification URL now; None when it is accepted."""
    try:
        scheme, host, port = _parts(url, allow_loopback_http)
        literal = _literal(host)
        addresses = [literal] if literal else resolve(host, port)
        _check_addresses(scheme, addresses, allow_loopback_http)
    except NotifyUrlRefused as refused:
        return refused.reason
    except Unresolvable:
        return None
    return None


def pinned_target(
    url: str, allow_loopback_http: bool = False, resolve: Resolver = system_resolver
) -> tuple[str, str, int, str]:
    """(scheme, host, port, address) for sending: the address the connection must go to.

    NotifyUrlRefused when the URL may not be used; Unresolvable when its name has no address now."""
    scheme, host, port = _parts(url, allow_loopback_http)
    literal = _literal(host)
    addresses = [literal] if literal else resolve(host, port)
    return scheme, host, port, _check_addresses(scheme, addresses, allow_loopback_http)
