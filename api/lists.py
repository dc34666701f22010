"""GET of a user's list (orders, withdrawals): bounded, paged and streamed.

What one answer may cost is bounded three ways:

* **Size.** At most ``LIST_MAX_ITEMS`` rows, or the client's ``limit``; when more
  follow, the answer carries ``Link: <…?after=CURSOR>; rel="next"``.
* **Time on the event loop.** A list that fits in one page (``PAGE_ROWS``, the
  common case) is answered in one piece; a longer one is streamed a page at
  a time, each page one short query whose JSON PostgreSQL renders, so no step
  holds the loop or a connection for long and memory stays at about a page.
* **Concurrency.** Long lists (more than a page) stream at most
  ``LIST_CONCURRENCY`` at a time per customer (429 beyond) and at most half
  the pool's connections at a time per process (503 beyond), so a customer
  with a huge history cannot take the process or the pool from the others.

A client that hangs up, or stops reading for ``SEND_TIMEOUT`` seconds, is
noticed between pages: the work stops there and the access log says 499.
"""

import asyncio

import structlog
from aiohttp import hdrs, web

from api.errors import ApiError, ClientGone, client_gone
from api.listgate import too_many_for_user
from api.middleware import request_id
from api.negotiation import accepts_gzip
from api.state import LIST_GATE, POOL, SETTINGS
from db import pages
from db.pages import PAGE_ROWS, START, Cursor, Listing
from shared.responses import empty_response


def _params(request: web.Request, cap: int) -> tuple[int | None, Cursor]:
    query = request.rel_url.query
    limit = None
    raw = query.get("limit")
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9 and 1 <= int(raw) <= cap):
            raise ApiError(400, f"limit must be a whole number from 1 to {cap}")
        limit = int(raw)
    after = START
    raw = query.get("after")
    if raw is not None:
        parsed = Cursor.parse(raw)
        if parsed is None:
            raise ApiError(400, "after must be a cursor taken from a Link header")
        after = parsed
    return limit, after


def _link(request: web.Request, limit: int | None, after: Cursor) -> dict[str, str]:
    query = {"after": after.text()} | ({"limit": str(limit)} if limit is not None else {})
    return {hdrs.LINK: f'<{request.rel_url.with_query(query)}>; rel="next"'}


# Seconds a list request of a customer whose long lists are all streaming waits
# before its 429 (it goes ahead if one has finished meanwhile).
REFUSAL_PAUSE = 1.0


async def respond(request: web.Request, user_id: int, listing: Listing) -> web.StreamResponse:
    """The user's list, newest first, within the bounds above."""
    settings, pool, gate = request.app[SETTINGS], request.app[POOL], request.app[LIST_GATE]
    asked, after = _params(request, settings.list_max_items)
    limit = asked if asked is not None else settings.list_max_items
    if gate.user_busy(user_id):
        # Its long lists are all streaming: refused before any query, after a
        # pause, so that a client asking again at once (not heeding Retry-After)
        # costs a request a second per connection rather than a flood.
        await asyncio.sleep(REFUSAL_PAUSE)
        if gate.user_busy(user_id):
            raise too_many_for_user()
    first_rows = min(limit, PAGE_ROWS)
    first = await pages.page(pool, listing, user_id, after, first_rows)
    if first is None:
        return empty_response(204)
    if first.count < first_rows or limit == first.count:
        # It fits in one page: one piece, like any small answer.
        more = None
        if first.count == limit:
            more = await pages.boundary(pool, listing, user_id, first.last, 0)
        structlog.contextvars.bind_contextvars(items=first.count)
        response = web.Response(body=b"[" + first.items + b"]", content_type="application/json")
        if more is not None:
            response.headers.update(_link(request, asked, more))
        return response
    with gate.slot(user_id):
        return await _stream(request, user_id, listing, first, limit, asked)


async def _stream(
    request: web.Request,
    user_id: int,
    listing: Listing,
    first: pages.Page,
    limit: int,
    asked: int | None,
) -> web.StreamResponse:
    pool, within = request.app[POOL], request.app[SETTINGS].send_timeout
    more = await pages.boundary(pool, listing, user_id, first.last, limit - first.count)
    response = web.StreamResponse(
        headers={hdrs.CONTENT_TYPE: "application/json", "X-Request-ID": request_id()}
    )
    if more is not None:
        response.headers.update(_link(request, asked, more))
    if accepts_gzip(request):
        response.enable_compression(web.ContentCoding.gzip)
    if client_gone(request):
        raise ClientGone()
    sent, cursor = first.count, first.last
    structlog.contextvars.bind_contextvars(items=sent)
    try:
        await response.prepare(request)
        await _send(request, response, b"[" + first.items, within)
        while sent < limit:
            if client_gone(request):
                raise ClientGone(response)
            rows = min(PAGE_ROWS, limit - sent)
            page = await pages.page(pool, listing, user_id, cursor, rows)
            if page is None:
                break
            await _send(request, response, b"," + page.items, within)
            sent, cursor = sent + page.count, page.last
            structlog.contextvars.bind_contextvars(items=sent)
            if page.count < rows:
                break
        await _send(request, response, b"]", within)
        await response.write_eof()
    except ConnectionError as exc:
        raise ClientGone(response) from exc
    return response


async def _send(
    request: web.Request, response: web.StreamResponse, data: bytes, within: float
) -> None:
    """Write a chunk; a client that takes none of it for ``within`` seconds is cut off."""
    try:
        async with asyncio.timeout(within):
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ClientGone(response) from None
