"""Fleet monitoring through the controller's API on a real database (SQLite, PostgreSQL).

A story: a model version gets reference data, a bundle is built from it, twelve devices
report drift and telemetry windows counted by the agent's own code (``DriftMonitor``,
``TelemetryWindow``), and four of them start seeing a shifted feature at a known time.
The drift report names the feature, the devices and the time; its PSI on merged counts
equals numpy on the raw samples; fleet telemetry per hardware class and per rollout wave
is exact; the drift check opens an alert that a webhook receives (after a failed first
attempt, retried, signed), and resolves it once the data is quiet again.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from agent.drift import DriftMonitor
from agent.telemetry import TelemetryWindow
from controller.blobstore import BlobStore
from controller.db import create_schema, make_engine, make_sessionmaker
from controller.drift_references import DriftReferences, Reference
from controller.drift_stats import psi
from controller.errors import PayloadTooLargeError
from controller.inbound import Report
from controller.models import Rollout
from controller.monitoring_settings import MonitoringSettings
from controller.services.device_reports import apply_reports
from controller.services.drift_alerts import run_drift_check
from controller.services.reference_data import set_reference
from controller.webhooks import deliver_due
from edgefleet.cli import main
from firmware_bundles import latency_histogram as lh
from firmware_bundles.drift_reference import ExtractorConfig
from firmware_bundles.manifest import manifest_from_dict
from firmware_bundles.runtimes import load_runner
from firmware_bundles.wire import BundleRef, Drift, State, Telemetry
from tests.models import mlp
from tests.webhook_receiver import WebhookReceiver

SHIFTED = ("mon-00", "mon-01", "mon-02", "mon-03")
DEVICES = [f"mon-{i:02d}" for i in range(12)]
WINDOW_S = 60.0


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    return response.json()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@dataclass
class Fleet:
    api: httpx.Client
    sessions: sessionmaker[Session]
    references: DriftReferences
    blob_dir: Path
    bundle: dict[str, Any]
    model: Path
    t0: float
    raw_x3: list[np.ndarray] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    inferences: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seq: int = 0

    @property
    def sha(self) -> str:
        return str(self.bundle["manifest_sha256"])

    def reference(self, sha: str) -> Reference | None:
        with self.sessions() as session:
            return self.references.get(session, sha)

    def apply(self, reports: list[Report]) -> None:
        with self.sessions() as session:
            apply_reports(session, reports, datetime.now(timezone.utc))
            session.commit()

    def report_windows(self, start: float, count: int, shift_after: float | None) -> None:
        """``count`` windows per device from ``start``; SHIFTED devices see x[3] + 1
        in windows ending after ``shift_after``."""
        manifest = manifest_from_dict(self.bundle["manifest"])
        runner = load_runner("onnxruntime", self.model)
        ref = self.reference(self.sha)
        assert ref is not None
        target = BundleRef(self.sha, manifest.name, manifest.version)
        reports = []
        for index, device in enumerate(DEVICES):
            rng = np.random.default_rng(1000 * index + int(start - self.t0))  # same every run
            monitor = DriftMonitor(ref.features, ExtractorConfig(), manifest.inputs,
                                   manifest.outputs)  # fmt: skip
            for w in range(count):
                self.seq += 1
                end = start + (w + 1) * WINDOW_S
                telemetry = TelemetryWindow(end - WINDOW_S)
                for _ in range(10):  # 10 requests of 5 rows each
                    x = rng.standard_normal((5, 8)).astype(np.float32)
                    if device in SHIFTED and shift_after is not None and end > shift_after:
                        x[:, 3] += 1.0
                    monitor.record({"x": x}, runner.run({"x": x}))
                    self.raw_x3.append(x[:, 3].astype(np.float64))
                    latency = float(rng.lognormal(np.log(2.0 + index % 2), 0.3))
                    failed = index % 2 == 0 and rng.random() < 0.1
                    telemetry.record(latency, not failed)
                    cls = "cam" if index % 2 == 0 else "gate"
                    self.inferences[cls] = self.inferences.get(cls, 0) + 1
                    self.errors[cls] = self.errors.get(cls, 0) + failed
                    if not failed:
                        self.latencies.setdefault(cls, []).append(latency)
                snap = telemetry.roll(end)
                when = datetime.fromtimestamp(end, timezone.utc)
                reports.append(
                    Report(
                        "drift",
                        device,
                        Drift(device, self.seq, end - WINDOW_S, end, target, monitor.roll()),
                        when,
                    )
                )
                reports.append(Report("telemetry", device, Telemetry(
                    device, self.seq, end - WINDOW_S, end, snap.inference_count,
                    snap.error_count, snap.p50_ms, snap.p95_ms, snap.p99_ms, target,
                    snap.histogram), when))  # fmt: skip
        self.apply(reports)


@pytest.fixture()
def fleet(
    controller: Callable[..., httpx.Client], database_url: str, tmp_path: Path
) -> Iterator[Fleet]:
    # The background jobs stay out of the way: the test runs them itself, on its clock.
    api = controller(
        EDGEFLEET_ROLLUP_INTERVAL_S="86400",
        EDGEFLEET_DRIFT_CHECK_INTERVAL_S="86400",
        EDGEFLEET_ROLLOUT_TICK_S="0.2",
        EDGEFLEET_ROLLOUT_GATE_INTERVAL_S="0.2",
    )
    model = mlp(tmp_path / "clf.onnx", seed=7)
    ok(api.post("/models", json={"name": "clf"}), 201)
    with model.open("rb") as handle:
        ok(api.post("/models/clf/versions", data={"version": "1.0.0"},
                    files={"file": ("clf.onnx", handle)}), 201)  # fmt: skip
    reference = np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32)
    attached = ok(api.put("/models/clf/versions/1.0.0/drift-reference",
                          files={"file": ("ref.npz", npz(x=reference))}))  # fmt: skip
    assert attached["rows"] == 2000
    assert {"x[0]", "x[7]", "output:y:class", "output:y:score"} <= set(attached["features"])
    bundle = ok(api.post("/bundles", json={"model": "clf", "version": "1.0.0",
                                           "bundle_version": "1.0.0",
                                           "hardware_classes": ["cam", "gate"]}), 201)  # fmt: skip
    assert "drift_reference" in {f["role"] for f in bundle["files"]}
    bundle["manifest"] = ok(api.get(f"/bundles/{bundle['id']}"))["manifest"]
    engine = make_engine(database_url)
    create_schema(engine)
    sessions = make_sessionmaker(engine)
    blob_dir = tmp_path / "controller-0" / "blobs"
    references = DriftReferences(BlobStore(blob_dir))
    t0 = float(int(datetime.now(timezone.utc).timestamp()) - 3000)
    states = [
        Report("state", d, State(d, t0, "idle", "cam" if i % 2 == 0 else "gate",
                                 ["north" if i < 6 else "south"]), datetime.now(timezone.utc))
        for i, d in enumerate(DEVICES)
    ]  # fmt: skip
    result = Fleet(api, sessions, references, blob_dir, bundle, model, t0)
    result.apply(states)
    yield result
    engine.dispose()


def test_bad_reference_data_is_refused_naming_the_problem(fleet: Fleet) -> None:
    api = fleet.api
    cases = [
        (b"not an npz", "not a valid .npz"),
        (npz(z=np.zeros((500, 8), np.float32)), "lacks model input(s) ['x']"),
        (npz(x=np.zeros((20, 8), np.float32)), "at least 100"),
        (npz(x=np.zeros((500, 3), np.float32)), "cannot run the reference data"),
    ]
    for body, problem in cases:
        response = api.put("/models/clf/versions/1.0.0/drift-reference",
                           files={"file": ("ref.npz", body)})  # fmt: skip
        assert response.status_code == 422 and problem in response.json()["detail"], response.text
    good = npz(x=np.random.default_rng(2).standard_normal((500, 8)))  # float64: cast
    missing = api.put("/models/clf/versions/9.9.9/drift-reference", files={"file": ("r", good)})
    assert missing.status_code == 404
    # A zip bomb (8 MB of zeros in a few KB) is refused from its directory, unexpanded.
    bomb = io.BytesIO()
    np.savez_compressed(bomb, x=np.zeros((250_000, 8), np.float32))
    assert len(bomb.getvalue()) < 100_000
    with fleet.sessions() as session, pytest.raises(PayloadTooLargeError, match="expand to"):
        set_reference(session, BlobStore(fleet.blob_dir), name="clf", version="1.0.0",
                      source=io.BytesIO(bomb.getvalue()), max_bytes=1 << 20)  # fmt: skip
    bad_bins = api.put("/models/clf/versions/1.0.0/drift-reference", files={"file": ("r", good)},
                       data={"bins": "1"})  # fmt: skip
    assert bad_bins.status_code == 422 and "'bins'" in bad_bins.text

    # The author's choice of features reaches the bundles built afterwards.
    chosen = ok(api.put("/models/clf/versions/1.0.0/drift-reference", files={"file": ("r", good)},
                        data={"bins": "4", "max_columns": "4"}))  # fmt: skip
    assert {"x:mean", "x:std"} <= set(chosen["features"]) and "x[0]" not in chosen["features"]
    built = ok(api.post("/bundles", json={"model": "clf", "version": "1.0.0",
                                          "bundle_version": "1.0.1"}), 201)  # fmt: skip
    ref = fleet.reference(built["manifest_sha256"])
    assert ref is not None and ref.features["x:mean"].buckets == 4


def test_drift_and_telemetry_merge_exactly_and_an_alert_reaches_a_webhook(fleet: Fleet) -> None:
    t0, api = fleet.t0, fleet.api
    fleet.report_windows(t0, 20, shift_after=t0 + 600)  # 20 minutes, shift from minute 10
    span = {"since": t0, "until": t0 + 1200}

    # Which feature drifts, on which devices, since when; PSI as numpy computes it.
    report = ok(api.get("/drift", params={**span, "bundle": fleet.sha, "steps": 4}))
    [entry] = report["bundles"]
    features = {f["name"]: f for f in entry["features"]}
    inputs = {n: f["drifting_devices"] for n, f in features.items() if f["kind"] == "input"}
    assert {n: d for n, d in inputs.items() if d} == {"x[3]": list(SHIFTED)}
    x3 = features["x[3]"]
    # Fleet-wide, a third of the devices for half the time is a small change (under the
    # PSI floor); on the shifted devices themselves it is drift, from minute 10.
    assert not x3["drifted"] and x3["psi"] < 0.1 and entry["drifting_devices"] == list(SHIFTED)
    scoped = ok(api.get("/drift", params={**span, "bundle": fleet.sha, "steps": 4,
                                          "device": list(SHIFTED)}))["bundles"][0]  # fmt: skip
    on_shifted = {f["name"]: f for f in scoped["features"]}["x[3]"]
    assert on_shifted["drifted"] and on_shifted["drifting_since"] == t0 + 600
    assert [s["drifted"] for s in on_shifted["timeline"]] == [False, False, True, True]
    ref = fleet.reference(fleet.sha)
    assert ref is not None
    edges = np.asarray(ref.features["x[3]"].edges)
    raw = np.concatenate(fleet.raw_x3)
    counts = np.bincount(np.searchsorted(edges, raw, side="right"), minlength=edges.size + 1)
    assert x3["psi"] == pytest.approx(psi(ref.features["x[3]"].counts, counts), abs=1e-9)
    assert x3["n"] == raw.size and x3["mean"] == pytest.approx(raw.mean(), rel=1e-9)

    quiet = ok(api.get("/drift", params={**span, "bundle": fleet.sha, "tag": "south"}))
    assert not quiet["bundles"][0]["drifting_devices"]
    assert not {f["name"] for f in quiet["bundles"][0]["features"] if f["drifted"]}

    # Fleet telemetry per hardware class: counts exact, p95 off the merged histograms.
    summary = ok(api.get("/telemetry/summary", params={**span, "group_by": "hardware_class"}))
    rows = {g["hardware_class"]: g for g in summary["groups"]}
    for cls in ("cam", "gate"):
        assert rows[cls]["devices"] == 6 and rows[cls]["windows"] == 6 * 20
        assert rows[cls]["inference_count"] == fleet.inferences[cls]
        assert rows[cls]["error_count"] == fleet.errors[cls]
        merged = lh.merge([{lh.bucket_of(v): 1} for v in fleet.latencies[cls]])
        assert rows[cls]["latency_p95_ms"] == lh.percentile(merged, 0.95)
    assert rows["gate"]["error_rate"] == 0 and 0.05 < rows["cam"]["error_rate"] < 0.15
    assert rows["gate"]["latency_p50_ms"] > rows["cam"]["latency_p50_ms"]

    # ... and per rollout wave.
    rollout = ok(api.post("/rollouts", json={
        "bundle": fleet.sha, "devices": DEVICES,
        "waves": {"steps": [{"percent": 50}, {"percent": 100}]},
    }), 201)  # fmt: skip
    waves = ok(api.get("/telemetry/summary", params={
        **span, "rollout": rollout["id"], "group_by": ["bundle", "wave"]}))["groups"]  # fmt: skip
    assert [(g["wave"], g["devices"]) for g in waves] == [(1, 6), (2, 6)]
    assert {g["bundle"]["version"] for g in waves} == {"1.0.0"}
    assert sum(g["inference_count"] for g in waves) == sum(fleet.inferences.values())
    bad = api.get("/telemetry/summary", params={"wave": 1})
    assert bad.status_code == 422 and "'wave' needs 'rollout'" in bad.text

    # The drift check: found once (pending), confirmed (open), delivered to a webhook
    # that fails the first attempt; the retry carries the same delivery id and signature.
    with WebhookReceiver(fail_first=1) as hook, httpx.Client(timeout=5) as client:
        settings = MonitoringSettings(
            drift_window_s=600, drift_confirmations=2, drift_resolve_after=2,
            alert_webhooks=(hook.url,), alert_webhook_secret="s3cret", webhook_backoff_s=5.0,
        )  # fmt: skip

        def check(now: float) -> None:
            run_drift_check(fleet.sessions, fleet.references, settings, now)

        def deliver(now: float) -> int:
            with fleet.sessions() as session:
                return deliver_due(session, client, settings, owner="test", clock=lambda: now)

        check(t0 + 1200)
        [pending] = ok(api.get("/drift/alerts"))
        assert pending["status"] == "pending" and deliver(t0 + 1200) == 0
        check(t0 + 1230)  # nothing new arrived: the pending alert waits for fresh evidence
        assert ok(api.get("/drift/alerts"))[0]["status"] == "pending"
        fleet.report_windows(t0 + 1200, 5, shift_after=t0 + 600)  # five more shifted minutes
        check(t0 + 1500)
        [alert] = ok(api.get("/drift/alerts", params={"status": "open"}))
        assert alert["devices"] == list(SHIFTED)
        assert alert["model"] == {"name": "clf", "version": "1.0.0"}
        assert alert["bundle"]["manifest_sha256"] == fleet.sha
        drifting = {f["name"]: f for f in alert["features"]}
        assert "x[3]" in drifting and drifting["x[3]"]["since"] == pytest.approx(t0 + 600)
        assert drifting["x[3]"]["devices"] == list(SHIFTED) and drifting["x[3]"]["psi"] > 0.1

        assert deliver(t0 + 1500) == 1  # answered 500
        assert deliver(t0 + 1502) == 0  # backing off
        assert deliver(t0 + 1506) == 1  # delivered
        first, second = hook.calls
        assert (first.status, second.status) == (500, 204)
        assert first.headers["X-EdgeFleet-Delivery"] == second.headers["X-EdgeFleet-Delivery"]
        expected = "sha256=" + hmac.new(b"s3cret", second.body, hashlib.sha256).hexdigest()
        assert second.headers["X-EdgeFleet-Signature"] == expected
        payload = second.json()
        assert payload["event"] == "drift_alert.opened"
        assert payload["alert"]["id"] == alert["id"]
        assert payload["alert"]["devices"] == list(SHIFTED)
        detail = ok(api.get(f"/drift/alerts/{alert['id']}"))
        [delivery] = detail["deliveries"]
        assert delivery["attempts"] == 2 and delivery["delivered_at"] == t0 + 1506
        assert delivery["last_error"] == ""

        # The shift ends: ten quiet minutes, two quiet checks, resolved and told.
        fleet.report_windows(t0 + 1500, 10, shift_after=None)
        check(t0 + 2100)
        assert ok(api.get(f"/drift/alerts/{alert['id']}"))["status"] == "open"
        check(t0 + 2130)
        assert ok(api.get(f"/drift/alerts/{alert['id']}"))["status"] == "resolved"
        assert deliver(t0 + 2130) == 1
        assert hook.calls[-1].json()["event"] == "drift_alert.resolved"
    assert api.get("/drift/alerts/nope").status_code == 404


def test_a_rollout_pauses_when_the_new_model_sees_input_drift(fleet: Fleet) -> None:
    api = fleet.api
    created = ok(api.post("/rollouts", json={
        "bundle": fleet.sha, "devices": DEVICES, "start": True,
        "abort": [
            {"kind": "error_rate", "threshold": 0.5, "min_finished": 100},
            {"kind": "input_drift", "threshold": 0.05, "min_finished": 500},
        ],
    }), 201)  # fmt: skip
    rid = created["id"]

    def started_at() -> float | None:
        with fleet.sessions() as session:
            row = session.get(Rollout, rid)
            return None if row is None else row.started_at

    started = eventually(started_at)
    fleet.report_windows(started, 5, shift_after=started)  # SHIFTED see x[3] + 1 at once

    def paused() -> dict[str, Any] | None:
        rollout = ok(api.get(f"/rollouts/{rid}"))
        return rollout if rollout["status"] == "paused" else None

    rollout = eventually(paused)
    assert "input drift" in rollout["reason"] and "x[3]" in rollout["reason"], rollout["reason"]
    # Gate figures keep refreshing while paused; read them once the tick has seen all
    # the windows (the pausing tick may have read telemetry just before they landed).
    inferences, errors = sum(fleet.inferences.values()), sum(fleet.errors.values())

    def settled() -> dict[str, Any] | None:
        gates: dict[str, Any] = ok(api.get(f"/rollouts/{rid}"))["gates"]
        return gates if gates.get("error_samples") == inferences else None

    gates = eventually(settled)
    assert gates["error_rate"] == pytest.approx(errors / inferences)
    assert gates["input_drift_share"] == pytest.approx(1 / 8)  # x[3] of x[0..7]
    assert gates["drift_samples"] == 12 * 5 * 50


def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout}s: {check}")


def test_the_cli_shows_drift_alerts_and_telemetry(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = fleet.t0
    fleet.report_windows(t0, 20, shift_after=t0 + 600)
    base = str(fleet.api.base_url).rstrip("/").removesuffix("/api/v1")
    span = ["--since", str(t0), "--until", str(t0 + 1200)]

    def run(*argv: str) -> str:
        assert main([argv[0], "--controller", base, *argv[1:]]) == 0
        return capsys.readouterr().out

    report = run("drift", "report", "--bundle", fleet.sha, *span)
    [x3] = [line for line in report.splitlines() if line.strip().startswith("x[3]")]
    assert "mon-00,mon-01,mon-02,mon-03" in x3, report
    assert "clf@1.0.0" in report and "drift on 4 of 12 devices" in report
    shifted = run("drift", "report", "--bundle", fleet.sha, *span,
                  *[arg for d in SHIFTED for arg in ("--device", d)])  # fmt: skip
    [x3] = [line for line in shifted.splitlines() if line.strip().startswith("x[3]")]
    assert " yes " in x3 and "DRIFT" in shifted
    quiet = run("drift", "report", "--bundle", fleet.sha, "--tag", "south", *span)
    assert "no drift across the scope" in quiet and " yes " not in quiet
    assert "drift on" not in quiet

    settings = MonitoringSettings(drift_window_s=600, drift_confirmations=1)
    run_drift_check(fleet.sessions, fleet.references, settings, t0 + 1200)
    alerts = run("drift", "alerts", "--status", "open")
    assert "open" in alerts and "mon-00" in alerts and "x[3]: PSI" in alerts
    summary = run("telemetry", "summary", "--group-by", "hardware_class", *span)
    assert "hardware_class=cam" in summary and "hardware_class=gate" in summary
    assert main(["drift", "--controller", base, "report", "--last", "soon"]) == 2
    assert "duration 'soon'" in capsys.readouterr().err
