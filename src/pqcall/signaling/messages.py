"""Every HTTP body and push event of the signaling API, shared by server and client.

Binary values (keys, signatures, handshake messages, challenges) travel in JSON
as base64url without padding (RFC 4648 section 5): :func:`b64encode` and
:func:`b64decode`, and the :class:`Base64Url` field type that validates them.
Models are strict (no coercion from other JSON types), refuse unknown fields,
and bound every field, so a request is validated completely before the server
does any work on it. Usernames are normalized on the way in
(:mod:`pqcall.signaling.usernames`).

The byte strings signed by a client for the server live here too, so both
sides build them the same way: :func:`register_signed_data` and
:func:`login_signed_data`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from pqcall.crypto import encoding
from pqcall.signaling import usernames
from pqcall.signaling.callstate import RejectReason, State
from pqcall.transport.candidates import (
    MAX_CALL_CANDIDATES,
    MAX_CANDIDATES,
    MAX_HOST_LENGTH,
    MAX_PRIORITY,
    HostPort,
    check_host,
)

# sizes (bytes after base64url decoding)
CHALLENGE_LENGTH = 32
TOKEN_LENGTH = 32
MAX_IDENTITY_BYTES = 4096  # a hybrid identity public key is 1,988 bytes
MAX_SIGNATURE_BYTES = 4096  # a hybrid signature is 3,377 bytes
MAX_KEY_BUNDLE_BYTES = 8192  # a key bundle is 6,610 bytes
MAX_HANDSHAKE_BYTES = 8192  # offer 6,683, answer 6,525, confirm 68 bytes

# other limits (the candidates' are transport's: pqcall.transport.candidates)
MAX_RELAY_TOKEN_BYTES = 64  # the relay's bind tokens are 16 bytes
MAX_HISTORY_CALLS = 100
MAX_PRESENCE_NAMES = 100
MAX_EVENT_TYPE_LENGTH = 64
MAX_SERVER_NAME_LENGTH = 64
MAX_ERROR_LENGTH = 500
CALL_ID_PATTERN = r"^[0-9a-f]{32}$"

# signature contexts (see pqcall.crypto.identity)
REGISTER_CONTEXT = b"pqcall register"
LOGIN_CONTEXT = b"pqcall login"

# push event types (payloads are defined by the events module of the server)
EVENT_CALL_INCOMING = "call.incoming"
EVENT_CALL_ACCEPTED = "call.accepted"
EVENT_CALL_CONFIRMED = "call.confirmed"
EVENT_CALL_REJECTED = "call.rejected"
EVENT_CALL_ENDED = "call.ended"
EVENT_CALL_MISSED = "call.missed"
EVENT_CALL_FAILED = "call.failed"
EVENT_PRESENCE = "presence"
EVENT_FILE_WAITING = "file.waiting"
EVENT_CALL_ANSWERED_ELSEWHERE = "call.answered_elsewhere"  # {call_id, device_name}: stop ringing
MAX_SIGNED_DEVICE_LIST_BYTES = 40 * 1024  # pqcall.signaling.account_messages has the others

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64encode(data: bytes) -> str:
    """Encode ``data`` as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode canonical base64url without padding.

    Raises:
        ValueError: not base64url, padded, or not the canonical encoding.
    """
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not valid base64url without padding")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not valid base64url without padding") from None
    if b64encode(data) != text:
        raise ValueError("not canonical base64url (nonzero trailing bits)")
    return data


@dataclass(frozen=True, slots=True)
class Base64Url:
    """Field type marker: ``Annotated[bytes, Base64Url(max_bytes)]``.

    In JSON the field is a base64url string without padding; in Python it is
    ``bytes`` (a model also accepts the encoded string). ``min_bytes`` and
    ``max_bytes`` bound the decoded length.
    """

    max_bytes: int
    min_bytes: int = 0

    @property
    def max_chars(self) -> int:
        """Length of the longest accepted encoding."""
        return -(-self.max_bytes * 4 // 3)

    def _validate(self, value: object) -> bytes:
        if isinstance(value, str):
            if len(value) > self.max_chars:
                raise ValueError(f"must be at most {self.max_bytes} bytes")
            data = b64decode(value)
        elif isinstance(value, bytes):
            data = value
        else:
            raise ValueError("must be a base64url string")
        if not self.min_bytes <= len(data) <= self.max_bytes:
            if self.min_bytes == self.max_bytes:
                raise ValueError(f"must be exactly {self.max_bytes} bytes")
            raise ValueError(f"must be {self.min_bytes} to {self.max_bytes} bytes")
        return data

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                b64encode, when_used="json"
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "contentEncoding": "base64url",
            "pattern": "^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$",
            "minLength": -(-self.min_bytes * 4 // 3),
            "maxLength": self.max_chars,
        }


Username = Annotated[
    str,
    Field(
        min_length=1,
        max_length=usernames.MAX_RAW_USERNAME_LENGTH,
        description="an account name; normalized (NFKC, case-folded) and checked",
        examples=["alice"],
    ),
    AfterValidator(usernames.normalize),
]
CallId = Annotated[
    str, Field(pattern=CALL_ID_PATTERN, description="32 lowercase hex digits, chosen by the caller")
]
Identity = Annotated[bytes, Base64Url(MAX_IDENTITY_BYTES, 1)]
Signature = Annotated[bytes, Base64Url(MAX_SIGNATURE_BYTES, 1)]
KeyBundleBytes = Annotated[bytes, Base64Url(MAX_KEY_BUNDLE_BYTES, 1)]
Challenge = Annotated[bytes, Base64Url(CHALLENGE_LENGTH, CHALLENGE_LENGTH)]
HandshakeMessage = Annotated[bytes, Base64Url(MAX_HANDSHAKE_BYTES, 1)]
Timestamp = Annotated[float, Field(ge=0, description="unix time in seconds (UTC)")]


class Message(BaseModel):
    """Base of every body: strict, closed, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# ---------------------------------------------------------------- errors, health


