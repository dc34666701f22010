"""A probe's p99 on its own, then while another load runs beside it, in one run.

The quiet probe is the baseline; the load starts, gets a head start, and lasts a
second longer than the loud probe, so the probe is measured under it throughout.
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.context import Ctx
from bench.report import ms, rate

HEAD_START = 0.5  # seconds the load runs before the loud probe starts


@dataclass(frozen=True, slots=True)
class Traffic:
    """wrk requests to one path, each expecting a 200."""

    path: str
    script: Path
    connections: int
    args: tuple[str, ...] = ()

    async def run(self, ctx: Ctx, base: str, seconds: float) -> wrk.WrkResult:
        return await wrk.run(
            ctx.wrk,
            base + self.path,
            self.script,
            seconds=seconds,
            connections=self.connections,
            expected=200,
            args=self.args,
        )


@dataclass(frozen=True, slots=True)
class UnderLoad:
    quiet: wrk.WrkResult  # the probe alone
    loud: wrk.WrkResult  # the probe beside the load
    load: wrk.WrkResult

    @property
    def slowdown(self) -> float:
        """The probe's p99 under the load over its p99 alone."""
        return self.loud.p99_ms / self.quiet.p99_ms if self.quiet.p99_ms else float("inf")

    @property
    def ratio(self) -> str:
        return f"{self.slowdown:.1f}x quiet p99" if self.quiet.p99_ms else "n/a"

    @property
    def baseline(self) -> str:
        return f"quiet p99 {ms(self.quiet.p99_ms)} ({rate(self.quiet.rps, 'req/s')})"

    def problem(self, of_load: str | None) -> str | None:
        """Why the figure cannot be trusted: either probe's problem, or ``of_load``."""
        return "; ".join(p for p in (self.quiet.problem, self.loud.problem, of_load) if p) or None


async def measure(ctx: Ctx, base: str, probe: Traffic, load: Traffic) -> UnderLoad:
    seconds = ctx.plan.wrk_seconds
    quiet = await probe.run(ctx, base, seconds)
    background = asyncio.create_task(load.run(ctx, base, seconds + 1))
    await asyncio.sleep(HEAD_START)
    loud = await probe.run(ctx, base, seconds)
    return UnderLoad(quiet, loud, await background)
