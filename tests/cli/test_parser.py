"""``pqcall`` argument parsing: every command, its options, and one-line usage errors."""

import argparse

import pytest

from pqcall import __version__
from pqcall.cli import build_parser, main
from pqcall.cli.options import host_port


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"pqcall {__version__}"


def test_unknown_benchmark_is_one_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [
        "register",
        "whoami",
        "listen",
        "call",
        "contacts",
        "verify",
        "history",
        "audio-devices",
        "devices",
        "link",
        "unlink",
        "rotate-key",
        "recover",
        "demo",
    ],
)
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: pqcall {command}" in capsys.readouterr().out


def test_call_options():
    args = build_parser().parse_args(
        [
            *("--home", "/h", "call", "Bob", "--audio-in", "tone:440", "--audio-out", "x.wav"),
            *("--duration", "2.5", "--media-port", "40000", "--advertise", "203.0.113.7:40001"),
            *("--json", "--passphrase-file", "pw"),
        ]
    )
    assert args.home == "/h"
    assert args.name == ["Bob"]  # several names: a group call (cli/group.py)
    assert (args.audio_in, args.audio_out) == ("tone:440", "x.wav")
    assert args.duration == 2.5
    assert args.media_port == 40000
    assert args.advertise == ("203.0.113.7", 40001)
    assert args.json is True
    assert args.passphrase_file == "pw"
    assert args.verbose == 0


def test_listen_defaults():
    args = build_parser().parse_args(["listen"])
    assert (args.auto_answer, args.once, args.json) == (False, False, False)
    assert (args.audio_in, args.audio_out, args.media_port, args.advertise) == (
        "default",
        "default",
        0,
        None,
    )
    assert args.home is None
    assert args.passphrase_file is None


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--home", "/h", "-v", "contacts"], id="before"),
        pytest.param(["contacts", "--home", "/h", "-v"], id="after"),
    ],
)
def test_global_options_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert args.home == "/h"
    assert args.verbose == 1


def test_verbose_counts():
    assert build_parser().parse_args(["-vv", "history"]).verbose == 2


def test_verify_and_history_options():
    parser = build_parser()
    verify = parser.parse_args(["verify", "bob", "--confirm", "--accept-new-key"])
    assert (verify.name, verify.confirm, verify.accept_new_key) == ("bob", True, True)
    history = parser.parse_args(["history", "--json", "--limit", "5"])
    assert (history.json, history.limit) == (True, 5)
    demo = parser.parse_args(["demo", "--duration", "3", "--out", "d"])
    assert demo.duration == 3.0
    assert str(demo.out) == "d"
    assert parser.parse_args(["demo"]).duration == 10.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7:40000", ("203.0.113.7", 40000)),
        ("phone.example:1", ("phone.example", 1)),
        ("[2001:db8::7]:65535", ("2001:db8::7", 65535)),
        (" 10.0.0.1:5 ", ("10.0.0.1", 5)),
    ],
)
def test_host_port(text, expected):
    assert host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1", "expected HOST:PORT"),
        (":5000", "expected HOST:PORT"),
        ("10.0.0.1:", "expected HOST:PORT"),
        ("10.0.0.1:0", "the port must be 1-65535"),
        ("10.0.0.1:65536", "the port must be 1-65535"),
        ("10.0.0.1:http", "the port must be 1-65535"),
        ("2001:db8::7:5000", "put an IPv6 address in brackets"),
        ("[nope]:5000", "'nope' is not an IPv6 address"),
    ],
)
def test_host_port_errors(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        host_port(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["call", "bob", "--advertise", "nope"],
            "argument --advertise: 'nope': expected HOST:PORT",
            id="advertise",
        ),
        pytest.param(
            ["call", "bob", "--media-port", "70000"],
            "argument --media-port: '70000': the port must be 0-65535 (0: any)",
            id="media-port",
        ),
        pytest.param(
            ["call", "bob", "--duration", "0"],
            "argument --duration: '0': expected a positive number of seconds",
            id="duration-zero",
        ),
        pytest.param(
            ["call", "bob", "--duration", "nan"],
            "argument --duration: 'nan': expected a positive number of seconds",
            id="duration-nan",
        ),
        pytest.param(
            ["history", "--limit", "0"],
            "argument --limit: '0': expected a whole number of at least 1",
            id="limit",
        ),
        pytest.param(["call"], "the following arguments are required: NAME", id="no-name"),
        pytest.param(["register"], "the following arguments are required: NAME", id="register"),
        pytest.param([], "the following arguments are required: COMMAND", id="no-command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err
    assert "Traceback" not in err
