"""What the CLI prints: status line, tables, JSON, call outcomes."""

import io
import json
import math

import pytest

from pqcall.cli.output import (
    Console,
    call_outcome,
    clock,
    number,
    outcome_word,
    render_table,
    statistics_table,
    status_text,
    to_json,
    with_outcome,
)

STATS = {
    "rtt_ms": 3.2,
    "loss_percent": 0.0,
    "jitter_ms": 1.24,
    "jitter_buffer_ms": 40.0,
    "tx_kbps": 45.3,
    "rx_kbps": 44.9,
    "mos": 4.41,
}


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_clock():
    assert clock(0) == "00:00"
    assert clock(12.9) == "00:12"
    assert clock(62) == "01:02"
    assert clock(3723) == "1:02:03"
    assert clock(-1) == "00:00"


@pytest.mark.parametrize(
    ("value", "unit", "digits", "expected"),
    [
        (3.21, "ms", 1, "3.2 ms"),
        (0.0, "%", 1, "0.0%"),
        (12, "", 0, "12"),
        (None, "ms", 1, "-"),
        (math.nan, "ms", 1, "-"),
        (True, "", 0, "-"),
    ],
)
def test_number(value, unit, digits, expected):
    assert number(value, unit, digits) == expected


def test_status_text():
    assert status_text(12.3, "direct", STATS) == (
        "00:12  direct  rtt 3 ms  loss 0.0%  jitter 1.2 ms  jb 40 ms  tx 45 rx 45 kbit/s  MOS 4.4"
    )
    assert status_text(1, None, None) == "00:01  -"


def test_status_text_shows_the_encoder_mode_planned_loss_and_bitrate():
    clean = {**STATS, "encoder_mode": "clean", "planned_loss_percent": 0, "encoder_kbps": 39.6}
    assert status_text(12.3, "direct", clean).endswith("MOS 4.4  enc clean 0% 40 kbit/s")
    rung = {**clean, "encoder_mode": "fec", "planned_loss_percent": 3, "encoder_kbps": 16.0}
    rung["frames_per_packet"] = 2
    assert status_text(12.3, "direct", rung).endswith("enc fec 3% 16x2 kbit/s")


def test_render_table_aligns_columns():
    table = render_table(["name", "n"], [["alice", "1"], ["bo", "100"]], right=[1])
    assert table.splitlines() == ["name     n", "-----  ---", "alice    1", "bo     100"]


def test_statistics_table_has_a_column_per_side():
    alice = {"path": "direct", **STATS, "packets_sent": 500, "duration_s": 10.02}
    bob = {"path": "direct", "rtt_ms": None, "mos": 4.0}
    lines = statistics_table({"alice": alice, "bob": bob}).splitlines()
    assert lines[0].split() == ["alice", "bob"]
    rows = {line.split("  ")[0].strip(): line for line in lines[2:]}
    assert rows["path"].split()[-2:] == ["direct", "direct"]
    assert rows["rtt"].split()[-3:] == ["3.2", "ms", "-"]
    assert rows["MOS"].split()[-2:] == ["4.41", "4.00"]
    assert rows["packets sent"].split()[-2:] == ["500", "-"]
    for label in ("jitter buffer", "concealed", "FEC recovered", "tx", "rx", "packets rejected"):
        assert label in rows


