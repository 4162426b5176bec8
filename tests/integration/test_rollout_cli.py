"""``edgefleet rollout ...`` against a real controller: what an operator types and reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from controller.rollout_cli import parse_abort, parse_waves
from controller.server import ControllerServer
from controller.settings import Settings
from edgefleet.cli import main
from firmware_bundles.errors import EdgeFleetError
from firmware_bundles.wire import BundleRef, Desired, State, parse_desired, topic
from simulators.mosquitto import MosquittoBroker
from tests.models import mlp
from tests.mqtt_tools import Watcher, publish

pytestmark = [pytest.mark.broker]


@pytest.fixture()
def controller(mqtt_broker: MosquittoBroker, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A controller and a bundle on it: (controller URL, bundle sha256)."""
    settings = Settings.from_env(
        {
            "EDGEFLEET_DATA_DIR": str(tmp_path / "controller"),
            "EDGEFLEET_BROKER_URL": mqtt_broker.url,
            "EDGEFLEET_ROLLOUT_TICK_S": "0.2",
        }
    )
    with ControllerServer(settings) as server, httpx.Client(base_url=server.api_url) as api:
        model = mlp(tmp_path / "m.onnx")
        api.post("/models", json={"name": "cli"}).raise_for_status()
        api.post(
            "/models/cli/versions",
            data={"version": "1"},
            files={"file": ("m.onnx", model.read_bytes())},
        ).raise_for_status()
        bundle = api.post("/bundles", json={"model": "cli", "version": "1", "bundle_version": "1"})
        bundle.raise_for_status()
        yield server.url, bundle.json()["manifest_sha256"]


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = main(["rollout", "--controller", url, "--actor", "carol", *args])
    out, err = capsys.readouterr()
    return code, out, err


def rollout_id(output: str) -> str:
    return output.splitlines()[0].split()[1]


def test_an_operator_creates_watches_pauses_and_resumes_a_rollout(
    controller: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, sha = controller
    devices = ",".join(f"cli-{i}" for i in range(4))
    code, out, _ = run(
        capsys, url, "create", "--bundle", sha, "--devices", devices, "--waves", "50%,100%",
        "--abort", "failure_share:0.5:2:abort", "--abort", "latency_ratio:1.5:2",
        "--trial", "min_seconds=1,max_error_rate=0.02", "--name", "first",
    )  # fmt: skip
    assert code == 0
    rid = rollout_id(out)
    assert "status   created" in out and "devices  4" in out
    assert "failure_share > 0.5 after 2 -> abort" in out
    assert "latency_ratio > 1.5 after 2 -> pause" in out

    code, out, _ = run(capsys, url, "start", rid, "--reason", "change 42 approved")
    assert code == 0 and "status   running" in out

    deadline = time.monotonic() + 20
    while "(wave 1 of 2)" not in (text := _last(capsys, url, rid)) or " 2 " not in text:
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith("wave"))
    assert header.split()[1:4] == ["queued", "notified", "download"]
    wave1 = next(line for line in lines if line.strip().startswith("1 "))
    assert wave1.split()[1:3] == ["0", "2"]  # wave 1: two devices notified, none queued
    assert "gates    failure share -" in text

    code, out, _ = run(capsys, url, "pause", rid, "--reason", "lunch")
    assert code == 0 and "paused by carol: lunch" in out
    code, out, _ = run(capsys, url, "resume", rid)
    assert code == 0 and "status   running" in out
    code, out, _ = run(capsys, url, "devices", rid, "--state", "notified")
    assert len(out.splitlines()) == 2 and all("wave 1" in line for line in out.splitlines())
    code, out, _ = run(capsys, url, "audit", rid)
    actions = [(line.split()[1], line.split()[2]) for line in out.splitlines()]
    assert actions[:2] == [("carol", "create"), ("carol", "start")]
    assert ("carol", "pause") in actions and ("carol", "resume") in actions
    assert "change 42 approved" in out
    code, out, _ = run(capsys, url, "list")
    assert rid in out and "running" in out


def _last(capsys: pytest.CaptureFixture[str], url: str, rid: str) -> str:
    """What ``edgefleet rollout status ID`` prints now."""
    return run(capsys, url, "status", rid)[1]


