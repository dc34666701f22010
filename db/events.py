"""The user-change channel: what migration 0004's triggers and the API's event hub share.

A payload is ``"<user id>"`` (something that user sees changed: look again)
or ``"<user id> end"`` (end that user's event streams, e.g. after a logout:
every API process drops them, and streams whose session is still valid
simply reconnect).
"""

from dataclasses import dataclass

import asyncpg

USER_CHANGE_CHANNEL = "gophermart_user_change"
_END = "end"


@dataclass(frozen=True, slots=True)
class UserEvent:
    user_id: int
    end: bool  # end the user's streams rather than "look again"


def parse(payload: str) -> UserEvent | None:
    """The event a payload carries; None for anything unreadable (ignored)."""
    user, _, what = payload.partition(" ")
    if not user.isascii() or not user.isdigit() or what not in ("", _END):
        return None
    return UserEvent(int(user), what == _END)


async def end_user_streams(db: asyncpg.Pool | asyncpg.Connection, user_id: int) -> None:
    """Ask every API process to end this user's event streams (delivered on commit)."""
    await db.execute("SELECT pg_notify($1, $2)", USER_CHANGE_CHANNEL, f"{user_id} {_END}")
