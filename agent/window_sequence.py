"""Window sequence numbers that only ever grow, across restarts and power cuts.

The controller de-duplicates telemetry and drift windows by ``(device, seq)`` long after
it has rolled the raw windows up (see :mod:`controller.telemetry_rollup`), so a window
re-sent from the outbox after a restart must never share a number with a new one.

Numbers are handed out from a block reserved on disk (a HiLo allocator): the file holds
the first number *not* yet reserved, written atomically before any number of the block
is used. A crash wastes the rest of a block (a gap) and never reuses a number. One
``fsync`` per ``block`` windows.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from firmware_bundles.bundle_dir import atomic_write

log = logging.getLogger(__name__)


class WindowSequence:
    def __init__(self, path: Path, *, block: int = 1000, start: int = 1) -> None:
        """``start``: the first number when ``path`` does not exist yet."""
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.path = path
        self.block = block
        self.start = max(1, start)
        self._lock = threading.Lock()
        self._next = self._read_floor()
        self._limit = self._next  # nothing reserved yet in this run

    def _read_floor(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return self.start
        try:
            floor = int(text)
            if floor < 1:
                raise ValueError(floor)
        except ValueError:
            # Torn it cannot be (atomic writes); edited by hand, perhaps. Never reuse a
            # number: jump far past anything this file could have reserved.
            log.error("%s holds %r, not a sequence floor; starting past it", self.path, text)
            floor = 1 << 40
        return floor

    @property
    def reserved_floor(self) -> int:
        """Every number this sequence ever handed out is below this."""
        return self._limit

    def next(self) -> int:
        with self._lock:
            if self._next >= self._limit:
                self._limit = self._next + self.block
                atomic_write(self.path, f"{self._limit}\n".encode())
            value = self._next
            self._next += 1
            return value
