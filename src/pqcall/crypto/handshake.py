"""The call handshake: authenticated, hybrid, forward-secret key agreement.

Three messages, carried opaquely by the signaling server (docs/protocol.md#handshake)::

    caller                                                  callee
    Offer    = version, call id, offer time, both names, caller identity,
               callee fingerprint, ephemeral X25519 + ML-KEM-768 keys,
               commitment to a SAS nonce, signature  ------>
                                                            verify, encapsulate
             <------  Answer = callee identity, ephemeral X25519,
                               ML-KEM ciphertext, signature, confirm MAC
    verify, decapsulate
    Confirm  = SAS nonce, confirm MAC  ----------------->   verify
                 both: call secret, media keys, SAS

The shape is SIGMA's (sign-and-MAC): each side signs the transcript it has
seen with its long-term hybrid identity and proves with a MAC that it holds the
ephemeral secrets. The call secret combines X25519 and ML-KEM-768 (see
:mod:`pqcall.crypto.keyschedule`), so breaking it needs breaking both; the
ephemerals are dropped after the call, so recorded calls stay secret even if
identity keys leak later (forward secrecy).

The SAS nonce is committed in the offer and revealed only in the confirm, as in
ZRTP's hash commitment: a man in the middle must fix its answer before it
learns the nonce, so it cannot grind its keys until the two SAS values of its
two handshakes match.

The offer carries the caller's clock reading under its signature; the callee
refuses one older than :data:`OFFER_MAX_AGE_S` (or from too far in the
future), so a server cannot make a phone ring with an offer it recorded long
ago. Within that window the callee's phone must refuse a call id it has seen
before (``pqcall.client.offers``): this module has no memory across calls.

**Accounts with several devices** (:mod:`pqcall.crypto.account`): each side
signs with its *device* key, while the offer's callee fingerprint and the
:attr:`CallKeys.their_identity` are of the *account* key contacts pin. The
caller passes the callee's device keys (from its device list, verified under
the pinned account key) as ``their_devices``; the callee checks the caller's
device key the same way and passes the account key to :meth:`CalleeHandshake.vouch`.
An account without a device list signs with its account key, as before.

The limits, the derivation from the transcript and :class:`CallKeys` live in
:mod:`pqcall.crypto.handshake_keys`; their public names are importable from here.

This module is sans-I/O: objects take and return bytes, and never touch a
socket or a clock (``now`` is a parameter: Unix seconds of the wall clock,
since the two ends compare their readings).
"""

from __future__ import annotations

import enum
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from pqcall.crypto import keyschedule
from pqcall.crypto.handshake_keys import (
    CLOCK_SKEW_S,
    CONTEXT_ANSWER,
    CONTEXT_OFFER,
    MAX_CALL_ID_LENGTH,
    MAX_RING_S,
    MAX_USERNAME_LENGTH,
    MS_PER_S,
    OFFER_MAX_AGE_S,
    SAS_DIGITS,
    CallerEphemeral,
    CallKeys,
    Role,
    Secrets,
    call_keys,
    check_call_id,
    check_fresh,
    check_name,
    commitment,
    derive,
    format_sas,
)
from pqcall.crypto.handshake_messages import Answer, Confirm, Offer
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.exceptions import (
    BadSignature,
    DecodeError,
    HandshakeFailed,
    LocalProtocolError,
)

__all__ = [
    "CLOCK_SKEW_S",
    "CONTEXT_ANSWER",
    "CONTEXT_OFFER",
    "MAX_CALL_ID_LENGTH",
    "MAX_RING_S",
    "MAX_USERNAME_LENGTH",
    "MS_PER_S",
    "OFFER_MAX_AGE_S",
    "SAS_DIGITS",
    "CallKeys",
    "CalleeHandshake",
    "CallerEphemeral",
    "CallerHandshake",
    "Role",
    "State",
    "format_sas",
]


class State(enum.Enum):
    """Handshake states, named for what each waits for."""

    CALLER_START = "caller_start"
    CALLER_EXPECT_ANSWER = "caller_expect_answer"
    CALLEE_EXPECT_OFFER = "callee_expect_offer"
    CALLEE_EXPECT_DECISION = "callee_expect_decision"
    CALLEE_EXPECT_CONFIRM = "callee_expect_confirm"
    ESTABLISHED = "established"
    FAILED = "failed"


class _Handshake:
    """What both sides share: the state, the result, and failing cleanly."""

    state: State
    _keys: CallKeys | None

    @property
    def keys(self) -> CallKeys:
        """The call keys. Only once established."""
        if self._keys is None:
            raise LocalProtocolError(f"no call keys in state {self.state.name}")
        return self._keys

    @property
    def is_established(self) -> bool:
        """True once the handshake completed."""
        return self.state is State.ESTABLISHED

    def _fail(self) -> None:
        self._drop_secrets()
        self.state = State.FAILED

    def _drop_secrets(self) -> None:
        raise NotImplementedError


