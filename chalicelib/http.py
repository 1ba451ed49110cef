"""HTTP plumbing shared by every route: body reading, JSON answers, the error net.

@app.route("/v1/x", methods=["POST"], content_types=ANY_CONTENT)
@api_handler
def x() -> Response:
    body = read_json_body(app.current_request)
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from chalice import Chalice, Response
from chalice.app import Request

from chalicelib import jsonutil
from chalicelib.errors import ApiError, internal_error
from chalicelib.observability import count, log_event, logger
from chalicelib.wire import WireModel

MAX_BODY_BYTES = 64 * 1024
# Chalice would answer unknown media types itself, in its own format; we answer them in ours.
ANY_CONTENT = ["*/*"]
_JSON_TYPES = ("application/json", "application/problem+json")
# A script (the Console) says so with this header; its 401 then carries no Basic challenge, which
# would make the browser pop up its own login dialog over the page's sign-in form.
_SCRIPT_HEADER = ("x-requested-with", "xmlhttprequest")
_order_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("order_id", default=None)


class ThreadSafeChalice(Chalice):
    """Chalice keeps ``current_request`` on the app object; a threaded server (the local stack, many
    payments waiting at once) needs it per thread. On Lambda one invocation runs at a time, so
    nothing changes there."""

    _per_thread = threading.local()

    @property
    def current_request(self) -> Request | None:
        return getattr(self._per_thread, "request", None)

    @current_request.setter
    def current_request(self, value: Request | None) -> None:
        self._per_thread.request = value


def json_response(status: int, body: WireModel, headers: dict[str, str] | None = None) -> Response:
    """Every answer of the API is a response model; its dump is what the OpenAPI document describes."""
    return document_response(status, body.wire(), headers)


def document_response(status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A JSON document that is not a response model (the OpenAPI description itself)."""
    return Response(
        body=jsonutil.dumps(document),
        status_code=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.response(), error.headers)


def api_handler(view: Callable[..., Response]) -> Callable[..., Response]:
    """Every route answers in the contract's error format, never leaks internals, and logs one
    ``request`` line (method, path, status, error code, duration, order id)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        started = time.perf_counter()
        token = _order_id.set(kwargs.get("order_id"))
        code: str | None = None
        try:
            response = view(*args, **kwargs)
        except ApiError as error:
            code = error.code
            response = error_response(error)
        except Exception:
            count("ApiErrors", reason="unexpected")
            logger.exception("unexpected error", extra={"route": view.__name__})
            code = "internal.error"
            response = error_response(internal_error())
        request = current_request()
        if response.status_code == 401 and request is not None and _from_script(request):
            response.headers.pop("WWW-Authenticate", None)
        method = request.method if request is not None else "?"
        log_request(method, _path_of(request), response.status_code, code, started, _order_id.get())
        _order_id.reset(token)
        return response

    return wrapper


def note_order_id(order_id: str) -> None:
    """Name the order this request is about in its ``request`` log line."""
    _order_id.set(order_id)


def log_request(
    method: str, path: str, status: int, code: str | None, started: float, order_id: str | None = None
) -> None:
    fields: dict[str, Any] = {"method": method, "path": path, "status": status}
    if code is not None:
        fields["code"] = code
    fields["duration_ms"] = round((time.perf_counter() - started) * 1000)
    if order_id is not None:
        fields["order_id"] = order_id
    log_event("request", **fields)


def current_request() -> Request | None:
    return getattr(ThreadSafeChalice._per_thread, "request", None)


def _path_of(request: Request | None) -> str:
    if request is None:
        return "?"
    # The path as sent (API Gateway's includes the stage); the route's template when it is missing.
    return str((request.context or {}).get("path") or request.path)


def _from_script(request: Request) -> bool:
    name, value = _SCRIPT_HEADER
    return (request.headers.get(name) or "").lower() == value


def raw_body(request: Request) -> bytes:
    body = request.raw_body or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "request.too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    return body


def read_json_body(request: Request) -> Any:
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    body = raw_body(request)
    if content_type not in _JSON_TYPES:
        raise ApiError(415, "request.unsupported_media_type", "send the body as application/json")
    try:
        return jsonutil.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "validation.malformed_json", "the request body is not valid JSON") from None
