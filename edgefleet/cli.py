"""``edgefleet`` command: dispatches to each package's ``cli.register``.

Package CLIs are imported lazily by name, so ``edgefleet agent run`` on a device never
imports the controller's FastAPI stack, and a missing optional dependency only breaks
the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from firmware_bundles.errors import EdgeFleetError

# Top-level command -> module whose ``register(subparsers)`` adds it.
COMMANDS = {
    "keys": "firmware_bundles.cli",
    "bundle": "firmware_bundles.cli",
    "compress": "compress.cli",
    "controller": "controller.cli",
    "rollout": "controller.rollout_cli",
    "drift": "controller.monitoring_cli",
    "telemetry": "controller.monitoring_cli",
    "capture": "controller.capture_cli",
    "agent": "agent.cli",
    "simulate": "simulators.cli",
    "demo": "edgefleet.demo",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description="Edge/fleet MLOps controller.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    modules = [COMMANDS[only]] if only in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Import only the module that owns the command given (fast start, fewer imports).
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(first)
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except EdgeFleetError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
