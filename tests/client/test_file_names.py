"""File names in a transfer: what a received file is saved as, and never overwriting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pqcall.client.file_names import FALLBACK_NAME, is_file_id, place_file, sanitize_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("report.pdf", "report.pdf", id="plain"),
        pytest.param("../../etc/passwd", "_.._etc_passwd", id="traversal"),
        pytest.param("..", FALLBACK_NAME, id="dotdot"),
        pytest.param("", FALLBACK_NAME, id="empty"),
        pytest.param(".bashrc", "bashrc", id="hidden"),
        pytest.param("a\\b/c", "a_b_c", id="separators"),
        pytest.param("evil\u202etxt.exe", "evil_txt.exe", id="bidi-override"),
        pytest.param("line\nbreak\x00.txt", "line_break_.txt", id="control"),
        pytest.param("  spaced  ", "spaced", id="spaces"),
    ],
)
def test_sanitize_name(name: str, expected: str) -> None:
    assert sanitize_name(name) == expected


def test_sanitize_long_name_keeps_extension() -> None:
    cleaned = sanitize_name("é" * 300 + ".pdf")
    assert cleaned.endswith(".pdf") and len(cleaned.encode("utf-8")) <= 200


def test_place_file_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"old")
    (tmp_path / "a (1).txt").write_bytes(b"older")
    temp = tmp_path / ".part"
    temp.write_bytes(b"new")
    placed = place_file(temp, tmp_path, "a.txt")
    assert placed == tmp_path / "a (2).txt" and placed.read_bytes() == b"new"
    assert (tmp_path / "a.txt").read_bytes() == b"old" and not temp.exists()


def test_is_file_id() -> None:
    assert is_file_id("0123456789abcdef" * 2)
    assert not is_file_id("0123456789ABCDEF" * 2) and not is_file_id("../" + "0" * 29)
