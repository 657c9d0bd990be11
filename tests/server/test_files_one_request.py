"""Create and upload a file in one request: ``PUT /files/{id}/content?offset=0&recipient=R&size=N``.

The sender draws the id; the server creates the file as ``POST /files``
would (same checks, same reasons), then appends the body. Over real HTTP on
both databases; the storage faults on SQLite and a real (tiny) tmpfs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.signaling.messages import EVENT_FILE_WAITING, FileView, UserView

from .conftest import (
    Phone,
    RunningServer,
    copy_database,
    login,
    make_settings,
    registration,
    run_server,
)
from .pushclient import EventSocket
from .test_storage_faults import UNREACHABLE_LINE, LoopProbe

OCTET_STREAM = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def server(
    start_server: Callable[..., AbstractContextManager[RunningServer]],
) -> Iterator[RunningServer]:
    """A server with small file limits (as tests/server/test_files.py's)."""
    with start_server(max_file_bytes=1_000_000, file_quota_bytes=1_500_000) as running:
        yield running


def new_id() -> str:
    return secrets.token_hex(16)


def put_new(
    phone: Phone | httpx.Client, file_id: str, data: Any, offset: int = 0, **params: Any
) -> httpx.Response:
    client = phone.client if isinstance(phone, Phone) else phone
    return client.put(
        f"/files/{file_id}/content",
        params={"offset": offset, **params},
        content=data,
        headers=OCTET_STREAM,
    )


def blob(server: RunningServer, file_id: str) -> Path:
    return server.settings.data_dir / "files" / file_id


def test_one_request_creates_stores_and_tells_the_recipient(db_url, server, account):
    alice, bob = account("alice"), account("bob")
    bob_events = EventSocket(server, bob.token)
    data = os.urandom(200_000)  # over the small body limit of the other routes
    file_id = new_id()
    stored = put_new(alice, file_id, data, recipient="Bob", size=len(data))
    assert stored.status_code == 200, stored.text
    view = FileView.model_validate(stored.json())
    assert (view.file_id, view.sender, view.recipient) == (file_id, "alice", "bob")
    assert (view.state, view.size, view.received) == ("stored", len(data), len(data))
    assert FileView.model_validate(bob_events.expect(EVENT_FILE_WAITING)["payload"]) == view
    assert blob(server, file_id).read_bytes() == data
    assert bob.client.get(f"/files/{file_id}/content").content == data
    bob_events.close()


def test_a_broken_off_creating_upload_resumes_with_either_form(server, account):
    alice, bob = account("alice"), account("bob")
    data = os.urandom(300_000)
    file_id = new_id()
    first = put_new(alice, file_id, data[:100_000], recipient="bob", size=len(data))
    assert first.status_code == 200, first.text
    assert (first.json()["state"], first.json()["received"]) == ("uploading", 100_000)
    assert bob.client.get("/files").json() == {"files": []}  # not complete
    # the same creating request again (a retry that cannot know whether it arrived)
    again = put_new(alice, file_id, data[100_000:200_000], 100_000, recipient="bob", size=len(data))
    assert again.status_code == 200 and again.json()["received"] == 200_000
    # the plain form finishes it
    rest = put_new(alice, file_id, data[200_000:], 200_000)
    assert rest.json()["state"] == "stored"
    assert blob(server, file_id).read_bytes() == data


def test_bad_input_gets_its_reason(server, account):
    alice, _bob = account("alice"), account("bob")
    file_id = new_id()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"recipient": "bob"}, 422, "recipient and size go together, or neither"),
        ({"size": 10}, 422, "recipient and size go together, or neither"),
        ({"recipient": "bad name!", "size": 10}, 422, "'bad name!' is not a username"),
        ({"recipient": "nobody", "size": 10}, 404, "no user named 'nobody'"),
    ]
    for params, code, reason in cases:
        refused = put_new(alice, file_id, b"x" * 10, **params)
        assert (refused.status_code, refused.json()) == (code, {"error": reason}), params
    zero = put_new(alice, file_id, b"", recipient="bob", size=0)
    assert zero.status_code == 422 and "size" in zero.json()["error"]
    # the id is not a file yet: a creating PUT must start at byte 0
    late = put_new(alice, file_id, b"x", 5, recipient="bob", size=10)
    assert (late.status_code, late.json()) == (409, {"error": "upload is at byte 0"})
    assert alice.client.get(f"/files/{file_id}").status_code == 404  # nothing was created
    assert not blob(server, file_id).exists()
    unsigned = put_new(server.client(), new_id(), b"x", recipient="bob", size=1)
    assert unsigned.status_code == 401


