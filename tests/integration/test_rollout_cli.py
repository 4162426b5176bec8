"""``edgefleet rollout ...`` against a real controller: what an operator types and reads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.rollout_cli import parse_abort, parse_waves
from controller.server import ControllerServer
from controller.settings import Settings
from edgefleet.cli import main
from firmware_bundles.errors import EdgeFleetError
from simulators.mosquitto import MosquittoBroker
from tests.models import mlp

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
