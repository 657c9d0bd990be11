"""A figure, its baseline measured in the same run, and how to print both.

Figures measured on several voices (:func:`voice_figures`) come three ways:
one per voice (``"<name>, voice <voice>"``), over all voices (``"<name>"``,
the mean unless said otherwise) and the worst voice's (``"<name>, worst
voice"``: pqcall's worst against the baseline's worst).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
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


def voice_figures(
    name: str,
    unit: str,
    baseline_name: str,
    per_voice: Mapping[str, tuple[float, float]],
    *,
    higher_is_better: bool,
    overall: Callable[[Sequence[float]], float] = statistics.fmean,
) -> list[Figure]:
    """One figure per voice, then the figure over all voices, then the worst voice's.

    Args:
        name: what was measured.
        unit: its unit.
        baseline_name: what the baseline is.
        per_voice: voice -> (pqcall's value, the baseline's value).
        higher_is_better: the worst voice is the lowest value (PESQ) or the highest (CPU).
        overall: how the voices' values combine into the figure over all voices.
    """
    ours = [value for value, _ in per_voice.values()]
    theirs = [baseline for _, baseline in per_voice.values()]
    worst = min if higher_is_better else max
    return [
        *(
            Figure(f"{name}, voice {voice}", value, unit, baseline_name, baseline)
            for voice, (value, baseline) in per_voice.items()
        ),
        Figure(name, overall(ours), unit, baseline_name, overall(theirs)),
        Figure(f"{name}, worst voice", worst(ours), unit, baseline_name, worst(theirs)),
    ]


def worst_voice(per_voice: Mapping[str, float], *, higher_is_better: bool) -> str:
    """The voice with the worst value."""
    pick = min if higher_is_better else max
    return pick(per_voice, key=lambda voice: per_voice[voice])


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
