"""The Console (``/console``) and the API reference (``/docs``): static files served by the API itself,
so the local stack and an AWS deployment (API Gateway → the API Lambda) serve them alike.

Every file ships in ``static/`` (the Lambda package holds it, as part of ``chalicelib/``); nothing is
fetched from another origin, and the Content-Security-Policy says so to the browser. Only files
listed at import are served: a name is looked up, never joined to a path. All are text, so API
Gateway passes them through without binary media types. A vendored file kept as ``name.gz`` (Swagger
UI's 1.7 MB bundle: 0.46 MB in the package) is served as ``name``, decompressed once per process:
the bytes are upstream's, unchanged.

The pages hold no data: the Console's script calls the JSON API with the credentials its user
types, kept in the tab's memory and sessionStorage only.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from chalice import Response

from chalicelib.errors import ApiError

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# Same-origin only. Swagger UI sets inline styles and draws icons from data: URLs; no script is inline.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_SECURITY = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Pages are revalidated on every load (so a deployment shows at once); assets are answered 304 by ETag.
_PAGE_CACHE = "no-cache"
_ASSET_CACHE = "public, max-age=300"
SECTIONS = ("console", "docs")


@dataclass(frozen=True)
class StaticFile:
    body: str
    content_type: str
    etag: str


def _served_name(path: Path) -> str:
    return path.name.removesuffix(".gz")


def _listing(section: str) -> frozenset[str]:
    return frozenset(
        _served_name(p) for p in (STATIC / section).iterdir() if p.is_file() and Path(_served_name(p)).suffix in _TYPES
    )


# Names only: every function of the app imports this module, and only the API's reads a file,
# once per process, when it is first asked for.
_NAMES = {section: _listing(section) for section in SECTIONS}


@lru_cache(maxsize=32)
def _file(section: str, name: str) -> StaticFile:
    packed = STATIC / section / f"{name}.gz"
    if packed.is_file():
        body = gzip.decompress(packed.read_bytes()).decode("utf-8")
    else:
        body = (STATIC / section / name).read_text(encoding="utf-8")
    etag = '"' + hashlib.sha256(body.encode("utf-8")).hexdigest()[:32] + '"'
    return StaticFile(body, _TYPES[Path(name).suffix], etag)


def page(section: str, if_none_match: str | None = None) -> Response:
    """The section's ``index.html``."""
    return _answer(_file(section, "index.html"), _PAGE_CACHE, if_none_match)


def asset(section: str, name: str, if_none_match: str | None = None) -> Response:
    if name not in _NAMES[section] or name == "index.html":
        raise ApiError(404, "route.not_found", f"No file {name} in /{section}")
    return _answer(_file(section, name), _ASSET_CACHE, if_none_match)


def redirect(location: str) -> Response:
    """A relative redirect: behind API Gateway's stage prefix it stays under the stage."""
    return Response(body="", status_code=302, headers={"Location": location, "Cache-Control": "no-cache"})


def _answer(found: StaticFile, cache_control: str, if_none_match: str | None) -> Response:
    headers: dict[str, str | list[str]] = {"ETag": found.etag, "Cache-Control": cache_control, **_SECURITY}
    if if_none_match is not None and found.etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(body="", status_code=304, headers=headers)
    return Response(body=found.body, status_code=200, headers={"Content-Type": found.content_type, **headers})
