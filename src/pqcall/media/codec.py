"""The audio codec: a small interface and its Opus implementation.

Scope: turn frames of PCM into packets and back, conceal a lost frame, and
recover a lost frame from the next packet's in-band FEC (RFC 6716 section
2.1.7). Nothing here knows about sockets, clocks or the jitter buffer: the
caller decides *when* to decode, conceal or recover.

PCM in the whole media layer is a 1-D ``numpy.int16`` array of mono samples at
48 kHz (:data:`Pcm`). A frame is ``samples_per_frame(frame_ms)`` samples long.

Opus is reached through ``opuslib_next`` (libopus bundled in its wheel); only
this module imports it, so another codec or binding can replace it behind
:class:`AudioEncoder` / :class:`AudioDecoder`.

Defaults (:class:`OpusSettings`): 20 ms frames, VOIP application, wideband
at most, :data:`DEFAULT_BITRATE_BPS` (39.6 kbit/s, 99 bytes a frame) as a
variable bitrate under a hard cap of one frame's share of the packet,
in-band FEC on but planned for 0 % loss (the session raises it from receiver
reports with :meth:`OpusEncoder.set_expected_loss_percent`), no DTX. The
media layer pads every packet to the cap inside the encryption, so all audio
packets have one size on the wire (``docs/protocol.md``, "Constant size").
The measurements behind these choices are in
``docs/decisions/0100-opus-codec-defaults.md``.

RFC 2198-style redundancy (the previous frame sent again when loss is seen
and the encoder has no FEC) sits above this module, in
:mod:`pqcall.transport.media_protocol`; a redundant copy is decoded with
:meth:`OpusDecoder.decode` like any packet.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
import opuslib_next  # type: ignore[import-untyped]
import opuslib_next.api  # type: ignore[import-untyped]
import opuslib_next.api.decoder  # type: ignore[import-untyped]
import opuslib_next.api.encoder  # type: ignore[import-untyped]

from pqcall.exceptions import CodecError, LocalProtocolError

__all__ = [
    "CHANNELS",
    "DEFAULT_BITRATE_BPS",
    "DEFAULT_EXPECTED_LOSS_PERCENT",
    "DEFAULT_FRAME_MS",
    "FRAME_DURATIONS_MS",
    "MAX_PACKET_DURATION_MS",
    "SAMPLE_RATE_HZ",
    "SAMPLE_WIDTH_BYTES",
    "AudioDecoder",
    "AudioEncoder",
    "Bandwidth",
    "OpusDecoder",
    "OpusEncoder",
    "OpusSettings",
    "Pcm",
    "check_pcm",
    "has_fec",
    "packet_bytes",
    "samples_per_frame",
    "silence",
]

Pcm: TypeAlias = npt.NDArray[np.int16]
"""Mono 48 kHz signed 16-bit samples, a 1-D array: the media layer's only PCM form."""

_INT16: Final = np.dtype(np.int16)

# format constants
SAMPLE_RATE_HZ: Final = 48_000
CHANNELS: Final = 1
SAMPLE_WIDTH_BYTES: Final = 2

# Opus constants (RFC 6716 section 2.1.4 and 3.2.1)
FRAME_DURATIONS_MS: Final = (10, 20, 40, 60)
MAX_PACKET_DURATION_MS: Final = 120
MIN_BITRATE_BPS: Final = 6_000
MAX_BITRATE_BPS: Final = 510_000
MAX_COMPLEXITY: Final = 10

# our defaults
DEFAULT_FRAME_MS: Final = 20
DEFAULT_BITRATE_BPS: Final = 39_600
# 99 bytes per 20 ms frame: with the 7-byte media header a 106-byte packet, 63.2 kbit/s
# on the wire (the goal is at most 64); docs/decisions/0100-opus-codec-defaults.md
DEFAULT_EXPECTED_LOSS_PERCENT: Final = 0
DEFAULT_COMPLEXITY: Final = 10

_MAX_PACKET_SAMPLES: Final = SAMPLE_RATE_HZ * MAX_PACKET_DURATION_MS // 1000
# a packet is at most bitrate * 60 ms / 8 = 3825 bytes; 4000 leaves room
_MAX_PACKET_BYTES: Final = 4_000


