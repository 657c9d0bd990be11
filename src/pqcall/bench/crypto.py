"""Crypto benchmark: the cost of each protection, against what it replaces.

``python -m pqcall.bench crypto`` (or ``pqcall bench crypto``) prints:

- handshake CPU time per side, against a bare ML-KEM-768 exchange (the
  prototype exchanged an unauthenticated Kyber key, no signatures);
- SFrame protect + unprotect of an 80-byte payload, against bare
  AES-256-GCM encrypt + decrypt of the same payload (the prototype's
  per-frame protection, without header, replay window or ratchet);
- file encryption + decryption throughput, against bare chunked AES-256-GCM
  over the same bytes (no key wrap, no signature, no padding);
- keystore unlock time at the default Argon2id cost (no baseline: it is
  slow on purpose; shown against a single AES-GCM open for scale).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqcall.bench.report import Figure, cpu_seconds_per_call
from pqcall.crypto import keystore
from pqcall.crypto.filecrypt import CHUNK_LENGTH, decrypt_stream, encrypt_stream
from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.handshake import CalleeHandshake, CallerHandshake
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.sframe import CipherSuite
from pqcall.crypto.sframe_context import SFrameReceiver, SFrameSender

T = TypeVar("T")

PAYLOAD_BYTES = 80  # a 20 ms Opus frame at 32 kbit/s
FILE_MEGABYTES_FULL = 64
FILE_MEGABYTES_QUICK = 8


def _handshake_figures(repeat: int) -> list[Figure]:
    alice, bob = IdentityPrivateKey.generate(), IdentityPrivateKey.generate()
    spent = {"caller": 0.0, "callee": 0.0}

    def timed(side: str, step: Callable[[], T]) -> T:
        start = time.process_time()
        result = step()
        spent[side] += time.process_time() - start
        return result

    def handshake() -> None:
        caller = CallerHandshake(
            call_id=b"bench",
            our_name="alice",
            our_identity=alice,
            their_name="bob",
            their_identity=bob.public_key(),
        )
        callee = CalleeHandshake(call_id=b"bench", our_name="bob", our_identity=bob)
        offer = timed("caller", lambda: caller.offer(now=time.time()))
        timed("callee", lambda: callee.receive_offer(offer, now=time.time()))
        answer = timed("callee", callee.answer)
        confirm = timed("caller", lambda: caller.receive_answer(answer))
        timed("callee", lambda: callee.receive_confirm(confirm))

    handshake()  # warm-up
    spent.update(caller=0.0, callee=0.0)
    for _ in range(repeat):
        handshake()

    def bare_kem() -> None:
        key = mlkem.MLKEM768PrivateKey.generate()
        _, ciphertext = key.public_key().encapsulate()
        key.decapsulate(ciphertext)

    baseline = cpu_seconds_per_call(bare_kem, repeat) * 1e3
    name = "bare ML-KEM-768 keygen+encaps+decaps"
    return [
        Figure("handshake, caller side", spent["caller"] / repeat * 1e3, "ms CPU", name, baseline),
        Figure("handshake, callee side", spent["callee"] / repeat * 1e3, "ms CPU", name, baseline),
    ]


def _sframe_figure(repeat: int) -> Figure:
    key = os.urandom(32)
    sender = SFrameSender(CipherSuite.AES_256_GCM_SHA512_128, key, 0)
    receiver = SFrameReceiver(CipherSuite.AES_256_GCM_SHA512_128, key, 0)
    payload = os.urandom(PAYLOAD_BYTES)
    clock = [0.0]

    def protect_unprotect() -> None:
        clock[0] += 0.02
        packet = sender.protect(payload, now=clock[0])
        if receiver.unprotect(packet, now=clock[0]) is None:
            raise RuntimeError("benchmark packet was dropped")

    aead = AESGCM(key)
    nonce = os.urandom(12)

    def bare_gcm() -> None:
        aead.decrypt(nonce, aead.encrypt(nonce, payload, None), None)

    return Figure(
        f"SFrame protect+unprotect, {PAYLOAD_BYTES} B",
        cpu_seconds_per_call(protect_unprotect, repeat) * 1e6,
        "us CPU",
        "bare AES-256-GCM encrypt+decrypt",
        cpu_seconds_per_call(bare_gcm, repeat) * 1e6,
    )


def _file_figure(megabytes: int) -> Figure:
    alice, bob = IdentityPrivateKey.generate(), IdentityPrivateKey.generate()
    file_key = FilePrivateKey.generate()
    bundle = KeyBundle.create(bob, "bob", file_key.public_key(), created=0)
    data = os.urandom(megabytes * 1024 * 1024)

    def round_trip() -> None:
        sealed = io.BytesIO()
        encrypt_stream(
            io.BytesIO(data), sealed, alice, bob.public_key(), bundle, name="f", created=0
        )
        sealed.seek(0)
        decrypt_stream(sealed, io.BytesIO(), bob.public_key(), [file_key])

    aead = AESGCM(os.urandom(32))
    nonce = bytes(12)

    def bare_chunks() -> None:
        view = memoryview(data)
        for offset in range(0, len(data), CHUNK_LENGTH):
            aead.decrypt(nonce, aead.encrypt(nonce, view[offset : offset + CHUNK_LENGTH], b""), b"")

    return Figure(
        f"file encrypt+decrypt, {megabytes} MB",
        megabytes / cpu_seconds_per_call(round_trip, 2),
        "MB/s",
        "bare chunked AES-256-GCM",
        megabytes / cpu_seconds_per_call(bare_chunks, 2),
    )


def _keystore_figure() -> Figure:
    blob = keystore.seal(b"x" * 200, "correct horse battery staple")
    aead, nonce = AESGCM(os.urandom(32)), bytes(12)
    sealed = aead.encrypt(nonce, b"x" * 200, None)
    return Figure(
        "keystore unlock (default Argon2id)",
        cpu_seconds_per_call(lambda: keystore.unseal(blob, "correct horse battery staple"), 2)
        * 1e3,
        "ms CPU",
        "one AES-256-GCM open (for scale)",
        cpu_seconds_per_call(lambda: aead.decrypt(nonce, sealed, None), 100) * 1e3,
    )


def run(*, quick: bool = False) -> list[Figure]:
    """Measure every figure; ``quick`` uses fewer repetitions and a smaller file."""
    return [
        *_handshake_figures(repeat=5 if quick else 30),
        _sframe_figure(repeat=2_000 if quick else 20_000),
        _file_figure(FILE_MEGABYTES_QUICK if quick else FILE_MEGABYTES_FULL),
        _keystore_figure(),
    ]
