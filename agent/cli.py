"""``edgefleet agent run``: the device daemon."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="run the device agent")
    sub = agent.add_subparsers(dest="agent_command", metavar="ACTION")
    sub.required = True
    run = sub.add_parser("run", help="follow desired state, serve inference, report telemetry")
    run.add_argument("--config", type=Path, help="TOML file with agent settings")
    run.add_argument("--device-id")
    run.add_argument("--broker", dest="broker_url", help="mqtt://HOST:PORT")
    run.add_argument("--controller", dest="controller_url", help="http://HOST:PORT")
    run.add_argument("--data-dir", type=Path)
    run.add_argument(
        "--trust", type=Path, action="append", help="trusted release public key (repeatable)"
    )
    run.add_argument("--hardware-class")
    run.add_argument("--tag", dest="tags", action="append", help="device tag (repeatable)")
    run.add_argument("--http-port", type=int, help="serve POST /v1/infer on 127.0.0.1:PORT")
    run.add_argument("--telemetry-interval", dest="telemetry_interval_s", type=float)
    run.add_argument("--drift-interval", dest="drift_interval_s", type=float)
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.daemon import Agent
    from agent.http_api import InferenceHTTPServer

    keys = (
        "device_id",
        "broker_url",
        "controller_url",
        "data_dir",
        "trust",
        "hardware_class",
        "tags",
        "http_port",
        "telemetry_interval_s",
        "drift_interval_s",
    )
    config = load_config(args.config, {k: getattr(args, k) for k in keys})
    agent = Agent(config)
    agent.start()
    server = None
    if config.http_port is not None:
        server = InferenceHTTPServer(
            agent.inference, config.http_host, config.http_port, config.max_request_bytes
        )
        server.start()
        log.info("inference endpoint at %s/v1/infer", server.url)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    if server is not None:
        server.stop()
    agent.stop()
    return 0
