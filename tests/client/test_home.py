import json
import os
import stat
import threading
from pathlib import Path

import pytest

from pqcall.client.contacts import Contacts
from pqcall.client.history import History
from pqcall.client.home import (
    AccountConfig,
    Home,
    key_bundle,
    read_passphrase,
    resolve_home,
)
from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.keystore import (
    DEFAULT_KDF_PARAMS,
    INSECURE_TEST_KDF_PARAMS,
    AccountSecrets,
    write_keystore,
)
from pqcall.crypto.pinning import PinCreated
from pqcall.exceptions import (
    AccountExists,
    KeystoreError,
    LocalProtocolError,
    NoAccount,
    WrongPassphrase,
)
from pqcall.signaling.usernames import InvalidUsername

CHEAP = INSECURE_TEST_KDF_PARAMS
PASS = "correct horse battery staple"
CONFIG = AccountConfig(
    username="Alice", server_url="https://pq.example:8443", server_name="pq", created=1700000000
)


def mode(path):
    return stat.S_IMODE(Path(path).stat().st_mode)


@pytest.fixture
def home(tmp_path):
    return Home(tmp_path / "home")


# --- resolve_home ---


def test_resolve_home_prefers_the_argument(tmp_path):
    environ = {"PQCALL_HOME": str(tmp_path / "env")}
    assert resolve_home(tmp_path / "arg", environ=environ) == tmp_path / "arg"


def test_resolve_home_then_the_environment(tmp_path):
    environ = {"PQCALL_HOME": str(tmp_path / "env")}
    assert resolve_home(None, environ=environ) == tmp_path / "env"
    assert resolve_home("", environ=environ) == tmp_path / "env"


