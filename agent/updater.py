"""The update path: desired bundle -> download -> verify -> install -> load -> check.

Mender's state machine is the reference. Nothing here touches the serving model: the
caller swaps it in only after :meth:`Updater.prepare` returns, and on any exception the
device keeps what it had. The spare slot is dropped from the state *before* it is
overwritten, so a power cut mid-install can never leave the state naming a torn slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.drift import DriftMonitor
from agent.errors import UpdateError
from agent.fetch import DEFAULT_MAX_BLOB_BYTES, check_file_limit, fetch_file, fetch_small
from agent.health_check import run_health_check
from agent.inference import ActiveModel
from agent.slots import AgentState, SlotInfo, SlotStore
from firmware_bundles.bundle_dir import VerifiedBundle, verify_bundle_dir
from firmware_bundles.drift_reference import decode_reference
from firmware_bundles.dsse import MAX_ENVELOPE_BYTES
from firmware_bundles.manifest import FileEntry, Manifest
from firmware_bundles.runtimes import ModelRunner, load_runner
from firmware_bundles.verify import sha256_hex, verify_manifest
from firmware_bundles.wire import BundleRef

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# Seams for the simulator's fault injection; production uses the defaults.
RunnerFactory = Callable[[Manifest, Path, int], ModelRunner]
Downloader = Callable[[str, Manifest, FileEntry, Path, float], Path]


def default_runner_factory(manifest: Manifest, model_path: Path, threads: int) -> ModelRunner:
    return load_runner(manifest.runtime, model_path, threads=threads)


def default_downloader(
    base_url: str, manifest: Manifest, entry: FileEntry, downloads: Path, timeout: float
) -> Path:
    return fetch_file(base_url, entry, downloads, timeout=timeout)


@dataclass(frozen=True)
class Prepared:
    """A bundle installed in a slot, loaded and healthy, ready to be swapped in."""

    slot: str
    info: SlotInfo
    model: ActiveModel


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Updater:
    def __init__(
        self,
        store: SlotStore,
        trusted: Mapping[str, Ed25519PublicKey],
        *,
        hardware_class: str,
        threads: int = 1,
        http_timeout: float = 30.0,
        clock: Callable[[], datetime] = _utcnow,
        runner_factory: RunnerFactory = default_runner_factory,
        downloader: Downloader = default_downloader,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    ) -> None:
        self.store = store
        self.max_blob_bytes = max_blob_bytes
        self.trusted = trusted
        self.hardware_class = hardware_class
        self.threads = threads
        self.http_timeout = http_timeout
        self.clock = clock
        self.runner_factory = runner_factory
        self.downloader = downloader

    # ------------------------------------------------------------------ loading slots

    def load_slot(self, state: AgentState, slot: str) -> Prepared:
        """Re-verify an installed slot from disk and load it (start-up and rollback)."""
        info = state.slots.get(slot)
        if info is None:
            raise UpdateError("missing_file", f"slot {slot} holds no bundle")
        bundle = verify_bundle_dir(
            self.store.slot_dir(slot), self.trusted, self.clock(), allow_expired=True
        )
        if bundle.manifest_sha256 != info.manifest_sha256:
            raise UpdateError(
                "bundle",
                f"slot {slot} holds {bundle.manifest_sha256[:12]}, "
                f"state says {info.manifest_sha256[:12]}",
            )
        return self._load_checked(slot, info, bundle)

    def _load_checked(self, slot: str, info: SlotInfo, bundle: VerifiedBundle) -> Prepared:
        manifest = bundle.manifest
        runner = self.runner_factory(manifest, bundle.path_of("model"), self.threads)
        run_health_check(
            runner, manifest, bundle.path_of("golden_inputs"), bundle.path_of("golden_outputs")
        )
        ref = BundleRef(info.manifest_sha256, info.name, info.version)
        drift = None
        if manifest.has_role("drift_reference"):
            refs, config = decode_reference(bundle.path_of("drift_reference").read_bytes())
            drift = DriftMonitor(refs, config, runner.inputs, runner.outputs)
        return Prepared(slot, info, ActiveModel(runner, manifest, ref, drift))

    # ------------------------------------------------------------------ new bundles

    def prepare(
        self, state: AgentState, target: BundleRef, base_url: str, progress: Progress
    ) -> tuple[AgentState, Prepared]:
        """Bring ``target`` into the spare slot, verified, loaded and healthy.

        Returns the (possibly changed) persisted state and the prepared model; the
        caller activates it. Raises :class:`UpdateError` or a ``BundleError``.
        """
        held = state.slot_holding(target.manifest_sha256)
        if held is not None and held != state.active:
            # Already on disk (a rollback to the previous bundle): no download.
            progress("verifying")
            return state, self.load_slot(state, held)

        progress("downloading")
        envelope = fetch_small(
            f"{base_url}/{target.manifest_sha256}",
            max_bytes=MAX_ENVELOPE_BYTES,
            timeout=self.http_timeout,
        )
        digest = sha256_hex(envelope)
        if digest != target.manifest_sha256:
            raise UpdateError(
                "digest_mismatch",
                f"manifest envelope has sha256 {digest}, desired state names "
                f"{target.manifest_sha256}",
            )
        manifest = verify_manifest(
            envelope, self.trusted, self.clock(), min_release_counter=state.max_release_counter
        )
        if self.hardware_class not in manifest.hardware_classes:
            raise UpdateError(
                "incompatible",
                f"bundle is for hardware classes {list(manifest.hardware_classes)}, "
                f"this device is {self.hardware_class!r}",
            )
        for entry in manifest.files:
            check_file_limit(entry, self.max_blob_bytes)  # before any byte is fetched
        blobs: dict[str, Path] = {}  # installed (decoded) sha256 -> file
        for entry in manifest.files:
            blobs[entry.content_sha256] = self.downloader(
                base_url, manifest, entry, self.store.downloads, self.http_timeout
            )

        progress("installing")
        spare = state.spare()
        state = self.store.forget_slot(state, spare)
        self.store.install(spare, envelope, blobs)

        progress("verifying")
        bundle = verify_bundle_dir(self.store.slot_dir(spare), self.trusted, self.clock())
        info = SlotInfo(
            target.manifest_sha256, manifest.name, manifest.version, manifest.release_counter
        )

        progress("health_check")
        return state, self._load_checked(spare, info, bundle)
