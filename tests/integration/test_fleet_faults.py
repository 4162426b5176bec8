"""Fault profiles on a simulated fleet: each fault ends where a real device would."""

from __future__ import annotations

import hashlib
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from agent.daemon import Agent
from agent.errors import UpdateError
from agent.fetch import fetch_file
from agent.slots import SlotStore
from edgefleet.stack import Stack, StackSpec
from firmware_bundles.bundle_dir import verify_bundle_dir
from firmware_bundles.keys import load_trusted_keys
from firmware_bundles.manifest import FileEntry
from firmware_bundles.wire import parse_event
from simulators import faults
from simulators.faults import FaultProfile
from simulators.fleet import Fleet, FleetSpec
from simulators.mosquitto import MosquittoBroker
from tests.agent_harness import deploy, make_bundle, wait_until
from tests.blob_server import BlobServer
from tests.mqtt_tools import Watcher

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


# ---------------------------------------------------------------------- slow link


def test_a_slow_link_paces_the_bytes_a_resumed_download_reads(
    blobs: BlobServer, tmp_path: Path
) -> None:
    data = random.Random(5).randbytes(48 * 1024)
    entry = FileEntry("model.onnx", "model", hashlib.sha256(data).hexdigest(), len(data))
    blobs.add({entry.sha256: data})
    for name in "abc":
        (tmp_path / name).mkdir()
    rate = 64 * 1024.0
    slow = faults.slow_link(rate)

    # The connection drops after 16 KiB: what arrived stays for the next attempt.
    blobs.cut_after[entry.sha256] = 16 * 1024
    with pytest.raises(UpdateError, match="got 16384 of 49152 bytes"):
        fetch_file(blobs.base_url, entry, tmp_path / "a", timeout=5, opener=slow)
    assert (tmp_path / "a" / f"{entry.sha256}.part").stat().st_size == 16 * 1024
    started = time.monotonic()
    done = fetch_file(blobs.base_url, entry, tmp_path / "a", timeout=5, opener=slow)
    resumed_s = time.monotonic() - started
    assert done.read_bytes() == data
    assert blobs.requests[-1] == (entry.sha256, "bytes=16384-")  # only the rest, with Range

    started = time.monotonic()
    fetch_file(blobs.base_url, entry, tmp_path / "b", timeout=5)
    fast_s = time.monotonic() - started
    # The remaining 32 KiB cannot arrive faster than the link carries them.
    assert resumed_s >= 32 * 1024 / rate * 0.95
    assert resumed_s > 5 * fast_s, (resumed_s, fast_s)

    # A link that cannot carry one byte within the socket time-out times out as a
    # stalled socket does: a download error (retried by the rollout), not a hang.
    stalled = faults.slow_link(2.0)
    with pytest.raises(UpdateError, match="failed after 0 bytes: timed out"):
        fetch_file(blobs.base_url, entry, tmp_path / "c", timeout=0.2, opener=stalled)