def test_resolve_home_defaults_to_dot_pqcall(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home(None, environ={}) == tmp_path / ".pqcall"
    assert resolve_home(None, environ={"PQCALL_HOME": ""}) == tmp_path / ".pqcall"
    assert resolve_home("~/x", environ={}) == tmp_path / "x"


def test_resolve_home_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_home("rel", environ={}) == tmp_path / "rel"


# --- account ---


def test_create_account_and_unlock(home):
    assert not home.has_account()
    secrets = home.create_account(PASS, kdf_params=CHEAP)
    assert home.has_account()
    assert mode(home.path) == 0o700
    assert mode(home.keystore_path) == 0o600
    assert home.keystore_path == home.path / "account.key"
    unlocked = home.unlock(PASS)
    assert unlocked.identity.public_key() == secrets.identity.public_key()
    assert unlocked.file_key.public_key() == secrets.file_key.public_key()
    assert sorted(p.name for p in home.path.iterdir()) == [".lock", "account.key"]


def test_create_account_with_default_kdf_params(home):
    secrets = home.create_account(PASS)
    unlocked = home.unlock(PASS)
    assert unlocked.identity.public_key() == secrets.identity.public_key()
    assert DEFAULT_KDF_PARAMS != CHEAP


def test_create_twice_is_refused(home):
    home.create_account(PASS, kdf_params=CHEAP)
    before = home.keystore_path.read_bytes()
    with pytest.raises(AccountExists) as info:
        home.create_account(PASS, kdf_params=CHEAP)
    assert str(info.value) == f"an account already exists in {home.path}"
    assert home.keystore_path.read_bytes() == before


def test_concurrent_creates_make_one_account(tmp_path):
    outcomes = []

    def create():
        try:
            Home(tmp_path / "home").create_account(PASS, kdf_params=CHEAP)
            outcomes.append("created")
        except AccountExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created", "exists", "exists", "exists"]


def test_unlock_without_account(home):
    with pytest.raises(NoAccount) as info:
        home.unlock(PASS)
    assert str(info.value) == f"no account in {home.path}; create one with: pqcall register NAME"
    assert not home.path.exists()


def test_wrong_passphrase(home):
    home.create_account(PASS, kdf_params=CHEAP)
    with pytest.raises(WrongPassphrase) as info:
        home.unlock(PASS + "!")
    assert str(info.value) == f"wrong passphrase for the account in {home.path}"


def test_empty_passphrase_is_refused(home):
    with pytest.raises(KeystoreError, match=r"^passphrase is empty$"):
        home.create_account("", kdf_params=CHEAP)
    assert not home.has_account()


def test_group_readable_keystore_is_refused(home):
    home.create_account(PASS, kdf_params=CHEAP)
    os.chmod(home.keystore_path, 0o640)
    with pytest.raises(KeystoreError) as info:
        home.unlock(PASS)
    assert str(info.value) == (
        f"keystore {home.keystore_path} is accessible by others (mode 0640); "
        f"run: chmod 600 {home.keystore_path}"
    )


def test_keystore_without_account_secrets(home):
    home.path.mkdir()
    write_keystore(home.keystore_path, b"not secrets", PASS, CHEAP)
    with pytest.raises(KeystoreError, match=r"holds no valid account"):
        home.unlock(PASS)


def test_save_secrets_after_rotation(home):
    secrets = home.create_account(PASS, kdf_params=CHEAP)
    rotated = secrets.rotate_file_key(FilePrivateKey.generate())
    home.save_secrets(rotated, PASS, kdf_params=CHEAP)
    assert mode(home.keystore_path) == 0o600
    unlocked = home.unlock(PASS)
    assert unlocked.file_key.public_key() == rotated.file_key.public_key()
    assert [k.public_key() for k in unlocked.previous_file_keys] == [secrets.file_key.public_key()]


def test_save_secrets_needs_an_account(home):
    with pytest.raises(NoAccount, match=r"create one with: pqcall register NAME$"):
        home.save_secrets(AccountSecrets.generate(), PASS, kdf_params=CHEAP)


def test_existing_directory_keeps_its_mode(tmp_path):
    directory = tmp_path / "mine"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    Home(directory).create_account(PASS, kdf_params=CHEAP)
    assert mode(directory) == 0o755
    assert mode(directory / "account.key") == 0o600


def test_missing_parents_are_created(tmp_path):
    home = Home(tmp_path / "a" / "b" / "home")
    home.save_config(CONFIG)
    assert mode(home.path) == 0o700


# --- config ---


def test_config_round_trip(home):
    assert home.load_config() is None
    home.save_config(CONFIG)
    assert mode(home.config_path) == 0o600
    assert mode(home.path) == 0o700
    assert home.load_config() == CONFIG
    assert CONFIG.username == "alice"
    stored = json.loads(home.config_path.read_text())
    assert stored == {
        "format": "pqcall config",
        "version": 1,
        "username": "alice",
        "server_url": "https://pq.example:8443",
        "server_name": "pq",
        "created": 1700000000,
    }
    assert [p.name for p in home.path.iterdir() if p.name.endswith(".tmp")] == []


def test_config_is_replaced(home):
    home.save_config(CONFIG)
    other = AccountConfig("alice", "https://other:1", "other", 1)
    home.save_config(other)
    assert home.load_config() == other


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("{", " is not JSON", id="not-json"),
        pytest.param("[]", ": not a pqcall config", id="not-object"),
        pytest.param(
            '{"format": "pqcall config", "version": 9}',
            ": config version 9 is not supported",
            id="version",
        ),
        pytest.param(
            '{"format": "pqcall config", "version": 1, "username": "alice"}',
            ": config has no server_url",
            id="missing",
        ),
        pytest.param(
            '{"format": "pqcall config", "version": 1, "username": "alice",'
            ' "server_url": "u", "server_name": "n", "created": -1}',
            ": config is invalid: creation time must be a non-negative integer",
            id="created",
        ),
        pytest.param(
            '{"format": "pqcall config", "version": 1, "username": "a",'
            ' "server_url": "u", "server_name": "n", "created": 1}',
            ": config is invalid: username must be 3 to 32 characters",
            id="username",
        ),
    ],
)
def test_corrupt_config(home, content, message):
    home.path.mkdir()
    home.config_path.write_text(content)
    with pytest.raises(KeystoreError) as info:
        home.load_config()
    assert str(info.value) == f"config file {home.config_path}{message}"


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        pytest.param({"username": "a b c"}, InvalidUsername, "username may contain", id="name"),
        pytest.param({"server_url": ""}, LocalProtocolError, "server URL", id="url"),
        pytest.param({"server_name": "x" * 65}, LocalProtocolError, "server name", id="server"),
        pytest.param({"created": True}, LocalProtocolError, "creation time", id="created"),
    ],
)
def test_invalid_config_values(fields, error, message):
    values = {"username": "alice", "server_url": "u", "server_name": "n", "created": 0}
    with pytest.raises(error, match=message):
        AccountConfig(**{**values, **fields})


# --- contacts, history, received ---


def test_contacts_and_history_live_in_the_home(home):
    contacts = home.contacts()
    assert isinstance(contacts, Contacts)
    assert contacts.path == home.path / "contacts.json"
    secrets = AccountSecrets.generate()
    assert isinstance(contacts.check("bob", secrets.identity.public_key()), PinCreated)
    assert home.contacts().get("bob") is not None
    history = home.history()
    assert isinstance(history, History)
    assert history.path == home.path / "history.jsonl"
    history.append({"peer": "bob"})
    assert home.history().list() == [{"peer": "bob"}]


