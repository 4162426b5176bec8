"""Compression jobs on the controller, on SQLite and PostgreSQL: queued over the REST API,
run in a child process off the request path, claimed through the database so that two
replicas never run one job twice and a dead replica's job is taken over after its lease;
the result is a new model version whose bundles carry the report in their manifest."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from controller.blobstore import BlobStore
from controller.compression_job_model import RUNNING, CompressionJob
from controller.compression_worker import CompressionWorker, WorkerLimits
from controller.db import create_schema, make_engine, make_sessionmaker
from controller.models import utcnow
from controller.services import compression_jobs as jobs
from controller.services import model_registry
from firmware_bundles.golden import encode_arrays
from tests.integration.conftest import Start
from tests.models import mlp
from tests.tflite_models import mlp_tflite

Api = httpx.Client
FINAL = ("succeeded", "failed")


def register(api: Api, tmp_path: Path, name: str = "clf", hidden: int = 64) -> Path:
    path = mlp(tmp_path / f"{name}.onnx", hidden=hidden)
    assert api.post("/models", json={"name": name}).status_code == 201
    answer = api.post(
        f"/models/{name}/versions",
        data={"version": "1.0.0"},
        files={"file": (path.name, path.read_bytes())},
    )
    assert answer.status_code == 201, answer.text
    return path


def submit(
    api: Api, method: str, files: dict[str, Any] | None = None, **form: str
) -> httpx.Response:
    return api.post(
        "/models/clf/versions/1.0.0/compress", data={"method": method, **form}, files=files
    )


def follow(
    api: Api,
    job_id: str,
    timeout: float = 180.0,
    *,
    progress: list[tuple[str, float]] | None = None,
    poll_s: float = 0.1,
) -> tuple[dict[str, Any], list[str]]:
    """Poll the job until it ends; return it and every state seen on the way (and append
    each new (state, progress) seen to ``progress``)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/compression-jobs/{job_id}").json()
        now = (job["state"], job["progress"])
        if progress is not None and (not progress or progress[-1] != now):
            progress.append(now)
        if not seen or seen[-1] != job["state"]:
            seen.append(job["state"])
        if job["state"] in FINAL:
            return job, seen
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s; states {seen}")


def test_a_method_job_runs_in_the_background_and_its_bundle_carries_the_report(
    controller: Start, tmp_path: Path
) -> None:
    api = controller()
    register(api, tmp_path)
    answer = submit(api, "fp16", options='{"runs": 3}')
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert queued["state"] == "queued" and queued["progress"] == 0.0
    assert answer.headers["Location"] == f"/api/v1/compression-jobs/{queued['id']}"
    # The API answers while the job is queued or running: it is not the request's work.
    assert api.get("/health").status_code == 200

    job, seen = follow(api, queued["id"])
    assert job["state"] == "succeeded", job["error"]
    assert seen[-1] == "succeeded" and job["progress"] == 1.0 and job["attempts"] == 1
    result = job["result"]
    assert result["version"] == "1.0.0-fp16" and result["runtime"] == "onnxruntime"
    versions = {v["version"]: v for v in api.get("/models/clf/versions").json()}
    assert set(versions) == {"1.0.0", "1.0.0-fp16"}
    report = job["report"]
    assert report["method"] == "fp16" and report["cosine_similarity"] > 0.999
    assert report["compressed_bytes"] == result["size"] < versions["1.0.0"]["size"]

    bundle = api.post(
        "/bundles", json={"model": "clf", "version": "1.0.0-fp16", "bundle_version": "1.0.0"}
    )
    assert bundle.status_code == 201, bundle.text
    detail = api.get(f"/bundles/{bundle.json()['id']}").json()
    assert detail["compression"]["method"] == "fp16"
    assert detail["manifest"]["compression"] == detail["compression"] == report
    # A version uploaded by hand has no report.
    plain = api.post("/bundles", json={"model": "clf", "version": "1.0.0", "bundle_version": "2"})
    assert plain.json()["compression"] is None