def test_to_json_turns_non_finite_numbers_into_null():
    text = to_json({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    assert "\n" not in text


@pytest.mark.parametrize(
    ("summary", "line"),
    [
        (
            {"peer": "bob", "direction": "outgoing", "result": "rejected", "reason": "declined"},
            "bob declined the call",
        ),
        ({"peer": "bob", "direction": "outgoing", "result": "busy"}, "bob is busy"),
        ({"peer": "bob", "direction": "outgoing", "result": "missed"}, "no answer from bob"),
        (
            {
                "peer": "bob",
                "direction": "outgoing",
                "result": "missed",
                "reason": "no answer: bob was offline",
            },
            "no answer: bob was offline",
        ),
        (
            {"peer": "bob", "direction": "outgoing", "result": "missed", "reason": "cancelled"},
            "call with bob cancelled",
        ),
        ({"peer": "bob", "direction": "outgoing", "result": "ended"}, "call with bob cancelled"),
        (
            {"peer": "ann", "direction": "incoming", "result": "ended"},
            "missed call from ann (hung up before you answered)",
        ),
        (
            {"peer": "bob", "direction": "outgoing", "result": "failed", "reason": "no path"},
            "call failed: no path",
        ),
        ({"peer": "ann", "direction": "incoming", "result": "missed"}, "missed call from ann"),
        (
            {"peer": "ann", "direction": "incoming", "result": "rejected"},
            "declined the call from ann",
        ),
        (
            {
                "peer": "bob",
                "direction": "outgoing",
                "result": "ended",
                "reason": "hung up",
                "answered_unix": 1.0,
                "duration_s": 65.2,
                "path": "relay",
                "mos": 4.12,
            },
            "call with bob ended after 01:05 (hung up); relay path, MOS 4.1",
        ),
    ],
)
def test_call_outcome(summary, line):
    assert call_outcome(summary) == line


def test_json_mode_sends_people_text_to_stderr():
    out, err = io.StringIO(), io.StringIO()
    console = Console(json_mode=True, out=out, err=err)
    console.say("ringing bob…")
    console.emit_json({"call_id": "x"})
    assert out.getvalue() == '{"call_id": "x"}\n'
    assert err.getvalue() == "ringing bob…\n"


def test_status_line_only_on_a_terminal():
    plain = io.StringIO()
    console = Console(out=plain, err=io.StringIO())
    console.status("00:01  direct")
    console.say("done")
    assert plain.getvalue() == "done\n"

    tty = Tty()
    console = Console(out=tty, err=io.StringIO())
    console.status("00:01  direct  rtt 3 ms")
    console.status("00:02  direct")
    console.say("done")
    assert tty.getvalue() == (
        "\r00:01  direct  rtt 3 ms"
        "\r00:02  direct          "
        "\r" + " " * len("00:02  direct") + "\r"
        "done\n"
    )


def test_ring_rings_the_bell_on_a_terminal_only():
    tty = Tty()
    Console(out=tty, err=io.StringIO()).ring("incoming call from bob (NEW contact)")
    assert tty.getvalue() == "\aincoming call from bob (NEW contact)\n"
    plain = io.StringIO()
    Console(out=plain, err=io.StringIO()).ring("incoming call from bob (verified)")
    assert plain.getvalue() == "incoming call from bob (verified)\n"


def test_warnings_are_loud_and_on_stderr_even_with_json():
    out, err = io.StringIO(), io.StringIO()
    Console(json_mode=True, out=out, err=err).warn("bob's identity key is not the one you pinned")
    assert out.getvalue() == ""
    assert err.getvalue() == "!!! SECURITY WARNING: bob's identity key is not the one you pinned\n"


ANSWERED = {"result": "ended", "answered_unix": 1.0, "reason": "hung up"}


@pytest.mark.parametrize(
    ("summary", "word"),
    [
        ({**ANSWERED, "direction": "outgoing"}, "answered"),
        ({"result": "ended", "direction": "outgoing", "reason": "cancelled"}, "cancelled"),
        ({"result": "ended", "direction": "incoming", "reason": "peer hung up"}, "missed"),
        ({"result": "rejected", "direction": "outgoing", "reason": "declined"}, "declined"),
        ({"result": "rejected", "direction": "incoming", "reason": "declined"}, "declined"),
        ({"result": "missed", "direction": "outgoing", "reason": "no answer"}, "no answer"),
        ({"result": "missed", "direction": "outgoing", "reason": "cancelled"}, "cancelled"),
        ({"result": "missed", "direction": "incoming", "reason": "no answer"}, "missed"),
        ({"result": "busy", "direction": "outgoing", "reason": "busy"}, "busy"),
        ({"result": "blocked", "direction": "incoming"}, "blocked"),
        ({"result": "failed", "direction": "outgoing", "reason": "no path"}, "failed: no path"),
        (
            {"result": "failed", "direction": "incoming", "reason": "peer unreachable"},
            "failed: connection lost",
        ),
        ({"result": "failed", "direction": "incoming"}, "failed: unknown reason"),
    ],
)
def test_outcome_words_are_the_shared_set(summary, word):
    # issue 21: one set of words for CLI, history, JSON and the UI (ui/static/words.js)
    assert outcome_word(summary) == word
    assert word.split(":")[0] in {
        "answered", "cancelled", "declined", "no answer", "missed", "busy", "blocked", "failed"
    }  # fmt: skip


def test_json_has_the_outcome_word_after_the_result():
    shown = with_outcome({"call_id": "c", "result": "rejected", "reason": "declined"})
    assert list(shown) == ["call_id", "result", "outcome", "reason"]
    assert shown["outcome"] == "declined"
