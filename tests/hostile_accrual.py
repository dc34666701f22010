"""A hostile accrual system: answers each order however its script says.

In-process (``HostileAccrual().app()`` under aiohttp's test server) or as a
real process in front of the simulator::

    python -m tests.hostile_accrual --port 8089 [--upstream http://127.0.0.1:8081]

``POST /hostile/script`` with ``{"<order>": "<behaviour>", ...}`` sets what an
order gets; unscripted orders are forwarded to the upstream (429s included)
or, without one, answered 204. ``GET /hostile/requests`` counts what was
asked; ``/hostile/trap`` is where redirects point (nobody may ever reach it).

Behaviours: ``unknown``, ``processed:<amount>``, ``registered``, ``huge``,
``huge_chunked``, ``gzip_bomb``, ``deflate_bomb``, ``nested_gzip``,
``brotli``, ``drip``, ``slow``, ``redirect``, ``redirect_external``,
``lie_order``, ``bad_json``, ``wrong_shape``, ``deep``, ``accrual_string``,
``accrual_negative``, ``accrual_huge``, ``unknown_status``, ``teapot``,
``huge_header``, ``429:<Retry-After or none>[|<rate per minute>]``; ``once:<behaviour>``
answers so the first time and as unscripted orders after.
"""

import argparse
import asyncio
import functools
import gzip
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

JSON = "application/json"
BOMB_BYTES = 50 * 1024 * 1024  # inflates to 50 MB; a few dozen KB on the wire


@functools.cache
def _bomb(kind: str) -> bytes:
    zeros = b" " * BOMB_BYTES
    if kind == "gzip":
        return gzip.compress(zeros, 9)
    return zlib.compress(zeros, 9)


def _order_body(number: str, status: str, accrual: str | None = None) -> bytes:
    extra = f', "accrual": {accrual}' if accrual is not None else ""
    return f'{{"order": "{number}", "status": "{status}"{extra}}}'.encode()