def packet_bytes(bitrate_bps: int, frame_ms: int) -> int:
    """Bytes of one frame of ``frame_ms`` at ``bitrate_bps``: the encoder's packet cap."""
    return bitrate_bps * frame_ms // 8000


def samples_per_frame(frame_ms: int) -> int:
    """Number of samples in a frame of ``frame_ms`` milliseconds at 48 kHz."""
    return SAMPLE_RATE_HZ * frame_ms // 1000


def silence(samples: int) -> Pcm:
    """A new frame of ``samples`` zero samples."""
    return np.zeros(samples, dtype=np.int16)


def check_pcm(pcm: object, samples: int | None = None) -> Pcm:
    """Return ``pcm`` if it is media-layer PCM, else raise.

    Args:
        pcm: the value to check.
        samples: the exact length required, or None for any length.

    Raises:
        LocalProtocolError: not a 1-D int16 array, or not ``samples`` long.
    """
    if (
        not isinstance(pcm, np.ndarray)
        or (pcm.dtype is not _INT16 and pcm.dtype != _INT16)  # ``is``: the common, fast case
        or pcm.ndim != 1
    ):
        kind = (
            f"{pcm.dtype} array of shape {pcm.shape}"
            if isinstance(pcm, np.ndarray)
            else type(pcm).__name__
        )
        raise LocalProtocolError(f"PCM must be a 1-D int16 numpy array, got {kind}")
    if samples is not None and len(pcm) != samples:
        raise LocalProtocolError(f"PCM frame has {len(pcm)} samples, expected {samples}")
    return pcm


class Bandwidth(enum.Enum):
    """Opus audio bandwidths, by the highest frequency they code (RFC 6716 section 2)."""

    NARROWBAND = 4_000
    MEDIUMBAND = 6_000
    WIDEBAND = 8_000
    SUPERWIDEBAND = 12_000
    FULLBAND = 20_000


_OPUS_BANDWIDTH: Final = {
    Bandwidth.NARROWBAND: opuslib_next.BANDWIDTH_NARROWBAND,
    Bandwidth.MEDIUMBAND: opuslib_next.BANDWIDTH_MEDIUMBAND,
    Bandwidth.WIDEBAND: opuslib_next.BANDWIDTH_WIDEBAND,
    Bandwidth.SUPERWIDEBAND: opuslib_next.BANDWIDTH_SUPERWIDEBAND,
    Bandwidth.FULLBAND: opuslib_next.BANDWIDTH_FULLBAND,
}


@dataclass(frozen=True, slots=True)
class OpusSettings:
    """How the Opus encoder is configured; the decoder only needs ``frame_ms``.

    Raises:
        CodecError: from the constructor, when a value is out of range.
    """

    frame_ms: int = DEFAULT_FRAME_MS
    """Frame duration in milliseconds: 10, 20, 40 or 60."""
    bitrate_bps: int = DEFAULT_BITRATE_BPS
    """Target bitrate in bit/s of the Opus payload (exact per packet when ``vbr`` is off)."""
    vbr: bool = True
    """Variable bitrate under a hard cap: no packet is longer than ``max_packet_bytes``.

    Packet sizes of variable-bitrate speech leak words, so the media layer
    pads every packet to that cap inside the encryption: on the wire all are
    the same size, as with constant bitrate. Constant bitrate (off) costs
    libopus about twice the CPU per frame for about 0.05 PESQ-WB more in the
    same packet (docs/decisions/0100-opus-codec-defaults.md).
    """
    max_bandwidth: Bandwidth = Bandwidth.WIDEBAND
    """Highest audio bandwidth the encoder may choose."""
    bandwidth: Bandwidth | None = None
    """Force this audio bandwidth (None: the encoder chooses, up to ``max_bandwidth``).

    At 8 kbit/s the encoder would choose narrowband; forcing wideband keeps a
    low-rate copy in the same SILK mode as the main stream, so a decoder can
    switch between them without resetting (``media_protocol`` backup copies).
    """
    fec: bool = True
    """In-band forward error correction (LBRR); emitted only while expected loss > 0."""
    expected_loss_percent: int = DEFAULT_EXPECTED_LOSS_PERCENT
    """Packet loss in percent the encoder plans FEC for; raise it when loss is seen."""
    complexity: int = DEFAULT_COMPLEXITY
    """Encoder effort, 0 (fastest) to 10 (best)."""

    def __post_init__(self) -> None:
        if self.frame_ms not in FRAME_DURATIONS_MS:
            choices = ", ".join(map(str, FRAME_DURATIONS_MS))
            raise CodecError(f"Opus frame size must be one of {choices} ms, got {self.frame_ms}")
        if not MIN_BITRATE_BPS <= self.bitrate_bps <= MAX_BITRATE_BPS:
            raise CodecError(
                f"Opus bitrate must be {MIN_BITRATE_BPS}-{MAX_BITRATE_BPS} bit/s, "
                f"got {self.bitrate_bps}"
            )
        if not 0 <= self.expected_loss_percent <= 100:
            raise CodecError(
                f"expected packet loss must be 0-100 %, got {self.expected_loss_percent}"
            )
        if not 0 <= self.complexity <= MAX_COMPLEXITY:
            raise CodecError(f"Opus complexity must be 0-{MAX_COMPLEXITY}, got {self.complexity}")

    @property
    def frame_samples(self) -> int:
        """Samples in one frame."""
        return samples_per_frame(self.frame_ms)

    @property
    def max_packet_bytes(self) -> int:
        """The longest packet at ``bitrate_bps`` (every packet is this long when ``vbr`` is off)."""
        return packet_bytes(self.bitrate_bps, self.frame_ms)


