"""The link rendezvous (issue 22), attacked: a real server on loopback, SQLite.

What a stranger must not manage: read a response without the poll secret,
answer a request twice (or after someone else), fill the table, or use an
entry after its 10 minutes.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

from pqcall.server import link_rendezvous
from pqcall.signaling.messages import b64decode, b64encode
from tests.harness import run_async


def _create(client, request=b"new device hello", secret=None):
    secret = secret if secret is not None else secrets.token_bytes(32)
    answer = client.post(
        "/link/requests",
        json={
            "request": b64encode(request),
            "poll_hash": b64encode(hashlib.sha256(secret).digest()),
        },
    )
    return answer, secret


def _poll(client, link_id, secret):
    return client.post(f"/link/requests/{link_id}/poll", json={"poll_secret": b64encode(secret)})


def _answer(client, link_id, response=b"sealed answer"):
    return client.put(f"/link/requests/{link_id}/response", json={"response": b64encode(response)})


def test_a_link_from_request_to_collected_response(server, account):
    alice = account("alice")
    with server.client() as new_device:
        created, secret = _create(new_device, b"request blob")
        assert created.status_code == 201, created.text
        link_id = created.json()["link_id"]
        assert re.fullmatch(r"[a-z2-7]{16}", link_id)
        assert created.json()["expires"] == server.clock.now + 600
        waiting = _poll(new_device, link_id, secret)
        assert (waiting.status_code, waiting.json()) == (202, {"status": "waiting"})
        seen = alice.client.get(f"/link/requests/{link_id}")
        assert seen.status_code == 200
        assert b64decode(seen.json()["request"]) == b"request blob"
        assert _answer(alice.client, link_id, b"the answer").status_code == 204
        collected = _poll(new_device, link_id, secret)
        assert collected.status_code == 200
        assert b64decode(collected.json()["response"]) == b"the answer"
        # handed over once: the entry is gone
        again = _poll(new_device, link_id, secret)
        assert again.status_code == 404
        assert again.json() == {"error": link_rendezvous.UNKNOWN_LINK}
        assert alice.client.get(f"/link/requests/{link_id}").status_code == 404


def test_a_stranger_cannot_read_or_answer(server, account):
    alice = account("alice")
    mallory = account("mallory")
    with server.client() as new_device, server.client() as stranger:
        created, secret = _create(new_device)
        link_id = created.json()["link_id"]
        # without logging in: nothing
        assert stranger.get(f"/link/requests/{link_id}").status_code == 401
        assert _answer(stranger, link_id).status_code == 401
        assert _answer(alice.client, link_id, b"alice's answer").status_code == 204
        # the response only for the poll secret's holder
        wrong = _poll(stranger, link_id, secrets.token_bytes(32))
        assert wrong.status_code == 404
        # a second answer, by anyone, is refused: the first one stays
        twice = _answer(mallory.client, link_id, b"mallory's answer")
        assert twice.status_code == 409
        assert twice.json() == {"error": "this link request was already answered"}
        assert _answer(alice.client, link_id, b"again").status_code == 409
        collected = _poll(new_device, link_id, secret)
        assert b64decode(collected.json()["response"]) == b"alice's answer"
        # malformed ids never reach storage
        assert alice.client.get("/link/requests/NOT-AN-ID").status_code == 422


def test_two_answers_at_once_only_one_wins(server, account):
    phones = [account(f"phone{i}") for i in range(4)]
    with server.client() as new_device:
        created, secret = _create(new_device)
        link_id = created.json()["link_id"]
        with ThreadPoolExecutor(len(phones)) as pool:
            codes = list(
                pool.map(
                    lambda i: (
                        _answer(phones[i].client, link_id, f"answer {i}".encode()).status_code
                    ),
                    range(len(phones)),
                )
            )
        assert sorted(codes) == [204, 409, 409, 409]
        winner = codes.index(204)
        collected = _poll(new_device, link_id, secret)
        assert b64decode(collected.json()["response"]) == f"answer {winner}".encode()


def test_entries_expire_after_ten_minutes(server, account):
    alice = account("alice")
    with server.client() as new_device:
        created, secret = _create(new_device)
        link_id = created.json()["link_id"]
        server.clock.advance(600.0)
        assert alice.client.get(f"/link/requests/{link_id}").status_code == 404
        assert _answer(alice.client, link_id).status_code == 404
        assert _poll(new_device, link_id, secret).status_code == 404


def test_one_address_cannot_fill_the_table(server):
    with server.client() as stranger:
        codes = [_create(stranger)[0].status_code for _ in range(6)]
        assert codes == [201] * 5 + [429]
        refused = _create(stranger)[0]
        assert "5 pending link requests" in refused.json()["error"]
        assert refused.headers["Retry-After"] == "600"
        server.clock.advance(601.0)  # expired entries make room
        assert _create(stranger)[0].status_code == 201


def test_the_server_total_is_bounded(server, monkeypatch):
    monkeypatch.setattr(link_rendezvous, "MAX_PENDING_PER_CLIENT", 100)
    monkeypatch.setattr(link_rendezvous, "MAX_PENDING_TOTAL", 3)
    with server.client() as stranger:
        codes = [_create(stranger)[0].status_code for _ in range(4)]
        assert codes == [201, 201, 201, 503]
        full = _create(stranger)[0]
        assert full.headers["Retry-After"] == "60"
        assert full.json() == {
            "error": "too many pending link requests on this server; try again later"
        }


def test_sizes_are_capped(server, account):
    alice = account("alice")
    with server.client() as new_device:
        too_big, _ = _create(new_device, b"x" * (16 * 1024 + 1))
        assert too_big.status_code == 422
        created, _ = _create(new_device, b"x" * (16 * 1024))
        assert created.status_code == 201
        link_id = created.json()["link_id"]
        short_hash = new_device.post(
            "/link/requests", json={"request": b64encode(b"r"), "poll_hash": b64encode(b"h")}
        )
        assert short_hash.status_code == 422
        assert _answer(alice.client, link_id, b"y" * (45 * 1024 + 1)).status_code == 422
        assert _answer(alice.client, link_id, b"y" * (45 * 1024)).status_code == 204


def test_creating_and_polling_are_rate_limited_per_address(start_server):
    with start_server(rate_limit_scale=1.0) as server, server.client() as stranger:
        created, secret = _create(stranger)
        link_id = created.json()["link_id"]
        polls = [_poll(stranger, link_id, secret).status_code for _ in range(12)]
        assert polls[:10] == [202] * 10 and polls[-1] == 429
        more = [_create(stranger)[0].status_code for _ in range(5)]
        assert more == [201] * 4 + [429]  # 5 a burst, then one a minute


def test_a_request_for_one_account_is_hidden_from_the_others(server, account):
    alice = account("alice")
    mallory = account("mallory")  # learned the link id (over a shoulder, from a screenshot)
    secret = secrets.token_bytes(32)
    with server.client() as new_device:
        created = new_device.post(
            "/link/requests",
            json={
                "request": b64encode(b"for alice"),
                "poll_hash": b64encode(hashlib.sha256(secret).digest()),
                "username": "Alice",
            },
        )
        assert created.status_code == 201
        link_id = created.json()["link_id"]
        assert mallory.client.get(f"/link/requests/{link_id}").status_code == 404
        refused = _answer(mallory.client, link_id, b"mallory's account key")
        assert (refused.status_code, refused.json()) == (
            404,
            {"error": link_rendezvous.UNKNOWN_LINK},
        )
        assert b64decode(alice.client.get(f"/link/requests/{link_id}").json()["request"]) == (
            b"for alice"
        )
        assert _answer(alice.client, link_id, b"alice's answer").status_code == 204
        collected = _poll(new_device, link_id, secret)
        assert b64decode(collected.json()["response"]) == b"alice's answer"


@run_async
async def test_purge_deletes_expired_requests_only(tmp_path):  # what the housekeeper runs
    from pqcall.server.storage import Storage
    from pqcall.server.storage.link_store import LinkStore

    storage = await Storage.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        links = LinkStore(storage.engine)
        for n, expires in enumerate((10.0, 20.0)):
            await links.create(
                f"link{n}", b"r", bytes(32), "client", 0.0, expires, max_per_client=5, max_total=9
            )
        assert await links.purge_expired(15.0) == 1
        assert await links.get_request("link0", 0.0, "alice") is None
        assert await links.get_request("link1", 0.0, "alice") == (b"r", 20.0)
    finally:
        await storage.close()
