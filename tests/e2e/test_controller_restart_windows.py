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

        port = stack.kill_replica(0)  # no goodbye: its session stays on the broker
        # Traffic only while it is dead: the windows go into its session (a replica
        # killed mid-traffic also loses what it had taken but not yet written).
        stack.fleet.feed(rate_per_device=20)
        time.sleep(2.0)
        stack.fleet.stop_feeding()
        time.sleep(1.0)  # the last windows leave the devices
        fed = stack.fleet.inferences
        assert fed > 0
        stack.start_replica(0, port=port)
        stack.wait(lambda: served() >= fed, 30, f"the controller to count {fed} inferences")
        time.sleep(1.0)  # late copies, if any, would show now: none counted twice
        assert served() == fed
        # Delivered into the dead replica's session, not held back by the devices and
        # sent again later: the broker never said "no matching subscribers".
        assert sum(a.sender.refusals for a in stack.fleet.agents) == 0
