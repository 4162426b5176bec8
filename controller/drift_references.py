"""The drift reference of a bundle, read from the blob store once and kept in memory.

A bundle built with reference data names a ``drift_reference`` file (fixed bins and
reference counts per feature, :mod:`firmware_bundles.drift_reference`); the devices
count their traffic in the same bins, so the controller compares merged device counts
with these. The blob is verified (and decoded, when stored zstd-encoded) against the
manifest entry before it is trusted.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.blobstore import BlobStore
from controller.drift_stats import FeatureBins
from controller.errors import NotFoundError
from controller.models import Bundle
from firmware_bundles.blob_encoding import decode_stream
from firmware_bundles.drift_reference import FeatureRef, decode_reference
from firmware_bundles.errors import BundleError
from firmware_bundles.manifest import FileEntry, manifest_from_dict
from firmware_bundles.verify import BlobVerifier

OUTPUT_PREFIX = "output:"


@dataclass(frozen=True)
class Reference:
    """One bundle's reference bins, and what the bundle is."""

    bundle_sha256: str
    bundle_name: str
    bundle_version: str
    model_version_id: int | None
    features: Mapping[str, FeatureRef]

    def bins(self) -> dict[str, FeatureBins]:
        return {
            name: FeatureBins(ref.counts, ref.edges, ref.lo, ref.hi)
            for name, ref in self.features.items()
        }


def is_prediction(feature: str) -> bool:
    """A feature of the model's outputs (prediction drift), not of its inputs."""
    return feature.startswith(OUTPUT_PREFIX)


def _read_blob(store: BlobStore, entry: FileEntry) -> bytes:
    path = store.existing_path(entry.sha256)
    if entry.encoded:
        out = io.BytesIO()
        decode_stream(path, entry, BlobVerifier(entry.decoded_entry()), out)
        return out.getvalue()
    data = path.read_bytes()
    verifier = BlobVerifier(entry)
    verifier.update(data)
    verifier.finish()
    return data


class DriftReferences:
    """Bundle sha256 -> :class:`Reference` (None: no such bundle, or no reference)."""

    def __init__(self, store: BlobStore, *, cache_size: int = 64) -> None:
        self._store = store
        self._cache: OrderedDict[str, Reference | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def get(self, session: Session, bundle_sha256: str) -> Reference | None:
        """The reference of the bundle whose envelope has this sha256.

        Raises:
            BundleError: the stored reference does not match its manifest entry or
                does not parse (a damaged blob store).
        """
        with self._lock:
            if bundle_sha256 in self._cache:
                self._cache.move_to_end(bundle_sha256)
                return self._cache[bundle_sha256]
        bundle = session.scalar(sa.select(Bundle).where(Bundle.manifest_sha256 == bundle_sha256))
        if bundle is None:
            return None  # not cached: the bundle may be uploaded later
        manifest = manifest_from_dict(bundle.manifest)
        reference = None
        if manifest.has_role("drift_reference"):
            try:
                data = _read_blob(self._store, manifest.file("drift_reference"))
            except (OSError, BundleError, NotFoundError) as exc:
                raise BundleError(
                    f"bundle {bundle.name}@{bundle.version}: drift reference unreadable: {exc}"
                ) from exc
            features, _ = decode_reference(data)  # ManifestError: a BundleError
            reference = Reference(
                bundle_sha256, bundle.name, bundle.version, bundle.model_version_id, features
            )
        with self._lock:
            self._cache[bundle_sha256] = reference
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return reference
