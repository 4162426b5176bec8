"""A controller replica's compression worker as a process of its own, for kill tests.

python -m tests.compression_replica DATABASE_URL BLOB_DIR WORK_DIR OWNER LEASE_S
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from controller.blobstore import BlobStore
from controller.compression_worker import CompressionWorker, WorkerLimits
from controller.db import make_engine, make_sessionmaker


def main(url: str, blobs: str, work: str, owner: str, lease_s: str) -> None:
    worker = CompressionWorker(
        make_sessionmaker(make_engine(url)),
        BlobStore(Path(blobs)),
        Path(work),
        WorkerLimits(workers=1, lease_s=float(lease_s), poll_s=0.1),
        owner=owner,
    )
    worker.start()
    deadline = time.monotonic() + 300  # bounded: a test that forgets us does not leak us
    while time.monotonic() < deadline:
        time.sleep(0.5)


if __name__ == "__main__":
    main(*sys.argv[1:6])