class ErrorResponse(Message):
    """Every 4xx and 5xx body: one clear sentence."""

    error: str = Field(max_length=MAX_ERROR_LENGTH)


class HealthResponse(Message):
    """``GET /health``."""

    status: Literal["ok", "unavailable"]
    version: str = Field(max_length=32)
    server_name: str = Field(max_length=MAX_SERVER_NAME_LENGTH)


# ---------------------------------------------------------------- accounts


class RegisterRequest(Message):
    """``POST /register``: claim ``username`` for ``identity``, proving possession.

    ``signature`` is the identity's signature with context
    :data:`REGISTER_CONTEXT` over :func:`register_signed_data`; ``key_bundle``
    must verify under ``identity`` and name the same (normalized) username.
    """

    username: Username
    identity: Identity
    key_bundle: KeyBundleBytes
    signature: Signature


class UserView(Message):
    """A directory entry: ``GET /users/{name}``, and the answer to register and rotate."""

    username: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    identity: Identity
    key_bundle: KeyBundleBytes
    created: Timestamp
    device_list: Annotated[bytes, Base64Url(MAX_SIGNED_DEVICE_LIST_BYTES, 1)] | None = Field(
        default=None, description="the account's SignedDeviceList; null: it never sent one"
    )


class PutBundleRequest(Message):
    """``PUT /keys/bundle``: replace the caller's key bundle by a newer one."""

    key_bundle: KeyBundleBytes


class Presence(Message):
    """One user's presence."""

    username: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    online: bool
    last_seen: Timestamp | None = Field(description="last push connection or login; null: never")


class PresenceResponse(Message):
    """``GET /presence?names=a,b``: the known users among ``names``; unknown ones are left out."""

    users: list[Presence] = Field(max_length=MAX_PRESENCE_NAMES)


# ---------------------------------------------------------------- authentication


class ChallengeRequest(Message):
    """``POST /auth/challenge``."""

    username: Username


class ChallengeResponse(Message):
    """A single-use login challenge."""

    challenge: Challenge
    expires: Timestamp
    server_name: str = Field(
        max_length=MAX_SERVER_NAME_LENGTH,
        description="the name this server signs into logins; a client uses the name it pinned",
    )


class LoginRequest(Message):
    """``POST /auth/login``: ``signature`` with context :data:`LOGIN_CONTEXT`
    over :func:`login_signed_data`."""

    username: Username
    challenge: Challenge
    signature: Signature
    device_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="the device whose key signed (hex); null: the account key (older phones)",
    )


