"""Private keys at rest: a passphrase-sealed, versioned keystore file.

The payload (normally an encoded :class:`AccountSecrets`) is encrypted with
AES-256-GCM under a key stretched from the passphrase by Argon2id (RFC 9106),
or scrypt (RFC 7914) where Argon2id is unavailable. The KDF and its cost live
in the file, so tests use a cheap cost while the default is strong.

Format (integers big-endian)::

    "PQ" | 0x01 | 0x20 (KEYSTORE)   encoding header, see pqcall.crypto.encoding
    keystore version   u8     1
    kdf id             u8     1 = Argon2id, 2 = scrypt
    kdf params         3 x u32  Argon2id: memory KiB, iterations, lanes
                                scrypt:   log2 N, r, p
    salt               16 bytes
    nonce              12 bytes
    ciphertext length  u32
    ciphertext         AES-256-GCM(key, nonce, payload, aad = every byte above)
    checksum           32 bytes, SHA-256 of every byte above

The AEAD authenticates the whole header, so no KDF parameter can be lowered
without the passphrase. The checksum is *not* a security measure (anyone can
recompute it); it tells a damaged file ("keystore is corrupt") from a wrong
passphrase, and catches the damage before the deliberately slow KDF runs.

Files are written atomically with mode 0600 from creation, and a keystore
that group or others may access is refused, as ssh refuses such private keys:
a readable keystore is open to offline passphrase guessing, and a refusal is
fixed once (``chmod 600``) where a warning is ignored forever.

This is the one crypto module allowed file I/O (``tests/test_purity.py``):
:func:`seal` and :func:`unseal` are pure, the ``*_keystore`` functions and
:func:`passphrase_from_env` are the thin I/O wrappers.

A new passphrase must pass :func:`check_passphrase_strength` (the zxcvbn
estimate, Dropbox's well-kept guess counter): ``pqcall register`` and the
page's account creation call it, and skip it only when told to
(``--weak-passphrase``). The slow KDF multiplies each guess's cost; it cannot
save a passphrase that is among the first million an attacker tries.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from zxcvbn import zxcvbn

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.filekey import FilePrivateKey
from pqcall.crypto.identity import IdentityPrivateKey, sha256
from pqcall.exceptions import DecodeError, KeystoreError, WrongPassphrase
from pqcall.safefile import replace_file, shared_access

KEYSTORE_VERSION = 1
KDF_ARGON2ID = 1
KDF_SCRYPT = 2
SALT_LENGTH = 16
NONCE_LENGTH = 12
KEY_LENGTH = 32
TAG_LENGTH = 16
CHECKSUM_LENGTH = 32
# header | version | kdf id | 3 params | salt | nonce | ciphertext length
PREFIX_LENGTH = encoding.HEADER_LENGTH + 1 + 1 + 3 * 4 + SALT_LENGTH + NONCE_LENGTH + 4
MAX_KEYSTORE_BYTES = 1024 * 1024  # a keystore holds a few keys; refuse anything bigger

# bounds on the cost a file may ask for, so a crafted file cannot exhaust memory
MAX_ARGON2_MEMORY_KIB = 2 * 1024 * 1024  # 2 GiB
MAX_ARGON2_ITERATIONS = 64
MAX_ARGON2_LANES = 64
MAX_SCRYPT_LOG2_N = 22
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
MAX_SCRYPT_MEMORY_BYTES = 2 * 1024 * 1024 * 1024  # 128 * r * N

MIN_PASSPHRASE_SCORE = 3
"""zxcvbn score (0-4) a new passphrase needs: 3 is at least 10^8 guesses."""
MAX_ESTIMATED_CHARS = 72
"""zxcvbn's input limit; a longer passphrase is judged by its first 72 characters."""

PASSPHRASE_ENV = "PQCALL_PASSPHRASE"
PASSPHRASE_FILE_ENV = "PQCALL_PASSPHRASE_FILE"


