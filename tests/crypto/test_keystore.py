import os
import re
import stat
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqcall.crypto import encoding, keystore
from pqcall.crypto.encoding import Kind
from pqcall.crypto.filekey import FilePrivateKey
from pqcall.crypto.identity import sha256
from pqcall.crypto.keystore import (
    DEFAULT_KDF_PARAMS,
    INSECURE_TEST_KDF_PARAMS,
    PREFIX_LENGTH,
    AccountSecrets,
    Argon2idParams,
    ScryptParams,
    passphrase_from_env,
    read_keystore,
    seal,
    unseal,
    write_keystore,
)
from pqcall.exceptions import DecodeError, KeystoreError, PqcallError, WrongPassphrase

CHEAP = INSECURE_TEST_KDF_PARAMS
CHEAP_SCRYPT = ScryptParams(log2_n=4, r=1, p=1)
PASS = "correct horse battery staple"
SECRETS = AccountSecrets.generate()
PAYLOAD = SECRETS.encode()
BLOB = seal(PAYLOAD, PASS, CHEAP)


def reseal_checksum(body: bytes) -> bytes:
    """Give a tampered keystore a valid checksum (anyone can)."""
    return body + sha256(body)


# --- seal / unseal ---


@pytest.mark.parametrize(
    "params",
    [pytest.param(CHEAP, id="argon2id"), pytest.param(CHEAP_SCRYPT, id="scrypt")],
)
def test_round_trip(params):
    blob = seal(PAYLOAD, PASS, params)
    assert unseal(blob, PASS) == PAYLOAD
    assert PAYLOAD not in blob


def test_default_params_are_strong_and_work():
    assert isinstance(DEFAULT_KDF_PARAMS, Argon2idParams)
    assert DEFAULT_KDF_PARAMS.memory_kib >= 64 * 1024
    assert unseal(seal(b"secret", PASS), PASS) == b"secret"


def test_each_seal_is_fresh():
    assert seal(PAYLOAD, PASS, CHEAP) != BLOB


def test_wrong_passphrase():
    with pytest.raises(WrongPassphrase, match=r"^wrong passphrase$"):
        unseal(BLOB, PASS + "!")


def test_passphrase_is_nfc_normalized():
    composed = "caf\u00e9"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert unseal(seal(b"x", composed, CHEAP), decomposed) == b"x"


def test_empty_passphrase_refused():
    with pytest.raises(KeystoreError, match=r"^passphrase is empty$"):
        seal(PAYLOAD, "", CHEAP)
    with pytest.raises(KeystoreError, match=r"^passphrase is empty$"):
        unseal(BLOB, "")


CLEAR_CORRUPTION_MESSAGE = re.compile(
    r"not a pqcall keystore( \(expected keystore, got .*\))?"
    r"|keystore version \d+ is not supported"
    r"|keystore is truncated"
    r"|keystore has trailing bytes"
    r"|keystore is corrupt \(checksum mismatch\)"
)


def test_any_corrupted_byte_is_a_clear_error_not_wrong_passphrase():
    for index in range(len(BLOB)):
        corrupted = bytearray(BLOB)
        corrupted[index] ^= 0x01
        with pytest.raises(KeystoreError) as excinfo:
            unseal(bytes(corrupted), PASS)
        assert not isinstance(excinfo.value, WrongPassphrase), index
        assert CLEAR_CORRUPTION_MESSAGE.fullmatch(str(excinfo.value)), (index, excinfo.value)


def test_truncated_anywhere():
    for length in range(len(BLOB)):
        expected = "not a pqcall keystore" if length < 4 else "keystore is truncated"
        with pytest.raises(KeystoreError, match=f"^{expected}$"):
            unseal(BLOB[:length], PASS)


def test_trailing_bytes():
    with pytest.raises(KeystoreError, match=r"^keystore has trailing bytes$"):
        unseal(BLOB + b"\0", PASS)