def test_a_slow_link_converges_late_and_one_slow_enough_times_out_first(
    mqtt_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Two fast devices, one on a slow link, one on a link too slow for the rollout's
    in-progress time-out: every device converges, each as late as its link makes it."""
    timeout_s = 3.0
    spec = StackSpec(
        devices=4,
        broker_url=mqtt_broker.url,
        work=tmp_path,
        processes=False,  # four devices: the in-process controller keeps up
        prefix=f"slow{random.randrange(10**6):06d}",
        tags=(f"slow-{random.randrange(10**6):06d}",),
        controller_env={"EDGEFLEET_ROLLOUT_TICK_S": "0.2"},
    )
    with Stack(spec) as stack:
        sha = stack.publish_model("1.0.0", seed=1, hidden=256)
        files = stack.ok(stack.api.get(f"/bundles/{sha}"))["files"]
        size = sum(f["size"] for f in files)
        # The slow link needs ~1.2 s for the bundle's blobs, the slower one ~5 s.
        stack.fleet.set_fault(2, FaultProfile(slow_link_bytes_per_s=size / 1.2))
        stack.fleet.set_fault(3, FaultProfile(slow_link_bytes_per_s=size / 5.0))
        rid = stack.roll_out(sha, in_progress_timeout_s=timeout_s, start=True)
        ids = [stack.fleet.spec.device_id(i) for i in range(4)]
        fast, slow, slower = ids[:2], ids[2], ids[3]

        seen_timed_out: dict[str, object] = {}

        def slower_timed_out() -> bool:
            row = stack.executions(rid)[slower]
            if row["state"] == "timed_out":
                seen_timed_out.update(row, phase=stack.fleet.agents[3].phase)
            return bool(seen_timed_out)

        stack.wait(slower_timed_out, 20, f"{slower} to time out")
        # It timed out while still downloading: slow, not broken.
        assert seen_timed_out["phase"] == "downloading", seen_timed_out
        assert seen_timed_out["reason"]["code"] == "timeout"  # type: ignore[index]
        assert stack.fleet.agents[3].active_bundle is None
        rows = stack.executions(rid)
        assert {rows[d]["state"] for d in [*fast, slow]} == {"committed"}

        # The device comes back from its slow download and converges all the same.
        stack.wait(lambda: stack.executions(rid)[slower]["state"] == "committed", 20,
                   f"{slower} to converge")  # fmt: skip
        assert stack.fleet.count_on("1.0.0") == 4
        rows = stack.executions(rid)
        took = {d: r["finished_at"] - r["notified_at"] for d, r in rows.items()}
        # Each link's device converged after the faster ones, measurably later.
        assert max(took[d] for d in fast) * 2 < took[slow] < took[slower], took
        assert took[slower] > timeout_s
        assert stack.rollout(rid)["counts"]["committed"] == 4


# ---------------------------------------------------------------------- fractional faults


def test_a_fractional_error_rate_is_judged_against_each_trial_limit(
    mqtt_broker: MosquittoBroker, blobs: BlobServer, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    # The same new model fails 30% of its inferences on two devices (seeded: any run of
    # 150 or more of its draws fails 29-33% of the time). One trial allows 20% errors,
    # the other 40%.
    fault = FaultProfile(versions=V2, error_rate=0.3, seed=1)
    spec = FleetSpec(
        devices=2,
        broker_url=mqtt_broker.url,
        controller_url="http://127.0.0.1:9",
        trust=(keys[1],),
        data_dir=tmp_path / "fleet",
        prefix=f"frac{random.randrange(10**6):06d}",
        telemetry_interval_s=0.3,
        faults={0: fault, 1: fault},
    )
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, counter=1)
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    trial = {"min_samples": 150, "min_inferences": 250, "min_seconds": 0, "max_seconds": 120}
    with Fleet(spec) as fleet:
        strict, lenient = fleet.agents
        for agent in fleet.agents:
            deploy(mqtt_broker, blobs, agent.config.device_id, v1, 1)
        assert fleet.wait_for("1.0.0", timeout=20)
        deploy(mqtt_broker, blobs, spec.device_id(0), v2, 2, {**trial, "max_error_rate": 0.2})
        deploy(mqtt_broker, blobs, spec.device_id(1), v2, 2, {**trial, "max_error_rate": 0.4})
        assert wait_until(lambda: strict.phase == lenient.phase == "trial", timeout=20)

        def serve(agent: Agent, calls: int) -> int:
            """Call the device's inference API; how many calls failed."""
            failed = 0
            for i in range(calls):
                try:
                    agent.infer({"x": np.full((1, 8), i % 7, np.float32)})
                except faults.SimulatedInferenceError:
                    failed += 1
            return failed

        # 400 calls through the real agent: about 30% fail, and a 40% limit commits.
        failed = serve(lenient, 400)
        assert abs(failed / 400 - 0.3) < 0.05, failed
        assert wait_until(lambda: lenient.state.trial is None, timeout=10)
        assert lenient.phase == "idle" and lenient.active_bundle.version == "2.0.0"  # type: ignore[union-attr]

        # The same share over a 20% limit rolls back, and the reason gives the figures.
        serve(strict, 400)
        assert wait_until(lambda: strict.phase == "failed", timeout=10)
        assert strict.active_bundle.version == "1.0.0"  # type: ignore[union-attr]
        assert strict.error is not None and strict.error.code == "trial_errors"
        found = re.fullmatch(
            r"(\d+) of (\d+) inferences failed \(([\d.]+)%, limit 20.0%\)", strict.error.message
        )
        assert found, strict.error.message
        errors, total = int(found[1]), int(found[2])
        assert total >= 150 and abs(errors / total - 0.3) < 0.05
        assert serve(strict, 50) == 0  # the previous model serves cleanly again


# ---------------------------------------------------------------------- power loss


def test_power_loss_at_the_slot_switch_or_the_commit_leaves_a_verified_model(
    mqtt_broker: MosquittoBroker, blobs: BlobServer, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = FleetSpec(
        devices=2,
        broker_url=mqtt_broker.url,
        controller_url="http://127.0.0.1:9",
        trust=(keys[1],),
        data_dir=tmp_path / "fleet",
        prefix=f"cut{random.randrange(10**6):06d}",
        telemetry_interval_s=0.3,
    )
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, counter=1)
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    steps = {0: "activating", 1: "committing"}
    with Fleet(spec) as fleet:
        for i in steps:
            deploy(mqtt_broker, blobs, spec.device_id(i), v1, 1)
        assert fleet.wait_for("1.0.0", timeout=20)
        for i, step in steps.items():
            fleet.set_fault(i, FaultProfile(power_loss_at=step))
        watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/+/up/events")
        try:
            restarts = fleet.restarts
            for i in steps:
                deploy(mqtt_broker, blobs, spec.device_id(i), v2, 2, trial={"min_seconds": 0.3,
                       "min_inferences": 0, "max_boot_attempts": 2})  # fmt: skip
            # Both lose power once, restart, and finish the update on their own.
            assert fleet.wait_for("2.0.0", timeout=30)
            assert wait_until(lambda: all(a.state.trial is None for a in fleet.agents), 10)
            assert fleet.restarts == restarts + 2

            def boot_report(i: int) -> str:
                """What device ``i`` said it served when it came back from the cut."""
                updating = False
                for _, payload in watcher.messages:
                    event = parse_event(payload)
                    if event.device_id != spec.device_id(i):
                        continue
                    if event.type == "update_started" and event.bundle.version == "2.0.0":  # type: ignore[union-attr]
                        updating = True
                    elif event.type == "agent_started" and updating:
                        return event.message
                return ""

            assert wait_until(lambda: all(boot_report(i) for i in steps), timeout=10)
        finally:
            watcher.close()
        # Cut before the switch was written: it came back on the old model (and then
        # installed the new one again). Cut before the commit was written: it came back
        # on the new model still on trial, a second start, and committed it.
        assert "serving mlp@1.0.0" in boot_report(0), boot_report(0)
        assert "restarted while on trial (start 2)" in boot_report(1), boot_report(1)
        assert "serving mlp@2.0.0" in boot_report(1), boot_report(1)
        for agent in fleet.agents:
            store = SlotStore(agent.config.data_dir)
            state = store.load_state()
            assert state.active is not None and state.trial is None
            bundle = verify_bundle_dir(
                store.slot_dir(state.active), load_trusted_keys([keys[1]]),
                datetime.now(timezone.utc),
            )  # fmt: skip
            assert bundle.manifest.version == "2.0.0" and agent.phase == "idle"
            assert agent.infer({"x": np.ones((1, 8), np.float32)})
