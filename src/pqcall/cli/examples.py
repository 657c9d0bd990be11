"""The EXAMPLES epilog of each ``pqcall`` subcommand's ``--help``, and typo suggestions.

:func:`add_examples` puts one block of examples under every subcommand's help
(kept here, in one place, so the help reads the same everywhere; a test checks
that no subcommand lacks one). :func:`suggest` turns an unknown command into
one line: ``pqcall: unknown command 'cal'; did you mean `call`?``.
"""

from __future__ import annotations

import argparse
from typing import Final

EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "register": (
        "pqcall register alice                      # find the server on the LAN (mDNS)",
        "pqcall register alice --server http://192.168.1.20:5001",
    ),
    "whoami": ("pqcall whoami", "pqcall whoami --json"),
    "listen": (
        "pqcall listen                              # ring and ask accept? [y/N]",
        "pqcall listen --auto-answer --once --audio-in bob.wav --audio-out heard.wav",
    ),
    "call": (
        "pqcall call bob",
        "pqcall call bob --duration 10 --json --audio-in alice.wav --audio-out heard.wav",
    ),
    "send-file": ("pqcall send-file bob report.pdf",),
    "inbox": ("pqcall inbox", "pqcall inbox --json"),
    "receive": (
        "pqcall receive 1aeb5dd5                    # a unique prefix of the id is enough",
        "pqcall receive 1aeb5dd5 --out ~/Downloads",
    ),
    "contacts": ("pqcall contacts", "pqcall contacts --json"),
    "verify": (
        "pqcall verify bob                          # compare the safety number out of band",
        "pqcall verify bob --confirm                # then mark bob verified",
    ),
    "history": ("pqcall history", "pqcall history --json"),
    "audio-devices": ("pqcall audio-devices", "pqcall audio-devices --json"),
    "link": (
        "pqcall link bob --server http://192.168.1.20:5001   # on the new device: shows a code",
        "pqcall link --approve abcdefghijklmnop-ABCD-EFGH-IJKL-MNOP   # on bob's laptop",
    ),
    "devices": ("pqcall devices", "pqcall devices --json"),
    "unlink": ("pqcall unlink phone", "pqcall unlink 4a23cfc9"),
    "rotate-key": ("pqcall rotate-key                          # a new key for this device",),
    "recover": ("pqcall recover bob --server http://192.168.1.20:5001   # asks for the words",),
    "block": ("pqcall block mallory",),
    "unblock": ("pqcall unblock mallory",),
    "blocked": ("pqcall blocked", "pqcall blocked --silence-strangers on"),
    "demo": ("pqcall demo                                # two phones and a server, one call",),
    "ui": ("pqcall ui                                  # the softphone in the browser",),
    "bench": ("pqcall bench --help                        # the benchmarks and their options",),
    "server": (
        "pqcall server                              # port 5001, announced on the LAN",
        "pqcall server --tls-self-signed --access-log",
        "pqcall server --db postgresql+asyncpg://pqcall@db/pqcall --bus redis://db:6379/0",
    ),
    "relay": (
        "pqcall relay --port 5002 --db sqlite+aiosqlite:///$HOME/.pqcall/server/pqcall.db",
        "pqcall server --relay-url udp://:5002      # hand that relay out, not the in-server one",
    ),
}


def add_examples(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Give every subcommand parser in ``commands`` its EXAMPLES epilog."""
    for name, parser in commands.choices.items():
        lines = EXAMPLES.get(name)
        if lines:
            parser.epilog = "EXAMPLES\n" + "\n".join(f"  {line}" for line in lines)
            parser.formatter_class = argparse.RawDescriptionHelpFormatter


def suggest(word: str, commands: list[str]) -> str:
    """The one line for an unknown command ``word``, with the closest command if any."""
    import difflib

    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`?" if close else "pqcall --help lists the commands"
    return f"pqcall: unknown command {word!r}; {hint}"