@pytest.mark.parametrize("offset", [2, encoding.HEADER_LENGTH], ids=["encoding", "keystore"])
def test_unknown_version(offset):
    blob = bytearray(BLOB)
    blob[offset] = 7
    with pytest.raises(KeystoreError, match=r"^keystore version 7 is not supported$"):
        unseal(bytes(blob), PASS)


def test_other_kind_is_not_a_keystore():
    with pytest.raises(KeystoreError, match=r"not a pqcall keystore \(expected keystore, got acc"):
        unseal(PAYLOAD, PASS)


def test_unknown_kdf():
    body = bytearray(BLOB[:-32])
    body[encoding.HEADER_LENGTH + 1] = 9
    with pytest.raises(KeystoreError, match=r"^keystore uses unknown KDF 9$"):
        unseal(reseal_checksum(bytes(body)), PASS)


def test_absurd_kdf_cost_is_refused_before_running():
    body = bytearray(BLOB[:-32])
    body[encoding.HEADER_LENGTH + 2 : encoding.HEADER_LENGTH + 6] = encoding.u32(2**31)
    with pytest.raises(KeystoreError, match=r"^keystore KDF parameters are out of range$"):
        unseal(reseal_checksum(bytes(body)), PASS)


def test_kdf_params_are_authenticated():
    # whoever lowers (or changes) the cost without the passphrase breaks the AEAD
    body = bytearray(BLOB[:-32])
    iterations_at = encoding.HEADER_LENGTH + 2 + 4
    body[iterations_at : iterations_at + 4] = encoding.u32(2)
    with pytest.raises(WrongPassphrase):
        unseal(reseal_checksum(bytes(body)), PASS)


def test_out_of_range_params_refused_at_seal():
    with pytest.raises(KeystoreError, match="out of range"):
        seal(PAYLOAD, PASS, Argon2idParams(memory_kib=4, iterations=1, lanes=1))
    with pytest.raises(KeystoreError, match="out of range"):
        seal(PAYLOAD, PASS, ScryptParams(log2_n=30, r=8, p=1))


def test_layout_prefix_length():
    assert len(BLOB) == PREFIX_LENGTH + len(PAYLOAD) + 16 + 32


@given(st.binary(max_size=400))
def test_unseal_arbitrary_bytes_raises_only_keystore_errors(data):
    for blob in (data, encoding.encode(Kind.KEYSTORE, b"\x01" + data)):
        with pytest.raises(KeystoreError):
            unseal(blob, PASS)


# --- files ---


def test_file_round_trip_and_mode(tmp_path):
    path = tmp_path / "keystore"
    write_keystore(path, PAYLOAD, PASS, CHEAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keystore(path, PASS) == PAYLOAD
    assert os.listdir(tmp_path) == ["keystore"]


def test_mode_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        write_keystore(tmp_path / "k", PAYLOAD, PASS, CHEAP)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_temp_file_is_never_readable_by_others(tmp_path, monkeypatch):
    seen = []
    real_write = os.write

    def spying_write(fd, data):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spying_write)
    old = os.umask(0)
    try:
        write_keystore(tmp_path / "k", PAYLOAD, PASS, CHEAP)
    finally:
        os.umask(old)
    assert seen and all(mode == 0o600 for mode in seen)


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "keystore"
    write_keystore(path, b"old", PASS, CHEAP)
    write_keystore(path, b"new", "other passphrase", CHEAP)
    assert read_keystore(path, "other passphrase") == b"new"


def test_failed_write_leaves_old_keystore_intact(tmp_path, monkeypatch):
    path = tmp_path / "keystore"
    write_keystore(path, b"old", PASS, CHEAP)

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(KeystoreError, match=r"^cannot write keystore .*: Input/output error$"):
        write_keystore(path, b"new", PASS, CHEAP)
    monkeypatch.undo()
    assert read_keystore(path, PASS) == b"old"
    assert os.listdir(tmp_path) == ["keystore"]  # no temporary file left behind


def test_failed_seal_writes_nothing(tmp_path):
    path = tmp_path / "keystore"
    write_keystore(path, b"old", PASS, CHEAP)
    with pytest.raises(KeystoreError, match="passphrase is empty"):
        write_keystore(path, b"new", "", CHEAP)
    assert read_keystore(path, PASS) == b"old"
    assert os.listdir(tmp_path) == ["keystore"]