class CallerHandshake(_Handshake):
    """The caller's side.

    Call :meth:`offer`, send its bytes; pass the answer to :meth:`receive_answer`
    and send the bytes it returns; then read :attr:`keys`.

    Args:
        call_id: the server-assigned call id.
        our_name: our username.
        our_identity: our identity private key.
        their_name: the callee's username.
        their_identity: the identity we expect the callee to prove (pinned or
            from the directory); an answer signed by any other key fails.
        ephemeral: per-call secrets; ``None`` (the default) generates fresh ones.
        their_devices: the callee's device keys, from its device list verified
            under ``their_identity``; an answer signed by one of them is accepted
            too (the call keys still name ``their_identity``).
    """

    def __init__(
        self,
        *,
        call_id: bytes,
        our_name: str,
        our_identity: IdentityPrivateKey,
        their_name: str,
        their_identity: IdentityPublicKey,
        ephemeral: CallerEphemeral | None = None,
        their_devices: tuple[IdentityPublicKey, ...] = (),
    ) -> None:
        check_call_id(call_id)
        check_name(our_name)
        check_name(their_name)
        self._their_devices = their_devices  # device keys that may answer for them
        self.state = State.CALLER_START  # what we wait for
        self._call_id = call_id  # server-assigned call id
        self._our_name = our_name  # our username
        self._our_identity = our_identity  # our long-term signing key
        self._their_name = their_name  # callee username
        self._their_identity = their_identity  # identity the callee must prove
        self._ephemeral: CallerEphemeral | None = ephemeral or CallerEphemeral.generate()
        self._offer: Offer | None = None  # the offer we sent
        self._offer_bytes = b""  # its exact bytes, for the transcript
        self._keys: CallKeys | None = None  # result once established

    def offer(self, *, now: float) -> bytes:
        """Build the offer, stamped with ``now`` (Unix seconds). Must be called once, first."""
        if self.state is not State.CALLER_START or self._ephemeral is None:
            raise LocalProtocolError(f"cannot send an offer in state {self.state.name}")
        eph = self._ephemeral
        x_pub = x25519.X25519PrivateKey.from_private_bytes(eph.x25519_private).public_key()
        kem_pub = mlkem.MLKEM768PrivateKey.from_seed_bytes(eph.mlkem_seed).public_key()
        unsigned = Offer(
            call_id=self._call_id,
            offered_at_ms=round(now * MS_PER_S),
            caller_name=self._our_name,
            callee_name=self._their_name,
            caller_identity=self._our_identity.public_key(),
            callee_fingerprint=self._their_identity.fingerprint(),
            x25519_public=x_pub.public_bytes_raw(),
            mlkem_public=kem_pub.public_bytes_raw(),
            sas_commitment=commitment(eph.sas_nonce),
            signature=b"",
        )
        signature = self._our_identity.sign(unsigned.signed_part(), context=CONTEXT_OFFER)
        self._offer = replace(unsigned, signature=signature)
        self._offer_bytes = self._offer.serialize()
        self.state = State.CALLER_EXPECT_ANSWER
        return self._offer_bytes

    def receive_answer(self, data: bytes) -> bytes:
        """Check the callee's answer and return the confirm to send.

        After this returns, :attr:`keys` holds the call keys.

        Raises:
            HandshakeFailed: the answer is malformed, from another identity, or
                its signature or key confirmation fails. The handshake is then dead.
        """
        if self.state is not State.CALLER_EXPECT_ANSWER:
            raise LocalProtocolError(f"cannot receive an answer in state {self.state.name}")
        try:
            return self._receive_answer(data)
        except HandshakeFailed:
            self._fail()
            raise

    def _receive_answer(self, data: bytes) -> bytes:
        assert self._offer is not None and self._ephemeral is not None
        eph, offer = self._ephemeral, self._offer
        # parse and check who answered
        try:
            answer = Answer.parse(data)
        except DecodeError as exc:
            raise HandshakeFailed(f"malformed answer: {exc}") from None
        signer = answer.callee_identity
        if signer != self._their_identity and signer not in self._their_devices:
            raise HandshakeFailed(f"{self._their_name} answered with an unexpected identity key")
        # check the callee's signature over the transcript
        signed = keyschedule.transcript_hash(self._offer_bytes, answer.signed_part())
        try:
            signer.verify(answer.signature, signed, context=CONTEXT_ANSWER)
        except BadSignature:
            raise HandshakeFailed("answer signature does not verify") from None
        # shared secrets (ML-KEM decapsulation rejects implicitly: a bad
        # ciphertext gives a wrong secret, caught by the MAC below)
        try:
            x_secret = x25519.X25519PrivateKey.from_private_bytes(eph.x25519_private).exchange(
                x25519.X25519PublicKey.from_public_bytes(answer.x25519_public)
            )
        except ValueError:
            raise HandshakeFailed("answer has an invalid X25519 key") from None
        kem_secret = mlkem.MLKEM768PrivateKey.from_seed_bytes(eph.mlkem_seed).decapsulate(
            answer.mlkem_ciphertext
        )
        secrets = derive(
            offer=offer,
            offer_bytes=self._offer_bytes,
            answer_signed_part=answer.signed_part(),
            mlkem_ciphertext=answer.mlkem_ciphertext,
            mlkem_secret=kem_secret,
            x25519_secret=x_secret,
            callee_x25519=answer.x25519_public,
        )
        # key confirmation from the callee
        expected = keyschedule.mac(secrets.confirm_callee, signed)
        if not keyschedule.mac_equal(expected, answer.confirm_mac):
            raise HandshakeFailed("answer key confirmation failed")
        # our confirmation, revealing the SAS nonce
        full = keyschedule.transcript_hash(self._offer_bytes, data, eph.sas_nonce)
        confirm = Confirm(
            sas_nonce=eph.sas_nonce, confirm_mac=keyschedule.mac(secrets.confirm_caller, full)
        )
        self._keys = call_keys(
            secrets,
            role=Role.CALLER,
            offer=offer,
            full_transcript=full,
            their_name=self._their_name,
            their_identity=self._their_identity,
        )
        self._ephemeral = None  # forward secrecy: drop the ephemerals
        self.state = State.ESTABLISHED
        return confirm.serialize()

    def _drop_secrets(self) -> None:
        self._ephemeral = None


