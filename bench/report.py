"""One markdown table of figures, baselines, ratios and targets; RESULTS.md upkeep."""

import sys
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


def publish(
    header: str,
    rows: list[Row],
    path: Path,
    *,
    whole_file: bool,
    begin: str = BEGIN,
    end: str = END,
) -> int:
    """Print the run's header and table and keep them in ``path``: as the whole file
    (a smoke run's own) or as its part of RESULTS.md. The exit status: 1, naming them,
    when any figure cannot be trusted."""
    text = "\n".join([header, "", table(rows), ""])
    print(text)
    if whole_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    else:
        update_results(path, text, begin, end)
    failed = [r.figure for r in rows if r.problem]
    if failed:
        print(f"untrustworthy figures: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


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
