"""What the CLI prints: human lines, loud warnings, the live status line, tables, JSON.

With ``--json`` a command's machine output (one JSON object per call or item)
goes to stdout and everything meant for people goes to stderr, so
``pqcall call bob --json | jq`` sees only JSON. The status line (one line,
rewritten in place with ``\\r``) is drawn only on a terminal; in a pipe or a
log file it would be noise.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TextIO

MISSING = "-"
SIGNIFICANT_DIGITS = 4
"""Of a float in JSON output (``rtt_ms`` 3.212, ``mos`` 4.367, ``r_factor`` 91.21)."""
UNIX_SUFFIX = "_unix"
"""A JSON key ending so holds a unix time, and gets an ISO-8601 twin without it."""
"""Shown for a figure not measured (yet)."""


class Console:
    """Where one command's output goes.

    Args:
        json_mode: machine output on stdout, human text on stderr.
        out: the machine stream (``sys.stdout`` when None, read at construction).
        err: the diagnostics stream (``sys.stderr`` when None).
    """

    def __init__(
        self, *, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.out = out if out is not None else sys.stdout  # JSON, or everything without --json
        self.err = err if err is not None else sys.stderr  # warnings, and human text with --json
        self.human = self.err if json_mode else self.out  # where lines for people go
        self.is_tty = _isatty(self.human)  # draw the status line and ring the bell?
        self._status_width = 0  # characters of the status line on screen now

    def say(self, text: str) -> None:
        """One line for people."""
        self.clear_status()
        print(text, file=self.human, flush=True)

    def note(self, text: str) -> None:
        """A side remark for people, on stderr (never mixed into a table or JSON)."""
        self.clear_status()
        print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        """A security warning: loud, on stderr, never hidden by ``--json``."""
        self.clear_status()
        bell = "\a" if _isatty(self.err) else ""
        print(f"{bell}!!! SECURITY WARNING: {text}", file=self.err, flush=True)

    def ring(self, text: str) -> None:
        """An incoming call: the terminal bell (on a terminal) and a line."""
        self.clear_status()
        if self.is_tty:
            self.human.write("\a")
        print(text, file=self.human, flush=True)

    def bell(self) -> None:
        """The terminal bell alone (on a terminal; elsewhere nothing)."""
        if self.is_tty:
            self.human.write("\a")
            self.human.flush()

    def prompt(self, text: str) -> None:
        """A question whose answer is read from stdin (no newline after it)."""
        self.clear_status()
        self.human.write(text)
        self.human.flush()

    def status(self, text: str) -> None:
        """Rewrite the status line (on a terminal; elsewhere nothing)."""
        if not self.is_tty:
            return
        padding = " " * max(0, self._status_width - len(text))
        self.human.write(f"\r{text}{padding}")
        self.human.flush()
        self._status_width = len(text)

    def clear_status(self) -> None:
        """Erase the status line, so the next line starts clean."""
        if self._status_width:
            self.human.write("\r" + " " * self._status_width + "\r")
            self.human.flush()
            self._status_width = 0

    def emit_json(self, value: Mapping[str, Any]) -> None:
        """One JSON object, on one line, on stdout."""
        self.clear_status()
        print(to_json(value), file=self.out, flush=True)


def to_json(value: Any) -> str:
    """``value`` as one line of standard JSON, as docs/cli.md ("JSON output") describes.

    NaN and infinities become ``null``; floats are rounded to about four
    significant digits (at least one decimal); each ``NAME_unix`` time is
    rounded to the millisecond and gets an ISO-8601 UTC twin ``NAME`` beside it.
    """
    import json

    return json.dumps(_clean(value), ensure_ascii=False, allow_nan=False, sort_keys=False)


def round_float(value: float) -> float:
    """``value`` to about four significant digits, never fewer than one decimal."""
    if value == 0:
        return 0.0
    digits_before_point = math.floor(math.log10(abs(value))) + 1
    return round(value, max(1, SIGNIFICANT_DIGITS - digits_before_point))


def iso_time(unix: float) -> str:
    """A unix time as ISO-8601 in UTC, to the millisecond: ``2026-05-04T10:00:00.123Z``."""
    import datetime

    moment = datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round_float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if name.endswith(UNIX_SUFFIX) and isinstance(item, int | float):
                stem = name.removesuffix(UNIX_SUFFIX)
                if stem not in value and math.isfinite(item):
                    cleaned[stem] = iso_time(item)
                cleaned[name] = round(item, 3) if math.isfinite(item) else None
            else:
                cleaned[name] = _clean(item)
        return cleaned
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


# ---------------------------------------------------------------- figures


def clock(seconds: float) -> str:
    """``seconds`` as ``MM:SS`` (``H:MM:SS`` from an hour on)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def number(value: Any, unit: str = "", digits: int = 1) -> str:
    """A figure with its unit, or :data:`MISSING` when not measured."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    if isinstance(value, float) and not math.isfinite(value):
        return MISSING
    text = str(value) if isinstance(value, int) else f"{value:.{digits}f}"
    return f"{text} {unit}" if unit and unit != "%" else f"{text}{unit}"


def status_text(
    elapsed_s: float, path: str | None, stats: Mapping[str, Any] | None, *, peer: str = "the peer"
) -> str:
    """The live status line of an active call.

    ``00:12  direct  rtt 3 ms  loss 0.0%  jitter 1.2 ms  jb 40 ms  tx 45 rx 45 kbit/s  MOS 4.4``
    and ``enc clean 0% 40 kbit/s``: our encoder's mode, the loss it plans FEC for and its Opus
    bitrate (``16x2 kbit/s``: a bandwidth rung, two frames a packet). When nothing came
    from ``peer`` for a second, :func:`reconnecting_text` and the seconds follow the path.
    """
    parts = [clock(elapsed_s), path or MISSING]
    if stats is not None and stats.get("reconnecting"):
        parts.append(f"{reconnecting_text(peer)} {number(stats.get('peer_silent_s'), 's', 0)}")
    if stats is not None:
        parts += [
            f"rtt {number(stats.get('rtt_ms'), 'ms', 0)}",
            f"loss {number(stats.get('loss_percent'), '%')}",
            f"jitter {number(stats.get('jitter_ms'), 'ms')}",
            f"jb {number(stats.get('jitter_buffer_ms'), 'ms', 0)}",
            f"tx {number(stats.get('tx_kbps'), '', 0)} rx {number(stats.get('rx_kbps'), '', 0)}"
            " kbit/s",
            f"MOS {number(stats.get('mos'))}",
        ]
        if "encoder_mode" in stats:
            planned = number(stats.get("planned_loss_percent"), "%", 0)
            rate = ""
            if stats.get("encoder_kbps"):
                frames = "x2" if stats.get("frames_per_packet", 1) > 1 else ""
                rate = f" {number(stats['encoder_kbps'], '', 0)}{frames} kbit/s"
            parts.append(f"enc {stats['encoder_mode']} {planned}{rate}")
    return "  ".join(parts)


def reconnecting_text(peer: str) -> str:
    """What a call shows while nothing comes from ``peer``."""
    return f"no audio from {peer} \N{EN DASH} reconnecting…"


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """A plain-text table: a header row, a rule, the rows; columns padded to fit.

    Columns are left-aligned, those whose index is in ``right`` right-aligned (figures).
    """
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[index]) if index in right else cell.ljust(widths[index])
            for index, cell in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


STATISTICS_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("rtt", "rtt_ms", "ms", 1),
    ("loss", "loss_percent", "%", 1),
    ("jitter", "jitter_ms", "ms", 1),
    ("jitter buffer", "jitter_buffer_ms", "ms", 0),
    ("concealed", "concealed_ms", "ms", 0),
    ("FEC recovered", "fec_recovered", "frames", 0),
    ("encoder", "encoder_kbps", "kbit/s", 1),
    ("planned loss", "planned_loss_percent", "%", 0),
    ("tx", "tx_kbps", "kbit/s", 1),
    ("rx", "rx_kbps", "kbit/s", 1),
    ("MOS", "mos", "", 2),
    ("packets sent", "packets_sent", "", 0),
    ("packets received", "packets_received", "", 0),
    ("packets lost", "packets_lost", "", 0),
    ("packets late", "packets_late", "", 0),
    ("packets rejected", "packets_rejected", "", 0),
)
"""(label, summary key, unit, decimals) of each row of :func:`statistics_table`."""


def statistics_table(sides: Mapping[str, Mapping[str, Any]]) -> str:
    """The statistics of one or more call summaries side by side (one column each)."""
    names = list(sides)
    rows = [["path", *(str(sides[name].get("path") or MISSING) for name in names)]]
    rows.append(
        ["path found in", *(number(sides[name].get("path_setup_ms"), "ms") for name in names)]
    )
    rows.append(["call to audio", *(number(sides[name].get("setup_ms"), "ms") for name in names)])
    for label, key, unit, digits in STATISTICS_ROWS:
        rows.append([label, *(number(sides[name].get(key), unit, digits) for name in names)])
    rows.append(["duration", *(number(sides[name].get("duration_s"), "s") for name in names)])
    return render_table(["", *names], rows, right=range(1, len(names) + 1))


LOST_REASONS = frozenset({"peer unreachable", "media timeout"})
"""Reasons of a call that ended because nothing came from the peer ("media timeout": older)."""


NO_ANSWER = "no answer"
"""The caller's word for a call nobody answered (its reason may add: "bob was offline")."""


