"""Reference data for drift: an ``.npz`` of model inputs attached to a model version.

Usually the calibration or a training sample. It is checked when uploaded (loaded
without pickles, run through the model, binned as a bundle would bin it), so a bad
file is refused then, naming the problem, rather than when a bundle is built. Every
bundle built from the version afterwards carries the drift reference computed from it.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from controller.blobstore import BlobStore
from controller.errors import InvalidRequestError, PayloadTooLargeError
from controller.model_files import link_model_file
from controller.models import ModelVersion
from controller.monitoring_models import ModelVersionReference
from controller.services.model_registry import get_version
from firmware_bundles.drift_reference import ExtractorConfig
from firmware_bundles.errors import BundleError
from firmware_bundles.from_model import reference_for
from firmware_bundles.golden import Arrays, decode_arrays
from firmware_bundles.runtimes import load_runner


def _check_expanded_size(path: Path, max_bytes: int) -> None:
    """Refuse an ``.npz`` whose arrays expand past ``max_bytes`` (a zip bomb: 512 MiB of
    compressed zeros is tens of GB), from the zip directory alone: zipfile never
    returns more than a member's declared size."""
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidRequestError(f"reference data are not a valid .npz archive: {exc}") from None
    if expanded > max_bytes:
        raise PayloadTooLargeError(
            f"reference data expand to {expanded} bytes, over the {max_bytes}-byte limit"
        )


def set_reference(
    session: Session,
    store: BlobStore,
    *,
    name: str,
    version: str,
    source: BinaryIO,
    max_bytes: int,
    config: ExtractorConfig | None = None,
) -> ModelVersionReference:
    """Attach (or replace) the reference data of model ``name`` version ``version``,
    binned with ``config`` (the bundle author's choice of features; default bins).

    Raises:
        NotFoundError: no such model or version.
        PayloadTooLargeError: the file is over ``max_bytes``.
        InvalidRequestError: not an ``.npz`` of the model's inputs the model can run.
    """
    row = get_version(session, name, version)
    with store.stage(max_bytes=max_bytes) as staged:
        staged.copy_from(source)
        staged.finish()
        with tempfile.TemporaryDirectory(prefix="edgefleet-ref-") as work:
            _check_expanded_size(staged.path, max_bytes)
            try:
                data = decode_arrays(staged.path.read_bytes(), "reference data")
                runner = load_runner(row.runtime, link_model_file(store, row, Path(work)))
                refs, config = reference_for(runner, data, config)
            except BundleError as exc:
                raise InvalidRequestError(str(exc)) from None
            except Exception as exc:  # the runtimes raise their own untyped errors
                raise InvalidRequestError(
                    f"model {name}@{version} cannot run the reference data: {exc}"
                ) from exc
        digest = staged.commit()
    rows = len(next(iter(data.values())))
    reference = session.get(ModelVersionReference, row.id) or ModelVersionReference(
        model_version_id=row.id
    )
    reference.sha256, reference.rows, reference.features = digest, rows, sorted(refs)
    reference.config = asdict(config)
    session.add(reference)
    session.commit()
    return reference


def reference_arrays(
    session: Session, store: BlobStore, version: ModelVersion
) -> tuple[Arrays | None, ExtractorConfig | None]:
    """The reference data of ``version`` and its feature choice (None, None: none)."""
    reference = session.get(ModelVersionReference, version.id)
    if reference is None:
        return None, None
    data = decode_arrays(store.existing_path(reference.sha256).read_bytes(), "reference data")
    return data, ExtractorConfig(**reference.config)
