"""The refusal the UI's softphone answers a request with: an HTTP-like status and one sentence.

Every part of :mod:`pqcall.ui` raises :class:`UiError` for what the user should
read; :mod:`pqcall.ui.app` turns it into ``{"error": sentence, **extra}`` with
its status. Internal details never go into the sentence.
"""

from __future__ import annotations

from typing import Any

from pqcall.exceptions import PqcallError


class UiError(PqcallError):
    """A request the controller refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status  # 4xx or 502
        self.extra = extra  # more keys for the JSON error body (``key_changed``)

    def to_json(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": message, **extra}``."""
        return {"error": str(self), **self.extra}


__all__ = ["UiError"]
