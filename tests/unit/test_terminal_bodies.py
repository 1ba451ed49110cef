"""Terminal message bodies (docs/terminal-protocol.md) against their models: what a terminal may send, field by
field, and that anything else is refused as ``bad_body``."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.exceptions import EventRefused
from chalicelib.payments.schemas import AckBody, ResultBody, StatusBody, terminal_body

TEXT_FIELDS = ["error_code", "receipt", "transaction_reference", "authorization_code", "card_brand", "masked_pan"]


def refused(model: Any, body: dict[str, Any]) -> EventRefused:
    with pytest.raises(EventRefused) as caught:
        terminal_body(model, body)
    return caught.value


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_result_text_fields_refuse_anything_but_text_and_accept_null(field: str) -> None:
    for wrong in (51, True, ["x"], {"x": 1}):
        error = refused(ResultBody, {"payment_status": "Success", field: wrong})
        assert error.reason == "bad_body" and field in str(error), (field, wrong)
    assert getattr(terminal_body(ResultBody, {"payment_status": "Failed", field: None}), field) is None


def test_result_keeps_its_contract_fields_and_drops_the_rest() -> None:
    body = {
        "payment_status": "Failed",
        "error_code": "declined",
        "error_data": {"reason": "funds", "n": 3},
        "authorized_online": False,
        "cvv": "123",
    }
    dumped = terminal_body(ResultBody, body).model_dump(exclude_none=True)
    assert dumped == {k: v for k, v in body.items() if k != "cvv"}


@pytest.mark.parametrize("status", ["success", "SUCCESS", "", None, 1])
def test_result_status_is_success_or_failed_exactly(status: Any) -> None:
    assert refused(ResultBody, {"payment_status": status}).reason == "bad_body"


def test_ack_is_accepted_unless_it_says_otherwise_and_its_reason_is_not_read() -> None:
    assert terminal_body(AckBody, {}).accepted is True
    assert terminal_body(AckBody, {"accepted": False, "reason": {"odd": 1}}).accepted is False
    for wrong in ("false", 0, None):
        assert refused(AckBody, {"accepted": wrong}).reason == "bad_body"


@pytest.mark.parametrize(("body", "state"), [({"state": "online"}, "online"), ({"state": "offline"}, "offline")])
def test_status_is_online_or_offline(body: dict[str, Any], state: str) -> None:
    assert terminal_body(StatusBody, body).state == state


@pytest.mark.parametrize("body", [{}, {"state": "away"}, {"state": "Online"}, {"state": True}])
def test_other_statuses_are_refused(body: dict[str, Any]) -> None:
    assert refused(StatusBody, body).reason == "bad_body"
