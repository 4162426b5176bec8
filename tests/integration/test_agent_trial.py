"""A new model serves on trial, then commits, or the device returns to its previous model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from firmware_bundles.wire import parse_event
from tests.agent_harness import deploy, make_bundle, wait_until
from tests.mqtt_tools import Watcher

pytestmark = pytest.mark.broker

X = {"x": np.ones((1, 8), np.float32)}


def events(watcher: Watcher) -> list:  # type: ignore[type-arg]
    return [parse_event(p) for t, p in watcher.messages if t.endswith("/events")]


def test_clean_trial_commits_and_raises_the_rollback_floor(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("trial-a")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, counter=1)
    deploy(mqtt_broker, blobs, "trial-a", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    assert agent.state.trial is None  # a first model has nothing to return to
    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/trial-a/up/#")
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    deploy(mqtt_broker, blobs, "trial-a", v2, 2, trial={"min_inferences": 5, "min_seconds": 0.5})
    assert wait_until(lambda: agent.state.trial is not None)
    assert agent.phase == "trial" and agent.state.max_release_counter == 1
    for _ in range(10):
        agent.infer(X)
    assert wait_until(lambda: agent.state.trial is None)
    assert agent.phase == "idle" and agent.active_bundle.version == "2.0.0"  # type: ignore[union-attr]
    assert agent.state.max_release_counter == 2
    assert watcher.wait(lambda m: any(e.type == "committed" for e in events(watcher)))
    state = json.loads((tmp_path / "trial-a" / "state.json").read_text())
    assert state["trial"] is None
    watcher.close()


def test_slow_model_on_trial_rolls_back_without_download(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("trial-b")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, counter=1)
    deploy(mqtt_broker, blobs, "trial-b", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/trial-b/up/#")
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    # A latency budget no model can meet stands in for "the new model is too slow".
    deploy(mqtt_broker, blobs, "trial-b", v2, 2, trial={"max_p95_ms": 0.00001, "min_samples": 5})
    assert wait_until(lambda: agent.phase == "trial")
    requests_before = len(blobs.requests)
    for _ in range(10):
        agent.infer(X)
    assert wait_until(lambda: agent.phase == "failed")
    assert agent.active_bundle.version == "1.0.0"  # type: ignore[union-attr]
    assert agent.error is not None and agent.error.code == "trial_latency"
    assert len(blobs.requests) == requests_before  # the old model came from its slot
    assert watcher.wait(
        lambda m: any(
            e.type == "rolled_back" and e.code == "trial_latency" for e in events(watcher)
        )
    )
    # The failed bundle is not retried for the same desired generation.
    agent.stop()
    again = agent_factory("trial-b")
    assert again.active_bundle.version == "1.0.0"  # type: ignore[union-attr]
    watcher.close()


def test_restarts_while_on_trial_return_to_previous(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("trial-c")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, counter=1)
    deploy(mqtt_broker, blobs, "trial-c", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    trial = {"max_boot_attempts": 2, "min_seconds": 600, "max_seconds": 900}
    deploy(mqtt_broker, blobs, "trial-c", v2, 2, trial=trial)
    assert wait_until(lambda: agent.phase == "trial")
    agent.stop(graceful=False)
    # Restart 1 (boot attempt 2): still within the limit, the new model serves on trial.
    second = agent_factory("trial-c")
    assert second.active_bundle.version == "2.0.0" and second.phase == "trial"  # type: ignore[union-attr]
    second.stop(graceful=False)
    # Restart 2 (boot attempt 3): over the limit, back to the previous model at boot.
    third = agent_factory("trial-c")
    assert third.active_bundle.version == "1.0.0"  # type: ignore[union-attr]
    assert third.error is not None and third.error.code == "trial_crash"
    assert third.state.trial is None
    # The retained desired state still names v2 (same generation): it must not come back.
    import time

    time.sleep(1.5)
    assert third.active_bundle.version == "1.0.0"  # type: ignore[union-attr]
    # A new generation asking for v2 again is an explicit retry and is followed.
    deploy(mqtt_broker, blobs, "trial-c", v2, 3, trial={"min_seconds": 600, "max_seconds": 900})
    assert wait_until(lambda: third.active_bundle.version == "2.0.0")  # type: ignore[union-attr]


def test_the_bundles_own_trial_policy_holds_the_model_on_trial_until_it_is_met(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("trial-d")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1, counter=1)
    deploy(mqtt_broker, blobs, "trial-d", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    # The manifest asks for 25 clean inferences; the desired state names no trial.
    policy = {"min_inferences": 25, "min_seconds": 0, "max_seconds": 600}
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2, trial=policy)
    assert v2.manifest.trial == policy
    deploy(mqtt_broker, blobs, "trial-d", v2, 2)
    assert wait_until(lambda: agent.phase == "trial")
    assert agent.state.trial is not None and agent.state.trial.policy["min_inferences"] == 25
    for _ in range(24):
        agent.infer(X)
    # A window judged all 24 (it saved them in the trial record) and kept the trial going.
    assert wait_until(lambda: agent.state.trial is not None and agent.state.trial.inferences == 24)
    assert agent.phase == "trial"
    agent.infer(X)
    assert wait_until(lambda: agent.state.trial is None)
    assert agent.phase == "idle" and agent.active_bundle.version == "2.0.0"  # type: ignore[union-attr]