class AudioEncoder(Protocol):
    """Turns one frame of PCM into one packet."""

    @property
    def frame_samples(self) -> int:
        """Samples every frame passed to :meth:`encode` must have."""
        ...

    def encode(self, pcm: Pcm) -> bytes:
        """Encode one frame; raises ``LocalProtocolError`` on a frame of the wrong shape."""
        ...


class AudioDecoder(Protocol):
    """Turns packets back into PCM, and fills in for lost ones.

    Calling contract, per frame slot, in order: :meth:`decode` when the packet
    arrived; else :meth:`decode_fec` with the packet of the *next* slot when it
    is already there (then :meth:`decode` that next packet as usual); else
    :meth:`conceal`. Each call advances the decoder by one frame.
    """

    @property
    def frame_samples(self) -> int:
        """Samples :meth:`conceal` and :meth:`decode_fec` will produce."""
        ...

    def decode(self, packet: bytes) -> Pcm:
        """Decode one packet; raises ``CodecError`` when it is corrupt."""
        ...

    def conceal(self) -> Pcm:
        """Invent one frame for a lost packet (PLC)."""
        ...

    def decode_fec(self, next_packet: bytes) -> Pcm:
        """Recover the lost frame before ``next_packet`` from its FEC, else conceal."""
        ...

    def reset(self) -> None:
        """Forget all history, as for a new stream (e.g. the sender restarted)."""
        ...


def _opus_message(error: Exception) -> str:
    return str(error) if isinstance(error, opuslib_next.OpusError) else repr(error)


