"""The minimal record of each call, written to the store off the request path.

A request only appends a dict to a deque; a background thread writes batches every
`interval` seconds (or sooner when `batch` records wait). A clean stop writes everything left.
If the store refuses a batch, it is kept and retried (bounded by `max_pending`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from shipyard.store.repos import CallRepo

__all__ = ["Recorder"]

log = logging.getLogger("shipyard.records")


class Recorder:
    def __init__(self, repo: CallRepo, interval: float = 0.5, batch: int = 500, max_pending: int = 100_000) -> None:
        self._repo = repo
        self._interval = interval
        self._batch = batch
        self._pending: deque[dict[str, Any]] = deque()
        self._max_pending = max_pending
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shipyard-recorder", daemon=True)
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def add(self, record: dict[str, Any]) -> None:
        """Called on the event loop: O(1), never blocks."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append(record)
        if len(self._pending) >= self._batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _take(self) -> list[dict[str, Any]]:
        items = []
        while self._pending and len(items) < self._batch:
            items.append(self._pending.popleft())
        return items

    def _flush(self) -> bool:
        """Write what is pending; False if the store refused (records kept for the next try)."""
        while self._pending:
            items = self._take()
            try:
                self.written += self._repo.add_many(items)
            except SQLAlchemyError as exc:
                self._pending.extendleft(reversed(items))
                log.warning("could not write %d call records (will retry): %s", len(items), exc)
                return False
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._flush()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything left, retrying until `timeout`."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while not self._flush() and time.monotonic() < deadline:
            time.sleep(0.5)
        if self._pending:
            log.error("%d call records could not be written before shutdown", len(self._pending))
