"""The page's contact list says nothing of presence the server does not share."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pqcall.ui.view import contacts_view


def _phone(*names: str) -> Any:
    contacts = [
        SimpleNamespace(
            name=name,
            fingerprint="ab" * 8,
            verified=False,
            key_changed=None,
            last_call=None,
        )
        for name in names
    ]
    return SimpleNamespace(contacts=SimpleNamespace(list=lambda: contacts))


def test_presence_is_shown_only_for_names_the_server_answered_for() -> None:
    phone = _phone("alice", "carol")
    entries = {e["name"]: e for e in contacts_view(phone, {"alice": (False, 1_700_000_000.0)}, ())}
    assert entries["alice"]["presence_shown"] is True
    assert entries["alice"]["last_seen"] == 1_700_000_000.0
    assert entries["carol"]["presence_shown"] is False
    assert entries["carol"]["online"] is False
