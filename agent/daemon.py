"""The agent daemon: follows its desired state, serves inference, reports.

Threads: paho's network thread only enqueues; one worker thread owns every decision
(desired state, updates, telemetry windows), so there is no shared mutable state
beyond the inference service's atomic model swap.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy.typing as npt

from agent.capture import CaptureRecorder, RecorderLimits
from agent.capture_spool import CaptureSpool
from agent.capture_upload import BackgroundUploader, post_capture
from agent.config import AgentConfig
from agent.drift import is_empty
from agent.errors import error_code
from agent.inference import ActiveModel, InferenceService
from agent.mqtt_hub import MqttHub
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from agent.outbox_sender import OutboxSender
from agent.slots import AgentState, SlotStore, TrialRecord
from agent.telemetry import TelemetryWindow, WindowSnapshot
from agent.trial import TrialCounts, TrialPolicy, judge_trial
from agent.updater import (
    Downloader,
    Prepared,
    RunnerFactory,
    Updater,
    default_downloader,
    default_runner_factory,
)
from agent.window_sequence import WindowSequence
from firmware_bundles.capture_wire import CaptureReport, parse_capture_command
from firmware_bundles.errors import EdgeFleetError, WireError
from firmware_bundles.keys import load_trusted_keys
from firmware_bundles.wire import (
    BundleRef,
    Desired,
    Drift,
    ErrorInfo,
    Event,
    State,
    Telemetry,
    parse_desired,
)

log = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"


@dataclass(frozen=True)
class _Inbound:
    kind: str
    payload: bytes


class Agent:
    """One device. ``start()`` returns at once; ``stop()`` ends the threads."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        runner_factory: RunnerFactory = default_runner_factory,
        downloader: Downloader = default_downloader,
        phase_hook: Callable[[str], None] | None = None,
        mqtt_hub: MqttHub | None = None,
        update_slots: AbstractContextManager[Any] | None = None,
    ) -> None:
        """Create the agent; the keyword seams exist for simulators: fault injection, a
        shared network thread for many agents in one process (``mqtt_hub``), and a
        limit on how many of them download, verify and load at once (``update_slots``:
        a real device has a CPU of its own; simulated ones share a few cores)."""
        self.config = config
        self.store = SlotStore(config.data_dir)
        self.updater = Updater(
            self.store,
            load_trusted_keys(list(config.trust)),
            hardware_class=config.hardware_class,
            threads=config.threads,
            http_timeout=config.http_timeout_s,
            runner_factory=runner_factory,
            downloader=downloader,
            max_blob_bytes=config.max_blob_bytes,
        )
        self._phase_hook = phase_hook
        self._update_slots = update_slots or nullcontext()
        self.outbox = Outbox(
            config.data_dir / "outbox",
            max_messages=config.outbox_max_messages,
            max_bytes=config.outbox_max_bytes,
            fsync=config.outbox_fsync,
        )
        # Data capture: sampled on the inference path, written and uploaded from the
        # worker (the upload itself on a thread of its own; it reports back by waking us).
        self.capture = CaptureRecorder(
            CaptureSpool(config.data_dir / "captures", fsync=config.outbox_fsync),
            BackgroundUploader(
                partial(post_capture, timeout=config.http_timeout_s), self._capture_wake
            ),
            device_id=config.device_id,
            limits=RecorderLimits(
                config.capture_max_bytes,
                config.capture_max_open,
                config.capture_retry_min_s,
                config.capture_retry_max_s,
            ),
            wake=self._capture_wake,
        )
        self.inference = InferenceService(TelemetryWindow(time.time()), tap=self.capture.offer)
        self.state: AgentState = AgentState()
        self.phase = "idle"
        self.error: ErrorInfo | None = None
        self.generation = 0
        self.deployment_id: str | None = None
        self.dropped_messages = 0
        self._failed: tuple[int, str] | None = None  # (generation, sha) that failed
        # Telemetry and drift windows are numbered for good: the controller tells a
        # re-sent window from a new one by (device, seq), even after a restart.
        self._window_seq = WindowSequence(config.data_dir / "window_seq")
        # Drift windows close on their own schedule and are numbered on their own. A
        # device whose drift windows were numbered by window_seq (before drift_seq
        # existed) starts past every number that sequence ever reserved.
        self._drift_seq = WindowSequence(
            config.data_dir / "drift_seq", start=self._window_seq.reserved_floor
        )
        self._drift_due = time.monotonic() + config.drift_interval_s
        self._boot_notes: list[str] = []  # what start-up found, reported once connected
        self._state_sent_at = time.monotonic()
        self._inbox: queue.Queue[_Inbound | None] = queue.Queue(maxsize=1000)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.link = MqttLink(
            config.device_id, config.broker_url, self._enqueue, self._connected, hub=mqtt_hub
        )
        self.sender = OutboxSender(self.outbox, self.link, device_id=config.device_id)

    # ------------------------------------------------------------------ public API

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
        """Run the active model (see :meth:`InferenceService.infer`)."""
        return self.inference.infer(inputs)

    @property
    def active_bundle(self) -> BundleRef | None:
        model = self.inference.active
        return None if model is None else model.ref

    def start(self) -> None:
        self.state = self.store.load_state()
        self._boot_model()
        self._worker = threading.Thread(
            target=self._run, name=f"agent-{self.config.device_id}", daemon=True
        )
        self._worker.start()
        self.link.start()

    def stop(self, *, graceful: bool = True) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._worker is not None:
            self._worker.join(timeout=10)
        self.link.stop(graceful=graceful)
        self.capture.close()
        if graceful:
            self.sender.settle()  # what was delivered need not be sent again after a restart

    # ------------------------------------------------------------------ start-up

    def _boot_model(self) -> None:
        """Serve the active slot; if it fails verification or load, fall back.

        Starting while the active slot is on trial counts as a failed start of that
        model; past the policy's limit the agent returns to the previous slot.
        """
        trial = self.state.trial
        if trial is not None:
            # Report against the rollout that asked for this model, as before the restart.
            self.generation, self.deployment_id = trial.generation, trial.deployment_id
            self._boot_notes.append(f"restarted while on trial (start {trial.boot_attempts + 1})")
            trial = replace(trial, boot_attempts=trial.boot_attempts + 1)
            self.state = self.store.save_trial(self.state, trial)
            verdict = judge_trial(_policy(trial), _counts(trial), time.time())
            if verdict.action == "rollback" and self.state.previous is not None:
                failed = self._ref(self.state.active)
                if self._return_to_previous(verdict.code, verdict.reason, failed):
                    self._boot_notes.append(f"returned to the previous model: {verdict.reason}")
                    return
        for slot in (self.state.active, self.state.previous):
            if slot is None:
                continue
            try:
                prepared = self.updater.load_slot(self.state, slot)
            except EdgeFleetError as exc:
                log.error(
                    "%s: slot %s does not verify or load: %s", self.config.device_id, slot, exc
                )
                self.error = ErrorInfo(error_code(exc), f"slot {slot}: {exc}")
                self._boot_notes.append(f"slot {slot} refused: {exc}")
                self.state = self.store.forget_slot(self.state, slot)
                continue
            if slot != self.state.active:
                self.state = self.store.activate(self.state, slot, prepared.info)
            self.inference.swap(prepared.model)
            self.phase = "trial" if self.state.trial is not None else "idle"
            info = prepared.info
            self._boot_notes.append(f"serving {info.name}@{info.version} from slot {slot}")
            return
        self._boot_notes.append("no verified model installed")

    # ------------------------------------------------------------------ worker

    def _enqueue(self, kind: str, payload: bytes) -> None:
        try:
            self._inbox.put_nowait(_Inbound(kind, payload))
        except queue.Full:
            self.dropped_messages += 1
            log.warning("%s: inbox full, dropped a %s message", self.config.device_id, kind)

    def _connected(self) -> None:
        self._enqueue("_connected", b"")

    def _capture_wake(self) -> None:
        self._enqueue("_capture", b"")

    def _run(self) -> None:
        interval = self.config.telemetry_interval_s
        next_window = time.monotonic() + interval
        while not self._stop.is_set():
            try:
                item = self._inbox.get(timeout=max(0.0, next_window - time.monotonic()))
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._handle(item)
                if time.monotonic() >= next_window:
                    next_window += interval
                    self._publish_window()
                    self._heartbeat()
                    self._capture_progress(self.capture.tick())
            except Exception:  # the loop must survive anything one message does
                log.exception("%s: error in agent loop", self.config.device_id)
            except BaseException as exc:  # noqa: B036 - a stop-now signal (power loss)
                # Not an error to report: the device is going down mid-step, and what
                # is on disk is all that survives.
                log.info("%s: agent loop stopped: %r", self.config.device_id, exc)
                return

    def _handle(self, item: _Inbound) -> None:
        if item.kind == "_connected":
            if self._boot_notes:
                self._event(
                    "agent_started", self.active_bundle, message="; ".join(self._boot_notes)
                )
                self._boot_notes = []
            self._publish_state()
            self.sender.flush()
        elif item.kind == "desired":
            try:
                desired = parse_desired(item.payload)
            except WireError as exc:
                self.dropped_messages += 1
                log.warning("%s: dropped desired state: %s", self.config.device_id, exc)
                return
            self._follow(desired)
        elif item.kind == "cmd":
            try:
                command = parse_capture_command(item.payload)
            except WireError as exc:
                self.dropped_messages += 1
                log.warning("%s: dropped command: %s", self.config.device_id, exc)
                return
            self._capture_progress(self.capture.apply(command))
        elif item.kind == "_capture":
            self._capture_progress(self.capture.tick())
        else:
            self.dropped_messages += 1
            log.warning("%s: dropped %s message: no handler", self.config.device_id, item.kind)

    # ------------------------------------------------------------------ updates

    def _follow(self, desired: Desired) -> None:
        target = desired.bundle
        if target is None:
            return
        self.generation, self.deployment_id = desired.generation, desired.deployment_id
        active = self.active_bundle
        if active is not None and active.manifest_sha256 == target.manifest_sha256:
            self.phase, self.error = "idle", None
            self._publish_state()
            return
        attempt = (desired.generation, target.manifest_sha256)
        if attempt in (self._failed, self.state.rejected):
            self._publish_state()  # already tried and reported: do not loop on it
            return
        self._update(target, desired.blob_base_url or self.config.blob_base_url, desired.trial)

    def _update(self, target: BundleRef, base_url: str, trial: dict[str, Any] | None) -> None:
        self.error = None
        self._event("update_started", target)
        try:
            with self._update_slots:
                self.state, prepared = self.updater.prepare(
                    self.state, target, base_url, self._progress
                )
            policy = TrialPolicy.from_dict(trial or prepared.model.manifest.trial or {})
        except Exception as exc:  # every failure is reported; the old model keeps serving
            code = error_code(exc)
            if code == "internal":
                log.exception("%s: update failed unexpectedly", self.config.device_id)
            else:
                log.warning(
                    "%s: update to %s@%s failed: %s",
                    self.config.device_id,
                    target.name,
                    target.version,
                    exc,
                )
            self._failed = (self.generation, target.manifest_sha256)
            self.phase, self.error = "failed", ErrorInfo(code, str(exc))
            self._event("update_failed", target, code=code, message=str(exc))
            self._publish_state()
            return
        self._activate(prepared, policy)
        self._event("update_succeeded", target)

    def _activate(self, prepared: Prepared, policy: TrialPolicy) -> None:
        # A first model has nothing to roll back to: it commits once healthy.
        trial = None
        if self.state.active is not None:
            trial = TrialRecord(
                prepared.slot,
                time.time(),
                policy.to_dict(),
                self.generation,
                deployment_id=self.deployment_id,
            )
            self._publish_window()  # the trial counts only the new model's traffic
        if self._phase_hook is not None:
            self._phase_hook("activating")  # fault injection: power lost at the switch
        self.state = self.store.activate(self.state, prepared.slot, prepared.info, trial)
        self._publish_drift(self.inference.swap(prepared.model))
        self.phase = "trial" if trial is not None else "idle"
        self.error, self._failed = None, None
        self._publish_state()

    # ------------------------------------------------------------------ trial

    def _judge_trial(self, snap: WindowSnapshot) -> None:
        trial = self.state.trial
        if trial is None:
            return
        hist = dict(trial.latency_histogram)
        for index, count in snap.histogram.items():
            hist[index] = hist.get(index, 0) + count
        trial = replace(
            trial,
            inferences=trial.inferences + snap.inference_count,
            errors=trial.errors + snap.error_count,
            latency_histogram=hist,
        )
        verdict = judge_trial(_policy(trial), _counts(trial), time.time())
        if verdict.action == "commit":
            if self._phase_hook is not None:
                self._phase_hook("committing")  # fault injection: power lost at the commit
            self.state = self.store.commit(self.state)
            self.phase = "idle"
            self._event("committed", self.active_bundle)
            self._publish_state()
        elif verdict.action == "rollback":
            self._return_to_previous(verdict.code, verdict.reason, self.active_bundle)
        else:
            self.state = self.store.save_trial(self.state, trial)

    def _return_to_previous(self, code: str, reason: str, failed: BundleRef | None) -> bool:
        """Serve the previous slot again; False if it cannot be loaded."""
        previous = self.state.previous
        trial = self.state.trial
        if previous is None:
            return False
        try:
            prepared = self.updater.load_slot(self.state, previous)
        except EdgeFleetError as exc:
            log.error("%s: cannot roll back, previous slot fails: %s", self.config.device_id, exc)
            return False
        self.state = self.store.activate(self.state, previous, prepared.info)
        self._publish_drift(self.inference.swap(prepared.model))
        if failed is not None:
            generation = trial.generation if trial is not None else self.generation
            self.state = self.store.reject(self.state, generation, failed.manifest_sha256)
        log.warning("%s: rolled back from %s: %s", self.config.device_id, failed, reason)
        self.phase, self.error = "failed", ErrorInfo(code, reason)
        self._event("rolled_back", failed, code=code, message=reason)
        self._publish_state()
        return True

    def _progress(self, phase: str) -> None:
        if self._phase_hook is not None:
            self._phase_hook(phase)
        self.phase = phase
        self._publish_state()

    # ------------------------------------------------------------------ reporting

    def _ref(self, slot: str | None) -> BundleRef | None:
        info = self.state.slot_info(slot)
        return None if info is None else BundleRef(info.manifest_sha256, info.name, info.version)

    def _heartbeat(self) -> None:
        """Send the state again if it has not gone out for ``state_heartbeat_s``."""
        quiet = time.monotonic() - self._state_sent_at
        if quiet >= self.config.state_heartbeat_s and self.link.connected.is_set():
            self._publish_state()

    def _publish_state(self) -> None:
        self._state_sent_at = time.monotonic()
        state = State(
            device_id=self.config.device_id,
            ts=time.time(),
            phase=self.phase,
            hardware_class=self.config.hardware_class,
            tags=list(self.config.tags),
            active=self.active_bundle,
            previous=self._ref(self.state.previous),
            generation=self.generation,
            deployment_id=self.deployment_id,
            error=self.error,
            agent_version=AGENT_VERSION,
            on_trial=self.state.trial is not None,
        )
        self.link.publish("state", state.to_bytes(), retain=True)

    def _event(
        self, kind: str, bundle: BundleRef | None, *, code: str | None = None, message: str = ""
    ) -> None:
        event = Event(
            device_id=self.config.device_id,
            ts=time.time(),
            type=kind,
            deployment_id=self.deployment_id,
            bundle=bundle,
            code=code,
            message=message,
        )
        self.link.publish("events", event.to_bytes())

    def _publish_window(self) -> None:
        snap = self.inference.window.roll(time.time())
        seq = self._window_seq.next()
        telemetry = Telemetry(
            device_id=self.config.device_id,
            seq=seq,
            window_start=snap.window_start,
            window_end=snap.window_end,
            inference_count=snap.inference_count,
            error_count=snap.error_count,
            latency_p50_ms=snap.p50_ms,
            latency_p95_ms=snap.p95_ms,
            latency_p99_ms=snap.p99_ms,
            bundle=self.active_bundle,
            latency_histogram=snap.histogram,
        )
        self.outbox.put("telemetry", telemetry.to_bytes())
        if time.monotonic() >= self._drift_due:
            self._publish_drift(self.inference.active)
        self.sender.flush()
        self._judge_trial(snap)

    def _publish_drift(self, model: ActiveModel | None) -> None:
        """Close ``model``'s drift window and queue it (a window without traffic is not
        sent). Called every ``drift_interval_s`` and whenever the model changes, so
        counts are attributed to the bundle that saw them."""
        self._drift_due = time.monotonic() + self.config.drift_interval_s
        if model is None or model.drift is None:
            return
        start, now = model.drift.window_start, time.time()
        features = model.drift.roll(now)
        if is_empty(features):
            return
        drift = Drift(
            device_id=self.config.device_id,
            seq=self._drift_seq.next(),
            window_start=start,
            window_end=max(now, start),
            bundle=model.ref,
            features=features,
        )
        self.outbox.put("drift", drift.to_bytes())

    def _capture_progress(self, reports: list[CaptureReport]) -> None:
        """Send capture progress through the outbox: kept until the broker has it."""
        for report in reports:
            self.outbox.put("capture", report.to_bytes())
        if reports:
            self.sender.flush()


def _policy(trial: TrialRecord) -> TrialPolicy:
    return TrialPolicy.from_dict(trial.policy)


def _counts(trial: TrialRecord) -> TrialCounts:
    return TrialCounts(
        trial.started_at,
        trial.inferences,
        trial.errors,
        trial.latency_histogram,
        trial.boot_attempts,
    )
