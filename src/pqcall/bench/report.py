"""A figure, its baseline measured in the same run, and how to print both."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure next to the baseline it is compared with."""

    name: str
    """What was measured."""
    value: float
    """pqcall's figure."""
    unit: str
    """Unit of ``value`` and ``baseline``."""
    baseline_name: str
    """What the baseline is."""
    baseline: float
    """The baseline's figure, measured in the same run."""

    @property
    def ratio(self) -> float:
        """``value / baseline``."""
        return self.value / self.baseline if self.baseline else float("inf")


def cpu_seconds_per_call(work: Callable[[], object], repeat: int) -> float:
    """Mean CPU seconds of one ``work()`` over ``repeat`` calls (after one warm-up)."""
    work()
    start = time.process_time()
    for _ in range(repeat):
        work()
    return (time.process_time() - start) / repeat


def render_table(title: str, figures: list[Figure]) -> str:
    """A plain-text table of figures with their baselines and ratios."""
    rows = [
        [
            f.name,
            f"{f.value:,.3f} {f.unit}",
            f"{f.baseline:,.3f} {f.unit}",
            f"{f.ratio:.2f}x",
            f.baseline_name,
        ]
        for f in figures
    ]
    return render_columns(title, ["figure", "pqcall", "baseline", "ratio", "baseline is"], rows)


def render_columns(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the title, the header, a rule, then the rows, left-aligned."""
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [title, ""]
    for index, row in enumerate(table):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def to_json(figures: list[Figure]) -> str:
    """The figures as a JSON list (ratio included)."""
    return json.dumps([asdict(f) | {"ratio": f.ratio} for f in figures], indent=2)