@dataclasses.dataclass(frozen=True, slots=True)
class Argon2idParams:
    """Argon2id cost (RFC 9106 section 3.1)."""

    memory_kib: int
    """Memory in KiB (``m``); at least 8 per lane."""
    iterations: int
    """Passes over the memory (``t``)."""
    lanes: int
    """Degree of parallelism (``p``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ScryptParams:
    """Scrypt cost (RFC 7914 section 2)."""

    log2_n: int
    """Base-2 logarithm of the CPU/memory cost ``N``."""
    r: int
    """Block size."""
    p: int
    """Parallelization."""


KdfParams = Argon2idParams | ScryptParams

DEFAULT_KDF_PARAMS: Final[KdfParams] = Argon2idParams(
    memory_kib=256 * 1024, iterations=2, lanes=4
)  # about 0.4 s and 256 MiB on a 2-core x86-64 (see docs/protocol.md#keystore)
SCRYPT_KDF_PARAMS: Final[KdfParams] = ScryptParams(
    log2_n=17, r=8, p=1
)  # 128 MiB, about 0.4 s; for builds whose OpenSSL lacks Argon2id
INSECURE_TEST_KDF_PARAMS: Final[KdfParams] = Argon2idParams(
    memory_kib=8, iterations=1, lanes=1
)  # for tests only: makes a keystore as weak as its passphrase


def seal(payload: bytes, passphrase: str, params: KdfParams = DEFAULT_KDF_PARAMS) -> bytes:
    """Encrypt ``payload`` under ``passphrase`` into the keystore format.

    Args:
        payload: the secret bytes, normally ``AccountSecrets.encode()``.
        passphrase: a non-empty passphrase (NFC-normalized before use).
        params: the KDF and its cost, stored in the result.

    Raises:
        KeystoreError: the passphrase is empty, the parameters are out of
            range, or the KDF is unavailable.
    """
    kdf_id, numbers = _params_to_wire(params)
    _check_params(kdf_id, numbers)
    salt = os.urandom(SALT_LENGTH)
    nonce = os.urandom(NONCE_LENGTH)
    key = _derive_key(passphrase, kdf_id, numbers, salt)
    prefix = (
        encoding.encode(Kind.KEYSTORE, b"")
        + encoding.u8(KEYSTORE_VERSION)
        + encoding.u8(kdf_id)
        + b"".join(encoding.u32(n) for n in numbers)
        + salt
        + nonce
        + encoding.u32(len(payload) + TAG_LENGTH)
    )
    body = prefix + AESGCM(key).encrypt(nonce, payload, prefix)
    return body + sha256(body)


def unseal(blob: bytes, passphrase: str) -> bytes:
    """Decrypt a keystore made by :func:`seal` and return the payload.

    Cheap structural checks (format, version, checksum, parameter bounds) run
    before the slow KDF.

    Raises:
        WrongPassphrase: the passphrase does not open an intact keystore.
        KeystoreError: the blob is not a keystore, is truncated or corrupt, or
            is of an unknown version or KDF.
    """
    # check format and version first, so a future format is named as such
    try:
        encoding.decode(Kind.KEYSTORE, blob[: encoding.HEADER_LENGTH])
    except DecodeError as exc:
        raise KeystoreError(_keystore_message(str(exc))) from None
    if len(blob) < encoding.HEADER_LENGTH + 1:
        raise KeystoreError("keystore is truncated")
    version = blob[encoding.HEADER_LENGTH]
    if version != KEYSTORE_VERSION:
        raise KeystoreError(f"keystore version {version} is not supported")
    if len(blob) < PREFIX_LENGTH + CHECKSUM_LENGTH:
        raise KeystoreError("keystore is truncated")
    # check the declared length, then the checksum, then parse
    declared = int.from_bytes(blob[PREFIX_LENGTH - 4 : PREFIX_LENGTH], "big")
    expected_length = PREFIX_LENGTH + declared + CHECKSUM_LENGTH
    if len(blob) < expected_length:
        raise KeystoreError("keystore is truncated")
    if len(blob) > expected_length:
        raise KeystoreError("keystore has trailing bytes")
    body, checksum = blob[:-CHECKSUM_LENGTH], blob[-CHECKSUM_LENGTH:]
    if sha256(body) != checksum:
        raise KeystoreError("keystore is corrupt (checksum mismatch)")
    reader = Reader(body[encoding.HEADER_LENGTH + 1 :], "keystore")
    kdf_id = reader.u8("kdf id")
    numbers = (reader.u32("kdf param"), reader.u32("kdf param"), reader.u32("kdf param"))
    salt = reader.fixed(SALT_LENGTH, "salt")
    nonce = reader.fixed(NONCE_LENGTH, "nonce")
    reader.u32("ciphertext length")
    ciphertext = reader.rest()
    _check_params(kdf_id, numbers)
    if declared < TAG_LENGTH:
        raise KeystoreError("keystore is corrupt (ciphertext too short)")
    # derive the key and open
    key = _derive_key(passphrase, kdf_id, numbers, salt)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, body[:PREFIX_LENGTH])
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase") from None


def write_keystore(
    path: str | os.PathLike[str],
    payload: bytes,
    passphrase: str,
    params: KdfParams = DEFAULT_KDF_PARAMS,
) -> None:
    """Seal ``payload`` and write it to ``path`` atomically, mode 0600.

    The keystore is sealed first, then written to a temporary file in the same
    directory (created 0600, so never readable by others even briefly),
    fsynced, and renamed over ``path``. If anything fails, ``path`` keeps its
    previous content and the temporary file is removed.

    Raises:
        KeystoreError: sealing failed, or the file cannot be written.
    """
    replace_file(path, seal(payload, passphrase, params), "keystore")


def read_keystore(path: str | os.PathLike[str], passphrase: str) -> bytes:
    """Read and unseal the keystore at ``path``.

    Raises:
        WrongPassphrase: the passphrase does not open the keystore.
        KeystoreError: the file is missing, accessible by group or others,
            too large, corrupt, truncated, or of an unknown version.
    """
    return unseal(_read_private_file(Path(path), "keystore", MAX_KEYSTORE_BYTES), passphrase)


class WeakPassphrase(KeystoreError):
    """A new passphrase is too easy to guess (:func:`check_passphrase_strength`)."""


def check_passphrase_strength(
    passphrase: str, *, user_inputs: Sequence[str] = (), override: str = ""
) -> None:
    """Refuse a new passphrase that zxcvbn scores below :data:`MIN_PASSPHRASE_SCORE`.

    Args:
        passphrase: the new passphrase.
        user_inputs: words an attacker knows (the username), which count as guessed.
        override: how to skip this check where the caller offers one, named
            at the end of the error ("--weak-passphrase").

    Raises:
        WeakPassphrase: one line saying why and what to do.
    """
    if not passphrase:  # zxcvbn fails on ""
        reason, guesses = "it is empty; ", "1 guess"
    else:
        estimate = zxcvbn(passphrase[:MAX_ESTIMATED_CHARS], user_inputs=list(user_inputs))
        if estimate["score"] >= MIN_PASSPHRASE_SCORE:
            return
        warning = str(estimate["feedback"]["warning"] or "").rstrip(".")
        reason = f"{warning.lower()}; " if warning else ""
        guesses = f"about 10^{int(estimate['guesses_log10'])} guesses"
    message = (
        f"weak passphrase: {reason}it would fall to {guesses} (at least 10^8 needed):"
        " use four or more uncommon words"
    )
    raise WeakPassphrase(message + (f", or {override} to keep it" if override else ""))


def passphrase_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    passphrase_file: str | os.PathLike[str] | None = None,
) -> str | None:
    """Find a passphrase for scripts and tests, without prompting.

    Looks, in order, at ``passphrase_file``, then ``PQCALL_PASSPHRASE``, then
    the file named by ``PQCALL_PASSPHRASE_FILE``. A passphrase file holds the
    passphrase on its first line (trailing newline stripped) and must have mode
    0600 like the keystore.

    Args:
        environ: the environment to read (``os.environ`` when None).
        passphrase_file: a passphrase file given on the command line.

    Returns:
        The passphrase, or None when no source is set (the caller may prompt).

    Raises:
        KeystoreError: the source is set but empty, or the file cannot be read.
    """
    env = os.environ if environ is None else environ
    if passphrase_file is not None:
        return _passphrase_from_file(Path(passphrase_file))
    if PASSPHRASE_ENV in env:
        if not env[PASSPHRASE_ENV]:
            raise KeystoreError(f"passphrase in {PASSPHRASE_ENV} is empty")
        return env[PASSPHRASE_ENV]
    if env.get(PASSPHRASE_FILE_ENV):
        return _passphrase_from_file(Path(env[PASSPHRASE_FILE_ENV]))
    return None


# --- account secrets: the payload a keystore seals ---

_FIELD_IDENTITY = 1
_FIELD_FILE_KEY = 2
_FIELD_PREVIOUS_FILE_KEY = 3
_FIELD_DEVICE_KEY = 4


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class AccountSecrets:
    """Every private key of an account: what :func:`write_keystore` seals.

    Encoding (``Kind.ACCOUNT_SECRETS``) is a list of fields, each
    ``tag (u8) | value (vec16)``: 1 identity private key (once), 2 file private
    key (once), 3 a previous file private key (repeated, newest first), 4 this
    device's key (at most once; absent in a home made before linked devices,
    whose device key is then the account identity). Unknown
    tags are kept verbatim in :attr:`extensions` and written back, so an older
    client never drops what a newer one stored.
    """

    identity: IdentityPrivateKey
    """The account key: the hybrid identity contacts pin; it signs the device list."""
    file_key: FilePrivateKey
    """The current file-decryption key (the one in the published bundle)."""
    previous_file_keys: tuple[FilePrivateKey, ...] = ()
    """File keys replaced by rotation, kept to read files sent before it."""
    extensions: tuple[tuple[int, bytes], ...] = ()
    """Fields of unknown tag, as ``(tag, value)``, preserved on rewrite."""
    device_key: IdentityPrivateKey | None = None
    """This device's own key (signs logins and handshakes); None: the account key is it."""

    @classmethod
    def generate(cls) -> AccountSecrets:
        """A new account: a fresh identity (account key), device key and file key."""
        return cls(
            IdentityPrivateKey.generate(),
            FilePrivateKey.generate(),
            device_key=IdentityPrivateKey.generate(),
        )

    @classmethod
    def decode(cls, data: bytes) -> AccountSecrets:
        """Parse encoded account secrets.

        Raises:
            DecodeError: not account secrets, a malformed field, or a missing
                or repeated identity or file key.
        """
        body = encoding.decode(Kind.ACCOUNT_SECRETS, data)
        reader = Reader(body, "account secrets")
        consumed = 0  # bytes of body read so far
        identities: list[IdentityPrivateKey] = []
        file_keys: list[FilePrivateKey] = []
        previous: list[FilePrivateKey] = []
        extensions: list[tuple[int, bytes]] = []
        device_keys: list[IdentityPrivateKey] = []
        while consumed < len(body):
            tag = reader.u8("field tag")
            value = reader.vec16("field value")
            consumed += 3 + len(value)
            if tag == _FIELD_IDENTITY:
                identities.append(IdentityPrivateKey.decode(value))
            elif tag == _FIELD_FILE_KEY:
                file_keys.append(FilePrivateKey.decode(value))
            elif tag == _FIELD_PREVIOUS_FILE_KEY:
                previous.append(FilePrivateKey.decode(value))
            elif tag == _FIELD_DEVICE_KEY:
                device_keys.append(IdentityPrivateKey.decode(value))
            else:
                extensions.append((tag, value))
        if len(identities) != 1 or len(file_keys) != 1:
            raise DecodeError("account secrets need exactly one identity and one file key")
        if len(device_keys) > 1:
            raise DecodeError("account secrets hold more than one device key")
        device_key = device_keys[0] if device_keys else None
        return cls(identities[0], file_keys[0], tuple(previous), tuple(extensions), device_key)

    def encode(self) -> bytes:
        """The type-tagged encoding, secret: seal it, never store it in clear."""
        fields = [(_FIELD_IDENTITY, self.identity.encode())]
        fields.append((_FIELD_FILE_KEY, self.file_key.encode()))
        fields += [(_FIELD_PREVIOUS_FILE_KEY, key.encode()) for key in self.previous_file_keys]
        if self.device_key is not None:
            fields.append((_FIELD_DEVICE_KEY, self.device_key.encode()))
        fields += list(self.extensions)
        body = b"".join(encoding.u8(tag) + encoding.vec16(value) for tag, value in fields)
        return encoding.encode(Kind.ACCOUNT_SECRETS, body)

    @property
    def device_identity(self) -> IdentityPrivateKey:
        """The key this device signs logins and handshakes with (the account key if none)."""
        return self.device_key if self.device_key is not None else self.identity

    def file_keys(self) -> tuple[FilePrivateKey, ...]:
        """Every file key to try when decrypting: current first, then previous."""
        return (self.file_key, *self.previous_file_keys)

    def rotate_file_key(self, new_key: FilePrivateKey) -> AccountSecrets:
        """A copy whose current file key is ``new_key``, the old one kept as previous."""
        return dataclasses.replace(
            self, file_key=new_key, previous_file_keys=(self.file_key, *self.previous_file_keys)
        )

    def __repr__(self) -> str:
        return (
            f"AccountSecrets(identity={self.identity!r}, file_key={self.file_key!r}, "
            f"previous_file_keys={len(self.previous_file_keys)}, device_key={self.device_key!r})"
        )