def test_write_into_missing_directory(tmp_path):
    with pytest.raises(KeystoreError, match=r"^cannot write keystore .*: No such file"):
        write_keystore(tmp_path / "nope" / "k", PAYLOAD, PASS, CHEAP)


def test_missing_file(tmp_path):
    path = tmp_path / "absent"
    with pytest.raises(KeystoreError, match=f"^no keystore at {path}$"):
        read_keystore(path, PASS)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "keystore"
    write_keystore(path, PAYLOAD, PASS, CHEAP)
    path.chmod(mode)
    with pytest.raises(KeystoreError, match=rf"accessible by others \(mode {mode:04o}\)"):
        read_keystore(path, PASS)


def test_directory_is_not_a_keystore(tmp_path):
    with pytest.raises(KeystoreError, match="is not a regular file"):
        read_keystore(tmp_path, PASS)


def test_huge_file_refused(tmp_path):
    path = tmp_path / "keystore"
    path.write_bytes(b"\0" * (keystore.MAX_KEYSTORE_BYTES + 1))
    path.chmod(0o600)
    with pytest.raises(KeystoreError, match="is too large"):
        read_keystore(path, PASS)


def test_corrupt_file_on_disk(tmp_path):
    path = tmp_path / "keystore"
    write_keystore(path, PAYLOAD, PASS, CHEAP)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(KeystoreError, match=r"^keystore is corrupt \(checksum mismatch\)$"):
        read_keystore(path, PASS)


def test_wrong_passphrase_from_file(tmp_path):
    path = tmp_path / "keystore"
    write_keystore(path, PAYLOAD, PASS, CHEAP)
    with pytest.raises(WrongPassphrase, match=r"^wrong passphrase$"):
        read_keystore(path, "nope")


# --- passphrase sources ---


def private_file(path, content: bytes):
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def test_passphrase_from_env_var():
    assert passphrase_from_env({"PQCALL_PASSPHRASE": "s3cret "}) == "s3cret "


def test_no_source_returns_none():
    assert passphrase_from_env({}) is None


def test_empty_env_var_refused():
    with pytest.raises(KeystoreError, match=r"^passphrase in PQCALL_PASSPHRASE is empty$"):
        passphrase_from_env({"PQCALL_PASSPHRASE": ""})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"pass phrase\n", "pass phrase", id="newline"),
        pytest.param(b"pass phrase", "pass phrase", id="no-newline"),
        pytest.param(b"pass phrase\r\n", "pass phrase", id="crlf"),
        pytest.param(b"first\nsecond\n", "first", id="first-line"),
        pytest.param(" caf\u00e9 \n".encode(), " caf\u00e9 ", id="spaces-kept"),
    ],
)
def test_passphrase_file(tmp_path, content, expected):
    path = private_file(tmp_path / "pass", content)
    assert passphrase_from_env({}, passphrase_file=path) == expected
    assert passphrase_from_env({"PQCALL_PASSPHRASE_FILE": str(path)}) == expected


def test_passphrase_file_argument_wins_over_env(tmp_path):
    path = private_file(tmp_path / "pass", b"from file\n")
    env = {"PQCALL_PASSPHRASE": "from env"}
    assert passphrase_from_env(env, passphrase_file=path) == "from file"
    assert passphrase_from_env({**env, "PQCALL_PASSPHRASE_FILE": str(path)}) == "from env"


@pytest.mark.parametrize("content", [b"", b"\n", b"\nsecond line\n"])
def test_empty_passphrase_file_refused(tmp_path, content):
    path = private_file(tmp_path / "pass", content)
    with pytest.raises(KeystoreError, match=f"^passphrase file {path} is empty$"):
        passphrase_from_env({}, passphrase_file=path)


def test_passphrase_file_missing_or_open(tmp_path):
    with pytest.raises(KeystoreError, match=r"^no passphrase file at"):
        passphrase_from_env({}, passphrase_file=tmp_path / "absent")
    path = tmp_path / "pass"
    path.write_bytes(b"secret\n")
    path.chmod(0o644)
    with pytest.raises(KeystoreError, match="accessible by others"):
        passphrase_from_env({}, passphrase_file=path)


