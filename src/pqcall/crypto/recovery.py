"""The recovery key: a hybrid identity derived from 24 words the person writes down.

At registration the client draws a 32-byte recovery secret and shows it once
as 24 BIP-39 words (English list, the last word carries an 8-bit checksum;
``mnemonic`` is Trezor's reference implementation). The secret is never
stored, on the device or the server. From it a hybrid identity key is derived
deterministically::

    ed25519 seed = HKDF(salt = RECOVERY_SALT, ikm = secret, info = ED25519_INFO, 32 bytes)
    ML-DSA seed  = HKDF(salt = RECOVERY_SALT, ikm = secret, info = MLDSA_INFO, 32 bytes)

(HKDF-SHA256, RFC 5869, through ``cryptography``.) Its public half travels in
the account's signed device list, so the server stores it (and contacts can
see it) without ever holding the secret.

After every device is lost, the words sign :func:`recover_signed_data` (a new
account key, and the first device list that key signed) with context
:data:`RECOVER_CONTEXT`; the server checks it against the stored recovery
public key and replaces the account. Contacts then see a *real* key change:
nobody can tell a recovery from a takeover without comparing safety numbers,
so the loud warning stays.
"""

from __future__ import annotations

import os
from functools import cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mnemonic import Mnemonic

from pqcall.crypto import encoding
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import LocalProtocolError

RECOVER_CONTEXT = b"pqcall recover"
RECOVERY_SALT = b"pqcall recovery key v1"
ED25519_INFO = b"pqcall recovery ed25519 seed"
MLDSA_INFO = b"pqcall recovery ml-dsa-65 seed"
SECRET_LENGTH = 32
WORD_COUNT = 24
SEED_LENGTH = 32


class InvalidRecoveryWords(LocalProtocolError, ValueError):
    """The words typed are not 24 BIP-39 words with a valid checksum (the message says why)."""


@cache
def _wordlist() -> Mnemonic:
    return Mnemonic("english")


def new_recovery_words() -> str:
    """24 words encoding a fresh random 32-byte recovery secret (show once, never store)."""
    return str(_wordlist().to_mnemonic(os.urandom(SECRET_LENGTH)))


def normalize_words(words: str) -> str:
    """The words in canonical form: lower case, single spaces, 4-letter prefixes expanded.

    Raises:
        InvalidRecoveryWords: not 24 words, a word not in the list, or a wrong checksum.
    """
    if not isinstance(words, str):
        raise InvalidRecoveryWords("recovery words must be text")
    mnemonic = _wordlist()
    typed = words.lower().replace(",", " ").split()
    if len(typed) != WORD_COUNT:
        raise InvalidRecoveryWords(f"expected {WORD_COUNT} recovery words, got {len(typed)}")
    known = set(mnemonic.wordlist)
    expanded = []
    for position, word in enumerate(typed, 1):
        full = mnemonic.expand_word(word)
        if full not in known:
            raise InvalidRecoveryWords(f"recovery word {position} ({word!r}) is not in the list")
        expanded.append(full)
    text = " ".join(expanded)
    if not mnemonic.check(text):
        raise InvalidRecoveryWords("recovery words do not check out (a word is wrong or swapped)")
    return text


def recovery_secret(words: str) -> bytes:
    """The 32-byte secret the words encode.

    Raises:
        InvalidRecoveryWords: see :func:`normalize_words`.
    """
    return bytes(_wordlist().to_entropy(normalize_words(words)))


def recovery_key(words: str) -> IdentityPrivateKey:
    """The recovery identity derived from the words (same words, same key).

    Raises:
        InvalidRecoveryWords: see :func:`normalize_words`.
    """
    return key_from_secret(recovery_secret(words))


def key_from_secret(secret: bytes) -> IdentityPrivateKey:
    """The recovery identity derived from a 32-byte secret (see the module docstring)."""
    if len(secret) != SECRET_LENGTH:
        raise LocalProtocolError("recovery secret must be 32 bytes")
    ed_seed = _hkdf(secret, ED25519_INFO)
    mldsa_seed = _hkdf(secret, MLDSA_INFO)
    return IdentityPrivateKey(ed_seed, mldsa_seed)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=SEED_LENGTH, salt=RECOVERY_SALT, info=info
    ).derive(secret)


def recover_signed_data(
    server_name: str,
    username: str,
    new_account_public_encoded: bytes,
    signed_device_list_encoded: bytes,
) -> bytes:
    """What the recovery key signs (context :data:`RECOVER_CONTEXT`) to replace an account.

    Binds the server (a signature for one server is useless at another), the
    name, the new account key and the new signed device list.
    """
    return (
        encoding.text(server_name)
        + encoding.text(username)
        + encoding.vec16(new_account_public_encoded)
        + encoding.vec32(signed_device_list_encoded)
    )
