"""A bounded on-disk outbox for windows (telemetry, drift) the broker has not acknowledged.

Each message is one file, ``<sequence>.<kind>``, written atomically; it is deleted only
when the broker acknowledges it (QoS 1 PUBACK), so a broker outage or a reboot loses
nothing. Past ``max_messages`` or ``max_bytes`` the oldest are dropped, logged and
counted: a device that is offline for a week must not fill its disk.

The directory is listed once, when the outbox opens; from then on the outbox is the only
writer and keeps its index in memory. Listing (and sorting) thousands of files on every
flush is what a week offline would otherwise cost each telemetry window.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from firmware_bundles.bundle_dir import atomic_write

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        directory: Path,
        *,
        max_messages: int = 5000,
        max_bytes: int = 20 << 20,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.dropped = 0
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a write cut short by a power loss
        # name -> size, oldest first (names sort by their zero-padded sequence number).
        self._index: dict[str, int] = {}
        for path in sorted(p for p in directory.iterdir() if not p.name.startswith(".")):
            self._index[path.name] = path.stat().st_size
        last = next(reversed(self._index), None)
        self._next = int(last.split(".")[0]) + 1 if last is not None else 0
        self._bytes = sum(self._index.values())

    @property
    def _count(self) -> int:
        return len(self._index)

    def pending(self) -> list[Path]:
        """Messages not yet acknowledged, oldest first."""
        with self._lock:
            return [self.directory / name for name in self._index]

    def put(self, kind: str, payload: bytes) -> Path:
        with self._lock:
            path = self.directory / f"{self._next:016d}.{kind}"
            self._next += 1
            if self.fsync:
                atomic_write(path, payload)
            else:
                tmp = self.directory / f".{path.name}.tmp"
                tmp.write_bytes(payload)
                os.replace(tmp, path)
            self._index[path.name] = len(payload)
            self._bytes += len(payload)
            if self._count > self.max_messages or self._bytes > self.max_bytes:
                self._enforce_bounds()
        return path

    def ack(self, path: Path) -> None:
        """The broker has the message: forget it (a second ack of it is harmless)."""
        with self._lock:
            size = self._index.pop(path.name, None)
            if size is None:
                return
            self._bytes -= size
            path.unlink(missing_ok=True)

    def _enforce_bounds(self) -> None:
        while self._index and (self._count > self.max_messages or self._bytes > self.max_bytes):
            oldest = next(iter(self._index))
            self._bytes -= self._index.pop(oldest)
            (self.directory / oldest).unlink(missing_ok=True)
            self.dropped += 1
            log.warning("outbox full: dropped %s (%d dropped so far)", oldest, self.dropped)
