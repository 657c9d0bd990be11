"""Encrypted file transfer, the server's side: create, upload (resumable), inbox, download, delete.

Over real HTTP on both databases. The server stores opaque bytes, so the
"ciphertext" here is any bytes.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pqcall.server.file_service import MAX_TRANSFERS_PER_ACCOUNT
from pqcall.server.file_sweeper import (
    ABANDONED_UPLOAD_S,
    FILE_SWEEP_INTERVAL_S,
    ORPHAN_GRACE_S,
    ORPHAN_SCAN_INTERVAL_S,
)
from pqcall.signaling.messages import EVENT_FILE_WAITING, FileView, Inbox
from tests.harness import wait_until

from .conftest import Phone, RunningServer
from .pushclient import EVENT_TIMEOUT_S, QUIET_S, EventSocket

SWEEP_S = 0.05
TTL_S = 7 * 24 * 3600.0
DAY_S = 24 * 3600.0
OCTET_STREAM = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def server(
    start_server: Callable[..., AbstractContextManager[RunningServer]],
) -> Iterator[RunningServer]:
    """A server with fast sweeps, tokens that outlive the clock jumps, small file limits."""
    with start_server(
        sweep_interval_s=SWEEP_S,
        token_ttl_s=100 * DAY_S,
        max_file_bytes=1_000_000,
        file_quota_bytes=1_500_000,
    ) as running:
        yield running


def create(phone: Phone, recipient: str, size: int) -> httpx.Response:
    return phone.client.post("/files", json={"recipient": recipient, "size": size})


def put(phone: Phone, file_id: str, offset: int, data: Any) -> httpx.Response:
    return phone.client.put(
        f"/files/{file_id}/content", params={"offset": offset}, content=data, headers=OCTET_STREAM
    )


def send(phone: Phone, recipient: str, data: bytes) -> FileView:
    """Create and upload a whole file in one PUT; its view."""
    created = create(phone, recipient, len(data))
    assert created.status_code == 201, created.text
    file_id = created.json()["file_id"]
    stored = put(phone, file_id, 0, data)
    assert stored.status_code == 200, stored.text
    return FileView.model_validate(stored.json())


def blob(server: RunningServer, file_id: str) -> Path:
    return server.settings.data_dir / "files" / file_id


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# ---------------------------------------------------------------- the whole flow


def test_send_receive_delete(server, account):
    alice, bob = account("alice"), account("bob")
    bob_events = EventSocket(server, bob.token)
    data = os.urandom(200_000)  # over the 64 KiB body limit of the other routes

    created = create(alice, "Bob", len(data))
    assert created.status_code == 201, created.text
    view = FileView.model_validate(created.json())
    assert re.fullmatch(r"[0-9a-f]{32}", view.file_id)
    assert (view.sender, view.recipient, view.size) == ("alice", "bob", len(data))
    assert (view.state, view.received) == ("uploading", 0)
    assert view.created == server.clock.now
    assert view.expires == server.clock.now + TTL_S
    assert bob.client.get("/files").json() == {"files": []}  # not complete yet

    stored = put(alice, view.file_id, 0, data)
    assert stored.status_code == 200, stored.text
    done = FileView.model_validate(stored.json())
    assert (done.state, done.received) == ("stored", len(data))

    # the recipient is told, with the same view
    event = bob_events.expect(EVENT_FILE_WAITING)
    assert FileView.model_validate(event["payload"]) == done
    inbox = Inbox.model_validate(bob.client.get("/files").json())
    assert inbox.files == [done]
    assert alice.client.get("/files").json() == {"files": []}  # the sender's inbox
    assert bob.client.get(f"/files/{view.file_id}").json() == done.model_dump(mode="json")

    download = bob.client.get(f"/files/{view.file_id}/content")
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-length"] == str(len(data))
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["accept-ranges"] == "bytes"
    # what the recipient needs before decrypting, without asking GET /files/{id}
    assert download.headers["x-pqcall-sender"] == "alice"
    assert download.headers["x-pqcall-size"] == str(len(data))

    assert bob.client.delete(f"/files/{view.file_id}").status_code == 204
    assert not blob(server, view.file_id).exists()
    gone = bob.client.get(f"/files/{view.file_id}")
    assert (gone.status_code, gone.json()) == (404, {"error": "no such file"})
    assert bob.client.get("/files").json() == {"files": []}
    bob_events.close()


def test_blob_is_named_by_id_private_and_exactly_the_bytes(server, account):
    alice, _bob = account("alice"), account("bob")
    data = os.urandom(5000)
    view = send(alice, "bob", data)
    path = blob(server, view.file_id)
    assert sorted(os.listdir(path.parent)) == [view.file_id]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes() == data


def test_notes_to_self_are_allowed(server, account):
    alice = account("alice")
    view = send(alice, "alice", b"a note")
    assert alice.client.get(f"/files/{view.file_id}/content").content == b"a note"


def test_recipient_offline_gets_the_event_on_connecting(server, account):
    alice, bob = account("alice"), account("bob")
    view = send(alice, "bob", b"x" * 100)
    bob_events = EventSocket(server, bob.token, resume=0)
    waiting = [event for event in bob_events.backlog if event["type"] == EVENT_FILE_WAITING]
    assert [FileView.model_validate(event["payload"]) for event in waiting] == [view]
    bob_events.close()


def test_inbox_is_oldest_first(server, account):
    alice, bob = account("alice"), account("bob")
    first = send(alice, "bob", b"1" * 10)
    server.clock.advance(1)
    second = send(alice, "bob", b"2" * 10)
    inbox = Inbox.model_validate(bob.client.get("/files").json())
    assert [f.file_id for f in inbox.files] == [first.file_id, second.file_id]


# ---------------------------------------------------------------- resuming


def test_interrupted_upload_resumes_at_the_bytes_held(server, account):
    alice, bob = account("alice"), account("bob")
    data = os.urandom(100_000)
    file_id = create(alice, "bob", len(data)).json()["file_id"]

    half = put(alice, file_id, 0, data[:40_000])
    assert half.status_code == 200, half.text
    assert (half.json()["state"], half.json()["received"]) == ("uploading", 40_000)
    assert bob.client.get(f"/files/{file_id}").json()["received"] == 40_000

    for wrong in (0, 39_999, 40_001):
        refused = put(alice, file_id, wrong, data[wrong:])
        assert (refused.status_code, refused.json()) == (
            409,
            {"error": "upload is at byte 40000"},
        )
    refused = bob.client.get(f"/files/{file_id}/content")
    assert (refused.status_code, refused.json()) == (
        409,
        {"error": "file is still uploading: 40000 of 100000 bytes have arrived"},
    )

    # the rest in two PUTs, the second streamed without a Content-Length
    assert put(alice, file_id, 40_000, data[40_000:70_000]).json()["received"] == 70_000
    rest = put(alice, file_id, 70_000, chunks(data[70_000:], 7000))
    assert (rest.status_code, rest.json()["state"]) == (200, "stored")
    assert bob.client.get(f"/files/{file_id}/content").content == data
    again = put(alice, file_id, len(data), b"")
    assert (again.status_code, again.json()) == (409, {"error": "file is already complete"})


def test_a_second_upload_of_one_file_at_once_is_refused(server, account):
    alice, _bob = account("alice"), account("bob")
    file_id = create(alice, "bob", 100).json()["file_id"]
    with open(blob(server, file_id), "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running upload holds
        refused = put(alice, file_id, 0, b"x" * 100)
    assert (refused.status_code, refused.json()) == (
        409,
        {"error": "another upload of this file is in progress"},
    )
    assert put(alice, file_id, 0, b"x" * 100).json()["state"] == "stored"


def test_download_resumes_with_a_range(server, account):
    alice, bob = account("alice"), account("bob")
    data = os.urandom(50_000)
    view = send(alice, "bob", data)
    url = f"/files/{view.file_id}/content"

    partial = bob.client.get(url, headers={"Range": "bytes=30000-"})
    assert partial.status_code == 206
    assert partial.content == data[30_000:]
    assert partial.headers["content-range"] == "bytes 30000-49999/50000"
    assert partial.headers["content-length"] == "20000"

    past = bob.client.get(url, headers={"Range": "bytes=50000-"})
    assert past.status_code == 416
    assert past.json() == {"error": "range starts at byte 50000, but the file has 50000 bytes"}
    assert past.headers["content-range"] == "bytes */50000"


# ---------------------------------------------------------------- who may do what


def test_only_the_parties_and_each_in_its_role(server, account):
    alice, bob, carol = account("alice"), account("bob"), account("carol")
    file_id = create(alice, "bob", 10).json()["file_id"]
    url = f"/files/{file_id}"

    for answer in (
        carol.client.get(url),
        carol.client.get(url + "/content"),
        put(carol, file_id, 0, b"x" * 10),
        carol.client.delete(url),
    ):
        assert (answer.status_code, answer.json()) == (
            403,
            {"error": "not the sender or recipient of this file"},
        )
    refused = put(bob, file_id, 0, b"x" * 10)
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": "only the sender can upload this file"},
    )
    assert put(alice, file_id, 0, b"x" * 10).status_code == 200
    refused = alice.client.get(url + "/content")
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": "only the recipient can download this file"},
    )
    unknown = bob.client.get("/files/" + "0" * 32)
    assert (unknown.status_code, unknown.json()) == (404, {"error": "no such file"})
    assert bob.client.get("/files/not-an-id").status_code == 422
    assert httpx.get(server.base_url + url).status_code == 401


def test_sender_cancels(server, account):
    alice, bob = account("alice"), account("bob")
    file_id = create(alice, "bob", 100).json()["file_id"]
    put(alice, file_id, 0, b"x" * 50)
    assert alice.client.delete(f"/files/{file_id}").status_code == 204
    assert not blob(server, file_id).exists()
    assert put(alice, file_id, 50, b"x" * 50).status_code == 404
    assert bob.client.get(f"/files/{file_id}").status_code == 404


def test_unknown_recipient(server, account):
    alice = account("alice")
    refused = create(alice, "nobody", 10)
    assert (refused.status_code, refused.json()) == (404, {"error": "no user named 'nobody'"})


# ---------------------------------------------------------------- limits


def test_file_over_the_size_limit(server, account):
    alice, _bob = account("alice"), account("bob")
    refused = create(alice, "bob", 1_000_001)
    assert (refused.status_code, refused.json()) == (
        413,
        {"error": "file too large: 1000001 bytes, the limit is 1000000"},
    )
    assert create(alice, "bob", 1_000_000).status_code == 201


def test_quota_counts_files_not_yet_deleted(server, account):
    alice, bob = account("alice"), account("bob")
    first = send(alice, "bob", b"x" * 1_000_000)  # stored, not yet received
    refused = create(alice, "bob", 500_001)
    assert (refused.status_code, refused.json()) == (
        413,
        {
            "error": "quota exceeded: your files not yet received hold 1000000 bytes,"
            " 500001 more would pass your quota of 1500000"
        },
    )
    uploading = create(alice, "bob", 500_000)
    assert uploading.status_code == 201  # exactly the quota
    assert create(alice, "bob", 1).status_code == 413
    assert create(bob, "alice", 1_000_000).status_code == 201  # the quota is per sender
    assert bob.client.delete(f"/files/{first.file_id}").status_code == 204
    assert create(alice, "bob", 1_000_000).status_code == 201


def test_quota_holds_under_concurrent_creates(server, account):
    alice, _bob = account("alice"), account("bob")
    answers: list[int] = []

    def one() -> None:
        with server.client(alice.token) as client:
            answers.append(
                client.post("/files", json={"recipient": "bob", "size": 400_000}).status_code
            )

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [201, 201, 201, 413, 413, 413, 413, 413]


def test_upload_past_the_size_is_refused_and_nothing_past_it_kept(server, account):
    alice, _bob = account("alice"), account("bob")
    file_id = create(alice, "bob", 100).json()["file_id"]
    too_long = put(alice, file_id, 0, b"x" * 101)  # Content-Length says so: refused at once
    assert (too_long.status_code, too_long.json()) == (
        413,
        {
            "error": "upload goes past the end of the file:"
            " it has 100 bytes and 100 are still to come"
        },
    )
    assert blob(server, file_id).stat().st_size == 0
    assert put(alice, file_id, 0, b"x" * 60).json()["received"] == 60
    streamed = put(alice, file_id, 60, chunks(b"y" * 50, 10))  # no Content-Length: cut off
    assert streamed.status_code == 413
    assert blob(server, file_id).read_bytes() == b"x" * 60
    assert put(alice, file_id, 60, b"y" * 40).json()["state"] == "stored"


def test_other_routes_keep_the_small_body_limit(server, account):
    alice = account("alice")
    refused = alice.client.post(
        "/files", content=b"{" + b" " * 70_000 + b"}", headers={"Content-Type": "application/json"}
    )
    assert refused.status_code == 413
    assert refused.json() == {"error": "request body is larger than 65536 bytes"}


def test_transfers_at_once_are_limited(server, account):
    alice, _bob = account("alice"), account("bob")
    assert MAX_TRANSFERS_PER_ACCOUNT == 4
    ids = [create(alice, "bob", 1000).json()["file_id"] for _ in range(5)]
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"x" * 10
        release.wait(EVENT_TIMEOUT_S)

    clients = [server.client(alice.token) for _ in range(4)]
    threads = [
        threading.Thread(
            target=client.put,
            args=(f"/files/{file_id}/content",),
            kwargs={"params": {"offset": 0}, "content": slow_body()},
        )
        for client, file_id in zip(clients, ids, strict=False)
    ]
    for thread in threads:
        thread.start()
    # a PUT at a wrong offset says 409 while a slot is free, 429 once all four are taken
    wait_until(
        lambda: put(alice, ids[4], 1, b"x").status_code == 429,
        "a 429",
        interval_s=SWEEP_S,  # each look is a PUT
    )
    refused = put(alice, ids[4], 0, b"x" * 1000)
    release.set()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert refused.status_code == 429
    assert refused.json() == {"error": "too many transfers at once: at most 4 per account"}
    assert put(alice, ids[4], 0, b"x" * 1000).status_code == 200


# ---------------------------------------------------------------- sweeping


def test_unclaimed_files_expire(server, account):
    alice, bob = account("alice"), account("bob")
    server.clock.advance(3600)  # expiry counts from completion, not creation
    view = send(alice, "bob", b"x" * 1_000_000)
    assert view.expires == server.clock.now + TTL_S
    server.clock.advance(TTL_S - 1)
    time.sleep(QUIET_S)
    assert blob(server, view.file_id).exists()
    server.clock.advance(FILE_SWEEP_INTERVAL_S + 1)  # the sweeper passes at most this often
    wait_until(lambda: not blob(server, view.file_id).exists(), "the sweep")
    assert bob.client.get("/files").json() == {"files": []}
    assert bob.client.get(f"/files/{view.file_id}").status_code == 404
    # the row went too: its bytes no longer count against the quota
    assert create(alice, "bob", 1_000_000).status_code == 201


def test_abandoned_uploads_are_swept(server, account):
    alice, _bob = account("alice"), account("bob")
    file_id = create(alice, "bob", 1_000_000).json()["file_id"]
    put(alice, file_id, 0, b"x" * 1000)
    server.clock.advance(ABANDONED_UPLOAD_S - 3600)
    put(alice, file_id, 1000, b"x" * 1000)  # a byte now: the idle time starts again
    server.clock.advance(7200)
    time.sleep(QUIET_S)
    assert alice.client.get(f"/files/{file_id}").json()["received"] == 2000
    server.clock.advance(ABANDONED_UPLOAD_S)
    wait_until(lambda: not blob(server, file_id).exists(), "the sweep")
    assert alice.client.get(f"/files/{file_id}").status_code == 404
    assert create(alice, "bob", 1_000_000).status_code == 201


def test_blobs_without_a_row_are_swept(server, account):
    alice, bob = account("alice"), account("bob")
    live = send(alice, "bob", b"x" * 300)
    files = server.settings.data_dir / "files"
    orphan, young_orphan, stranger = files / ("ab" * 16), files / ("cd" * 16), files / "notes"
    aside = files / f"{'ef' * 16}.deleted"  # a delete renamed it, a crash stopped the unlink
    now = server.clock.now
    old = now - ORPHAN_GRACE_S - 10
    for path, when in ((orphan, old), (young_orphan, now), (stranger, old), (aside, now)):
        path.write_bytes(b"ciphertext whose row a crash deleted")
        os.utime(path, (when, when))
    os.utime(blob(server, live.file_id), (old, old))  # old, but it has a row
    server.clock.advance(ORPHAN_SCAN_INTERVAL_S + 1)  # the first scan ran at startup
    wait_until(lambda: not orphan.exists() and not aside.exists(), "the sweep")
    assert young_orphan.exists()  # may be a delete that is still running
    assert stranger.exists()  # not a blob name: not ours to delete
    assert bob.client.get(f"/files/{live.file_id}/content").content == b"x" * 300


def test_metrics_count_files(server, account):
    alice, _bob = account("alice"), account("bob")
    send(alice, "bob", b"x" * 300)
    create(alice, "bob", 200)
    text = httpx.get(server.base_url + "/metrics").text
    assert 'pqcall_stored_files{state="stored"} 1.0' in text
    assert 'pqcall_stored_files{state="uploading"} 1.0' in text
    assert 'pqcall_stored_file_bytes{state="stored"} 300.0' in text
    assert 'pqcall_stored_file_bytes{state="uploading"} 200.0' in text


# ---------------------------------------------------------------- constant memory


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


BIG_BYTES = 50 * 1024 * 1024
MAX_GROWTH_KIB = 30 * 1024


@pytest.fixture
def big_server(
    start_server: Callable[..., AbstractContextManager[RunningServer]],
) -> Iterator[RunningServer]:
    with start_server(max_file_bytes=BIG_BYTES, file_quota_bytes=BIG_BYTES) as running:
        yield running


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_50_mb_round_trip_in_bounded_memory(big_server, tmp_path):
    """Upload and download 50 MB; the process (server thread and client) grows < 30 MB."""
    from .pushclient import register_and_login

    _, alice_token = register_and_login(big_server, "alice")
    _, bob_token = register_and_login(big_server, "bob")
    block = os.urandom(1024 * 1024)
    twice = block + block  # any piece of the download, at its offset within a block

    def body() -> Iterator[bytes]:
        for _ in range(BIG_BYTES // len(block)):
            yield block

    with big_server.client(alice_token) as alice, big_server.client(bob_token) as bob:
        file_id = alice.post("/files", json={"recipient": "bob", "size": BIG_BYTES}).json()[
            "file_id"
        ]
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
        before = _rss_kib("VmRSS")
        stored = alice.put(
            f"/files/{file_id}/content", params={"offset": 0}, content=body(), headers=OCTET_STREAM
        )
        assert stored.status_code == 200, stored.text
        assert stored.json()["state"] == "stored"
        received = 0
        with bob.stream("GET", f"/files/{file_id}/content") as download:
            assert download.status_code == 200
            for piece in download.iter_bytes():
                start = received % len(block)
                assert piece == twice[start : start + len(piece)]
                received += len(piece)
        peak = _rss_kib("VmHWM")
    assert received == BIG_BYTES
    assert peak - before < MAX_GROWTH_KIB, f"grew {peak - before} KiB"
