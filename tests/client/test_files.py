"""Encrypted file transfer: the client against a real in-process server, plus the format alone."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pqcall.client.api import ServerApi
from pqcall.client.files import FileTransfers
from pqcall.client.home import Home
from pqcall.client.phone import Phone, register
from pqcall.crypto.filecrypt import decrypt_stream, encrypt_stream
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS, AccountSecrets
from pqcall.exceptions import (
    FileCryptoError,
    KeyChangedError,
    ServerUnreachable,
    TransferError,
)
from pqcall.signaling.messages import FileView, UserView
from tests.harness import EVENT_TIMEOUT_S, run_async

from ..server.conftest import RunningServer, make_settings, run_server

PASSPHRASE = "correct horse battery staple"
CONTENT = os.urandom(300_000) + b"the plaintext marker: attack at dawn"
NAME = "secret plans.txt"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(settings) as running:
        yield running


def source(tmp_path: Path, content: bytes = CONTENT, name: str = NAME) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


async def account(
    server: RunningServer, tmp_path: Path, name: str, api_class: type[ServerApi] = ServerApi
) -> FileTransfers:
    """A registered account and its FileTransfers (HTTP only, no push connection)."""
    home = Home(tmp_path / name)
    if home.load_config() is None:
        await register(home, name, server.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    config = home.load_config()
    assert config is not None
    secrets = home.unlock(PASSPHRASE)
    api = api_class(
        server.base_url,
        name,
        secrets.identity,
        server_name=config.server_name,
        device_key=secrets.device_key,
    )
    return FileTransfers(home, api, secrets, home.contacts())


def stored_blobs(server: RunningServer) -> list[Path]:
    return [path for path in (server.settings.data_dir / "files").rglob("*") if path.is_file()]


# ---------------------------------------------------------------- real server


@run_async
async def test_round_trip_recipient_offline(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob")  # registered, then offline
    alice = await account(server, tmp_path, "alice")
    sent = await alice.send("bob", source(tmp_path))
    assert sent.recipient == "bob" and sent.name == NAME and sent.size == len(CONTENT)
    assert sent.ciphertext_size > sent.size and sent.resumed_from == 0
    assert not any(alice.outgoing_dir.iterdir())  # cleaned up after success
    # the server holds only ciphertext: neither the plaintext nor the name
    (blob,) = stored_blobs(server)
    stored = blob.read_bytes()
    assert len(stored) == sent.ciphertext_size
    assert b"attack at dawn" not in stored and b"secret plans" not in stored
    # bob comes online later
    (waiting,) = await bob.inbox()
    assert waiting.view.file_id == sent.file_id and waiting.view.sender == "alice"
    assert waiting.sender_trust == "new"
    out = tmp_path / "out"
    received = await bob.receive(sent.file_id, out)
    assert received.path == out / NAME and received.path.read_bytes() == CONTENT
    assert received.sender == "alice" and received.name == NAME and received.deleted
    assert sorted(p.name for p in out.iterdir()) == [NAME]  # no temporary file left
    assert await bob.inbox() == [] and stored_blobs(server) == []
    # the same name again is never overwritten
    again = await alice.send("bob", source(tmp_path))
    assert (await bob.receive(again.file_id, out)).path == out / "secret plans (1).txt"
    assert (out / NAME).read_bytes() == CONTENT


@run_async
async def test_online_phone_hears_file_waiting(server: RunningServer, tmp_path: Path) -> None:
    alice = await account(server, tmp_path, "alice")
    await account(server, tmp_path, "bob")
    arrived: asyncio.Queue[FileView] = asyncio.Queue()
    async with Phone(tmp_path / "bob", passphrase=PASSPHRASE) as phone:
        phone.on_file(arrived.put_nowait)
        await phone.wait_connected(EVENT_TIMEOUT_S)
        sent = await alice.send("bob", source(tmp_path))
        view = await asyncio.wait_for(arrived.get(), EVENT_TIMEOUT_S)
        assert view.file_id == sent.file_id and view.sender == "alice"
        received = await phone.files().receive(view.file_id, tmp_path / "out")
        assert received.path.read_bytes() == CONTENT


@run_async
async def test_changed_key_stops_the_send(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice")
    # alice pinned another key for bob earlier: what the server presents now differs
    alice._contacts.check("bob", IdentityPrivateKey.generate().public_key())
    with pytest.raises(KeyChangedError, match="bob's identity key is not the one you saved"):
        await alice.send("bob", source(tmp_path))
    assert not alice.outgoing_dir.exists() or not any(alice.outgoing_dir.iterdir())
    assert await bob.inbox() == []
    contact = alice._contacts.get("bob")
    assert contact is not None and contact.key_changed is not None


@run_async
async def test_changed_sender_key_is_refused(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice")
    sent = await alice.send("bob", source(tmp_path))
    bob._contacts.check("alice", IdentityPrivateKey.generate().public_key())
    # the saved key is used without asking the server: the file's signer is not it,
    # so the file is refused, and the server's key for alice says why
    with pytest.raises(KeyChangedError, match="alice's identity key is not the one you saved"):
        await bob.receive(sent.file_id, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [] and list(bob.incoming_dir.iterdir()) == []
    assert [item.view.file_id for item in await bob.inbox()] == [sent.file_id]
    assert (await bob.inbox())[0].sender_trust == "key changed"
    # with the change recorded, the server's key is checked first: nothing is downloaded
    with pytest.raises(KeyChangedError, match="alice's identity key is not the one you saved"):
        await bob.receive(sent.file_id, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


class CountingApi(ServerApi):
    """Counts the requests the file transfers make, by kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    async def user(self, name: str) -> UserView:
        self.calls["GET /users"] += 1
        return await super().user(name)

    async def create_file(self, recipient: str, size: int) -> FileView:
        self.calls["POST /files"] += 1
        return await super().create_file(recipient, size)

    async def upload(self, *args: Any, **kwargs: Any) -> FileView:
        self.calls["PUT content"] += 1
        return await super().upload(*args, **kwargs)

    async def file_status(self, file_id: str) -> FileView:
        self.calls["GET /files/ID"] += 1
        return await super().file_status(file_id)

    async def download(self, file_id: str, offset: int = 0, **kwargs: Any) -> AsyncIterator[bytes]:
        self.calls["GET content"] += 1
        async for piece in super().download(file_id, offset, **kwargs):
            yield piece

    async def delete_file(self, file_id: str) -> None:
        self.calls["DELETE"] += 1
        await super().delete_file(file_id)


