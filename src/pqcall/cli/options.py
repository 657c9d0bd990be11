"""Options several commands share, and turning them into library objects.

The library is imported inside the functions: ``pqcall server`` and
``pqcall bench`` must not pay for (or depend on) the softphone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pqcall.exceptions import DeviceError, NoAccount

VOICE_DISGUISE_PRESETS = ("low", "high")
"""``--voice-disguise`` choices: :data:`pqcall.media.disguise.PRESETS` (not imported: numpy)."""

if TYPE_CHECKING:
    from pqcall.client.home import Home
    from pqcall.client.media_options import MediaOptions

MAX_PORT = 65535
AUDIO_IN_HELP = "audio source: default, a device name or index, tone:FREQ, silence, or a WAV file"
AUDIO_OUT_HELP = "audio sink: default, a device name or index, null, or a WAV file to write"
PASSPHRASE_TRIES = 3
"""Passphrases typed at the prompt before giving up (as ssh); one from a file or the environment."""


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--home`` and ``-v``, on ``pqcall`` itself (``top``) and again after a command.

    After the command they default to "not given", so ``pqcall --home A call bob``
    and ``pqcall call bob --home A`` mean the same.
    """
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--home",
        metavar="DIR",
        default=default,
        help="the account's directory (default: $PQCALL_HOME, else ~/.pqcall)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="log to stderr (-vv: debug); keys and passphrases are never logged",
    )


def add_passphrase_option(parser: argparse.ArgumentParser) -> None:
    """``--passphrase-file`` for the commands that unlock the account."""
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="read the passphrase from the first line of FILE (mode 0600); also"
        " $PQCALL_PASSPHRASE or $PQCALL_PASSPHRASE_FILE; else it is asked for",
    )


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: machine-readable output on stdout."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def add_media_options(parser: argparse.ArgumentParser) -> None:
    """``--audio-in``, ``--audio-out``, ``--media-port``, ``--advertise``, ``--no-echo-cancel``...

    Echo cancellation, noise suppression and gain control run only for a sound-device source.
    """
    parser.add_argument("--audio-in", metavar="SRC", default="default", help=AUDIO_IN_HELP)
    parser.add_argument("--audio-out", metavar="SINK", default="default", help=AUDIO_OUT_HELP)
    parser.add_argument(
        "--media-port",
        metavar="PORT",
        type=media_port,
        default=0,
        help="local UDP port for media (default: any free port)",
    )
    parser.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        type=host_port,
        help="the only address offered to the peer for the direct path"
        " (a forwarded port, or a relay in front of this phone)",
    )
    parser.add_argument(
        "--stun",
        metavar="HOST:PORT",
        type=host_port,
        help="STUN server that tells this phone its address behind a NAT"
        " (default: the pqcall server's host and port, over UDP)",
    )
    for flag, what in (
        ("--no-echo-cancel", "echo cancellation"),
        ("--no-noise-suppression", "noise suppression"),
        ("--no-auto-gain", "automatic gain control"),
    ):
        parser.add_argument(
            flag, action="store_true", help=f"no {what} (on by default for a sound device)"
        )
    parser.add_argument(
        "--voice-disguise",
        metavar="PRESET",
        choices=VOICE_DISGUISE_PRESETS,
        help="disguise our voice before it is encoded: low or high (pitch and formants,"
        " by a ratio drawn anew for each call)",
    )