# --- helpers ---


def _params_to_wire(params: KdfParams) -> tuple[int, tuple[int, int, int]]:
    if isinstance(params, Argon2idParams):
        return KDF_ARGON2ID, (params.memory_kib, params.iterations, params.lanes)
    return KDF_SCRYPT, (params.log2_n, params.r, params.p)


def _check_params(kdf_id: int, numbers: tuple[int, int, int]) -> None:
    if kdf_id == KDF_ARGON2ID:
        memory_kib, iterations, lanes = numbers
        ok = (
            1 <= lanes <= MAX_ARGON2_LANES
            and 8 * lanes <= memory_kib <= MAX_ARGON2_MEMORY_KIB
            and 1 <= iterations <= MAX_ARGON2_ITERATIONS
        )
    elif kdf_id == KDF_SCRYPT:
        log2_n, r, p = numbers
        ok = (
            1 <= log2_n <= MAX_SCRYPT_LOG2_N
            and 1 <= r <= MAX_SCRYPT_R
            and 1 <= p <= MAX_SCRYPT_P
            and 128 * r * (1 << log2_n) <= MAX_SCRYPT_MEMORY_BYTES
        )
    else:
        raise KeystoreError(f"keystore uses unknown KDF {kdf_id}")
    if not ok:
        raise KeystoreError("keystore KDF parameters are out of range")


