"""POST /v1/connector/order bodies against docs/payment-api.md, field by field: each refusal is a 400 whose
``code`` says what is wrong and whose ``details.path`` names the first bad field."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from chalicelib import jsonutil
from chalicelib.errors import ApiError
from chalicelib.payments.schemas import MAX_AMOUNT, OrderRequest, parse_order_request
from tests.conftest import deep, example

Mutation = Callable[[dict[str, Any]], Any]


def refusal(body: Any) -> ApiError:
    # A strict merchant's view: the basket's arithmetic is refused too (lenient merchants accept it).
    with pytest.raises(ApiError) as caught:
        parse_order_request(body, lambda: "strict")
    assert caught.value.status == 400
    return caught.value


def assert_refused(body: Any, code: str, path: str | None) -> None:
    error = refusal(body)
    assert (error.code, error.path) == (f"validation.{code}", path)
    details = error.body()["error"].get("details")
    assert details == ({"path": path} if path is not None else None)


def minimal(mutate: Mutation) -> dict[str, Any]:
    body = example()
    mutate(body)
    return body


def full(mutate: Mutation) -> dict[str, Any]:
    body = example("order-full.json")
    mutate(body)
    return body


def order(**fields: Any) -> Mutation:
    return lambda body: body["order"].update(fields)


def price(**fields: Any) -> Mutation:
    return lambda body: body["order"]["price"].update(fields)


def device(**fields: Any) -> Mutation:
    return lambda body: body["pos_technical_info"]["device_information"].update(fields)


def display(**fields: Any) -> Mutation:
    return lambda body: body["pos_technical_info"]["terminal_transaction_display"].update(fields)


def line(index: int = 0, **fields: Any) -> Mutation:
    return lambda body: body["order"]["basket"][index].update(fields)


def basket_line(total: str, quantity: int = 1, discount: str = "0", unit_price: str | None = None) -> dict[str, Any]:
    unit = Decimal(unit_price) if unit_price is not None else (Decimal(total) - Decimal(discount)) / quantity
    return {
        "product_reference": "REF-1",
        "name": "thing",
        "type": "good",
        "quantity": quantity,
        "unit_price": unit,
        "tax_rate": Decimal("20"),
        "discount": Decimal(discount),
        "total_amount": Decimal(total),
    }


def with_basket(lines: list[dict[str, Any]], amount: int) -> dict[str, Any]:
    body = example()
    body["order"]["basket"] = lines
    body["order"]["price"]["amount"] = amount
    return body


# -- the shared examples ------------------------------------------------------------------------


def test_minimal_example_validates_with_the_contract_defaults() -> None:
    request = parse_order_request(example())
    assert request.terminal_id == "PAX-1850320198"
    assert request.order.price.currency == "EUR"
    assert request.order.description == "POS payment"
    assert request.order.basket is None and request.customer is None
    assert request.pos_technical_info.terminal_transaction_display.force_authorization is False


def test_minimal_example_without_type_and_currency_defaults_to_a_eur_debit() -> None:
    body = example()
    del body["order"]["transaction_type"], body["order"]["price"]["currency"]
    request = parse_order_request(body)
    assert (request.order.transaction_type, request.order.price.currency) == ("Debit", "EUR")


def test_full_example_validates_with_its_basket_as_decimals(full_order_text: str) -> None:
    request = parse_order_request(jsonutil.loads(full_order_text))
    basket = request.order.basket
    assert basket is not None and basket[0].unit_price == Decimal("8.99")
    assert request.pos_technical_info.terminal_transaction_display.force_authorization is True
    assert request.pos_technical_info.notify_url == "https://merchant.example/notify"
    assert request.customer is not None and request.customer.email == "hipay.pos@test.com"


def test_manufacturer_is_upper_cased_in_the_terminal_id() -> None:
    assert parse_order_request(minimal(device(manufacturer="pax"))).terminal_id == "PAX-1850320198"


def test_unknown_fields_are_ignored_at_every_level_and_left_out_of_the_model() -> None:
    body = example("order-full.json")
    body["hipay_only"] = {"x": 1}
    body["order"]["merchant_display_name"] = "Shop"
    body["order"]["price"]["vat"] = 20
    body["order"]["basket"][0]["ean"] = "123"
    body["customer"]["title"] = "Ms"
    body["pos_technical_info"]["device_information"]["model"] = "A920"
    dumped = parse_order_request(body).model_dump()
    assert "hipay_only" not in dumped and "merchant_display_name" not in dumped["order"]
    assert "ean" not in dumped["order"]["basket"][0] and "title" not in dumped["customer"]


# -- refusals, field by field ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [[], "order", 42, None, True])
def test_a_body_that_is_not_an_object_is_a_400_with_an_empty_path(body: Any) -> None:
    assert_refused(body, "not_an_object", "")


@pytest.mark.parametrize(
    ("mutate", "code", "path"),
    [
        (lambda b: b.pop("order"), "missing", "order"),
        (lambda b: b.__setitem__("order", "ORDER-1"), "model_type", "order"),
        (lambda b: b.pop("pos_technical_info"), "missing", "pos_technical_info"),
        (
            lambda b: b["pos_technical_info"].pop("device_information"),
            "missing",
            "pos_technical_info.device_information",
        ),
        (
            lambda b: b["pos_technical_info"].pop("terminal_transaction_display"),
            "missing",
            "pos_technical_info.terminal_transaction_display",
        ),
        (lambda b: b["order"].pop("price"), "missing", "order.price"),
    ],
    ids=["no-order", "order-not-object", "no-pos-info", "no-device", "no-display", "no-price"],
)
def test_missing_or_misshapen_sections_are_named(mutate: Mutation, code: str, path: str) -> None:
    assert_refused(minimal(mutate), code, path)


@pytest.mark.parametrize(
    ("order_id", "code"),
    [
        ("", "string_too_short"),
        ("x" * 65, "string_too_long"),
        ("ORDER\n1", "control_characters"),
        ("ORDER\t1", "control_characters"),
        ("\x00", "control_characters"),
        ("ORDER\x7f", "control_characters"),
        ("ORDER\x85", "control_characters"),
        (1537532589263, "string_type"),
        (None, "string_type"),
    ],
    ids=["empty", "65-chars", "newline", "tab", "nul", "del", "c1-nel", "int", "null"],
)
def test_order_id_must_be_1_to_64_chars_without_control_characters(order_id: Any, code: str) -> None:
    assert_refused(minimal(order(order_id=order_id)), code, "order.order_id")


@pytest.mark.parametrize("order_id", ["x", "x" * 64, "Commande n°42 — caisse 3", "ORDER_1537532589263"])
def test_order_id_within_the_rules_is_accepted_verbatim(order_id: str) -> None:
    assert parse_order_request(minimal(order(order_id=order_id))).order.order_id == order_id


@pytest.mark.parametrize("kind", ["Debit", "Credit", "Cancel"])
def test_transaction_types_of_the_contract_are_accepted(kind: str) -> None:
    assert parse_order_request(minimal(order(transaction_type=kind))).order.transaction_type == kind


@pytest.mark.parametrize("kind", ["debit", "Refund", "", 1])
def test_other_transaction_types_are_refused(kind: Any) -> None:
    error = refusal(minimal(order(transaction_type=kind)))
    assert error.path == "order.transaction_type"
    assert error.code == "validation.literal_error"


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (0, "greater_than_equal"),
        (-1, "greater_than_equal"),
        (MAX_AMOUNT + 1, "less_than_equal"),
        (100.0, "int_type"),
        (Decimal("1.5"), "int_type"),
        (True, "int_type"),
        (False, "int_type"),
        ("100", "int_type"),
        (None, "int_type"),
    ],
    ids=["zero", "negative", "too-big", "float", "decimal", "true", "false", "string", "null"],
)
def test_amount_must_be_an_integer_from_1_to_99_999_999(amount: Any, code: str) -> None:
    assert_refused(minimal(price(amount=amount)), code, "order.price.amount")


def test_missing_amount_is_named() -> None:
    assert_refused(minimal(lambda b: b["order"]["price"].pop("amount")), "missing", "order.price.amount")


@pytest.mark.parametrize("amount", [1, MAX_AMOUNT])
def test_amount_bounds_are_inclusive(amount: int) -> None:
    assert parse_order_request(minimal(price(amount=amount))).order.price.amount == amount


def test_amount_parsed_from_json_text_with_a_fraction_is_refused() -> None:
    body = jsonutil.loads(jsonutil.dumps(example()).replace('"amount":100', '"amount":100.5'))
    assert_refused(body, "int_type", "order.price.amount")


def test_an_integral_amount_written_with_a_zero_fraction_is_the_same_integer() -> None:
    # JSON (and JSON Schema's "integer") make 100.0 the same number as 100.
    body = jsonutil.loads(jsonutil.dumps(example()).replace('"amount":100', '"amount":100.0'))
    request = parse_order_request(body)
    assert request.order.price.amount == 100 and type(request.order.price.amount) is int


@pytest.mark.parametrize("currency", ["USD", "GBP", "CHF"])
def test_other_iso_currencies_are_refused_as_unsupported(currency: str) -> None:
    assert_refused(minimal(price(currency=currency)), "currency_unsupported", "order.price.currency")


@pytest.mark.parametrize("currency", ["eur", "EURO", "€", "", "E1R"])
def test_junk_currencies_are_refused_as_invalid(currency: str) -> None:
    assert_refused(minimal(price(currency=currency)), "currency_invalid", "order.price.currency")


def test_numeric_currency_is_refused() -> None:
    assert_refused(minimal(price(currency=978)), "string_type", "order.price.currency")


def test_description_defaults_and_is_limited_to_255_chars() -> None:
    assert parse_order_request(minimal(order(description="é" * 255))).order.description == "é" * 255
    assert_refused(minimal(order(description="x" * 256)), "string_too_long", "order.description")
    assert_refused(minimal(order(description=12)), "string_type", "order.description")


def test_custom_data_up_to_8_kib_serialized_is_kept() -> None:
    # {"k":"…"} is 8 bytes of framing around the value
    data = {"k": "x" * (8 * 1024 - 8)}
    assert len(jsonutil.dumps(data).encode()) == 8 * 1024
    assert parse_order_request(minimal(order(custom_data=data))).order.custom_data == data


def test_custom_data_one_byte_over_8_kib_serialized_is_refused() -> None:
    data = {"k": "x" * (8 * 1024 - 7)}
    assert_refused(minimal(order(custom_data=data)), "custom_data_too_large", "order.custom_data")


@pytest.mark.parametrize("data", [[1, 2], "text", 3])
def test_custom_data_must_be_an_object(data: Any) -> None:
    assert_refused(minimal(order(custom_data=data)), "dict_type", "order.custom_data")


# -- basket ------------------------------------------------------------------------------------


def test_basket_of_200_lines_is_accepted_and_201_is_refused() -> None:
    lines = [basket_line("0.01") for _ in range(200)]
    assert len(parse_order_request(with_basket(lines, 200)).order.basket or []) == 200
    assert_refused(with_basket([*lines, basket_line("0.01")], 201), "too_long", "order.basket")


def test_empty_basket_is_accepted() -> None:
    assert parse_order_request(minimal(order(basket=[]))).order.basket == []


@pytest.mark.parametrize(
    "field",
    ["product_reference", "name", "type", "quantity", "unit_price", "tax_rate", "total_amount"],
)
def test_each_required_basket_field_is_named_when_missing(field: str) -> None:
    assert_refused(full(lambda b: b["order"]["basket"][0].pop(field)), "missing", f"order.basket.0.{field}")


def test_discount_defaults_to_zero() -> None:
    request = parse_order_request(full(lambda b: b["order"]["basket"][0].pop("discount")))
    assert request.order.basket is not None and request.order.basket[0].discount == 0


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (line(type="gift"), "literal_error", "type"),
        (line(quantity=0), "greater_than_equal", "quantity"),
        (line(quantity=Decimal("1.5")), "int_type", "quantity"),
        (line(quantity=True), "int_type", "quantity"),
        (line(tax_rate=Decimal("100.01")), "less_than_equal", "tax_rate"),
        (line(tax_rate=-1), "greater_than_equal", "tax_rate"),
        (line(discount=Decimal("0.01")), "less_than_equal", "discount"),
        (line(unit_price=8.99), "decimal_type", "unit_price"),
        (line(unit_price=True), "decimal_type", "unit_price"),
        (line(total_amount=8.99), "decimal_type", "total_amount"),
        (line(total_amount=Decimal("8.991"), unit_price=Decimal("8.991")), "cents_precision", "total_amount"),
        (line(total_amount=Decimal("9.00")), "basket_line_total", "total_amount"),
        (line(product_reference=""), "string_too_short", "product_reference"),
        (line(name="x" * 256), "string_too_long", "name"),
    ],
    ids=[
        "type",
        "quantity-zero",
        "quantity-fraction",
        "quantity-bool",
        "tax-over-100",
        "tax-negative",
        "discount-positive",
        "unit-float",
        "unit-bool",
        "total-float",
        "total-sub-cent",
        "total-not-the-product",
        "reference-empty",
        "name-too-long",
    ],
)
def test_basket_line_rules_name_the_field(mutate: Mutation, code: str, field: str) -> None:
    assert_refused(full(mutate), code, f"order.basket.0.{field}")


@pytest.mark.parametrize("tax_rate", [0, 100, Decimal("5.5")])
def test_tax_rate_bounds_are_inclusive(tax_rate: Any) -> None:
    assert parse_order_request(full(line(tax_rate=tax_rate))).order.basket is not None


def test_line_total_is_unit_price_times_quantity_plus_discount() -> None:
    lines = [
        basket_line("10.00", unit_price="3.50", quantity=3, discount="-0.50"),
        basket_line("2.50", unit_price="2.50"),
        basket_line("-1.00", unit_price="-1.00"),
    ]
    lines[2]["type"] = "discount"
    assert parse_order_request(with_basket(lines, 1150)).order.basket is not None


def test_the_third_line_with_a_wrong_total_is_named_by_its_index() -> None:
    lines = [basket_line("1.00"), basket_line("1.00"), basket_line("1.00", unit_price="0.50", quantity=3)]
    assert_refused(with_basket(lines, 300), "basket_line_total", "order.basket.2.total_amount")


def test_lines_must_add_up_to_the_amount_in_major_units() -> None:
    assert_refused(full(price(amount=900)), "basket_total", "order.basket")
    assert_refused(full(price(amount=898)), "basket_total", "order.basket")
    assert parse_order_request(full(price(amount=899))).order.price.amount == 899


@pytest.mark.parametrize(
    "mutate",
    [price(amount=900), line(total_amount=Decimal("9.00"))],
    ids=["lines-do-not-add-up", "line-is-not-its-product"],
)
def test_a_lenient_merchant_gets_a_basket_that_is_off_accepted_and_marked(mutate: Mutation) -> None:
    request = parse_order_request(full(mutate))
    assert request.basket_mismatch
    assert not parse_order_request(full(price(amount=899))).basket_mismatch


def test_hipays_original_full_example_is_accepted_by_default_and_refused_when_strict() -> None:
    body = example("order-full-hipay.json")
    assert parse_order_request(body).basket_mismatch
    assert_refused(body, "basket_total", "order.basket")


def test_the_policy_is_only_asked_when_the_basket_is_off() -> None:
    def never() -> str:
        raise AssertionError("asked")

    assert parse_order_request(full(price(amount=899)), never).order.price.amount == 899


def test_only_validated_fields_are_echoed() -> None:
    body = full(lambda b: b["order"].__setitem__("junk", "x" * 1000))
    body["unknown_top"] = {"a": 1}
    echo = parse_order_request(body).echo()
    assert set(echo) == {"order", "customer", "pos_technical_info"}
    assert "junk" not in echo["order"] and echo["order"]["basket"][0]["unit_price"] == Decimal("8.99")


# -- customer and technical info ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "email", ["cathy@example.com", "cathy.doe+pos@shop.example.fr", "c@a-b.co", "o'neil@example.org"]
)
def test_valid_customer_emails_are_accepted(email: str) -> None:
    request = parse_order_request(minimal(lambda b: b.__setitem__("customer", {"email": email})))
    assert request.customer is not None and request.customer.email == email


@pytest.mark.parametrize(
    "email",
    ["cathy", "cathy@", "@example.com", "cathy@example", "cathy doe@example.com", "a@b@example.com", "a@-x.com", ""],
)
def test_invalid_customer_emails_are_refused(email: str) -> None:
    assert_refused(minimal(lambda b: b.__setitem__("customer", {"email": email})), "email_invalid", "customer.email")


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("customer_id", 283749291, "string_type"),
        ("phone", "3" * 33, "string_too_long"),
        ("first_name", "x" * 101, "string_too_long"),
    ],
)
def test_other_customer_fields_are_typed_strings(field: str, value: Any, code: str) -> None:
    assert_refused(full(lambda b: b["customer"].__setitem__(field, value)), code, f"customer.{field}")


@pytest.mark.parametrize(
    "url", ["http://merchant.example/notify", "https:///notify", "ftp://merchant.example/", "merchant.example", ""]
)
def test_notify_url_must_be_https_with_a_host(url: str) -> None:
    mutate = lambda b: b["pos_technical_info"].__setitem__("notify_url", url)  # noqa: E731
    assert_refused(full(mutate), "url_https", "pos_technical_info.notify_url")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("serial_number", "1850-320198"),
        ("serial_number", ""),
        ("serial_number", "1" * 65),
        ("serial_number", "18503 20198"),
        ("manufacturer", "P-AX"),
        ("manufacturer", "X" * 33),
        ("manufacturer", ""),
    ],
)
def test_device_information_must_match_the_terminal_id_patterns(field: str, value: str) -> None:
    assert_refused(
        minimal(device(**{field: value})),
        "string_pattern_mismatch",
        f"pos_technical_info.device_information.{field}",
    )


def test_numeric_serial_number_is_refused_not_coerced() -> None:
    path = "pos_technical_info.device_information.serial_number"
    assert_refused(minimal(device(serial_number=1850320198)), "string_type", path)


@pytest.mark.parametrize("protocol", ["ConcertV3.1", "ConcertV3.2"])
def test_concert_protocols_are_known_but_not_served(protocol: str) -> None:
    path = "pos_technical_info.terminal_transaction_display.protocol"
    error = refusal(minimal(display(protocol=protocol)))
    assert (error.code, error.path) == ("validation.protocol_unsupported", path)
    assert protocol in error.message


@pytest.mark.parametrize("protocol", ["appnepting", "Concert", "", "AppNepting "])
def test_unknown_protocols_are_refused(protocol: str) -> None:
    path = "pos_technical_info.terminal_transaction_display.protocol"
    assert_refused(minimal(display(protocol=protocol)), "protocol_unknown", path)


@pytest.mark.parametrize("flag", ["true", 1, 0, None])
def test_force_authorization_must_be_a_json_boolean(flag: Any) -> None:
    path = "pos_technical_info.terminal_transaction_display.force_authorization"
    assert_refused(minimal(display(force_authorization=flag)), "bool_type", path)


def test_the_first_bad_field_is_the_one_reported() -> None:
    body = example()
    body["order"]["order_id"] = ""
    body["order"]["price"]["amount"] = 0
    assert refusal(body).path == "order.order_id"


def test_error_message_names_the_path_for_humans() -> None:
    error = refusal(minimal(price(amount=0)))
    assert error.message.startswith("order.price.amount: ")
    assert error.body()["error"]["status"] == 400


# -- properties ----------------------------------------------------------------------------------------


@st.composite
def baskets_for(draw: st.DrawFn) -> tuple[int, list[dict[str, Any]]]:
    """An amount in range and a basket whose lines (quantities, discounts) add up to it."""
    amount = draw(st.integers(min_value=1, max_value=MAX_AMOUNT))
    count = draw(st.integers(min_value=1, max_value=min(5, amount)))
    cuts = (
        sorted(draw(st.sets(st.integers(min_value=1, max_value=amount - 1), max_size=count - 1))) if amount > 1 else []
    )
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, amount], strict=True)]
    lines = []
    for cents in parts:
        discount = draw(st.integers(min_value=0, max_value=cents))
        quantity = draw(st.sampled_from([q for q in (1, 2, 4, 5) if (cents + discount) % q == 0]))
        unit = Decimal(cents + discount) / quantity / 100
        lines.append(
            {
                "product_reference": "P",
                "name": "n",
                "type": "good",
                "quantity": quantity,
                "unit_price": unit,
                "tax_rate": Decimal(draw(st.integers(0, 10_000))) / 100,
                "discount": -Decimal(discount) / 100,
                "total_amount": Decimal(cents) / 100,
            }
        )
    return amount, lines


@settings(max_examples=150, deadline=None)
@given(baskets_for())
def test_any_amount_in_range_with_a_basket_that_adds_up_validates(case: tuple[int, list[dict[str, Any]]]) -> None:
    amount, lines = case
    request = parse_order_request(with_basket(lines, amount))
    assert request.order.price.amount == amount
    assert sum(item.total_amount for item in request.order.basket or []) * 100 == amount


@settings(max_examples=100, deadline=None)
@given(st.integers(max_value=0) | st.integers(min_value=MAX_AMOUNT + 1))
def test_any_amount_outside_the_range_fails_at_the_amount(amount: int) -> None:
    assert refusal(minimal(price(amount=amount))).path == "order.price.amount"


def floats_anywhere(value: Any, where: str = "") -> list[str]:
    if isinstance(value, float):
        return [where]
    if isinstance(value, BaseModel):
        return [
            p for name in type(value).model_fields for p in floats_anywhere(getattr(value, name), f"{where}.{name}")
        ]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in floats_anywhere(item, f"{where}.{key}")]
    if isinstance(value, list | tuple):
        return [p for index, item in enumerate(value) for p in floats_anywhere(item, f"{where}.{index}")]
    return []


@settings(max_examples=100, deadline=None)
@given(baskets_for())
def test_prices_parsed_from_json_text_never_become_floats(case: tuple[int, list[dict[str, Any]]]) -> None:
    amount, lines = case
    body = with_basket(lines, amount)
    body["order"]["custom_data"] = {"ratio": Decimal("0.5"), "nested": [{"x": Decimal("1.25")}]}
    request = parse_order_request(jsonutil.loads(jsonutil.dumps(body)))
    assert floats_anywhere(request) == []
    assert floats_anywhere(request.model_dump()) == []
    for item in request.order.basket or []:
        assert all(isinstance(v, Decimal) for v in (item.unit_price, item.tax_rate, item.discount, item.total_amount))


def reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def payload_hash(body: dict[str, Any]) -> str:
    return parse_order_request(body).payload_hash()


@settings(max_examples=100, deadline=None)
@given(baskets_for())
def test_payload_hash_is_stable_under_key_order(case: tuple[int, list[dict[str, Any]]]) -> None:
    amount, lines = case
    body = with_basket(lines, amount)
    assert payload_hash(body) == payload_hash(reordered(deep(body)))


def test_payload_hash_is_stable_under_default_filling_and_unknown_fields() -> None:
    implicit = example("order-full.json")
    explicit = example("order-full.json")
    del implicit["order"]["basket"][0]["discount"], implicit["order"]["transaction_type"]
    del implicit["order"]["price"]["currency"], implicit["order"]["description"]
    explicit["order"]["description"] = "POS payment"
    explicit["order"]["basket"][0]["discount"] = Decimal("0.00")
    explicit["unknown"] = {"ignored": True}
    implicit["pos_technical_info"]["terminal_transaction_display"].pop("force_authorization")
    explicit["pos_technical_info"]["terminal_transaction_display"]["force_authorization"] = False
    assert payload_hash(implicit) == payload_hash(explicit)
    assert payload_hash(example()) == payload_hash(minimal(lambda b: b.__setitem__("customer", None)))


@pytest.mark.parametrize("written", [9, Decimal("9.0"), Decimal("9.00"), Decimal("9.000")])
def test_payload_hash_treats_equal_prices_written_differently_as_the_same_payload(written: Any) -> None:
    reference = with_basket([basket_line("9.00", unit_price="9")], 900)
    reference["order"]["basket"][0].update(unit_price=9, total_amount=9)
    other = deep(reference)
    other["order"]["basket"][0].update(unit_price=written, total_amount=written)
    assert payload_hash(reference) == payload_hash(other)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, MAX_AMOUNT), st.integers(1, MAX_AMOUNT))
def test_payload_hash_differs_when_the_amount_differs(first: int, second: int) -> None:
    hashes = payload_hash(minimal(price(amount=first))), payload_hash(minimal(price(amount=second)))
    assert (hashes[0] == hashes[1]) == (first == second)


@pytest.mark.parametrize(
    "mutate",
    [
        order(order_id="OTHER"),
        order(description="another"),
        order(transaction_type="Credit"),
        display(force_authorization=True),
        device(serial_number="999"),
        order(custom_data={"a": 1}),
        lambda b: b.__setitem__("customer", {"email": "x@example.com"}),
    ],
    ids=["order-id", "description", "type", "force", "terminal", "custom-data", "customer"],
)
def test_payload_hash_differs_when_any_contract_field_differs(mutate: Mutation) -> None:
    assert payload_hash(minimal(mutate)) != payload_hash(example())


def test_parsed_request_is_immutable() -> None:
    request = parse_order_request(example())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        request.order.price.amount = 1  # type: ignore[misc]
    assert isinstance(request, OrderRequest)
