"""Debian's libsonic (``libsonic0``, Apache-2.0), loaded once through ctypes for the media stages.

Scope: finding the shared library and declaring the C signatures the project calls
(stream create/destroy, pitch, speed, write/read 16-bit samples, samples available).
:mod:`pqcall.media.disguise` (pitch) and :mod:`pqcall.media.time_stretch` (speed) build
their streams on :data:`LIB`; why libsonic: ``docs/decisions/0141`` and ``0800``.
``LIB`` is None where the library is missing (``apt-get install libsonic0``; it comes with
espeak-ng).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

__all__ = ["LIB"]

_LIBRARY_NAMES: Final = ("libsonic.so.0", "sonic")


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    stream, samples = ctypes.c_void_p, ctypes.c_void_p
    lib.sonicCreateStream.restype = stream
    lib.sonicCreateStream.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.sonicDestroyStream.argtypes = (stream,)
    lib.sonicSetPitch.argtypes = (stream, ctypes.c_float)
    lib.sonicSetSpeed.argtypes = (stream, ctypes.c_float)
    lib.sonicWriteShortToStream.restype = ctypes.c_int
    lib.sonicWriteShortToStream.argtypes = (stream, samples, ctypes.c_int)
    lib.sonicReadShortFromStream.restype = ctypes.c_int
    lib.sonicReadShortFromStream.argtypes = (stream, samples, ctypes.c_int)
    lib.sonicSamplesAvailable.restype = ctypes.c_int
    lib.sonicSamplesAvailable.argtypes = (stream,)
    return lib


def _load() -> ctypes.CDLL | None:
    for name in _LIBRARY_NAMES:
        path = name if name.endswith(".0") else ctypes.util.find_library(name)
        if path is None:
            continue
        try:
            return _declare(ctypes.CDLL(path))
        except OSError:
            continue
    return None


LIB: Final = _load()
"""The loaded library with its signatures declared, or None."""
