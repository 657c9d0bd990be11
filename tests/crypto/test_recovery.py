"""Recovery words: 24 BIP-39 words, a checksum, and a key derived from them deterministically."""

import pytest
from mnemonic import Mnemonic

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.recovery import (
    RECOVER_CONTEXT,
    InvalidRecoveryWords,
    key_from_secret,
    new_recovery_words,
    normalize_words,
    recover_signed_data,
    recovery_key,
    recovery_secret,
)
from pqcall.exceptions import BadSignature

WORDS = new_recovery_words()
# BIP-39's own English vector (trezor/python-mnemonic vectors.json): 32 bytes of 0x7f
VECTOR_SECRET = bytes([0x7F]) * 32
VECTOR_WORDS = (
    "legal winner thank year wave sausage worth useful legal winner thank year wave sausage "
    "worth useful legal winner thank year wave sausage worth title"
)


def test_words_are_24_from_the_list_and_fresh_each_time():
    words = WORDS.split(" ")
    assert len(words) == 24
    assert set(words) <= set(Mnemonic("english").wordlist)
    assert new_recovery_words() != WORDS


def test_bip39_vector_round_trips():
    assert recovery_secret(VECTOR_WORDS) == VECTOR_SECRET
    assert recovery_key(VECTOR_WORDS).encode() == key_from_secret(VECTOR_SECRET).encode()


def test_same_words_same_key_and_typing_is_forgiving():
    key = recovery_key(WORDS)
    assert recovery_key(WORDS).public_key() == key.public_key()
    sloppy = "  " + WORDS.upper().replace(" ", ",  ") + "\n"
    assert recovery_key(sloppy).public_key() == key.public_key()
    prefixes = " ".join(word[:4] for word in WORDS.split(" "))
    assert normalize_words(prefixes) == WORDS


def test_different_words_different_key():
    assert recovery_key(new_recovery_words()).public_key() != recovery_key(WORDS).public_key()


def test_key_is_not_one_of_the_seed_bytes_directly():
    # the seeds are HKDF outputs under two labels, not the secret itself
    assert (
        key_from_secret(VECTOR_SECRET).encode()
        != IdentityPrivateKey(VECTOR_SECRET, VECTOR_SECRET).encode()
    )


def test_wrong_checksum_is_refused():
    words = WORDS.split(" ")
    mnemonic = Mnemonic("english")
    # change the first word to another: the checksum in the last word no longer matches
    # (a one-in-256 chance it still does; try the next word until it fails)
    for index in range(1, 2048):
        other = mnemonic.wordlist[(mnemonic.wordlist.index(words[0]) + index) % 2048]
        candidate = " ".join([other, *words[1:]])
        if not mnemonic.check(candidate):
            break
    with pytest.raises(InvalidRecoveryWords, match="do not check out"):
        recovery_key(candidate)


def test_swapped_words_are_refused():
    words = WORDS.split(" ")
    for i in range(23):
        if words[i] != words[i + 1]:
            swapped = [*words[:i], words[i + 1], words[i], *words[i + 2 :]]
            if not Mnemonic("english").check(" ".join(swapped)):
                break
    with pytest.raises(InvalidRecoveryWords):
        recovery_key(" ".join(swapped))


def test_unknown_word_is_named():
    words = WORDS.split(" ")
    words[4] = "pqcallx"
    with pytest.raises(InvalidRecoveryWords, match=r"word 5 \('pqcallx'\)"):
        recovery_key(" ".join(words))


@pytest.mark.parametrize("count", [0, 12, 23, 25])
def test_wrong_count_is_refused(count):
    words = (WORDS.split(" ") * 2)[:count]
    with pytest.raises(InvalidRecoveryWords, match=f"got {count}"):
        recovery_key(" ".join(words))


def test_invalid_words_is_a_value_error_too():
    with pytest.raises(ValueError):
        recovery_key("not words")


def test_recover_signature_binds_server_name_key_and_list():
    key = recovery_key(WORDS)
    new_account = IdentityPrivateKey.generate().public_key().encode()
    data = recover_signed_data("pqcall.example", "bob", new_account, b"list")
    signature = key.sign(data, context=RECOVER_CONTEXT)
    key.public_key().verify(signature, data, context=RECOVER_CONTEXT)
    others = [
        recover_signed_data("other.example", "bob", new_account, b"list"),
        recover_signed_data("pqcall.example", "bobby", new_account, b"list"),
        recover_signed_data(
            "pqcall.example", "bob", IdentityPrivateKey.generate().public_key().encode(), b"list"
        ),
        recover_signed_data("pqcall.example", "bob", new_account, b"list2"),
    ]
    for other in others:
        assert other != data
        with pytest.raises(BadSignature):
            key.public_key().verify(signature, other, context=RECOVER_CONTEXT)
