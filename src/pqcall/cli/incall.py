"""What a person types during a call in the terminal: mute, switch devices, hang up.

On a terminal, with ``pqcall`` in the foreground, single keys act at once (no
Enter), nothing typed is echoed (so it never lands in the status line)::

    m            mute, or unmute when muted (the peer is told)
    i            ask for a new microphone (the --audio-in syntax), then Enter
    o            ask for a new speaker (the --audio-out syntax), then Enter
    h            hang up (Ctrl-C too)
    ?            list the keys

:class:`Keyboard` puts the terminal in cbreak mode without echo while the call
runs and restores it on every exit (normal, exception, SIGTERM through
:class:`~pqcall.cli.runtime.Interrupt`). A process in the background
(``listen &``) never touches the terminal: it waits until it is brought to the
foreground. When stdin is not a terminal (a pipe, a script), one command a
line is read instead: ``m``, ``in SPEC``, ``out SPEC``, ``h``. Anything else
prints the list. A device that cannot be opened prints one line and changes
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import termios
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from pqcall.exceptions import DeviceError

if TYPE_CHECKING:
    from pqcall.cli.output import Console
    from pqcall.cli.runtime import LineReader
    from pqcall.client.call import Call

HELP: Final = (
    "during the call type m (mute/unmute), in DEVICE, out DEVICE or h (hang up), then Enter"
)
KEYS_HELP: Final = (
    "keys: m mute/unmute, i microphone, o speaker, h hang up, ? this list (Ctrl-C hangs up too)"
)
MUTE: Final = frozenset({"m", "mute", "unmute"})
HANG_UP: Final = frozenset({"h", "hangup", "hang-up", "q", "quit"})
DEVICE_KEYS: Final = {"i": "in", "o": "out"}
"""A key that asks for a device, and the line command it becomes."""
FOREGROUND_POLL_S: Final = 0.5
"""How often a process in the background checks whether it was brought to the foreground."""
_LFLAG: Final = 3
"""Index of the local modes in a ``termios.tcgetattr`` list."""


def is_foreground_terminal(fd: int | None) -> bool:
    """Whether ``fd`` is a terminal and this process is its foreground job (it may read it)."""
    if fd is None:
        return False
    try:
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


async def wait_foreground(fd: int) -> None:
    """Return once this process is the terminal's foreground job (``fg`` after ``listen &``)."""
    while not is_foreground_terminal(fd):
        await asyncio.sleep(FOREGROUND_POLL_S)


class Keyboard:
    """Single keys from the terminal on ``fd``, without echo, during a call.

    Use as ``with Keyboard(fd, lines) as keys:``; the terminal is switched to
    cbreak mode (no line editing, no echo, Ctrl-C still a signal) at the first
    :meth:`read_key` made in the foreground, and its settings are restored on
    leaving the block, however it is left.

    Args:
        fd: a terminal (stdin).
        lines: reads the device name after ``i`` or ``o`` (in the usual mode).
    """

    def __init__(self, fd: int, lines: LineReader) -> None:
        self._fd = fd  # the terminal
        self.lines = lines  # for the line typed after i or o
        self._saved: list[Any] | None = None  # the settings to restore; None: unchanged

    def __enter__(self) -> Keyboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Restore the terminal's settings (if they were changed); idempotent."""
        self._restore()

    async def read_key(self) -> str | None:
        """The next key (one character), or None at end of input."""
        await wait_foreground(self._fd)
        self._raw()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._fd, on_readable)
        try:
            await ready
        finally:
            loop.remove_reader(self._fd)
        try:
            chunk = os.read(self._fd, 64)
        except BlockingIOError:
            return ""
        except OSError:
            return None
        return chunk.decode("utf-8", "replace")[:1] if chunk else None

    @contextlib.contextmanager
    def line_mode(self) -> Iterator[None]:
        """The terminal's usual settings (echo, Enter) while the block reads a line."""
        self._restore()
        try:
            yield
        finally:
            if is_foreground_terminal(self._fd):
                self._raw()

    def _raw(self) -> None:
        if self._saved is not None:
            return
        attributes = termios.tcgetattr(self._fd)
        self._saved = list(attributes)
        changed = list(attributes)
        changed[_LFLAG] = int(attributes[_LFLAG]) & ~(termios.ECHO | termios.ICANON)
        changed[6] = list(attributes[6])  # control characters: one byte, no timeout
        changed[6][termios.VMIN] = 1
        changed[6][termios.VTIME] = 0
        termios.tcsetattr(self._fd, termios.TCSANOW, changed)

    def _restore(self) -> None:
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        # a job moved to the background meanwhile would be stopped by SIGTTOU
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
        except termios.error:
            pass  # the terminal went away
        finally:
            signal.signal(signal.SIGTTOU, previous)


async def next_command(keyboard: Keyboard, console: Console) -> str | None:
    """The next command typed as keys, as the line it stands for; None at end of input.

    ``i`` and ``o`` ask for the device on a line of its own (echoed, Enter to finish).
    """
    while True:
        key = await keyboard.read_key()
        if key is None:
            return None
        key = key.lower()
        if key in DEVICE_KEYS:
            what = "microphone" if key == "i" else "speaker"
            with keyboard.line_mode():
                console.prompt(f"new {what} (Enter keeps it): ")
                spec = await keyboard.lines.readline()
            if not spec or not spec.strip():
                console.say(f"{what} unchanged")
                continue
            return f"{DEVICE_KEYS[key]} {spec.strip()}"
        if key.strip():
            return key


async def run_command(call: Call, console: Console, line: str, *, keys: bool = False) -> bool:
    """Carry out one typed line (or key); returns whether it hung up."""
    word, _, rest = line.strip().partition(" ")
    word, spec = word.lower(), rest.strip()
    if not word:
        return False
    if word in MUTE and not spec:
        call.set_muted(not call.is_muted)
        console.say("muted: the peer hears silence" if call.is_muted else "unmuted")
        return False
    if word in HANG_UP and not spec:
        console.say("hanging up…")
        await call.hangup()
        return True
    if word in ("in", "out") and spec:
        try:
            if word == "in":
                await call.set_audio(audio_in=spec)
            else:
                await call.set_audio(audio_out=spec)
        except DeviceError as exc:
            console.say(f"{exc}; still using the same device")
            return False
        console.say(f"{'microphone' if word == 'in' else 'speaker'} is now {spec}")
        return False
    console.say(KEYS_HELP if keys else HELP)
    return False
