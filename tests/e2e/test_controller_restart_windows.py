"""A controller process SIGKILLed while devices report, then started again as the same
replica: it resumes its MQTT session, so every telemetry window the devices sent while
it was down reaches it (the broker queued them for that session and acknowledged them
to the devices, which therefore do not send them again)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgefleet.stack import Stack, StackSpec
from simulators.mosquitto import MosquittoBroker

pytestmark = pytest.mark.broker


def test_windows_sent_while_the_controller_is_dead_reach_it_after_its_restart(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    spec = StackSpec(
        devices=4,
        broker_url=fresh_broker.url,
        work=tmp_path,
        controller_env={"EDGEFLEET_ROLLOUT_TICK_S": "0.2"},
        telemetry_interval_s=0.2,
    )
    with Stack(spec) as stack:
        v1 = stack.publish_model("1.0.0", seed=1)
        rid = stack.roll_out(v1, start=True)
        stack.wait_rollout(rid, "completed", timeout=90)
        devices = [a.config.device_id for a in stack.fleet.agents]

        def served() -> int:
            summary = stack.ok(stack.api.get(
                "/telemetry/summary", params={"device": devices, "window_s": 3600}))  # fmt: skip
            return sum(g["inference_count"] for g in summary["groups"])

        stack.fleet.feed(rate_per_device=20)
        time.sleep(1.0)
        port = stack.kill_replica(0)  # no goodbye: its session stays on the broker
        time.sleep(2.0)  # ~10 windows per device, queued by the broker for the dead one
        stack.start_replica(0, port=port)
        time.sleep(1.0)
        stack.fleet.stop_feeding()
        fed = stack.fleet.inferences
        assert fed > 0
        stack.wait(lambda: served() >= fed, 30, f"the controller to count {fed} inferences")
        time.sleep(1.0)  # late copies, if any, would show now: none counted twice
        assert served() == fed
