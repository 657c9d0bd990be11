"""``pqcall --help`` and typos: every subcommand explains itself; a typo gets the closest one."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pqcall import __version__
from pqcall.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_subcommand_has_a_description_and_examples() -> None:
    parser = build_parser()
    top = parser.format_help()
    for name, sub in subcommands().items():
        assert f"    {name}" in top  # listed with its one-line help
        assert sub.epilog is not None and sub.epilog.startswith("EXAMPLES\n"), name
        assert f"pqcall {name}" in sub.format_help(), name


@pytest.mark.parametrize(
    ("typed", "line"),
    [
        pytest.param("cal", "pqcall: unknown command 'cal'; did you mean `call`?", id="call"),
        pytest.param("recieve", "pqcall: unknown command 'recieve'; did you mean `receive`?"),
        pytest.param("zzz", "pqcall: unknown command 'zzz'; pqcall --help lists the commands"),
    ],
)
def test_typo_suggests_the_closest_command(
    typed: str, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([typed, "bob"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"pqcall {__version__}\n"


HEAVY = (
    # the softphone's, the server's and the benchmarks' libraries
    "numpy", "soxr", "opuslib", "sounddevice", "cryptography", "pydantic", "httpx",
    "websockets", "fastapi", "uvicorn", "sqlalchemy",
    # standard-library modules that each cost milliseconds to import
    "asyncio", "ssl", "socket", "subprocess", "logging", "dataclasses", "inspect",
    "json", "datetime", "statistics", "secrets", "tempfile", "webbrowser", "difflib",
)  # fmt: skip
"""Modules ``pqcall --help`` and ``--version`` must not import (decision 0040)."""
LIBRARY = ("client", "crypto", "media", "transport", "signaling", "ui", "netem")
"""The softphone's packages: a command imports them when it runs."""
PROBE = """
import sys
from pqcall.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["call", "--help"], ["server", "--help"], ["bench", "--help"]],
    ids=" ".join,
)
def test_help_and_version_load_no_heavy_module(argv: list[str]) -> None:
    # the deterministic side of "under 0.2 s": what is not imported costs nothing
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith(("usage: pqcall", "pqcall "))  # help or version printed
    loaded = set(done.stderr.split())
    assert "pqcall.cli" in loaded  # the probe saw the imports
    assert sorted(name for name in HEAVY if name in loaded) == []
    library = [m for m in loaded if m.split(".")[:2] in (["pqcall", p] for p in LIBRARY)]
    assert sorted(library) == []
