"""A bounded on-disk outbox for windows (telemetry, drift) the broker has not acknowledged.

Each message is one file, ``<sequence>.<kind>``, written atomically; it is deleted only
when the broker acknowledges it (QoS 1 PUBACK), so a broker outage or a reboot loses
nothing. Past ``max_messages`` or ``max_bytes`` the oldest are dropped, logged and
counted: a device that is offline for a week must not fill its disk.
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
        existing = self.pending()
        self._next = int(existing[-1].name.split(".")[0]) + 1 if existing else 0
        self._bytes = sum(p.stat().st_size for p in existing)
        self._count = len(existing)

    def pending(self) -> list[Path]:
        """Messages not yet acknowledged, oldest first."""
        return sorted(p for p in self.directory.iterdir() if not p.name.startswith("."))

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
            self._bytes += len(payload)
            self._count += 1
            if self._count > self.max_messages or self._bytes > self.max_bytes:
                self._enforce_bounds()
        return path

    def ack(self, path: Path) -> None:
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
                self._bytes -= size
                self._count -= 1
            except FileNotFoundError:
                pass

    def _enforce_bounds(self) -> None:
        files = self.pending()
        while files and (len(files) > self.max_messages or self._bytes > self.max_bytes):
            oldest = files.pop(0)
            try:
                self._bytes -= oldest.stat().st_size
                oldest.unlink()
                self._count -= 1
            except FileNotFoundError:
                continue
            self.dropped += 1
            log.warning("outbox full: dropped %s (%d dropped so far)", oldest.name, self.dropped)