def outcome_word(summary: Mapping[str, Any]) -> str:
    """How a finished call went, in the one set of words of the CLI, history, JSON and UI.

    ``answered``, ``cancelled``, ``declined``, ``no answer``, ``missed``, ``busy``,
    ``blocked``, or ``failed: REASON`` (issue 21): the library's
    :func:`pqcall.client.call_outcome.outcome_word` (imported here, when a call
    ended, not on ``pqcall --help``'s path); ``ui/static/words.js`` is the page's twin.
    """
    from pqcall.client.call_outcome import outcome_word as shared_word

    return shared_word(summary)


def with_outcome(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` with ``outcome`` (:func:`outcome_word`) just after ``result``, for ``--json``."""
    shown: dict[str, Any] = {}
    for key, value in summary.items():
        shown[key] = value
        if key == "result":
            shown["outcome"] = outcome_word(summary)
    shown.setdefault("outcome", outcome_word(summary))
    return shown


def call_outcome(summary: Mapping[str, Any]) -> str:
    """One line saying how a finished call went, from :meth:`Call.summary`.

    Each line holds its :func:`outcome_word` (``bob declined the call``,
    ``no answer from bob``, ``call with bob cancelled``, ``call failed: REASON``).
    """
    peer = summary.get("peer", "?")
    reason = summary.get("reason") or ""
    outgoing = summary.get("direction") == "outgoing"
    word = outcome_word(summary)
    if word == "answered":
        how = "peer hung up" if reason == "peer hung up" else reason or "ended"
        return (
            f"call with {peer} ended after {clock(float(summary.get('duration_s') or 0))}"
            f" ({how}); {summary.get('path') or MISSING} path,"
            f" MOS {number(summary.get('mos'), '', 1)}"
        )
    if word == "declined":
        return f"{peer} declined the call" if outgoing else f"declined the call from {peer}"
    if word == "busy":
        return f"{peer} is busy" if outgoing else f"{peer} called while you were busy"
    if word == NO_ANSWER:  # the reason may say why: "no answer: bob was offline"
        return reason if reason.startswith(f"{NO_ANSWER}: ") else f"no answer from {peer}"
    if word == "missed":
        if summary.get("result") == "ended":
            return f"missed call from {peer} (hung up before you answered)"
        return f"missed call from {peer}"
    if word == "cancelled":
        return f"call with {peer} cancelled"
    if summary.get("result") == "failed" and reason in LOST_REASONS:
        return (
            f"connection to {peer} lost after {clock(float(summary.get('duration_s') or 0))}"
            " (peer unreachable)"
        )
    if summary.get("result") == "failed":
        return f"call failed: {reason or 'unknown reason'}"
    return f"call with {peer}: {word}"


# ---------------------------------------------------------------- transfers

PROGRESS_BAR_WIDTH = 24
"""Characters of the bar in :func:`progress_text`."""


def byte_size(count: float) -> str:
    """A byte count for people, in decimal units: ``512 B``, ``1.5 MB``, ``2.00 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    return f"{int(count)} B"


def progress_text(phase: str, done: int, total: int, rate: float | None) -> str:
    """The status line of a file transfer: bar, bytes, rate (bytes/s) and time left.

    ``uploading  [#########...............]  38%  76.0 MB / 200 MB  85.2 MB/s  ETA 00:02``
    """
    fraction = min(1.0, done / total) if total > 0 else 1.0
    filled = round(fraction * PROGRESS_BAR_WIDTH)
    bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
    speed = f"{byte_size(rate)}/s" if rate else MISSING
    eta = clock((total - done) / rate) if rate and done < total else MISSING
    return (
        f"{phase}  [{bar}]  {fraction * 100:3.0f}%  {byte_size(done)} / {byte_size(total)}"
        f"  {speed}  ETA {eta}"
    )
