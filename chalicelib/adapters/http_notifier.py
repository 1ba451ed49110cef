"""The HTTP client of merchant notifications: one form POST to a checked address, a short timeout,
no redirects.

The URL's name is resolved once and the connection goes to the public address that was checked
(``notify_urls.pinned_target``); TLS still verifies the certificate against the URL's host name.
A redirect is not an acknowledgement (docs/merchant-notifications.md: any 2xx is) and is never followed: following it
would re-send a signed body to a place the merchant did not configure.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from urllib.parse import urlsplit

from chalicelib.notify_urls import NotifyUrlRefused, Resolver, Unresolvable, pinned_target, system_resolver
from chalicelib.observability import log_event


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._context = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        # Server name and certificate checked against the URL's host, not the address.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


class UrllibFormPoster:
    def __init__(
        self, timeout_s: float, allow_loopback_http: bool = False, resolve: Resolver = system_resolver
    ) -> None:
        self.timeout_s = timeout_s
        self.allow_loopback_http = allow_loopback_http
        self.resolve = resolve
        self.context = ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The HTTP status of the answer; 0 when no answer came (refused connection, timeout, no
        address right now). Raises NotifyUrlRefused when the URL may not be used at all."""
        try:
            scheme, host, port, address = pinned_target(url, self.allow_loopback_http, self.resolve)
        except NotifyUrlRefused as refused:
            # The host only: a notify URL may carry a merchant's token in its path or query.
            log_event("notify url refused", level="warning", host=urlsplit(url).hostname, reason=refused.reason)
            raise
        except Unresolvable:
            log_event("notify url does not resolve now", level="warning", host=urlsplit(url).hostname)
            return 0
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = _PinnedHTTPSConnection(host, port, address, self.timeout_s, self.context)
        else:
            connection = _PinnedHTTPConnection(host, port, address, self.timeout_s)
        try:
            connection.request("POST", target, body=body, headers=headers)
            return int(connection.getresponse().status)
        except (OSError, http.client.HTTPException, ValueError) as error:
            log_event("notify post failed", level="warning", host=host, error=type(error).__name__)
            return 0
        finally:
            connection.close()
