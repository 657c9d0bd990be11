"""SFrame: RFC 9605 known answers, and the call-level sender and receiver.

Vectors: RFC 9605 Appendix C (https://www.rfc-editor.org/rfc/rfc9605#appendix-C),
as published by the IETF SFrame working group in
https://github.com/sframe-wg/sframe (test-vectors/test-vectors.json), copied to
tests/vectors/sframe-rfc9605.json. Sections: ``header`` (section 4.3),
``aes_ctr_hmac`` (section 4.5.1), ``sframe`` (sections 4.4.2-4.4.4, suites 1-5).
The file's ``aes_256_ctr_hmac`` section (ids 6-8, not RFC 9605 suites) checks
the AES-CTR + HMAC composition with other parameters.
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from pqcall.crypto.replay import WINDOW_SIZE
from pqcall.crypto.sframe import (
    MAX_CTR,
    MAX_HEADER_LENGTH,
    MAX_KID,
    RATCHET_LABEL,
    AesCtrHmac,
    CipherSuite,
    FrameKey,
    Header,
    decrypt,
    derive_key_salt,
    encrypt,
    extract_secret,
    frame_nonce,
    key_salt_labels,
    new_aead,
    parse_header,
    ratchet_base_key,
)
from pqcall.crypto.sframe_context import (
    DEFAULT_PAD_TO,
    MAX_RATCHET_STEPS_AHEAD,
    PREVIOUS_KEY_GRACE_SECONDS,
    REKEY_AFTER_PACKETS,
    REKEY_AFTER_SECONDS,
    ReceiverStats,
    SFrameReceiver,
    SFrameSender,
    pad,
    unpad,
)
from pqcall.exceptions import DecodeError, LocalProtocolError

from .sframe_utils import SENDER_ID, SUITE, sframe_pair

VECTORS: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "sframe-rfc9605.json").read_text()
)


def unhex(value: str) -> bytes:
    return bytes.fromhex(value)


# RFC 9605 Appendix C


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=f"kid={v['kid']:#x}-ctr={v['ctr']:#x}") for v in VECTORS["header"]],
)
def test_header_vector(vector):
    encoded = unhex(vector["encoded"])
    assert Header(vector["kid"], vector["ctr"]).serialize() == encoded
    assert Header.parse(encoded + b"payload") == (
        Header(vector["kid"], vector["ctr"]),
        len(encoded),
    )
    assert parse_header(encoded + b"payload") == (vector["kid"], vector["ctr"], len(encoded))


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=CipherSuite(v["cipher_suite"]).name) for v in VECTORS["aes_ctr_hmac"]],
)
def test_aes_ctr_hmac_vector(vector):
    suite = CipherSuite(vector["cipher_suite"])
    key = unhex(vector["key"])
    assert key == unhex(vector["enc_key"]) + unhex(vector["auth_key"])
    aead = new_aead(suite, key)
    assert isinstance(aead, AesCtrHmac)
    nonce, aad, pt, ct = (unhex(vector[name]) for name in ("nonce", "aad", "pt", "ct"))
    assert aead.encrypt(nonce, pt, aad) == ct
    assert aead.decrypt(nonce, ct, aad) == pt


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=f"id-{v['cipher_suite']}") for v in VECTORS["aes_256_ctr_hmac"]],
)
def test_aes_256_ctr_hmac_vector(vector):
    nonce, aad, pt, ct = (unhex(vector[name]) for name in ("nonce", "aad", "pt", "ct"))
    aead = AesCtrHmac(
        unhex(vector["key"]),
        enc_key_length=32,
        tag_length=len(ct) - len(pt),
        hash_algorithm=hashes.SHA512(),
    )
    assert aead.encrypt(nonce, pt, aad) == ct
    assert aead.decrypt(nonce, ct, aad) == pt


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=CipherSuite(v["cipher_suite"]).name) for v in VECTORS["sframe"]],
)
def test_sframe_vector(vector):
    suite = CipherSuite(vector["cipher_suite"])
    kid, ctr, base_key = vector["kid"], vector["ctr"], unhex(vector["base_key"])
    metadata, pt, ct = unhex(vector["metadata"]), unhex(vector["pt"]), unhex(vector["ct"])
    # key derivation, section 4.4.2
    assert extract_secret(suite, base_key) == unhex(vector["sframe_secret"])
    assert key_salt_labels(suite, kid) == (
        unhex(vector["sframe_key_label"]),
        unhex(vector["sframe_salt_label"]),
    )
    key, salt = derive_key_salt(suite, kid, base_key)
    assert key == unhex(vector["sframe_key"])
    assert salt == unhex(vector["sframe_salt"])
    # nonce and AAD, section 4.4.3
    assert frame_nonce(salt, ctr) == unhex(vector["nonce"])
    assert Header(kid, ctr).serialize() + metadata == unhex(vector["aad"])
    # encryption and decryption, sections 4.4.3 and 4.4.4
    frame_key = FrameKey(suite, kid, key, salt)
    assert encrypt(frame_key, ctr, metadata, pt) == ct
    assert decrypt(frame_key, metadata, ct) == pt
    assert decrypt(FrameKey.derive(suite, kid, base_key), metadata, ct) == pt


def test_suite_parameters_match_rfc_table_1():
    table = {suite: suite.parameters for suite in CipherSuite}
    assert [(p.nh, p.nka, p.nk, p.nn, p.nt) for p in table.values()] == [
        (32, 16, 48, 12, 10),
        (32, 16, 48, 12, 8),
        (32, 16, 48, 12, 4),
        (32, None, 16, 12, 16),
        (64, None, 32, 12, 16),
    ]
    assert [int(suite) for suite in table] == [1, 2, 3, 4, 5]


# header


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "SFrame header is empty", id="empty"),
        pytest.param(b"\x80", "SFrame header has truncated KID", id="kid-missing"),
        pytest.param(b"\xf0" + bytes(7), "SFrame header has truncated KID", id="kid-short"),
        pytest.param(b"\x08", "SFrame header has truncated CTR", id="ctr-missing"),
        pytest.param(b"\x8f\x09" + bytes(7), "SFrame header has truncated CTR", id="ctr-short"),
        pytest.param(b"\x80\x07", "SFrame header has non-minimal KID", id="kid-fits-config"),
        pytest.param(b"\x90\x00\x08", "SFrame header has non-minimal KID", id="kid-leading-0"),
        pytest.param(b"\x08\x00", "SFrame header has non-minimal CTR", id="ctr-zero"),
        pytest.param(b"\x09\x00\xff", "SFrame header has non-minimal CTR", id="ctr-leading-0"),
    ],
)
def test_malformed_header(data, message):
    with pytest.raises(DecodeError, match=f"^{message}$"):
        Header.parse(data)
    with pytest.raises(DecodeError, match=f"^{message}$"):
        parse_header(data)


@pytest.mark.parametrize(
    ("kid", "ctr", "message"),
    [
        pytest.param(-1, 0, "SFrame KID must be a 64-bit unsigned integer", id="kid-negative"),
        pytest.param(MAX_KID + 1, 0, "SFrame KID must be a 64-bit unsigned integer", id="kid-big"),
        pytest.param(0, -1, "SFrame CTR must be a 64-bit unsigned integer", id="ctr-negative"),
        pytest.param(0, MAX_CTR + 1, "SFrame CTR must be a 64-bit unsigned integer", id="ctr-big"),
    ],
)
def test_header_out_of_range(kid, ctr, message):
    with pytest.raises(LocalProtocolError, match=f"^{message}$"):
        Header(kid, ctr)


@given(st.integers(0, MAX_KID), st.integers(0, MAX_CTR), st.binary(max_size=8))
def test_header_round_trip(kid, ctr, rest):
    encoded = Header(kid, ctr).serialize()
    assert 1 <= len(encoded) <= MAX_HEADER_LENGTH
    assert Header.parse(encoded + rest) == (Header(kid, ctr), len(encoded))
    assert parse_header(encoded + rest) == (kid, ctr, len(encoded))


@given(st.binary(max_size=24))
def test_header_parse_raises_only_decode_error(data):
    try:
        header, length = Header.parse(data)
    except DecodeError:
        return
    # whatever parses is canonical
    assert data[:length] == header.serialize()


# AEADs and frame encryption


@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
def test_frame_round_trip_and_tampering(suite):
    key = FrameKey.derive(suite, 0x1234, os.urandom(32))
    packet = encrypt(key, 99, b"meta", b"frame payload")
    assert decrypt(key, b"meta", packet) == b"frame payload"
    assert len(packet) == len(Header(0x1234, 99).serialize()) + 13 + suite.parameters.nt
    for index in range(len(packet)):
        tampered = bytearray(packet)
        tampered[index] ^= 0x01
        with pytest.raises((InvalidTag, DecodeError)):
            decrypt(key, b"meta", bytes(tampered))
    with pytest.raises(InvalidTag):
        decrypt(key, b"other", packet)
    with pytest.raises(InvalidTag):
        decrypt(key, b"meta", packet[:-1])
    with pytest.raises(InvalidTag):
        decrypt(FrameKey.derive(suite, 0x1234, os.urandom(32)), b"meta", packet)


@given(st.integers(0, MAX_KID), st.integers(0, MAX_CTR))
def test_encrypt_writes_the_serialized_header(kid, ctr):
    # encrypt builds the header from the key's precomputed KID half: it must match
    key = FrameKey(SUITE, kid, bytes(SUITE.parameters.nk), bytes(SUITE.parameters.nn))
    header = Header(kid, ctr).serialize()
    packet = encrypt(key, ctr, b"", b"x")
    assert packet.startswith(header)
    assert decrypt(key, b"", packet) == b"x"


@pytest.mark.parametrize("ctr", [-1, MAX_CTR + 1])
def test_encrypt_rejects_a_counter_out_of_range(ctr):
    key = FrameKey(SUITE, 0, bytes(SUITE.parameters.nk), bytes(SUITE.parameters.nn))
    with pytest.raises(LocalProtocolError, match=r"^SFrame CTR must be a 64-bit unsigned integer$"):
        encrypt(key, ctr, b"", b"x")


def test_decrypt_refuses_a_frame_for_another_kid():
    base_key = os.urandom(32)
    packet = encrypt(FrameKey.derive(SUITE, 1, base_key), 0, b"", b"x")
    with pytest.raises(InvalidTag):
        decrypt(FrameKey.derive(SUITE, 2, base_key), b"", packet)


@pytest.mark.parametrize(
    "suite", [s for s in CipherSuite if s.parameters.nka], ids=lambda s: s.name
)
def test_aes_ctr_hmac_rejects_data_shorter_than_a_tag(suite):
    aead = new_aead(suite, bytes(suite.parameters.nk))
    with pytest.raises(InvalidTag):
        aead.decrypt(bytes(12), bytes(suite.parameters.nt - 1), b"")


def test_aead_key_length_is_checked():
    with pytest.raises(LocalProtocolError, match=r"^AES_256_GCM_SHA512_128 key must be 32 bytes$"):
        new_aead(CipherSuite.AES_256_GCM_SHA512_128, bytes(16))
    with pytest.raises(LocalProtocolError, match=r"^AES-CTR-HMAC key has the wrong length$"):
        AesCtrHmac(bytes(16), enc_key_length=16, tag_length=4, hash_algorithm=hashes.SHA256())
    with pytest.raises(
        LocalProtocolError, match=r"^AES_128_GCM_SHA256_128 is not an AES-CTR-HMAC suite$"
    ):
        AesCtrHmac.for_suite(CipherSuite.AES_128_GCM_SHA256_128, bytes(16))


@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
def test_ratchet_is_hkdf_with_the_ratchet_label(suite):
    # RFC 9605 section 5.1; one-shot HKDF is Extract then Expand (RFC 5869)
    base_key = os.urandom(16)
    expected = HKDF(suite.hash_algorithm(), suite.parameters.nh, None, RATCHET_LABEL).derive(
        base_key
    )
    assert ratchet_base_key(suite, base_key) == expected


# inner framing and padding


def test_pad_format():
    assert pad(b"ab", 4) == b"\x00\x02ab\x00\x00"
    assert pad(b"abcd", 4) == b"\x00\x04abcd"
    assert pad(b"abcde", 4) == b"\x00\x05abcde" + bytes(3)
    assert pad(b"", 4) == b"\x00\x00" + bytes(4)
    assert pad(b"abc", 0) == b"\x00\x03abc"


@pytest.mark.parametrize("length", [0, 1, 79, 80, 81, 160, 161, 0xFFFF])
def test_unpad_inverts_pad(length):
    payload = os.urandom(length)
    assert unpad(pad(payload, DEFAULT_PAD_TO)) == payload


@pytest.mark.parametrize(
    ("plaintext", "message"),
    [
        pytest.param(b"", "SFrame plaintext has truncated length", id="empty"),
        pytest.param(b"\x00", "SFrame plaintext has truncated length", id="one-byte"),
        pytest.param(b"\x00\x03ab", "SFrame plaintext has truncated payload", id="short"),
        pytest.param(b"\x00\x01a\x00\x01", "SFrame plaintext has nonzero padding", id="padding"),
    ],
)
def test_unpad_rejects(plaintext, message):
    with pytest.raises(DecodeError, match=f"^{message}$"):
        unpad(plaintext)


def test_pad_rejects_long_payload_and_negative_size():
    with pytest.raises(LocalProtocolError, match=r"^SFrame payload longer than 65535 bytes$"):
        pad(bytes(0x10000), 80)
    with pytest.raises(LocalProtocolError, match=r"^pad_to must not be negative$"):
        pad(b"", -1)


# sender and receiver


@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
def test_round_trip(suite):
    sender, receiver = sframe_pair(suite)
    for index, payload in enumerate([b"", b"hello", os.urandom(300)]):
        packet = sender.protect(payload, b"rtp", now=index * 0.02)
        assert receiver.unprotect(packet, b"rtp", now=index * 0.02) == payload
    assert receiver.stats == ReceiverStats(accepted=3)


def test_padding_gives_constant_packet_sizes():
    sender, _ = sframe_pair()
    for _ in range(300):  # past the counters whose header is shorter
        sender.protect(b"", now=0.0)
    sizes = set()
    for length in list(range(DEFAULT_PAD_TO + 1)) * 2:
        packet = sender.protect(os.urandom(length), now=0.0)
        sizes.add(len(packet))
    # header (config, KID in 1 byte, CTR in 2 bytes) + u16 length + padded payload + tag
    assert sizes == {1 + 1 + 2 + 2 + DEFAULT_PAD_TO + SUITE.parameters.nt}


def test_longer_payload_is_rounded_up_to_a_multiple():
    sender, _ = sframe_pair(pad_to=80)
    sizes = [len(sender.protect(bytes(length), now=0.0)) for length in (81, 160, 161)]
    assert sizes[1] - sizes[0] == 0
    assert sizes[2] - sizes[1] == 80


def test_no_padding():
    sender, receiver = sframe_pair(pad_to=0)
    packet = sender.protect(b"abc", now=0.0)
    assert len(packet) == 2 + 2 + 3 + SUITE.parameters.nt  # header is config + KID byte
    assert receiver.unprotect(packet, now=0.0) == b"abc"


@pytest.fixture
def pair() -> tuple[SFrameSender, SFrameReceiver]:
    return sframe_pair()


def test_tampered_header_is_rejected(pair):
    sender, receiver = pair
    packet = bytearray(sender.protect(b"voice", now=0.0))
    packet[0] ^= 0x01  # CTR 0 becomes 1
    assert receiver.unprotect(bytes(packet), now=0.0) is None
    assert receiver.stats == ReceiverStats(auth_failed=1)


def test_tampered_ciphertext_is_rejected(pair):
    sender, receiver = pair
    packet = bytearray(sender.protect(b"voice", now=0.0))
    packet[4] ^= 0x80
    assert receiver.unprotect(bytes(packet), now=0.0) is None
    assert receiver.stats == ReceiverStats(auth_failed=1)


def test_tampered_tag_is_rejected(pair):
    sender, receiver = pair
    packet = bytearray(sender.protect(b"voice", now=0.0))
    packet[-1] ^= 0x01
    assert receiver.unprotect(bytes(packet), now=0.0) is None
    assert receiver.stats == ReceiverStats(auth_failed=1)


def test_truncated_packets_are_rejected(pair):
    sender, receiver = pair
    packet = sender.protect(b"voice", now=0.0)
    assert receiver.unprotect(packet[:-1], now=0.0) is None
    assert receiver.unprotect(packet[:2], now=0.0) is None  # the header alone
    assert receiver.unprotect(packet[:1], now=0.0) is None  # config byte, KID cut off
    assert receiver.unprotect(b"", now=0.0) is None
    assert receiver.stats == ReceiverStats(auth_failed=2, malformed=2)
    # none of it disturbs the genuine packet
    assert receiver.unprotect(packet, now=0.0) == b"voice"


def test_wrong_key_and_wrong_metadata_are_rejected():
    sender, _ = sframe_pair()
    _, other_receiver = sframe_pair()
    packet = sender.protect(b"voice", b"meta", now=0.0)
    assert other_receiver.unprotect(packet, b"meta", now=0.0) is None
    assert other_receiver.unprotect(packet, b"atem", now=0.0) is None
    assert other_receiver.stats == ReceiverStats(auth_failed=2)


def test_other_sender_id_is_an_unknown_kid():
    sender, _ = sframe_pair(sender_id=2)
    _, receiver = sframe_pair(sender_id=3)
    assert receiver.unprotect(sender.protect(b"voice", now=0.0), now=0.0) is None
    assert receiver.stats == ReceiverStats(unknown_kid=1)


def test_inner_framing_is_checked_after_authentication(pair):
    sender, receiver = pair
    # a key holder that skips the framing: valid SFrame, invalid plaintext
    base_key = os.urandom(64)
    forger = FrameKey.derive(SUITE, sender.kid, base_key)
    receiver = SFrameReceiver(SUITE, base_key, SENDER_ID)
    assert receiver.unprotect(encrypt(forger, 0, b"", b"\x00\x09ab"), now=0.0) is None
    assert receiver.stats == ReceiverStats(malformed=1)


def test_replayed_packet_is_rejected(pair):
    sender, receiver = pair
    packet = sender.protect(b"voice", now=0.0)
    assert receiver.unprotect(packet, now=0.0) == b"voice"
    assert receiver.unprotect(packet, now=0.1) is None
    assert receiver.stats == ReceiverStats(accepted=1, replayed=1)


def test_reordering_within_the_window_is_accepted(pair):
    sender, receiver = pair
    packets = [sender.protect(index.to_bytes(2, "big"), now=0.0) for index in range(200)]
    for index, packet in reversed(list(enumerate(packets))):
        assert receiver.unprotect(packet, now=0.0) == index.to_bytes(2, "big")
    assert receiver.stats == ReceiverStats(accepted=200)


def test_reordering_beyond_the_window_is_rejected(pair):
    sender, receiver = pair
    packets = [sender.protect(b"x", now=0.0) for _ in range(WINDOW_SIZE + 2)]
    assert receiver.unprotect(packets[-1], now=0.0) == b"x"
    assert receiver.unprotect(packets[1], now=0.0) == b"x"  # exactly WINDOW_SIZE behind
    assert receiver.unprotect(packets[0], now=0.0) is None
    assert receiver.stats == ReceiverStats(accepted=2, too_old=1)


def test_counters_never_repeat_across_ratchets():
    sender, receiver = sframe_pair(rekey_after_packets=97)
    headers = []
    for index in range(5000):
        if index % 641 == 0:
            sender.ratchet()
        packet = sender.protect(b"x", now=index * 0.02)
        headers.append(Header.parse(packet)[0])
        assert receiver.unprotect(packet, now=index * 0.02) == b"x"
    counters = [header.ctr for header in headers]
    assert counters == list(range(5000))
    assert len({(header.kid, header.ctr) for header in headers}) == 5000
    assert sender.ratchet_step == receiver.ratchet_step == receiver.stats.ratchets
    assert sender.ratchet_step > 50  # the 4-bit step in the KID wrapped several times
    assert receiver.stats == ReceiverStats(accepted=5000, ratchets=sender.ratchet_step)


def test_rekey_after_packets():
    sender, _ = sframe_pair()
    for _ in range(REKEY_AFTER_PACKETS):
        sender.protect(b"", now=0.0)
    assert sender.ratchet_step == 0
    first_kid = sender.kid
    packet = sender.protect(b"", now=0.0)
    assert sender.ratchet_step == 1
    assert Header.parse(packet)[0] == Header(first_kid + 1, REKEY_AFTER_PACKETS)


def test_rekey_after_seconds(pair):
    sender, _ = pair
    start = 1000.0
    sender.protect(b"", now=start)
    sender.protect(b"", now=start + REKEY_AFTER_SECONDS - 0.001)
    assert sender.ratchet_step == 0
    sender.protect(b"", now=start + REKEY_AFTER_SECONDS)
    assert sender.ratchet_step == 1
    # the new key's clock starts at its first packet
    sender.protect(b"", now=start + 2 * REKEY_AFTER_SECONDS - 0.001)
    assert sender.ratchet_step == 1


def test_explicit_ratchet_changes_the_kid(pair):
    sender, receiver = pair
    kid = sender.kid
    sender.ratchet()
    assert sender.kid == kid + 1
    assert receiver.unprotect(sender.protect(b"x", now=0.0), now=0.0) == b"x"
    assert receiver.ratchet_step == 1


def test_sender_hard_limit():
    sender, _ = sframe_pair(reject_after_packets=3)
    for _ in range(3):
        sender.protect(b"", now=0.0)
    for _ in range(2):
        with pytest.raises(LocalProtocolError, match=r"^SFrame sender reached its packet limit$"):
            sender.protect(b"", now=0.0)
    sender.ratchet()  # a new key does not lift the limit: counters never repeat
    with pytest.raises(LocalProtocolError, match=r"^SFrame sender reached its packet limit$"):
        sender.protect(b"", now=0.0)
    assert sender.packets_sent == 3


def test_sender_refuses_long_payload(pair):
    sender, _ = pair
    with pytest.raises(LocalProtocolError, match=r"^SFrame payload longer than 65535 bytes$"):
        sender.protect(bytes(0x10000), now=0.0)
    assert sender.packets_sent == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"base_key": bytes(15)}, "SFrame base key must be at least 16 bytes", id="key"
        ),
        pytest.param({"sender_id": 2**60}, "SFrame sender id must fit in 60 bits", id="id-big"),
        pytest.param({"sender_id": -1}, "SFrame sender id must fit in 60 bits", id="id-negative"),
        pytest.param({"ratchet_bits": 1}, "ratchet_bits must be 2 to 16", id="ratchet-bits"),
        pytest.param({"suite": 6}, "unknown SFrame cipher suite 6", id="suite"),
    ],
)
def test_context_arguments_are_checked(kwargs, message):
    arguments: dict[str, Any] = {"suite": SUITE, "base_key": bytes(32), "sender_id": 1}
    arguments.update(kwargs)
    for context in (SFrameSender, SFrameReceiver):
        with pytest.raises(LocalProtocolError, match=f"^{message}$"):
            context(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"pad_to": -1}, "pad_to must not be negative", id="pad"),
        pytest.param({"rekey_after_packets": 0}, "rekey limits must be positive", id="packets"),
        pytest.param({"rekey_after_seconds": 0.0}, "rekey limits must be positive", id="seconds"),
        pytest.param(
            {"reject_after_packets": 0}, r"reject_after_packets must be 1 to 2\*\*64", id="reject"
        ),
    ],
)
def test_sender_limits_are_checked(kwargs, message):
    with pytest.raises(LocalProtocolError, match=f"^{message}$"):
        SFrameSender(SUITE, bytes(32), 1, **kwargs)


def test_receiver_follows_ratchet_with_reordering_across_the_boundary(pair):
    sender, receiver = pair
    old = [sender.protect(bytes([index]), now=0.0) for index in range(10)]
    sender.ratchet()
    new = [sender.protect(bytes([index]), now=0.0) for index in range(10, 20)]
    # the new step arrives before the tail of the old one
    arrival = old[:5] + new[:1] + old[5:] + new[1:]
    payloads = [receiver.unprotect(packet, now=0.5) for packet in arrival]
    assert payloads == [bytes([index]) for index in [0, 1, 2, 3, 4, 10, 5, 6, 7, 8, 9]] + [
        bytes([index]) for index in range(11, 20)
    ]
    assert receiver.ratchet_step == 1
    assert receiver.stats == ReceiverStats(accepted=20, ratchets=1)


def test_previous_step_is_erased_after_the_grace_period(pair):
    sender, receiver = pair
    late = [sender.protect(b"old", now=0.0) for _ in range(3)]
    sender.ratchet()
    assert receiver.get_timer() is None
    assert receiver.unprotect(sender.protect(b"new", now=0.0), now=10.0) == b"new"
    assert receiver.get_timer() == 10.0 + PREVIOUS_KEY_GRACE_SECONDS
    assert receiver.unprotect(late[0], now=10.0 + PREVIOUS_KEY_GRACE_SECONDS - 0.001) == b"old"
    assert receiver.unprotect(late[1], now=10.0 + PREVIOUS_KEY_GRACE_SECONDS) is None
    assert receiver.get_timer() is None
    assert receiver.stats == ReceiverStats(accepted=2, unknown_kid=1, ratchets=1)


def test_handle_timer_erases_the_previous_step(pair):
    sender, receiver = pair
    late = sender.protect(b"old", now=0.0)
    sender.ratchet()
    assert receiver.unprotect(sender.protect(b"new", now=0.0), now=0.0) == b"new"
    timer = receiver.get_timer()
    assert timer is not None
    receiver.handle_timer(timer - 0.001)
    assert receiver.get_timer() == timer
    receiver.handle_timer(timer)
    assert receiver.get_timer() is None
    assert receiver.unprotect(late, now=0.0) is None
    assert receiver.stats.unknown_kid == 1


def test_receiver_never_goes_back(pair):
    sender, receiver = pair
    step0 = sender.protect(b"0", now=0.0)
    sender.ratchet()
    step1 = sender.protect(b"1", now=0.0)
    sender.ratchet()
    step2 = sender.protect(b"2", now=0.0)
    assert receiver.unprotect(step2, now=0.0) == b"2"
    assert receiver.unprotect(step1, now=0.0) == b"1"  # the step just below, in its grace
    assert receiver.unprotect(step0, now=0.0) is None  # skipped: erased with the jump
    assert receiver.ratchet_step == 2
    assert receiver.stats == ReceiverStats(accepted=2, unknown_kid=1, ratchets=2)


def test_receiver_follows_at_most_max_steps_ahead():
    for steps, expected in [(MAX_RATCHET_STEPS_AHEAD, b"x"), (MAX_RATCHET_STEPS_AHEAD + 1, None)]:
        sender, receiver = sframe_pair()
        for _ in range(steps):
            sender.ratchet()
        assert receiver.unprotect(sender.protect(b"x", now=0.0), now=0.0) == expected
        assert receiver.ratchet_step == (steps if expected else 0)


def test_forged_future_kid_does_not_move_the_receiver(pair):
    sender, receiver = pair
    forged = Header(sender.kid + 1, 5).serialize() + os.urandom(40)
    assert receiver.unprotect(forged, now=0.0) is None
    assert receiver.ratchet_step == 0
    assert receiver.unprotect(sender.protect(b"ok", now=0.0), now=0.0) == b"ok"
    assert receiver.stats == ReceiverStats(accepted=1, auth_failed=1)


@given(packet=st.binary(max_size=64), metadata=st.binary(max_size=8))
def test_unprotect_never_raises_on_arbitrary_bytes(packet, metadata):
    _, receiver = sframe_pair()
    assert receiver.unprotect(packet, metadata, now=0.0) is None
    assert receiver.stats.dropped == receiver.dropped == 1


@given(step=st.integers(0, 20), ctr=st.integers(0, MAX_CTR), body=st.binary(max_size=120))
def test_unprotect_never_raises_on_forged_frames(step, ctr, body):
    _, receiver = sframe_pair()
    forged = Header((SENDER_ID << 4) | (step % 16), ctr).serialize() + body
    assert receiver.unprotect(forged, now=0.0) is None
    stats = receiver.stats
    assert stats.dropped == stats.auth_failed + stats.unknown_kid == receiver.dropped == 1
    assert receiver.ratchet_step == 0


_FUZZ_SENDER, _FUZZ_RECEIVER = sframe_pair()
_FUZZ_PACKET = _FUZZ_SENDER.protect(b"genuine", now=0.0)


@given(
    st.lists(
        st.tuples(st.integers(0, len(_FUZZ_PACKET) - 1), st.integers(1, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_packet_is_never_accepted(flips):
    packet = bytearray(_FUZZ_PACKET)
    for index, mask in flips:
        packet[index] ^= mask
    if bytes(packet) == _FUZZ_PACKET:
        return
    assert _FUZZ_RECEIVER.unprotect(bytes(packet), now=0.0) is None
