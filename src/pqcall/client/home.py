"""The home directory: one account's keystore, configuration, contacts and history.

``--home DIR``, else ``$PQCALL_HOME``, else ``~/.pqcall`` (:func:`resolve_home`).
Its layout::

    account.key     the keystore (pqcall.crypto.keystore), sealing AccountSecrets
    config.json     username, server URL and the server name pinned at registration
    devices.bin     the account's current signed device list (pqcall.crypto.account)
    contacts.json   pinned contacts (pqcall.client.contacts)
    history.jsonl   finished calls, one JSON object per line (pqcall.client.history)
    received/       received audio and files
    outgoing/       pending uploads: ciphertext and state (pqcall.client.upload)
    incoming/       ciphertexts being downloaded (pqcall.client.download)
    .lock           the advisory lock every write holds

The directory is created 0700 on first write and every file 0600. Two
processes may use one home at once (``pqcall listen`` and ``pqcall call``):
every write holds the lock and is atomic (see :mod:`pqcall.client.privatefile`).
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqcall.client.contacts import Contacts
from pqcall.client.history import History
from pqcall.client.privatefile import (
    LOCK_NAME,
    FileLock,
    make_private_dir,
    read_bounded,
    write_atomic,
)
from pqcall.crypto.account import SignedDeviceList
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.keystore import (
    DEFAULT_KDF_PARAMS,
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    AccountSecrets,
    KdfParams,
    passphrase_from_env,
    read_keystore,
    write_keystore,
)
from pqcall.exceptions import (
    AccountExists,
    BadSignature,
    DecodeError,
    KeystoreError,
    LocalProtocolError,
    NoAccount,
    WrongPassphrase,
)
from pqcall.signaling.messages import MAX_SERVER_NAME_LENGTH
from pqcall.signaling.usernames import InvalidUsername, normalize

HOME_ENV = "PQCALL_HOME"
DEFAULT_HOME = "~/.pqcall"
KEYSTORE_NAME = "account.key"
CONFIG_NAME = "config.json"
CONTACTS_NAME = "contacts.json"
HISTORY_NAME = "history.jsonl"
RECEIVED_NAME = "received"
DEVICE_LIST_NAME = "devices.bin"
MAX_DEVICE_LIST_BYTES = 256 * 1024

CONFIG_FORMAT = "pqcall config"
CONFIG_VERSION = 1
MAX_CONFIG_BYTES = 64 * 1024


def resolve_home(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None
) -> Path:
    """The home directory: ``path``, else ``$PQCALL_HOME``, else ``~/.pqcall``.

    ``~`` is expanded and the result made absolute (not resolved), so messages
    name the full path.

    Args:
        path: the ``--home`` argument, or None.
        environ: the environment to read (``os.environ`` when None).
    """
    env = os.environ if environ is None else environ
    if path is None or not os.fspath(path):
        path = env.get(HOME_ENV) or DEFAULT_HOME
    return Path(path).expanduser().absolute()


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """What a home remembers about its account besides the keys."""

    username: str
    """The account name, normalized on construction (``Bob`` becomes ``bob``)."""
    server_url: str
    """The signaling server's base URL (``https://host:port``)."""
    server_name: str
    """The server's name pinned at registration; every login signs for it."""
    created: int
    """Unix time the account was registered."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "username", normalize(self.username))
        if not isinstance(self.server_url, str) or not self.server_url:
            raise LocalProtocolError("server URL must be a non-empty string")
        if not isinstance(self.server_name, str) or not (
            0 < len(self.server_name) <= MAX_SERVER_NAME_LENGTH
        ):
            raise LocalProtocolError(
                f"server name must be 1 to {MAX_SERVER_NAME_LENGTH} characters"
            )
        if isinstance(self.created, bool) or not isinstance(self.created, int) or self.created < 0:
            raise LocalProtocolError("creation time must be a non-negative integer")

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in ``config.json``, with its format and version."""
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "username": self.username,
            "server_url": self.server_url,
            "server_name": self.server_name,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, value: object) -> AccountConfig:
        """Parse the JSON object of ``config.json``; unknown keys are ignored.

        Raises:
            KeystoreError: not a pqcall config, another version, or a missing
                or invalid field (the message says which).
        """
        if not isinstance(value, dict) or value.get("format") != CONFIG_FORMAT:
            raise KeystoreError("not a pqcall config")
        if value.get("version") != CONFIG_VERSION:
            raise KeystoreError(f"config version {value.get('version')!r} is not supported")
        try:
            return cls(
                username=value["username"],
                server_url=value["server_url"],
                server_name=value["server_name"],
                created=value["created"],
            )
        except KeyError as exc:
            raise KeystoreError(f"config has no {exc.args[0]}") from None
        except (InvalidUsername, LocalProtocolError) as exc:
            raise KeystoreError(f"config is invalid: {exc}") from None