class LoginResponse(Message):
    """A bearer token for ``Authorization: Bearer <token>``."""

    token: str = Field(max_length=64, description="opaque; send as a bearer token")
    expires: Timestamp


# ---------------------------------------------------------------- calls


class Candidate(Message):
    """A transport address a phone offers for the media path, in JSON.

    The JSON form of :class:`pqcall.transport.candidates.Candidate`, checked the same way.
    """

    host: Annotated[
        str, Field(min_length=1, max_length=MAX_HOST_LENGTH), AfterValidator(check_host)
    ]
    port: int = Field(ge=1, le=65535)
    kind: Literal["host", "srflx", "prflx", "relay"] | None = Field(
        default=None, description="RFC 8445 candidate type; null: the server's address guess"
    )
    priority: int | None = Field(default=None, ge=1, le=MAX_PRIORITY, description="RFC 8445")

    @classmethod
    def of(cls, candidate: HostPort) -> Self:
        """The message form of a transport candidate (its kind and priority, if it has them)."""
        kind, priority = getattr(candidate, "kind", None), getattr(candidate, "priority", 0)
        return cls(host=candidate.host, port=candidate.port, kind=kind, priority=priority or None)


Candidates = Annotated[list[Candidate], Field(max_length=MAX_CANDIDATES)]
CallCandidates = Annotated[
    list[Candidate],
    Field(
        max_length=MAX_CALL_CANDIDATES,
        description="the phone's own candidates, then server-reflexive ones"
        " (the address the server saw the phone's request come from, with the phone's ports)",
    ),
]

HangupReason = Literal["hangup", "failed"]
"""``hangup``: the user hung up; ``failed``: the phone gives up (handshake or media failure)."""

MAX_REASON_DETAIL_LENGTH = 200
"""Characters in a failure's reason for people (``detail`` of reject, hangup and call views)."""


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("detail must be printable text on one line")
    return text


ReasonDetail = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_REASON_DETAIL_LENGTH,
        description="why the call failed, for people (\"bob's phone could not open its"
        " microphone: ...\"); the server passes it to the other party's end event",
    ),
    AfterValidator(_printable),
]


class InitiateCall(Message):
    """``POST /call/initiate``: the caller's handshake offer for ``callee``."""

    call_id: CallId
    callee: Username
    offer: HandshakeMessage
    candidates: Candidates = []


class AcceptCall(Message):
    """``POST /call/accept``: the callee's handshake answer."""

    call_id: CallId
    answer: HandshakeMessage
    candidates: Candidates = []


class ConfirmCall(Message):
    """``POST /call/confirm``: the caller's handshake confirmation."""

    call_id: CallId
    confirm: HandshakeMessage


class RejectCall(Message):
    """``POST /call/reject``: the callee refuses a ringing call."""

    call_id: CallId
    reason: RejectReason = "declined"
    detail: ReasonDetail | None = None


class HangupCall(Message):
    """``POST /call/hangup``: either party ends (or cancels) a call."""

    call_id: CallId
    reason: HangupReason = "hangup"
    detail: ReasonDetail | None = None


class CallView(Message):
    """A call as either party sees it (also a call-history entry)."""

    call_id: CallId
    caller: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    callee: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    state: Annotated[State, Field(strict=False)]
    reason: str | None = Field(max_length=32)
    created: Timestamp
    answered: Timestamp | None
    ended: Timestamp | None
    ended_by: Literal["caller", "callee", "system"] | None
    detail: ReasonDetail | None = None
    """Only in end events: the reason the ending party gave, for people (not stored)."""


class TurnGrant(Message):
    """Time-limited credentials for the server's TURN servers (coturn's REST scheme)."""

    urls: list[Annotated[str, Field(min_length=6, max_length=256)]] = Field(
        min_length=1, max_length=4, description="turn: / turns: URLs (RFC 7065), in order"
    )
    username: str = Field(min_length=1, max_length=256, description="expiry:call.party")
    password: str = Field(min_length=1, max_length=128, description="base64 HMAC-SHA1")


