"""Bundles: built and signed here from a registered model, or uploaded already signed.

Either way the controller ends up holding the signed envelope and every blob it names
in the blob store, the envelope itself addressed by ``manifest_sha256`` (the sha256 of
the envelope bytes), which is how devices fetch it.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path, PurePath
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.blobstore import SHA256_RE, BlobStore, StagedBlob
from controller.errors import ConflictError, InvalidRequestError, NotFoundError
from controller.model_files import link_model_file
from controller.models import Bundle
from controller.names import check_name
from controller.release_keys import ReleaseKeys
from controller.schemas import BundleCreate
from controller.services.compression_jobs import report_for_version
from controller.services.model_registry import get_version
from controller.services.reference_data import reference_arrays
from firmware_bundles.errors import BundleError, EdgeFleetError, MissingFileError
from firmware_bundles.from_model import bundle_from_model_file
from firmware_bundles.manifest import FileEntry, HealthCheck, Manifest
from firmware_bundles.verify import verify_manifest


def _check_new(session: Session, name: str, version: str) -> None:
    existing = session.scalar(
        sa.select(Bundle.manifest_sha256).where(Bundle.name == name, Bundle.version == version)
    )
    if existing is not None:
        raise ConflictError(f"bundle {name}@{version} already exists (manifest {existing})")


def _save(session: Session, bundle: Bundle) -> Bundle:
    session.add(bundle)
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        raise ConflictError(
            f"bundle {bundle.name}@{bundle.version} (manifest {bundle.manifest_sha256}) "
            "already exists"
        ) from None
    return bundle


def _row(manifest: Manifest, envelope: bytes, source: str) -> Bundle:
    return Bundle(
        name=manifest.name,
        version=manifest.version,
        release_counter=manifest.release_counter,
        manifest_sha256=hashlib.sha256(envelope).hexdigest(),
        hardware_classes=list(manifest.hardware_classes),
        runtime=manifest.runtime,
        manifest=manifest.to_dict(),
        expires=manifest.expires,
        source=source,
    )


def next_release_counter(session: Session, name: str) -> int:
    highest = session.scalar(
        sa.select(sa.func.max(Bundle.release_counter)).where(Bundle.name == name)
    )
    return 1 if highest is None else int(highest) + 1


def build_bundle(
    session: Session,
    store: BlobStore,
    keys: ReleaseKeys,
    request: BundleCreate,
    *,
    now: datetime,
    valid_for: timedelta,
) -> Bundle:
    """Package a registered model version into a bundle signed with the release key.

    Raises:
        NotFoundError: no such model or version.
        ConflictError: a bundle with this name and version exists.
        InvalidRequestError / BundleError: the model cannot be loaded or run.
    """
    version = get_version(session, request.model, request.version)
    name = check_name(request.name or request.model, "bundle name")
    check_name(request.bundle_version, "bundle version")
    _check_new(session, name, request.bundle_version)
    counter = request.release_counter
    if counter is None:
        counter = next_release_counter(session, name)
    health = HealthCheck(**request.health_check.model_dump()) if request.health_check else None
    with tempfile.TemporaryDirectory(prefix="edgefleet-build-") as work:
        model_path = link_model_file(store, version, Path(work))
        reference = reference_arrays(session, store, version)
        try:
            built = bundle_from_model_file(
                model_path,
                name=name,
                version=request.bundle_version,
                release_counter=counter,
                key=keys.private,
                now=now,
                hardware_classes=tuple(request.hardware_classes or ("generic",)),
                health_check=health,
                valid_for=valid_for,
                trial=request.trial.to_policy() if request.trial else None,
                # A version made by a compression job ships the job's report (recipe, table).
                compression=report_for_version(session, version.id),
                # Reference data attached to the version: the bundle ships drift bins.
                drift_reference=reference[0],
                drift_config=reference[1],
            )
        except EdgeFleetError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidRequestError(
                f"cannot build a bundle from model {request.model}@{request.version}: {exc}"
            ) from exc
    for data in built.blobs.values():
        store.put_bytes(data)
    store.put_bytes(built.envelope)
    row = _row(built.manifest, built.envelope, "built")
    row.model_version_id = version.id
    return _save(session, row)


def upload_bundle(
    session: Session,
    store: BlobStore,
    keys: ReleaseKeys,
    *,
    envelope: bytes,
    files: Sequence[tuple[str, BinaryIO]],
    max_bytes: int,
    now: datetime,
) -> Bundle:
    """Accept a bundle signed elsewhere: signature by a trusted key, then every blob.

    Uploaded files are matched to manifest entries by file name (``model.onnx``) or by
    sha256 (the ``blobs/<sha256>`` names of a bundle directory). A blob the store holds
    already need not be uploaded again. Nothing is stored unless everything verifies.

    Raises:
        BundleError: bad signature, invalid manifest, expired, a blob whose size or
            sha256 differs from the manifest (naming the file), or a blob missing.
        InvalidRequestError: an uploaded file the manifest does not name.
        ConflictError: this exact bundle was uploaded before.
    """
    manifest = verify_manifest(envelope, keys.trusted, now)
    label = f"{manifest.name}@{manifest.version}"
    manifest_sha = hashlib.sha256(envelope).hexdigest()
    existing = session.scalar(sa.select(Bundle.id).where(Bundle.manifest_sha256 == manifest_sha))
    if existing is not None:
        raise ConflictError(
            f"bundle {label} (manifest {manifest_sha}) exists already as id {existing}"
        )
    _check_new(session, manifest.name, manifest.version)
    entries: dict[str, FileEntry] = {}
    for entry in manifest.files:
        entries[entry.name] = entries[entry.sha256] = entry
    staged: dict[str, StagedBlob] = {}
    with ExitStack() as stack:
        for filename, source in files:
            base = PurePath(filename or "").name
            match = entries.get(base)
            if match is None:
                raise InvalidRequestError(
                    f"uploaded file {filename!r} is not named in the manifest of {label} "
                    f"(files: {[e.name for e in manifest.files]})"
                )
            if match.name in staged:
                raise InvalidRequestError(f"file {match.name!r} of {label} was uploaded twice")
            blob = stack.enter_context(store.stage(max_bytes=max_bytes, expected=match))
            try:
                blob.copy_from(source)
                blob.finish()
            except BundleError as exc:
                raise type(exc)(f"bundle {label}: uploaded {filename!r}: {exc}") from None
            staged[match.name] = blob
        for entry in manifest.files:
            if entry.name not in staged and not store.exists(entry.sha256):
                raise MissingFileError(
                    f"bundle {label}: file {entry.name!r} (sha256 {entry.sha256}) was not "
                    "uploaded and the controller does not hold it"
                )
        for blob in staged.values():
            blob.commit()
    store.put_bytes(envelope)
    return _save(session, _row(manifest, envelope, "uploaded"))


def list_bundles(session: Session, name: str | None = None) -> list[Bundle]:
    query = sa.select(Bundle).order_by(Bundle.id)
    if name is not None:
        query = query.where(Bundle.name == name)
    return list(session.scalars(query))


def get_bundle(session: Session, ref: str) -> Bundle:
    """A bundle by numeric id or by ``manifest_sha256``."""
    if ref.isdigit() and len(ref) <= 18:
        bundle = session.get(Bundle, int(ref))
        if bundle is None:
            raise NotFoundError(f"no bundle with id {ref}")
        return bundle
    if SHA256_RE.match(ref):
        found = session.scalar(sa.select(Bundle).where(Bundle.manifest_sha256 == ref))
        if found is None:
            raise NotFoundError(f"no bundle with manifest_sha256 {ref}")
        return found
    raise InvalidRequestError(
        f"bundle reference {ref[:80]!r} is neither a bundle id nor a manifest sha256"
    )