class Home:
    """One account's directory (see the module docstring for its layout).

    Nothing is created until the first write. Keys are never cached: every
    :meth:`unlock` reads the keystore again.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)  # the directory
        self._lock = FileLock(self.path / LOCK_NAME)  # held by every write here
        self._clock = clock  # unix time, for the contacts

    @property
    def keystore_path(self) -> Path:
        """The keystore, ``account.key``."""
        return self.path / KEYSTORE_NAME

    @property
    def config_path(self) -> Path:
        """The account configuration, ``config.json``."""
        return self.path / CONFIG_NAME

    @property
    def contacts_path(self) -> Path:
        """The contacts, ``contacts.json``."""
        return self.path / CONTACTS_NAME

    @property
    def history_path(self) -> Path:
        """The call history, ``history.jsonl``."""
        return self.path / HISTORY_NAME

    @property
    def device_list_path(self) -> Path:
        """The account's signed device list, ``devices.bin``."""
        return self.path / DEVICE_LIST_NAME

    def load_device_list(
        self, account_public: IdentityPublicKey, username: str
    ) -> SignedDeviceList | None:
        """The signed device list kept here, verified; None if there is none yet.

        Raises:
            KeystoreError: the file is unreadable, malformed, or not signed by
                ``account_public`` for ``username``.
        """
        data = read_bounded(self.device_list_path, "device list", MAX_DEVICE_LIST_BYTES)
        if data is None:
            return None
        try:
            signed = SignedDeviceList.decode(data)
            signed.verify(account_public, username)
        except (DecodeError, BadSignature, LocalProtocolError) as exc:
            raise KeystoreError(f"device list {self.device_list_path} is invalid: {exc}") from None
        return signed

    def save_device_list(self, signed: SignedDeviceList) -> None:
        """Write ``devices.bin`` atomically, mode 0600 (the caller verified or signed it).

        Raises:
            KeystoreError: the file cannot be written.
        """
        with self._lock.held():
            write_atomic(self.device_list_path, signed.encode(), "device list")

    @property
    def received_path(self) -> Path:
        """The folder of received audio and files (see :meth:`received_dir`)."""
        return self.path / RECEIVED_NAME

    def has_account(self) -> bool:
        """Whether a keystore exists here."""
        return os.path.lexists(self.keystore_path)

    def create_account(
        self,
        passphrase: str,
        *,
        kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
        secrets: AccountSecrets | None = None,
    ) -> AccountSecrets:
        """Generate a new account key, device key and file key and seal them in the keystore.

        Args:
            passphrase: the non-empty passphrase that will open the keystore.
            kdf_params: the keystore's KDF cost (tests use a cheap one).
            secrets: keys to keep instead of new ones (a linked device, a recovery).

        Raises:
            AccountExists: a keystore is already here.
            KeystoreError: the passphrase is empty, or the keystore cannot be written.
        """
        with self._lock.held():
            if self.has_account():
                raise AccountExists(f"an account already exists in {self.path}")
            secrets = secrets or AccountSecrets.generate()
            write_keystore(self.keystore_path, secrets.encode(), passphrase, kdf_params)
        return secrets

    def unlock(self, passphrase: str) -> AccountSecrets:
        """Open the keystore and return the account's private keys.

        Raises:
            NoAccount: no keystore here.
            WrongPassphrase: the passphrase does not open it.
            KeystoreError: the keystore is readable by others, corrupt, or of
                an unknown version.
        """
        if not self.has_account():
            raise NoAccount(f"no account in {self.path}; create one with: pqcall register NAME")
        try:
            payload = read_keystore(self.keystore_path, passphrase)
        except WrongPassphrase:
            raise WrongPassphrase(f"wrong passphrase for the account in {self.path}") from None
        try:
            return AccountSecrets.decode(payload)
        except DecodeError as exc:
            raise KeystoreError(
                f"keystore {self.keystore_path} holds no valid account ({exc})"
            ) from None

    def save_secrets(
        self,
        secrets: AccountSecrets,
        passphrase: str,
        *,
        kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
    ) -> None:
        """Replace the keystore's content with ``secrets`` (after a file-key rotation).

        Raises:
            NoAccount: no keystore here (use :meth:`create_account`).
            KeystoreError: the passphrase is empty, or the keystore cannot be written.
        """
        with self._lock.held():
            if not self.has_account():
                raise NoAccount(f"no account in {self.path}; create one with: pqcall register NAME")
            write_keystore(self.keystore_path, secrets.encode(), passphrase, kdf_params)

    def load_config(self) -> AccountConfig | None:
        """The account configuration, or None before registration.

        Raises:
            KeystoreError: ``config.json`` is unreadable, corrupt, or of an
                unknown version.
        """
        data = read_bounded(self.config_path, "config file", MAX_CONFIG_BYTES)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            raise KeystoreError(f"config file {self.config_path} is not JSON") from None
        try:
            return AccountConfig.from_json(value)
        except KeystoreError as exc:
            raise KeystoreError(f"config file {self.config_path}: {exc}") from None

    def save_config(self, config: AccountConfig) -> None:
        """Write ``config.json`` atomically, mode 0600.

        Raises:
            KeystoreError: the file cannot be written.
        """
        data = (json.dumps(config.to_json(), indent=1) + "\n").encode("utf-8")
        with self._lock.held():
            write_atomic(self.config_path, data, "config file")

    def contacts(self) -> Contacts:
        """The contacts of this home."""
        return Contacts(self.contacts_path, clock=self._clock)

    def history(self) -> History:
        """The call history of this home."""
        return History(self.history_path)

    def received_dir(self) -> Path:
        """The folder for received audio and files, created 0700 if missing.

        Raises:
            KeystoreError: it cannot be created.
        """
        make_private_dir(self.path)
        return make_private_dir(self.received_path)


