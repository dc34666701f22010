"""An order's status: ours, and the accrual system's, which is a different vocabulary.

``OrderStatus`` is what the API answers, what ``orders.status`` holds (its
CHECK lists the same four; tests/test_shared_words.py ties the two) and what
the metrics label. ``AccrualStatus`` is what the accrual system answers about
an order; ``ours`` maps it: an order it has only registered is still NEW to us.
"""

from enum import StrEnum


class OrderStatus(StrEnum):
    NEW = "NEW"  # uploaded; the accrual system has not started on it
    PROCESSING = "PROCESSING"  # its reward is being computed
    INVALID = "INVALID"  # refused: final, nothing credited
    PROCESSED = "PROCESSED"  # final, its accrual credited

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


# Statuses an order never leaves (the worker stops asking about it).
FINAL_STATUSES = frozenset({OrderStatus.INVALID, OrderStatus.PROCESSED})


class AccrualStatus(StrEnum):
    REGISTERED = "REGISTERED"
    PROCESSING = "PROCESSING"
    INVALID = "INVALID"
    PROCESSED = "PROCESSED"

    @property
    def ours(self) -> OrderStatus:
        return _OURS[self]


_OURS = {
    AccrualStatus.REGISTERED: OrderStatus.NEW,
    AccrualStatus.PROCESSING: OrderStatus.PROCESSING,
    AccrualStatus.INVALID: OrderStatus.INVALID,
    AccrualStatus.PROCESSED: OrderStatus.PROCESSED,
}
