"""File names in a transfer: the saved name of a received file, and our own files' names.

A received file's name comes from inside the encryption, so from the sender:
:func:`sanitize_name` turns it into a name that is safe to create in the
output folder, and :func:`place_file` moves the verified plaintext there
without ever overwriting a file (``name (1).ext``). Pending transfers keep
their ciphertexts as ``<key><CIPHERTEXT_SUFFIX>``; a file id is what the
server names a transfer by (:func:`is_file_id`). Pure except
:func:`place_file`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from pqcall.exceptions import TransferError
from pqcall.safefile import FILE_MODE, remove_quietly
from pqcall.signaling.messages import FILE_ID_PATTERN

CIPHERTEXT_SUFFIX = ".pqf"  # a pending upload's or download's local ciphertext

FALLBACK_NAME = "received-file"  # when nothing of the sender's name is usable
MAX_SAVED_NAME_BYTES = 200  # UTF-8 bytes of a saved name, leaving room for " (NNN)"
MAX_SUFFIX_BYTES = 16  # an extension kept when a long name is shortened
MAX_NAME_TRIES = 1000  # "name (1)" ... "name (999)"


def sanitize_name(name: str) -> str:
    """A safe file name from the (untrusted) name inside an encrypted file.

    Path separators and control or format characters (including bidirectional
    overrides that disguise an extension) become ``_``; leading dots and
    surrounding spaces go (no hidden files, no ``..``); the result has at most
    :data:`MAX_SAVED_NAME_BYTES` UTF-8 bytes, keeping a short extension; an
    empty result is :data:`FALLBACK_NAME`.
    """
    cleaned = "".join(
        "_" if char in "/\\" or unicodedata.category(char).startswith("C") else char
        for char in name
    )
    cleaned = cleaned.strip().lstrip(".").strip()
    if len(cleaned.encode("utf-8")) > MAX_SAVED_NAME_BYTES:
        stem, suffix = _split_suffix(cleaned)
        if len(suffix.encode("utf-8")) > MAX_SUFFIX_BYTES:
            stem, suffix = cleaned, ""
        room = MAX_SAVED_NAME_BYTES - len(suffix.encode("utf-8"))
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
        cleaned = stem + suffix
    if cleaned in ("", ".", ".."):
        return FALLBACK_NAME
    return cleaned


def place_file(temp: Path, folder: Path, name: str) -> Path:
    """Move ``temp`` to ``folder/name``, or ``name (1)``... if taken; never overwrite.

    The final name is claimed with ``O_EXCL`` and then replaced by ``temp``, so
    two receivers never pick the same name and an existing file is never touched.

    Raises:
        TransferError: a thousand names are taken.
        OSError: the folder cannot be written.
    """
    stem, suffix = _split_suffix(name)
    for number in range(MAX_NAME_TRIES):
        candidate = folder / (name if number == 0 else f"{stem} ({number}){suffix}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            os.replace(temp, candidate)
        except BaseException:
            remove_quietly(candidate)
            raise
        return candidate
    raise TransferError(f"no free name for {name} in {folder}")


def is_file_id(value: str) -> bool:
    """Whether ``value`` has the form of a server's file id (32 hex digits)."""
    return re.fullmatch(FILE_ID_PATTERN, value) is not None


def _split_suffix(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]
