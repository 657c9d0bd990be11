import json
import multiprocessing
import re
import stat

import pytest

from pqcall.client.contacts import Contacts, FilePinStorage, KeyChange
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.crypto.pinning import KeyChanged, Pin, PinCreated, PinMatched, PinStorage, PinStore
from pqcall.crypto.safety import safety_number
from pqcall.exceptions import KeystoreError, LocalProtocolError
from pqcall.signaling.messages import b64decode
from pqcall.signaling.usernames import InvalidUsername

BOB = IdentityPrivateKey.generate().public_key()
BOB_NEW = IdentityPrivateKey.generate().public_key()
MALLORY = IdentityPrivateKey.generate().public_key()
ALICE = IdentityPrivateKey.generate().public_key()


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "home" / "contacts.json"


@pytest.fixture
def contacts(path, clock):
    return Contacts(path, clock=clock)


def test_first_contact_is_pinned(contacts, path):
    result = contacts.check("bob", BOB)
    assert result == PinCreated(Pin("bob", BOB))
    contact = contacts.get("bob")
    assert contact is not None
    assert contact.identity == BOB
    assert contact.verified is False
    assert contact.first_seen == 1000.0
    assert contact.last_call is None
    assert contact.key_changed is None
    assert contact.fingerprint == BOB.fingerprint_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_same_key_matches(contacts, clock):
    contacts.check("bob", BOB)
    clock.now = 2000.0
    assert contacts.check("bob", BOB) == PinMatched(Pin("bob", BOB))
    assert contacts.get("bob").first_seen == 1000.0


def test_key_change_is_refused_and_recorded(contacts, clock):
    contacts.check("bob", BOB)
    clock.now = 2000.0
    result = contacts.check("bob", MALLORY)
    assert result == KeyChanged(Pin("bob", BOB), MALLORY)
    contact = contacts.get("bob")
    assert contact.identity == BOB  # the pin does not move
    assert contact.key_changed == KeyChange(MALLORY, 2000.0)
    assert contact.key_changed.fingerprint == MALLORY.fingerprint_text()


def test_repeated_key_change_keeps_first_sighting(contacts, clock):
    contacts.check("bob", BOB)
    clock.now = 2000.0
    contacts.check("bob", MALLORY)
    clock.now = 3000.0
    contacts.check("bob", MALLORY)
    assert contacts.get("bob").key_changed == KeyChange(MALLORY, 2000.0)
    contacts.check("bob", BOB_NEW)  # yet another key replaces the record
    assert contacts.get("bob").key_changed == KeyChange(BOB_NEW, 3000.0)


def test_key_change_stays_shown_when_the_old_key_returns(contacts):
    contacts.check("bob", BOB)
    contacts.check("bob", MALLORY)
    assert isinstance(contacts.check("bob", BOB), PinMatched)
    assert contacts.get("bob").key_changed is not None


def test_accept_new_key_pins_it_and_clears_verified(contacts, clock):
    contacts.check("bob", BOB)
    contacts.mark_verified("bob")
    contacts.touch("bob", 1500.0)
    clock.now = 2000.0
    contacts.check("bob", BOB_NEW)
    clock.now = 2500.0
    contact = contacts.accept_new_key("bob")
    assert contact.identity == BOB_NEW
    assert contact.verified is False
    assert contact.key_changed is None
    assert contact.first_seen == 2500.0
    assert contact.last_call == 1500.0
    assert contacts.get("bob") == contact
    assert isinstance(contacts.check("bob", BOB_NEW), PinMatched)
    assert isinstance(contacts.check("bob", BOB), KeyChanged)


def test_accept_new_key_needs_a_recorded_change(contacts):
    contacts.check("bob", BOB)
    with pytest.raises(LocalProtocolError, match=r"^no key change recorded for bob$"):
        contacts.accept_new_key("bob")
    with pytest.raises(LocalProtocolError, match=r"^no contact named carol$"):
        contacts.accept_new_key("carol")


