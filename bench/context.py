"""What every scenario gets: the stack, the plan, the tools and a scratch directory."""

from dataclasses import dataclass, field
from pathlib import Path

from bench.plan import Plan
from bench.stack import Stack


@dataclass
class Ctx:
    stack: Stack
    plan: Plan
    wrk: str
    pgbench: str
    work_dir: Path
    # Peak RSS (MiB) by process role, filled in as processes finish their load.
    peak_rss: dict[str, float] = field(default_factory=dict)

    def note_rss(self, role: str, mib: float) -> None:
        self.peak_rss[role] = max(self.peak_rss.get(role, 0.0), mib)
