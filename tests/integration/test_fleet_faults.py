"""Fault profiles on a simulated fleet: each fault ends where a real device would."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.faults import FaultProfile
from simulators.fleet import Fleet, FleetSpec
from simulators.mosquitto import MosquittoBroker
from tests.agent_harness import deploy, make_bundle, wait_until
from tests.blob_server import BlobServer

pytestmark = pytest.mark.broker

V2 = ("2.0.0",)
FAULTS = {
    0: FaultProfile(versions=V2, crash_probability=1.0),
    1: FaultProfile(versions=V2, error_rate=1.0),
    2: FaultProfile(versions=V2, corrupt_download=True),
    3: FaultProfile(versions=V2, crash_on_load=True),
    4: FaultProfile(power_loss_at="installing"),
    5: FaultProfile(versions=V2, crash_probability=1.0, clean_runs=0),
}
TRIAL = {"min_inferences": 20, "min_seconds": 1.0, "min_samples": 5, "max_boot_attempts": 2}


def test_every_fault_ends_on_a_verified_model(
    mqtt_broker: MosquittoBroker, blobs: BlobServer, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = FleetSpec(
        devices=7,
        broker_url=mqtt_broker.url,
        controller_url="http://127.0.0.1:9",
        trust=(keys[1],),
        data_dir=tmp_path / "fleet",
        telemetry_interval_s=0.3,
        faults=FAULTS,
    )
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, counter=1)
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    with Fleet(spec) as fleet:
        for i in range(7):
            deploy(mqtt_broker, blobs, spec.device_id(i), v1, 1)
        # Device 4 lost power while installing 1.0.0; restarted, it finished the update.
        assert fleet.wait_for("1.0.0", timeout=30)
        assert fleet.restarts == 1
        fleet.feed(rate_per_device=30)
        for i in range(7):
            deploy(mqtt_broker, blobs, spec.device_id(i), v2, 2, trial=TRIAL)

        def settled() -> bool:
            agents = fleet.agents
            return (
                agents[6].state.trial is None
                and agents[6].active_bundle is not None
                and agents[6].active_bundle.version == "2.0.0"
                and all(a.phase == "failed" for a in (agents[0], agents[1], agents[2], agents[3]))
                and agents[5].phase == "failed"
                and agents[4].active_bundle is not None
                and agents[4].active_bundle.version == "2.0.0"
            )

        assert wait_until(settled, timeout=60), {
            a.config.device_id: (a.phase, a.error) for a in fleet.agents
        }
        fleet.stop_feeding()
        agents = fleet.agents
        codes = {i: agents[i].error.code for i in (0, 1, 2, 3, 5) if agents[i].error}  # type: ignore[union-attr]
        # 0: crashes in real traffic -> restarts while on trial -> rolled back at boot.
        # 1: every inference fails -> the trial judge rolls back on error rate.
        # 2: corrupted bytes -> refused by the verifier, never installed.
        # 3: cannot load -> update refused, old model kept.
        # 5: crashes on its golden inputs -> fails the health check.
        assert codes == {
            0: "trial_crash",
            1: "trial_errors",
            2: "digest_mismatch",
            3: "model_load",
            5: "health_check",
        }
        for i in (0, 1, 2, 3, 5):
            assert agents[i].active_bundle.version == "1.0.0", i  # type: ignore[union-attr]
        assert fleet.restarts == 1 + 2  # device 4 once, then device 0 crashed twice
        assert agents[6].active_bundle.version == "2.0.0"  # type: ignore[union-attr]
