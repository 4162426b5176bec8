"""The agent's capture recorder: sampling, caps, expiry, restarts, uploads (fake clock, seeded RNG).

The recorder runs on a real spool in a temp dir; the upload is a fake that records what
it was handed and answers as told. A "crash" is dropping a recorder without ending it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.capture import CaptureRecorder, RecorderLimits
from agent.capture_spool import CaptureSpool
from agent.capture_upload import ACCEPTED, REFUSED, RETRY, UploadJob, UploadResult
from firmware_bundles.capture_wire import CaptureCommand, CaptureRequest

CID = "c" * 32
SHA = "ab" * 32
OTHER = "cd" * 32
START = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeUploader:
    """Keeps a copy of every file it is handed; answers with ``outcomes`` in turn."""

    def __init__(self, outcomes: list[str] | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.jobs: list[UploadJob] = []
        self.files: list[dict[str, npt.NDArray[Any]]] = []
        self._results: list[UploadResult] = []

    @property
    def busy(self) -> bool:
        return False

    def submit(self, job: UploadJob) -> None:
        self.jobs.append(job)
        with np.load(job.path, allow_pickle=False) as data:
            self.files.append({k: data[k] for k in data.files})
        outcome = self.outcomes.pop(0) if self.outcomes else ACCEPTED
        self._results.append(UploadResult(job.capture_id, outcome, f"answer {outcome}"))

    def results(self) -> list[UploadResult]:
        out, self._results = self._results, []
        return out

    def close(self) -> None:
        pass


def capture(**overrides: Any) -> CaptureCommand:
    fields: dict[str, Any] = {
        "capture_id": CID,
        "rate": 1.0,
        "max_samples": 20,
        "expires_at": START + 600,
        "upload_url": "http://ctl/api/v1/captures/c/uploads/dev-1",
        "bundle_sha256": SHA,
        **overrides,
    }
    return CaptureCommand((CaptureRequest(**fields),))


def rows(start: int, batch: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inputs whose rows are numbered, and outputs derived from them."""
    x = np.arange(start, start + batch, dtype=np.float32)[:, None] * np.ones((1, 8), np.float32)
    return {"x": x}, {"y": x[:, :4] * 2}


class Rig:
    def __init__(self, root: Path, clock: Clock, uploader: FakeUploader, **limits: Any) -> None:
        self.recorder = CaptureRecorder(
            CaptureSpool(root, fsync=False),
            uploader,
            device_id="dev-1",
            limits=RecorderLimits(**limits),
            clock=clock,
            rng=random.Random(7),
        )

    def feed(self, first: int, count: int, batch: int = 1, bundle: str = SHA) -> None:
        for i in range(count):
            feeds, outputs = rows(first + i * batch, batch)
            self.recorder.offer(bundle, feeds, outputs)


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def uploader() -> FakeUploader:
    return FakeUploader()


@pytest.fixture()
def rig(tmp_path: Path, clock: Clock, uploader: FakeUploader) -> Iterator[Rig]:
    yield Rig(tmp_path / "captures", clock, uploader)


def statuses(reports: list[Any]) -> list[tuple[str, int]]:
    return [(r.status, r.samples) for r in reports]


def test_rate_one_half_samples_about_half_the_calls(rig: Rig) -> None:
    rig.recorder.apply(capture(rate=0.5, max_samples=100_000))
    rig.feed(0, 4000)
    rig.recorder.tick()
    taken = rig.recorder.state_of(CID)
    assert taken is not None and 1800 <= taken.rows <= 2200  # binomial(4000, .5): sd 32


def test_the_cap_holds_and_one_upload_has_exactly_what_was_fed(
    rig: Rig, uploader: FakeUploader
) -> None:
    assert statuses(rig.recorder.apply(capture())) == [("capturing", 0)]
    rig.feed(0, 30, batch=3)  # 90 rows offered in batches of 3; the last one is cut
    reports = rig.recorder.tick()
    assert ("uploading", 20) in statuses(reports)
    assert len(uploader.jobs) == 1
    data = uploader.files[0]
    assert sorted(data) == ["bundle_sha256", "input/x", "output/y", "timestamp"]
    np.testing.assert_array_equal(data["input/x"][:, 0], np.arange(20, dtype=np.float32))
    np.testing.assert_array_equal(data["output/y"], data["input/x"][:, :4] * 2)
    assert data["timestamp"].shape == (20,) and str(data["bundle_sha256"]) == SHA
    # The upload was accepted: the next tick says so and the samples are gone.
    assert ("uploaded", 20) in statuses(rig.recorder.tick())
    assert not list((rig.recorder._spool.root / CID).glob("*.npz"))


def test_the_byte_cap_holds(tmp_path: Path, clock: Clock, uploader: FakeUploader) -> None:
    rig = Rig(tmp_path, clock, uploader, max_bytes=2048)
    rig.recorder.apply(capture(max_samples=1000))
    rig.feed(0, 200)
    rig.recorder.tick()
    # 32 + 16 + 8 bytes a row: 36 rows fit in 2048, the 37th would not.
    assert uploader.files[0]["input/x"].shape == (36, 8)


def test_other_bundles_are_not_sampled_and_an_open_capture_keeps_to_its_first(
    rig: Rig, uploader: FakeUploader
) -> None:
    rig.recorder.apply(capture(bundle_sha256=None, max_samples=5))
    rig.feed(0, 2, bundle=OTHER)
    rig.feed(100, 10, bundle=SHA)  # not OTHER's: the capture keeps to its first bundle
    rig.feed(2, 10, bundle=OTHER)
    rig.recorder.tick()
    data = uploader.files[0]
    assert str(data["bundle_sha256"]) == OTHER
    np.testing.assert_array_equal(data["input/x"][:, 0], [0, 1, 2, 3, 4])


