"""What a user hears in the media benchmark, per condition: the worst voice and the worst run.

Issue 15's goals hold for the worst voice and the worst of several runs, so
the mean PESQ-WB alone hides what matters. :func:`heard_table` prints, per
condition, pqcall/prototype PESQ-WB of the worst voice (mean over its runs)
and of the worst single run, then pqcall's own figures (the prototype has
neither concealment nor modes): concealed ms per side (mean over the runs,
and the worst run's), the caller's encoder-mode time share (clean / fec /
redundancy / backup, mean over the runs) and late packets per side (the worst run's).
:func:`worst_run_figures` gives the worst run's PESQ-WB as figures for the JSON.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from pqcall.bench.call import CallRecord
from pqcall.bench.report import Figure, render_columns

__all__ = ["MODES", "Calls", "heard_table", "worst_run_figures"]

MODES = ("clean", "fec", "redundancy", "backup")
"""The encoder's modes, in the order the table shows their shares."""

Calls = Mapping[tuple[str, str, str], Sequence[tuple[float, CallRecord]]]
"""(system, condition, voice) -> (PESQ-WB, record) of each run."""


def _all_runs(calls: Calls, system: str, condition: str) -> list[tuple[float, CallRecord]]:
    return [
        run
        for (sys_, cond, _), runs in calls.items()
        if (sys_, cond) == (system, condition)
        for run in runs
    ]


def _worst_voice(calls: Calls, system: str, condition: str) -> float:
    means = [
        statistics.fmean(pesq for pesq, _ in runs)
        for (sys_, cond, _), runs in calls.items()
        if (sys_, cond) == (system, condition)
    ]
    return min(means)


def _side(runs: Sequence[tuple[float, CallRecord]], side: int) -> str:
    concealed = [record.concealed_ms[side] for _, record in runs]
    return f"{statistics.fmean(concealed):.0f} ({max(concealed):.0f})"


def heard_table(conditions: Sequence[str], calls: Calls, ours: str, theirs: str) -> str:
    """The per-condition table (see the module docstring); ``ours``/``theirs`` name the systems."""
    header = [
        "condition",
        "worst voice",
        "worst run",
        "concealed ms caller",
        "concealed ms callee",
        "caller enc % " + "/".join(MODES),
        "late caller/callee",
    ]
    rows = [["", f"{ours}/proto", f"{ours}/proto", "mean (worst)", "mean (worst)", "", "worst"]]
    for condition in conditions:
        mine, base = _all_runs(calls, ours, condition), _all_runs(calls, theirs, condition)
        shares = "/".join(
            f"{100 * statistics.fmean(r.mode_share(mode) for _, r in mine):.0f}" for mode in MODES
        )
        rows.append(
            [
                condition,
                f"{_worst_voice(calls, ours, condition):.2f}/"
                f"{_worst_voice(calls, theirs, condition):.2f}",
                f"{min(p for p, _ in mine):.2f}/{min(p for p, _ in base):.2f}",
                _side(mine, 0),
                _side(mine, 1),
                shares,
                f"{max(r.late_packets[0] for _, r in mine)}/"
                f"{max(r.late_packets[1] for _, r in mine)}",
            ]
        )
    return render_columns(
        "What a user hears: worst voice, worst run, concealment, encoder mode, late packets",
        header,
        rows,
    )


def worst_run_figures(
    conditions: Sequence[str], calls: Calls, ours: str, theirs: str, baseline_name: str
) -> list[Figure]:
    """``"PESQ-WB, <condition>, worst run"``: the lowest single call of each system."""
    return [
        Figure(
            f"PESQ-WB, {condition}, worst run",
            min(p for p, _ in _all_runs(calls, ours, condition)),
            "MOS",
            baseline_name,
            min(p for p, _ in _all_runs(calls, theirs, condition)),
        )
        for condition in conditions
    ]
