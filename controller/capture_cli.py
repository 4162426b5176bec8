"""``edgefleet capture ...``: ask devices for samples of their traffic, follow, export.

::

    edgefleet capture create --tag cams --rate 0.05 --max-samples 500 --duration 6h
    edgefleet capture create --rollout ID [--wave 1] --rate 1 --max-samples 50 --duration 1h
    edgefleet capture status ID
    edgefleet capture export ID -o data.npz

The controller is ``--controller URL`` or ``EDGEFLEET_CONTROLLER_URL``; actions are
audited under ``--actor`` (default: the login name).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path
from typing import Any

from firmware_bundles.errors import EdgeFleetError

DEFAULT_CONTROLLER = "http://127.0.0.1:8080"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SHOWN = ("requested", "capturing", "uploading", "uploaded", "empty", "canceled", "failed")


def register(subparsers: Any) -> None:
    capture = subparsers.add_parser("capture", help="capture samples of devices' traffic")
    capture.add_argument(
        "--controller",
        default=os.environ.get("EDGEFLEET_CONTROLLER_URL", DEFAULT_CONTROLLER),
        help="controller base URL (default: $EDGEFLEET_CONTROLLER_URL or %(default)s)",
    )
    capture.add_argument("--actor", default=None, help="your name in the audit log")
    sub = capture.add_subparsers(dest="capture_command", metavar="COMMAND")
    sub.required = True

    create = sub.add_parser("create", help="ask devices to sample inputs and outputs")
    create.add_argument("--devices", help="comma-separated device ids")
    create.add_argument("--tag")
    create.add_argument("--hardware-class")
    create.add_argument("--rollout", help="the devices of this rollout")
    create.add_argument("--wave", type=int, help="only this wave of --rollout (1-based)")
    create.add_argument("--bundle", help="only while serving this bundle (id or sha256)")
    create.add_argument("--rate", type=float, required=True, help="share of inferences (0..1]")
    create.add_argument("--max-samples", type=int, required=True, help="rows per device")
    create.add_argument("--duration", required=True, help="e.g. 900, 15m, 6h, 2d")
    create.add_argument("--name", default="")
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="captures, newest first")
    listing.add_argument("--status")
    listing.add_argument("--rollout")
    listing.set_defaults(func=_list)

    status = sub.add_parser("status", help="each device's progress")
    status.add_argument("capture_id")
    status.add_argument("--json", action="store_true", help="the raw API answer")
    status.set_defaults(func=_status)

    cancel = sub.add_parser("cancel", help="stop it; devices discard their samples")
    cancel.add_argument("capture_id")
    cancel.add_argument("--reason", default="", help="why, for the audit log")
    cancel.set_defaults(func=_cancel)

    export = sub.add_parser("export", help="every upload as one .npz")
    export.add_argument("capture_id")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument("--bundle", help="only rows of this bundle (sha256)")
    export.set_defaults(func=_export)


def parse_duration(text: str) -> float:
    """``900``, ``15m``, ``6h``, ``2d`` -> seconds."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        seconds = float(number) * _UNITS.get(unit, 1.0)
    except ValueError:
        raise EdgeFleetError(f"--duration {text!r}: want seconds, or N with s, m, h or d") from None
    if seconds <= 0:
        raise EdgeFleetError(f"--duration {text!r} must be more than nothing")
    return seconds


def _headers(args: argparse.Namespace) -> dict[str, str]:
    actor = args.actor or os.environ.get("EDGEFLEET_ACTOR")
    if not actor:
        try:
            actor = getpass.getuser()
        except (KeyError, OSError):
            actor = "cli"
    return {"X-EdgeFleet-Actor": actor}


def _url(args: argparse.Namespace, path: str) -> str:
    return f"{args.controller.rstrip('/')}/api/v1{path}"


