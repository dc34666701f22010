"""Running a process's main coroutine on the event loop every process uses.

uvloop where it is installed (a dependency everywhere but Windows), asyncio's
own loop otherwise: the API, the worker and the simulator choose here, once.
"""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on every platform; asyncio's works too
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new loop, then cancel what is left and close it."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