_ARGON2_LOCK = threading.Lock()
"""One Argon2id derivation at a time per process: with several lanes, two running at
once in two threads never return (seen with cryptography 46 and 50 on Linux; reproduced
in tests/crypto/test_keystore.py)."""


def _derive_key(passphrase: str, kdf_id: int, numbers: tuple[int, int, int], salt: bytes) -> bytes:
    secret = _passphrase_bytes(passphrase)
    try:
        if kdf_id == KDF_ARGON2ID:
            memory_kib, iterations, lanes = numbers
            kdf = Argon2id(
                salt=salt,
                length=KEY_LENGTH,
                iterations=iterations,
                lanes=lanes,
                memory_cost=memory_kib,
            )
            with _ARGON2_LOCK:
                return kdf.derive(secret)
        log2_n, r, p = numbers
        return Scrypt(salt=salt, length=KEY_LENGTH, n=1 << log2_n, r=r, p=p).derive(secret)
    except UnsupportedAlgorithm:
        raise KeystoreError("this build of cryptography lacks the keystore's KDF") from None
    except MemoryError:
        raise KeystoreError("not enough memory for the keystore's KDF") from None


def _passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str):
        raise KeystoreError("passphrase must be text")
    if not passphrase:
        raise KeystoreError("passphrase is empty")
    try:
        # NFC, so the same passphrase typed on another system opens the keystore
        return unicodedata.normalize("NFC", passphrase).encode("utf-8")
    except UnicodeEncodeError:
        raise KeystoreError("passphrase is not valid Unicode") from None


def _keystore_message(decode_message: str) -> str:
    if decode_message.startswith("unsupported"):
        version = decode_message.rsplit(" ", 1)[-1]
        return f"keystore version {version} is not supported"
    if decode_message.startswith("expected"):
        return f"not a pqcall keystore ({decode_message})"
    return "not a pqcall keystore"


def _read_private_file(path: Path, what: str, max_bytes: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeystoreError(f"no {what} at {path}") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeystoreError(f"{what} {path} is not a regular file")
        problem = shared_access(info, path, what)
        if problem is not None:
            raise KeystoreError(problem)
        if info.st_size > max_bytes:
            raise KeystoreError(f"{what} {path} is too large")
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise KeystoreError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise KeystoreError(f"{what} {path} is too large")
    return data


def _passphrase_from_file(path: Path) -> str:
    raw = _read_private_file(path, "passphrase file", 64 * 1024)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeystoreError(f"passphrase file {path} is not UTF-8") from None
    line = text.split("\n", 1)[0].removesuffix("\r")
    if not line:
        raise KeystoreError(f"passphrase file {path} is empty")
    return line
