"""The file sweeper: deletes expired files, abandoned uploads and blobs without a row.

A :class:`~pqcall.server.context.Component` (:class:`FileSweeper`). A complete
file is deleted ``file_ttl_s`` after it was completed if the recipient has not
deleted it; an upload that receives no byte for :data:`ABANDONED_UPLOAD_S` is
deleted. Nobody is told.
"""

from __future__ import annotations

import asyncio
import logging
import math

from pqcall.server.background import BackgroundTask
from pqcall.server.blob_store import (
    DISCARDED_SUFFIX,
    FILE_ID_BYTES,
    blob_of,
    files_dir,
    locked_blob,
)
from pqcall.server.bus import leads_sweeps
from pqcall.server.context import AppContext
from pqcall.server.storage import FileRecord

logger = logging.getLogger(__name__)

ABANDONED_UPLOAD_S = 24 * 3600.0  # an upload without a byte for this long is deleted
FILE_SWEEP_INTERVAL_S = 60.0  # app-clock seconds between passes of the file sweeper
SWEEP_BATCH = 500  # files handled per sweep and kind
ORPHAN_SCAN_INTERVAL_S = 3600.0  # app-clock seconds between scans for blobs without a row
ORPHAN_GRACE_S = ABANDONED_UPLOAD_S  # a blob without a row is removed once unwritten this long


class FileSweeper:
    """Deletes expired files and abandoned uploads, blob and row; nobody is told.

    A :class:`~pqcall.server.context.Component`. It wakes every
    ``settings.sweep_interval_s`` (real time) and, at most every
    :data:`FILE_SWEEP_INTERVAL_S` of the app clock, deletes

    - files whose expiry has passed (a stored file ``file_ttl_s`` after it was
      completed; an upload ``file_ttl_s`` after it was announced);
    - uploads whose blob received no byte for :data:`ABANDONED_UPLOAD_S` (an
      upload writing right now holds its blob's lock and is left alone);
    - on its first pass and every :data:`ORPHAN_SCAN_INTERVAL_S` after, blobs
      that have no row (a crash between deleting a file's row and its blob
      leaves one) and were not written for :data:`ORPHAN_GRACE_S`, and
      ``<id>.deleted`` blobs (renamed aside by a delete whose unlink never ran).

    Deleting the row is a compare-and-set on the state the sweeper saw, so a
    file that completed in between is judged again on the next pass. A row is
    always created before its blob and deleted before it, so a blob without a
    row is never one being uploaded.
    """

    def __init__(self) -> None:
        self._task = BackgroundTask("pqcall-file-sweeper")  # the sweep loop while running
        self._swept_at = -math.inf  # app time of the last pass
        self._orphans_scanned_at = -math.inf  # app time of the last scan for orphan blobs
        self._orphan_cursor = ""  # the scan goes on after this blob name ("": from the start)

    async def start(self, context: AppContext) -> None:
        files_dir(context)
        self._task.start(self._run(context))

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self, context: AppContext) -> None:
        while True:
            try:
                if await leads_sweeps(context):  # one node of several (server/bus.py)
                    await self.sweep(context)
            except Exception:
                logger.exception("file sweep failed")
            await asyncio.sleep(context.settings.sweep_interval_s)

    async def sweep(self, context: AppContext) -> int:
        """One pass, if :data:`FILE_SWEEP_INTERVAL_S` has passed since the last; files deleted."""
        now = context.now()
        if now - self._swept_at < FILE_SWEEP_INTERVAL_S:
            return 0
        self._swept_at = now
        storage = context.storage
        deleted = 0
        for record in await storage.files.list_expired_files(now, SWEEP_BATCH):
            deleted += await _remove(context, record, "expired")
        idle_since = now - ABANDONED_UPLOAD_S
        for record in await storage.files.list_uploading_files(idle_since, SWEEP_BATCH):
            try:
                last_write = blob_of(context, record).stat().st_mtime
            except FileNotFoundError:
                last_write = record.created
            if last_write < idle_since:
                deleted += await _remove(context, record, "abandoned")
        if now - self._orphans_scanned_at >= ORPHAN_SCAN_INTERVAL_S:
            self._orphans_scanned_at = now
            removed, self._orphan_cursor = await _remove_orphans(
                context, now - ORPHAN_GRACE_S, self._orphan_cursor
            )
            deleted += removed
        return deleted


async def _remove_orphans(
    context: AppContext, unwritten_since: float, after: str
) -> tuple[int, str]:
    """Delete blobs without a row, unwritten since ``unwritten_since``.

    Looks up at most :data:`SWEEP_BATCH` blobs named after ``after``, in name
    order. Returns how many were deleted, and where the next scan goes on
    ("" once it reached the end).
    """
    removed = 0
    looked_up = 0
    for path in sorted(files_dir(context).iterdir()):
        name = path.name
        if name.endswith(DISCARDED_SUFFIX) and _is_blob_name(name[: -len(DISCARDED_SUFFIX)]):
            path.unlink(missing_ok=True)  # a deleted file's blob whose unlink never ran
            removed += 1
            continue
        if name <= after or len(name) != 2 * FILE_ID_BYTES:
            continue
        if any(c not in "0123456789abcdef" for c in name):
            continue  # not a blob of ours
        if looked_up == SWEEP_BATCH:
            return removed, after
        try:
            if path.stat().st_mtime >= unwritten_since:
                continue
        except FileNotFoundError:
            continue
        looked_up += 1
        after = name
        if await context.storage.files.get_file(name) is not None:
            continue
        path.unlink(missing_ok=True)
        logger.info("file %s: blob without a row deleted", name)
        removed += 1
    return removed, ""


def _is_blob_name(name: str) -> bool:
    return len(name) == 2 * FILE_ID_BYTES and all(c in "0123456789abcdef" for c in name)


async def _remove(context: AppContext, record: FileRecord, why: str) -> int:
    path = blob_of(context, record)
    try:
        with locked_blob(path) as fd:
            if fd is None:
                return 0  # an upload is writing to it right now
            if not await context.storage.files.delete_file(
                record.file_id, expected_state=record.state
            ):
                return 0
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        if not await context.storage.files.delete_file(record.file_id, expected_state=record.state):
            return 0
    logger.info("file %s: deleted, %s", record.file_id, why)
    return 1
