"""``pqcall block``, ``unblock`` and ``blocked``: the block list and the strangers setting."""

from __future__ import annotations

import json
import stat

from pqcall.client.home import Home
from pqcall.client.screening import SCREENING_NAME, Screening
from tests.cli.helpers import run


def test_block_unblock_blocked(capsys, tmp_path):
    home = Home(tmp_path / "bob")
    code, out, _ = run(capsys, "--home", str(home.path), "blocked")
    assert code == 0
    assert out.splitlines() == [
        "nobody is blocked",
        "calls from strangers (not in your contacts): ring",
    ]

    code, out, _ = run(capsys, "--home", str(home.path), "block", "Mallory")
    assert code == 0 and out.startswith("blocked mallory:")
    code, out, _ = run(capsys, "--home", str(home.path), "block", "mallory")
    assert (code, out.strip()) == (0, "mallory was already blocked")
    path = home.path / SCREENING_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Screening(path).is_blocked("mallory")

    code, out, _ = run(capsys, "--home", str(home.path), "blocked")
    assert out.splitlines()[0].startswith("mallory  (blocked ")
    code, out, _ = run(
        capsys, "--home", str(home.path), "blocked", "--silence-strangers", "on", "--json"
    )
    value = json.loads(out)
    assert list(value["blocked"]) == ["mallory"] and value["silence_strangers"] is True

    code, out, _ = run(capsys, "--home", str(home.path), "unblock", "mallory")
    assert (code, out.strip()) == (0, "unblocked mallory: their calls ring again")
    code, out, _ = run(capsys, "--home", str(home.path), "unblock", "mallory")
    assert (code, out.strip()) == (0, "mallory was not blocked")
    code, out, _ = run(capsys, "--home", str(home.path), "blocked")
    assert out.splitlines() == [
        "nobody is blocked",
        "calls from strangers (not in your contacts): silenced",
    ]


def test_bad_name_and_damaged_file(capsys, tmp_path):
    home = Home(tmp_path / "bob")
    code, _, err = run(capsys, "--home", str(home.path), "block", "no spaces")
    assert code == 1 and err.startswith("pqcall: ") and "Traceback" not in err
    home.path.mkdir(mode=0o700)
    (home.path / SCREENING_NAME).write_text("{not json")
    code, _, err = run(capsys, "--home", str(home.path), "blocked")
    assert code == 1 and "damaged" in err and err.count("\n") == 1
