"""The page's view: no presence the server does not share; history in the shared outcome words."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pqcall.client.history import History
from pqcall.ui.view import contacts_view, history_view


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


def test_history_rows_carry_the_outcome_word(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")
    history.append({"call_id": "1", "peer": "bob", "direction": "outgoing", "result": "rejected"})
    history.append(
        {
            "call_id": "2",
            "peer": "bob",
            "direction": "outgoing",
            "result": "missed",
            "reason": "no answer: bob was offline",
        }
    )
    history.append(
        {
            "call_id": "3",
            "peer": "bob",
            "direction": "incoming",
            "result": "failed",
            "reason": "peer unreachable",
        }
    )
    rows = history_view(SimpleNamespace(history=history))  # type: ignore[arg-type]
    assert [(row["call_id"], row["outcome"]) for row in rows] == [
        ("3", "failed: connection lost"),
        ("2", "no answer"),
        ("1", "declined"),
    ]
    assert rows[1]["reason"] == "no answer: bob was offline"  # the record itself is kept