def test_mark_verified(contacts):
    contacts.check("bob", BOB)
    contact = contacts.mark_verified("bob")
    assert contact.verified is True
    assert contacts.get("bob").verified is True
    assert isinstance(contacts.check("bob", BOB), PinMatched)
    assert contacts.get("bob").verified is True
    with pytest.raises(LocalProtocolError, match=r"^no contact named carol$"):
        contacts.mark_verified("carol")


def test_mark_verified_keeps_a_pending_key_change(contacts):
    contacts.check("bob", BOB)
    contacts.check("bob", MALLORY)
    assert contacts.mark_verified("bob").key_changed is not None


def test_names_are_normalized(contacts):
    contacts.check("Bob", BOB)
    assert contacts.get("BOB").name == "bob"
    assert isinstance(contacts.check("bob", BOB), PinMatched)
    with pytest.raises(InvalidUsername):
        contacts.check("b", BOB)


def test_get_unknown_and_list_sorted(contacts):
    assert contacts.get("bob") is None
    assert contacts.list() == []
    contacts.check("carol", MALLORY)
    contacts.check("bob", BOB)
    assert [c.name for c in contacts.list()] == ["bob", "carol"]


def test_touch_records_last_call(contacts):
    contacts.check("bob", BOB)
    contacts.touch("bob", 1234.5)
    assert contacts.get("bob").last_call == 1234.5
    with pytest.raises(LocalProtocolError, match=r"^no contact named carol$"):
        contacts.touch("carol", 1.0)


def test_safety_number(contacts):
    contacts.check("bob", BOB)
    number = contacts.safety_number("Alice", ALICE, "bob")
    assert number == safety_number("alice", ALICE, "bob", BOB)
    assert number == safety_number("bob", BOB, "alice", ALICE)  # what bob sees
    assert re.fullmatch(r"\d{5}( \d{5}){11}", number)


def test_safety_number_of_changed_key(contacts):
    contacts.check("bob", BOB)
    with pytest.raises(LocalProtocolError, match=r"^no key change recorded for bob$"):
        contacts.safety_number("alice", ALICE, "bob", changed_key=True)
    contacts.check("bob", BOB_NEW)
    assert contacts.safety_number("alice", ALICE, "bob", changed_key=True) == safety_number(
        "alice", ALICE, "bob", BOB_NEW
    )
    with pytest.raises(LocalProtocolError, match=r"^no contact named carol$"):
        contacts.safety_number("alice", ALICE, "carol")


def test_to_json(contacts, clock):
    contacts.check("bob", BOB)
    clock.now = 2000.0
    contacts.check("bob", MALLORY)
    assert contacts.get("bob").to_json() == {
        "name": "bob",
        "fingerprint": BOB.fingerprint_text(),
        "verified": False,
        "first_seen": 1000.0,
        "last_call": None,
        "key_changed": {"fingerprint": MALLORY.fingerprint_text(), "seen": 2000.0},
    }


def test_file_format(contacts, path):
    contacts.check("bob", BOB)
    document = json.loads(path.read_text())
    assert document["format"] == "pqcall contacts"
    assert document["version"] == 1
    [entry] = document["contacts"]
    assert IdentityPublicKey.decode(b64decode(entry["identity"])) == BOB


def test_two_objects_on_one_file_see_each_others_writes(path, clock):
    first = Contacts(path, clock=clock)
    second = Contacts(path, clock=clock)
    first.check("bob", BOB)
    seen = second.get("bob")
    assert seen is not None
    assert seen.identity == BOB
    assert isinstance(second.check("bob", MALLORY), KeyChanged)
    seen = first.get("bob")
    assert seen is not None
    assert seen.key_changed == KeyChange(MALLORY, 1000.0)
    second.accept_new_key("bob")
    assert isinstance(first.check("bob", MALLORY), PinMatched)
    first.mark_verified("bob")
    seen = second.get("bob")
    assert seen is not None
    assert seen.verified is True


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(b"{not json", "not JSON", id="not-json"),
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"[]", "not a pqcall contacts file", id="wrong-shape"),
        pytest.param(
            b'{"format": "pqcall contacts", "version": "1", "contacts": []}',
            "no valid version",
            id="version-text",
        ),
        pytest.param(
            b'{"format": "pqcall contacts", "version": 1}', "no contacts list", id="no-list"
        ),
        pytest.param(
            b'{"format": "pqcall contacts", "version": 1, "contacts": [3]}',
            "entry 0: not an object",
            id="entry-not-object",
        ),
    ],
)
def test_corrupt_file_raises_a_clear_error(path, clock, content, reason):
    path.parent.mkdir()
    path.write_bytes(content)
    contacts = Contacts(path, clock=clock)
    message = (
        f"contacts file {path} is corrupt ({reason}); repair or remove it "
        "(removing it forgets every pinned key)"
    )
    with pytest.raises(KeystoreError) as info:
        contacts.get("bob")
    assert str(info.value) == message
    # a write must not replace the damaged pins with a fresh file
    with pytest.raises(KeystoreError):
        contacts.check("bob", MALLORY)
    assert path.read_bytes() == content


