"""``edgefleet simulate``: run N real agents in this process until interrupted."""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser("simulate", help="run N simulated devices (real agents)")
    sim.add_argument("--devices", type=int, required=True)
    sim.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    sim.add_argument("--controller", required=True, help="http://HOST:PORT")
    sim.add_argument(
        "--trust", type=Path, action="append", required=True, help="release public key"
    )
    sim.add_argument(
        "--data-dir", type=Path, help="parent of the devices' data dirs (default: temp)"
    )
    sim.add_argument("--prefix", default="sim", help="device ids are PREFIX-0000, PREFIX-0001, ...")
    sim.add_argument("--hardware-class", default="generic")
    sim.add_argument(
        "--tag", action="append", dest="tags", help="tag for every device (repeatable)"
    )
    sim.add_argument("--rate", type=float, default=5.0, help="inferences per second per device")
    sim.add_argument("--duration", type=float, help="stop after this many seconds")
    sim.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from simulators.fleet import Fleet, FleetSpec

    if args.devices < 1:
        raise SystemExit("edgefleet simulate: --devices must be at least 1")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="edgefleet-sim-"))
    spec = FleetSpec(
        devices=args.devices,
        broker_url=args.broker,
        controller_url=args.controller,
        trust=tuple(args.trust),
        data_dir=data_dir,
        prefix=args.prefix,
        hardware_class=args.hardware_class,
        tags=tuple(args.tags or ("sim",)),
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with Fleet(spec) as fleet:
        fleet.feed(args.rate)
        print(f"{args.devices} devices running (data in {data_dir}); Ctrl-C to stop")
        started = time.monotonic()
        while not done.wait(5.0):
            versions = fleet.versions()
            summary: dict[str, int] = {}
            for v in versions.values():
                summary[str(v)] = summary.get(str(v), 0) + 1
            print(f"versions {summary}  inferences {fleet.inferences}")
            if args.duration and time.monotonic() - started >= args.duration:
                break
    return 0
