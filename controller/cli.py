"""``edgefleet controller serve``: the controller under uvicorn, configured from EDGEFLEET_*."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    controller = subparsers.add_parser("controller", help="run the fleet controller")
    sub = controller.add_subparsers(dest="controller_command", metavar="COMMAND")
    sub.required = True
    serve = sub.add_parser(
        "serve",
        help="serve the REST API and ingest device reports",
        description="Settings come from EDGEFLEET_* variables (see controller/settings.py).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from controller.app import create_app
    from controller.settings import Settings

    settings = Settings.from_env(os.environ)
    if settings.public_url is None:
        wildcard = args.host in ("0.0.0.0", "::", "")
        host = "127.0.0.1" if wildcard else args.host
        settings = replace(settings, public_url=f"http://{host}:{args.port}")
        if wildcard:
            log.warning(
                "listening on all interfaces but EDGEFLEET_PUBLIC_URL is unset: devices "
                "will be told to fetch blobs from %s",
                settings.public_url,
            )
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