def test_size_limit_quota_and_body_length(server, account):
    alice, _bob = account("alice"), account("bob")
    too_big = put_new(alice, new_id(), b"x", recipient="bob", size=1_000_001)
    assert (too_big.status_code, too_big.json()) == (
        413,
        {"error": "file too large: 1000001 bytes, the limit is 1000000"},
    )
    whole = put_new(alice, new_id(), b"x" * 1_000_000, recipient="bob", size=1_000_000)
    assert whole.json()["state"] == "stored"
    over = put_new(alice, new_id(), b"x" * 10, recipient="bob", size=500_001)
    assert over.status_code == 413 and over.json()["error"].startswith("quota exceeded: ")
    # a body longer than the size it announces: nothing of it is kept
    file_id = new_id()
    long = put_new(alice, file_id, b"x" * 11, recipient="bob", size=10)
    assert long.status_code == 413
    assert long.json()["error"].startswith("upload goes past the end of the file")
    assert alice.client.get(f"/files/{file_id}").json()["received"] == 0


def test_an_id_in_use_is_refused_and_not_touched(db_url, server, account):
    alice, bob, carol = account("alice"), account("bob"), account("carol")
    file_id = new_id()
    assert put_new(alice, file_id, b"a" * 10, recipient="bob", size=20).status_code == 200
    for phone, params in (
        (carol, {"recipient": "bob", "size": 20}),  # someone else's id
        (alice, {"recipient": "carol", "size": 20}),  # another recipient
        (alice, {"recipient": "bob", "size": 30}),  # another size
    ):
        refused = put_new(phone, file_id, b"b" * 10, 10, **params)
        assert (refused.status_code, refused.json()) == (
            409,
            {"error": f"file id {file_id} is taken"},
        )
    assert blob(server, file_id).read_bytes() == b"a" * 10
    # the plain form keeps its roles: the recipient cannot append
    assert put_new(bob, file_id, b"b" * 10, 10).status_code == 403


def test_a_named_bundle_must_be_the_recipients_current_one(server, account):
    alice, bob = account("alice"), account("bob")
    user = UserView.model_validate(alice.client.get("/users/bob").json())
    current = hashlib.sha256(user.key_bundle).hexdigest()
    stale = new_id()
    refused = put_new(alice, stale, b"x" * 10, recipient="bob", size=10, bundle="ab" * 32)
    assert (refused.status_code, refused.json()) == (
        412,
        {"error": "bob's key bundle is not the one you encrypted to: fetch it again"},
    )
    assert alice.client.get(f"/files/{stale}").status_code == 404  # nothing was created
    assert not blob(server, stale).exists()
    stored = put_new(alice, new_id(), b"x" * 10, recipient="bob", size=10, bundle=current)
    assert stored.status_code == 200 and stored.json()["state"] == "stored"
    bad = put_new(alice, new_id(), b"x", recipient="bob", size=1, bundle="not hex")
    assert bad.status_code == 422
    assert bob.client.get("/files").json()["files"][0]["sender"] == "alice"


# ---------------------------------------------------------------- storage faults


def test_database_unreachable_is_503(tmp_path, migrated_sqlite):
    url = copy_database(migrated_sqlite, tmp_path / "db")
    probe = LoopProbe()
    with (
        run_server(make_settings(url, tmp_path / "data"), components=(probe,)) as server,
        server.client() as client,
    ):
        identity = _identity_registered(client, "alice")
        _identity_registered(client, "bob")
        token = login(client, identity, "alice").json()["token"]
        with server.client(token) as alice:
            (tmp_path / "db").rename(tmp_path / "moved")
            probe.run(probe.context.storage.engine.dispose())
            refused = put_new(alice, new_id(), b"x" * 10, recipient="bob", size=10)
            assert (refused.status_code, refused.json()) == (503, {"error": UNREACHABLE_LINE})
            assert "retry-after" in refused.headers


def _identity_registered(client: httpx.Client, name: str) -> IdentityPrivateKey:
    identity = IdentityPrivateKey.generate()
    answer = client.post("/register", json=registration(identity, name))
    assert answer.status_code == 201, answer.text
    return identity


@pytest.fixture
def tiny_data_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the blobs (the database stays outside it); root only, as CI runs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "data"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_blob_disk_is_507_and_keeps_nothing_of_the_write(
    tmp_path, migrated_sqlite, tiny_data_disk
):
    url = copy_database(migrated_sqlite, tmp_path / "db")
    settings = make_settings(url, tiny_data_disk, max_file_bytes=4_000_000)
    with run_server(settings) as server, server.client() as client:
        identity = _identity_registered(client, "alice")
        _identity_registered(client, "bob")
        token = login(client, identity, "alice").json()["token"]
        with server.client(token) as alice:
            file_id = new_id()
            size = 2_000_000  # twice the disk
            full = put_new(alice, file_id, os.urandom(size), recipient="bob", size=size)
            assert (full.status_code, full.json()) == (
                507,
                {"error": "the server is out of disk space"},
            )
            status = alice.get(f"/files/{file_id}").json()  # created, resumable from there
            assert status["state"] == "uploading"
            assert status["received"] == blob(server, file_id).stat().st_size < size