@run_async
async def test_requests_per_file(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob", CountingApi)
    alice = await account(server, tmp_path, "alice", CountingApi)
    sending, receiving = alice._sender._api, bob._receiver._api
    assert isinstance(sending, CountingApi) and isinstance(receiving, CountingApi)
    # first contact: the key is fetched, checked and saved; the file is one PUT
    first = await alice.send("bob", source(tmp_path))
    assert sending.calls == {"GET /users": 1, "PUT content": 1}
    assert (await bob.receive(first.file_id, tmp_path / "out")).path.read_bytes() == CONTENT
    # the content's answer names the sender: no status request before it
    assert receiving.calls == {"GET content": 1, "GET /users": 1, "DELETE": 1}
    # a saved sender: receiving asks nothing about alice's key
    receiving.calls.clear()
    sending.calls.clear()
    second = await alice.send("bob", source(tmp_path, b"again"))
    # a saved bundle (checked under the saved identity, named in the PUT): no lookup
    assert sending.calls == {"PUT content": 1}
    received = await bob.receive(second.file_id, tmp_path / "out")
    assert received.path.read_bytes() == b"again" and received.deleted
    assert receiving.calls == {"GET content": 1, "DELETE": 1}


@run_async
async def test_a_replaced_bundle_is_fetched_again(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice", CountingApi)
    sending = alice._sender._api
    assert isinstance(sending, CountingApi)
    await alice.send("bob", source(tmp_path, b"first"))  # bob's bundle saved
    # bob publishes a new bundle (same identity): the server holds another than alice saved
    secrets, api = bob._receiver._account, bob._receiver._api
    newer = KeyBundle.create(secrets.identity, "bob", secrets.file_key.public_key(), 2**31 - 1)
    await api.put_bundle(newer.encode())
    sending.calls.clear()
    sent = await alice.send("bob", source(tmp_path, b"second"))
    # the PUT named the old bundle: 412, the new one fetched, the file sent under it
    assert sending.calls == {"PUT content": 2, "GET /users": 1}
    assert (await bob.receive(sent.file_id, tmp_path / "out")).path.read_bytes() == b"second"
    saved = alice.home.path / "bundles" / "bob.bundle"
    assert saved.read_bytes() == newer.encode()
    assert saved.stat().st_mode & 0o777 == 0o600
    sending.calls.clear()
    await alice.send("bob", source(tmp_path, b"third"))
    assert sending.calls == {"PUT content": 1}


class Crash(Exception):
    """The process died here."""


class CrashingApi(ServerApi):
    """Uploads half of what it is asked to, then 'crashes' (as a killed process would)."""

    crash = True

    async def upload(
        self,
        file_id: str,
        offset: int,
        content: AsyncIterable[bytes],
        length: int,
        *,
        create_for: tuple[str, int] | None = None,
        bundle: str | None = None,
    ) -> FileView:
        if not CrashingApi.crash:
            return await super().upload(
                file_id, offset, content, length, create_for=create_for, bundle=bundle
            )
        half = length // 2

        async def first_half() -> AsyncIterator[bytes]:
            left = half
            async for piece in content:
                yield piece[:left]
                left -= min(left, len(piece))
                if not left:
                    return

        await super().upload(file_id, offset, first_half(), half, create_for=create_for)
        raise Crash


@run_async
async def test_interrupted_upload_resumes(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice", CrashingApi)
    path = source(tmp_path)
    with pytest.raises(Crash):
        await alice.send("bob", path)
    assert await bob.inbox() == []  # not complete
    assert len(list(alice.outgoing_dir.iterdir())) == 1  # its state (no ciphertext: streamed)
    CrashingApi.crash = False
    try:
        sent = await alice.send("bob", path)  # the same NAME PATH again
    finally:
        CrashingApi.crash = True
    assert 0 < sent.resumed_from < sent.ciphertext_size
    assert sent.resumed_from == sent.ciphertext_size // 2
    received = await bob.receive(sent.file_id, tmp_path / "out")
    assert received.path.read_bytes() == CONTENT


class LostFirstPut(CountingApi):
    """The first upload never reaches the server (the connection fails before it)."""

    async def upload(self, *args: Any, **kwargs: Any) -> FileView:
        self.calls["PUT content"] += 1
        if self.calls["PUT content"] == 1:
            raise ServerUnreachable("connection refused")
        return await ServerApi.upload(self, *args, **kwargs)


@run_async
async def test_a_creating_put_that_never_arrived_is_made_again(
    server: RunningServer, tmp_path: Path
) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice", LostFirstPut)
    sent = await alice.send("bob", source(tmp_path))
    api = alice._sender._api
    assert isinstance(api, LostFirstPut)
    # asked where the upload is (404: never created), then created under a new id
    assert api.calls == {"GET /users": 1, "PUT content": 2, "GET /files/ID": 1}
    assert sent.resumed_from == 0
    assert [item.view.file_id for item in await bob.inbox()] == [sent.file_id]
    assert (await bob.receive(sent.file_id, tmp_path / "out")).path.read_bytes() == CONTENT
    assert stored_blobs(server) == []


class OldServerApi(CountingApi):
    """As against a server older than the creating PUT: its parameters are not sent."""

    async def upload(self, *args: Any, **kwargs: Any) -> FileView:
        self.calls["PUT content"] += 1
        kwargs.pop("create_for", None)
        return await ServerApi.upload(self, *args, **kwargs)


@run_async
async def test_a_server_without_the_creating_put_gets_post_files(
    server: RunningServer, tmp_path: Path
) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice", OldServerApi)
    first = await alice.send("bob", source(tmp_path))
    api = alice._sender._api
    assert isinstance(api, OldServerApi)
    # the PUT to an id the server does not know: 404, then POST /files and the PUT
    assert api.calls == {"GET /users": 1, "PUT content": 2, "POST /files": 1}
    api.calls.clear()
    second = await alice.send("bob", source(tmp_path, b"second"))  # known now: no lost PUT
    assert api.calls == {"GET /users": 1, "POST /files": 1, "PUT content": 1}
    out = tmp_path / "out"
    assert (await bob.receive(first.file_id, out)).path.read_bytes() == CONTENT
    assert (await bob.receive(second.file_id, out)).path.read_bytes() == b"second"


@run_async
async def test_changed_source_starts_over(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice", CrashingApi)
    path = source(tmp_path)
    with pytest.raises(Crash):
        await alice.send("bob", path)
    source(tmp_path, b"changed content")
    CrashingApi.crash = False
    try:
        sent = await alice.send("bob", path)
    finally:
        CrashingApi.crash = True
    assert sent.resumed_from == 0 and sent.size == len(b"changed content")
    assert [item.view.file_id for item in await bob.inbox()] == [sent.file_id]
    assert len(stored_blobs(server)) == 1  # the stale upload was cancelled
    assert (await bob.receive(sent.file_id, tmp_path / "out")).path.read_bytes() == (
        b"changed content"
    )


@run_async
async def test_tampered_ciphertext_is_refused(server: RunningServer, tmp_path: Path) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice")
    sent = await alice.send("bob", source(tmp_path))
    (blob,) = stored_blobs(server)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(FileCryptoError) as caught:
        await bob.receive(sent.file_id, out)
    assert str(caught.value).startswith(f"refused file {sent.file_id} from alice: chunk ")
    assert str(caught.value).endswith(
        "is corrupt or was tampered with; nothing was saved (the server keeps its copy)"
    )
    assert list(out.iterdir()) == []  # no final name, no temporary file
    assert [item.view.file_id for item in await bob.inbox()] == [sent.file_id]
    assert not any(bob.incoming_dir.iterdir())  # a new attempt downloads it again


class BreakingApi(ServerApi):
    """Its first download breaks off after 100 kB, as a dropped connection would."""

    offsets: ClassVar[list[int]] = []  # every download's offset, in order

    async def download(self, file_id: str, offset: int = 0, **kwargs: Any) -> AsyncIterator[bytes]:
        BreakingApi.offsets.append(offset)
        sent = 0
        async for piece in super().download(file_id, offset, **kwargs):
            if len(BreakingApi.offsets) == 1 and sent + len(piece) > 100_000:
                yield piece[: 100_000 - sent]
                raise ServerUnreachable("download from the server broke off: connection reset")
            sent += len(piece)
            yield piece


@run_async
async def test_interrupted_download_resumes(server: RunningServer, tmp_path: Path) -> None:
    BreakingApi.offsets = []
    bob = await account(server, tmp_path, "bob", BreakingApi)
    alice = await account(server, tmp_path, "alice")
    sent = await alice.send("bob", source(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(ServerUnreachable, match=r"broke off.*; 100000 of .* run receive again"):
        await bob.receive(sent.file_id, out)
    # nothing under the file's name: only the hidden partial plaintext (streamed)
    assert [path.name for path in out.iterdir()] == [f".{sent.file_id}.part"]
    received = await bob.receive(sent.file_id, out)  # run again: resumes
    assert BreakingApi.offsets == [0, 100_000]  # the second download asked for the rest
    assert received.path.read_bytes() == CONTENT
    assert not any(bob.incoming_dir.iterdir())


@run_async
async def test_short_copy_on_the_server_is_reported_damaged(
    server: RunningServer, tmp_path: Path
) -> None:
    BreakingApi.offsets = []
    bob = await account(server, tmp_path, "bob", BreakingApi)
    alice = await account(server, tmp_path, "alice")
    sent = await alice.send("bob", source(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(ServerUnreachable):
        await bob.receive(sent.file_id, out)  # bob has the first 100 kB
    (blob,) = stored_blobs(server)
    blob.write_bytes(blob.read_bytes()[:100_000])  # and the server loses the rest
    # resuming gets 416 (nothing past byte 100 000); starting over gets 100 kB and a clean end
    for offset in (100_000, 0):
        with pytest.raises(TransferError) as caught:
            await bob.receive(sent.file_id, out)
        assert BreakingApi.offsets[-1] == offset
        message = str(caught.value)
        assert message.startswith(
            f"the server's copy of file {sent.file_id} from alice ends at byte 100000 of "
        )
        assert message.endswith(
            "it is damaged or was tampered with; nothing was saved (ask alice to send it again)"
        )
        assert not any(bob.incoming_dir.iterdir())  # no use resuming it
    assert not out.exists() or list(out.iterdir()) == []


@run_async
async def test_other_account_cannot_fetch(server: RunningServer, tmp_path: Path) -> None:
    await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice")
    carol = await account(server, tmp_path, "carol")
    sent = await alice.send("bob", source(tmp_path))
    with pytest.raises(TransferError, match=f"no file {sent.file_id} waiting for you"):
        await carol.receive(sent.file_id, tmp_path / "out")
    with pytest.raises(TransferError, match="is for bob, not for you"):
        await alice.receive(sent.file_id, tmp_path / "out")  # the sender sees it, cannot take it


@run_async
async def test_send_errors(server: RunningServer, tmp_path: Path) -> None:
    alice = await account(server, tmp_path, "alice")
    with pytest.raises(TransferError, match="No such file or directory"):
        await alice.send("bob", tmp_path / "missing")
    with pytest.raises(TransferError, match="is not a regular file"):
        await alice.send("bob", tmp_path)
    with pytest.raises(TransferError, match="'xyz' is not a file id"):
        await alice.receive("xyz")


# ---------------------------------------------------------------- no server


def test_wrong_recipient_cannot_decrypt() -> None:
    alice, bob, carol = (AccountSecrets.generate() for _ in range(3))
    bundle = KeyBundle.create(bob.identity, "bob", bob.file_key.public_key(), 1)
    ciphertext = io.BytesIO()
    encrypt_stream(
        io.BytesIO(CONTENT),
        ciphertext,
        alice.identity,
        bob.identity.public_key(),
        bundle,
        name=NAME,
        created=1,
    )
    with pytest.raises(FileCryptoError, match="file is not encrypted to this key"):
        decrypt_stream(
            io.BytesIO(ciphertext.getvalue()),
            io.BytesIO(),
            carol.identity.public_key(),
            carol.file_keys(),
        )


# ---------------------------------------------------------------- streamed resume


def _blob_start(server: RunningServer) -> bytes:
    (blob,) = stored_blobs(server)
    return blob.read_bytes()[:4096]  # the clear header: file id and wrapped key


@run_async
async def test_same_stat_changed_source_restarts_with_a_fresh_key(
    server: RunningServer, tmp_path: Path
) -> None:
    bob = await account(server, tmp_path, "bob")
    alice = await account(server, tmp_path, "alice", CrashingApi)
    path = source(tmp_path)
    with pytest.raises(Crash):
        await alice.send("bob", path)
    first_header = _blob_start(server)
    # same size, same mtime; the state is made to match the new stat (a change stat misses)
    before = path.stat()
    changed = bytes(len(CONTENT) - 1) + b"!"
    path.write_bytes(changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    (state,) = alice.outgoing_dir.glob("*.json")
    document = json.loads(state.read_text())
    document["upload"].update(ctime_ns=path.stat().st_ctime_ns, inode=path.stat().st_ino)
    state.write_text(json.dumps(document))
    CrashingApi.crash = False
    try:
        sent = await alice.send("bob", path)
    finally:
        CrashingApi.crash = True
    assert sent.restarted and sent.resumed_from == 0
    assert _blob_start(server) != first_header  # a new file key and file id
    assert (await bob.receive(sent.file_id, tmp_path / "out")).path.read_bytes() == changed


@run_async
async def test_altered_partial_download_saves_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    BreakingApi.offsets = []
    bob = await account(server, tmp_path, "bob", BreakingApi)
    alice = await account(server, tmp_path, "alice")
    sent = await alice.send("bob", source(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(ServerUnreachable):
        await bob.receive(sent.file_id, out)
    part = out / f".{sent.file_id}.part"
    data = bytearray(part.read_bytes())
    data[10] ^= 0x01  # the plaintext kept for the resume is changed on disk
    part.write_bytes(bytes(data))
    with pytest.raises(FileCryptoError, match="signature does not match the sender; nothing"):
        await bob.receive(sent.file_id, out)
    assert BreakingApi.offsets == [0, 100_000]
    assert list(out.iterdir()) == [] and not any(bob.incoming_dir.iterdir())
    received = await bob.receive(sent.file_id, out)  # a new attempt starts over
    assert received.path.read_bytes() == CONTENT
