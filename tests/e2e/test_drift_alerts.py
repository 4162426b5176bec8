"""Drift end to end: a third of a fleet starts seeing shifted data at a known time.

Real parts throughout: a controller process, a private Mosquitto, 30 real agents that
count drift on the device over the bundle's bins, and a webhook receiver on a local
port. The controller raises an alert naming the shifted devices and the shifted
feature, with when it started; the receiver gets it, signed; the other devices stay
out of it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.stack import Stack, StackSpec
from simulators.data import Shift, TabularData
from simulators.mosquitto import MosquittoBroker
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.broker
DEVICES = 30
SHIFTED = range(10)  # a third of the fleet
SECRET = "retrain-me"


def test_a_third_of_the_fleet_drifts_and_the_alert_names_them_and_reaches_a_webhook(
    fresh_broker: MosquittoBroker, tmp_path: Path
) -> None:
    with WebhookReceiver() as hook:
        spec = StackSpec(
            devices=DEVICES,
            broker_url=fresh_broker.url,
            work=tmp_path,
            controller_env={
                "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
                "EDGEFLEET_DRIFT_CHECK_INTERVAL_S": "2",
                "EDGEFLEET_DRIFT_WINDOW_S": "20",
                "EDGEFLEET_DRIFT_MIN_SAMPLES": "100",
                # 30 devices x 12 features per check: a strict false discovery rate
                # keeps a quiet device out of the alert in every check of the test.
                "EDGEFLEET_DRIFT_ALPHA": "0.00001",
                "EDGEFLEET_DRIFT_CONFIRMATIONS": "2",
                "EDGEFLEET_ALERT_WEBHOOKS": hook.url,
                "EDGEFLEET_ALERT_WEBHOOK_SECRET": SECRET,
            },
        )
        with Stack(spec) as stack:
            reference = {"x": np.random.default_rng(1).standard_normal((4000, 8))}
            v1 = stack.publish_model("1.0.0", seed=1, reference=reference)
            rid = stack.roll_out(v1, start=True)
            stack.wait_rollout(rid, "completed", timeout=90)

            shift_at = time.time() + 6.0
            data = TabularData([Shift(devices=SHIFTED, column=3, delta=1.0, at=shift_at)])
            stack.fleet.feed(rate_per_device=10, data=data)
            shifted = sorted(stack.fleet.agents[i].config.device_id for i in SHIFTED)

            def opened() -> dict[str, Any] | None:
                alerts = stack.ok(stack.api.get("/drift/alerts", params={"status": "open"}))
                return alerts[0] if alerts else None

            stack.wait(opened, 90, "a drift alert to open")
            assert hook.wait(lambda calls: any(c.status < 300 for c in calls), timeout=30)
            time.sleep(8)  # four more checks: the rest of the shifted join, nobody else
            assert hook.wait(lambda calls: len({d for c in calls if c.status < 300
                                                for d in c.json()["alert"]["devices"]}) >= 10,
                             timeout=20)  # fmt: skip
            alert = opened()
            assert alert is not None, "the alert did not stay open"
            assert alert["devices"] == shifted
            assert alert["bundle"]["manifest_sha256"] == v1
            assert alert["model"] == {"name": "mlp", "version": "1.0.0"}
            features = {f["name"]: f for f in alert["features"]}
            assert {n for n, f in features.items() if f["kind"] == "input"} == {"x[3]"}
            assert features["x[3]"]["devices"] == shifted
            assert abs(features["x[3]"]["since"] - shift_at) <= 5.0, features["x[3]"]["since"]

            # The receiver heard of it when it opened (the devices confirmed by then), and
            # of every device that joined later: together, exactly the shifted third.
            calls = hook.accepted()
            assert calls[0].headers["X-EdgeFleet-Event"] == "drift_alert.opened"
            assert {c.headers["X-EdgeFleet-Event"] for c in calls[1:]} <= {"drift_alert.updated"}
            told: set[str] = set()
            for call in calls:
                signed = hmac.new(SECRET.encode(), call.body, hashlib.sha256).hexdigest()
                assert call.headers["X-EdgeFleet-Signature"] == f"sha256={signed}"
                payload = call.json()["alert"]
                assert payload["id"] == alert["id"]
                assert "x[3]" in {f["name"] for f in payload["features"]}
                told |= set(payload["devices"])
            assert sorted(told) == shifted

            # The fleet-level view agrees: the quiet two thirds show no drift.
            quiet = [a.config.device_id for i, a in enumerate(stack.fleet.agents) if i >= 10]
            report = stack.ok(stack.api.get("/drift", params={
                "bundle": v1, "device": quiet, "window_s": 20}))  # fmt: skip
            assert report["bundles"][0]["drifting_devices"] == []
            stack.fleet.stop_feeding()