def host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) for ``--advertise``.

    Raises:
        argparse.ArgumentTypeError: not of that form, or the port is not 1-65535.
    """
    import ipaddress

    example = "expected HOST:PORT, e.g. 203.0.113.7:40000 or [2001:db8::7]:40000"
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text:
        raise argparse.ArgumentTypeError(f"{text!r}: {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: put an IPv6 address in brackets; {example}")
    if not port_text.isdigit() or not 0 < int(port_text) <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 1-{MAX_PORT}")
    return host, int(port_text)


def media_port(text: str) -> int:
    """Parse ``--media-port``: 0 (any) to 65535.

    Raises:
        argparse.ArgumentTypeError: not a number in that range.
    """
    if not text.isdigit() or int(text) > MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 0-{MAX_PORT} (0: any)")
    return int(text)


def seconds(text: str) -> float:
    """Parse a positive duration in seconds.

    Raises:
        argparse.ArgumentTypeError: not a positive number.
    """
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    """Parse a count of at least 1.

    Raises:
        argparse.ArgumentTypeError: not a whole number of at least 1.
    """
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return int(text)


def open_home(args: argparse.Namespace) -> Home:
    """The home directory ``--home`` (or ``$PQCALL_HOME``, or ``~/.pqcall``) names.

    Raises:
        NoAccount: that path is a file, not a folder.
    """
    from pqcall.client.home import Home, resolve_home

    path = resolve_home(args.home)
    if path.exists() and not path.is_dir():
        given = args.home if args.home else str(path)
        raise NoAccount(f"--home {given} is a file, not a folder")
    return Home(path)


def passphrase(args: argparse.Namespace, *, confirm: bool = False, home: Home | None = None) -> str:
    """The passphrase from ``--passphrase-file``, the environment, or a prompt.

    With ``home``, a passphrase typed at the prompt is checked against its
    keystore: a wrong one says "wrong passphrase, try again", up to
    :data:`PASSPHRASE_TRIES` tries. One from a file or the environment gets
    one try (the caller's unlock fails with one line). Ctrl-C at the prompt
    ends the prompt's line before ``KeyboardInterrupt`` goes on (exit 130).

    Raises:
        KeystoreError: a source is set but unusable, nowhere to get one from,
            or (``WrongPassphrase``) every try was wrong.
    """
    from pqcall.client.home import read_passphrase
    from pqcall.crypto.keystore import passphrase_from_env

    given = passphrase_from_env(passphrase_file=args.passphrase_file)
    if given is not None:
        return given
    if home is None or confirm or not home.has_account():
        return _at_prompt(lambda: read_passphrase(passphrase_file=None, confirm=confirm))
    return _tries(home, lambda: read_passphrase(passphrase_file=None, confirm=False))


def _tries(home: Home, ask: Callable[[], str]) -> str:
    from pqcall.exceptions import WrongPassphrase

    for attempt in range(1, PASSPHRASE_TRIES + 1):
        secret = _at_prompt(ask)
        try:
            home.unlock(secret)
        except WrongPassphrase as exc:
            if attempt == PASSPHRASE_TRIES:
                raise WrongPassphrase(f"{exc} ({PASSPHRASE_TRIES} tries)") from None
            print("wrong passphrase, try again", file=sys.stderr, flush=True)
            continue
        return secret
    raise AssertionError("unreachable")  # the loop returns or raises


def _at_prompt(ask: Callable[[], str]) -> str:
    try:
        return ask()
    except KeyboardInterrupt:
        print("", file=sys.stderr)  # getpass leaves the cursor after "Passphrase: "
        print("pqcall: interrupted", file=sys.stderr, flush=True)
        raise


def media_options(args: argparse.Namespace) -> MediaOptions:
    """The media options of ``listen`` and ``call``."""
    from pqcall.client.media_options import MediaOptions

    return MediaOptions(
        audio_in=args.audio_in,
        audio_out=args.audio_out,
        media_port=args.media_port,
        advertise=args.advertise,
        stun=args.stun,
        echo_cancel=not args.no_echo_cancel,
        noise_suppression=not args.no_noise_suppression,
        auto_gain=not args.no_auto_gain,
        voice_disguise=args.voice_disguise,
    )


def check_audio(options: MediaOptions) -> None:
    """Fail now, not at the first call, if the source or sink cannot be used.

    The source is opened and closed; a WAV sink only has its folder checked
    (opening it would create the file).

    Raises:
        DeviceError: the source or sink cannot be opened (one line for the user).
    """
    from pqcall.media.audio_spec import open_sink, open_source

    open_source(options.audio_in).close()
    sink = options.audio_out.strip()
    if sink.lower().endswith(".wav") or "/" in sink:
        folder = Path(sink).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise DeviceError(f"cannot write {sink}: {folder} is not a writable folder")
    else:
        open_sink(sink).close()
