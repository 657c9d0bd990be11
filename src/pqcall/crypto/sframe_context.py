"""SFrame sender and receiver for one direction of a call (sans-I/O).

Scope: one sender key per direction, derived from the call secret elsewhere,
protected with :mod:`pqcall.crypto.sframe` (RFC 9605) and ratcheted forward
during the call. No sockets, no clock: time arrives as ``now`` (seconds, any
monotonic origin).

Wire format of a protected packet::

    SFrame header (1-17 bytes: KID, CTR; RFC 9605 section 4.3)
    || AEAD ciphertext of the inner plaintext || tag (Nt bytes)

    inner plaintext = payload length (u16, big-endian) || payload || zero padding

The inner framing is always present, so a receiver needs no configuration.
The sender pads the payload with zeros to a multiple of ``pad_to`` bytes (at
least one multiple; 0 turns padding off): with Opus capped at one multiple
(constant bitrate, or variable under a cap) every packet then has the same
size, and packet sizes no longer spell out the words of variable-bitrate
speech (Wright et al., 2008). A longer payload is rounded
up to the next multiple rather than sent at its exact length, so it shows only
a coarse size class. The default of 80 bytes is a 20 ms frame at 32 kbit/s,
the top of our constant-bitrate range; 40 and 60 ms frames fill whole multiples.
The receiver drops a plaintext whose padding is not all zeros. The header
itself grows by a byte when the counter reaches 8, 2**8, 2**16, ... packets:
that follows the packet count, never the content.

Key ids and ratcheting (RFC 9605 section 5.1, sender keys): the KID is
``sender_id << R | ratchet_step mod 2**R`` with R = ``RATCHET_BITS``, the
sender id taking the place of the RFC's key generation. The sender ratchets
``base_key[i+1] = HKDF-Expand(HKDF-Extract("", base_key[i]), "SFrame 1.0 Ratchet", Nh)``
after ``REKEY_AFTER_PACKETS`` packets or ``REKEY_AFTER_SECONDS`` seconds with
one key, or when told to, and forgets the old base key. The counter runs on
across ratchets and never repeats, so one replay window covers every step.

The receiver follows the sender up to ``MAX_RATCHET_STEPS_AHEAD`` steps ahead,
only once a packet of the new step authenticates; it keeps the previous step's
key ``PREVIOUS_KEY_GRACE_SECONDS`` for reordered packets, then erases it. It
never goes back. Its receive path (RFC 9605 section 4.4.4, then the replay
check as in WireGuard): parse, select the key, decrypt, check the replay
window, deliver. Every failure is dropped and counted, never raised.

Key generations (a fresh base key per generation) take high KID bits by
being folded into the sender id: group calls pass
``sender_id << 8 | generation mod 256`` (:mod:`pqcall.crypto.group_keys_sender`).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag

from pqcall.crypto.replay import ReplayWindow
from pqcall.crypto.sframe import (
    MAX_CTR,
    MAX_KID,
    CipherSuite,
    FrameKey,
    decrypt_parsed,
    encrypt,
    parse_header,
    ratchet_base_key,
)
from pqcall.exceptions import DecodeError, LocalProtocolError

# implementation constants
RATCHET_BITS: Final = 4  # R: low KID bits carrying the ratchet step
MIN_RATCHET_BITS: Final = 2  # room for the previous, current and one next step
MAX_RATCHET_BITS: Final = 16
MAX_RATCHET_STEPS_AHEAD: Final = 8  # steps a receiver derives to catch up with a KID
REKEY_AFTER_PACKETS: Final = 4096  # about 82 s of 20 ms frames
REKEY_AFTER_SECONDS: Final = 60.0
REJECT_AFTER_PACKETS: Final = MAX_CTR + 1  # the whole 64-bit counter space, never reused
PREVIOUS_KEY_GRACE_SECONDS: Final = 2.0  # far beyond network reordering and jitter delay
MIN_BASE_KEY_LENGTH: Final = 16
DEFAULT_PAD_TO: Final = 80  # bytes: a 20 ms Opus frame at 32 kbit/s
LENGTH_PREFIX_LENGTH: Final = 2  # u16 payload length of the inner framing
MAX_PAYLOAD_LENGTH: Final = 0xFFFF


def pad(payload: bytes, pad_to: int) -> bytes:
    """The inner plaintext: ``u16 length || payload || zeros`` to a multiple of ``pad_to``.

    Raises:
        LocalProtocolError: the payload is longer than 65535 bytes, or ``pad_to`` < 0.
    """
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise LocalProtocolError("SFrame payload longer than 65535 bytes")
    if pad_to < 0:
        raise LocalProtocolError("pad_to must not be negative")
    if pad_to:
        buckets = max(1, -(-len(payload) // pad_to))  # ceil(len / pad_to), at least one
        padded = buckets * pad_to
    else:
        padded = len(payload)
    prefix = len(payload).to_bytes(LENGTH_PREFIX_LENGTH, "big")
    return prefix + payload + bytes(padded - len(payload))


def unpad(plaintext: bytes) -> bytes:
    """The payload of an inner plaintext made by :func:`pad`.

    Raises:
        DecodeError: the length is truncated or too large, or the padding is not zeros.
    """
    if len(plaintext) < LENGTH_PREFIX_LENGTH:
        raise DecodeError("SFrame plaintext has truncated length")
    end = LENGTH_PREFIX_LENGTH + int.from_bytes(plaintext[:LENGTH_PREFIX_LENGTH], "big")
    if end > len(plaintext):
        raise DecodeError("SFrame plaintext has truncated payload")
    padding = plaintext[end:]
    if padding.count(0) != len(padding):
        raise DecodeError("SFrame plaintext has nonzero padding")
    return plaintext[LENGTH_PREFIX_LENGTH:end]


def _check_common(suite: CipherSuite, base_key: bytes, sender_id: int, ratchet_bits: int) -> None:
    if suite not in set(CipherSuite):
        raise LocalProtocolError(f"unknown SFrame cipher suite {suite!r}")
    if len(base_key) < MIN_BASE_KEY_LENGTH:
        raise LocalProtocolError(f"SFrame base key must be at least {MIN_BASE_KEY_LENGTH} bytes")
    if not MIN_RATCHET_BITS <= ratchet_bits <= MAX_RATCHET_BITS:
        raise LocalProtocolError(f"ratchet_bits must be {MIN_RATCHET_BITS} to {MAX_RATCHET_BITS}")
    if not 0 <= sender_id <= MAX_KID >> ratchet_bits:
        raise LocalProtocolError(f"SFrame sender id must fit in {64 - ratchet_bits} bits")


def _kid(sender_id: int, step: int, ratchet_bits: int) -> int:
    """KID = sender_id << R | step mod 2**R (RFC 9605 section 5.1)."""
    return (sender_id << ratchet_bits) | (step & ((1 << ratchet_bits) - 1))


class SFrameSender:
    """Protects the media of one sender: counter, padding, ratcheted keys.

    Args:
        suite: the cipher suite.
        base_key: this direction's initial base key (at least 16 bytes); never
            to be used by any other sender (RFC 9605 section 4.4.1).
        sender_id: the high KID bits; the receiver must be given the same.
        ratchet_bits: R, the low KID bits for the ratchet step (same at the receiver).
        pad_to: pad payloads to a multiple of this many bytes; 0 turns padding off.
        rekey_after_packets: ratchet after this many packets under one key.
        rekey_after_seconds: ratchet when a key was first used this long ago.
        reject_after_packets: refuse to protect more than this many packets in all.

    Raises:
        LocalProtocolError: an argument is out of range.
    """

    def __init__(
        self,
        suite: CipherSuite,
        base_key: bytes,
        sender_id: int,
        *,
        ratchet_bits: int = RATCHET_BITS,
        pad_to: int = DEFAULT_PAD_TO,
        rekey_after_packets: int = REKEY_AFTER_PACKETS,
        rekey_after_seconds: float = REKEY_AFTER_SECONDS,
        reject_after_packets: int = REJECT_AFTER_PACKETS,
    ) -> None:
        _check_common(suite, base_key, sender_id, ratchet_bits)
        if pad_to < 0:
            raise LocalProtocolError("pad_to must not be negative")
        if rekey_after_packets < 1 or rekey_after_seconds <= 0:
            raise LocalProtocolError("rekey limits must be positive")
        if not 1 <= reject_after_packets <= REJECT_AFTER_PACKETS:
            raise LocalProtocolError("reject_after_packets must be 1 to 2**64")
        self._suite = CipherSuite(suite)  # cipher suite
        self._sender_id = sender_id  # high KID bits
        self._ratchet_bits = ratchet_bits  # R
        self._pad_to = pad_to  # padding multiple, 0 for none
        self._rekey_after_packets = rekey_after_packets  # per-key packet limit
        self._rekey_after_seconds = rekey_after_seconds  # per-key time limit
        self._reject_after_packets = reject_after_packets  # hard limit on the counter
        self._base_key = base_key  # current base key, replaced on every ratchet
        self._step = 0  # ratchet step (full value; the KID carries its low bits)
        self._key = FrameKey.derive(self._suite, self.kid, base_key)  # current frame key
        self._counter = 0  # next CTR; never reset, so never repeated
        self._key_packets = 0  # packets protected under the current key
        self._key_first_used: float | None = None  # `now` of the first packet under it

    @property
    def kid(self) -> int:
        """The KID of the current key."""
        return _kid(self._sender_id, self._step, self._ratchet_bits)

    @property
    def ratchet_step(self) -> int:
        """How many times the key has been ratcheted."""
        return self._step

    @property
    def packets_sent(self) -> int:
        """Packets protected so far; also the next counter value."""
        return self._counter

    @property
    def pad_to(self) -> int:
        """The padding multiple (settable: a media sender's mode change sets its packet size)."""
        return self._pad_to

    @pad_to.setter
    def pad_to(self, pad_to: int) -> None:
        if pad_to < 0:
            raise LocalProtocolError("pad_to must not be negative")
        self._pad_to = pad_to

    def ratchet(self) -> None:
        """Move to the next base key now and forget the current one (RFC 9605 section 5.1).

        A receiver follows at most ``MAX_RATCHET_STEPS_AHEAD`` steps between two
        packets it receives: do not ratchet more often than that without sending.
        """
        self._base_key = ratchet_base_key(self._suite, self._base_key)
        self._step += 1
        self._key = FrameKey.derive(self._suite, self.kid, self._base_key)
        self._key_packets = 0
        self._key_first_used = None

    def protect(self, payload: bytes, metadata: bytes = b"", *, now: float) -> bytes:
        """Pad and encrypt one payload into an SFrame packet.

        Ratchets first when the current key has reached its packet or time limit.

        Args:
            payload: the media frame, at most 65535 bytes.
            metadata: data the receiver must pass unchanged; authenticated, not sent.
            now: the current time in seconds.

        Raises:
            LocalProtocolError: the payload is too long, or the sender reached
                ``reject_after_packets`` and must never protect again.
        """
        plaintext = pad(payload, self._pad_to)
        if self._counter >= self._reject_after_packets:
            raise LocalProtocolError("SFrame sender reached its packet limit")
        # rekey on the packet or time limit
        if self._key_packets >= self._rekey_after_packets or (
            self._key_first_used is not None
            and now - self._key_first_used >= self._rekey_after_seconds
        ):
            self.ratchet()
        if self._key_first_used is None:
            self._key_first_used = now
        packet = encrypt(self._key, self._counter, metadata, plaintext)
        self._counter += 1
        self._key_packets += 1
        return packet


class DropReason(enum.Enum):
    """Why :meth:`SFrameReceiver.unprotect` dropped a packet."""

    MALFORMED = "malformed"
    UNKNOWN_KID = "unknown_kid"
    AUTH_FAILED = "auth_failed"
    REPLAYED = "replayed"
    TOO_OLD = "too_old"


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    """A snapshot of an :class:`SFrameReceiver`'s counters."""

    accepted: int = 0
    """Packets delivered."""
    malformed: int = 0
    """Dropped: bad header, or bad inner framing after authentication."""
    unknown_kid: int = 0
    """Dropped: another sender, a step out of reach, or an erased step."""
    auth_failed: int = 0
    """Dropped: did not authenticate (tampered, truncated, wrong key or metadata)."""
    replayed: int = 0
    """Dropped: counter already accepted."""
    too_old: int = 0
    """Dropped: counter below the replay window."""
    ratchets: int = 0
    """Ratchet steps followed."""

    @property
    def dropped(self) -> int:
        """Packets dropped for any reason."""
        return self.malformed + self.unknown_kid + self.auth_failed + self.replayed + self.too_old


class SFrameReceiver:
    """Opens the media of one sender, following its ratchet; never raises on input.

    Args:
        suite: the cipher suite.
        base_key: the sender's initial base key.
        sender_id: the sender's id (high KID bits).
        ratchet_bits: R, as configured at the sender.

    Raises:
        LocalProtocolError: an argument is out of range.
    """

    def __init__(
        self,
        suite: CipherSuite,
        base_key: bytes,
        sender_id: int,
        *,
        ratchet_bits: int = RATCHET_BITS,
    ) -> None:
        _check_common(suite, base_key, sender_id, ratchet_bits)
        self._suite = CipherSuite(suite)  # cipher suite
        self._sender_id = sender_id  # high KID bits
        self._ratchet_bits = ratchet_bits  # R
        self._step_mask = (1 << ratchet_bits) - 1  # low KID bits
        self._max_ahead = min(MAX_RATCHET_STEPS_AHEAD, self._step_mask - 1)  # keep -1 apart
        self._step = 0  # current ratchet step
        self._current = FrameKey.derive(self._suite, self._kid(0), base_key)  # its key
        self._tip = base_key  # base key of the last derived step, to derive the next
        self._ahead: list[FrameKey] = []  # keys of steps current+1.. derived on demand
        self._previous: FrameKey | None = None  # key of step current-1, during its grace
        self._previous_expiry = 0.0  # `now` at which the previous key is erased
        self._window = ReplayWindow()  # one window for all steps: counters never repeat
        self._accepted = 0  # packets delivered
        self._ratchets = 0  # steps followed
        self._drops: Counter[DropReason] = Counter()  # packets dropped, by reason

    @property
    def ratchet_step(self) -> int:
        """The sender's ratchet step, as far as this receiver has followed it."""
        return self._step

    @property
    def stats(self) -> ReceiverStats:
        """A snapshot of the counters."""
        drops = self._drops
        return ReceiverStats(
            accepted=self._accepted,
            malformed=drops[DropReason.MALFORMED],
            unknown_kid=drops[DropReason.UNKNOWN_KID],
            auth_failed=drops[DropReason.AUTH_FAILED],
            replayed=drops[DropReason.REPLAYED],
            too_old=drops[DropReason.TOO_OLD],
            ratchets=self._ratchets,
        )

    @property
    def dropped(self) -> int:
        """Packets dropped for any reason: ``stats.dropped``, without the snapshot."""
        return self._drops.total()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None."""
        return self._previous_expiry if self._previous is not None else None

    def handle_timer(self, now: float) -> None:
        """Erase the previous step's key once its grace period is over."""
        if self._previous is not None and now >= self._previous_expiry:
            self._previous = None

    def unprotect(self, packet: bytes, metadata: bytes = b"", *, now: float) -> bytes | None:
        """Open one SFrame packet from :meth:`SFrameSender.protect`.

        Args:
            packet: the packet as received.
            metadata: the metadata the sender passed.
            now: the current time in seconds.

        Returns:
            The payload, or None if the packet was dropped; the reason is
            counted in :attr:`stats`.
        """
        self.handle_timer(now)
        # parse header
        try:
            kid, ctr, header_length = parse_header(packet)
        except DecodeError:
            self._drops[DropReason.MALFORMED] += 1
            return None
        # select key: the current one (nearly every packet) without a search
        if kid == self._current.kid:
            steps, key = 0, self._current
        else:
            selected = self._select_key(kid)
            if selected is None:
                self._drops[DropReason.UNKNOWN_KID] += 1
                return None
            steps, key = selected
        # decrypt
        try:
            payload = unpad(decrypt_parsed(key, metadata, packet, kid, ctr, header_length))
        except InvalidTag:
            self._drops[DropReason.AUTH_FAILED] += 1
            return None
        except DecodeError:
            self._drops[DropReason.MALFORMED] += 1
            return None
        # check replay window
        if not self._window.update(ctr):
            too_old = self._window.is_too_old(ctr)
            self._drops[DropReason.TOO_OLD if too_old else DropReason.REPLAYED] += 1
            return None
        # follow the ratchet, now that a packet of the new step authenticated
        if steps > 0:
            self._advance(steps, now)
        self._accepted += 1
        return payload

    def _kid(self, step: int) -> int:
        return _kid(self._sender_id, step, self._ratchet_bits)

    def _select_key(self, kid: int) -> tuple[int, FrameKey] | None:
        """(steps from the current step, key) of ``kid``, or None if out of reach or erased."""
        steps = self._steps_to(kid)
        key = None if steps is None else self._key_for(steps)
        return None if steps is None or key is None else (steps, key)

    def _steps_to(self, kid: int) -> int | None:
        """Steps from the current one to ``kid``'s (-1 to max ahead), or None."""
        if kid >> self._ratchet_bits != self._sender_id:
            return None
        diff = (kid - self._step) & self._step_mask
        if diff == self._step_mask:
            return -1
        return diff if diff <= self._max_ahead else None

    def _key_for(self, steps: int) -> FrameKey | None:
        if steps < 0:
            return self._previous
        if steps == 0:
            return self._current
        while len(self._ahead) < steps:
            self._tip = ratchet_base_key(self._suite, self._tip)
            step = self._step + len(self._ahead) + 1
            self._ahead.append(FrameKey.derive(self._suite, self._kid(step), self._tip))
        return self._ahead[steps - 1]

    def _advance(self, steps: int, now: float) -> None:
        # keep the key just below the new step for its grace; drop the rest
        self._previous = self._current if steps == 1 else self._ahead[steps - 2]
        self._previous_expiry = now + PREVIOUS_KEY_GRACE_SECONDS
        self._current = self._ahead[steps - 1]
        del self._ahead[:steps]
        self._step += steps
        self._ratchets += steps
