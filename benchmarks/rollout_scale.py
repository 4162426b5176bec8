"""A rollout to a large simulated fleet: wall time, controller CPU, broker messages.

One private Mosquitto, one controller in a process of its own (so its CPU time can be
read from /proc), N real agents in this process, no traffic but telemetry windows.
Three updates of the same fleet, measured in one run:

  bare     desired states published straight to every device by a raw MQTT client:
           the floor (downloads, installs, health checks, no controller decisions)
  1 wave   a rollout to every device at once, through the controller
  waves    a rollout in waves of 1% / 10% / 50% / 100% with zero soak

For each: seconds from start to every device committed (and the ratio to bare), the
controller's CPU seconds above its idle rate (it ingests telemetry all along) per
device updated and per device report, and broker messages per device by kind.

Usage: python benchmarks/rollout_scale.py [--devices 1000] [--telemetry-interval 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.stack import ControllerProcess, Stack, StackSpec  # noqa: E402
from firmware_bundles.wire import BundleRef, Desired, topic  # noqa: E402
from simulators.mosquitto import MosquittoBroker  # noqa: E402

TRIAL = {"min_seconds": 0, "min_inferences": 0, "max_seconds": 120}


class MessageCounter:
    """Counts every device message the broker routes, by kind (an observer client)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{uuid.uuid4()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe("edgefleet/v1/dev/#", qos=0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return  # a replay of something counted when it was sent
        with self._lock:
            self.counts[msg.topic.rsplit("/", 1)[-1]] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def publish_bare(broker: MosquittoBroker, stack: Stack, sha: str, version: str) -> None:
    """What the controller would send, sent by a raw client: every device at once."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{uuid.uuid4()}")
    client.max_inflight_messages_set(100)
    client.connect(broker.host, broker.port)
    client.loop_start()
    base = f"{stack.servers[0].url}/api/v1/blobs"
    infos = []
    for index in range(stack.spec.devices):
        desired = Desired(10_000, BundleRef(sha, "mlp", version), "bare", base, TRIAL)
        device = stack.fleet.spec.device_id(index)
        infos.append(client.publish(topic(device, "down", "desired"), desired.to_bytes(), qos=1))
    for info in infos:
        info.wait_for_publish(timeout=60)
    client.disconnect()
    client.loop_stop()


class RolloutPhase:
    def __init__(self, stack: Stack, sha: str, waves: list[int]) -> None:
        self.stack, self.sha, self.waves = stack, sha, waves
        self.rollout_id = ""

    def start(self) -> None:
        self.rollout_id = self.stack.roll_out(
            self.sha,
            start=True,
            trial=TRIAL,
            waves={"steps": [{"percent": p} for p in self.waves]},
        )

    def done(self) -> bool:
        return self.stack.rollout(self.rollout_id)["status"] == "completed"


def measure(
    name: str,
    stack: Stack,
    counter: MessageCounter,
    pid: int,
    idle_cpu_per_s: float,
    start: Any,
    done: Any,
    timeout: float,
) -> dict[str, Any]:
    messages, cpu, t0 = counter.snapshot(), cpu_seconds(pid), time.monotonic()
    start()
    deadline = t0 + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: not finished within {timeout}s: {stack.fleet.versions()}")
        time.sleep(0.2)
    wall = time.monotonic() - t0
    time.sleep(1.0)  # the last reports reach the broker and the controller
    sent = counter.snapshot() - messages
    used = cpu_seconds(pid) - cpu - idle_cpu_per_s * (wall + 1.0)
    return {"name": name, "wall": wall, "cpu": used, "messages": sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--telemetry-interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="per phase")
    args = parser.parse_args()
    n = args.devices
    work = Path(tempfile.mkdtemp(prefix="edgefleet-rollout-scale-"))
    env = {"EDGEFLEET_ROLLOUT_TICK_S": "0.5", "EDGEFLEET_INGEST_BATCH_WAIT_S": "0.05"}
    with MosquittoBroker() as broker:
        spec = StackSpec(
            devices=n,
            broker_url=broker.url,
            work=work,
            controller_env=env,
            processes=True,
            telemetry_interval_s=args.telemetry_interval,
        )
        started = time.monotonic()
        with Stack(spec) as stack:
            server = stack.servers[0]
            assert isinstance(server, ControllerProcess)
            pid = server.pid
            print(
                f"{n} agents connected and known to the controller in "
                f"{time.monotonic() - started:.1f}s",
                flush=True,
            )
            counter = MessageCounter(broker)
            shas = [stack.publish_model(f"{v}.0.0", seed=v) for v in (1, 2, 3)]
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(10)
            idle = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            print(f"controller idle (telemetry ingest only): {idle:.3f} CPU s/s", flush=True)

            results = [
                measure(
                    "bare", stack, counter, pid, idle,
                    lambda: publish_bare(broker, stack, shas[0], "1.0.0"),
                    lambda: stack.fleet.count_on("1.0.0") == n,
                    args.timeout,
                ),
            ]  # fmt: skip
            for name, sha, waves in (
                ("1 wave", shas[1], [100]),
                ("waves 1/10/50/100", shas[2], [1, 10, 50, 100]),
            ):
                phase = RolloutPhase(stack, sha, waves)
                results.append(
                    measure(name, stack, counter, pid, idle, phase.start, phase.done, args.timeout)
                )
                detail = stack.rollout(phase.rollout_id)
                assert detail["counts"]["committed"] == n, detail["counts"]
            counter.close()

    print()
    print(
        f"{n} devices, telemetry every {args.telemetry_interval:g}s, controller tick 0.5s; "
        "CPU is the controller's above its idle rate"
    )
    print(
        f"{'update':20} {'wall s':>7} {'/bare':>6} {'ctl CPU s':>9} {'ms/device':>9} "
        f"{'ms/report':>9}   broker messages per device"
    )
    bare = results[0]["wall"]
    for r in results:
        m: Counter[str] = r["messages"]
        reports = m["state"] + m["events"]
        per_device = "  ".join(f"{k} {m[k] / n:.2f}" for k in sorted(m) if m[k])
        print(
            f"{r['name']:20} {r['wall']:7.1f} {r['wall'] / bare:6.2f} {r['cpu']:9.2f} "
            f"{1000 * r['cpu'] / n:9.2f} {1000 * r['cpu'] / max(reports, 1):9.3f}   "
            f"{per_device}  (total {sum(m.values()) / n:.1f})"
        )


if __name__ == "__main__":
    main()
