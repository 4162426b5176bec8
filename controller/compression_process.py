"""The child process that runs one compression job (CPU-heavy, so never in the API process).

Compression runs onnxruntime sessions and numpy for seconds to minutes. In a thread of
the API process it would hold the GIL for much of that time and slow every request; in
a child process (started with ``spawn``, as forking a process that runs uvicorn, paho and
database pools is unsafe) the API stays responsive, a job that hangs or exhausts memory
can be killed without taking the replica down, and the parent only relays progress.

Messages the child sends on its pipe: ``("progress", fraction, text)``, then exactly one
of ``("done", report)`` or ``("failed", error, report_or_None)``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from controller.compression_request import AUTO, JobSpec

Send = Callable[[float, str], None]
# Share of the progress bar given to candidates measured by auto; the rest is saving.
_AUTO_SHARE = 0.95
# Candidate lines a pruning search adds per kind, roughly (grid climb, bisection, final).
_SEARCH_LINES = 8


def run_job(
    spec: JobSpec,
    model: Path,
    output: Path,
    *,
    calibration: Path | None,
    evaluation: Path | None,
    progress: Send,
) -> dict[str, Any]:
    """Compress ``model`` into ``output`` as ``spec`` says; return the manifest report.

    For ``auto`` the report is :meth:`compress.AutoResult.to_dict` (the chosen recipe,
    the constraints, and the full candidate table); for one method it is the
    :class:`compress.CompressionReport` of that method.

    Raises:
        CompressError: the model or the data cannot be used, or (auto) no recipe met
            every constraint (``ConstraintsNotMetError``, carrying the table).
    """
    from compress.auto import auto_compress, default_candidates
    from compress.compression import compress_model
    from compress.model_file import load_model

    if spec.method != AUTO:
        progress(0.05, f"compressing with {spec.method}")
        report = compress_model(
            model,
            output,
            spec.method,
            eval_inputs=evaluation,
            calibration_inputs=calibration,
            runs=spec.runs,
            keep_float=spec.keep_float,
            samples=spec.samples,
            seed=spec.seed,
            **spec.method_options,
        )
        progress(0.95, report.summary().splitlines()[0])
        return report.to_dict()

    fixed = len(default_candidates(load_model(model), has_calibration=calibration is not None))
    expected = fixed + (2 * _SEARCH_LINES if spec.search_pruning else 0)
    measured = 0

    def on_line(line: str) -> None:
        nonlocal measured
        if line.startswith("  "):  # one line per candidate measured
            measured += 1
        progress(min(_AUTO_SHARE, _AUTO_SHARE * measured / max(expected, 1)), line.strip())

    result = auto_compress(
        model,
        output,
        eval_inputs=evaluation,
        calibration_inputs=calibration,
        constraints=spec.constraints_object(),
        profile=spec.profile or "cpu",
        search_pruning=spec.search_pruning,
        runs=spec.runs,
        keep_float=spec.keep_float,
        samples=spec.samples,
        seed=spec.seed,
        progress=on_line,
    )
    return result.to_dict()


# How often the child checks that the replica that started it is still alive.
ORPHAN_CHECK_S = 0.5


def _exit_when_orphaned(parent: int) -> None:
    """End this process once its parent is gone (a killed replica): nobody would read
    the result, and the job's lease expiring hands it to another replica anyway."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(3)


def child_main(payload: dict[str, Any], conn: Connection) -> None:
    """Entry point of the spawned process: run the job, report on ``conn``, exit."""
    from compress.errors import CompressError, ConstraintsNotMetError

    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()

    def path(key: str) -> Path | None:
        value = payload.get(key)
        return None if value is None else Path(value)

    try:
        report = run_job(
            JobSpec.from_dict(payload["spec"]),
            Path(payload["model"]),
            Path(payload["output"]),
            calibration=path("calibration"),
            evaluation=path("evaluation"),
            progress=lambda fraction, text: conn.send(("progress", fraction, text)),
        )
        conn.send(("done", report))
    except ConstraintsNotMetError as exc:
        conn.send(("failed", str(exc), {"failed": exc.failed, "table": exc.table}))
    except CompressError as exc:
        conn.send(("failed", str(exc), None))
    except Exception as exc:  # a bug or a library failure: say what, do not hang the job
        conn.send(("failed", f"internal error: {type(exc).__name__}: {exc}", None))
    finally:
        conn.close()
