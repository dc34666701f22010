"""Registered orders and their status as time passes.

Status is computed from the registration time on each read, so no background
task moves orders along: before ``delay / 2`` an order is REGISTERED, then
PROCESSING, and from ``delay`` on it is final. The reward is fixed when the
order is registered, against the rules known then, and every answer body is
serialised once up front so the status endpoint only looks things up.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from accrual_sim.rules import Good, InvalidPayload, RuleBook, parse_goods
from shared.jsonio import dumps
from shared.luhn import is_order_number
from shared.statuses import AccrualStatus


@dataclass(frozen=True, slots=True)
class Order:
    number: str
    registered_at: float
    final_status: str
    accrual: Decimal | None
    registered_body: bytes
    processing_body: bytes
    final_body: bytes

    def body_at(self, now: float, delay: float) -> bytes:
        """The JSON answer for this order at monotonic time ``now``."""
        age = now - self.registered_at
        if age >= delay:
            return self.final_body
        if age >= delay / 2:
            return self.processing_body
        return self.registered_body


def parse_order(payload: Any) -> tuple[str, tuple[Good, ...]]:
    """``{"order": "<number>", "goods": [...]}`` -> (number, goods)."""
    if not isinstance(payload, dict):
        raise InvalidPayload("order must be a JSON object")
    number = payload.get("order")
    if not isinstance(number, str) or not is_order_number(number):
        raise InvalidPayload("order must be a string of digits passing the Luhn check")
    return number, parse_goods(payload.get("goods"))


def make_order(
    number: str, registered_at: float, accrual: Decimal | None, invalid_when_nothing: bool
) -> Order:
    """An order whose final answer follows from its reward (None: no rule matched)."""
    if accrual is None and invalid_when_nothing:
        final: dict[str, object] = {"order": number, "status": AccrualStatus.INVALID}
    else:
        final = {"order": number, "status": AccrualStatus.PROCESSED}
        # Only something to credit is announced, as the real system does.
        if accrual:
            final["accrual"] = accrual
    return Order(
        number=number,
        registered_at=registered_at,
        final_status=str(final["status"]),
        accrual=accrual if accrual else None,
        registered_body=dumps({"order": number, "status": AccrualStatus.REGISTERED}),
        processing_body=dumps({"order": number, "status": AccrualStatus.PROCESSING}),
        final_body=dumps(final),
    )


class OrderBook:
    """Every registered order by number."""

    def __init__(self, invalid_when_nothing: bool) -> None:
        self._orders: dict[str, Order] = {}
        self._invalid_when_nothing = invalid_when_nothing

    def __len__(self) -> int:
        return len(self._orders)

    def get(self, number: str) -> Order | None:
        return self._orders.get(number)

    def register(
        self, number: str, goods: tuple[Good, ...], rules: RuleBook, now: float
    ) -> Order | None:
        """Register a purchase; None when the number is already registered."""
        if number in self._orders:
            return None
        order = make_order(number, now, rules.accrual(goods), self._invalid_when_nothing)
        self._orders[number] = order
        return order