def test_expiry_stops_sampling_and_uploads_what_was_taken(
    rig: Rig, clock: Clock, uploader: FakeUploader
) -> None:
    rig.recorder.apply(capture(max_samples=1000))
    rig.feed(0, 7)
    clock.now = START + 600  # expired
    rig.feed(7, 50)
    assert ("uploading", 7) in statuses(rig.recorder.tick())
    assert uploader.files[0]["input/x"].shape == (7, 8)


def test_a_capture_that_saw_nothing_ends_empty_without_an_upload(
    rig: Rig, clock: Clock, uploader: FakeUploader
) -> None:
    rig.recorder.apply(capture())
    clock.now = START + 601
    assert statuses(rig.recorder.tick()) == [("empty", 0)]
    assert uploader.jobs == []


def test_a_restart_resumes_without_duplicates_and_never_captures_twice(
    tmp_path: Path, clock: Clock, uploader: FakeUploader
) -> None:
    first = Rig(tmp_path, clock, uploader)
    first.recorder.apply(capture())
    first.feed(0, 8)
    first.recorder.tick()  # 8 rows on disk
    first.feed(8, 3)  # sampled, still in memory: a crash loses them, uncounted
    # Crash: the first recorder is dropped without a goodbye.
    second = Rig(tmp_path, clock, uploader)
    assert statuses(second.recorder.tick()) == [("capturing", 8)]  # where it stands
    second.recorder.apply(capture())  # the retained set, redelivered: no new capture
    second.feed(1000, 40)
    second.recorder.tick()
    assert len(uploader.jobs) == 1
    x = uploader.files[0]["input/x"][:, 0]
    assert list(x[:8]) == list(range(8)) and list(x[8:]) == list(range(1000, 1012))
    # Uploaded: a third start, and the set redelivered again, capture nothing more.
    second.recorder.tick()
    third = Rig(tmp_path, clock, uploader)
    assert third.recorder.apply(capture()) == []
    third.feed(0, 50)
    third.recorder.tick()
    assert len(uploader.jobs) == 1 and third.recorder.open_captures == []


def test_a_crash_between_ending_and_uploading_sends_the_same_file(
    tmp_path: Path, clock: Clock
) -> None:
    down = FakeUploader([RETRY])
    first = Rig(tmp_path, clock, down)
    first.recorder.apply(capture(max_samples=4))
    first.feed(0, 10)
    first.recorder.tick()  # ended, upload failed once
    up = FakeUploader()
    second = Rig(tmp_path, clock, up)
    second.recorder.tick()
    assert len(up.jobs) == 1
    np.testing.assert_array_equal(up.files[0]["input/x"], down.files[0]["input/x"])


def test_uploads_are_retried_with_backoff_until_accepted(
    rig: Rig, clock: Clock, uploader: FakeUploader
) -> None:
    uploader.outcomes = [RETRY, RETRY, ACCEPTED]
    rig.recorder.apply(capture(max_samples=2))
    rig.feed(0, 2)
    attempts = []
    for second in range(0, 10):
        clock.now = START + second
        before = len(uploader.jobs)
        reports = rig.recorder.tick()
        if len(uploader.jobs) > before:
            attempts.append(second)
        if ("uploaded", 2) in statuses(reports):
            break
    # Each failure is seen at the tick after its attempt; then 2 s, then 4 s of backoff.
    assert attempts == [0, 3, 8]
    assert rig.recorder.open_captures == []


def test_a_refused_upload_is_reported_and_discarded(rig: Rig, uploader: FakeUploader) -> None:
    uploader.outcomes = [REFUSED]
    rig.recorder.apply(capture(max_samples=2))
    rig.feed(0, 2)
    rig.recorder.tick()
    reports = rig.recorder.tick()
    assert [(r.status, r.message) for r in reports] == [("failed", "answer refused")]
    assert len(uploader.jobs) == 1 and rig.recorder.open_captures == []


def test_a_canceled_capture_is_discarded(rig: Rig, uploader: FakeUploader) -> None:
    rig.recorder.apply(capture())
    rig.feed(0, 5)
    rig.recorder.tick()
    reports = rig.recorder.apply(capture(canceled=True))
    assert statuses(reports) == [("canceled", 5)]
    rig.feed(5, 50)
    rig.recorder.tick()
    assert uploader.jobs == [] and not list((rig.recorder._spool.root / CID).glob("*.npz"))


def test_too_many_open_captures_are_refused(
    tmp_path: Path, clock: Clock, uploader: FakeUploader
) -> None:
    rig = Rig(tmp_path, clock, uploader, max_open=1)
    rig.recorder.apply(capture())
    reports = rig.recorder.apply(capture(capture_id="d" * 32))
    assert [r.status for r in reports] == ["failed"] and "1 captures open" in reports[0].message


def test_with_no_capture_open_an_inference_costs_no_copy(rig: Rig) -> None:
    class Untouchable(dict[str, Any]):
        def items(self) -> Any:
            raise AssertionError("the hot path read the tensors")

    rig.recorder.offer(SHA, Untouchable(), Untouchable())
    rig.recorder.apply(capture(bundle_sha256=OTHER))
    rig.recorder.offer(SHA, Untouchable(), Untouchable())  # another bundle's capture
