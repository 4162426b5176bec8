"""A whole EdgeFleet on one machine: controller replicas, a simulated fleet, a REST client.

For scenario tests and benchmarks::

    with Stack(StackSpec(devices=200, broker_url=broker.url, work=tmp)) as stack:
        v1 = stack.publish_model("1.0.0", seed=1)
        stack.wait_rollout(stack.roll_out(v1, tag="fleet", start=True), "completed")

Every part is the real one: controllers under uvicorn (one or more replicas on one
database, sharing a blob directory as they would share object storage), real agents
with their own MQTT connections and data dirs, and the operator's REST API. The
broker is the caller's (a test fixture or a private Mosquitto).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from controller.server import ControllerServer
from controller.settings import Settings
from firmware_bundles.errors import EdgeFleetError
from simulators.faults import FaultProfile
from simulators.fleet import Fleet, FleetSpec
from simulators.models import mlp
from simulators.mosquitto import free_port


@dataclass
class StackSpec:
    devices: int
    broker_url: str
    work: Path
    database_url: str = ""  # "" -> SQLite in the work dir
    replicas: int = 1
    # Extra EDGEFLEET_* settings for every replica (fast ticks in tests, say).
    controller_env: dict[str, str] = field(default_factory=dict)
    telemetry_interval_s: float = 0.5
    state_heartbeat_s: float = 60.0
    faults: dict[int, FaultProfile] = field(default_factory=dict)
    prefix: str = "sim"
    tags: tuple[str, ...] = ("fleet",)
    # Run controllers as `edgefleet controller serve` processes (as they are deployed;
    # they can be SIGKILLed). In-process, a controller shares the fleet's interpreter
    # lock and starves the fleet's network thread: measured with 200 devices, scenario 1
    # took 53 s in-process against 16 s as a process, and with two replicas on
    # PostgreSQL 113 s (or never finished, the agents' unacknowledged outboxes growing
    # past 13,000 messages) against 23 s.
    processes: bool = True


class ControllerProcess:
    """``edgefleet controller serve`` in a process of its own, on a fixed port."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.env = env
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def release_public_key_path(self) -> Path:
        return Path(self.env["EDGEFLEET_DATA_DIR"]) / "keys" / "release.pub"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EdgeFleetError("the controller process is not started")
        return self._proc.pid

    def start(self, timeout: float = 60.0) -> ControllerProcess:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet", "controller", "serve",
                 "--port", str(self.port), "--log-level", "warning"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EdgeFleetError(f"the controller exited; its log: {self.log_path}")
            try:
                health = httpx.get(f"{self.api_url}/health", timeout=2).json()
                if health.get("broker_connected"):
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        self.kill()
        raise EdgeFleetError(f"the controller did not come up; its log: {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye, whatever was in flight is lost."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Stack:
    def __init__(self, spec: StackSpec) -> None:
        self.spec = spec
        self.servers: list[ControllerServer | ControllerProcess] = []
        self.apis: list[httpx.Client] = []
        self._fleet: Fleet | None = None
        self._model_registered = False

    # ------------------------------------------------------------------ lifecycle

    def controller_env(self, replica: int) -> dict[str, str]:
        spec = self.spec
        return {
            **os.environ,
            "EDGEFLEET_ENV": "development",
            # One data dir for all replicas: a shared release key and blob store.
            "EDGEFLEET_DATA_DIR": str(spec.work / "controller"),
            "EDGEFLEET_BROKER_URL": spec.broker_url,
            "EDGEFLEET_REPLICA_ID": f"replica-{replica}",
            **({"EDGEFLEET_DATABASE_URL": spec.database_url} if spec.database_url else {}),
            **spec.controller_env,
        }

    def start_replica(
        self, replica: int, port: int | None = None
    ) -> ControllerServer | ControllerProcess:
        """Start controller replica ``replica`` (a new one, or one killed before, on
        ``port``) and add it to :attr:`servers` and :attr:`apis`."""
        env = self.controller_env(replica)
        server: ControllerServer | ControllerProcess
        if self.spec.processes:
            port = port or free_port()
            env["EDGEFLEET_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
            log = self.spec.work / f"controller-{replica}.log"
            server = ControllerProcess(env, port, log).start()
        else:
            server = ControllerServer(Settings.from_env(env), port=port or 0).start()
            if not server.wait_broker_connected(20):
                server.stop()
                raise EdgeFleetError(f"controller replica {replica} did not reach the broker")
        self.servers.append(server)
        self.apis.append(httpx.Client(base_url=server.api_url, timeout=60))
        return server

    def kill_replica(self, index: int) -> int:
        """SIGKILL the process replica at ``index`` (process stacks only); its port."""
        server = self.servers[index]
        if not isinstance(server, ControllerProcess):
            raise EdgeFleetError("only a process replica can be killed")
        server.kill()
        self.apis.pop(index).close()
        self.servers.pop(index)
        return server.port

    def stop_replica(self, index: int) -> None:
        """Shut the replica at ``index`` down cleanly (a rolling restart, a scale-in)."""
        self.apis.pop(index).close()
        self.servers.pop(index).stop()

    def start(self) -> Stack:
        for replica in range(self.spec.replicas):
            self.start_replica(replica)
        first = self.servers[0]
        self._fleet = Fleet(
            FleetSpec(
                devices=self.spec.devices,
                broker_url=self.spec.broker_url,
                controller_url=first.url,
                trust=(first.release_public_key_path,),
                data_dir=self.spec.work / "devices",
                prefix=self.spec.prefix,
                tags=self.spec.tags,
                telemetry_interval_s=self.spec.telemetry_interval_s,
                state_heartbeat_s=self.spec.state_heartbeat_s,
                faults=self.spec.faults,
            )
        )
        self._fleet.start()
        self.wait(lambda: self.known_devices() >= self.spec.devices, 60, "devices known")
        return self

    def stop(self) -> None:
        if self._fleet is not None:
            self._fleet.stop()
        for api in self.apis:
            api.close()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()  # no controller process may outlive a failed start
            raise

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def fleet(self) -> Fleet:
        assert self._fleet is not None, "the stack is not started"
        return self._fleet

    @property
    def api(self) -> httpx.Client:
        return self.apis[0]

    # ------------------------------------------------------------------ REST

    @staticmethod
    def ok(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise EdgeFleetError(
                f"{response.request.method} {response.request.url}: "
                f"{response.status_code} {response.text}"
            )
        return response.json()

    def known_devices(self) -> int:
        tag = self.spec.tags[0]
        return len(self.ok(self.api.get("/devices", params={"tag": tag, "limit": 1000})))

    def publish_model(
        self,
        version: str,
        *,
        seed: int,
        hidden: int = 32,
        reference: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> str:
        """Register a generated model version, build and sign its bundle; its sha256.

        With ``reference`` (model inputs) the bundle carries drift bins computed from it.
        """
        if not self._model_registered:
            self.ok(self.api.post("/models", json={"name": "mlp"}))
            self._model_registered = True
        with tempfile.TemporaryDirectory() as tmp:
            model = mlp(Path(tmp) / "mlp.onnx", seed=seed, hidden=hidden)
            with model.open("rb") as handle:
                self.ok(
                    self.api.post(
                        "/models/mlp/versions",
                        data={"version": version},
                        files={"file": ("mlp.onnx", handle)},
                    )
                )
        if reference is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **reference)  # type: ignore[arg-type]
            self.ok(
                self.api.put(
                    f"/models/mlp/versions/{version}/drift-reference",
                    files={"file": ("reference.npz", buffer.getvalue())},
                )
            )
        bundle = self.ok(
            self.api.post(
                "/bundles", json={"model": "mlp", "version": version, "bundle_version": version}
            )
        )
        return str(bundle["manifest_sha256"])

    def roll_out(self, bundle: str, **body: Any) -> str:
        if not any(k in body for k in ("devices", "tag", "hardware_class")):
            body["tag"] = self.spec.tags[0]
        return str(self.ok(self.api.post("/rollouts", json={"bundle": bundle, **body}))["id"])

    def rollout(self, rollout_id: str, replica: int = 0) -> dict[str, Any]:
        detail: dict[str, Any] = self.ok(self.apis[replica].get(f"/rollouts/{rollout_id}"))
        return detail

    def executions(self, rollout_id: str) -> dict[str, dict[str, Any]]:
        rows = self.ok(self.api.get(f"/rollouts/{rollout_id}/devices", params={"limit": 1000}))
        return {r["device_id"]: r for r in rows}

    def act(self, rollout_id: str, action: str, actor: str = "operator") -> dict[str, Any]:
        detail: dict[str, Any] = self.ok(
            self.api.post(
                f"/rollouts/{rollout_id}/{action}",
                json={"reason": f"{action} from a scenario"},
                headers={"X-EdgeFleet-Actor": actor},
            )
        )
        return detail

    def audit(self, rollout_id: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.ok(self.api.get(f"/rollouts/{rollout_id}/audit"))
        return entries

    def wait_rollout(
        self, rollout_id: str, *statuses: str, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Poll until the rollout reaches one of ``statuses``; its detail then."""
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.rollout(rollout_id))
            return found["status"] in statuses

        try:
            self.wait(reached, timeout, f"rollout {rollout_id} to be {' or '.join(statuses)}")
        except EdgeFleetError as exc:
            # Say where it stood: a bare time-out cannot be diagnosed from a CI log.
            seen = {k: found.get(k) for k in ("status", "current_wave", "counts", "reason")}
            raise EdgeFleetError(f"{exc}; last seen {seen}") from None
        return found

    @staticmethod
    def wait(check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise EdgeFleetError(f"timed out after {timeout}s waiting for {what}")
