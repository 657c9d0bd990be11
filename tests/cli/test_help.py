"""``pqcall --help`` and typos: every subcommand explains itself; a typo gets the closest one."""

from __future__ import annotations

import argparse

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