def test_passphrase_file_not_utf8(tmp_path):
    path = private_file(tmp_path / "pass", b"\xff\xfe\n")
    with pytest.raises(KeystoreError, match="is not UTF-8"):
        passphrase_from_env({}, passphrase_file=path)


def test_env_passphrase_unlocks_keystore(tmp_path, monkeypatch):
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASS)
    path = tmp_path / "keystore"
    write_keystore(path, PAYLOAD, PASS, CHEAP)
    passphrase = passphrase_from_env()
    assert passphrase is not None
    assert read_keystore(path, passphrase) == PAYLOAD


# --- account secrets ---


def test_account_secrets_round_trip_through_keystore(tmp_path):
    path = tmp_path / "keystore"
    write_keystore(path, SECRETS.encode(), PASS, CHEAP)
    restored = AccountSecrets.decode(read_keystore(path, PASS))
    assert restored.identity.public_key() == SECRETS.identity.public_key()
    assert restored.file_key.public_key() == SECRETS.file_key.public_key()
    assert restored.previous_file_keys == ()


def test_rotation_keeps_previous_keys():
    new_key = FilePrivateKey.generate()
    rotated = SECRETS.rotate_file_key(new_key)
    restored = AccountSecrets.decode(rotated.encode())
    assert restored.file_key.public_key() == new_key.public_key()
    assert [k.public_key() for k in restored.file_keys()] == [
        new_key.public_key(),
        SECRETS.file_key.public_key(),
    ]


def test_unknown_fields_are_preserved():
    body = encoding.decode(Kind.ACCOUNT_SECRETS, PAYLOAD) + b"\x99" + encoding.vec16(b"future")
    restored = AccountSecrets.decode(encoding.encode(Kind.ACCOUNT_SECRETS, body))
    assert restored.extensions == ((0x99, b"future"),)
    assert AccountSecrets.decode(restored.encode()).extensions == ((0x99, b"future"),)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([1], id="no-file-key"),
        pytest.param([2], id="no-identity"),
        pytest.param([1, 2, 2], id="two-file-keys"),
    ],
)
def test_account_secrets_need_one_identity_and_one_file_key(fields):
    values = {1: SECRETS.identity.encode(), 2: SECRETS.file_key.encode()}
    body = b"".join(encoding.u8(tag) + encoding.vec16(values[tag]) for tag in fields)
    with pytest.raises(DecodeError, match="exactly one identity and one file key"):
        AccountSecrets.decode(encoding.encode(Kind.ACCOUNT_SECRETS, body))


def test_account_secrets_repr_has_no_secrets():
    text = repr(SECRETS)
    for secret in (SECRETS.identity.encode(), SECRETS.file_key.encode()):
        assert secret[encoding.HEADER_LENGTH :][:8].hex() not in text


@given(st.binary(max_size=400))
def test_account_secrets_decode_arbitrary_bytes(data):
    for blob in (data, encoding.encode(Kind.ACCOUNT_SECRETS, data)):
        try:
            AccountSecrets.decode(blob)
        except PqcallError:
            pass


def test_passphrase_that_is_not_unicode_refused():
    with pytest.raises(KeystoreError, match="passphrase is not valid Unicode"):
        seal(PAYLOAD, "\ud800", CHEAP)


def test_concurrent_unseals_in_threads_finish():
    # two Argon2id derivations with several lanes at once in one process hang in
    # cryptography 50 unless serialized; a phone unlocks in a worker thread
    import concurrent.futures

    params = keystore.Argon2idParams(memory_kib=16 * 1024, iterations=1, lanes=4)
    blob = seal(b"secret", "pass", params)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(unseal, blob, "pass") for _ in range(4)]
        done, pending = concurrent.futures.wait(futures, timeout=60)
    assert not pending, "an unseal never returned"
    assert [future.result() for future in done] == [b"secret"] * 4