def test_received_dir(home):
    assert not home.received_path.exists()
    received = home.received_dir()
    assert received == home.path / "received"
    assert mode(received) == 0o700
    assert mode(home.path) == 0o700
    assert home.received_dir() == received


def test_key_bundle(home):
    secrets = home.create_account(PASS, kdf_params=CHEAP)
    bundle = KeyBundle.decode(key_bundle(secrets, "alice", 1700000000))
    assert bundle.username == "alice"
    assert bundle.created == 1700000000
    file_key = bundle.verify(secrets.identity.public_key())
    assert file_key == secrets.file_key.public_key()


# --- read_passphrase ---


def no_prompt(text):
    raise AssertionError("must not prompt")


def private_file(path, content):
    path.write_text(content)
    os.chmod(path, 0o600)
    return path


def test_passphrase_from_file(tmp_path):
    path = private_file(tmp_path / "pass", "from file\nignored\n")
    environ = {"PQCALL_PASSPHRASE": "from env"}
    found = read_passphrase(passphrase_file=path, confirm=True, prompt=no_prompt, environ=environ)
    assert found == "from file"


def test_group_readable_passphrase_file_is_refused(tmp_path):
    path = private_file(tmp_path / "pass", "secret\n")
    os.chmod(path, 0o640)
    with pytest.raises(KeystoreError) as info:
        read_passphrase(passphrase_file=path, confirm=False, prompt=no_prompt, environ={})
    assert str(info.value) == (
        f"passphrase file {path} is accessible by others (mode 0640); run: chmod 600 {path}"
    )


def test_empty_passphrase_file_is_refused(tmp_path):
    path = private_file(tmp_path / "pass", "\n")
    with pytest.raises(KeystoreError, match=r"is empty$"):
        read_passphrase(passphrase_file=path, confirm=False, prompt=no_prompt, environ={})


def test_passphrase_from_environment(tmp_path):
    found = read_passphrase(
        passphrase_file=None,
        confirm=True,
        prompt=no_prompt,
        environ={"PQCALL_PASSPHRASE": "from env"},
    )
    assert found == "from env"
    path = private_file(tmp_path / "pass", "env file\n")
    found = read_passphrase(
        passphrase_file=None,
        confirm=True,
        prompt=no_prompt,
        environ={"PQCALL_PASSPHRASE_FILE": str(path)},
    )
    assert found == "env file"
    with pytest.raises(KeystoreError, match=r"^passphrase in PQCALL_PASSPHRASE is empty$"):
        read_passphrase(
            passphrase_file=None,
            confirm=False,
            prompt=no_prompt,
            environ={"PQCALL_PASSPHRASE": ""},
        )


def scripted(*answers):
    asked = []
    replies = list(answers)

    def prompt(text):
        asked.append(text)
        reply = replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return prompt, asked


def test_prompt_once(tmp_path):
    prompt, asked = scripted("typed")
    found = read_passphrase(
        passphrase_file=None, confirm=False, prompt=prompt, environ={}, interactive=True
    )
    assert found == "typed"
    assert asked == ["Passphrase: "]


def test_prompt_twice_to_confirm():
    prompt, asked = scripted("typed", "typed")
    found = read_passphrase(
        passphrase_file=None, confirm=True, prompt=prompt, environ={}, interactive=True
    )
    assert found == "typed"
    assert asked == ["Passphrase: ", "Passphrase again: "]


def test_prompt_mismatch():
    prompt, _ = scripted("typed", "typo")
    with pytest.raises(KeystoreError, match=r"^passphrases do not match$"):
        read_passphrase(
            passphrase_file=None, confirm=True, prompt=prompt, environ={}, interactive=True
        )


def test_prompt_empty():
    prompt, asked = scripted("")
    with pytest.raises(KeystoreError, match=r"^passphrase is empty$"):
        read_passphrase(
            passphrase_file=None, confirm=True, prompt=prompt, environ={}, interactive=True
        )
    assert asked == ["Passphrase: "]


def test_prompt_end_of_input():
    prompt, _ = scripted(EOFError())
    with pytest.raises(KeystoreError, match=r"^no passphrase entered$"):
        read_passphrase(
            passphrase_file=None, confirm=False, prompt=prompt, environ={}, interactive=True
        )


def test_no_terminal_and_nothing_set():
    with pytest.raises(KeystoreError) as info:
        read_passphrase(
            passphrase_file=None, confirm=False, prompt=no_prompt, environ={}, interactive=False
        )
    assert str(info.value) == (
        "no passphrase and no terminal to ask for one: set PQCALL_PASSPHRASE "
        "or PQCALL_PASSPHRASE_FILE, or use --passphrase-file"
    )
