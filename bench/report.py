"""One markdown table of figures, baselines, ratios and targets; RESULTS.md upkeep."""

from dataclasses import dataclass
from pathlib import Path

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    measured: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    passed: bool | None = None  # None: no target
    problem: str | None = None  # the figure itself is untrustworthy (errors, timeouts)

    @property
    def verdict(self) -> str:
        if self.problem:
            return f"**FAILED**: {self.problem}"
        if self.passed is None:
            return "—"
        return "pass" if self.passed else "**miss**"


def rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "n/a"


def table(rows: list[Row]) -> str:
    head = ["figure", "measured", "baseline (same run)", "ratio", "target", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.figure, r.measured, r.baseline, r.ratio, r.target, r.verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def update_results(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace one generated part of RESULTS.md (between ``begin`` and ``end``), keeping
    the hand-written notes around it; a part not there yet is appended."""
    block = f"{begin}\n{section.strip()}\n{end}"
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            head, _, rest = text.partition(begin)
            _, _, tail = rest.partition(end)
            path.write_text(head + block + tail)
            return
        path.write_text(text.rstrip("\n") + f"\n\n{block}\n")
        return
    path.write_text(f"# Benchmark results\n\n{block}\n")