@dataclass
class HostileAccrual:
    upstream: str | None = None
    script: dict[str, str] = field(default_factory=dict)
    asked: Counter[str] = field(default_factory=Counter)
    sequence: list[str] = field(default_factory=list)  # every number asked, in order
    by_behaviour: Counter[str] = field(default_factory=Counter)
    trap_hits: int = 0
    _session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/orders/{number}", self._order)
        app.router.add_post("/hostile/script", self._set_script)
        app.router.add_get("/hostile/requests", self._requests)
        app.router.add_route("*", "/hostile/trap", self._trap)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _set_script(self, request: web.Request) -> web.Response:
        self.script.update(await request.json())
        return web.json_response({"scripted": len(self.script)})

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "asked": dict(self.asked),
                "by_behaviour": dict(self.by_behaviour),
                "trap_hits": self.trap_hits,
            }
        )

    async def _trap(self, request: web.Request) -> web.Response:
        self.trap_hits += 1
        return web.Response(body=_order_body("0", "PROCESSED", "1000000"), content_type=JSON)

    async def _order(self, request: web.Request) -> web.StreamResponse:
        number = request.match_info["number"]
        self.asked[number] += 1
        self.sequence.append(number)
        default = "proxy" if self.upstream else "unknown"
        behaviour = self.script.get(number, default)
        if behaviour.startswith("once:"):  # hostile the first time, then as usual
            behaviour = behaviour.removeprefix("once:")
            self.script[number] = default
        self.by_behaviour[behaviour.split(":")[0]] += 1
        return await self.answer(request, number, behaviour)

    async def answer(self, request: web.Request, number: str, behaviour: str) -> web.StreamResponse:
        name, _, arg = behaviour.partition(":")
        match name:
            case "proxy":
                return await self._proxy(number)
            case "unknown":
                return web.Response(status=204)
            case "processed":
                return web.Response(
                    body=_order_body(number, "PROCESSED", arg or "1"), content_type=JSON
                )
            case "registered":
                return web.Response(body=_order_body(number, "REGISTERED"), content_type=JSON)
            case "huge":
                return web.Response(
                    body=b" " * (5 * 1024 * 1024) + _order_body(number, "INVALID"),
                    content_type=JSON,
                )
            case "huge_chunked":
                return await self._stream(request, b" " * 65536, times=100, pause=0.0)
            case "gzip_bomb" | "deflate_bomb":
                kind = "gzip" if name == "gzip_bomb" else "deflate"
                return web.Response(
                    body=_bomb(kind), content_type=JSON, headers={"Content-Encoding": kind}
                )
            case "nested_gzip":
                body = gzip.compress(gzip.compress(_order_body(number, "PROCESSED", "5")))
                return web.Response(
                    body=body, content_type=JSON, headers={"Content-Encoding": "gzip, gzip"}
                )
            case "brotli":
                return web.Response(
                    body=b"\x8b\x02\x80" * 10, content_type=JSON, headers={"Content-Encoding": "br"}
                )
            case "drip":
                return await self._stream(request, b" ", times=600, pause=0.1)
            case "slow":
                await asyncio.sleep(60)
                return web.Response(status=204)
            case "redirect":
                raise web.HTTPFound("/hostile/trap")
            case "redirect_external":
                raise web.HTTPMovedPermanently("http://203.0.113.7/api/orders/" + number)
            case "lie_order":
                return web.Response(
                    body=_order_body("12345678903", "PROCESSED", "1000"), content_type=JSON
                )
            case "bad_json":
                return web.Response(
                    body=b'{"order": "' + number.encode() + b'", "status":', content_type=JSON
                )
            case "wrong_shape":
                return web.Response(
                    body=json.dumps([number, "PROCESSED", 5]).encode(), content_type=JSON
                )
            case "deep":
                return web.Response(body=b"[" * 30000 + b"]" * 30000, content_type=JSON)
            case "accrual_string":
                return web.Response(
                    body=_order_body(number, "PROCESSED", '"500"'), content_type=JSON
                )
            case "accrual_negative":
                return web.Response(body=_order_body(number, "PROCESSED", "-5"), content_type=JSON)
            case "accrual_huge":
                return web.Response(
                    body=_order_body(number, "PROCESSED", "1e30"), content_type=JSON
                )
            case "unknown_status":
                return web.Response(body=_order_body(number, "DONE", "5"), content_type=JSON)
            case "error500":
                return web.Response(status=500, text="upstream trouble")
            case "teapot":
                return web.Response(status=418, body=_order_body(number, "PROCESSED", "5"))
            case "huge_header":
                return web.Response(status=204, headers={"X-Junk": "j" * 100_000})
            case "429":
                retry, _, rate = arg.partition("|")
                headers = {} if retry == "none" else {"Retry-After": retry}
                text = f"No more than {rate} requests per minute allowed" if rate else "slow down"
                return web.Response(status=429, text=text, headers=headers)
        raise AssertionError(f"unknown behaviour {behaviour!r}")

    async def _stream(
        self, request: web.Request, chunk: bytes, *, times: int, pause: float
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": JSON})
        await response.prepare(request)
        try:
            for _ in range(times):
                await response.write(chunk)
                await asyncio.sleep(pause)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client gave up, as it should
        return response

    async def _proxy(self, number: str) -> web.Response:
        assert self.upstream is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        async with self._session.get(
            f"{self.upstream}/api/orders/{number}", allow_redirects=False
        ) as resp:
            body = await resp.read()
            headers = {
                k: v for k, v in resp.headers.items() if k in ("Retry-After", "Content-Type")
            }
            return web.Response(status=resp.status, body=body, headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile_accrual")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default=None)
    args = parser.parse_args()
    hostile = HostileAccrual(upstream=args.upstream)
    web.run_app(hostile.app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
