"""Helpers for SFrame tests: a sender and the receiver that matches it."""

from __future__ import annotations

import os
from typing import Any

from pqcall.crypto.sframe import CipherSuite
from pqcall.crypto.sframe_context import RATCHET_BITS, SFrameReceiver, SFrameSender

SUITE = CipherSuite.AES_256_GCM_SHA512_128
SENDER_ID = 1


def sframe_pair(
    suite: CipherSuite = SUITE,
    *,
    sender_id: int = SENDER_ID,
    ratchet_bits: int = RATCHET_BITS,
    **sender_options: Any,
) -> tuple[SFrameSender, SFrameReceiver]:
    """A sender and a receiver sharing a fresh random base key."""
    base_key = os.urandom(suite.parameters.nh)
    sender = SFrameSender(suite, base_key, sender_id, ratchet_bits=ratchet_bits, **sender_options)
    receiver = SFrameReceiver(suite, base_key, sender_id, ratchet_bits=ratchet_bits)
    return sender, receiver