def key_bundle(secrets: AccountSecrets, username: str, created: int) -> bytes:
    """The encoded :class:`~pqcall.crypto.filekey.KeyBundle` publishing our file key.

    Args:
        secrets: the account's keys; the identity signs the current file key.
        username: the normalized account name.
        created: unix seconds.
    """
    bundle = KeyBundle.create(secrets.identity, username, secrets.file_key.public_key(), created)
    return bundle.encode()


def read_passphrase(
    *,
    passphrase_file: str | os.PathLike[str] | None,
    confirm: bool,
    prompt: Callable[[str], str] = getpass.getpass,
    environ: Mapping[str, str] | None = None,
    interactive: bool | None = None,
) -> str:
    """The passphrase for the CLI, from the first source that is set.

    Sources, in order: ``passphrase_file`` (``--passphrase-file``), then
    ``PQCALL_PASSPHRASE``, then the file named by ``PQCALL_PASSPHRASE_FILE``
    (a passphrase file must be mode 0600, like the keystore), then a prompt on
    the terminal, asked twice when ``confirm``.

    Args:
        passphrase_file: a passphrase file given on the command line, or None.
        confirm: ask twice when prompting (a new passphrase).
        prompt: reads a line without echo (``getpass.getpass``).
        environ: the environment to read (``os.environ`` when None).
        interactive: whether a terminal can be prompted; None checks for one.

    Raises:
        KeystoreError: a source is set but empty or unreadable (or readable by
            others), the prompts do not match, or there is no source and no
            terminal.
    """
    found = passphrase_from_env(environ, passphrase_file=passphrase_file)
    if found is not None:
        return found
    if interactive is None:
        interactive = _has_terminal()
    if not interactive:
        raise KeystoreError(
            f"no passphrase and no terminal to ask for one: set {PASSPHRASE_ENV} "
            f"or {PASSPHRASE_FILE_ENV}, or use --passphrase-file"
        )
    try:
        passphrase = prompt("Passphrase: ")
        if not passphrase:
            raise KeystoreError("passphrase is empty")
        if confirm and prompt("Passphrase again: ") != passphrase:
            raise KeystoreError("passphrases do not match")
    except EOFError:
        raise KeystoreError("no passphrase entered") from None
    return passphrase


def _has_terminal() -> bool:
    # getpass prompts on the controlling terminal, whatever stdin is
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True
