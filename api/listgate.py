"""How many long lists may stream at once: per customer and per process."""

from collections.abc import Iterator
from contextlib import contextmanager

from api.errors import Overloaded


def too_many_for_user() -> Overloaded:
    return Overloaded(
        429,
        "too many long lists in flight for this account; retry when one has finished",
        "customer_lists",
    )


class StreamGate:
    """Long lists streaming right now: per customer and for the whole process."""

    def __init__(self, per_user: int, total: int) -> None:
        self.per_user = max(per_user, 1)
        self.total = max(total, 1)
        self._by_user: dict[int, int] = {}
        self._streaming = 0

    def user_busy(self, user_id: int) -> bool:
        return self._by_user.get(user_id, 0) >= self.per_user

    @contextmanager
    def slot(self, user_id: int) -> Iterator[None]:
        """Hold a streaming slot; raise 429 or 503 when none is free."""
        if self.user_busy(user_id):
            raise too_many_for_user()
        if self._streaming >= self.total:
            raise Overloaded(503, "too many long lists are being sent; retry shortly", "lists")
        self._by_user[user_id] = self._by_user.get(user_id, 0) + 1
        self._streaming += 1
        try:
            yield
        finally:
            self._streaming -= 1
            left = self._by_user[user_id] - 1
            if left:
                self._by_user[user_id] = left
            else:
                del self._by_user[user_id]
