"""Errors that carry their HTTP answer: one builder for the contract's error format (docs/payment-api.md).

>>> ApiError(404, "terminal.not_found", "No such terminal").body()["error"]["code"]
'terminal.not_found'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from chalicelib.wire import SkipJsonSchema, WireModel, omitted_if_none


class ErrorDetails(WireModel):
    path: str = Field(description="dotted path of the first bad field, e.g. order.price.amount")


class ErrorDetail(WireModel):
    status: int = Field(description="the HTTP status, repeated")
    code: str = Field(description="stable dotted identifier, e.g. validation.int_type")
    message: str = Field(description="for humans")
    description: str
    details: ErrorDetails | SkipJsonSchema[None] = omitted_if_none("only when a field is at fault")


class ErrorBody(WireModel):
    """The contract's error format, for every error status of every route."""

    error: ErrorDetail


class ApiError(Exception):
    """An answer the API gives on purpose; ``code`` is a stable dotted identifier."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        description: str | None = None,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.description = description or message
        self.path = path
        self.headers = headers or {}

    def response(self) -> ErrorBody:
        details = ErrorDetails(path=self.path) if self.path is not None else None
        return ErrorBody(
            error=ErrorDetail(
                status=self.status, code=self.code, message=self.message, description=self.description, details=details
            )
        )

    def body(self) -> dict[str, Any]:
        return self.response().wire()


def unauthorized(message: str = "Missing or invalid credentials") -> ApiError:
    return ApiError(401, "auth.unauthorized", message, headers={"WWW-Authenticate": 'Basic realm="nepting-cloud-api"'})


def validation_error(code: str, message: str, path: str | None) -> ApiError:
    return ApiError(400, f"validation.{code}", message, path=path)


def terminal_not_found() -> ApiError:
    return ApiError(404, "terminal.not_found", "No such terminal for this merchant")


def order_not_found() -> ApiError:
    return ApiError(404, "order.not_found", "No such order for this merchant")


def transaction_not_found() -> ApiError:
    return ApiError(404, "transaction.not_found", "No such transaction for this merchant")


def internal_error() -> ApiError:
    return ApiError(500, "internal.error", "Unexpected error", "The request could not be completed")


def first_error(exc: ValidationError, path_suffix: Mapping[str, str] | None = None) -> ApiError:
    """The contract's 400 for a failed validation: the first error, with its field's dotted path.

    ``path_suffix`` names the field that a whole-object check (by its error type) is about.
    """
    first = exc.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    suffix = (path_suffix or {}).get(first["type"])
    if suffix:
        loc.append(suffix)
    path = ".".join(loc) or None
    message = first["msg"] if not path else f"{path}: {first['msg']}"
    return validation_error(first["type"], message, path)


def refuse_unknown_parameters(params: Mapping[str, str], known: frozenset[str]) -> None:
    """A mistyped or empty filter silently ignored would list what it was meant to leave out: refuse it."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise validation_error("unknown_parameter", f"unknown query parameter {unknown[0]!r}", unknown[0])
    empty = sorted(name for name, value in params.items() if value == "")
    if empty:
        # An empty filter is a client's mistake, not "no filter": say so rather than list everything.
        raise validation_error("parameter_empty", f"query parameter {empty[0]!r} is empty", empty[0])
