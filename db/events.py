"""The user-change channel that migration 0004's triggers notify and the API's event hub hears.

The payload is the id of a user something changed for (an order added or
changing status, a credit, a withdrawal); listeners re-read through the
ordinary endpoints, so nothing else needs to travel or be trusted here.
"""

USER_CHANGE_CHANNEL = "gophermart_user_change"


def parse_user_id(payload: str) -> int | None:
    """The user id a payload names; None for anything unreadable (ignored)."""
    if not payload.isascii() or not payload.isdigit() or len(payload) > 19:
        return None
    return int(payload)
