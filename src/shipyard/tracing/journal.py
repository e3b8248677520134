"""The append-only local journal: where trace records wait while the store is unavailable.

One JSON line per record (a record is the list of span rows of one call or one ingested batch). A side file
holds the byte offset up to which records were replayed into the store; when everything is replayed both
are emptied. Replaying a record twice is harmless (the store skips spans it already has), so a crash between
a replayed write and the offset update doubles nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Journal"]

log = logging.getLogger("shipyard.tracing")

Record = list[dict[str, Any]]


class Journal:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "traces.jsonl"
        self._offset_path = directory / "traces.offset"
        self._lock = threading.Lock()
        self._file = self.path.open("ab")
        self._size = self._file.tell()
        self._drop_torn_tail()
        self._offset = self._read_offset()

    def _drop_torn_tail(self) -> None:
        """A record cut short by a crash while it was written cannot be read back: cut it off, so that records
        appended from now on start on a line of their own."""
        if self._size == 0:
            return
        with self.path.open("rb") as file:
            file.seek(self._size - 1)
            if file.read(1) == b"\n":
                return
            keep = 0
            step = 64 * 1024
            position = self._size
            while position > 0:
                start = max(0, position - step)
                file.seek(start)
                at = file.read(position - start).rfind(b"\n")
                if at >= 0:
                    keep = start + at + 1
                    break
                position = start
        log.error("cutting an incomplete record (%d bytes) off the end of %s", self._size - keep, self.path)
        self._file.truncate(keep)
        self._size = keep

    def _read_offset(self) -> int:
        try:
            offset = int(self._offset_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0
        return min(max(offset, 0), self._size)

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def pending_bytes(self) -> int:
        return self._size - self._offset

    def append(self, records: list[Record]) -> None:
        """Add records at the end; they reach the operating system before this returns (a process crash keeps
        them)."""
        if not records:
            return
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        with self._lock:
            self._file.write(data)
            self._file.flush()
            self._size += len(data)

    def read(self, max_records: int) -> tuple[list[Record], int]:
        """The oldest records not yet replayed and the offset just past them."""
        with self._lock:
            start, end = self._offset, self._size
        records: list[Record] = []
        offset = start
        with self.path.open("rb") as file:
            file.seek(start)
            while len(records) < max_records and offset < end:
                line = file.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    break  # a record still being appended by another thread
                offset += len(line)
                try:
                    records.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    log.error("skipping an unreadable line in %s at byte %d", self.path, offset - len(line))
        return records, offset

    def commit(self, offset: int) -> None:
        """Records before `offset` are in the store; empty the journal once everything is."""
        with self._lock:
            self._offset = offset
            if offset >= self._size:
                self._file.truncate(0)
                self._file.seek(0)
                self._size = self._offset = 0
            temp = self._offset_path.with_suffix(".tmp")
            temp.write_text(str(self._offset))
            os.replace(temp, self._offset_path)

    def close(self) -> None:
        with self._lock:
            self._file.close()
