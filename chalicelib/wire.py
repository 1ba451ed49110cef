"""Response bodies as pydantic models: the one way a model becomes JSON on the wire, and the
vocabulary that keeps each model's OpenAPI schema exactly what the wire carries.

Every field of a response model is on the wire, ``null`` included, unless declared with
:func:`omitted_if_none` (then the key is left out instead of ``null``, and the schema does not list
it as required nor as nullable). A part of a request sent back as the client sent it (unknown
fields and number spellings kept) is a plain dict described by the request's schema: :func:`echo`.

    >>> class Pong(WireModel):
    ...     status: str
    ...     detail: str | None = None
    ...     attempt: int | SkipJsonSchema[None] = omitted_if_none()
    >>> Pong(status="ok").wire()
    {'status': 'ok', 'detail': None}
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

__all__ = ["REF_TEMPLATE", "SkipJsonSchema", "Timestamp", "WireModel", "echo", "omitted_if_none"]

# Where the OpenAPI document keeps named schemas; a model's name is its component's name.
REF_TEMPLATE = "#/components/schemas/{model}"

# The one timestamp format of every contract: RFC 3339 UTC with milliseconds.
Timestamp = Annotated[
    str,
    Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", json_schema_extra={"format": "date-time"}),
]


class WireModel(BaseModel):
    """A response body, or part of one. Unknown fields are a programming error, not ignored."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # Python names in code, the contract's names on the wire (``paymentStatus``).
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_enum_values=True,
        # A field with a default is still always written: the schema says it is always there.
        json_schema_serialization_defaults_required=True,
    )

    def wire(self) -> dict[str, Any]:
        """The JSON body as Python values; ``Decimal`` stays ``Decimal`` (``jsonutil.dumps`` writes it exactly)."""
        return self.model_dump(mode="python", by_alias=True)


def _absent(value: Any) -> bool:
    return value is None


def _no_default(schema: dict[str, Any]) -> None:
    # The key is absent rather than null: a "default": null would say otherwise.
    schema.pop("default", None)


def omitted_if_none(description: str | None = None) -> Any:
    """A field whose key is left out of the body when it has no value (type it ``X | SkipJsonSchema[None]``)."""
    return Field(default=None, exclude_if=_absent, description=description, json_schema_extra=_no_default)


def echo(component: type[BaseModel] | str, description: str | None = None) -> WithJsonSchema:
    """Schema of a request part echoed back verbatim: the request model's own (validation) schema.

    Wrapped in ``allOf`` so that pydantic leaves the reference to the document's components."""
    name = component if isinstance(component, str) else component.__name__
    schema: dict[str, Any] = {"allOf": [{"$ref": REF_TEMPLATE.format(model=name)}]}
    if description:
        schema["description"] = description
    return WithJsonSchema(schema)
