"""Staged rollouts told as stories: a fleet of real agents, a real broker, the real controller.

Every device first gets 1.0.0 (its "previous model" later); then 2.0.0 goes out in waves
behind gates, and the test asserts where every device ended and what the controller says.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edgefleet.stack import Stack, StackSpec
from simulators.faults import FaultProfile
from simulators.mosquitto import MosquittoBroker

pytestmark = pytest.mark.broker

FAST = {
    "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
    "EDGEFLEET_ROLLOUT_GATE_INTERVAL_S": "0.5",
    "EDGEFLEET_ROLLOUT_REPUBLISH_AFTER_S": "5",
}
# Commit after a few clean inferences; never wait long on a device with little traffic.
TRIAL = {"min_seconds": 0.5, "min_inferences": 3, "min_samples": 3, "max_seconds": 8}
V2 = ("2.0.0",)


def install_v1(stack: Stack) -> str:
    v1 = stack.publish_model("1.0.0", seed=1)
    rid = stack.roll_out(v1, start=True, trial=TRIAL)
    stack.wait_rollout(rid, "completed", timeout=120)
    assert stack.fleet.count_on("1.0.0") == stack.spec.devices
    return v1


def generations(stack: Stack) -> Counter[int]:
    devices = stack.ok(stack.api.get("/devices", params={"limit": 1000}))
    return Counter(d["generation"] for d in devices)


def waves_of(stack: Stack, rid: str) -> dict[int, list[str]]:
    waves: dict[int, list[str]] = {}
    for device_id, row in stack.executions(rid).items():
        waves.setdefault(row["wave"], []).append(device_id)
    return waves


def index_of(stack: Stack, device_id: str) -> int:
    return int(device_id.rsplit("-", 1)[1])


def assert_counted_once(stack: Stack, rid: str) -> None:
    """Every device has one execution, committed, and was told about 2.0.0 exactly as
    often as its execution says (1.0.0 once, then one desired state per attempt)."""
    detail = stack.rollout(rid)
    n = stack.spec.devices
    assert detail["counts"]["committed"] == n == detail["total"], detail
    rows = stack.executions(rid)
    assert len(rows) == n
    devices = stack.ok(stack.api.get("/devices", params={"limit": 1000}))
    told = {d["id"]: d["generation"] for d in devices}
    assert {d: told[d] for d in rows} == {d: 1 + r["attempts"] for d, r in rows.items()}

    def versions() -> Counter[str]:
        devices = stack.ok(stack.api.get("/devices", params={"limit": 1000}))
        return Counter(d["active_bundle"]["version"] for d in devices)

    # A state report lost with a replica is sent again on the device's heartbeat.
    heartbeat = stack.spec.state_heartbeat_s
    stack.wait(lambda: versions() == {"2.0.0": n}, heartbeat + 10, f"{n} devices on 2.0.0")


def start_v2_in_waves(stack: Stack, **body: Any) -> str:
    v2 = stack.publish_model("2.0.0", seed=2)
    return stack.roll_out(
        v2,
        waves={"steps": [{"percent": 5}, {"percent": 25}, {"percent": 100}]},
        abort=[{"kind": "failure_share", "threshold": 0.1, "min_finished": 5}],
        trial=TRIAL,
        start=True,
        **body,
    )


def run_scenario_one(stack: Stack) -> dict[str, Any]:
    """200 devices, waves 5% / 25% / 100%: completes, every device committed on 2.0.0."""
    install_v1(stack)
    stack.fleet.feed(rate_per_device=4)
    rid = start_v2_in_waves(stack)
    detail = stack.wait_rollout(rid, "completed", "paused", "aborted", timeout=240)
    assert detail["status"] == "completed", detail
    n = stack.spec.devices
    assert [w["total"] for w in detail["waves"]] == [n // 20, n // 4 - n // 20, n - n // 4]
    assert detail["counts"]["committed"] == n == detail["total"]
    assert stack.fleet.wait_for("2.0.0", timeout=10)
    devices = stack.ok(stack.api.get("/devices", params={"limit": 1000}))
    assert Counter(d["active_bundle"]["version"] for d in devices) == {"2.0.0": n}
    # Each device was told exactly twice (1.0.0, then 2.0.0): none counted twice.
    assert generations(stack) == {2: n}
    assert all(row["attempts"] == 1 for row in stack.executions(rid).values())
    return detail


def test_scenario_1_waves_complete_and_every_device_commits(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    spec = StackSpec(devices=200, broker_url=fresh_broker.url, work=tmp_path, controller_env=FAST)
    with Stack(spec) as stack:
        run_scenario_one(stack)


def test_scenario_2_a_crashing_model_stops_at_wave_one_and_wave_one_returns(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    spec = StackSpec(devices=60, broker_url=fresh_broker.url, work=tmp_path, controller_env=FAST)
    with Stack(spec) as stack:
        v1 = install_v1(stack)
        v2 = stack.publish_model("2.0.0", seed=2)
        rid = stack.roll_out(
            v2,
            waves={"steps": [{"percent": 5}, {"percent": 25}, {"percent": 100}], "min_devices": 10},
            abort=[{"kind": "failure_share", "threshold": 0.2, "min_finished": 10,
                    "action": "abort"}],
            trial={**TRIAL, "max_seconds": 30},
        )  # fmt: skip
        # The new model crashes on 30% of the devices, 3 of them in wave 1.
        waves = waves_of(stack, rid)
        first, rest = sorted(waves[1]), sorted(waves[2] + waves[3])
        crashing = first[:3] + random.Random(2).sample(rest, k=len(rest) * 3 // 10)
        for device_id in crashing:
            stack.fleet.set_fault(
                index_of(stack, device_id), FaultProfile(versions=V2, crash_probability=1.0)
            )
        stack.fleet.feed(rate_per_device=5)
        stack.act(rid, "start")

        detail = stack.wait_rollout(rid, "aborted", "completed", timeout=120)
        assert detail["status"] == "aborted", detail
        assert "3 of 10 finished devices failed" in detail["reason"]
        rows = stack.executions(rid)
        stack.fleet.stop_feeding()
        # Every wave-1 device ends on its previous version: the three that crashed rolled
        # themselves back, the seven that committed were sent back by the controller.
        states = Counter(rows[d]["state"] for d in first)
        assert states == {"rolled_back": 10}, {d: rows[d] for d in first}
        assert {rows[d]["reason"]["code"] for d in first[:3]} == {"trial_crash"}
        assert {rows[d]["reason"]["code"] for d in first[3:]} == {"rollout_rolled_back"}
        stack.wait(
            lambda: all(
                stack.fleet.agents[index_of(stack, d)].active_bundle.version == "1.0.0"  # type: ignore[union-attr]
                for d in first
            ),
            30,
            "wave 1 back on 1.0.0",
        )
        # No device outside wave 1 ever received the bundle.
        assert all(rows[d]["state"] == "canceled" for d in rest)
        for device_id in rest:
            agent = stack.fleet.agents[index_of(stack, device_id)]
            assert agent.state.slot_holding(v2) is None, device_id
            assert agent.active_bundle is not None and agent.active_bundle.manifest_sha256 == v1
        audit = [(e["actor"], e["action"], e["detail"]) for e in stack.audit(rid)]
        assert any("aborted: 3 of 10" in detail for _, _, detail in audit)


def test_scenario_3_a_slow_model_trips_the_latency_gate_then_resume_abort_rollback(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    devices = 40
    spec = StackSpec(
        devices=devices,
        broker_url=fresh_broker.url,
        work=tmp_path,
        controller_env=FAST,
        faults={i: FaultProfile(versions=V2, latency_multiplier=2.0) for i in range(devices)},
    )
    with Stack(spec) as stack:
        install_v1(stack)
        stack.fleet.feed(rate_per_device=10)
        # The previous model's latencies, from real traffic.
        stack.wait(lambda: stack.fleet.inferences > devices * 30, 30, "v1 traffic")
        v2 = stack.publish_model("2.0.0", seed=2)
        rid = stack.roll_out(
            v2,
            # The gate pauses as soon as its evidence is in; the soak only bounds how
            # long a loaded machine may take to deliver it before the next wave starts.
            waves={"steps": [{"percent": 10}, {"percent": 50}, {"percent": 100}], "soak_s": 10},
            abort=[{"kind": "latency_ratio", "threshold": 1.5, "min_finished": 3}],
            trial=TRIAL,
            start=True,
        )
        paused = stack.wait_rollout(rid, "paused", "completed", timeout=90)
        assert paused["status"] == "paused", paused
        assert "p95 latency" in paused["reason"] and "previous model" in paused["reason"]
        assert paused["gates"]["latency_ratio"] > 1.5
        assert paused["current_wave"] == 1
        assert all(c["counts"].get("queued") == c["total"] for c in paused["waves"][1:])

        # Resume: the operator accepts the risk, the next wave goes out, and the gate
        # fires again once the new devices give it new evidence.
        stack.act(rid, "resume", actor="alice")
        again = stack.wait_rollout(rid, "paused", "completed", timeout=90)
        assert again["status"] == "paused" and again["current_wave"] == 2, again
        assert again["waves"][1]["counts"].get("queued", 0) == 0

        # Abort stops it: nobody else is told; devices keep what they run.
        on_v2_before = stack.fleet.count_on("2.0.0")
        aborted = stack.act(rid, "abort", actor="alice")
        assert aborted["status"] == "aborted"
        assert aborted["counts"]["canceled"] == aborted["waves"][2]["total"]
        assert stack.fleet.count_on("2.0.0") >= on_v2_before > 0

        # Roll back: every device that took 2.0.0 returns to 1.0.0 from its other slot.
        rolled = stack.act(rid, "rollback", actor="bob")
        assert rolled["status"] == "rolled_back"
        assert stack.fleet.wait_for("1.0.0", timeout=60), stack.fleet.versions()
        trail = [(e["actor"], e["action"]) for e in stack.audit(rid)]
        assert ("alice", "resume") in trail and ("alice", "abort") in trail
        assert ("bob", "rollback") in trail
        assert sum(1 for _, action in trail if action == "engine") >= 3


def test_scenario_5_a_controller_killed_mid_rollout_restarts_and_counts_stay_exact(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    spec = StackSpec(
        devices=60,
        broker_url=fresh_broker.url,
        work=tmp_path,
        controller_env=FAST,
        state_heartbeat_s=5,
    )
    with Stack(spec) as stack:
        install_v1(stack)
        stack.fleet.feed(rate_per_device=4)
        rid = start_v2_in_waves(stack)
        stack.wait(lambda: stack.rollout(rid)["current_wave"] == 2, 60, "wave 2 to start")
        port = stack.kill_replica(0)  # SIGKILL, mid-wave: downloads in flight break too
        # Started again (same replica, same address) it resumes from the database, and
        # its MQTT session from the broker: nothing the devices said meanwhile is lost.
        stack.start_replica(0, port=port)
        detail = stack.wait_rollout(rid, "completed", "paused", "aborted", timeout=120)
        assert detail["status"] == "completed", detail
        assert_counted_once(stack, rid)
        assert stack.fleet.wait_for("2.0.0", timeout=10)


@pytest.mark.postgres
def test_scenario_6_two_replicas_on_postgresql_complete_scenario_1_exactly(
    fresh_broker: MosquittoBroker, postgres_url: str, tmp_path: Path
) -> None:
    spec = StackSpec(
        devices=200,
        broker_url=fresh_broker.url,
        work=tmp_path,
        database_url=postgres_url,
        replicas=2,
        controller_env=FAST,
    )
    with Stack(spec) as stack:
        detail = run_scenario_one(stack)
        # One replica advanced the rollout (it held the lease throughout)...
        engine = {e["actor"] for e in stack.audit(detail["id"]) if e["action"] == "engine"}
        assert engine == {f"controller:{detail['lease_owner']}"}
        # ...while both split the ingest through the shared subscription.
        stored = [stack.ok(api.get("/health"))["ingest"]["stored"] for api in stack.apis]
        assert all(n > 0 for n in stored), stored
        assert stack.rollout(detail["id"], replica=1)["counts"] == detail["counts"]


@pytest.mark.postgres
def test_when_the_replica_advancing_a_rollout_leaves_the_other_takes_over(
    fresh_broker: MosquittoBroker, postgres_url: str, tmp_path: Path
) -> None:
    spec = StackSpec(
        devices=40,
        broker_url=fresh_broker.url,
        work=tmp_path,
        database_url=postgres_url,
        replicas=2,
        controller_env={**FAST, "EDGEFLEET_ROLLOUT_LEASE_S": "2"},
        state_heartbeat_s=5,
    )
    with Stack(spec) as stack:
        install_v1(stack)
        stack.fleet.feed(rate_per_device=4)
        rid = start_v2_in_waves(stack)
        stack.wait(lambda: stack.rollout(rid)["current_wave"] == 2, 60, "wave 2 to start")
        owner = stack.rollout(rid)["lease_owner"]
        stack.stop_replica(int(owner.rsplit("-", 1)[1]))
        detail = stack.wait_rollout(rid, "completed", "paused", "aborted", timeout=120)
        assert detail["status"] == "completed", detail
        assert detail["lease_owner"] != owner
        assert_counted_once(stack, rid)
        engine = [e["actor"] for e in stack.audit(rid) if e["action"] == "engine"]
        assert engine[0] == f"controller:{owner}" and engine[-1] != engine[0]


def test_devices_partitioned_from_the_broker_get_the_rollout_when_they_return(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    spec = StackSpec(devices=30, broker_url=fresh_broker.url, work=tmp_path, controller_env=FAST)
    with Stack(spec) as stack:
        install_v1(stack)
        away = list(range(10))
        stack.fleet.partition(away, seconds=15)
        ids = {stack.fleet.spec.device_id(i) for i in away}

        def offline() -> set[str]:
            devices = stack.ok(stack.api.get("/devices", params={"online": False}))
            return {d["id"] for d in devices}

        # The broker delivers their Last Will: the controller sees them go.
        stack.wait(lambda: ids <= offline(), 10, "the partitioned devices to show offline")
        v2 = stack.publish_model("2.0.0", seed=2)
        rid = stack.roll_out(v2, start=True, trial=TRIAL, in_progress_timeout_s=60)
        stack.wait(lambda: stack.fleet.count_on("2.0.0") == 20, 60, "the reachable devices")
        assert all(stack.fleet.versions()[d] == "1.0.0" for d in ids)  # still away
        # Back on the network, they read their retained desired state and catch up.
        detail = stack.wait_rollout(rid, "completed", "paused", timeout=90)
        assert detail["status"] == "completed" and detail["counts"]["committed"] == 30
        assert not ids & offline()
