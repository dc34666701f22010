"""The framework's ceiling: aiohttp "hello world" on uvloop with the access log off.

``python -m bench.hello PORT`` — the same loop and server settings as the API.
"""

import sys

import uvloop
from aiohttp import web

BODY = b'{"current":0,"withdrawn":0}'


async def hello(_request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
