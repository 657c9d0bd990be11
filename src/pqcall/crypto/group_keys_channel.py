"""The pairwise channel of a group call: authenticated encryption between two members.

Every pair of members of a group call runs the 1:1 hybrid handshake
(:mod:`pqcall.crypto.handshake`: X25519 + ML-KEM-768, Ed25519 + ML-DSA-65
identities, pins); a :class:`PairwiseChannel` turns the :class:`CallKeys` it
gives into one AEAD key per direction and seals small messages (sender keys,
roster signatures) that the server carries but cannot read, forge, replay or
reorder beyond a small window. Keys (docs/protocol.md#group-calls-keys)::

    root     = CallKeys.export("group pairwise")
    K_a_to_b = LabeledExpand(root, "group pairwise", vec16(call_id) ‖ text(a) ‖ text(b), 32)

Wire format of a sealed message (kind 0x41)::

    "PQ" | 1 | 0x41 | counter (u64) | AES-256-GCM-SIV(K, nonce = 0x00000000 ‖ counter,
                                                      aad = the 12 bytes before it, message)

The counter starts at 0 and never repeats for one channel object. GCM-SIV
(RFC 8452) rather than GCM: should two channel objects ever be built from the
same handshake, a repeated nonce reveals only whether two messages were equal,
never the key stream or the authentication key; the receiver's replay window
refuses the second copy of a counter anyway.

Receive order: parse, decrypt, then check the replay window (RFC 6479, via
:class:`~pqcall.crypto.replay.ReplayWindow`), accepting a counter at most
``REORDER_WINDOW`` below the highest one opened. Failures raise
:class:`~pqcall.exceptions.SealRejected` (or
:class:`~pqcall.exceptions.DecodeError` for bytes that are no sealed message).
Pure: no clock, no I/O.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from pqcall.crypto import encoding, keyschedule
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.group_keys_sender import SenderKey, decode_sender_key, encode_sender_key
from pqcall.crypto.handshake_keys import CallKeys
from pqcall.crypto.replay import MAX_COUNTER, ReplayWindow
from pqcall.exceptions import DecodeError, LocalProtocolError, SealRejected

EXPORT_LABEL: Final = b"group pairwise"  # CallKeys.export label of the channel's root
LABEL_DIRECTION: Final = b"group pairwise"  # LabeledExpand label of each direction's key
KEY_LENGTH: Final = 32  # AES-256-GCM-SIV
NONCE_LENGTH: Final = 12
NONCE_PREFIX: Final = bytes(NONCE_LENGTH - 8)  # the counter fills the last 8 bytes
TAG_LENGTH: Final = 16
COUNTER_LENGTH: Final = 8
AAD_LENGTH: Final = encoding.HEADER_LENGTH + COUNTER_LENGTH
REORDER_WINDOW: Final = 32  # messages a counter may trail the highest one opened
MAX_MESSAGE_LENGTH: Final = 65536  # bytes of plaintext; sender keys and signatures fit


def _direction_key(root: bytes, call_id: bytes, sender: str, receiver: str) -> bytes:
    context = encoding.vec16(call_id) + encoding.text(sender) + encoding.text(receiver)
    return keyschedule.labeled_expand(root, LABEL_DIRECTION, context, KEY_LENGTH)


class PairwiseChannel:
    """Seals and opens messages between us and one other member of a group call.

    Build it with :meth:`from_call_keys`; keep exactly one per handshake and
    use it for every message to and from that peer.

    Args:
        send_key: the key of our direction.
        receive_key: the key of theirs.
        peer_name: the peer's username (for error messages and callers' checks).
    """

    def __init__(self, send_key: bytes, receive_key: bytes, *, peer_name: str) -> None:
        if len(send_key) != KEY_LENGTH or len(receive_key) != KEY_LENGTH:
            raise LocalProtocolError(f"pairwise keys must be {KEY_LENGTH} bytes")
        self.peer_name = peer_name  # the other member
        self._seal = AESGCMSIV(send_key)  # our direction
        self._open = AESGCMSIV(receive_key)  # theirs
        self._next_counter = 0  # counter of the next message we seal
        self._window = ReplayWindow()  # counters of the messages we opened
        self._opened_any = False  # whether the window holds anything yet

    @classmethod
    def from_call_keys(
        cls, call_keys: CallKeys, *, our_name: str, peer_name: str
    ) -> PairwiseChannel:
        """The channel over a completed 1:1 handshake with ``peer_name``.

        Raises:
            LocalProtocolError: the handshake was with someone else, or both names are equal.
        """
        if call_keys.their_name != peer_name:
            raise LocalProtocolError(
                f"these call keys are for {call_keys.their_name!r}, not {peer_name!r}"
            )
        if our_name == peer_name:
            raise LocalProtocolError("a pairwise channel needs two different names")
        root = call_keys.export(EXPORT_LABEL, KEY_LENGTH)
        call_id = call_keys.call_id
        return cls(
            _direction_key(root, call_id, our_name, peer_name),
            _direction_key(root, call_id, peer_name, our_name),
            peer_name=peer_name,
        )

    @property
    def messages_sealed(self) -> int:
        """Messages sealed so far (also the next counter)."""
        return self._next_counter

    def seal(self, message: bytes) -> bytes:
        """Encrypt and authenticate ``message`` for the peer.

        Raises:
            LocalProtocolError: the message is longer than ``MAX_MESSAGE_LENGTH``,
                or the counter is exhausted.
        """
        if len(message) > MAX_MESSAGE_LENGTH:
            raise LocalProtocolError(f"sealed message longer than {MAX_MESSAGE_LENGTH} bytes")
        if self._next_counter > MAX_COUNTER:
            raise LocalProtocolError("pairwise channel counter exhausted")
        counter = self._next_counter
        self._next_counter += 1
        aad = encoding.encode(Kind.GROUP_SEALED_MESSAGE, encoding.u64(counter))
        return aad + self._seal.encrypt(NONCE_PREFIX + encoding.u64(counter), message, aad)

    def open(self, sealed: bytes) -> bytes:
        """Decrypt a message the peer sealed, once.

        Raises:
            DecodeError: not a group sealed message, or truncated.
            SealRejected: it does not authenticate (tampered, or not from this
                peer in this call), was opened before, or trails the newest
                message opened by more than ``REORDER_WINDOW``.
        """
        # parse
        reader = Reader(encoding.decode(Kind.GROUP_SEALED_MESSAGE, sealed), "group sealed message")
        counter = reader.u64("counter")
        ciphertext = reader.rest()
        if len(ciphertext) < TAG_LENGTH:
            raise DecodeError("group sealed message has truncated ciphertext")
        if len(ciphertext) > MAX_MESSAGE_LENGTH + TAG_LENGTH:
            raise DecodeError("group sealed message is too long")
        # decrypt
        aad = bytes(sealed[:AAD_LENGTH])
        try:
            message = self._open.decrypt(NONCE_PREFIX + encoding.u64(counter), ciphertext, aad)
        except InvalidTag:
            raise SealRejected(
                f"sealed message from {self.peer_name!r} does not authenticate"
            ) from None
        # check the replay window, then the reorder limit
        if self._opened_any and self._window.highest - counter > REORDER_WINDOW:
            raise SealRejected(f"sealed message from {self.peer_name!r} arrived too late")
        if not self._window.update(counter):
            raise SealRejected(f"sealed message from {self.peer_name!r} was replayed")
        self._opened_any = True
        return message

    def __repr__(self) -> str:
        return f"PairwiseChannel(peer_name={self.peer_name!r}, sealed={self._next_counter})"


def seal_sender_key(channel: PairwiseChannel, key: SenderKey) -> bytes:
    """``channel.seal(encode_sender_key(key))``."""
    return channel.seal(encode_sender_key(key))


def open_sender_key(channel: PairwiseChannel, sealed: bytes) -> SenderKey:
    """Open a sealed sender key from the channel's peer.

    The key's sender id is the peer's claim: check it against the id the
    peer holds in the call (or pass ``owner=channel.peer_name`` to
    :meth:`GroupKeyring.add_peer_key`, which refuses a sender id another
    member already owns).

    Raises:
        DecodeError: malformed, or the message is not a sender key.
        SealRejected: as :meth:`PairwiseChannel.open`.
    """
    return decode_sender_key(channel.open(sealed))
