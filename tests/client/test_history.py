import json
import math
import multiprocessing
import stat

import pytest

from pqcall.client import history as history_module
from pqcall.client.history import History
from pqcall.exceptions import LocalProtocolError


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_append_and_list_newest_first(tmp_path):
    history = History(tmp_path / "home" / "history.jsonl")
    for i in range(3):
        history.append({"call_id": f"c{i}", "peer": "bob", "duration_s": 1.5 * i})
    assert [r["call_id"] for r in history.list()] == ["c2", "c1", "c0"]
    assert history.list()[0] == {"call_id": "c2", "peer": "bob", "duration_s": 3.0}
    assert history.skipped == 0


def test_file_and_directory_modes(tmp_path):
    home = tmp_path / "home"
    History(home / "history.jsonl").append({"call_id": "c"})
    assert mode(home) == 0o700
    assert mode(home / "history.jsonl") == 0o600
    assert mode(home / ".lock") == 0o600


def test_one_json_object_per_line(tmp_path):
    path = tmp_path / "history.jsonl"
    history = History(path)
    history.append({"peer": "zoë", "note": "line\nbreak"})
    history.append({"peer": "bob"})
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == [
        {"peer": "zoë", "note": "line\nbreak"},
        {"peer": "bob"},
    ]


def test_missing_file_lists_nothing_and_creates_nothing(tmp_path):
    history = History(tmp_path / "home" / "history.jsonl")
    assert history.list() == []
    assert not (tmp_path / "home").exists()


def test_limit(tmp_path):
    history = History(tmp_path / "history.jsonl")
    for i in range(5):
        history.append({"n": i})
    assert [r["n"] for r in history.list(limit=2)] == [4, 3]
    assert history.list(limit=0) == []
    assert len(history.list(limit=100)) == 5
    with pytest.raises(LocalProtocolError, match=r"^history limit must not be negative$"):
        history.list(limit=-1)


def test_truncated_last_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "history.jsonl"
    history = History(path)
    history.append({"n": 0})
    history.append({"n": 1})
    with open(path, "ab") as file:
        file.write(b'{"n": 2, "peer": "bo')  # a crash mid-write
    assert [r["n"] for r in history.list()] == [1, 0]
    assert history.skipped == 1


def test_append_after_truncated_line_stays_intact(tmp_path):
    path = tmp_path / "history.jsonl"
    history = History(path)
    history.append({"n": 0})
    with open(path, "ab") as file:
        file.write(b'{"n": 1, "pe')
    history.append({"n": 2})
    assert [r["n"] for r in history.list()] == [2, 0]
    assert history.skipped == 1


def test_damaged_lines_are_skipped(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"n": 0}\n\xff\xfe garbage\n[1, 2]\n\n"text"\n{"n": 1}\n')
    history = History(path)
    assert history.list() == [{"n": 1}, {"n": 0}]
    assert history.skipped == 3  # the blank line is not a record, not damage


def test_limit_counts_good_records_only(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"n": 0}\n{"n": 1}\nbad\n')
    history = History(path)
    assert history.list(limit=1) == [{"n": 1}]
    assert history.skipped == 1


def test_non_finite_floats_are_written_as_null(tmp_path):
    history = History(tmp_path / "history.jsonl")
    history.append({"rtt_ms": math.nan, "stats": {"mos": math.inf, "loss": [1.0, -math.inf]}})
    assert history.list() == [{"rtt_ms": None, "stats": {"mos": None, "loss": [1.0, None]}}]


def test_record_that_is_not_json_is_refused(tmp_path):
    history = History(tmp_path / "history.jsonl")
    with pytest.raises(LocalProtocolError, match=r"^history record is not JSON: "):
        history.append({"when": object()})
    assert not (tmp_path / "history.jsonl").exists()


def test_oversized_record_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "MAX_RECORD_BYTES", 100)
    history = History(tmp_path / "history.jsonl")
    with pytest.raises(LocalProtocolError, match=r"^history record is too large$"):
        history.append({"blob": "x" * 200})


def test_read_is_bounded_in_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "MAX_HISTORY_LINES", 7)
    monkeypatch.setattr(history_module, "READ_BLOCK_BYTES", 16)  # many blocks per line
    history = History(tmp_path / "history.jsonl")
    for i in range(20):
        history.append({"n": i, "pad": "x" * (i % 5)})
    assert [r["n"] for r in history.list()] == list(range(19, 12, -1))


def test_read_is_bounded_in_bytes(tmp_path, monkeypatch):
    path = tmp_path / "history.jsonl"
    history = History(path)
    for i in range(10):
        history.append({"n": i})  # each line is 8 bytes with its newline
    monkeypatch.setattr(history_module, "READ_BLOCK_BYTES", 4)
    monkeypatch.setattr(history_module, "MAX_HISTORY_READ_BYTES", 8 * 3 + 4)
    # three whole lines fit; the cut line before them is dropped, not counted
    assert [r["n"] for r in history.list()] == [9, 8, 7]
    assert history.skipped == 0


def test_whole_small_file_is_read_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "READ_BLOCK_BYTES", 3)
    history = History(tmp_path / "history.jsonl")
    for i in range(4):
        history.append({"n": i})
    assert [r["n"] for r in history.list()] == [3, 2, 1, 0]


APPENDS_PER_PROCESS = 150


def append_many(path, writer):
    history = History(path)
    for i in range(APPENDS_PER_PROCESS):
        history.append({"writer": writer, "i": i, "pad": "p" * 500})


def test_concurrent_appends_from_two_processes_lose_nothing(tmp_path):
    path = tmp_path / "home" / "history.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=append_many, args=(path, w)) for w in ("a", "b")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    history = History(path)
    records = history.list()
    assert history.skipped == 0
    assert len(records) == 2 * APPENDS_PER_PROCESS
    for writer in ("a", "b"):
        mine = [r["i"] for r in records if r["writer"] == writer]
        assert mine == list(range(APPENDS_PER_PROCESS - 1, -1, -1))