def corrupt_entry(path, **changes):
    document = json.loads(path.read_text())
    document["contacts"][0].update(changes)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"identity": "AAAA"}, "identity is not a valid identity key", id="identity"),
        pytest.param({"identity": "!!"}, "identity is not a valid identity key", id="base64"),
        pytest.param({"identity": None}, "identity is missing", id="no-identity"),
        pytest.param({"name": ""}, "no valid name", id="name"),
        pytest.param({"verified": "yes"}, "verified is not true or false", id="verified"),
        pytest.param({"first_seen": "today"}, "first_seen is not a time", id="first-seen"),
        pytest.param({"last_call": True}, "last_call is not a time", id="last-call"),
        pytest.param({"key_changed": []}, "key_changed is not an object", id="change"),
        pytest.param(
            {"key_changed": {"identity": "AAAA", "seen": 1}},
            "key_changed identity is not a valid identity key",
            id="change-identity",
        ),
    ],
)
def test_corrupt_entry_raises_a_clear_error(contacts, path, changes, reason):
    contacts.check("bob", BOB)
    corrupt_entry(path, **changes)
    with pytest.raises(KeystoreError, match=re.escape(f"is corrupt (entry 0: {reason});")):
        contacts.list()


def test_duplicate_entry_is_corrupt(contacts, path):
    contacts.check("bob", BOB)
    document = json.loads(path.read_text())
    document["contacts"].append(document["contacts"][0])
    path.write_text(json.dumps(document))
    with pytest.raises(KeystoreError, match=re.escape("(entry 1: bob appears twice)")):
        contacts.list()


def test_newer_version_is_refused(path, clock):
    path.parent.mkdir()
    path.write_text('{"format": "pqcall contacts", "version": 2, "contacts": []}')
    with pytest.raises(KeystoreError) as info:
        Contacts(path, clock=clock).list()
    assert str(info.value) == (
        f"contacts file {path} is of version 2, not supported by this pqcall; upgrade pqcall"
    )


def test_file_pin_storage_is_a_pin_storage(path, clock):
    storage: PinStorage = FilePinStorage(path, clock=clock)
    store = PinStore(storage)
    assert isinstance(store.check("bob", BOB), PinCreated)
    assert storage.load("bob") == Pin("bob", BOB)
    assert storage.load("carol") is None
    store.mark_verified("bob", BOB)
    storage.save(Pin("alice", ALICE))
    assert storage.all() == [Pin("alice", ALICE), Pin("bob", BOB, verified=True)]
    reopened = FilePinStorage(path)
    assert reopened.all() == storage.all()


PINS_PER_PROCESS = 15


def pin_many(path, prefix, identity_bytes):
    contacts = Contacts(path)
    identity = IdentityPublicKey.decode(identity_bytes)
    for i in range(PINS_PER_PROCESS):
        contacts.check(f"{prefix}{i:03d}", identity)
        contacts.touch(f"{prefix}{i:03d}", float(i))


def test_concurrent_writers_lose_no_pin(path):
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=pin_many, args=(path, prefix, identity.encode()))
        for prefix, identity in (("bob", BOB), ("carol", MALLORY))
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    listed = Contacts(path).list()
    assert len(listed) == 2 * PINS_PER_PROCESS
    assert all(contact.last_call is not None for contact in listed)
