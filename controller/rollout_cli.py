"""``edgefleet rollout ...``: an operator's view of rollouts, over the controller's REST API.

::

    edgefleet rollout create --bundle SHA --tag cams --waves 1%,10%,50%,100% --soak 600 \\
        --success-threshold 0.95 --abort failure_share:0.1:5 --abort latency_ratio:1.5:3 --start
    edgefleet rollout status ID
    edgefleet rollout pause|resume|abort|rollback ID [--reason TEXT]

The controller is ``--controller URL`` or ``EDGEFLEET_CONTROLLER_URL``; actions are
audited under ``--actor`` (default: the login name).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from typing import Any

from firmware_bundles.errors import EdgeFleetError

DEFAULT_CONTROLLER = "http://127.0.0.1:8080"
ACTIONS = ("start", "pause", "resume", "abort", "rollback")


def register(subparsers: Any) -> None:
    rollout = subparsers.add_parser("rollout", help="create and steer staged rollouts")
    rollout.add_argument(
        "--controller",
        default=os.environ.get("EDGEFLEET_CONTROLLER_URL", DEFAULT_CONTROLLER),
        help="controller base URL (default: $EDGEFLEET_CONTROLLER_URL or %(default)s)",
    )
    rollout.add_argument("--actor", default=None, help="your name in the audit log")
    sub = rollout.add_subparsers(dest="rollout_command", metavar="COMMAND")
    sub.required = True

    create = sub.add_parser("create", help="queue a bundle for devices, in waves or at a rate")
    create.add_argument("--bundle", required=True, help="bundle id or manifest sha256")
    create.add_argument("--name", default="")
    create.add_argument("--devices", help="comma-separated device ids")
    create.add_argument("--tag")
    create.add_argument("--hardware-class")
    create.add_argument(
        "--waves", help="cumulative steps: 5%%,25%%,100%% (share) or 10,50 (device counts)"
    )
    create.add_argument("--min-devices", type=int, default=1, help="smallest wave")
    create.add_argument("--soak", type=float, default=0.0, help="seconds between waves")
    create.add_argument(
        "--success-threshold", type=float, default=1.0, help="share of a wave committed (0..1)"
    )
    create.add_argument("--rate", type=float, help="exponential rate: devices per minute at first")
    create.add_argument("--rate-factor", type=float, default=2.0)
    create.add_argument("--rate-every", type=int, default=10, help="devices between increases")
    create.add_argument("--rate-on", choices=("notified", "succeeded"), default="notified")
    create.add_argument(
        "--abort",
        action="append",
        default=[],
        metavar="KIND:THRESHOLD[:MIN[:pause|abort]]",
        help="gate, repeatable: failure_share, error_rate, latency_ratio, "
        "input_drift, prediction_drift",
    )
    create.add_argument("--timeout", type=float, default=600.0, help="in-progress time-out, s")
    create.add_argument("--max-retries", type=int, default=2)
    create.add_argument("--retry-backoff", type=float, default=5.0)
    create.add_argument(
        "--trial", help="trial policy, e.g. min_inferences=50,min_seconds=60,max_error_rate=0.02"
    )
    create.add_argument("--start", action="store_true", help="start at once")
    create.set_defaults(func=_create)

    listing = sub.add_parser("list", help="rollouts, newest first")
    listing.add_argument("--status")
    listing.set_defaults(func=_list)

    status = sub.add_parser("status", help="waves, counts per state, gate values")
    status.add_argument("rollout_id")
    status.add_argument("--json", action="store_true", help="the raw API answer")
    status.set_defaults(func=_status)

    devices = sub.add_parser("devices", help="each device's execution")
    devices.add_argument("rollout_id")
    devices.add_argument("--state")
    devices.add_argument("--wave", type=int)
    devices.set_defaults(func=_devices)

    audit = sub.add_parser("audit", help="who did what to the rollout, when")
    audit.add_argument("rollout_id")
    audit.set_defaults(func=_audit)

    for action in ACTIONS:
        cmd = sub.add_parser(action, help=f"{action} a rollout")
        cmd.add_argument("rollout_id")
        cmd.add_argument("--reason", default="", help="why, for the audit log")
        cmd.set_defaults(func=_action, action=action)


# ---------------------------------------------------------------- requests


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    actor = args.actor or os.environ.get("EDGEFLEET_ACTOR") or _login()
    url = f"{args.controller.rstrip('/')}/api/v1{path}"
    try:
        response = httpx.request(
            method, url, headers={"X-EdgeFleet-Actor": actor}, timeout=60, **kwargs
        )
    except httpx.HTTPError as exc:
        raise EdgeFleetError(f"cannot reach the controller at {args.controller}: {exc}") from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise EdgeFleetError(f"{method} {path}: {response.status_code}: {detail}")
    return response.json()


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def parse_waves(text: str) -> list[dict[str, float | int]]:
    steps: list[dict[str, float | int]] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        try:
            if token.endswith("%"):
                steps.append({"percent": float(token[:-1])})
            else:
                steps.append({"count": int(token)})
        except ValueError:
            raise EdgeFleetError(f"--waves: {token!r} is neither N%% nor a device count") from None
    if not steps:
        raise EdgeFleetError("--waves needs at least one step")
    return steps


def parse_abort(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise EdgeFleetError(f"--abort {text!r}: want KIND:THRESHOLD[:MIN[:pause|abort]]")
    try:
        criterion: dict[str, Any] = {"kind": parts[0], "threshold": float(parts[1])}
        if len(parts) > 2:
            criterion["min_finished"] = int(parts[2])
    except ValueError:
        raise EdgeFleetError(f"--abort {text!r}: threshold and MIN must be numbers") from None
    if len(parts) > 3:
        criterion["action"] = parts[3]
    return criterion


def parse_trial(text: str) -> dict[str, float]:
    trial: dict[str, float] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        key, _, value = item.partition("=")
        try:
            trial[key.strip()] = float(value)
        except ValueError:
            raise EdgeFleetError(f"--trial {item!r}: want key=number") from None
    return trial


def _create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "bundle": args.bundle,
        "name": args.name,
        "abort": [parse_abort(a) for a in args.abort],
        "in_progress_timeout_s": args.timeout,
        "max_retries": args.max_retries,
        "retry_backoff_s": args.retry_backoff,
        "start": args.start,
    }
    if args.devices:
        body["devices"] = [d.strip() for d in args.devices.split(",") if d.strip()]
    if args.tag:
        body["tag"] = args.tag
    if args.hardware_class:
        body["hardware_class"] = args.hardware_class
    if args.rate is not None:
        if args.waves:
            raise EdgeFleetError("give --waves or --rate, not both")
        body["exponential_rate"] = {
            "base_per_minute": args.rate,
            "increment_factor": args.rate_factor,
            "increase_every": args.rate_every,
            "increase_on": args.rate_on,
        }
    else:
        body["waves"] = {
            "steps": parse_waves(args.waves or "100%"),
            "min_devices": args.min_devices,
            "soak_s": args.soak,
            "success_threshold": args.success_threshold,
        }
    if args.trial:
        body["trial"] = parse_trial(args.trial)
    print(format_status(_call(args, "POST", "/rollouts", json=body)))
    return 0


def _list(args: argparse.Namespace) -> int:
    params = {"status": args.status} if args.status else {}
    rows = _call(args, "GET", "/rollouts", params=params)
    print(f"{'id':32}  {'status':11}  {'bundle':24}  {'committed':>9}/{'total':<6} created")
    for r in rows:
        bundle = f"{r['bundle']['name']}@{r['bundle']['version']}"
        print(
            f"{r['id']:32}  {r['status']:11}  {bundle[:24]:24}  "
            f"{r['counts'].get('committed', 0):>9}/{r['total']:<6} {r['created']}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    detail = _call(args, "GET", f"/rollouts/{args.rollout_id}")
    print(json.dumps(detail, indent=2) if args.json else format_status(detail))
    return 0


def _devices(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.state:
        params["state"] = args.state
    if args.wave:
        params["wave"] = args.wave
    for row in _call(args, "GET", f"/rollouts/{args.rollout_id}/devices", params=params):
        reason = row["reason"]
        why = f"  {reason['code']}: {reason['message']}" if reason else ""
        print(f"{row['device_id']:40} wave {row['wave']:<3} {row['state']:12}{why}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    for entry in _call(args, "GET", f"/rollouts/{args.rollout_id}/audit"):
        print(f"{entry['at']}  {entry['actor']:28} {entry['action']:9} {entry['detail']}")
    return 0


def _action(args: argparse.Namespace) -> int:
    detail = _call(
        args, "POST", f"/rollouts/{args.rollout_id}/{args.action}", json={"reason": args.reason}
    )
    print(format_status(detail))
    return 0


# ---------------------------------------------------------------- output

_SHOWN = ("queued", "notified", "downloading", "verifying", "installed", "on_trial",
          "committed", "failed", "rolled_back", "timed_out", "canceled")  # fmt: skip
_SHORT = {"downloading": "download", "verifying": "verify", "installed": "install",
          "rolled_back": "rollback", "timed_out": "timeout"}  # fmt: skip


def _figure(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "share":
        return f"{value:.1%}"
    if kind == "ratio":
        return f"{value:.2f}x"
    return str(value)


def format_status(detail: dict[str, Any]) -> str:
    """A rollout as an operator reads it: status, waves x states, gate figures."""
    bundle = detail["bundle"]
    wave = detail["current_wave"]
    lines = [
        f"rollout {detail['id']} {detail['name']}".rstrip(),
        f"  bundle   {bundle['name']}@{bundle['version']} ({bundle['manifest_sha256'][:12]})",
        f"  status   {detail['status']}"
        + (f" (wave {wave} of {len(detail['waves'])})" if wave else "")
        + (f": {detail['reason']}" if detail["reason"] else ""),
        f"  devices  {detail['total']}",
        "",
        "  wave " + "".join(f"{_SHORT.get(s, s):>9}" for s in _SHOWN),
    ]
    for row in detail["waves"]:
        counts = row["counts"]
        lines.append(f"  {row['wave']:>4} " + "".join(f"{counts.get(s, 0):>9}" for s in _SHOWN))
    lines.append("   all " + "".join(f"{detail['counts'].get(s, 0):>9}" for s in _SHOWN))
    gates = detail.get("gates") or {}
    if gates:
        lines += [
            "",
            "  gates    failure share {} ({} of {} finished)".format(
                _figure(gates.get("failure_share"), "share"),
                gates.get("failed", 0),
                gates.get("finished", 0),
            ),
            "           error rate    {} over {} inferences".format(
                _figure(gates.get("error_rate"), "share"), gates.get("error_samples", 0)
            ),
            "           p95 latency   {} of the previous model on {} devices".format(
                _figure(gates.get("latency_ratio"), "ratio"), gates.get("latency_devices", 0)
            ),
        ]
        if gates.get("drift_samples"):
            lines.append(
                "           drift         inputs {}, predictions {} over {} inferences".format(
                    _figure(gates.get("input_drift_share"), "share"),
                    _figure(gates.get("prediction_drift_share"), "share"),
                    gates.get("drift_samples", 0),
                )
            )
    policy = detail.get("policy") or {}
    aborts = policy.get("abort") or []
    if aborts:
        lines.append(
            "  criteria "
            + "; ".join(
                f"{a['kind']} > {a['threshold']:g} after {a['min_finished']} -> {a['action']}"
                for a in aborts
            )
        )
    return "\n".join(lines)
