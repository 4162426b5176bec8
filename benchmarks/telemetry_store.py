"""A day of fleet telemetry in the controller's store: raw only, against raw + roll-ups.

N devices send a telemetry window every 10 s and a drift window every 60 s (the agent's
defaults) for H hours, on one bundle, half of them in rollout wave 1 and half in wave 2.
The windows are written as the ingest writes them (multi-row INSERTs of the same rows),
hour by hour, into two SQLite databases in one run:

  raw      every window kept (no roll-ups)
  rolled   what the controller keeps: each hour the roll-up job
           (``controller.services.window_store.roll_up_batch``) sums the windows older
           than the raw retention (1 h) into one row per device, bundle and hour

Then both answer the same questions over the whole range, timed (median of 3):
fleet telemetry per bundle and per wave (error rate, p50/p95/p99 off merged
histograms, ``controller.services.fleet_telemetry.summarize``) and a per-device
drift check of the last 15 minutes. Reported: rows, live database bytes, query
seconds, and the raw/rolled ratios; the answers are checked to be the same.

Usage: python benchmarks/telemetry_store.py [--devices 1000] [--hours 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.db import create_schema, make_engine, make_sessionmaker  # noqa: E402
from controller.drift_stats import FeatureBins  # noqa: E402
from controller.drift_watch import find_drift, merge_windows  # noqa: E402
from controller.models import (  # noqa: E402
    Bundle,
    Device,
    DriftWindow,
    Rollout,
    RolloutDevice,
    TelemetryWindow,
)
from controller.monitoring_models import DriftRollup, TelemetryRollup  # noqa: E402
from controller.services.fleet_scope import Scope  # noqa: E402
from controller.services.fleet_telemetry import summarize  # noqa: E402
from controller.services.window_store import Query, drift_parts, roll_up_batch  # noqa: E402
from firmware_bundles import latency_histogram as lh  # noqa: E402

HOUR = 3600.0
TELEMETRY_S, DRIFT_S = 10.0, 60.0
FEATURES, BINS = 10, 10
SHA = "ab" * 32
BATCH = 5000


def make_store(path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        session.add(Bundle(name="clf", version="1.0.0", release_counter=1, manifest_sha256=SHA,
                           hardware_classes=["generic"], runtime="onnxruntime", manifest={},
                           expires=sa.func.now(), source="uploaded"))  # fmt: skip
        session.flush()
        bundle_id = session.scalar(sa.select(Bundle.id))
        session.add(Rollout(id="r1", bundle_id=bundle_id, target={}, policy={}, status="completed"))
        session.commit()
    return sessions


def add_devices(sessions: sessionmaker[Session], devices: list[str]) -> None:
    with sessions() as session:
        session.execute(sa.insert(Device), [{"id": d, "tags": [], "online": True,
                                             "generation": 1} for d in devices])  # fmt: skip
        session.execute(sa.insert(RolloutDevice), [
            {"rollout_id": "r1", "device_id": d, "wave": i % 2, "state": "committed",
             "updated_at": 0.0} for i, d in enumerate(devices)])  # fmt: skip
        session.commit()


def histogram_pool(rng: np.random.Generator, base: float, size: int = 64) -> list[dict[str, int]]:
    """Latency histograms of 100-inference windows around ``base`` ms (drawn once per
    device: building them per window would make this script, not the store, the cost)."""
    pool = []
    for _ in range(size):
        latencies = rng.lognormal(np.log(base), 0.25, 100)
        keys, counts = np.unique([lh.bucket_of(float(v)) for v in latencies], return_counts=True)
        pool.append({str(k): int(c) for k, c in zip(keys, counts, strict=True)})
    return pool


def hour_of_windows(
    devices: list[str], hour: int, t0: float, rng: np.random.Generator, seq: dict[str, int],
    pools: dict[str, list[dict[str, int]]],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:  # fmt: skip
    """("telemetry" | "drift", rows) for one hour of the fleet, as ingest stores them."""
    start = t0 + hour * HOUR
    rows: list[dict[str, Any]] = []
    drifts: list[dict[str, Any]] = []
    per_hour = int(HOUR / TELEMETRY_S)
    for device in devices:
        picks = rng.integers(0, len(pools[device]), per_hour)
        errors = rng.random(per_hour) < 0.05
        for k in range(per_hour):
            end = start + (k + 1) * TELEMETRY_S
            seq[device] += 1
            rows.append({"device_id": device, "seq": seq[device], "window_start": end - TELEMETRY_S,
                         "window_end": end, "inference_count": 100,
                         "error_count": int(errors[k]), "latency_p50_ms": None,
                         "latency_p95_ms": None, "latency_p99_ms": None,
                         "latency_histogram": pools[device][picks[k]],
                         "bundle_sha256": SHA})  # fmt: skip
            if len(rows) >= BATCH:
                yield "telemetry", rows
                rows = []
        counts = rng.multinomial(600, [1 / BINS] * BINS, size=(int(HOUR / DRIFT_S), FEATURES))
        for k in range(int(HOUR / DRIFT_S)):
            end = start + (k + 1) * DRIFT_S
            features = {f"x[{j}]": {"counts": counts[k, j].tolist(), "missing": 0, "n": 600,
                                    "min": -3.1, "max": 3.2, "sum": 0.5 * j + k,
                                    "sumsq": 600.0 + j + k}
                        for j in range(FEATURES)}  # fmt: skip
            drifts.append({"device_id": device, "seq": hour * 1000 + k,
                           "window_start": end - DRIFT_S, "window_end": end,
                           "bundle_sha256": SHA, "features": features})  # fmt: skip
            if len(drifts) >= BATCH:
                yield "drift", drifts
                drifts = []
    if rows:
        yield "telemetry", rows
    if drifts:
        yield "drift", drifts


def live_bytes(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        pages = session.execute(sa.text("PRAGMA page_count")).scalar_one()
        free = session.execute(sa.text("PRAGMA freelist_count")).scalar_one()
        size = session.execute(sa.text("PRAGMA page_size")).scalar_one()
    return int((pages - free) * size)


def count(sessions: sessionmaker[Session], table: Any) -> int:
    with sessions() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per query (median)")
    parser.add_argument(
        "--rolled-only", action="store_true", help="skip the raw store (large fleets)"
    )
    args = parser.parse_args()
    devices = [f"dev-{i:05d}" for i in range(args.devices)]
    t0 = float(int(time.time() // HOUR * HOUR) - args.hours * HOUR)
    with tempfile.TemporaryDirectory(prefix="ef-telemetry-") as tmp:
        names = ["rolled"] if args.rolled_only else ["raw", "rolled"]
        stores = {name: make_store(Path(tmp) / f"{name}.db") for name in names}
        for sessions in stores.values():
            add_devices(sessions, devices)
        seq = {d: 0 for d in devices}
        rng = np.random.default_rng(7)
        pools = {d: histogram_pool(rng, 1.5 + (i % 7) * 0.2) for i, d in enumerate(devices)}
        write_s = {name: 0.0 for name in names}
        rollup_s = 0.0
        started = time.monotonic()
        for hour in range(args.hours):
            for kind, rows in hour_of_windows(devices, hour, t0, rng, seq, pools):
                table = TelemetryWindow if kind == "telemetry" else DriftWindow
                for name, sessions in stores.items():
                    began = time.perf_counter()
                    with sessions() as session:
                        session.execute(sa.insert(table), rows)
                        session.commit()
                    write_s[name] += time.perf_counter() - began
            began = time.perf_counter()  # the hourly roll-up job, on the rolled store
            while True:
                with stores["rolled"]() as session:
                    done = roll_up_batch(session, now=t0 + (hour + 1) * HOUR,
                                         raw_retention_s=HOUR, bucket_s=HOUR,
                                         retention_s=30 * 24 * HOUR, batch=20_000)  # fmt: skip
                    session.commit()
                if not done.more:
                    break
            rollup_s += time.perf_counter() - began
            print(f"  hour {hour + 1}/{args.hours} written ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip

        end = t0 + args.hours * HOUR
        bins = {f"x[{j}]": FeatureBins([60] * BINS, tuple(np.linspace(-2, 2, BINS - 1)), -3, 3)
                for j in range(FEATURES)}  # fmt: skip
        results: dict[str, dict[str, Any]] = {}
        for name, sessions in stores.items():
            with sessions() as session:
                per_bundle = timed(lambda s=session: summarize(
                    s, Scope(), since=t0, until=end, group_by=["bundle"]), args.runs)  # fmt: skip
                per_wave = timed(lambda s=session: summarize(
                    s, Scope(rollout="r1"), since=t0, until=end, group_by=["wave"]),
                    args.runs)  # fmt: skip

                def check(s: Session = session) -> Any:
                    parts = drift_parts(s, Query(bundle=SHA, since=end - 900, until=end))
                    merged, _ = merge_windows(((p.device_id, p.features) for p in parts), bins)
                    return find_drift(bins, merged, alpha=0.01, min_samples=200).tested

                drift_check = timed(check, args.runs)
            results[name] = {
                "telemetry rows": (
                    count(sessions, TelemetryWindow) + count(sessions, TelemetryRollup)
                ),
                "drift rows": count(sessions, DriftWindow) + count(sessions, DriftRollup),
                "bytes": live_bytes(sessions),
                "per_bundle": per_bundle, "per_wave": per_wave, "drift_check": drift_check,
            }  # fmt: skip
        rolled = results["rolled"]
        raw = results.get("raw", rolled)
        for key in ("per_bundle", "per_wave"):
            assert raw[key][1] == rolled[key][1], f"{key}: the stores disagree"
        inserts = ", ".join(f"{n} {t:.1f} s" for n, t in write_s.items())
        print(f"{args.devices} devices x {args.hours} h: telemetry every {TELEMETRY_S:.0f} s, "
              f"drift every {DRIFT_S:.0f} s ({FEATURES} features); SQLite; roll-up job "
              f"{rollup_s:.1f} s in all; inserts {inserts}")  # fmt: skip
        print(f"{'':28}" + "".join(f"{n:>14}" for n in names)
              + ("" if args.rolled_only else f"{'raw/rolled':>12}"))  # fmt: skip
        for label, key, scale, fmt in (
            ("telemetry rows", "telemetry rows", 1, ",.0f"),
            ("drift rows", "drift rows", 1, ",.0f"),
            ("live database MB", "bytes", 1e6, ",.1f"),
            ("day per bundle, s", "per_bundle", None, ".3f"),
            ("day per wave, s", "per_wave", None, ".3f"),
            ("drift check 15 min, s", "drift_check", None, ".3f"),
        ):
            values = [results[n][key] / scale if scale else results[n][key][0] for n in names]
            line = f"{label:28}" + "".join(f"{v:14{fmt}}" for v in values)
            if not args.rolled_only:
                line += f"{values[0] / values[1]:12.1f}"
            print(line)
        row = rolled["per_bundle"][1][0]
        print(f"answer (same in both): {row['inference_count']:,} inferences, error rate "
              f"{row['error_rate']:.4f}, p50/p95/p99 {row['latency_p50_ms']:.2f}/"
              f"{row['latency_p95_ms']:.2f}/{row['latency_p99_ms']:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
