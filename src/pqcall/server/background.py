"""One background task a server component runs while it is started.

Contract: :meth:`BackgroundTask.start` runs a coroutine as a named asyncio
task; :meth:`BackgroundTask.stop` cancels it and waits for it to finish (a
stopped or never-started task is a no-op). The sweepers, the housekeeper and
the storage watch each hold one instead of repeating this.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundTask"]


class BackgroundTask:
    """A named task that a component starts and stops."""

    def __init__(self, name: str) -> None:
        self._name = name  # the asyncio task's name
        self._task: asyncio.Task[None] | None = None  # the running loop, while started

    def start(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run ``loop`` as the task."""
        self._task = asyncio.create_task(loop, name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait until it is gone."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
