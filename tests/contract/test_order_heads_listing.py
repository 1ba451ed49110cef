"""PaymentRepository.list_heads, for every store: the merchant's heads only, latest attempt first,
paged without gaps or repeats, and a terminal filter that may leave a page short but never loses a head."""

from __future__ import annotations

from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead, OrderPosition
from chalicelib.payments.ports import PaymentRepository

NOW = 1_795_000_000_000


def start(
    payments: PaymentRepository, order_id: str, at_ms: int, merchant_id: str = "M1", terminal_id: str = "PAX-1"
) -> None:
    request_id = f"r-{merchant_id}-{order_id}"
    head = OrderHead(merchant_id, order_id, 1, request_id, terminal_id, "h" * 64, "{}", at_ms, at_ms)
    dispatch = Dispatch(
        request_id, merchant_id, order_id, 1, terminal_id, "Debit", 100, "EUR", DispatchState.PENDING, at_ms, 0, 0
    )
    payments.start_attempt(head, dispatch, None)


def all_pages(payments: PaymentRepository, limit: int, terminal_id: str | None = None) -> list[list[str]]:
    pages: list[list[str]] = []
    after: OrderPosition | None = None
    while True:
        heads, after = payments.list_heads("M1", limit, after, terminal_id)
        pages.append([head.order_id for head in heads])
        if after is None:
            return pages


def test_heads_come_latest_attempt_first_and_only_the_merchants(payments: PaymentRepository) -> None:
    for index in range(5):
        start(payments, f"O-{index}", NOW + index * 1000)
    start(payments, "THEIRS", NOW + 9000, merchant_id="M2")

    heads, after = payments.list_heads("M1", 10)

    assert [head.order_id for head in heads] == ["O-4", "O-3", "O-2", "O-1", "O-0"]
    assert after is None
    assert {head.merchant_id for head in heads} == {"M1"}


def test_pages_cover_every_head_once_in_order(payments: PaymentRepository) -> None:
    for index in range(7):
        start(payments, f"O-{index}", NOW + index)

    pages = all_pages(payments, 3)

    assert [order for page in pages for order in page] == [f"O-{index}" for index in range(6, -1, -1)]
    assert [len(page) for page in pages[:2]] == [3, 3]


def test_a_retried_order_moves_to_the_top_and_is_listed_once(payments: PaymentRepository) -> None:
    start(payments, "OLD", NOW)
    start(payments, "NEW", NOW + 10)
    head = payments.get_head("M1", "OLD")
    retried = OrderHead("M1", "OLD", 2, "r-2", "PAX-1", "h" * 64, "{}", NOW, NOW + 20)
    dispatch = Dispatch("r-2", "M1", "OLD", 2, "PAX-1", "Debit", 100, "EUR", DispatchState.PENDING, NOW + 20, 0, 0)
    payments.start_attempt(retried, dispatch, head.attempt)

    heads, _ = payments.list_heads("M1", 10)

    assert [(h.order_id, h.attempt) for h in heads] == [("OLD", 2), ("NEW", 1)]


def test_the_terminal_filter_keeps_only_that_terminal_across_short_pages(payments: PaymentRepository) -> None:
    for index in range(8):
        start(payments, f"O-{index}", NOW + index, terminal_id="PAX-A" if index % 3 == 0 else "PAX-B")

    pages = all_pages(payments, 2, terminal_id="PAX-A")

    assert [order for page in pages for order in page] == ["O-6", "O-3", "O-0"]
    assert any(len(page) < 2 for page in pages[:-1])


def test_a_merchant_without_orders_gets_an_empty_last_page(payments: PaymentRepository) -> None:
    assert payments.list_heads("M1", 5) == ([], None)
