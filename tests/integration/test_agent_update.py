"""A real agent, a real broker, a real HTTP blob server: the device side of an update."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest

from firmware_bundles.golden import generate_inputs
from firmware_bundles.keys import init_keys
from firmware_bundles.wire import parse_event, parse_telemetry, topic
from tests.agent_harness import deploy, last_state, make_bundle, wait_until
from tests.mqtt_tools import Watcher, publish

pytestmark = pytest.mark.broker


def test_agent_installs_and_serves_the_new_model(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    agent = agent_factory("dev-a")
    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/dev-a/up/#")
    deploy(mqtt_broker, blobs, "dev-a", v1, 1)
    assert wait_until(
        lambda: agent.active_bundle is not None and agent.active_bundle.version == "1.0.0"
    )

    x = generate_inputs(agent.inference.active.runner.inputs, seed=42)  # type: ignore[union-attr]
    want = ort.InferenceSession(str(tmp_path / "model-1.0.0.onnx")).run(None, x)[0]
    np.testing.assert_allclose(agent.infer(x)["y"], want, rtol=1e-6)

    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    deploy(mqtt_broker, blobs, "dev-a", v2, 2)
    assert wait_until(lambda: agent.active_bundle.version == "2.0.0")  # type: ignore[union-attr]
    assert watcher.wait(
        lambda m: (
            (s := last_state(watcher, "dev-a")) is not None
            and s.active is not None
            and s.active.version == "2.0.0"
            and s.previous is not None
            and s.previous.version == "1.0.0"
        )
    )
    want2 = ort.InferenceSession(str(tmp_path / "model-2.0.0.onnx")).run(None, x)[0]
    np.testing.assert_allclose(agent.infer(x)["y"], want2, rtol=1e-6)

    # Telemetry windows add up to exactly the inferences we made (two), none lost or doubled.
    def counted(m: list[tuple[str, bytes]]) -> int:
        return sum(parse_telemetry(p).inference_count for t, p in m if t.endswith("/telemetry"))

    assert watcher.wait(lambda m: counted(m) >= 2)
    time.sleep(1.2)  # two more windows: nothing is counted twice
    assert counted(watcher.messages) == 2
    watcher.close()


@pytest.mark.parametrize("fault", ["flipped_byte", "unknown_key", "bad_golden"])
def test_agent_refuses_a_bad_bundle_and_keeps_serving(
    fault, mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    agent = agent_factory("dev-b")
    deploy(mqtt_broker, blobs, "dev-b", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)

    if fault == "unknown_key":
        other, _ = init_keys(tmp_path / "other-keys")
        bad = make_bundle(tmp_path, other, "2.0.0", seed=2, counter=2)
        expected_code = "signature"
    elif fault == "bad_golden":
        wrong = {"y": np.zeros((4, 4), dtype=np.float32)}
        bad = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2, golden_outputs=wrong)
        expected_code = "health_check"
    else:
        bad = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
        model_sha = bad.manifest.file("model").sha256
        data = bytearray(bad.blobs[model_sha])
        data[len(data) // 2] ^= 0x01
        bad.blobs[model_sha] = bytes(data)
        expected_code = "digest_mismatch"

    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/dev-b/up/#")
    deploy(mqtt_broker, blobs, "dev-b", bad, 2)
    assert watcher.wait(
        lambda m: any(
            t.endswith("/events") and parse_event(p).type == "update_failed" for t, p in m
        )
    )
    failed = [
        parse_event(p)
        for t, p in watcher.messages
        if t.endswith("/events") and parse_event(p).type == "update_failed"
    ]
    assert failed[0].code == expected_code, failed[0].message
    # The state report follows the event.
    assert watcher.wait(lambda m: (s := last_state(watcher, "dev-b")) is not None
                        and s.phase == "failed"), last_state(watcher, "dev-b")  # fmt: skip
    state = last_state(watcher, "dev-b")
    assert state is not None and state.error is not None
    assert state.error.code == expected_code
    assert agent.active_bundle is not None and agent.active_bundle.version == "1.0.0"
    x = generate_inputs(agent.inference.active.runner.inputs, seed=3)  # type: ignore[union-attr]
    assert agent.infer(x)["y"].shape == (1, 4)
    watcher.close()


def test_interrupted_download_resumes_with_range(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("dev-c")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    model_sha = v1.manifest.file("model").sha256
    blobs.cut_after[model_sha] = 300
    deploy(mqtt_broker, blobs, "dev-c", v1, 1)
    # The first attempt fails part-way; a re-sent desired state (as the controller's
    # retry does) resumes from byte 300 instead of starting over.
    assert wait_until(lambda: agent.phase == "failed")
    assert agent.error is not None and agent.error.code == "download"
    assert (tmp_path / "dev-c" / "downloads" / f"{model_sha}.part").stat().st_size == 300
    deploy(mqtt_broker, blobs, "dev-c", v1, 2)
    assert wait_until(lambda: agent.active_bundle is not None)
    assert (model_sha, "bytes=300-") in blobs.requests


def test_restart_serves_the_installed_model_without_network(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("dev-d")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    deploy(mqtt_broker, blobs, "dev-d", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    agent.stop()
    blobs.blobs.clear()
    again = agent_factory("dev-d")
    assert again.active_bundle is not None and again.active_bundle.version == "1.0.0"


def test_torn_active_slot_falls_back_to_previous(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("dev-e")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    deploy(mqtt_broker, blobs, "dev-e", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    deploy(mqtt_broker, blobs, "dev-e", v2, 2)
    assert wait_until(lambda: agent.active_bundle.version == "2.0.0")  # type: ignore[union-attr]
    agent.stop()
    slot = agent.state.active
    model = tmp_path / "dev-e" / "slots" / str(slot) / "blobs" / v2.manifest.file("model").sha256
    model.write_bytes(model.read_bytes()[:100])  # torn by a power cut
    again = agent_factory("dev-e")
    assert again.active_bundle is not None and again.active_bundle.version == "1.0.0"
    assert again.error is not None and again.error.code == "size_mismatch"


def test_garbage_on_the_desired_topic_is_dropped(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("dev-f")
    desired_topic = topic("dev-f", "down", "desired")
    publish(mqtt_broker, topic("dev-f", "down", "cmd"), b"\x00garbage")
    for junk in (
        b"\xff\xfe garbage",
        b"[1,2,3]",
        b'{"schema":1,"generation":"x","bundle":null}',
        b'{"schema":1,"generation":1,"bundle":{"manifest_sha256":"nothex","name":"a","version":"1"}}',
        b"{" + b" " * 300_000 + b"}",
    ):
        publish(mqtt_broker, desired_topic, junk)
    assert wait_until(lambda: agent.dropped_messages >= 6)
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    deploy(mqtt_broker, blobs, "dev-f", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)


def test_state_is_sent_again_on_a_heartbeat_so_a_lost_report_heals(
    mqtt_broker, agent_factory
) -> None:  # type: ignore[no-untyped-def]
    watcher = Watcher(mqtt_broker, topic("dev-h", "up", "state"))
    try:
        agent_factory("dev-h", state_heartbeat_s=1.0)
        assert watcher.wait(lambda msgs: len(msgs) >= 1, timeout=10)
        first = len(watcher.messages)
        # Nothing changes on the device, yet its state goes out again every second.
        assert watcher.wait(lambda msgs: len(msgs) >= first + 2, timeout=10)
        assert last_state(watcher, "dev-h") is not None
    finally:
        watcher.close()


def test_controller_roll_back_to_the_previous_bundle_needs_no_download(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("dev-r")
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    v2 = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    deploy(mqtt_broker, blobs, "dev-r", v1, 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    deploy(mqtt_broker, blobs, "dev-r", v2, 2, trial={"min_seconds": 0, "min_inferences": 0})
    assert wait_until(lambda: agent.active_bundle.version == "2.0.0" and agent.state.trial is None)  # type: ignore[union-attr]
    assert agent.state.max_release_counter == 2
    requests = len(blobs.requests)
    # The controller rolls the fleet back: desired is the previous bundle, a new generation.
    deploy(mqtt_broker, blobs, "dev-r", v1, 3, trial={"min_seconds": 0, "min_inferences": 0})
    assert wait_until(lambda: agent.active_bundle.version == "1.0.0" and agent.state.trial is None)  # type: ignore[union-attr]
    assert len(blobs.requests) == requests  # from its other slot, not the network
    x = generate_inputs(agent.inference.active.runner.inputs, seed=0)  # type: ignore[union-attr]
    assert agent.infer(x)["y"].shape[0] == x["x"].shape[0]
