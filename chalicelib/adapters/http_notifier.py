"""The HTTP client of merchant notifications: one form POST, a short timeout, no redirects.

A redirect is not an acknowledgement (CONTRACT §4: any 2xx is), and following it would re-send a
signed body to a place the merchant did not configure.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from chalicelib.observability import log_event


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class UrllibFormPoster:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The HTTP status of the answer; 0 when no answer came (refused, timed out, bad URL)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            log_event("notify url refused", level="warning", host=parts.hostname, scheme=parts.scheme)
            return 0
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (scheme checked)
        try:
            with _opener.open(request, timeout=self.timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (urllib.error.URLError, OSError, ValueError) as error:
            # The host only: a notify URL may carry a merchant's token in its path or query.
            log_event("notify post failed", level="warning", host=parts.hostname, error=type(error).__name__)
            return 0