def test_exponential_rate_notifies_devices_over_time(
    controller: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, sha = controller
    devices = ",".join(f"rate-{i}" for i in range(6))
    started = time.monotonic()
    code, out, _ = run(
        capsys, url, "create", "--bundle", sha, "--devices", devices,
        "--rate", "60", "--rate-every", "100", "--start",
    )  # fmt: skip
    assert code == 0
    rid = rollout_id(out)

    def notified() -> int:
        counts = httpx.get(f"{url}/api/v1/rollouts/{rid}").json()["counts"]
        return int(counts["notified"])

    # 60 a minute: the first at once, then one a second; never all six in the first ~3 s.
    seen = []
    while time.monotonic() - started < 2.5:
        seen.append(notified())
        time.sleep(0.1)
    assert 1 <= max(seen) <= 4, seen
    deadline = time.monotonic() + 20
    while notified() < 6:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert time.monotonic() - started >= 4.5  # six at one a second took five seconds


def test_mistakes_get_an_answer_that_names_them(
    controller: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, sha = controller
    code, _, err = run(capsys, url, "pause", "nope")
    assert code == 2 and "no rollout 'nope'" in err
    code, _, err = run(capsys, url, "create", "--bundle", sha, "--devices", "x", "--waves", "5x")
    assert code == 2 and "'5x' is neither" in err
    code, _, err = run(capsys, "http://127.0.0.1:9", "list")
    assert code == 2 and "cannot reach the controller" in err
    with pytest.raises(EdgeFleetError, match="want KIND:THRESHOLD"):
        parse_abort("failure_share")
    assert parse_waves("1%, 10 ,100%") == [{"percent": 1.0}, {"count": 10}, {"percent": 100.0}]


def test_an_operator_aborts_one_rollout_and_rolls_another_back(
    controller: tuple[str, str],
    mqtt_broker: MosquittoBroker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, sha = controller
    began = datetime.now(timezone.utc)
    run_id = uuid.uuid4().hex[:6]
    # Devices that run an older bundle: what a roll back sends them back to.
    older = BundleRef("ab" * 32, "cli", "0.9")
    stopped = [f"stop-{run_id}-{i}" for i in range(4)]
    reverted = [f"back-{run_id}-{i}" for i in range(2)]
    for device in stopped + reverted:
        state = State(device, time.time(), "idle", "generic", active=older)
        publish(mqtt_broker, topic(device, "up", "state"), state.to_bytes(), retain=True)
    watcher = Watcher(mqtt_broker, topic(reverted[0], "down", "desired"))
    try:
        api = httpx.Client(base_url=f"{url}/api/v1")
        wait = time.monotonic() + 20
        while any(
            api.get(f"/devices/{d}").json().get("active_bundle") is None for d in stopped + reverted
        ):
            assert time.monotonic() < wait, "the controller never heard the devices"
            time.sleep(0.1)

        # Abort: the second wave is never told; the first keeps what it has.
        code, out, _ = run(capsys, url, "create", "--bundle", sha, "--devices",
                           ",".join(stopped), "--waves", "50%,100%", "--start")  # fmt: skip
        stop_id = rollout_id(out)
        _wait_counts(api, stop_id, notified=2)
        code, out, _ = run(capsys, url, "abort", stop_id, "--reason", "bad batch")
        assert code == 0 and "status   aborted (wave 1 of 2): aborted by carol: bad batch" in out
        counts = api.get(f"/rollouts/{stop_id}").json()["counts"]
        assert (counts["notified"], counts["canceled"], counts["queued"]) == (2, 2, 0)

        # Roll back: devices told about the bundle are sent back to the one they ran.
        code, out, _ = run(capsys, url, "create", "--bundle", sha, "--devices",
                           ",".join(reverted), "--start")  # fmt: skip
        back_id = rollout_id(out)
        _wait_counts(api, back_id, notified=2)
        code, out, _ = run(capsys, url, "rollback", back_id, "--reason", "revert it")
        assert code == 0 and "status   rolled_back" in out, out
        assert "rolled back by carol: revert it" in out

        def sent() -> list[Desired]:
            return [parse_desired(p) for _, p in watcher.messages]

        assert watcher.wait(lambda m: len(m) >= 2), sent()
        assert [(d.generation, d.bundle.version) for d in sent()] == [(1, "1"), (2, "0.9")]  # type: ignore[union-attr]
        assert sent()[-1].bundle == older
        rows = api.get(f"/rollouts/{back_id}/devices").json()
        assert {r["state"] for r in rows} == {"canceled"}
        assert {r["reason"]["code"] for r in rows} == {"rollout_rolled_back"}
        api.close()

        # Both are in the audit log under the operator's name, with the time they happened.
        ended = datetime.now(timezone.utc)
        for rid, action, why in (
            (stop_id, "abort", "bad batch"),
            (back_id, "rollback", "revert it"),
        ):
            code, out, _ = run(capsys, url, "audit", rid)
            mine = [line.split(maxsplit=3) for line in out.splitlines()]
            mine = [parts for parts in mine if parts[1] == "carol"]
            assert [parts[2] for parts in mine] == ["create", "start", action], out
            assert mine[-1][3] == why
            for parts in mine:
                at = datetime.fromisoformat(parts[0])
                at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
                assert began - timedelta(seconds=1) <= at <= ended + timedelta(seconds=1), parts
    finally:
        watcher.close()
        for device in stopped + reverted:
            publish(mqtt_broker, topic(device, "up", "state"), b"", retain=True)


def _wait_counts(api: httpx.Client, rid: str, **want: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        counts = api.get(f"/rollouts/{rid}").json()["counts"]
        if all(counts[state] == n for state, n in want.items()):
            return
        assert time.monotonic() < deadline, counts
        time.sleep(0.1)