class OpusEncoder:
    """An :class:`AudioEncoder` for Opus, configured by :class:`OpusSettings`."""

    def __init__(self, settings: OpusSettings | None = None) -> None:
        """Create and configure a libopus encoder.

        Raises:
            CodecError: libopus refused a setting.
        """
        settings = OpusSettings() if settings is None else settings
        self.settings = settings
        """The settings this encoder was made with (bitrate and expected loss may change since)."""
        try:
            encoder = opuslib_next.Encoder(SAMPLE_RATE_HZ, CHANNELS, opuslib_next.APPLICATION_VOIP)
            encoder.complexity = settings.complexity
            encoder.bitrate = settings.bitrate_bps
            encoder.vbr = int(settings.vbr)
            encoder.max_bandwidth = _OPUS_BANDWIDTH[settings.max_bandwidth]
            if settings.bandwidth is not None:
                encoder.bandwidth = _OPUS_BANDWIDTH[settings.bandwidth]
            encoder.inband_fec = int(settings.fec)
            encoder.packet_loss_perc = settings.expected_loss_percent
            encoder.dtx = 0
        except (opuslib_next.OpusError, OSError) as error:
            raise CodecError(f"cannot configure the Opus encoder: {_opus_message(error)}") from None
        self._encoder = encoder
        self._state = encoder.encoder_state  # libopus encoder, called directly per frame
        self._input = (ctypes.c_int16 * settings.frame_samples)()  # one frame, for libopus
        # the same memory as a numpy frame, so a frame is copied in with one assignment
        self._input_view: Pcm = np.frombuffer(memoryview(self._input), dtype=np.int16)
        self._output = ctypes.create_string_buffer(_MAX_PACKET_BYTES)  # the packet, reused
        self._max_bytes = settings.max_packet_bytes  # no packet is longer (VBR's cap)

    @property
    def frame_samples(self) -> int:
        """Samples every frame passed to :meth:`encode` must have."""
        return self.settings.frame_samples

    @property
    def lookahead_samples(self) -> int:
        """Codec delay: decoded audio lags the input by this many samples."""
        return int(self._encoder.lookahead)

    def set_expected_loss_percent(self, percent: int) -> None:
        """Tell the encoder how much loss to plan FEC for (e.g. from receiver reports).

        Raises:
            CodecError: ``percent`` is outside 0-100.
        """
        if not 0 <= percent <= 100:
            raise CodecError(f"expected packet loss must be 0-100 %, got {percent}")
        self._encoder.packet_loss_perc = percent

    @property
    def complexity(self) -> int:
        """The encoder's effort now, 0-10 (libopus's own setting)."""
        return int(self._encoder.complexity)

    def set_complexity(self, complexity: int) -> None:
        """Change the encoder's effort from the next frame on.

        Raises:
            CodecError: ``complexity`` is outside 0-10.
        """
        if not 0 <= complexity <= MAX_COMPLEXITY:
            raise CodecError(f"Opus complexity must be 0-{MAX_COMPLEXITY}, got {complexity}")
        self._encoder.complexity = complexity

    def set_bitrate(self, bitrate_bps: int) -> None:
        """Change the target bitrate, and with it the packet cap, from the next frame on.

        Raises:
            CodecError: ``bitrate_bps`` is outside 6000-510000 bit/s.
        """
        if not MIN_BITRATE_BPS <= bitrate_bps <= MAX_BITRATE_BPS:
            raise CodecError(
                f"Opus bitrate must be {MIN_BITRATE_BPS}-{MAX_BITRATE_BPS} bit/s, got {bitrate_bps}"
            )
        self._encoder.bitrate = bitrate_bps
        self._max_bytes = packet_bytes(bitrate_bps, self.settings.frame_ms)

    def encode(self, pcm: Pcm) -> bytes:
        """Encode exactly one frame.

        Args:
            pcm: ``frame_samples`` samples of media-layer PCM.

        Returns:
            One Opus packet, at most the bitrate's share of a frame long
            (exactly that long when VBR is off).

        Raises:
            LocalProtocolError: ``pcm`` is not one frame of int16 samples.
            CodecError: libopus failed.
        """
        self._input_view[:] = check_pcm(pcm, self.frame_samples)
        # libopus straight into reused buffers (the binding allocates both per call)
        length = _libopus_encode(
            self._state, self._input, len(self._input), self._output, self._max_bytes
        )
        if length < 0:
            raise CodecError(f"Opus encoder failed: {opuslib_next.OpusError(length)}")
        return ctypes.string_at(self._output, length)