def test_auto_jobs_choose_under_constraints_or_say_which_constraint_failed(
    controller: Start, tmp_path: Path
) -> None:
    api = controller()
    # Wide enough (430 KB) that per-channel int8, the last candidate, takes a good part
    # of a second: long enough for a poll to see the job part-way.
    register(api, tmp_path, hidden=8192)
    x = np.random.default_rng(0).standard_normal((48, 8)).astype(np.float32)
    npz = encode_arrays({"x": x})
    # Latency is not gated: timings on a shared machine are noise, not behaviour.
    auto_options = (
        '{"max_size_ratio": 0.7, "max_latency_ratio": null, "search_pruning": false, "runs": 3}'
    )
    ok = submit(api, "auto", {"evaluation": ("eval.npz", npz)}, options=auto_options)
    impossible = submit(
        api, "auto", options='{"max_size_ratio": 0.01, "search_pruning": false, "runs": 3}',
        target_version="tiny",
    )  # fmt: skip
    assert ok.status_code == impossible.status_code == 202, (ok.text, impossible.text)

    progress: list[tuple[str, float]] = []
    job, _ = follow(api, ok.json()["id"], progress=progress, poll_s=0.02)
    assert job["state"] == "succeeded", job["error"]
    # While it ran, the job showed how far it had got: candidates measured, not 0 then 1.
    assert any(state == "running" and 0 < value < 1 for state, value in progress), progress
    values = [value for _, value in progress]
    assert values == sorted(values) and values[-1] == 1.0
    report = job["report"]
    names = [row["recipe"]["name"] for row in report["table"]]
    assert len(names) >= 2 and report["chosen"]["name"] in names
    assert report["report"]["size_ratio"] <= 0.7
    assert report["report"]["samples"] == 48  # the uploaded evaluation set, not generated
    assert job["request"]["evaluation_sha256"] is not None

    failed, _ = follow(api, impossible.json()["id"])
    assert failed["state"] == "failed" and failed["result"] is None
    assert "size_ratio" in failed["error"]
    assert len(failed["report"]["table"]) >= 2  # what was measured, to see why
    versions = [v["version"] for v in api.get("/models/clf/versions").json()]
    assert "tiny" not in versions

    built = api.post(
        "/bundles", json={"model": "clf", "version": "1.0.0-auto", "bundle_version": "1.0.0"}
    ).json()
    assert built["compression"]["chosen"] == report["chosen"]
    assert built["compression"]["table"] == report["table"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_requests_that_cannot_run_are_refused_with_the_reason(
    controller: Start, tmp_path: Path
) -> None:
    api = controller(EDGEFLEET_COMPRESSION_WORKERS="0", EDGEFLEET_COMPRESSION_MAX_QUEUED="1")
    register(api, tmp_path)

    def refused(response: httpx.Response, status: int, words: str) -> None:
        assert response.status_code == status, response.text
        assert words in response.json()["detail"], response.json()["detail"]

    refused(submit(api, "int4-magic"), 422, "unknown method 'int4-magic'")
    refused(submit(api, "fp16", options='{"sparsity": 0.5}'), 422, "no option(s) ['sparsity']")
    refused(submit(api, "auto", options='{"sparsity": 0.5}'), 422, "do not apply to 'auto'")
    refused(submit(api, "prune-magnitude", options='{"sparsity": 1.5}'), 422, "sparsity")
    refused(submit(api, "auto", options='{"min_agreement": 2}'), 422, "min_agreement")
    refused(submit(api, "auto", options='{"profile": "gpu"}'), 422, "unknown profile 'gpu'")
    refused(submit(api, "fp16", options="[1]"), 422, "JSON object")
    refused(submit(api, "fp16", target_version="1.0.0"), 409, "already has version '1.0.0'")
    refused(submit(api, "fp16", {"evaluation": ("e.npz", b"not an npz")}), 422, "not a valid .npz")
    refused(
        api.post("/models/nope/versions/1.0.0/compress", data={"method": "fp16"}),
        404,
        "no model named 'nope'",
    )
    tfl = mlp_tflite(tmp_path / "m.tflite")
    api.post(
        "/models/clf/versions", data={"version": "t1"}, files={"file": (tfl.name, tfl.read_bytes())}
    )
    refused(
        api.post("/models/clf/versions/t1/compress", data={"method": "fp16"}), 422, "tflite model"
    )
    assert submit(api, "fp16").status_code == 202  # fills the queue (no worker here)
    refused(submit(api, "fp16", target_version="again"), 429, "queued or running")
    refused(api.get("/compression-jobs/abc"), 404, "no compression job")


# ---------------------------------------------------------------- two replicas, one database


class Replica:
    """The database side of one controller replica: its own engine, the shared blobs."""

    def __init__(self, url: str, blobs: Path, work: Path, owner: str, lease_s: float) -> None:
        self.engine = make_engine(url)
        create_schema(self.engine)
        self.sessions = make_sessionmaker(self.engine)
        self.store = BlobStore(blobs)
        self.worker = CompressionWorker(
            self.sessions,
            self.store,
            work / owner,
            WorkerLimits(workers=1, lease_s=lease_s, poll_s=0.1),
            owner=owner,
        )


@pytest.fixture()
def replicas(database_url: str, tmp_path: Path) -> Iterator[Callable[[str], Replica]]:
    made: list[Replica] = []

    def make(owner: str, lease_s: float = 30.0) -> Replica:
        replica = Replica(database_url, tmp_path / "blobs", tmp_path / "work", owner, lease_s)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.worker.stop()
        replica.engine.dispose()


def _model_version(replica: Replica, tmp_path: Path) -> None:
    path = mlp(tmp_path / "clf.onnx", hidden=32)
    with replica.sessions() as session:
        model_registry.create_model(session, "clf")
        model_registry.add_version(
            session,
            replica.store,
            name="clf",
            version="1.0.0",
            filename="clf.onnx",
            source=io.BytesIO(path.read_bytes()),
            max_bytes=1 << 24,
        )


def _submit(
    replica: Replica, target: str, method: str = "fp16", options: dict[str, Any] | None = None
) -> str:
    with replica.sessions() as session:
        job = jobs.submit_job(
            session,
            replica.store,
            name="clf",
            version="1.0.0",
            method=method,
            options={"runs": 0} if options is None else options,
            target_version=target,
            calibration=None,
            evaluation=None,
            max_upload_bytes=1 << 24,
            max_queued=10,
        )
    return job.id


def _jobs(replica: Replica) -> list[CompressionJob]:
    with replica.sessions() as session:
        return list(session.scalars(sa.select(CompressionJob).order_by(CompressionJob.created)))


def _wait(predicate: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_two_replicas_split_the_jobs_and_never_run_one_twice(
    replicas: Callable[[str], Replica], tmp_path: Path
) -> None:
    a, b = replicas("replica-a"), replicas("replica-b")
    _model_version(a, tmp_path)
    ids = [_submit(a, f"c{i}") for i in range(4)]
    a.worker.start()
    b.worker.start()
    _wait(lambda: all(j.state in FINAL for j in _jobs(a)))
    done = _jobs(b)
    assert [j.id for j in done] == ids
    assert all(j.state == "succeeded" and j.attempts == 1 for j in done), [
        (j.state, j.attempts, j.error) for j in done
    ]
    assert a.worker.jobs_run + b.worker.jobs_run == 4  # each job claimed exactly once
    with a.sessions() as session:
        versions = model_registry.get_model(session, "clf").versions
    assert sorted(v.version for v in versions) == ["1.0.0", "c0", "c1", "c2", "c3"]


def test_a_dead_replicas_job_is_taken_over_once_its_lease_expires(
    replicas: Callable[[str], Replica], tmp_path: Path
) -> None:
    dead, alive = replicas("dead", lease_s=2.0), replicas("alive", lease_s=30.0)
    _model_version(dead, tmp_path)
    job_id = _submit(dead, "c0")
    # The "dead" replica claims the job and then never renews its lease (killed).
    with dead.sessions() as session:
        claimed = jobs.claim_next(session, "dead", utcnow(), lease_s=2.0, max_attempts=3)
    assert claimed is not None and claimed.id == job_id and claimed.state == RUNNING

    assert alive.worker.run_once() is False  # the lease still holds: not taken
    time.sleep(2.2)
    assert alive.worker.run_once() is True  # expired: taken over and run
    (job,) = _jobs(alive)
    assert job.state == "succeeded" and job.attempts == 2, job.error
    assert job.lease_owner is None and job.result_version_id is not None
    # The dead replica, were it to wake up, can neither renew nor finish the job.
    with dead.sessions() as session:
        now = utcnow()
        assert not jobs.renew_lease(
            session, job_id, "dead", now, lease_s=2, progress=0.5, message=""
        )
        assert not jobs.finish_job(session, job_id, "dead", now, sha256="0" * 64, size=1, report={})
        assert not jobs.fail_job(session, job_id, "dead", now, "late")
    (job,) = _jobs(alive)
    assert job.state == "succeeded"


def test_a_job_that_keeps_killing_its_replica_is_given_up(
    replicas: Callable[[str], Replica], tmp_path: Path
) -> None:
    replica = replicas("r", lease_s=30.0)
    _model_version(replica, tmp_path)
    job_id = _submit(replica, "c0")
    later = utcnow()
    for attempt in range(2):  # two replicas died running it
        with replica.sessions() as session:
            claimed = jobs.claim_next(session, f"dead-{attempt}", later, lease_s=1, max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt + 1
        later += timedelta(seconds=2)
    with replica.sessions() as session:
        assert jobs.claim_next(session, "r", later, lease_s=1, max_attempts=2) is None
        job = jobs.get_job(session, job_id)
    assert job.state == "failed" and "gave up after 2 attempt(s)" in (job.error or "")


def test_a_replica_killed_mid_job_leaves_it_to_another_after_the_lease(
    replicas: Callable[[str], Replica], database_url: str, tmp_path: Path
) -> None:
    """SIGKILL a real replica process while its job runs; another replica finishes it."""
    alive = replicas("alive", lease_s=30.0)
    _model_version(alive, tmp_path)
    _submit(alive, "c0", "auto", {"runs": 20, "max_latency_ratio": None})
    doomed = subprocess.Popen(
        [sys.executable, "-m", "tests.compression_replica", database_url,
         str(tmp_path / "blobs"), str(tmp_path / "work" / "doomed"), "doomed", "2"],
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        _wait(lambda: (j := _jobs(alive)[0]).state == RUNNING and j.lease_owner == "doomed")
        doomed.kill()  # the replica dies mid-job: nobody renews the lease any more
        doomed.wait(10)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    (job,) = _jobs(alive)
    assert job.state == RUNNING and job.lease_owner == "doomed" and job.attempts == 1
    _wait(lambda: alive.worker.run_once(), timeout=30)  # claimable once the lease expired
    (job,) = _jobs(alive)
    assert job.state == "succeeded" and job.attempts == 2, job.error
    assert job.report is not None and job.report["chosen"]["name"]
    with alive.sessions() as session:
        versions = model_registry.get_model(session, "clf").versions
    assert sorted(v.version for v in versions) == ["1.0.0", "c0"]