class CalleeHandshake(_Handshake):
    """The callee's side.

    Pass the offer to :meth:`receive_offer` (it says who is calling); if the
    user accepts, send the bytes of :meth:`answer`; pass the confirm to
    :meth:`receive_confirm`, which returns the call keys.

    Args:
        call_id: the server-assigned call id the offer must carry.
        our_name: our username.
        our_identity: our signing key (this device's key, or the account key).
        our_account: our account key, whose fingerprint the offer must name;
            ``None``: ``our_identity`` is it.
    """

    def __init__(
        self,
        *,
        call_id: bytes,
        our_name: str,
        our_identity: IdentityPrivateKey,
        our_account: IdentityPublicKey | None = None,
    ):
        check_call_id(call_id)
        check_name(our_name)
        self._our_account = our_account or our_identity.public_key()  # named by the offer
        self._their_account: IdentityPublicKey | None = None  # set by vouch()
        self.state = State.CALLEE_EXPECT_OFFER  # what we wait for
        self._call_id = call_id  # server-assigned call id
        self._our_name = our_name  # our username
        self._our_identity = our_identity  # our long-term signing key
        self._offer: Offer | None = None  # the verified offer
        self._offer_bytes = b""  # its exact bytes, for the transcript
        self._answer_bytes = b""  # the answer we sent
        self._secrets: Secrets | None = None  # derived when answering
        self._keys: CallKeys | None = None  # result once established

    def receive_offer(self, data: bytes, *, now: float) -> Offer:
        """Check an offer and return it (the caller's name and identity are verified).

        The caller's identity is proven by its signature; whether it is the
        identity *expected* for that name (the pinned one) is for the caller
        of this method to decide before answering, and so is whether this
        call id was seen before (a replay within :data:`OFFER_MAX_AGE_S`).

        Args:
            data: the offer's bytes.
            now: our wall clock, Unix seconds.

        Raises:
            HandshakeFailed: malformed, for another call or user, signed badly,
                made for a different key of ours (a sign of key substitution),
                stale (older than :data:`OFFER_MAX_AGE_S`) or made more than
                :data:`CLOCK_SKEW_S` in our future.
        """
        if self.state is not State.CALLEE_EXPECT_OFFER:
            raise LocalProtocolError(f"cannot receive an offer in state {self.state.name}")
        try:
            offer = self._check_offer(data)
            check_fresh(offer, now)
        except HandshakeFailed:
            self._fail()
            raise
        self._offer, self._offer_bytes = offer, bytes(data)
        self.state = State.CALLEE_EXPECT_DECISION
        return offer

    def _check_offer(self, data: bytes) -> Offer:
        try:
            offer = Offer.parse(data)
        except DecodeError as exc:
            raise HandshakeFailed(f"malformed offer: {exc}") from None
        if not keyschedule.mac_equal(offer.call_id, self._call_id):
            raise HandshakeFailed("offer is for another call")
        if offer.callee_name != self._our_name:
            raise HandshakeFailed("offer is for another user")
        our_fingerprint = self._our_account.fingerprint()
        if not keyschedule.mac_equal(offer.callee_fingerprint, our_fingerprint):
            raise HandshakeFailed(
                f"{offer.caller_name} was given a different identity key for you: "
                "possible key substitution by the server"
            )
        try:
            offer.caller_identity.verify(
                offer.signature, offer.signed_part(), context=CONTEXT_OFFER
            )
        except BadSignature:
            raise HandshakeFailed("offer signature does not verify") from None
        return offer

    def vouch(self, their_account: IdentityPublicKey) -> None:
        """Name the caller's account key, whose device key signed the offer.

        The caller of this class checked that device key is in the caller's
        device list verified under ``their_account``; the call keys then name
        ``their_account`` (what contacts pin), not the device key.
        """
        self._their_account = their_account

    def answer(self) -> bytes:
        """Accept the call: build the answer to send.

        Raises:
            HandshakeFailed: the caller's ephemeral keys are invalid.
        """
        if self.state is not State.CALLEE_EXPECT_DECISION or self._offer is None:
            raise LocalProtocolError(f"cannot answer in state {self.state.name}")
        offer = self._offer
        # encapsulate to the caller's ML-KEM key, exchange X25519
        try:
            kem_public = mlkem.MLKEM768PublicKey.from_public_bytes(offer.mlkem_public)
            their_x = x25519.X25519PublicKey.from_public_bytes(offer.x25519_public)
            our_x = x25519.X25519PrivateKey.generate()
            x_secret = our_x.exchange(their_x)
        except ValueError:
            self._fail()
            raise HandshakeFailed("offer has invalid ephemeral keys") from None
        kem_secret, ciphertext = kem_public.encapsulate()
        our_x_public = our_x.public_key().public_bytes_raw()
        unsigned = Answer(
            callee_identity=self._our_identity.public_key(),
            x25519_public=our_x_public,
            mlkem_ciphertext=ciphertext,
            signature=b"",
            confirm_mac=b"",
        )
        signed = keyschedule.transcript_hash(self._offer_bytes, unsigned.signed_part())
        secrets = derive(
            offer=offer,
            offer_bytes=self._offer_bytes,
            answer_signed_part=unsigned.signed_part(),
            mlkem_ciphertext=ciphertext,
            mlkem_secret=kem_secret,
            x25519_secret=x_secret,
            callee_x25519=our_x_public,
        )
        answer = replace(
            unsigned,
            signature=self._our_identity.sign(signed, context=CONTEXT_ANSWER),
            confirm_mac=keyschedule.mac(secrets.confirm_callee, signed),
        )
        self._secrets = secrets
        self._answer_bytes = answer.serialize()
        self.state = State.CALLEE_EXPECT_CONFIRM
        return self._answer_bytes

    def receive_confirm(self, data: bytes) -> CallKeys:
        """Check the caller's confirm; return the call keys.

        Raises:
            HandshakeFailed: malformed, the nonce does not match its commitment,
                or key confirmation fails.
        """
        if self.state is not State.CALLEE_EXPECT_CONFIRM:
            raise LocalProtocolError(f"cannot receive a confirm in state {self.state.name}")
        assert self._offer is not None and self._secrets is not None
        try:
            confirm = Confirm.parse(data)
        except DecodeError as exc:
            self._fail()
            raise HandshakeFailed(f"malformed confirm: {exc}") from None
        if not keyschedule.mac_equal(commitment(confirm.sas_nonce), self._offer.sas_commitment):
            self._fail()
            raise HandshakeFailed("SAS nonce does not match its commitment")
        full = keyschedule.transcript_hash(self._offer_bytes, self._answer_bytes, confirm.sas_nonce)
        expected = keyschedule.mac(self._secrets.confirm_caller, full)
        if not keyschedule.mac_equal(expected, confirm.confirm_mac):
            self._fail()
            raise HandshakeFailed("confirm key confirmation failed")
        self._keys = call_keys(
            self._secrets,
            role=Role.CALLEE,
            offer=self._offer,
            full_transcript=full,
            their_name=self._offer.caller_name,
            their_identity=self._their_account or self._offer.caller_identity,
        )
        self._secrets = None  # drop handshake secrets
        self.state = State.ESTABLISHED
        return self._keys

    def reject(self) -> None:
        """Decline the call; the handshake is dead."""
        self._fail()

    def _drop_secrets(self) -> None:
        self._secrets = None