class OpusDecoder:
    """An :class:`AudioDecoder` for Opus.

    A packet may hold any Opus duration up to 120 ms, whatever ``frame_ms``
    says; a concealed or FEC-recovered frame lasts as long as the last packet
    decoded (``frame_ms`` before the first one).
    """

    def __init__(self, frame_ms: int = DEFAULT_FRAME_MS) -> None:
        """Create a libopus decoder.

        Args:
            frame_ms: the frame duration to assume until a packet says otherwise.

        Raises:
            CodecError: ``frame_ms`` is not an Opus frame size, or libopus failed.
        """
        self._initial_samples = OpusSettings(frame_ms=frame_ms).frame_samples
        self._last_samples = self._initial_samples
        try:
            self._decoder = opuslib_next.Decoder(SAMPLE_RATE_HZ, CHANNELS)
        except (opuslib_next.OpusError, OSError) as error:
            raise CodecError(f"cannot create the Opus decoder: {_opus_message(error)}") from None
        self._state = self._decoder.decoder_state  # libopus decoder, called directly per frame
        self._output = (ctypes.c_int16 * _MAX_PACKET_SAMPLES)()  # decoded samples, reused
        # the same memory as numpy samples: a decoded frame is copied out in one slice
        self._output_view: Pcm = np.frombuffer(memoryview(self._output), dtype=np.int16)

    @property
    def frame_samples(self) -> int:
        """Length of the frame :meth:`conceal` and :meth:`decode_fec` will produce."""
        return self._last_samples

    def decode(self, packet: bytes) -> Pcm:
        """Decode one packet.

        Returns:
            As many samples as the packet holds (``frame_samples`` normally).

        Raises:
            CodecError: the packet is empty or corrupt; the decoder is unharmed
                and the caller should count the packet as lost.
        """
        if not packet:
            raise CodecError("empty Opus packet (use conceal() for a lost frame)")
        samples = self._decode(bytes(packet), _MAX_PACKET_SAMPLES, use_fec=False)
        if samples < 0:
            raise CodecError(f"Opus packet does not decode: {opuslib_next.OpusError(samples)}")
        self._last_samples = samples
        return self._output_view[:samples].copy()

    def conceal(self) -> Pcm:
        """Invent one frame of ``frame_samples`` for a lost packet (Opus PLC)."""
        return self._decode_lost(b"", use_fec=False)

    def decode_fec(self, next_packet: bytes) -> Pcm:
        """Recover the lost frame that came just before ``next_packet``.

        Uses the low-bitrate copy (LBRR) the encoder put in ``next_packet``
        when FEC was on and loss was expected; conceals as :meth:`conceal`
        when the packet holds none. Afterwards decode ``next_packet`` itself
        with :meth:`decode`. Never raises for a bad ``next_packet``: it then
        conceals, and the defect surfaces when the packet is decoded.

        Returns:
            ``frame_samples`` samples.
        """
        if not has_fec(next_packet):
            return self.conceal()
        return self._decode_lost(bytes(next_packet), use_fec=True)

    def reset(self) -> None:
        """Forget all history, as for a new stream (e.g. the sender restarted)."""
        self._decoder.reset_state()
        self._last_samples = self._initial_samples

    def _decode_lost(self, packet: bytes, use_fec: bool) -> Pcm:
        samples = self._decode(packet, self._last_samples, use_fec=use_fec)
        if samples < 0:
            # a FEC attempt libopus rejects still owes the caller a frame
            samples = self._decode(b"", self._last_samples, use_fec=False)
        if samples < 0:
            raise CodecError(f"Opus concealment failed: {opuslib_next.OpusError(samples)}")
        return self._output_view[:samples].copy()

    def _decode(self, packet: bytes, max_samples: int, *, use_fec: bool) -> int:
        """libopus ``opus_decode`` into the reused output buffer: samples, or an error code."""
        result: int = _libopus_decode(
            self._state, packet, len(packet), self._output, max_samples, int(use_fec)
        )
        return result


# the binding's own ctypes prototypes; called directly to skip its per-call allocations
_libopus_encode: Final = opuslib_next.api.encoder.libopus_encode
_libopus_decode: Final = opuslib_next.api.decoder.libopus_decode

_opus_packet_has_lbrr = getattr(opuslib_next.api.libopus, "opus_packet_has_lbrr", None)
if _opus_packet_has_lbrr is not None:
    _opus_packet_has_lbrr.argtypes = (ctypes.c_char_p, ctypes.c_int32)
    _opus_packet_has_lbrr.restype = ctypes.c_int

# TOC configurations 0-15 are SILK-only or hybrid, the modes that can carry LBRR
_LAST_SILK_CONFIG: Final = 15


def has_fec(packet: bytes) -> bool:
    """Whether ``packet`` carries in-band FEC for the frame before it.

    Exact with libopus >= 1.5 (``opus_packet_has_lbrr``); with an older
    libopus, true for every SILK or hybrid packet (which *may* carry it).
    False for an empty or malformed packet.
    """
    if not packet:
        return False
    if _opus_packet_has_lbrr is None:
        return packet[0] >> 3 <= _LAST_SILK_CONFIG
    return bool(_opus_packet_has_lbrr(bytes(packet), len(packet)) > 0)
