"""Every error pqcall raises on purpose.

::

    PqcallError
    ├── ProtocolError
    │   ├── LocalProtocolError      you misused the API (wrong state, bad argument)
    │   └── RemoteProtocolError     the peer misbehaved
    │       ├── DecodeError         bytes that do not parse as the expected message
    │       └── SealRejected        a sealed group message failed to open or was replayed
    ├── BadSignature                a hybrid signature did not verify
    ├── HandshakeFailed             the call handshake cannot complete
    ├── KeystoreError               unreadable or corrupt keystore
    │   ├── WrongPassphrase         the passphrase does not open the keystore
    │   ├── NoAccount               the home directory holds no account
    │   └── AccountExists           it already holds one
    ├── FileCryptoError             an encrypted file is truncated, reordered,
    │                               tampered with, or not for us
    ├── TransferError               a file cannot be sent or received (unreadable
    │                               source, incomplete download, not for us)
    ├── CodecError                  the audio codec cannot be configured, or a packet
    │                               does not decode
    ├── CallError                   a call cannot be placed or went wrong
    │   ├── KeyChangedError         a contact's key differs from the pinned one
    │   └── PathFailed              no direct or relayed media path
    ├── DeviceError                 an audio device cannot be used
    └── ServerError                 the signaling server refused or is unreachable
        ├── ServerUnreachable       no answer at all
        └── ApiError                an error status, with the server's reason
            └── UnknownUser         no account of that name

Crypto failures are opaque: their messages name what was wrong with the input
("signature does not verify"), never secret values.
"""

from __future__ import annotations


class PqcallError(Exception):
    """Base class of every error pqcall raises on purpose."""


class ProtocolError(PqcallError):
    """A sans-I/O protocol object was driven into an error."""


class LocalProtocolError(ProtocolError):
    """The caller of the API misused it (wrong state, invalid argument)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class DecodeError(RemoteProtocolError):
    """Bytes do not parse as the expected encoding."""


class SealRejected(RemoteProtocolError):
    """A message sealed over a pairwise group channel did not authenticate, or was replayed."""


class BadSignature(PqcallError):
    """A hybrid signature did not verify (either half failing is enough)."""


class HandshakeFailed(PqcallError):
    """The call handshake cannot complete; the call must not go on."""


class KeystoreError(PqcallError):
    """The keystore cannot be read: missing, corrupt, or of an unknown version."""


class WrongPassphrase(KeystoreError):
    """The passphrase does not open the keystore."""


class FileCryptoError(PqcallError):
    """An encrypted file failed a check: truncated, reordered, tampered, or not for us."""


class TransferError(PqcallError):
    """A file cannot be sent or received: a local file problem, or an upload or download
    that cannot complete."""


class CodecError(PqcallError):
    """The audio codec refused its settings, its input, or a packet (corrupt or truncated)."""


class CallError(PqcallError):
    """A call could not be placed or went wrong."""


class DeviceError(PqcallError):
    """An audio device cannot be opened or used."""


class ServerError(PqcallError):
    """The signaling server refused a request or cannot be reached."""


class ServerUnreachable(ServerError):
    """No answer from the signaling server (refused, timed out, name not resolved)."""


class ApiError(ServerError):
    """The server answered a request with an error status; the message is the server's reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status code


class UnknownUser(ApiError):
    """No account of that name on the server."""


class NoAccount(KeystoreError):
    """This home directory holds no account yet."""


class AccountExists(KeystoreError):
    """This home directory already holds an account."""


class KeyChangedError(CallError):
    """A contact's identity key differs from the pinned one: refused until the user accepts it."""


class PathFailed(CallError):
    """No media path (direct or relay) to the peer could be established."""
