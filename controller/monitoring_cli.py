"""``edgefleet drift ...`` and ``edgefleet telemetry ...``: the fleet's health, from a shell.

::

    edgefleet drift report --bundle SHA --tag cams --last 1h      # per-feature figures
    edgefleet drift alerts [--status open]                         # newest first
    edgefleet drift alert ID                                       # one, with deliveries
    edgefleet telemetry summary --rollout ID --group-by wave --last 30m

Scope flags combine (``--device`` repeatable, ``--tag``, ``--hardware-class``,
``--rollout`` with ``--wave``); the range is ``--last`` (30s, 15m, 2h, 1d) before now, or
``--since``/``--until`` (epoch seconds or ISO 8601).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from datetime import datetime, timezone
from typing import Any

from controller.rollout_cli import DEFAULT_CONTROLLER, _call
from firmware_bundles.errors import EdgeFleetError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise EdgeFleetError(f"duration {text!r}: use e.g. 90s, 15m, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(text: str) -> float:
    """Epoch seconds, or ISO 8601 (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise EdgeFleetError(f"time {text!r}: use epoch seconds or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller",
        default=os.environ.get("EDGEFLEET_CONTROLLER_URL", DEFAULT_CONTROLLER),
        help="controller base URL (default: $EDGEFLEET_CONTROLLER_URL or %(default)s)",
    )
    parser.add_argument("--actor", default=None, help=argparse.SUPPRESS)


def _scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", action="append", help="device id (repeatable)")
    parser.add_argument("--tag")
    parser.add_argument("--hardware-class")
    parser.add_argument("--rollout")
    parser.add_argument("--wave", type=int, help="a wave of --rollout, from 1")
    parser.add_argument("--bundle", help="bundle id or manifest sha256")
    parser.add_argument("--last", default="1h", help="range before now (default %(default)s)")
    parser.add_argument("--since", help="epoch seconds or ISO 8601 (instead of --last)")
    parser.add_argument("--until", help="epoch seconds or ISO 8601 (default now)")
    parser.add_argument("--json", action="store_true", help="the raw API answer")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    until = parse_time(args.until) if args.until else time.time()
    since = parse_time(args.since) if args.since else until - parse_duration(args.last)
    params: dict[str, Any] = {"since": since, "until": until}
    for key in ("device", "tag", "hardware_class", "rollout", "wave", "bundle"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    return params


def register(subparsers: Any) -> None:
    drift = subparsers.add_parser("drift", help="data drift of the fleet, and drift alerts")
    _common(drift)
    sub = drift.add_subparsers(dest="drift_command", metavar="COMMAND")
    sub.required = True
    report = sub.add_parser("report", help="per-feature drift, drifting devices, since when")
    _scope(report)
    report.add_argument("--steps", type=int, default=12, help="timeline steps")
    report.set_defaults(func=_report)
    alerts = sub.add_parser("alerts", help="drift alerts, newest first")
    alerts.add_argument("--status", choices=("pending", "open", "resolved", "dismissed"))
    alerts.add_argument("--json", action="store_true")
    alerts.set_defaults(func=_alerts)
    alert = sub.add_parser("alert", help="one drift alert with its webhook deliveries")
    alert.add_argument("alert_id")
    alert.set_defaults(func=_alert)

    telemetry = subparsers.add_parser("telemetry", help="fleet telemetry")
    _common(telemetry)
    tsub = telemetry.add_subparsers(dest="telemetry_command", metavar="COMMAND")
    tsub.required = True
    summary = tsub.add_parser("summary", help="inferences, errors, latency per group")
    _scope(summary)
    summary.add_argument(
        "--group-by", default="bundle", help="comma-separated: bundle, wave, device, hardware_class"
    )
    summary.set_defaults(func=_summary)


def _clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _devices(names: list[str], limit: int = 4) -> str:
    if not names:
        return "-"
    more = f" +{len(names) - limit}" if len(names) > limit else ""
    return ",".join(names[:limit]) + more


def format_report(answer: dict[str, Any]) -> str:
    lines = [
        f"drift {_clock(answer['since'])} .. {_clock(answer['until'])} (alpha "
        f"{answer['alpha']}, verdicts from {answer['min_samples']} samples, PSI >= "
        f"{answer['min_psi']})"
    ]
    for entry in answer["bundles"]:
        b = entry["bundle"]
        drifting = entry["drifting_devices"]
        verdict = "DRIFT" if entry["drifted"] else "no drift across the scope"
        if drifting:
            verdict += f"; drift on {len(drifting)} of {entry['devices']} devices"
        lines.append(
            f"\n{b['name']}@{b['version']} ({(b['manifest_sha256'] or '')[:12]}): {verdict}, "
            f"{entry['devices']} devices, {entry['windows']} windows"
        )
        for skipped in entry["skipped"]:
            lines.append(f"  note: {skipped}")
        if not entry["features"]:
            continue
        lines.append(f"  {'feature':24} {'kind':10} {'n':>8} {'psi':>7} {'js':>6} "
                     f"{'p':>9}  drift  since                 devices")  # fmt: skip
        for f in entry["features"]:
            drifted = "yes" if f["drifted"] else "no"
            lines.append(
                f"  {f['name'][:24]:24} {f['kind']:10} {f['n']:8d} {f['psi']:7.3f} "
                f"{f['jensen_shannon']:6.3f} {f['p_value']:9.2e}  {drifted:5}"
                f"  {_clock(f['drifting_since']):20}  {_devices(f['drifting_devices'])}"
            )
    if not answer["bundles"]:
        lines.append("no drift windows in this range")
    return "\n".join(lines)


def format_alert(alert: dict[str, Any]) -> str:
    b, m = alert["bundle"], alert["model"]
    model = f"model {m['name']}@{m['version']}, " if m.get("name") else ""
    lines = [
        f"{alert['id']}  {alert['status']:9} {b['name']}@{b['version']} ({model}"
        f"opened {_clock(alert['opened_at'])}, last seen {_clock(alert['last_seen_at'])})",
        f"  devices: {_devices(alert['devices'], 10)}",
    ]
    for f in alert["features"]:
        lines.append(
            f"  {f['name']}: PSI {f.get('psi', 0):.3f} on {len(f['devices'])} device(s) "
            f"since {_clock(f['since'])}"
        )
    for d in alert.get("deliveries", []):
        state = "delivered" if d["delivered_at"] else "gave up" if d["gave_up_at"] else "pending"
        error = f" ({d['last_error']})" if d["last_error"] else ""
        lines.append(f"  webhook {d['event']} -> {d['url']}: {state} after {d['attempts']}{error}")
    return "\n".join(lines)


def format_summary(answer: dict[str, Any]) -> str:
    lines = [f"telemetry {_clock(answer['since'])} .. {_clock(answer['until'])}"]
    lines.append(f"  {'group':40} {'devices':>7} {'inferences':>11} {'errors':>7} "
                 f"{'err %':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")  # fmt: skip
    for g in answer["groups"]:
        keys = []
        for name in answer["group_by"]:
            if name == "bundle":
                bundle = g["bundle"] or {}
                keys.append(f"{bundle.get('name')}@{bundle.get('version')}")
            else:
                keys.append(f"{name}={g.get('device_id' if name == 'device' else name)}")
        rate = "-" if g["error_rate"] is None else f"{100 * g['error_rate']:.2f}"

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        lines.append(
            f"  {' '.join(keys)[:40]:40} {g['devices']:7d} {g['inference_count']:11d} "
            f"{g['error_count']:7d} {rate:>6} {ms(g['latency_p50_ms']):>8} "
            f"{ms(g['latency_p95_ms']):>8} {ms(g['latency_p99_ms']):>8}"
        )
    return "\n".join(lines)


def _show(args: argparse.Namespace, answer: Any, formatter: Any) -> int:
    print(json.dumps(answer, indent=2) if getattr(args, "json", False) else formatter(answer))
    return 0


def _report(args: argparse.Namespace) -> int:
    answer = _call(args, "GET", "/drift", params={**_params(args), "steps": args.steps})
    return _show(args, answer, format_report)


def _alerts(args: argparse.Namespace) -> int:
    params = {"status": args.status} if args.status else {}
    rows = _call(args, "GET", "/drift/alerts", params=params)
    return _show(args, rows, lambda rows: "\n".join(map(format_alert, rows)) or "no alerts")


def _alert(args: argparse.Namespace) -> int:
    print(format_alert(_call(args, "GET", f"/drift/alerts/{args.alert_id}")))
    return 0


def _summary(args: argparse.Namespace) -> int:
    groups = [g.strip() for g in args.group_by.split(",") if g.strip()]
    answer = _call(args, "GET", "/telemetry/summary", params={**_params(args), "group_by": groups})
    return _show(args, answer, format_summary)
