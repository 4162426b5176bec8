"""A fleet of real agents in one process, each with its own MQTT connection and data dir.

The agents are the production :class:`agent.daemon.Agent`; the simulator only creates
them, opens their connections in batches (Mosquitto's listen backlog is 100), and feeds
them generated inputs so they serve inference and report real telemetry. Their MQTT
connections share one network thread (:class:`agent.mqtt_hub.MqttHub`) instead of a
thread each, so a fleet of thousands fits in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.mqtt_hub import MqttHub
from firmware_bundles.golden import generate_inputs
from firmware_bundles.manifest import TensorSpec
from simulators import faults
from simulators.faults import FaultProfile

log = logging.getLogger(__name__)
# Inputs for a device: (fleet index, the model's input specs, now) -> feeds.
DataSource = Callable[[int, Sequence[TensorSpec], float], Mapping[str, npt.NDArray[Any]]]


@dataclass
class FleetSpec:
    devices: int
    broker_url: str
    controller_url: str
    trust: tuple[Path, ...]
    data_dir: Path
    prefix: str = "sim"
    hardware_class: str = "generic"
    tags: tuple[str, ...] = ("sim",)
    telemetry_interval_s: float = 2.0
    drift_interval_s: float | None = None  # None: as telemetry_interval_s
    state_heartbeat_s: float = 60.0
    connect_batch: int = 50
    extra_tags: dict[int, tuple[str, ...]] = field(default_factory=dict)
    faults: dict[int, FaultProfile] = field(default_factory=dict)
    restart_delay_s: float = 0.2
    # Agents per shared MQTT network thread (0: a paho thread per agent, as on devices).
    agents_per_hub: int = 5000
    # Simulated devices share this machine's cores: at most this many download, verify
    # and load at once, so hundreds updating together do not starve the network thread
    # of the interpreter lock (0: no limit).
    concurrent_updates: int = 8

    def device_id(self, index: int) -> str:
        return f"{self.prefix}-{index:04d}"


class Fleet:
    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self._feeder: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.inferences = 0
        self.inference_errors = 0
        self.restarts = 0
        self._power_armed = {i: [True] for i in spec.faults}
        self._update_slots = (
            threading.BoundedSemaphore(spec.concurrent_updates)
            if spec.concurrent_updates > 0
            else None
        )
        self._hubs: list[MqttHub] = []
        if spec.agents_per_hub > 0:
            count = -(-spec.devices // spec.agents_per_hub)
            self._hubs = [MqttHub(name=f"fleet-mqtt-{i}").start() for i in range(count)]
        self.agents: list[Agent] = [self._make_agent(i) for i in range(spec.devices)]

    def _make_agent(self, index: int) -> Agent:
        spec = self.spec
        config = AgentConfig(
            device_id=spec.device_id(index),
            broker_url=spec.broker_url,
            controller_url=spec.controller_url,
            data_dir=spec.data_dir / spec.device_id(index),
            trust=spec.trust,
            hardware_class=spec.hardware_class,
            tags=spec.tags + spec.extra_tags.get(index, ()),
            telemetry_interval_s=spec.telemetry_interval_s,
            drift_interval_s=spec.drift_interval_s or spec.telemetry_interval_s,
            state_heartbeat_s=spec.state_heartbeat_s,
            outbox_fsync=False,  # thousands of simulated disks share one real one
        )
        hub = self._hubs[index // spec.agents_per_hub] if self._hubs else None
        profile = spec.faults.get(index)
        if profile is None:
            return Agent(config, mqtt_hub=hub, update_slots=self._update_slots)
        return Agent(
            config,
            mqtt_hub=hub,
            update_slots=self._update_slots,
            runner_factory=faults.runner_factory(profile),
            downloader=faults.downloader(profile),
            phase_hook=faults.phase_hook(
                profile, lambda: self._power_loss(index), self._power_armed[index]
            ),
        )

    # ------------------------------------------------------------------ faults

    def restart(self, index: int, *, graceful: bool = False) -> Agent:
        """Stop agent ``index`` (abruptly by default) and start a new process-equivalent
        on the same data dir, as a watchdog restarting a crashed daemon would."""
        old = self.agents[index]
        old.stop(graceful=graceful)
        time.sleep(self.spec.restart_delay_s)
        new = self._make_agent(index)
        with self._lock:
            self.agents[index] = new
            self.restarts += 1
        new.start()
        return new

    def set_fault(self, index: int, profile: FaultProfile | None) -> Agent:
        """Give device ``index`` a fault profile (None: healthy) from now on: the agent
        restarts gracefully with it, as a device would after a configuration change."""
        if profile is None:
            self.spec.faults.pop(index, None)
        else:
            self.spec.faults[index] = profile
            self._power_armed[index] = [True]
        return self.restart(index, graceful=True)

    def _power_loss(self, index: int) -> None:
        # Called on the agent's own worker thread, which is about to die: restart from
        # another thread once it has.
        threading.Thread(target=self.restart, args=(index,), daemon=True).start()

    def cut(self, index: int, seconds: float) -> None:
        """Network cut for one device: its MQTT connection drops for ``seconds``."""
        self.agents[index].link.cut(seconds)

    def partition(self, indices: Iterable[int], seconds: float) -> None:
        """A network partition: these devices all lose the broker for ``seconds``."""
        for index in indices:
            self.cut(index, seconds)

    def start(self) -> None:
        batch = self.spec.connect_batch
        for start in range(0, len(self.agents), batch):
            group = self.agents[start : start + batch]
            for agent in group:
                agent.start()
            deadline = time.monotonic() + 10
            for agent in group:
                agent.link.connected.wait(timeout=max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self.stop_feeding()
        for agent in self.agents:
            agent.stop()
        for hub in self._hubs:
            hub.stop()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def versions(self) -> dict[str, str | None]:
        """device id -> active bundle version (None: no model)."""
        return {
            a.config.device_id: (a.active_bundle.version if a.active_bundle else None)
            for a in self.agents
        }

    def count_on(self, version: str) -> int:
        return sum(1 for v in self.versions().values() if v == version)

    def wait_for(self, version: str, count: int | None = None, timeout: float = 60.0) -> bool:
        want = len(self.agents) if count is None else count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_on(version) >= want:
                return True
            time.sleep(0.1)
        return False

    # ------------------------------------------------------------------ traffic

    def feed(
        self,
        rate_per_device: float,
        *,
        devices: Iterable[int] | None = None,
        data: DataSource | None = None,
    ) -> None:
        """Call the inference API of each device (by index) ``rate_per_device`` times a
        second, with inputs from ``data`` (``data(index, input specs, now)``, see
        :mod:`simulators.data`) or, without it, eight fixed generated inputs in turn."""
        chosen = list(devices) if devices is not None else list(range(len(self.agents)))
        self._stop.clear()
        self._feeder = threading.Thread(
            target=self._feed_loop,
            args=(chosen, rate_per_device, data),
            daemon=True,
            name="fleet-feeder",
        )
        self._feeder.start()

    def stop_feeding(self) -> None:
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout=10)
            self._feeder = None

    def _feed_loop(self, devices: list[int], rate: float, data: DataSource | None) -> None:
        period = 1.0 / rate if rate > 0 else 1.0
        cache: dict[str, list[dict[str, npt.NDArray[Any]]]] = {}
        tick = 0
        while not self._stop.is_set():
            started = time.monotonic()
            for index in devices:
                agent = self.agents[index]  # re-read: a restart replaces the agent
                model = agent.inference.active
                if model is None:
                    continue
                key = model.ref.manifest_sha256
                if data is not None:
                    feeds = data(index, model.runner.inputs, time.time())
                else:
                    if key not in cache:
                        cache[key] = [
                            generate_inputs(model.runner.inputs, seed=s) for s in range(8)
                        ]
                    feeds = cache[key][tick % 8]
                try:
                    agent.infer(feeds)
                    self.inferences += 1
                except faults.SimulatedCrash:
                    self.inference_errors += 1
                    self.restart(index)
                except Exception as exc:  # noqa: BLE001 - a failing model must not stop the feeder
                    self.inference_errors += 1
                    log.debug("%s: inference failed: %s", agent.config.device_id, exc)
            tick += 1
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))
