"""How a command runs: its event loop, Ctrl-C, logging, and reading stdin without blocking.

Ctrl-C (or SIGTERM) in ``listen``, ``call`` and ``demo`` is a request, not a
crash: the first one sets :class:`Interrupt` and the command hangs up, prints
what it has and exits with 128 + the signal number (130 for Ctrl-C); a second
one cancels the command outright.

:mod:`asyncio` and :mod:`logging` are imported where they are used: every
command module imports this one, and ``pqcall --help`` must stay cheap
(decision 0040).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Coroutine
    from types import TracebackType

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
"""128 + SIGINT, what shells report for a command stopped by Ctrl-C."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine to its exit code; Ctrl-C that gets through is 130."""
    import asyncio

    try:
        return asyncio.run(main)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED


def setup_logging(verbosity: int) -> None:
    """Logs on stderr: errors only by default, ``-v`` info, ``-vv`` debug.

    The library never logs keys, tokens or passphrases, at any level.
    """
    import logging

    level = logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(level)
    # a line per HTTP request is noise below debug
    for chatty in ("httpx", "httpcore", "websockets"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)


class Interrupt:
    """Ctrl-C (SIGINT) and SIGTERM as an event a command can wait for.

    Use as ``async with Interrupt() as interrupt:``. The first signal sets it;
    a second one cancels the task that entered it. Where signal handlers
    cannot be installed (not the main thread), the signals keep their usual
    effect. SIGTERM is handled too, so ``kill`` or a service manager stopping
    ``listen`` (or ``demo``) hangs up and cleans up as Ctrl-C does.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    """The signals it catches."""

    def __init__(self) -> None:
        import asyncio

        self._event = asyncio.Event()  # set by the first signal
        self._task: asyncio.Task[Any] | None = None  # cancelled by the second
        self._installed: list[int] = []  # signals whose handler is ours
        self.signum: int = signal.SIGINT  # the signal that came (SIGINT until one does)

    @property
    def is_set(self) -> bool:
        """Whether a signal came."""
        return self._event.is_set()

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM."""
        return 128 + int(self.signum)

    def set(self, signum: int = signal.SIGINT) -> None:
        """Act as if ``signum`` came."""
        if not self._event.is_set():
            self.signum = signum
        self._event.set()

    async def wait(self) -> None:
        """Return once a signal came."""
        await self._event.wait()

    def clear(self) -> None:
        """Forget the signal that came (``listen`` goes on after Ctrl-C hung up a call)."""
        self._event.clear()

    async def __aenter__(self) -> Interrupt:
        import asyncio

        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            self._installed.append(signum)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        while self._installed:
            loop.remove_signal_handler(self._installed.pop())

    def _on_signal(self, signum: int) -> None:
        if self._event.is_set() and self._task is not None:
            self._task.cancel()
        self.set(signum)


async def race(interrupt: Interrupt, awaitable: Awaitable[T]) -> T | None:
    """Await ``awaitable`` unless Ctrl-C comes first (then cancel it and return None)."""
    import asyncio

    work = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(interrupt.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        return None
    finally:
        for future in (work, stop):
            future.cancel()
        await asyncio.gather(work, stop, return_exceptions=True)


class LineReader:
    """Lines from a file descriptor (stdin), read without blocking the event loop.

    The descriptor is watched only while :meth:`readline` waits, so text typed
    at other times waits in the terminal for the next question. Its blocking
    mode is never changed (stdin often shares it with stdout on a terminal).
    A regular file or ``/dev/null`` cannot be watched; it is read directly (it
    never blocks).
    """

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd if fd is not None else _stdin_fd()  # None: no stdin at all
        self._buffer = b""  # read but not yet returned
        self._eof = self._fd is None  # nothing more will come

    @property
    def fd(self) -> int | None:
        """The descriptor read (None: no stdin)."""
        return self._fd

    @property
    def is_terminal(self) -> bool:
        """Whether a person types the lines (stdin is a terminal)."""
        return self._fd is not None and os.isatty(self._fd)

    async def readline(self) -> str | None:
        """The next line without its newline, or None at end of input."""
        while b"\n" not in self._buffer and not self._eof:
            await self._fill()
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
        elif self._buffer:
            line, self._buffer = self._buffer, b""
        else:
            return None
        return line.decode("utf-8", "replace").rstrip("\r")

    async def _fill(self) -> None:
        import asyncio

        assert self._fd is not None
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        try:
            loop.add_reader(self._fd, on_readable)
        except (OSError, ValueError, NotImplementedError):
            self._read()  # a regular file: reading never blocks
            return
        try:
            await ready
        finally:
            loop.remove_reader(self._fd)
        self._read()

    def _read(self) -> None:
        assert self._fd is not None
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._buffer += chunk
        else:
            self._eof = True


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (AttributeError, ValueError, OSError):  # pytest's capture, a closed stdin
        return None