def _refusal(method: str, path: str, status: int, body: bytes) -> EdgeFleetError:
    try:
        detail = json.loads(body).get("detail", body.decode(errors="replace"))
    except ValueError:
        detail = body.decode(errors="replace")
    return EdgeFleetError(f"{method} {path}: {status}: {detail}")


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        response = httpx.request(
            method, _url(args, path), headers=_headers(args), timeout=60, **kwargs
        )
    except httpx.HTTPError as exc:
        raise EdgeFleetError(f"cannot reach the controller at {args.controller}: {exc}") from exc
    if response.status_code >= 400:
        raise _refusal(method, path, response.status_code, response.content)
    return response.json()


def _create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "rate": args.rate,
        "max_samples": args.max_samples,
        "duration_s": parse_duration(args.duration),
    }
    if args.devices:
        body["devices"] = [d.strip() for d in args.devices.split(",") if d.strip()]
    for key in ("tag", "hardware_class", "rollout", "wave", "bundle"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    print(format_status(_call(args, "POST", "/captures", json=body)))
    return 0


def _list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("status", args.status), ("rollout", args.rollout)) if v}
    rows = _call(args, "GET", "/captures", params=params)
    print(f"{'id':32}  {'status':9}  {'uploaded':>8}/{'total':<6} {'samples':>8}  created")
    for r in rows:
        print(
            f"{r['id']:32}  {r['status']:9}  {r['counts'].get('uploaded', 0):>8}/"
            f"{r['total']:<6} {r['samples_uploaded']:>8}  {r['created']}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    detail = _call(args, "GET", f"/captures/{args.capture_id}")
    print(json.dumps(detail, indent=2) if args.json else format_status(detail))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    path = f"/captures/{args.capture_id}/cancel"
    print(format_status(_call(args, "POST", path, json={"reason": args.reason})))
    return 0


def _export(args: argparse.Namespace) -> int:
    import httpx
    import numpy as np

    path = f"/captures/{args.capture_id}/export"
    params = {"bundle": args.bundle} if args.bundle else {}
    out: Path = args.output
    partial = out.with_name(f".{out.name}.part")
    try:
        with httpx.stream("GET", _url(args, path), params=params, headers=_headers(args),
                          timeout=300) as response:  # fmt: skip
            if response.status_code >= 400:
                raise _refusal("GET", path, response.status_code, response.read())
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise EdgeFleetError(f"cannot reach the controller at {args.controller}: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    with np.load(out, allow_pickle=False) as data:
        devices = data["device_id"]
        versions = sorted(set(data["model_version"].tolist()))
        arrays = [k for k in data.files if k.startswith(("input/", "output/"))]
        print(
            f"wrote {len(devices)} rows from {len(set(devices.tolist()))} devices "
            f"(model versions {', '.join(versions)}) to {out}: {', '.join(sorted(arrays))}"
        )
    return 0


def format_status(detail: dict[str, Any]) -> str:
    """A capture as an operator reads it: what was asked, then each device."""
    bundle = detail["bundle"]
    asked = (
        f"{bundle['name']}@{bundle['version']} ({bundle['manifest_sha256'][:12]})"
        if bundle
        else "any"
    )
    counts = detail["counts"]
    lines = [
        f"capture {detail['id']} {detail['name']}".rstrip(),
        f"  status   {detail['status']} (expires {detail['expires_at']})",
        f"  bundle   {asked}",
        f"  asked    rate {detail['rate']:g}, up to {detail['max_samples']} samples per device",
        f"  devices  {detail['total']}: "
        + ", ".join(f"{s} {counts.get(s, 0)}" for s in _SHOWN if counts.get(s, 0)),
        f"  samples  {detail['samples_uploaded']} uploaded",
    ]
    devices = detail.get("devices")
    if devices:
        lines += ["", f"  {'device':40} {'status':10} {'samples':>7}  notified  model"]
        for row in devices:
            upload = row["upload"]
            model = f"{upload['model_name']}@{upload['model_version']}" if upload else ""
            note = f"  {row['message']}" if row["message"] else ""
            lines.append(
                f"  {row['device_id']:40} {row['status']:10} {row['samples']:>7}  "
                f"{'yes' if row['notified'] else 'no':8}  {model}{note}"
            )
    return "\n".join(lines)