class RelayGrant(Message):
    """The media relay one party may use for one call: its own bind token, never the other's."""

    host: str | None = Field(
        max_length=MAX_HOST_LENGTH,
        description="where to send relayed media; null: the host you reach this server at",
    )
    port: int = Field(ge=1, le=65535, description="UDP port of the relay")
    token: Annotated[bytes, Base64Url(MAX_RELAY_TOKEN_BYTES, 1)]
    turn: TurnGrant | None = Field(
        default=None, description="a standard TURN server too (server started with --turn)"
    )


class CallDetail(CallView):
    """A call with what its parties exchange through the server.

    ``*_seen_address`` is the address the server saw each party's request come
    from (``host:port``), which covers a simple NAT; the candidate lists already
    include it (with the phone's own ports). ``relay`` is only ever the
    receiving party's own grant.
    """

    offer: HandshakeMessage | None = None
    answer: HandshakeMessage | None = None
    confirm: HandshakeMessage | None = None
    caller_candidates: CallCandidates = []
    callee_candidates: CallCandidates = []
    caller_seen_address: str | None = Field(default=None, max_length=MAX_HOST_LENGTH + 8)
    callee_seen_address: str | None = Field(default=None, max_length=MAX_HOST_LENGTH + 8)
    relay: RelayGrant | None = None


class PendingCalls(Message):
    """``GET /call/pending/{name}``: calls ringing for the user."""

    calls: list[CallDetail]


class CallHistory(Message):
    """``GET /calls/history``: the account's calls, newest first."""

    calls: list[CallView] = Field(max_length=MAX_HISTORY_CALLS)


# ---------------------------------------------------------------- files

FILE_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_INBOX_FILES = 200
FILE_SENDER_HEADER = "X-Pqcall-Sender"
"""``GET /files/{id}/content``'s header naming the file's sender (no status request first)."""
FILE_SIZE_HEADER = "X-Pqcall-Size"
"""``GET /files/{id}/content``'s header with the file's whole size (as ``FileView.size``)."""

FileId = Annotated[str, Field(pattern=FILE_ID_PATTERN, description="32 lowercase hex digits")]
FileState = Literal["uploading", "stored"]
"""``uploading``: the sender is still sending bytes; ``stored``: complete, waiting for
the recipient (who then downloads and deletes it)."""


class CreateFile(Message):
    """``POST /files``: announce an encrypted file of exactly ``size`` bytes for ``recipient``.

    The server checks the recipient exists, the size limit and the sender's quota
    before any byte is sent. ``size`` is the ciphertext's length (already padded by the
    file format, so it does not give the plaintext's exact length away).
    """

    recipient: Username
    size: int = Field(ge=1, description="ciphertext bytes the upload will carry")


class FileView(Message):
    """A stored or uploading file as its sender or recipient sees it (never its contents)."""

    file_id: FileId
    sender: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    recipient: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    size: int = Field(ge=1, description="ciphertext bytes")
    received: int = Field(ge=0, description="bytes the server holds so far (resume from here)")
    state: FileState
    created: Timestamp
    expires: Timestamp


class Inbox(Message):
    """``GET /files``: complete files waiting for the account, oldest first."""

    files: list[FileView] = Field(max_length=MAX_INBOX_FILES)


# ---------------------------------------------------------------- push events


class Event(Message):
    """One push event, as the WebSocket delivers it.

    ``seq`` increases per account; a phone that reconnects sends the last
    ``seq`` it saw and receives every event after it.
    """

    seq: int = Field(ge=1)
    type: str = Field(max_length=MAX_EVENT_TYPE_LENGTH)
    payload: dict[str, Any]
    created: Timestamp


# ---------------------------------------------------------------- signed data


def register_signed_data(server_name: str, username: str, identity: bytes) -> bytes:
    """What a registration signs: ``server_name || username || identity``, each length-prefixed.

    ``username`` must be the normalized name.
    """
    return encoding.text(server_name) + encoding.text(username) + encoding.vec16(identity)


def login_signed_data(server_name: str, username: str, challenge: bytes) -> bytes:
    """What a login signs: ``server_name || username || challenge``, each length-prefixed.

    Binding the server's name means a login made for one server cannot be
    replayed at another; ``username`` must be the normalized name.
    """
    return encoding.text(server_name) + encoding.text(username) + encoding.vec16(challenge)
